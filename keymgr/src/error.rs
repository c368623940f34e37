//! Errors of the key store. Each names the file or directory involved; none
//! carries file content, which may be (part of) a secret.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

use crate::PrivateKeyError;

/// Why the key store could not load, create, promote or discard a key.
#[derive(Debug, Error)]
pub enum KeyStoreError {
    /// The state directory did not exist and could not be created.
    #[error("cannot create state directory {}", path.display())]
    CreateDir {
        /// The state directory.
        path: PathBuf,
        /// The underlying failure.
        source: io::Error,
    },
    /// The state directory could not be inspected (stat, listing).
    #[error("cannot inspect state directory {}", path.display())]
    InspectDir {
        /// The state directory.
        path: PathBuf,
        /// The underlying failure.
        source: io::Error,
    },
    /// The state directory path exists but is not a directory.
    #[error("state directory {} is not a directory", path.display())]
    NotADirectory {
        /// The state directory.
        path: PathBuf,
    },
    /// Others could replace the key files in the state directory.
    #[error(
        "state directory {} has mode {mode:04o}; it must not be writable by group or others (chmod 700 {})",
        path.display(),
        path.display()
    )]
    InsecureDir {
        /// The state directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key file exists but could not be opened or read.
    #[error("cannot read key file {}", path.display())]
    Read {
        /// The key file.
        path: PathBuf,
        /// The underlying failure.
        source: io::Error,
    },
    /// A key file is a symbolic link, which could point at a file another user controls.
    #[error("key file {} is a symlink; it must be a regular file", path.display())]
    Symlink {
        /// The key file.
        path: PathBuf,
    },
    /// A key file is a directory, FIFO, socket or device.
    #[error("key file {} is not a regular file", path.display())]
    NotRegularFile {
        /// The key file.
        path: PathBuf,
    },
    /// A key file is accessible by group or others, so the secret may already be known.
    #[error(
        "key file {} has mode {mode:04o}; it must not be readable by group or others (chmod 600 {})",
        path.display(),
        path.display()
    )]
    InsecureMode {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key file is owned by someone other than the owner of the state directory.
    #[error(
        "key file {} is owned by uid {owner} but its state directory by uid {expected}; \
         refusing a key another user may have planted (chown {expected} {})",
        path.display(),
        path.display()
    )]
    WrongOwner {
        /// The key file.
        path: PathBuf,
        /// The file's owner.
        owner: u32,
        /// The state directory's owner.
        expected: u32,
    },
    /// A key file is far larger than one base64 line.
    #[error("key file {} is larger than {limit} bytes; it must hold one base64 key line", path.display())]
    TooLarge {
        /// The key file.
        path: PathBuf,
        /// The largest size accepted.
        limit: usize,
    },
    /// A key file is empty or holds only whitespace.
    #[error("key file {} is empty", path.display())]
    Empty {
        /// The key file.
        path: PathBuf,
    },
    /// A key file's content is not a usable key. The reason is part of the
    /// message rather than a `source`, so error chains do not print it twice.
    #[error("key file {} is malformed: its content {reason}", path.display())]
    Malformed {
        /// The key file.
        path: PathBuf,
        /// What is wrong with the content (never the content itself).
        reason: PrivateKeyError,
    },
    /// Writing, syncing or linking a new key file failed.
    #[error("cannot write key file {}", path.display())]
    Write {
        /// The file being written (a temporary file or the key file).
        path: PathBuf,
        /// The underlying failure.
        source: io::Error,
    },
    /// Renaming the next key over the current one failed.
    #[error("cannot rename {} to {}", from.display(), to.display())]
    Rename {
        /// The next key file.
        from: PathBuf,
        /// The current key file.
        to: PathBuf,
        /// The underlying failure.
        source: io::Error,
    },
    /// Removing a key file failed.
    #[error("cannot remove key file {}", path.display())]
    Remove {
        /// The key file.
        path: PathBuf,
        /// The underlying failure.
        source: io::Error,
    },
    /// Syncing the directory after a rename, link or removal failed, so the
    /// change may not survive a crash.
    #[error("cannot sync state directory {}", path.display())]
    SyncDir {
        /// The state directory.
        path: PathBuf,
        /// The underlying failure.
        source: io::Error,
    },
    /// `promote_next` was called with no next key on disk.
    #[error("no next key at {} to promote", path.display())]
    NoNextKey {
        /// The next key file.
        path: PathBuf,
    },
    /// The operating system's random number generator failed.
    #[error("the OS random number generator failed")]
    Rng(#[source] getrandom::Error),
}

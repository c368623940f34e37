//! The on-disk key store: the current key and the next one of a rotation.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use tracing::info;

use crate::file::{
    check_dir, ensure_dir, read_key_file, remove_stale_temp_files, sync_dir, write_new_key_file,
};
use crate::{KeyStoreError, PrivateKey};

/// File name of the current key inside the state directory.
pub const KEY_FILE: &str = "private.key";

/// File name of the next key (created before a rotation, promoted after it).
pub const NEXT_KEY_FILE: &str = "private.key.next";

/// Whether a key was read from disk or made and stored by this call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOrigin {
    /// The key was generated and written by this call.
    Created,
    /// The key already existed on disk.
    Loaded,
}

/// The node's keys in a state directory such as `/var/lib/wireseal`.
///
/// One process at a time is expected to manage a directory (the node's agent);
/// concurrent creators still never overwrite each other's key, but a concurrent
/// `promote_next` and `discard_next` are not coordinated.
#[derive(Debug, Clone)]
pub struct KeyStore {
    dir: PathBuf,
    current: PathBuf,
    next: PathBuf,
}

impl KeyStore {
    /// A store over `dir`. Nothing is touched on disk until a method is called.
    #[must_use]
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        Self {
            current: dir.join(KEY_FILE),
            next: dir.join(NEXT_KEY_FILE),
            dir,
        }
    }

    /// The state directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The current key file, `<dir>/private.key`.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.current
    }

    /// The next key file, `<dir>/private.key.next`.
    #[must_use]
    pub fn next_path(&self) -> &Path {
        &self.next
    }

    /// Reads the current key; `None` when neither it nor the directory exists.
    ///
    /// # Errors
    /// The directory is not a directory or is writable by others; the key file is
    /// unreadable, a symlink, not a regular file, accessible by group or others,
    /// owned by another user than the directory, too large, empty or malformed.
    pub fn load(&self) -> Result<Option<PrivateKey>, KeyStoreError> {
        self.load_file(&self.current)
    }

    /// Reads the next key; `None` when there is none.
    ///
    /// # Errors
    /// As for [`KeyStore::load`], about the next key file.
    pub fn load_next(&self) -> Result<Option<PrivateKey>, KeyStoreError> {
        self.load_file(&self.next)
    }

    /// Reads the current key, or generates and stores one when there is none.
    ///
    /// Creates the directory (0700) when missing. A key file that exists but
    /// cannot be used is an error, never a reason to generate a new key: that
    /// would silently re-key the node and cut it off from its peers.
    ///
    /// # Errors
    /// As for [`KeyStore::load`]; also failures to create the directory, write
    /// or sync the new file, or read the OS RNG.
    pub fn load_or_create(&self) -> Result<(PrivateKey, KeyOrigin), KeyStoreError> {
        let (key, origin) = self.load_or_create_file(&self.current)?;
        let public_key = key.public_key().fingerprint();
        match origin {
            KeyOrigin::Created => {
                info!(path = %self.current.display(), %public_key, "created private key");
            }
            KeyOrigin::Loaded => {
                info!(path = %self.current.display(), %public_key, "loaded private key");
            }
        }
        Ok((key, origin))
    }

    /// Creates the next key beside the current one, leaving the current key
    /// untouched. Idempotent: when a valid next key exists, it is returned as
    /// [`KeyOrigin::Loaded`], so a rotation interrupted by a restart resumes with
    /// the key peers may already have seen.
    ///
    /// # Errors
    /// As for [`KeyStore::load_or_create`], about the next key file; a malformed
    /// next key is an error (remove it with [`KeyStore::discard_next`]).
    pub fn create_next(&self) -> Result<(PrivateKey, KeyOrigin), KeyStoreError> {
        let (key, origin) = self.load_or_create_file(&self.next)?;
        let public_key = key.public_key().fingerprint();
        match origin {
            KeyOrigin::Created => {
                info!(path = %self.next.display(), %public_key, "created next private key");
            }
            KeyOrigin::Loaded => {
                info!(path = %self.next.display(), %public_key, "loaded existing next private key");
            }
        }
        Ok((key, origin))
    }

    /// Makes the next key the current one: validates it, renames it over the
    /// current key file (atomic: a crash leaves either the old or the new key
    /// current, never neither) and syncs the directory. Returns the new current key.
    ///
    /// A current key file that is malformed is replaced too: promotion is an
    /// explicit decision, unlike creation.
    ///
    /// # Errors
    /// [`KeyStoreError::NoNextKey`] when there is no next key; the errors of
    /// [`KeyStore::load_next`]; rename or directory sync failures.
    pub fn promote_next(&self) -> Result<PrivateKey, KeyStoreError> {
        let key = self.load_next()?.ok_or_else(|| KeyStoreError::NoNextKey {
            path: self.next.clone(),
        })?;
        // Only for the log line; an unreadable current key does not block promotion.
        let previous = self
            .load()
            .ok()
            .flatten()
            .map(|old| old.public_key().fingerprint());
        fs::rename(&self.next, &self.current).map_err(|source| KeyStoreError::Rename {
            from: self.next.clone(),
            to: self.current.clone(),
            source,
        })?;
        sync_dir(&self.dir)?;
        info!(
            path = %self.current.display(),
            public_key = %key.public_key().fingerprint(),
            previous_public_key = previous.as_deref().unwrap_or("none"),
            "promoted next private key to current"
        );
        Ok(key)
    }

    /// Removes the next key, if any (an abandoned rotation). Returns whether a
    /// file was removed.
    ///
    /// The file is unlinked, not overwritten first: on journalling and
    /// copy-on-write filesystems overwriting in place does not erase old blocks.
    ///
    /// # Errors
    /// Removal or directory sync failures.
    pub fn discard_next(&self) -> Result<bool, KeyStoreError> {
        match fs::remove_file(&self.next) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(source) => {
                return Err(KeyStoreError::Remove {
                    path: self.next.clone(),
                    source,
                });
            }
        }
        sync_dir(&self.dir)?;
        info!(path = %self.next.display(), "discarded next private key");
        Ok(true)
    }

    fn load_file(&self, path: &Path) -> Result<Option<PrivateKey>, KeyStoreError> {
        match check_dir(&self.dir)? {
            Some(owner) => read_key_file(path, owner),
            None => Ok(None),
        }
    }

    fn load_or_create_file(&self, path: &Path) -> Result<(PrivateKey, KeyOrigin), KeyStoreError> {
        let owner = ensure_dir(&self.dir)?;
        remove_stale_temp_files(&self.dir);
        if let Some(key) = read_key_file(path, owner)? {
            return Ok((key, KeyOrigin::Loaded));
        }
        let key = PrivateKey::generate().map_err(KeyStoreError::Rng)?;
        if write_new_key_file(&self.dir, path, &key)? {
            return Ok((key, KeyOrigin::Created));
        }
        // Another process created the file between our read and our link; its key
        // is the one to use.
        match read_key_file(path, owner)? {
            Some(key) => Ok((key, KeyOrigin::Loaded)),
            None => Err(KeyStoreError::Read {
                path: path.to_owned(),
                source: io::ErrorKind::NotFound.into(),
            }),
        }
    }
}

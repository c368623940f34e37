//! The file operations under the key store: a checked read of one key file and
//! an atomic, no-clobber write of a new one.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tracing::warn;
use wireseal_core::key::KEY_BASE64_LEN;
use zeroize::Zeroizing;

use crate::{KeyStoreError, PrivateKey};

/// Key files larger than this are refused unread: a key is one 44-character line.
pub(crate) const MAX_KEY_FILE_LEN: usize = 1024;

/// Temporary files start with this, so a leftover from a crash can be recognised
/// and removed (it holds a copy of a secret).
pub(crate) const TEMP_PREFIX: &str = ".wireseal-key.tmp-";

/// A temporary key file lives for milliseconds; one this old was left by a crash.
pub(crate) const STALE_TEMP_AGE: Duration = Duration::from_secs(60);

/// Creates `dir` (0700) when missing and checks it; returns its owner's uid.
pub(crate) fn ensure_dir(dir: &Path) -> Result<u32, KeyStoreError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| KeyStoreError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
    check_dir(dir)?.ok_or_else(|| KeyStoreError::InspectDir {
        path: dir.to_owned(),
        source: io::ErrorKind::NotFound.into(),
    })
}

/// Checks the state directory; `None` when it does not exist. Returns the owner's
/// uid, which key files must share.
pub(crate) fn check_dir(dir: &Path) -> Result<Option<u32>, KeyStoreError> {
    // Following a symlink for the directory itself is fine: operators do link
    // /var/lib/wireseal elsewhere, and what matters is who can write the target.
    let meta = match fs::metadata(dir) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(KeyStoreError::InspectDir {
                path: dir.to_owned(),
                source,
            });
        }
    };
    if !meta.is_dir() {
        return Err(KeyStoreError::NotADirectory {
            path: dir.to_owned(),
        });
    }
    let mode = meta.mode() & 0o7777;
    // Sticky directories like /tmp are still unsafe: another user can create
    // `private.key` there before we do.
    if mode & 0o022 != 0 {
        return Err(KeyStoreError::InsecureDir {
            path: dir.to_owned(),
            mode,
        });
    }
    Ok(Some(meta.uid()))
}

/// Reads and validates one key file; `None` when it does not exist.
pub(crate) fn read_key_file(
    path: &Path,
    expected_uid: u32,
) -> Result<Option<PrivateKey>, KeyStoreError> {
    let read_err = |source| KeyStoreError::Read {
        path: path.to_owned(),
        source,
    };
    // lstat first only to give a symlink its own clear error; the checks that
    // count are made on the opened descriptor below.
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(KeyStoreError::Symlink {
                path: path.to_owned(),
            });
        }
        Ok(_) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(read_err(err)),
    }
    // O_NOFOLLOW closes the race with a symlink swapped in after the lstat;
    // O_NONBLOCK keeps a FIFO planted under the key's name from hanging the agent.
    let mut file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) if err.raw_os_error() == Some(libc::ELOOP) => {
            return Err(KeyStoreError::Symlink {
                path: path.to_owned(),
            });
        }
        Err(err) => return Err(read_err(err)),
    };
    let meta = file.metadata().map_err(read_err)?;
    if !meta.file_type().is_file() {
        return Err(KeyStoreError::NotRegularFile {
            path: path.to_owned(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyStoreError::InsecureMode {
            path: path.to_owned(),
            mode,
        });
    }
    if meta.uid() != expected_uid {
        return Err(KeyStoreError::WrongOwner {
            path: path.to_owned(),
            owner: meta.uid(),
            expected: expected_uid,
        });
    }
    let too_large = || KeyStoreError::TooLarge {
        path: path.to_owned(),
        limit: MAX_KEY_FILE_LEN,
    };
    if meta.len() > MAX_KEY_FILE_LEN as u64 {
        return Err(too_large());
    }
    // A fixed buffer, not a growing Vec: reallocation would leave unwiped copies.
    let mut buf = Zeroizing::new([0u8; MAX_KEY_FILE_LEN + 1]);
    let mut len = 0;
    loop {
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(read_err(err)),
        }
        // The file may grow after the fstat; the extra byte detects it.
        if len > MAX_KEY_FILE_LEN {
            return Err(too_large());
        }
    }
    let content = buf[..len].trim_ascii();
    if content.is_empty() {
        return Err(KeyStoreError::Empty {
            path: path.to_owned(),
        });
    }
    let malformed = |reason| KeyStoreError::Malformed {
        path: path.to_owned(),
        reason,
    };
    let text =
        std::str::from_utf8(content).map_err(|_| malformed(crate::PrivateKeyError::Base64))?;
    PrivateKey::from_base64(text).map(Some).map_err(malformed)
}

/// Writes `key` to `path` atomically, unless `path` already exists.
///
/// The key goes to a 0600 temporary file in the same directory, is synced, and
/// is then hard-linked to `path`: `link(2)` fails when the target exists, so a
/// key another process created meanwhile is never overwritten. Returns `false`
/// when `path` already existed (nothing was written there).
pub(crate) fn write_new_key_file(
    dir: &Path,
    path: &Path,
    key: &PrivateKey,
) -> Result<bool, KeyStoreError> {
    let (temp, mut file) = TempFile::create(dir)?;
    let write_err = |source| KeyStoreError::Write {
        path: temp.path.clone(),
        source,
    };
    let mut content = Zeroizing::new(String::with_capacity(KEY_BASE64_LEN + 1));
    content.push_str(&key.to_base64());
    content.push('\n');
    file.write_all(content.as_bytes()).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    drop(file);
    match fs::hard_link(&temp.path, path) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
        Err(source) => {
            return Err(KeyStoreError::Write {
                path: path.to_owned(),
                source,
            });
        }
    }
    // The key is in place; a leftover link to it is cleaned up as stale later and
    // is no reason to fail the creation.
    if let Err(err) = temp.remove() {
        warn!(error = %err, "cannot remove temporary key file after linking it");
    }
    sync_dir(dir)?;
    Ok(true)
}

/// Makes renames, links and removals in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), KeyStoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| KeyStoreError::SyncDir {
            path: dir.to_owned(),
            source,
        })
}

/// Removes temporary key files a crash left behind (they hold a copy of a
/// secret). Only files older than [`STALE_TEMP_AGE`] are touched, so a write in
/// progress in another thread or process is left alone. Failures are logged, not
/// returned: a leftover must not stop the agent from starting.
pub(crate) fn remove_stale_temp_files(dir: &Path) {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) => {
            warn!(dir = %dir.display(), error = %err, "cannot list state directory for stale temporary key files");
            return;
        }
    };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .as_encoded_bytes()
            .starts_with(TEMP_PREFIX.as_bytes())
        {
            continue;
        }
        let stale = entry
            .metadata()
            .and_then(|meta| meta.modified())
            .is_ok_and(|modified| {
                now.duration_since(modified)
                    .is_ok_and(|age| age > STALE_TEMP_AGE)
            });
        if !stale {
            continue;
        }
        let path = entry.path();
        match fs::remove_file(&path) {
            Ok(()) => warn!(path = %path.display(), "removed stale temporary key file"),
            Err(err) => {
                warn!(path = %path.display(), error = %err, "cannot remove stale temporary key file");
            }
        }
    }
}

/// Removes a 0600 temporary file when dropped, on every error path.
struct TempFile {
    path: PathBuf,
    removed: bool,
}

impl TempFile {
    fn create(dir: &Path) -> Result<(Self, File), KeyStoreError> {
        let mut attempt = 0;
        loop {
            let nonce = getrandom::u64().map_err(KeyStoreError::Rng)?;
            let path = dir.join(format!("{TEMP_PREFIX}{}-{nonce:016x}", std::process::id()));
            // create_new: never open a file (or follow a symlink) someone else put there.
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(file) => {
                    let guard = Self {
                        path,
                        removed: false,
                    };
                    return Ok((guard, file));
                }
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists && attempt < 3 => {
                    attempt += 1;
                }
                Err(source) => return Err(KeyStoreError::Write { path, source }),
            }
        }
    }

    fn remove(mut self) -> Result<(), KeyStoreError> {
        self.removed = true;
        fs::remove_file(&self.path).map_err(|source| KeyStoreError::Remove {
            path: self.path.clone(),
            source,
        })
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.removed
            && let Err(err) = fs::remove_file(&self.path)
        {
            warn!(path = %self.path.display(), error = %err, "cannot remove temporary key file");
        }
    }
}

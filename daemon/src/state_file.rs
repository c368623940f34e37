//! Small JSON files the agent keeps in its state directory beside the key
//! (IPsec mode's sequence reservations and key epochs): read strictly,
//! written so that a crash or a power loss leaves the old file or the new
//! one, never a torn one.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a state file cannot be read or kept.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    /// Reading or writing the file failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not what this agent writes.
    #[error("{} is not what wireseal writes ({detail}); {consequence}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
        /// What the agent does about it.
        consequence: &'static str,
    },
}

/// Reads `path` as JSON; `None` when there is no file. `consequence` tells
/// the reader of the error what a damaged file means.
///
/// # Errors
/// When the file exists but cannot be read or parsed.
pub fn read_json<T: DeserializeOwned>(
    path: &Path,
    consequence: &'static str,
) -> Result<Option<T>, StateFileError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|err| StateFileError::Corrupt {
                    path: path.to_owned(),
                    detail: err.to_string(),
                    consequence,
                })
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateFileError::Io {
            what: "reading",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes `value` to `path` as JSON, durably: a temporary file, fsync,
/// rename, fsync of the directory.
///
/// # Errors
/// The step that failed.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StateFileError> {
    let io = |what, source| StateFileError::Io {
        what,
        path: path.to_owned(),
        source,
    };
    let text = serde_json::to_vec_pretty(value)
        .map_err(|err| io("encoding", std::io::Error::other(err)))?;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).map_err(|e| io("creating", e))?;
    file.write_all(&text).map_err(|e| io("writing", e))?;
    file.sync_all().map_err(|e| io("syncing", e))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| io("renaming into", e))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("syncing the directory of", e))?;
    }
    Ok(())
}

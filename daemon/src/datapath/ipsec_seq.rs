//! Outbound sequence-number reservations: what makes installing an outbound
//! ESP SA again safe.
//!
//! AES-GCM in ESP builds each packet's nonce from the SA's sequence number,
//! and a pair's SA key is a function of the two nodes' keys and the SPI
//! alone. An outbound SA installed again from sequence 1 (after a reboot, or
//! an SA deleted by hand) would repeat nonces under the same key, which
//! breaks GCM's confidentiality and integrity; the peer's replay window would
//! also drop its packets for ever. So before an outbound SA may reach
//! sequence number N, N is written to the state directory, and an SA
//! installed again starts from the highest number ever reserved for it.
//!
//! The reservation runs [`STEP`] ahead of the kernel's counter and is raised
//! by a pass once half of it is used: a pass comes at least every resync
//! interval, long before 2²⁹ packets. A restart from the reservation is a
//! jump of at most `STEP` past the last packet the peer saw, well inside what
//! extended sequence numbers let the receiver follow (2³¹).
//!
//! The file belongs to the private key beside it: it names the public key it
//! was written for, and one written for another key starts empty (that key's
//! SAs had other keys). A file that cannot be read leaves the outbound SAs
//! uninstalled (traffic dropped, never a nonce repeated) with an error that
//! says so.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use wireseal_core::PublicKey;

/// How far a reservation runs ahead of the kernel's counter.
pub const STEP: u64 = 1 << 30;

/// The file's name in the state directory.
pub const FILE: &str = "ipsec-sequence.json";

/// Why a reservation cannot be read or kept.
#[derive(Debug, Error)]
pub enum SeqError {
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
    #[error(
        "{} is not a sequence reservation file ({detail}); outbound IPsec SAs stay \
         uninstalled, since without it a restarted SA could repeat AES-GCM nonces. Remove it \
         only together with private.key (a new key starts new SAs)",
        path.display()
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Stored {
    /// The public key of the private key the SAs were derived with.
    own: Option<PublicKey>,
    /// Highest sequence number reserved, by "peer public key/SPI in hex".
    reserved: BTreeMap<String, u64>,
}

/// The reservations of this node's outbound SAs.
#[derive(Debug)]
pub struct Reservations {
    path: PathBuf,
    own: PublicKey,
    stored: Stored,
}

fn entry(peer: &PublicKey, spi: u32) -> String {
    format!("{peer}/{spi:08x}")
}

impl Reservations {
    /// Reads the reservations of `own`'s SAs from `state_dir` (none when
    /// there is no file yet, or it was written for another key).
    ///
    /// # Errors
    /// When the file exists but cannot be read or parsed.
    pub fn load(state_dir: &Path, own: PublicKey) -> Result<Self, SeqError> {
        let path = state_dir.join(FILE);
        let stored = match std::fs::read(&path) {
            Ok(bytes) => {
                let stored: Stored =
                    serde_json::from_slice(&bytes).map_err(|err| SeqError::Corrupt {
                        path: path.clone(),
                        detail: err.to_string(),
                    })?;
                if stored.own == Some(own) {
                    stored
                } else {
                    Stored::default()
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Stored::default(),
            Err(source) => {
                return Err(SeqError::Io {
                    what: "reading",
                    path,
                    source,
                });
            }
        };
        Ok(Self { path, own, stored })
    }

    /// The public key these reservations are for.
    #[must_use]
    pub fn own(&self) -> PublicKey {
        self.own
    }

    /// The sequence number an outbound SA to `peer` with `spi` starts from:
    /// past every number it may have sent before (0 for one never installed).
    #[must_use]
    pub fn start(&self, peer: &PublicKey, spi: u32) -> u64 {
        self.stored
            .reserved
            .get(&entry(peer, spi))
            .copied()
            .unwrap_or(0)
    }

    /// Makes sure the SA to `peer` with `spi` may reach `used` plus half a
    /// step: when it may not, reserves `used` plus a whole step and writes
    /// the file (before the kernel may go there). Returns true on a write.
    ///
    /// # Errors
    /// When the file cannot be written: the caller must not install or keep
    /// sending on an SA past its reservation.
    pub fn cover(&mut self, peer: &PublicKey, spi: u32, used: u64) -> Result<bool, SeqError> {
        let key = entry(peer, spi);
        let reserved = self.stored.reserved.get(&key).copied().unwrap_or(0);
        if reserved > used.saturating_add(STEP / 2) {
            return Ok(false);
        }
        self.stored.reserved.insert(key, used.saturating_add(STEP));
        self.stored.own = Some(self.own);
        self.write()?;
        Ok(true)
    }

    /// Writes the file atomically and durably: a temporary file, fsync,
    /// rename, fsync of the directory.
    fn write(&self) -> Result<(), SeqError> {
        let io = |what, source| SeqError::Io {
            what,
            path: self.path.clone(),
            source,
        };
        let text = serde_json::to_vec_pretty(&self.stored)
            .map_err(|err| io("encoding", std::io::Error::other(err)))?;
        let tmp = self.path.with_extension("json.tmp");
        let mut file = std::fs::File::create(&tmp).map_err(|e| io("creating", e))?;
        file.write_all(&text).map_err(|e| io("writing", e))?;
        file.sync_all().map_err(|e| io("syncing", e))?;
        drop(file);
        std::fs::rename(&tmp, &self.path).map_err(|e| io("renaming into", e))?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io("syncing the directory of", e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> PublicKey {
        wireseal_keymgr::PrivateKey::from_bytes([byte; 32])
            .unwrap()
            .public_key()
    }

    #[test]
    fn an_sa_installed_again_starts_past_everything_it_could_have_sent() {
        let dir = tempfile::tempdir().unwrap();
        let mut res = Reservations::load(dir.path(), key(1)).unwrap();
        assert_eq!(res.start(&key(2), 0x1234), 0, "never installed");
        // Installing reserves a step; using less than half of it writes nothing.
        assert!(res.cover(&key(2), 0x1234, 0).unwrap());
        assert!(!res.cover(&key(2), 0x1234, STEP / 2 - 1).unwrap());
        // Past half a step the reservation moves on before the kernel gets there.
        assert!(res.cover(&key(2), 0x1234, STEP / 2 + 7).unwrap());
        // A reboot: the file is all that is left.
        let again = Reservations::load(dir.path(), key(1)).unwrap();
        let start = again.start(&key(2), 0x1234);
        assert_eq!(start, STEP / 2 + 7 + STEP);
        assert!(start > STEP / 2 + 7, "past the last number used");
        // Other pairs and SPIs have their own.
        assert_eq!(again.start(&key(3), 0x1234), 0);
        assert_eq!(again.start(&key(2), 0x1235), 0);
    }

    #[test]
    fn a_file_of_another_key_starts_empty_and_a_damaged_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut res = Reservations::load(dir.path(), key(1)).unwrap();
        res.cover(&key(2), 7, 100).unwrap();
        let other = Reservations::load(dir.path(), key(9)).unwrap();
        assert_eq!(other.start(&key(2), 7), 0);
        std::fs::write(dir.path().join(FILE), b"{not json").unwrap();
        let err = Reservations::load(dir.path(), key(1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("ipsec-sequence.json"), "{err}");
        assert!(err.contains("repeat AES-GCM nonces"), "{err}");
    }
}

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
//! interval, long before 2²⁶ packets (67 s at a million packets a second).
//!
//! Where an SA may start again is bounded by [`MAX_START`]: with extended
//! sequence numbers the receiver infers the high 32 bits, and an SA it has
//! just installed (the peer rebooted too, or ran a cleanup) takes a first
//! packet below 2³¹ for the lowest ones, while one that tracks the sender
//! follows a jump of less than 2³¹. So an SA can be installed again about 16
//! times under one key; after that it stays uninstalled (dropped, never a
//! nonce repeated) until the peer's next rekey gives the pair a new key (a
//! new epoch, a new SPI, a fresh reservation).
//!
//! The file belongs to the private key beside it: it names the public key it
//! was written for, and one written for another key starts empty (that key's
//! SAs had other keys). A file that cannot be read leaves the outbound SAs
//! uninstalled (traffic dropped, never a nonce repeated) with an error that
//! says so.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use wireseal_core::PublicKey;

use crate::state_file::{StateFileError, read_json, write_json};

/// How far a reservation runs ahead of the kernel's counter.
pub const STEP: u64 = 1 << 27;

/// The highest sequence number an SA may be installed again from (see the
/// module's documentation).
pub const MAX_START: u64 = (1 << 31) - 1;

/// The file's name in the state directory.
pub const FILE: &str = "ipsec-sequence.json";

/// What a damaged reservation file means.
const DAMAGED: &str = "outbound IPsec SAs stay uninstalled, since without it a restarted SA \
    could repeat AES-GCM nonces. Remove it only together with private.key (a new key starts \
    new SAs)";

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
    pub fn load(state_dir: &Path, own: PublicKey) -> Result<Self, StateFileError> {
        let path = state_dir.join(FILE);
        let stored = read_json::<Stored>(&path, DAMAGED)?
            .filter(|stored| stored.own == Some(own))
            .unwrap_or_default();
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
    pub fn cover(&mut self, peer: &PublicKey, spi: u32, used: u64) -> Result<bool, StateFileError> {
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

    fn write(&self) -> Result<(), StateFileError> {
        write_json(&self.path, &self.stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_key as key;

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
    fn an_sa_may_start_again_about_sixteen_times_under_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut res = Reservations::load(dir.path(), key(1)).unwrap();
        let mut installs = 0;
        loop {
            let start = res.start(&key(2), 9);
            if start > MAX_START {
                break;
            }
            res.cover(&key(2), 9, start).unwrap();
            installs += 1;
        }
        assert_eq!(installs, 16);
        // Every start a fresh receiver can follow: its high 32 bits are 0
        // and it lies below 2^31.
        const { assert!(15 * STEP <= MAX_START) };
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

//! IPsec mode's rekey: this node's key epoch, counted up every
//! `--ipsec-rekey-interval`, make-before-break.
//!
//! The SAs towards a node are keyed (and their SPIs chosen) by that node's
//! epoch, which it publishes in `wireseal.dev/ipsec-epoch`. A rekey:
//! 1. the node counts its epoch up and keeps the new value in the state
//!    directory, before anything uses it;
//! 2. the same pass installs the new epoch's inbound SAs from every peer,
//!    beside the old ones, and publishes the new epoch afterwards;
//! 3. each peer, on seeing it, installs its outbound SA of the new epoch
//!    (the kernel sends on the newest SA at once) and removes the old one;
//! 4. once the new epoch is seen on the API server, the old inbound SAs stay
//!    for a grace period (peers that have not switched yet still send on
//!    them), then go.
//!
//! The next rekey waits for the previous one to settle, so a node never has
//! more than two epochs of inbound SAs. Each rekey is one Node write and,
//! for every peer, one SA: O(1) per peer, O(n) for the cluster.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::state_file::{StateFileError, read_json, write_json};

use serde::{Deserialize, Serialize};
use wireseal_core::PublicKey;
use wireseal_core::ipsec::Epochs;

/// The file's name in the state directory.
pub const FILE: &str = "ipsec-epoch.json";

/// What a damaged epoch file means.
const DAMAGED: &str = "IPsec mode cannot start without knowing its epoch; remove the file \
    only together with private.key (a new key starts again at epoch 0)";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Stored {
    /// The key the epochs belong to: a new key starts again at 0.
    own: PublicKey,
    /// The current epoch, and since when (seconds since the Unix epoch).
    current: u32,
    since: i64,
    /// The previous epoch while its inbound SAs are kept, and until when
    /// (set once the current epoch is seen published).
    previous: Option<u32>,
    previous_until: Option<i64>,
}

/// This node's epochs and their schedule.
#[derive(Debug)]
pub struct EpochState {
    path: PathBuf,
    stored: Stored,
    interval: Option<Duration>,
    grace: Duration,
}

fn secs(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

impl EpochState {
    /// Reads this node's epochs from `state_dir` (epoch 0 from `now` when
    /// there is no file yet, or it was kept for another key), rekeying every
    /// `interval` (`None`: never) and keeping the old SAs `grace` long.
    ///
    /// # Errors
    /// When the file exists but cannot be read or parsed, or a new one
    /// cannot be written.
    pub fn load(
        state_dir: &Path,
        own: PublicKey,
        interval: Option<Duration>,
        grace: Duration,
        now: i64,
    ) -> Result<Self, StateFileError> {
        let path = state_dir.join(FILE);
        let found = read_json::<Stored>(&path, DAMAGED)?;
        let mut state = Self {
            stored: Stored {
                own,
                current: 0,
                since: now,
                previous: None,
                previous_until: None,
            },
            path,
            interval,
            grace,
        };
        match found {
            Some(stored) if stored.own == own => state.stored = stored,
            _ => state.write(&state.stored)?,
        }
        Ok(state)
    }

    /// The epochs the datapath keeps now.
    #[must_use]
    pub fn epochs(&self) -> Epochs {
        Epochs {
            current: self.stored.current,
            previous: self.stored.previous,
        }
    }

    /// One pass at `now`, with the epoch as published on this node's Node
    /// (`published`): starts the grace period once the current epoch is out,
    /// ends it, and rekeys when the interval has passed and nothing is
    /// settling. Every change is kept on disk before it takes effect.
    ///
    /// # Errors
    /// When a change cannot be written: the epochs stay as they were.
    pub fn step(&mut self, now: i64, published: Option<u32>) -> Result<Epochs, StateFileError> {
        let mut next = self.stored;
        if next.previous.is_some()
            && next.previous_until.is_none()
            && published == Some(next.current)
        {
            next.previous_until = Some(now.saturating_add(secs(self.grace)));
        }
        if next.previous_until.is_some_and(|until| until <= now) {
            next.previous = None;
            next.previous_until = None;
        }
        let due = self
            .interval
            .is_some_and(|every| now.saturating_sub(next.since) >= secs(every));
        if due && next.previous.is_none() {
            next.previous = Some(next.current);
            next.current = next.current.wrapping_add(1);
            next.since = now;
            next.previous_until = None;
        }
        if next != self.stored {
            self.write(&next)?;
            self.stored = next;
        }
        Ok(self.epochs())
    }

    /// When the next pass has something to do: the end of the grace period,
    /// or the next rekey.
    #[must_use]
    pub fn next_wake(&self) -> Option<i64> {
        match (self.stored.previous, self.stored.previous_until) {
            (Some(_), Some(until)) => Some(until),
            // Waiting for the epoch to be published: the pass that sees it
            // comes with the Node's watch event.
            (Some(_), None) => None,
            (None, _) => self
                .interval
                .map(|every| self.stored.since.saturating_add(secs(every))),
        }
    }

    fn write(&self, stored: &Stored) -> Result<(), StateFileError> {
        write_json(&self.path, stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_key as key;

    const HOUR: Duration = Duration::from_secs(3600);
    const GRACE: Duration = Duration::from_secs(60);

    fn epochs(current: u32, previous: Option<u32>) -> Epochs {
        Epochs { current, previous }
    }

    #[test]
    fn a_rekey_keeps_the_old_epoch_until_the_new_one_is_out_and_a_grace_has_passed() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = EpochState::load(dir.path(), key(1), Some(HOUR), GRACE, 1000).unwrap();
        assert_eq!(state.step(1000, None).unwrap(), epochs(0, None));
        assert_eq!(state.next_wake(), Some(4600));
        // Due: the new epoch, the old one kept.
        assert_eq!(state.step(4600, Some(0)).unwrap(), epochs(1, Some(0)));
        assert_eq!(state.next_wake(), None, "waits for the publication");
        // Not published yet: no grace period runs, however long it takes.
        assert_eq!(state.step(4900, Some(0)).unwrap(), epochs(1, Some(0)));
        // Published: the grace period starts, then ends.
        assert_eq!(state.step(4901, Some(1)).unwrap(), epochs(1, Some(0)));
        assert_eq!(state.next_wake(), Some(4961));
        assert_eq!(state.step(4960, Some(1)).unwrap(), epochs(1, Some(0)));
        assert_eq!(state.step(4961, Some(1)).unwrap(), epochs(1, None));
        // The next rekey counts from the last one.
        assert_eq!(state.next_wake(), Some(4600 + 3600));
        // One that came due while the last one settled goes at once after it.
        assert_eq!(state.step(20_000, Some(1)).unwrap(), epochs(2, Some(1)));
        assert_eq!(state.step(20_001, None).unwrap(), epochs(2, Some(1)));
        assert_eq!(state.step(30_000, Some(2)).unwrap(), epochs(2, Some(1)));
        assert_eq!(state.step(30_060, Some(2)).unwrap(), epochs(3, Some(2)));
    }

    #[test]
    fn the_epochs_survive_a_restart_and_a_new_key_starts_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = EpochState::load(dir.path(), key(1), Some(HOUR), GRACE, 0).unwrap();
        state.step(3600, None).unwrap();
        let again = EpochState::load(dir.path(), key(1), Some(HOUR), GRACE, 5000).unwrap();
        assert_eq!(again.epochs(), epochs(1, Some(0)));
        let other = EpochState::load(dir.path(), key(2), Some(HOUR), GRACE, 5000).unwrap();
        assert_eq!(other.epochs(), epochs(0, None));
        // Without an interval nothing changes.
        let mut never = EpochState::load(dir.path(), key(3), None, GRACE, 0).unwrap();
        assert_eq!(never.step(i64::MAX / 2, Some(0)).unwrap(), epochs(0, None));
        assert_eq!(never.next_wake(), None);
        std::fs::write(dir.path().join(FILE), b"[]").unwrap();
        let err = EpochState::load(dir.path(), key(3), None, GRACE, 0).unwrap_err();
        assert!(err.to_string().contains("ipsec-epoch.json"), "{err}");
    }
}

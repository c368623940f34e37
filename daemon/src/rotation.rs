//! This node's side of a scheduled key rotation, make-before-break: the next
//! key is created beside the current one (`wireseal keys rotate`, or
//! `--key-rotation-interval`), a switch time is fixed and kept, the two are
//! announced on the Node, and at that time this node and every peer switch
//! together (peers: see `wireseal_core::rotation`).
//!
//! Crash safety: the next key (0600, atomic, by keymgr) and the switch time
//! are on disk before anything is announced, so an agent restarting mid-
//! rotation announces the same key and time again and switches at it; a
//! switch is one atomic rename of the key file.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;
use tracing::{info, warn};
use wireseal_core::NextKey;
use wireseal_core::annotation::{KEY_SWITCH_AT, NEXT_PUBLIC_KEY};
use wireseal_core::rotation::{decode_switch_at, format_switch_at};
use wireseal_keymgr::{KeyStore, KeyStoreError, PrivateKey};

/// The file, in the state directory, holding the switch time of the
/// rotation under way, as announced.
pub const SWITCH_FILE: &str = "key-switch-at";

/// A rotation step that failed; the rotation is retried on the next pass.
#[derive(Debug, Error)]
pub enum RotationError {
    /// The key store failed.
    #[error(transparent)]
    Keys(#[from] KeyStoreError),
    /// The switch time could not be written or removed.
    #[error("{action} {path}: {source}")]
    SwitchFile {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
}

/// The rotation of this node's key.
#[derive(Debug)]
pub struct Rotation {
    store: KeyStore,
    interval: Option<Duration>,
    lead: Duration,
    /// The rotation under way: its next key and switch time.
    pending: Option<(PrivateKey, i64)>,
}

impl Rotation {
    /// A rotation over the keys in `store`: automatic once the current key
    /// is `interval` old (if set), announced `lead` ahead of the switch.
    #[must_use]
    pub fn new(store: KeyStore, interval: Option<Duration>, lead: Duration) -> Self {
        Self {
            store,
            interval,
            lead,
            pending: None,
        }
    }

    /// What to announce on the Node: the next key and its switch time.
    #[must_use]
    pub fn announced(&self) -> Option<NextKey> {
        self.pending.as_ref().map(|(key, at)| NextKey {
            key: key.public_key(),
            switch_at: *at,
        })
    }

    /// The next private key while a rotation is under way: the userspace
    /// datapath answers handshakes to it before the switch.
    #[must_use]
    pub fn next_private(&self) -> Option<&PrivateKey> {
        self.pending.as_ref().map(|(key, _)| key)
    }

    /// One look, on every pass: starts a rotation when a next key is there
    /// (or the current key is due), and switches once the time has come and
    /// the announcement is on the Node (`published`: this Node's annotations
    /// as the API server has them). Returns the new current key on a switch.
    ///
    /// # Errors
    /// The key store or the switch file failed; nothing was announced or
    /// switched by this call then.
    pub fn step(
        &mut self,
        now: i64,
        published: &BTreeMap<String, String>,
    ) -> Result<Option<PrivateKey>, RotationError> {
        if self.pending.is_none() {
            self.start(now)?;
        }
        let Some((next, at)) = &self.pending else {
            return Ok(None);
        };
        if now < *at {
            return Ok(None);
        }
        let announced = published.get(NEXT_PUBLIC_KEY) == Some(&next.public_key().to_base64())
            && published.get(KEY_SWITCH_AT) == Some(&format_switch_at(*at));
        if !announced {
            // Peers cannot know a switch they were never told of: announce
            // again and switch a lead time later.
            let later = now.saturating_add(lead_secs(self.lead));
            warn!(
                next_public_key = %next.public_key().fingerprint(),
                switch_at = %format_switch_at(later),
                "the next key is not on the Node yet; switch postponed"
            );
            self.write_switch_at(later)?;
            self.pending = self.pending.take().map(|(key, _)| (key, later));
            return Ok(None);
        }
        let key = self.store.promote_next()?;
        self.pending = None;
        self.remove_switch_file()?;
        info!(public_key = %key.public_key(), "switched to the next key");
        Ok(Some(key))
    }

    /// Picks up a next key (creating one when the current key is due) and
    /// fixes its switch time, kept on disk before it is announced. Without
    /// a next key, a switch file left by a crash after a switch goes.
    fn start(&mut self, now: i64) -> Result<(), RotationError> {
        let mut next = self.store.load_next()?;
        if next.is_none() && self.due() {
            next = Some(self.store.create_next()?.0);
        }
        let Some(next) = next else {
            return self.remove_switch_file();
        };
        let kept = std::fs::read_to_string(self.switch_path())
            .ok()
            .and_then(|text| decode_switch_at(text.trim()).ok());
        let at = match kept {
            Some(at) => at,
            None => {
                let at = now.saturating_add(lead_secs(self.lead));
                self.write_switch_at(at)?;
                at
            }
        };
        info!(
            next_public_key = %next.public_key(),
            switch_at = %format_switch_at(at),
            resumed = kept.is_some(),
            "key rotation under way"
        );
        self.pending = Some((next, at));
        Ok(())
    }

    /// True when `--key-rotation-interval` is set and the current key file
    /// is at least that old (the next key file becomes the current one by a
    /// rename, so its time is the key's creation).
    fn due(&self) -> bool {
        let Some(interval) = self.interval else {
            return false;
        };
        std::fs::metadata(self.store.path())
            .and_then(|meta| meta.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok())
            .is_some_and(|age| age >= interval)
    }

    fn switch_path(&self) -> PathBuf {
        self.store.dir().join(SWITCH_FILE)
    }

    fn write_switch_at(&self, at: i64) -> Result<(), RotationError> {
        let path = self.switch_path();
        let temporary = self.store.dir().join(format!(".{SWITCH_FILE}.tmp"));
        let write = || -> std::io::Result<()> {
            std::fs::write(&temporary, format_switch_at(at))?;
            std::fs::File::open(&temporary)?.sync_all()?;
            std::fs::rename(&temporary, &path)?;
            std::fs::File::open(self.store.dir())?.sync_all()
        };
        write().map_err(|source| RotationError::SwitchFile {
            action: "writing",
            path: path.clone(),
            source,
        })
    }

    fn remove_switch_file(&self) -> Result<(), RotationError> {
        let path = self.switch_path();
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(RotationError::SwitchFile {
                action: "removing",
                path,
                source,
            }),
        }
    }
}

fn lead_secs(lead: Duration) -> i64 {
    i64::try_from(lead.as_secs()).unwrap_or(i64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published(next: Option<NextKey>) -> BTreeMap<String, String> {
        let key = PrivateKey::from_bytes([7; 32]).unwrap().public_key();
        wireseal_core::annotation::encode_own(&key, next.as_ref(), None, None, None)
    }

    #[test]
    fn a_rotation_is_announced_switched_after_its_announcement_and_resumed_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path().join("state"));
        let (current, _) = store.load_or_create().unwrap();
        let lead = Duration::from_secs(60);
        let mut rotation = Rotation::new(store.clone(), None, lead);
        assert!(rotation.step(1_000, &published(None)).unwrap().is_none());
        assert_eq!(rotation.announced(), None, "nothing to rotate");

        let (next, _) = store.create_next().unwrap();
        assert!(rotation.step(1_000, &published(None)).unwrap().is_none());
        let announced = rotation.announced().unwrap();
        assert_eq!(announced.key, next.public_key());
        assert_eq!(announced.switch_at, 1_060);

        // A restart before the switch: same key, same time.
        let mut restarted = Rotation::new(store.clone(), None, lead);
        assert!(restarted.step(1_030, &published(None)).unwrap().is_none());
        assert_eq!(restarted.announced(), Some(announced));

        // At the time, but the announcement never reached the Node:
        // postponed by a lead time, not switched.
        assert!(restarted.step(1_060, &published(None)).unwrap().is_none());
        let postponed = restarted.announced().unwrap();
        assert_eq!(postponed.switch_at, 1_120);
        assert_eq!(
            store.load().unwrap().unwrap().public_key(),
            current.public_key()
        );

        let switched = restarted
            .step(1_120, &published(Some(postponed)))
            .unwrap()
            .unwrap();
        assert_eq!(switched.public_key(), next.public_key());
        assert_eq!(
            store.load().unwrap().unwrap().public_key(),
            next.public_key()
        );
        assert!(store.load_next().unwrap().is_none());
        assert_eq!(restarted.announced(), None);
        assert!(!dir.path().join("state").join(SWITCH_FILE).exists());
    }

    #[test]
    fn the_interval_starts_a_rotation_once_the_key_is_old_enough() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path().join("state"));
        store.load_or_create().unwrap();
        let mut young = Rotation::new(
            store.clone(),
            Some(Duration::from_secs(3600)),
            Duration::from_secs(60),
        );
        young.step(1_000, &published(None)).unwrap();
        assert_eq!(young.announced(), None);
        let mut due = Rotation::new(store.clone(), Some(Duration::ZERO), Duration::from_secs(60));
        due.step(1_000, &published(None)).unwrap();
        let next = store.load_next().unwrap().unwrap();
        assert_eq!(due.announced().unwrap().key, next.public_key());
    }

    #[test]
    fn a_switch_file_left_by_a_crash_after_the_switch_goes() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path().join("state"));
        store.load_or_create().unwrap();
        let path = dir.path().join("state").join(SWITCH_FILE);
        std::fs::write(&path, "2026-12-03T14:00:00Z").unwrap();
        let mut rotation = Rotation::new(store, None, Duration::from_secs(60));
        rotation.step(1_000, &published(None)).unwrap();
        assert!(!path.exists());
        assert_eq!(rotation.announced(), None);
    }
}

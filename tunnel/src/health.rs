//! Progress stamps of the datapath threads, for the liveness check.
//!
//! Every pipeline thread wakes at least once a second even when idle (poll and
//! receive timeouts, the timer tick) and stamps its [`Beat`] on each pass. A thread
//! that is stuck (a lock never released, a syscall that never returns) or dead (a
//! panic in a debug build; release builds abort the process) stops stamping, and the
//! UAPI's `health=1` answers with its name and an error, which fails the container's
//! liveness probe (`wireseal-tunnel --check`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a thread may go without a stamp before it counts as stuck: far above
/// its one-second wake-up, below a liveness probe's patience.
pub const STALE_AFTER: Duration = Duration::from_secs(10);

/// The stamps of all registered threads.
#[derive(Debug)]
pub struct Health {
    start: Instant,
    beats: Mutex<Vec<(String, Arc<AtomicU64>)>>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            beats: Mutex::new(Vec::new()),
        }
    }
}

/// Stamps are milliseconds since [`Health`] was made plus this, so a stamp can
/// lie before the start (a test's "last seen an hour ago").
const EPOCH_OFFSET: u64 = 3_600_000;

/// One thread's stamp.
#[derive(Debug, Clone)]
pub struct Beat {
    start: Instant,
    last: Arc<AtomicU64>,
}

impl Beat {
    /// Records progress now.
    pub fn beat(&self) {
        self.last.store(now(self.start), Ordering::Relaxed);
    }

    /// Makes the stamp an hour old, as if the thread had been stuck since.
    #[cfg(test)]
    pub(crate) fn stop(&self) {
        self.last.store(0, Ordering::Relaxed);
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn now(start: Instant) -> u64 {
    millis(start.elapsed()).saturating_add(EPOCH_OFFSET)
}

impl Health {
    /// Registers a thread, stamped as alive now.
    pub fn register(&self, name: &str) -> Beat {
        let beat = Beat {
            start: self.start,
            last: Arc::new(AtomicU64::new(0)),
        };
        beat.beat();
        self.beats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((name.to_owned(), Arc::clone(&beat.last)));
        beat
    }

    /// The threads without a stamp in the last `limit`.
    #[must_use]
    pub fn stale(&self, limit: Duration) -> Vec<String> {
        let now = now(self.start);
        let limit = millis(limit);
        self.beats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, last)| now.saturating_sub(last.load(Ordering::Relaxed)) > limit)
            .map(|(name, _)| name.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_that_stops_stamping_is_named() {
        let health = Health::default();
        let busy = health.register("udp-rx-0");
        let stuck = health.register("tun-rx-0");
        assert!(health.stale(STALE_AFTER).is_empty());
        stuck.stop();
        busy.beat();
        assert_eq!(health.stale(STALE_AFTER), ["tun-rx-0"]);
        stuck.beat();
        assert!(health.stale(STALE_AFTER).is_empty());
    }
}

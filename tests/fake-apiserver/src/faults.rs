//! Fault injection, shared by the library handle and the `/__fake/` admin
//! endpoints. Admin requests are never subject to faults.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use crate::error::ApiError;
use crate::store::State;

/// A signal to every open watch stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WatchSignal {
    /// End the stream cleanly (as a load balancer or apiserver restart would).
    Drop,
    /// End the stream with an in-stream `ERROR 410 Expired`.
    Expire,
}

/// "Answer the next `remaining` requests matching this with `code`".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailRule {
    /// HTTP status code (e.g. 500, 409, 429).
    pub code: u16,
    /// How many more requests to fail.
    pub remaining: u32,
    /// Only requests with this method (e.g. `PATCH`), if set.
    pub method: Option<String>,
    /// Only requests whose path starts with this, if set.
    pub path_prefix: Option<String>,
}

impl FailRule {
    fn matches(&self, method: &str, path: &str) -> bool {
        self.remaining > 0
            && self
                .method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method))
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| path.starts_with(p))
    }
}

struct Inner {
    rules: Mutex<Vec<FailRule>>,
    expire_next_watches: AtomicU32,
    pause_until: watch::Sender<Option<Instant>>,
    watch_signals: broadcast::Sender<WatchSignal>,
    /// What the accept loop should do (true = accept).
    accepting: watch::Sender<bool>,
    /// What the accept loop has done (true = listening).
    listening: watch::Sender<bool>,
    open_watches: AtomicUsize,
    state: State,
}

/// The fault-injection controls; cheap to clone.
#[derive(Clone)]
pub struct Faults {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Faults")
            .field("open_watches", &self.open_watches())
            .finish_non_exhaustive()
    }
}

impl Faults {
    pub(crate) fn new(state: State) -> Self {
        let (watch_signals, _) = broadcast::channel(64);
        Self {
            inner: Arc::new(Inner {
                rules: Mutex::new(Vec::new()),
                expire_next_watches: AtomicU32::new(0),
                pause_until: watch::channel(None).0,
                watch_signals,
                accepting: watch::channel(true).0,
                listening: watch::channel(true).0,
                open_watches: AtomicUsize::new(0),
                state,
            }),
        }
    }

    fn rules(&self) -> MutexGuard<'_, Vec<FailRule>> {
        self.inner
            .rules
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Answers the next `count` API requests with `code` (a `Status` body).
    pub fn fail_next(&self, count: u32, code: u16) {
        self.fail_next_matching(FailRule {
            code,
            remaining: count,
            method: None,
            path_prefix: None,
        });
    }

    /// Adds a failure rule; rules are tried in the order they were added.
    pub fn fail_next_matching(&self, rule: FailRule) {
        self.rules().push(rule);
    }

    /// The failure rules that still have requests to fail.
    #[must_use]
    pub fn pending_failures(&self) -> Vec<FailRule> {
        self.rules()
            .iter()
            .filter(|r| r.remaining > 0)
            .cloned()
            .collect()
    }

    /// Consumes one failure for this request, if a rule matches.
    pub(crate) fn take_failure(&self, method: &str, path: &str) -> Option<ApiError> {
        let mut rules = self.rules();
        let rule = rules.iter_mut().find(|r| r.matches(method, path))?;
        rule.remaining -= 1;
        let code = rule.code;
        rules.retain(|r| r.remaining > 0);
        Some(ApiError::Injected { code })
    }

    /// Ends every open watch stream cleanly; clients re-watch from their last version.
    pub fn drop_watches(&self) {
        let _ = self.inner.watch_signals.send(WatchSignal::Drop);
    }

    /// The next `count` watch requests get an in-stream `ERROR 410 Expired`
    /// right away (HTTP 200), whatever version they ask for.
    pub fn expire_next_watches(&self, count: u32) {
        self.inner
            .expire_next_watches
            .fetch_add(count, Ordering::SeqCst);
    }

    pub(crate) fn take_forced_expiry(&self) -> bool {
        self.inner
            .expire_next_watches
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Compacts the history (raising the floor to the current version) and
    /// ends every open watch with an in-stream 410, forcing clients to relist.
    pub fn expire_watches(&self) {
        self.inner.state.compact();
        let _ = self.inner.watch_signals.send(WatchSignal::Expire);
    }

    pub(crate) fn watch_signals(&self) -> broadcast::Receiver<WatchSignal> {
        self.inner.watch_signals.subscribe()
    }

    /// Holds every API request that arrives in the next `duration` until it ends.
    pub fn pause(&self, duration: Duration) {
        self.inner
            .pause_until
            .send_replace(Some(Instant::now() + duration));
    }

    /// Releases held requests now.
    pub fn unpause(&self) {
        self.inner.pause_until.send_replace(None);
    }

    /// Waits while a pause is in force.
    pub(crate) async fn wait_unpaused(&self) {
        let mut rx = self.inner.pause_until.subscribe();
        loop {
            let until = *rx.borrow_and_update();
            match until {
                Some(t) if Instant::now() < t => {
                    tokio::select! {
                        () = tokio::time::sleep_until(t) => {}
                        r = rx.changed() => if r.is_err() { return },
                    }
                }
                _ => return,
            }
        }
    }

    /// API server outage: closes the listener (new connections are refused)
    /// and drops every open connection, watches included.
    pub fn refuse_connections(&self) {
        self.inner.accepting.send_replace(false);
    }

    /// Ends an outage: listens again on the same address.
    pub fn accept_connections(&self) {
        self.inner.accepting.send_replace(true);
    }

    /// Waits until the listener is in the requested state (`true` = listening).
    pub async fn wait_listening(&self, listening: bool) {
        let mut rx = self.inner.listening.subscribe();
        // An error means the server is gone; nothing more to wait for.
        let _ = rx.wait_for(|l| *l == listening).await;
    }

    /// Whether the listener is currently open.
    #[must_use]
    pub fn is_listening(&self) -> bool {
        *self.inner.listening.borrow()
    }

    pub(crate) fn accepting_rx(&self) -> watch::Receiver<bool> {
        self.inner.accepting.subscribe()
    }

    pub(crate) fn set_listening(&self, listening: bool) {
        self.inner.listening.send_replace(listening);
    }

    /// How many watch streams are open right now.
    #[must_use]
    pub fn open_watches(&self) -> usize {
        self.inner.open_watches.load(Ordering::SeqCst)
    }

    pub(crate) fn watch_guard(&self) -> WatchGuard {
        self.inner.open_watches.fetch_add(1, Ordering::SeqCst);
        WatchGuard(self.inner.clone())
    }

    /// Clears failure rules, forced expiries and any pause, and resumes listening.
    pub fn reset(&self) {
        self.rules().clear();
        self.inner.expire_next_watches.store(0, Ordering::SeqCst);
        self.unpause();
        self.accept_connections();
    }
}

/// Counts an open watch for as long as it lives.
pub(crate) struct WatchGuard(Arc<Inner>);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.open_watches.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_and_run_out() {
        let f = Faults::new(State::new(10));
        f.fail_next_matching(FailRule {
            code: 409,
            remaining: 2,
            method: Some("PATCH".into()),
            path_prefix: Some("/api/v1/nodes/a".into()),
        });
        assert!(f.take_failure("GET", "/api/v1/nodes/a").is_none());
        assert!(f.take_failure("PATCH", "/api/v1/nodes/b").is_none());
        assert_eq!(
            f.take_failure("patch", "/api/v1/nodes/a/status")
                .map(|e| e.code()),
            Some(409)
        );
        assert!(f.take_failure("PATCH", "/api/v1/nodes/a").is_some());
        assert!(f.take_failure("PATCH", "/api/v1/nodes/a").is_none());
        assert!(f.pending_failures().is_empty());
    }

    #[test]
    fn forced_expiry_counts_down() {
        let f = Faults::new(State::new(10));
        assert!(!f.take_forced_expiry());
        f.expire_next_watches(2);
        assert!(f.take_forced_expiry());
        assert!(f.take_forced_expiry());
        assert!(!f.take_forced_expiry());
    }
}

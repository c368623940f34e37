//! Watch streams: chunked HTTP/1.1, one JSON event per line.
//!
//! The stream is HTTP 200 in every case; a too-old resourceVersion (or a
//! forced expiry) is an in-stream `ERROR` event carrying a 410 `Status`,
//! because that, and not an HTTP 410, is what makes kube-rs's watcher relist.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};

use crate::error::ApiError;
use crate::faults::{Faults, WatchGuard, WatchSignal};
use crate::server::Body;
use crate::store::{Change, ChangeType, State, WatchStart};
use crate::view::{Filter, View};

/// What a watch request asked for.
pub(crate) struct WatchRequest {
    pub(crate) filter: Filter,
    pub(crate) view: View,
    /// `None` for "" or "0": current state first, as synthetic ADDED events.
    pub(crate) from: Option<u64>,
    pub(crate) timeout: Duration,
    pub(crate) bookmarks: bool,
    pub(crate) bookmark_interval: Duration,
}

/// Starts a watch and returns the streaming body. The subscription is taken
/// before this returns, so writes made after the request arrived are seen.
pub(crate) fn start(
    req: WatchRequest,
    state: &State,
    faults: &Faults,
    shutdown: watch::Receiver<bool>,
) -> Body {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let task = Task {
        tx,
        signals: faults.watch_signals(),
        forced_expiry: faults.take_forced_expiry(),
        start: state.watch_from(req.filter.kind, req.from),
        floor: state.compaction_floor(),
        req,
        shutdown,
        _guard: faults.watch_guard(),
    };
    tokio::spawn(task.run());
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    StreamBody::new(stream).boxed_unsync()
}

struct Task {
    tx: mpsc::Sender<Bytes>,
    signals: broadcast::Receiver<WatchSignal>,
    forced_expiry: bool,
    start: WatchStart,
    floor: u64,
    req: WatchRequest,
    shutdown: watch::Receiver<bool>,
    _guard: WatchGuard,
}

/// The event (if any) a change produces for this watcher. Like the real
/// watch cache, an update that moves an object out of the selection is a
/// DELETED (of the old state, at the new version) and one that moves it in
/// is an ADDED.
fn event_for(filter: &Filter, view: View, change: &Change) -> Option<(&'static str, Value)> {
    if change.kind != filter.kind {
        return None;
    }
    let now = filter.matches(&change.object);
    let (ty, obj) = match change.ty {
        ChangeType::Added => now.then_some(("ADDED", (*change.object).clone()))?,
        ChangeType::Deleted => now.then_some(("DELETED", (*change.object).clone()))?,
        ChangeType::Modified => {
            let before = change.old.as_deref().is_some_and(|o| filter.matches(o));
            match (before, now) {
                (true, true) => ("MODIFIED", (*change.object).clone()),
                (false, true) => ("ADDED", (*change.object).clone()),
                (true, false) => {
                    let mut old = change.old.as_deref().cloned().unwrap_or(Value::Null);
                    old["metadata"]["resourceVersion"] = json!(change.rv.to_string());
                    ("DELETED", old)
                }
                (false, false) => return None,
            }
        }
    };
    Some((ty, view.render(&obj)))
}

fn line(ty: &str, object: Value) -> Bytes {
    let mut s = json!({"type": ty, "object": object}).to_string();
    s.push('\n');
    Bytes::from(s)
}

impl Task {
    async fn send(&self, ty: &str, object: Value) -> bool {
        self.tx.send(line(ty, object)).await.is_ok()
    }

    async fn expired(&self, requested: u64, floor: u64) {
        self.send("ERROR", ApiError::Expired { requested, floor }.to_status())
            .await;
    }

    async fn run(mut self) {
        let filter = self.req.filter.clone();
        let view = self.req.view;
        let start = std::mem::replace(
            &mut self.start,
            WatchStart::Expired {
                requested: 0,
                floor: 0,
            },
        );
        let (initial, mut rx, mut last_rv) = match start {
            WatchStart::Expired { requested, floor } => {
                return self.expired(requested, floor).await;
            }
            WatchStart::Ready { initial, rx, rv } => (initial, rx, rv),
        };
        if self.forced_expiry {
            let floor = self.floor.max(last_rv + 1);
            return self.expired(last_rv, floor).await;
        }
        for change in initial {
            last_rv = last_rv.max(change.rv);
            if let Some((ty, obj)) = event_for(&filter, view, &change)
                && !self.send(ty, obj).await
            {
                return;
            }
        }
        let deadline = Instant::now() + self.req.timeout;
        let mut ticks = tokio::time::interval_at(
            Instant::now() + self.req.bookmark_interval,
            self.req.bookmark_interval,
        );
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.changed() => return,
                () = self.tx.closed() => return,
                () = tokio::time::sleep_until(deadline) => return,
                sig = self.signals.recv() => match sig {
                    Ok(WatchSignal::Drop) | Err(broadcast::error::RecvError::Closed) => return,
                    Ok(WatchSignal::Expire) => return self.expired(last_rv, last_rv + 1).await,
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                },
                _ = ticks.tick(), if self.req.bookmarks => {
                    // The version of the last change this stream has passed,
                    // never one still queued for it: resuming from a bookmark
                    // must not skip anything.
                    if !self.send("BOOKMARK", view.bookmark(last_rv)).await {
                        return;
                    }
                }
                change = rx.recv() => match change {
                    // A watch from a version newer than any write yet
                    // starts after that version.
                    Ok(change) if change.rv <= last_rv => {}
                    Ok(change) => {
                        last_rv = change.rv;
                        if let Some((ty, obj)) = event_for(&filter, view, &change)
                            && !self.send(ty, obj).await
                        {
                            return;
                        }
                    }
                    // Too slow to keep up: like the real server, make the
                    // client start over.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        return self.expired(last_rv, last_rv + 1).await;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selectors::{FieldSelector, LabelSelector};
    use crate::store::Kind;
    use std::sync::Arc;

    fn node(name: &str, role: &str) -> Arc<Value> {
        Arc::new(
            json!({"metadata": {"name": name, "labels": {"role": role}, "resourceVersion": "5"}}),
        )
    }

    #[test]
    fn selector_transitions() {
        let filter = Filter {
            kind: Kind::Node,
            namespace: None,
            labels: LabelSelector::parse("role=edge").unwrap(),
            fields: FieldSelector::default(),
        };
        let view = View::Plain(Kind::Node);
        let change = |old: &str, new: &str| Change {
            rv: 9,
            kind: Kind::Node,
            ty: ChangeType::Modified,
            object: node("a", new),
            old: Some(node("a", old)),
        };
        assert_eq!(
            event_for(&filter, view, &change("edge", "edge")).unwrap().0,
            "MODIFIED"
        );
        assert_eq!(
            event_for(&filter, view, &change("core", "edge")).unwrap().0,
            "ADDED"
        );
        let (ty, obj) = event_for(&filter, view, &change("edge", "core")).unwrap();
        assert_eq!(ty, "DELETED");
        assert_eq!(obj["metadata"]["labels"]["role"], "edge");
        assert_eq!(obj["metadata"]["resourceVersion"], "9");
        assert!(event_for(&filter, view, &change("core", "core")).is_none());
    }
}

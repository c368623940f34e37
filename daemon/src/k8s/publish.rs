//! Publishes this node's `wireseal.dev/` annotations (public key, endpoint,
//! status) and its `WiresealEncrypted` condition through the nodes/status
//! subresource, in one strategic merge patch (the condition merged by type,
//! leaving the kubelet's), only when they differ from what the API server
//! has, retrying with backoff.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Map, Value, json};
use tokio::sync::watch;
use tracing::{info, warn};
use wireseal_core::annotation::{
    ENDPOINT, IPSEC_EPOCH, KEY_SWITCH_AT, NEXT_PUBLIC_KEY, PUBLIC_KEY, STATUS,
};

use crate::channels::{CONDITION_TYPE, ClusterView, EncryptedCondition, Outputs};
use crate::metrics::Metrics;

/// The annotations this agent owns. `pod-cidrs` is the operator's and is never written.
const OWNED: [&str; 6] = [
    PUBLIC_KEY,
    NEXT_PUBLIC_KEY,
    KEY_SWITCH_AT,
    ENDPOINT,
    STATUS,
    IPSEC_EPOCH,
];
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Runs until either channel closes.
pub async fn publish_own(
    api: Api<Node>,
    name: String,
    mut outputs: watch::Receiver<Outputs>,
    mut view: watch::Receiver<Arc<ClusterView>>,
    metrics: Metrics,
) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let Some(patch) = pending_patch(&outputs.borrow_and_update(), &view.borrow_and_update())
        else {
            tokio::select! {
                r = outputs.changed() => if r.is_err() { return },
                r = view.changed() => if r.is_err() { return },
            }
            continue;
        };
        let keys: Vec<String> = patch.annotations.keys().cloned().collect();
        let condition = patch.condition.is_some();
        let body = patch.body(&now_rfc3339());
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&body))
            .await
        {
            Ok(_) => {
                info!(node = %name, annotations = ?keys, condition, "published own annotations and condition");
                metrics.node_write(true);
                backoff = FIRST_BACKOFF;
                // Wait until the watch shows the write (or something else changes),
                // so the same patch is not sent twice.
                tokio::select! {
                    r = outputs.changed() => if r.is_err() { return },
                    r = view.changed() => if r.is_err() { return },
                    () = tokio::time::sleep(MAX_BACKOFF) => {}
                }
            }
            Err(err) => {
                warn!(node = %name, error = %err, retry_in = ?backoff, "publishing own annotations failed");
                metrics.node_write(false);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// What differs between this node's annotations and condition as they
/// should be and as the API server has them.
#[derive(Debug, PartialEq)]
struct Pending {
    /// Owned annotations that differ, `null` for one that should go.
    annotations: Map<String, Value>,
    /// The condition, when it differs, and whether its status changed.
    condition: Option<(EncryptedCondition, bool)>,
}

impl Pending {
    /// The strategic merge patch, stamped `now` (RFC 3339). The transition
    /// time moves only when the status changes, as Kubernetes conditions do.
    fn body(&self, now: &str) -> Value {
        let mut body = Map::new();
        if !self.annotations.is_empty() {
            body.insert(
                "metadata".to_owned(),
                json!({ "annotations": Value::Object(self.annotations.clone()) }),
            );
        }
        if let Some((condition, transition)) = &self.condition {
            let mut entry = json!({
                "type": CONDITION_TYPE,
                "status": if condition.status { "True" } else { "False" },
                "reason": condition.reason,
                "message": condition.message,
                "lastHeartbeatTime": now,
            });
            if *transition {
                entry["lastTransitionTime"] = Value::String(now.to_owned());
            }
            body.insert("status".to_owned(), json!({ "conditions": [entry] }));
        }
        Value::Object(body)
    }
}

/// Now, to the second, as Kubernetes stamps condition times.
fn now_rfc3339() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    now.round(k8s_openapi::jiff::Unit::Second)
        .unwrap_or(now)
        .to_string()
}

/// What to write, if anything. Nothing is written before the first full
/// list: until then the API server's copy is unknown.
fn pending_patch(outputs: &Outputs, view: &ClusterView) -> Option<Pending> {
    if !view.synced {
        return None;
    }
    let annotations = outputs
        .own_annotations
        .as_ref()
        .map(|want| annotation_patch(want, &view.own_annotations))
        .unwrap_or_default();
    let condition = outputs
        .own_condition
        .as_ref()
        .and_then(|want| match &view.own_condition {
            Some(have) if have == want => None,
            Some(have) => Some((want.clone(), have.status != want.status)),
            None => Some((want.clone(), true)),
        });
    (!annotations.is_empty() || condition.is_some()).then_some(Pending {
        annotations,
        condition,
    })
}

/// The merge-patch map for the owned annotations that differ, with `null` for
/// an owned annotation that should no longer be there.
fn annotation_patch(
    want: &BTreeMap<String, String>,
    have: &BTreeMap<String, String>,
) -> Map<String, Value> {
    let mut patch = Map::new();
    for key in OWNED {
        match (want.get(key), have.get(key)) {
            (Some(w), Some(h)) if w == h => {}
            (Some(w), _) => {
                patch.insert(key.to_owned(), Value::String(w.clone()));
            }
            (None, Some(_)) => {
                patch.insert(key.to_owned(), Value::Null);
            }
            (None, None) => {}
        }
    }
    patch
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pending: Option<Pending>) -> Option<Value> {
        pending.map(|p| Value::Object(p.annotations))
    }

    #[test]
    fn the_ipsec_epoch_is_published_and_goes_with_ipsec_mode() {
        let view = ClusterView {
            synced: true,
            own_annotations: BTreeMap::from([(PUBLIC_KEY.to_owned(), "k".to_owned())]),
            ..ClusterView::default()
        };
        let mut outputs = Outputs {
            own_annotations: Some(BTreeMap::from([
                (PUBLIC_KEY.to_owned(), "k".to_owned()),
                (IPSEC_EPOCH.to_owned(), "3".to_owned()),
            ])),
            ..Outputs::default()
        };
        assert_eq!(
            annotations(pending_patch(&outputs, &view)),
            Some(json!({ IPSEC_EPOCH: "3" }))
        );
        // Back in WireGuard mode the epoch is taken away.
        let mut ipsec_view = view;
        ipsec_view
            .own_annotations
            .insert(IPSEC_EPOCH.to_owned(), "3".to_owned());
        outputs.own_annotations = Some(BTreeMap::from([(PUBLIC_KEY.to_owned(), "k".to_owned())]));
        assert_eq!(
            annotations(pending_patch(&outputs, &ipsec_view)),
            Some(json!({ IPSEC_EPOCH: null }))
        );
    }

    #[test]
    fn patches_only_what_differs_and_never_pod_cidrs() {
        let mut outputs = Outputs::default();
        let mut view = ClusterView {
            synced: true,
            ..ClusterView::default()
        };
        assert_eq!(pending_patch(&outputs, &view), None);
        outputs.own_annotations = Some(BTreeMap::from([
            (PUBLIC_KEY.to_owned(), "k".to_owned()),
            (STATUS.to_owned(), "s".to_owned()),
        ]));
        view.own_annotations = BTreeMap::from([
            (PUBLIC_KEY.to_owned(), "k".to_owned()),
            (ENDPOINT.to_owned(), "old".to_owned()),
            (
                "wireseal.dev/pod-cidrs".to_owned(),
                "10.0.0.0/24".to_owned(),
            ),
        ]);
        assert_eq!(
            annotations(pending_patch(&outputs, &view)),
            Some(json!({ STATUS: "s", ENDPOINT: null }))
        );
        view.synced = false;
        assert_eq!(
            pending_patch(&outputs, &view),
            None,
            "nothing is written before the first full list"
        );
    }

    #[test]
    fn the_condition_is_written_when_it_differs_and_its_transition_time_moves_with_its_status() {
        let condition = |status: bool, message: &str| EncryptedCondition {
            status,
            reason: if status {
                "AllPeersEncrypted"
            } else {
                "PeersNotEncrypted"
            }
            .to_owned(),
            message: message.to_owned(),
        };
        let outputs = Outputs {
            own_condition: Some(condition(true, "2/2 peers encrypted, datapath kernel")),
            ..Outputs::default()
        };
        let mut view = ClusterView {
            synced: true,
            ..ClusterView::default()
        };

        let first = pending_patch(&outputs, &view).unwrap();
        assert_eq!(
            first.body("2026-12-03T10:00:00Z"),
            json!({ "status": { "conditions": [{
                "type": "WiresealEncrypted",
                "status": "True",
                "reason": "AllPeersEncrypted",
                "message": "2/2 peers encrypted, datapath kernel",
                "lastHeartbeatTime": "2026-12-03T10:00:00Z",
                "lastTransitionTime": "2026-12-03T10:00:00Z",
            }]}}),
            "a strategic patch of one condition: the kubelet's stay"
        );

        view.own_condition = outputs.own_condition.clone();
        assert_eq!(pending_patch(&outputs, &view), None, "in place: no write");

        view.own_condition = Some(condition(true, "1/1 peers encrypted, datapath kernel"));
        let body = pending_patch(&outputs, &view).unwrap().body("t");
        assert!(
            body["status"]["conditions"][0]
                .get("lastTransitionTime")
                .is_none(),
            "same status, new message: the transition time stays: {body}"
        );

        view.own_condition = Some(condition(false, "1/2 peers encrypted, datapath kernel"));
        let body = pending_patch(&outputs, &view).unwrap().body("t");
        assert_eq!(body["status"]["conditions"][0]["lastTransitionTime"], "t");
        assert!(body.get("metadata").is_none(), "no annotation changed");
    }
}

//! The node-startup taint: `wireseal.dev/agent-not-ready:NoSchedule`,
//! registered with the Node by the kubelet (`--register-with-taints`), keeps
//! pods off a new node until wireseal has programmed its datapath, so that no
//! pod there talks to another node before its traffic can be encrypted (the
//! pattern of Cilium's `node.cilium.io/agent-not-ready`). The agent removes it
//! from its own Node once a pass has programmed the datapath, and never adds
//! one: an operator who wants it registers it.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::channels::{ClusterView, Outputs};

/// The taint's key.
pub const NOT_READY_TAINT: &str = "wireseal.dev/agent-not-ready";

const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Runs until either channel closes.
pub async fn clear_not_ready_taint(
    api: Api<Node>,
    name: String,
    mut outputs: watch::Receiver<Outputs>,
    mut view: watch::Receiver<Arc<ClusterView>>,
) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let programmed = outputs.borrow_and_update().programmed;
        let patch = {
            let current = view.borrow_and_update();
            (programmed && current.synced)
                .then(|| removal(&current.own_taints))
                .flatten()
        };
        let Some(patch) = patch else {
            tokio::select! {
                r = outputs.changed() => if r.is_err() { return },
                r = view.changed() => if r.is_err() { return },
            }
            continue;
        };
        // A JSON patch that tests the exact taint at its index before
        // removing it: a concurrent change of the taints makes it fail
        // (and the next view retries) instead of removing another taint.
        match api
            .patch(&name, &PatchParams::default(), &Patch::<Value>::Json(patch))
            .await
        {
            Ok(_) => {
                info!(node = %name, taint = NOT_READY_TAINT, "datapath programmed; removed the not-ready taint");
                backoff = FIRST_BACKOFF;
                tokio::select! {
                    r = view.changed() => if r.is_err() { return },
                    () = tokio::time::sleep(MAX_BACKOFF) => {}
                }
            }
            Err(err) => {
                warn!(node = %name, error = %err, retry_in = ?backoff, "removing the not-ready taint failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// The JSON patch that removes the first not-ready taint from `taints`, if
/// there is one.
fn removal(taints: &[Value]) -> Option<json_patch::Patch> {
    let index = taints
        .iter()
        .position(|taint| taint.get("key").and_then(Value::as_str) == Some(NOT_READY_TAINT))?;
    let path = format!("/spec/taints/{index}");
    serde_json::from_value(json!([
        { "op": "test", "path": path, "value": taints[index] },
        { "op": "remove", "path": path },
    ]))
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_exactly_the_not_ready_taint_after_testing_it() {
        let other = json!({ "key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule" });
        let ours = json!({ "key": NOT_READY_TAINT, "effect": "NoSchedule" });
        assert!(removal(std::slice::from_ref(&other)).is_none());
        let patch = removal(&[other.clone(), ours.clone()]).unwrap();
        assert_eq!(
            serde_json::to_value(&patch).unwrap(),
            json!([
                { "op": "test", "path": "/spec/taints/1", "value": ours },
                { "op": "remove", "path": "/spec/taints/1" },
            ])
        );
        let mut node = json!({ "spec": { "taints": [other, ours] } });
        json_patch::patch(&mut node, &patch).unwrap();
        assert_eq!(node, json!({ "spec": { "taints": [other] } }));
    }
}

//! Publishes this node's `wireseal.dev/` annotations (public key, endpoint,
//! status) through the nodes/status subresource, only when they differ from
//! what the API server has, retrying with backoff.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Map, Value, json};
use tokio::sync::watch;
use tracing::{info, warn};
use wireseal_core::annotation::{ENDPOINT, PUBLIC_KEY, STATUS};

use super::ClusterView;
use crate::metrics::Metrics;
use crate::reconcile::Outputs;

/// The annotations this agent owns. `pod-cidrs` is the operator's and is never written.
const OWNED: [&str; 3] = [PUBLIC_KEY, ENDPOINT, STATUS];
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
        let keys: Vec<String> = patch.keys().cloned().collect();
        let body = json!({ "metadata": { "annotations": Value::Object(patch) } });
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&body))
            .await
        {
            Ok(_) => {
                info!(node = %name, annotations = ?keys, "published own annotations");
                metrics.annotation_patch(true);
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
                metrics.annotation_patch(false);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// The merge-patch map for the owned annotations that differ, with `null` for
/// an owned annotation that should no longer be there.
fn pending_patch(outputs: &Outputs, view: &ClusterView) -> Option<Map<String, Value>> {
    let want = outputs.own_annotations.as_ref()?;
    if !view.synced {
        return None;
    }
    let have: &BTreeMap<String, String> = &view.own_annotations;
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
    (!patch.is_empty()).then_some(patch)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let patch = pending_patch(&outputs, &view).unwrap();
        assert_eq!(Value::Object(patch), json!({ STATUS: "s", ENDPOINT: null }));
        view.synced = false;
        assert_eq!(
            pending_patch(&outputs, &view),
            None,
            "nothing is written before the first full list"
        );
    }
}

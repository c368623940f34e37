//! The watch on every Node. Each Node is turned into a validated NodeView as it
//! arrives; the loop is woken only when something wireseal uses changed, not
//! on every kubelet status heartbeat.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::{StreamExt, pin_mut};
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use tokio::sync::watch;
use tracing::{info, warn};
use wireseal_core::NodeView;
use wireseal_core::annotation::PREFIX;

use super::ClusterView;
use crate::metrics::Metrics;

/// Watches Nodes until the receiver side is gone, publishing the cluster view.
///
/// Errors (API server down, watch dropped, 410 Gone) are logged and retried
/// with backoff by kube's watcher; the last complete view stays published, so
/// the datapath keeps its state through an outage.
pub async fn watch_nodes(
    api: Api<Node>,
    own_name: String,
    config: watcher::Config,
    out: watch::Sender<Arc<ClusterView>>,
    metrics: Metrics,
) {
    let stream = watcher(api, config).default_backoff();
    pin_mut!(stream);
    let mut current = ClusterView::default();
    let mut listing: Option<BTreeMap<String, Node>> = None;
    while let Some(event) = stream.next().await {
        let changed = match event {
            Ok(Event::Init) => {
                listing = Some(BTreeMap::new());
                false
            }
            Ok(Event::InitApply(node)) => {
                if let (Some(list), Some(name)) = (listing.as_mut(), node.metadata.name.clone()) {
                    list.insert(name, node);
                }
                false
            }
            Ok(Event::InitDone) => {
                let list = listing.take().unwrap_or_default();
                let mut next = ClusterView {
                    nodes: list
                        .iter()
                        .map(|(name, node)| (name.clone(), NodeView::from_node(node)))
                        .collect(),
                    own_annotations: own_annotations(list.get(&own_name)),
                    synced: true,
                };
                let first = !current.synced;
                std::mem::swap(&mut current, &mut next);
                if first {
                    info!(nodes = current.nodes.len(), "complete Node list received");
                }
                metrics.nodes_relisted();
                first || current != next
            }
            Ok(Event::Apply(node)) => apply(&mut current, &own_name, &node),
            Ok(Event::Delete(node)) => {
                let name = node.metadata.name.unwrap_or_default();
                if name == own_name {
                    current.own_annotations.clear();
                }
                current.nodes.remove(&name).is_some()
            }
            Err(err) => {
                warn!(error = %err, "Node watch failed; keeping the last Node list and retrying");
                metrics.watch_error();
                false
            }
        };
        if changed {
            metrics.set_nodes(current.nodes.len());
            if out.send(Arc::new(current.clone())).is_err() {
                break;
            }
        }
    }
}

fn apply(current: &mut ClusterView, own_name: &str, node: &Node) -> bool {
    let Some(name) = node.metadata.name.clone() else {
        return false;
    };
    let view = NodeView::from_node(node);
    let mut changed = current.nodes.get(&name) != Some(&view);
    if name == own_name {
        let annotations = own_annotations(Some(node));
        changed |= current.own_annotations != annotations;
        current.own_annotations = annotations;
    }
    current.nodes.insert(name, view);
    changed
}

fn own_annotations(node: Option<&Node>) -> BTreeMap<String, String> {
    node.and_then(|n| n.metadata.annotations.as_ref())
        .map(|all| {
            all.iter()
                .filter(|(k, _)| k.starts_with(PREFIX))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

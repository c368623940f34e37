//! The watch on every Node. Each Node is turned into a validated NodeView as it
//! arrives; the loop is woken only when something wireseal uses changed, not
//! on every kubelet status heartbeat.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::node_view::node_view;
use futures::{StreamExt, pin_mut};
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use tokio::sync::watch;
use tracing::{info, warn};
use wireseal_core::annotation::PREFIX;

use crate::channels::{CONDITION_TYPE, ClusterView, EncryptedCondition};
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
    // A relist in progress, already as views: the Node objects themselves
    // (managedFields, images, conditions …) are dropped as they arrive.
    let mut listing: Option<ClusterView> = None;
    while let Some(event) = stream.next().await {
        let changed = match event {
            Ok(Event::Init) => {
                listing = Some(ClusterView::default());
                false
            }
            Ok(Event::InitApply(node)) => {
                if let (Some(list), Some(name)) = (listing.as_mut(), node.metadata.name.as_ref()) {
                    if *name == own_name {
                        list.own_annotations = own_annotations(Some(&node));
                        list.own_taints = own_taints(Some(&node));
                        list.own_condition = own_condition(&node);
                    }
                    list.nodes.insert(name.clone(), node_view(&node));
                }
                false
            }
            Ok(Event::InitDone) => {
                let mut next = ClusterView {
                    synced: true,
                    ..listing.take().unwrap_or_default()
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
                    current.own_taints.clear();
                    current.own_condition = None;
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
    let view = node_view(node);
    let mut changed = current.nodes.get(&name) != Some(&view);
    if name == own_name {
        let annotations = own_annotations(Some(node));
        let taints = own_taints(Some(node));
        let condition = own_condition(node);
        changed |= current.own_annotations != annotations
            || current.own_taints != taints
            || current.own_condition != condition;
        current.own_annotations = annotations;
        current.own_taints = taints;
        current.own_condition = condition;
    }
    current.nodes.insert(name, view);
    changed
}

fn own_taints(node: Option<&Node>) -> Vec<serde_json::Value> {
    node.and_then(|n| n.spec.as_ref())
        .and_then(|spec| spec.taints.as_ref())
        .map(|taints| {
            taints
                .iter()
                .filter_map(|taint| serde_json::to_value(taint).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The `WiresealEncrypted` condition of `node`, if it has one.
pub(crate) fn wireseal_condition(
    node: &Node,
) -> Option<&k8s_openapi::api::core::v1::NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == CONDITION_TYPE)
}

/// wireseal's condition on the node as the API server has it (the kubelet's
/// heartbeats on the other conditions do not wake the loop: they are not read).
fn own_condition(node: &Node) -> Option<EncryptedCondition> {
    let condition = wireseal_condition(node)?;
    Some(EncryptedCondition {
        status: condition.status == "True",
        reason: condition.reason.clone().unwrap_or_default(),
        message: condition.message.clone().unwrap_or_default(),
    })
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

//! Reports bad input on other nodes: a structured log line and a counter in
//! every agent, and a Kubernetes Event on the Node from exactly one agent.
//!
//! If every agent recorded an Event, one bad annotation in a 5,000-node cluster
//! would raise 5,000 Events. The reporter is the node whose name follows the bad
//! node's in sorted order (wrapping around), so one live agent speaks for all.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::watch;
use tracing::warn;

use super::ClusterView;
use crate::metrics::Metrics;
use crate::reconcile::Outputs;

/// Longest Event note the API server accepts (1 KiB).
const MAX_NOTE: usize = 1024;

/// Runs until the outputs channel closes.
pub async fn report_problems(
    client: Client,
    own_name: String,
    mut outputs: watch::Receiver<Outputs>,
    view: watch::Receiver<Arc<ClusterView>>,
    metrics: Metrics,
) {
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: "wireseal".into(),
            instance: Some(own_name.clone()),
        },
    );
    let mut reported: BTreeMap<String, Vec<String>> = BTreeMap::new();
    while outputs.changed().await.is_ok() {
        let problems = outputs.borrow_and_update().problems.clone();
        reported.retain(|node, _| problems.contains_key(node));
        for (node, lines) in problems {
            if reported.get(&node) == Some(&lines) {
                continue;
            }
            let speaks = is_reporter(&own_name, &node, &view.borrow());
            for line in &lines {
                warn!(peer = %node, problem = %line, "invalid wireseal input on node; it is not peered as published");
                metrics.invalid_input(&node);
                if speaks {
                    let event = Event {
                        type_: EventType::Warning,
                        reason: "InvalidWiresealInput".into(),
                        note: Some(truncate(line, MAX_NOTE)),
                        action: "Peering".into(),
                        secondary: None,
                    };
                    if let Err(err) = recorder.publish(&event, &node_ref(&node)).await {
                        warn!(peer = %node, error = %err, "recording an Event failed");
                    }
                }
            }
            reported.insert(node, lines);
        }
    }
}

/// True when `own` is the node that records Events about `bad`.
fn is_reporter(own: &str, bad: &str, view: &ClusterView) -> bool {
    let names = view.nodes.keys().map(String::as_str).filter(|n| *n != bad);
    let next = names
        .clone()
        .find(|n| *n > bad)
        .or_else(|| names.clone().next());
    next == Some(own)
}

fn node_ref(name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(name.into()),
        // The kubelet uses the node name as the UID of Node events, and
        // `kubectl describe node` looks them up that way.
        uid: Some(name.into()),
        ..ObjectReference::default()
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use wireseal_core::NodeView;

    use super::*;

    #[test]
    fn exactly_one_reporter_per_bad_node() {
        let view = ClusterView {
            nodes: ["a", "b", "c"]
                .iter()
                .map(|n| ((*n).to_owned(), NodeView::default()))
                .collect(),
            ..ClusterView::default()
        };
        assert!(is_reporter("b", "a", &view));
        assert!(is_reporter("c", "b", &view));
        assert!(is_reporter("a", "c", &view), "wraps around");
        assert!(!is_reporter("a", "a", &view), "a node never reports itself");
        for bad in ["a", "b", "c"] {
            let reporters = ["a", "b", "c"]
                .iter()
                .filter(|own| is_reporter(own, bad, &view))
                .count();
            assert_eq!(reporters, 1, "{bad}");
        }
    }

    #[test]
    fn truncates_on_a_char_boundary() {
        assert_eq!(truncate("ééé", 3), "é");
        assert_eq!(truncate("abc", 10), "abc");
    }
}

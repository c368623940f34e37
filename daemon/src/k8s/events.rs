//! Reports bad input and refused claims on other nodes: a structured log line
//! and a counter in every agent, and a Kubernetes Event on the Node from
//! exactly one agent.
//!
//! If every agent recorded an Event, one bad annotation in a 5,000-node cluster
//! would raise 5,000 Events. The reporter is the node that follows the bad
//! node's name in sorted order (wrapping around) among the nodes that run an
//! agent (they publish a valid key and a status), never the bad node itself:
//! a refused node, a node without wireseal or a Windows node cannot be the
//! one that stays silent. While agents start, two may each see themselves as
//! the reporter for a moment; the Event's name is derived from the node and
//! the problem, so the second create is refused as a duplicate (409) and the
//! problem still has exactly one Event.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::warn;

use crate::channels::{ClusterView, Outputs, Problem};
use crate::metrics::Metrics;

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
    // Node Events live in the default namespace, as the kubelet's do, so
    // `kubectl describe node` shows them.
    let events: Api<Event> = Api::namespaced(client, "default");
    // Each problem is logged and counted once; the Event is recorded once by
    // the node that is the reporter at the time. Both channels wake the loop:
    // at start-up the reporter may not show a status yet, and becomes the
    // reporter only when the view catches up.
    let mut logged: BTreeMap<String, BTreeSet<Problem>> = BTreeMap::new();
    let mut recorded: BTreeMap<String, BTreeSet<Problem>> = BTreeMap::new();
    let mut view = view;
    loop {
        tokio::select! {
            changed = outputs.changed() => if changed.is_err() { return },
            changed = view.changed() => if changed.is_err() { return },
        }
        let problems = outputs.borrow_and_update().problems.clone();
        let cluster = view.borrow_and_update().clone();
        for seen in [&mut logged, &mut recorded] {
            // A problem that went away may come back later: forget it.
            seen.retain(|node, set| {
                let now = problems.get(node);
                set.retain(|p| now.is_some_and(|lines| lines.contains(p)));
                !set.is_empty()
            });
        }
        for (node, lines) in &problems {
            let speaks = is_reporter(&own_name, node, &cluster);
            for problem in lines {
                if logged
                    .entry(node.clone())
                    .or_default()
                    .insert(problem.clone())
                {
                    warn!(peer = %node, kind = problem.kind, problem = %problem.message, "refused wireseal input on node");
                    metrics.refused(node, problem.kind);
                }
                if !speaks || recorded.get(node).is_some_and(|set| set.contains(problem)) {
                    continue;
                }
                let event = event(&own_name, node, problem);
                let created = events.create(&PostParams::default(), &event).await;
                // A 409: another agent recorded this very problem first.
                let outcome = match created {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
                    Err(err) => Err(err),
                };
                match outcome {
                    Ok(()) => {
                        recorded
                            .entry(node.clone())
                            .or_default()
                            .insert(problem.clone());
                    }
                    Err(err) => {
                        warn!(peer = %node, error = %err, "recording an Event failed; will try again on the next change")
                    }
                }
            }
        }
    }
}

/// True when `own` is the node that records Events about `bad`: the next
/// name after `bad` among the nodes whose agent runs (a valid key and a
/// status published, no bad input of their own), wrapping around.
fn is_reporter(own: &str, bad: &str, view: &ClusterView) -> bool {
    let names = view
        .nodes
        .iter()
        .filter(|(name, node)| {
            name.as_str() != bad
                && node.public_key.is_some()
                && node.status.is_some()
                && node.problems.is_empty()
        })
        .map(|(name, _)| name.as_str());
    let next = names
        .clone()
        .find(|n| *n > bad)
        .or_else(|| names.clone().next());
    next == Some(own)
}

/// The Event about `problem` on `node`, recorded by `own`. Its name is the
/// node's plus a hash of the problem: every agent that records this problem
/// writes the same object, and only the first create succeeds.
fn event(own: &str, node: &str, problem: &Problem) -> Event {
    let reason = if problem.kind == "invalid-input" {
        "InvalidWiresealInput"
    } else {
        "WiresealClaimRefused"
    };
    Event {
        metadata: ObjectMeta {
            name: Some(format!(
                "{}.wireseal-{:016x}",
                truncate(node, 200),
                fnv1a(&[node, problem.kind, &problem.message])
            )),
            namespace: Some("default".into()),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
        action: Some("Peering".into()),
        reason: Some(reason.into()),
        note: Some(truncate(&problem.message, MAX_NOTE)),
        type_: Some("Warning".into()),
        regarding: Some(node_ref(node)),
        reporting_controller: Some("wireseal.dev/agent".into()),
        reporting_instance: Some(truncate(own, 128)),
        ..Event::default()
    }
}

/// FNV-1a over the parts (each followed by a 0 byte): a stable name suffix,
/// the same in every agent and every version.
fn fnv1a(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain([0]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
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

    fn running() -> NodeView {
        NodeView {
            public_key: Some(
                "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
                    .parse()
                    .unwrap(),
            ),
            status: Some(wireseal_core::NodeStatus {
                datapath: None,
                encryption: None,
                encryption_ready: true,
                peers_expected: 0,
                peers_encrypted: 0,
                message: None,
                host_sources: vec![],
            }),
            ..NodeView::default()
        }
    }

    #[test]
    fn a_node_without_an_agent_is_never_the_reporter() {
        // b runs no agent (no key, no status): the Event about a comes from c.
        let view = ClusterView {
            nodes: [
                ("a", running()),
                ("b", NodeView::default()),
                ("c", running()),
            ]
            .into_iter()
            .map(|(n, v)| (n.to_owned(), v))
            .collect(),
            ..ClusterView::default()
        };
        assert!(!is_reporter("b", "a", &view));
        assert!(is_reporter("c", "a", &view));
        // About b itself (a node without wireseal can be refused too): c.
        assert!(is_reporter("c", "b", &view));
        // About c: a, wrapping around.
        assert!(is_reporter("a", "c", &view));
    }

    #[test]
    fn exactly_one_reporter_per_bad_node() {
        let view = ClusterView {
            nodes: ["a", "b", "c"]
                .iter()
                .map(|n| ((*n).to_owned(), running()))
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
    fn every_agent_names_the_same_problem_s_event_alike() {
        let problem = Problem {
            kind: "cidr-conflict",
            message:
                "pod CIDR 10.244.1.0/24 refused: it overlaps 10.244.1.0/24, which node b keeps"
                    .into(),
        };
        let one = event("node-a", "node-x", &problem);
        let other = event("node-c", "node-x", &problem);
        assert_eq!(one.metadata.name, other.metadata.name);
        assert_eq!(one.reason.as_deref(), Some("WiresealClaimRefused"));
        assert_eq!(one.reporting_instance.as_deref(), Some("node-a"));
        let name = one.metadata.name.unwrap();
        assert!(
            name.starts_with("node-x.wireseal-") && name.len() == "node-x.wireseal-".len() + 16
        );
        let another = Problem {
            message: "something else".into(),
            ..problem
        };
        assert_ne!(
            event("node-a", "node-x", &another).metadata.name,
            Some(name)
        );
    }

    #[test]
    fn truncates_on_a_char_boundary() {
        assert_eq!(truncate("ééé", 3), "é");
        assert_eq!(truncate("abc", 10), "abc");
    }
}

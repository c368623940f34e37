//! The cluster half of `wireseal verify`: what the API server says about
//! every node, judged without touching a node. Pure: the Node objects (and,
//! when they could be listed, the agent's pods) in, a report per node out.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Node, Pod};
use serde::Serialize;
use wireseal_core::DatapathKind;

use crate::channels::CONDITION_TYPE;
use crate::k8s::node_view::node_view;

/// wireseal's condition on a Node, as the API server has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionReport {
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// Why.
    pub reason: String,
    /// "N/N peers encrypted, datapath …".
    pub message: String,
    /// When the status last changed (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

/// One node, as the API server shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeReport {
    /// Node name.
    pub name: String,
    /// The datapath its agent published.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datapath: Option<DatapathKind>,
    /// Its published WireGuard public key (base64).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// Its `WiresealEncrypted` condition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub condition: Option<ConditionReport>,
    /// Peers it expects and has encrypted, as it published them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peers_expected: Option<u32>,
    /// See `peers_expected`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peers_encrypted: Option<u32>,
    /// Whether a ready wireseal pod runs on it (`None`: pods not checked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_ready: Option<bool>,
    /// What is wrong; empty when the node is encrypted to every peer.
    pub failures: Vec<String>,
}

impl NodeReport {
    /// True when nothing is wrong with this node.
    #[must_use]
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Judges every node. `pods`, when the agent's pods could be listed, says
/// which nodes run a ready one: an agent that died leaves its last
/// condition behind, so without the pods a dead agent looks healthy.
#[must_use]
pub fn assess(nodes: &[Node], pods: Option<&[Pod]>) -> Vec<NodeReport> {
    let ready_on: Option<BTreeSet<&str>> = pods.map(|pods| {
        pods.iter()
            .filter(|pod| pod_ready(pod))
            .filter_map(|pod| pod.spec.as_ref()?.node_name.as_deref())
            .collect()
    });
    let views: BTreeMap<String, wireseal_core::NodeView> = nodes
        .iter()
        .filter_map(|node| Some((node.metadata.name.clone()?, node_view(node))))
        .collect();
    // Nodes a complete mesh has as peers of each node: every other node
    // that publishes a valid key.
    let keyed: BTreeSet<&str> = views
        .iter()
        .filter(|(_, view)| view.public_key.is_some())
        .map(|(name, _)| name.as_str())
        .collect();

    nodes
        .iter()
        .filter_map(|node| {
            let name = node.metadata.name.clone()?;
            let view = views.get(&name)?;
            let mut failures = Vec::new();
            let condition = condition(node);
            let agent_ready = ready_on.as_ref().map(|ready| ready.contains(name.as_str()));
            if agent_ready == Some(false) {
                failures.push("no ready wireseal pod runs on this node".to_owned());
            }
            if view.public_key.is_none() {
                failures.push(format!(
                    "wireseal is not running here: no valid {}",
                    wireseal_core::annotation::PUBLIC_KEY
                ));
            }
            for problem in &view.problems {
                failures.push(format!("bad input on this Node: {problem}"));
            }
            match &condition {
                None if view.public_key.is_some() => failures.push(format!(
                    "no {CONDITION_TYPE} condition: the agent has not reported coverage"
                )),
                None => {}
                Some(c) if c.status != "True" => failures.push(format!(
                    "not encrypted ({}): {}",
                    c.reason, c.message
                )),
                Some(_) => {}
            }
            let status = view.status.as_ref();
            if let Some(status) = status {
                let others = keyed.len() - usize::from(keyed.contains(name.as_str()));
                let expected = usize::try_from(status.peers_expected).unwrap_or(usize::MAX);
                if expected < others {
                    failures.push(format!(
                        "peers missing: it has {expected} peer(s), {others} other node(s) publish a key"
                    ));
                }
            }
            Some(NodeReport {
                datapath: status.and_then(|s| s.datapath),
                public_key: view.public_key.map(|key| key.to_string()),
                peers_expected: status.map(|s| s.peers_expected),
                peers_encrypted: status.map(|s| s.peers_encrypted),
                condition,
                agent_ready,
                failures,
                name,
            })
        })
        .collect()
}

fn condition(node: &Node) -> Option<ConditionReport> {
    let condition = crate::k8s::nodes::wireseal_condition(node)?;
    Some(ConditionReport {
        status: condition.status.clone(),
        reason: condition.reason.clone().unwrap_or_default(),
        message: condition.message.clone().unwrap_or_default(),
        last_transition_time: condition
            .last_transition_time
            .as_ref()
            .map(|t| t.0.to_string()),
    })
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|status| status.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

#[cfg(test)]
mod tests;

//! What the Kubernetes side and the reconcile loop hand each other over
//! their watch channels. Neither side imports the other: both import this.

use std::collections::BTreeMap;

use wireseal_core::NodeView;

/// The type of wireseal's own condition on its Node.
pub const CONDITION_TYPE: &str = "WiresealEncrypted";

/// wireseal's own condition on its Node (`WiresealEncrypted`), as `kubectl
/// describe node` shows it: a state that changes rarely, never a counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptedCondition {
    /// True when the Node list was read, the last pass applied and every
    /// peer is encrypted.
    pub status: bool,
    /// `AllPeersEncrypted`, `PeersNotEncrypted`, `ApplyFailed` or `NotSynced`.
    pub reason: String,
    /// "N/N peers encrypted, datapath userspace, strict".
    pub message: String,
}

/// The cluster as the reconcile loop needs it (Kubernetes side → loop).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterView {
    /// Every Node, by name.
    pub nodes: BTreeMap<String, NodeView>,
    /// This node's `wireseal.dev/` annotations as they are on the API server.
    pub own_annotations: BTreeMap<String, String>,
    /// This node's `spec.taints` as they are on the API server, as JSON
    /// (the agent removes its not-ready taint once the datapath is programmed).
    pub own_taints: Vec<serde_json::Value>,
    /// This node's `WiresealEncrypted` condition as it is on the API server.
    pub own_condition: Option<EncryptedCondition>,
    /// True once a complete list of Nodes has been read. Until then nothing
    /// is removed from the node.
    pub synced: bool,
}

/// What the loop publishes for the Kubernetes side (loop → Kubernetes side).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outputs {
    /// The annotations this node should carry (key, endpoint, status).
    pub own_annotations: Option<BTreeMap<String, String>>,
    /// This node's `WiresealEncrypted` condition as it should be.
    pub own_condition: Option<EncryptedCondition>,
    /// Per remote node, its bad input and refused claims.
    pub problems: BTreeMap<String, Vec<Problem>>,
    /// True once a pass has programmed the datapath without error: pods may
    /// be scheduled here (the not-ready taint can go).
    pub programmed: bool,
}

/// One bad input or refused claim of a remote node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// What was refused (`invalid-input`, `key`, `out-of-bounds`,
    /// `cidr-conflict`, `endpoint`).
    pub kind: &'static str,
    /// The readable account, naming the claim and, for a conflict, the node
    /// that keeps it.
    pub message: String,
}

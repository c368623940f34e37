//! The agent's view of its own work, shared between the reconcile loop (which
//! writes it) and the status endpoint, the metrics and `wireseal status`
//! (which read it).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::UNIX_EPOCH;

use crate::leaks::LeakStatus;
use serde::{Deserialize, Serialize};
use wireseal_core::coverage::PeerState;
use wireseal_core::{
    Coverage, DatapathKind, Desired, Encryption, NodeOutcome, PeerStats, PublicKey,
};

/// What an older agent's status, without a state, meant.
fn not_peered() -> PeerState {
    PeerState::NotPeered
}

/// One remote node as this agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatus {
    /// Node name.
    pub node: String,
    /// Its key, when it is a peer.
    pub public_key: Option<PublicKey>,
    /// Its endpoint, when it is a peer and one is known.
    pub endpoint: Option<SocketAddr>,
    /// Pod CIDRs routed to it.
    pub allowed_ips: Vec<String>,
    /// Seconds since the Unix epoch of the last handshake.
    pub last_handshake_unix: Option<u64>,
    /// Bytes received from it.
    pub rx_bytes: u64,
    /// Bytes sent to it.
    pub tx_bytes: u64,
    /// True when its traffic is encrypted now (see `state`).
    pub encrypted: bool,
    /// Why it is, or is not, encrypted.
    #[serde(default = "not_peered")]
    pub state: PeerState,
    /// Why it is not (fully) a peer.
    pub issues: Vec<String>,
    /// The addresses its own traffic into the tunnel leaves from, as it
    /// publishes them (`wireseal verify` probes them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_sources: Vec<IpAddr>,
}

impl PeerStatus {
    /// Builds the status of node `name` from its outcome, its device
    /// statistics and the state the coverage gave it.
    #[must_use]
    pub fn new(
        name: &str,
        outcome: &NodeOutcome,
        want: &Desired,
        stats: PeerStats,
        state: PeerState,
    ) -> Self {
        let config = outcome
            .peer
            .and_then(|key| want.state.device.peers.get(&key));
        Self {
            node: name.to_owned(),
            public_key: outcome.peer,
            endpoint: config.and_then(|c| c.endpoint),
            allowed_ips: config
                .map(|c| c.allowed_ips.iter().map(ToString::to_string).collect())
                .unwrap_or_default(),
            last_handshake_unix: stats
                .last_handshake
                .and_then(|at| at.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs()),
            rx_bytes: stats.rx_bytes,
            tx_bytes: stats.tx_bytes,
            encrypted: state.encrypted(),
            state,
            issues: outcome.issues.iter().map(ToString::to_string).collect(),
            host_sources: Vec::new(),
        }
    }
}

/// A key rotation under way, as `wireseal status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyRotationStatus {
    /// The public key this node switches to.
    pub next_public_key: PublicKey,
    /// When, RFC 3339 in UTC (as `wireseal.dev/key-switch-at`).
    pub switch_at: String,
}

/// Everything `wireseal status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    /// This node.
    pub node: String,
    /// The datapath in use.
    pub datapath: Option<DatapathKind>,
    /// WireGuard or IPsec.
    #[serde(default)]
    pub encryption: Encryption,
    /// True when the agent runs in strict mode.
    #[serde(default)]
    pub strict: bool,
    /// This node's public key.
    pub public_key: Option<PublicKey>,
    /// A rotation of this node's key under way: the next public key and
    /// when every node switches to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_rotation: Option<KeyRotationStatus>,
    /// True once the complete Node list has been read.
    pub synced: bool,
    /// True when the last reconcile applied without error.
    pub last_apply_ok: bool,
    /// What failed in the last pass, each naming the step (the route, rule,
    /// address or peers) and the error.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<String>,
    /// The encryption coverage of the peers below.
    #[serde(default)]
    pub coverage: Coverage,
    /// The tunnel MTU in use.
    pub tunnel_mtu: u32,
    /// Set when the CNI's pod MTU exceeds the tunnel MTU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu_warning: Option<String>,
    /// The preferred sources of the routes into the tunnel (at most one per
    /// family): the node's own packets to pods on other nodes leave from them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_sources: Vec<IpAddr>,
    /// Set when a family routed into the tunnel has no such source, so
    /// host-network traffic to pods on other nodes is dropped by the peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_source_warning: Option<String>,
    /// Every remote node.
    pub peers: Vec<PeerStatus>,
    /// The leak counter: packets that left for other nodes' pods outside the tunnel.
    #[serde(default)]
    pub leaks: LeakStatus,
    /// IPsec mode: the kernel's XFRM error counters, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xfrm_errors: Option<BTreeMap<String, u64>>,
}

impl AgentStatus {
    /// Remote nodes that are peers.
    #[must_use]
    pub fn expected(&self) -> usize {
        self.coverage.expected
    }

    /// Peers whose traffic is encrypted now.
    #[must_use]
    pub fn encrypted(&self) -> usize {
        self.coverage.encrypted
    }

    /// The coverage line: "2/3 peers encrypted, 1 without a recent handshake, …".
    #[must_use]
    pub fn coverage_line(&self) -> String {
        let mut coverage = self.coverage.clone();
        if coverage.nodes.is_empty() {
            // Read back from JSON: the per-node states travel with the peers.
            coverage.nodes = self
                .peers
                .iter()
                .map(|peer| (peer.node.clone(), peer.state))
                .collect();
        }
        coverage.to_string()
    }

    /// Ready: the Node list has been read and the last plan applied without
    /// error. Encryption coverage is reported apart (`coverage_line`), so a
    /// peer that is down does not make the agent unready.
    #[must_use]
    pub fn ready(&self) -> bool {
        self.synced && self.last_apply_ok
    }
}

/// The status shared between the loop and its readers.
#[derive(Debug, Clone, Default)]
pub struct SharedStatus(Arc<RwLock<AgentStatus>>);

impl SharedStatus {
    /// Replaces the status.
    pub fn replace(&self, status: AgentStatus) {
        // A poisoned lock only means a reader panicked; the data is still whole.
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = status;
    }

    /// A copy of the status.
    #[must_use]
    pub fn get(&self) -> AgentStatus {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

//! The agent's view of its own work, shared between the reconcile loop (which
//! writes it) and the status endpoint, the metrics and `wireseal status`
//! (which read it).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use wireseal_core::{DatapathKind, Desired, NodeOutcome, PublicKey};

use crate::datapath::PeerStats;
use crate::reconcile::HANDSHAKE_FRESH;

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
    /// True when it is a peer with a recent handshake.
    pub encrypted: bool,
    /// Why it is not (fully) a peer.
    pub issues: Vec<String>,
}

impl PeerStatus {
    /// Builds the status of node `name` from its outcome and its device statistics.
    #[must_use]
    pub fn new(
        name: &str,
        outcome: &NodeOutcome,
        want: &Desired,
        stats: PeerStats,
        now: SystemTime,
    ) -> Self {
        let config = outcome
            .peer
            .and_then(|key| want.state.device.peers.get(&key));
        let fresh = stats
            .last_handshake
            .and_then(|at| now.duration_since(at).ok().or(Some(Duration::ZERO)))
            .is_some_and(|age| age <= HANDSHAKE_FRESH);
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
            encrypted: outcome.peer.is_some() && fresh,
            issues: outcome.issues.iter().map(ToString::to_string).collect(),
        }
    }
}

/// Everything `wireseal status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    /// This node.
    pub node: String,
    /// The datapath in use.
    pub datapath: Option<DatapathKind>,
    /// This node's public key.
    pub public_key: Option<PublicKey>,
    /// True once the complete Node list has been read.
    pub synced: bool,
    /// True when the last reconcile applied without error.
    pub last_apply_ok: bool,
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
}

impl AgentStatus {
    /// Remote nodes that are peers.
    #[must_use]
    pub fn expected(&self) -> usize {
        self.peers.iter().filter(|p| p.public_key.is_some()).count()
    }

    /// Peers with a recent handshake.
    #[must_use]
    pub fn encrypted(&self) -> usize {
        self.peers.iter().filter(|p| p.encrypted).count()
    }

    /// The coverage line: "2/3 peers encrypted, 1 not yet, 1 node skipped".
    #[must_use]
    pub fn coverage_line(&self) -> String {
        let expected = self.expected();
        let encrypted = self.encrypted();
        let skipped = self.peers.len() - expected;
        let mut line = format!("{encrypted}/{expected} peers encrypted");
        if expected > encrypted {
            line.push_str(&format!(
                ", {} without a recent handshake",
                expected - encrypted
            ));
        }
        if skipped > 0 {
            line.push_str(&format!(", {skipped} node(s) not peered (see issues)"));
        }
        line
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

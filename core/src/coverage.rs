//! Encryption coverage: which remote nodes' traffic is encrypted now, and the
//! counts behind "N/N peers encrypted". One function decides it; the status,
//! the metrics, the Node condition, the published annotation and the CLI all
//! read its result.
//!
//! A remote node counts as encrypted when it is a peer, its pod CIDRs are
//! routed into the tunnel, its current key has completed a handshake, and
//! the tunnel is not broken. An idle peer counts: WireGuard handshakes only
//! when there is traffic, so an old handshake alone means nothing. A broken
//! one does not: its handshake is older than a session lives (180 s) while
//! this node keeps sending to it (handshake initiations, data) and hears
//! nothing back.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::desired::NodeOutcome;
use crate::key::PublicKey;
use crate::state::{PeerConfig, PeerStats, RouteSpec};

/// How long a WireGuard session lives (`REJECT_AFTER_TIME`): a handshake
/// older than this carries no traffic any more.
pub const HANDSHAKE_FRESH: Duration = Duration::from_secs(180);

/// Why a remote node's traffic is, or is not, encrypted now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PeerState {
    /// A peer, routed into the tunnel, with a working session (or idle after one).
    Encrypted,
    /// A peer whose current key has not completed a handshake yet.
    NoHandshake,
    /// A peer whose pod CIDRs are not (all) routed into the tunnel.
    NotRouted,
    /// A peer this node keeps sending to without an answer since its last
    /// handshake expired.
    Broken,
    /// Not a peer at all (no key, bad input, refused claims).
    NotPeered,
}

impl PeerState {
    /// True for [`PeerState::Encrypted`].
    #[must_use]
    pub fn encrypted(self) -> bool {
        self == Self::Encrypted
    }
}

impl fmt::Display for PeerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Encrypted => "encrypted",
            Self::NoHandshake => "no handshake yet",
            Self::NotRouted => "not routed into the tunnel",
            Self::Broken => "broken: sending, no answer",
            Self::NotPeered => "not peered",
        })
    }
}

/// What the coverage is computed from: the pass's desired peers and routes
/// (after the handshake gate), and the datapath's statistics now and at the
/// pass before.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// Every remote node's outcome.
    pub nodes: &'a BTreeMap<String, NodeOutcome>,
    /// The desired peers.
    pub peers: &'a BTreeMap<PublicKey, PeerConfig>,
    /// The routes into the tunnel.
    pub routes: &'a BTreeMap<IpNetwork, RouteSpec>,
    /// The datapath's per-peer statistics now.
    pub stats: &'a BTreeMap<PublicKey, PeerStats>,
    /// The same, at the pass before (empty at the first).
    pub previous: &'a BTreeMap<PublicKey, PeerStats>,
}

/// The coverage of this node's peers at one instant.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Coverage {
    /// Remote nodes that are peers.
    pub expected: usize,
    /// Peers whose traffic is encrypted now.
    pub encrypted: usize,
    /// Remote nodes that are not peers (bad or missing input; see their issues).
    pub not_peered: usize,
    /// Per remote node, its state.
    #[serde(skip)]
    pub nodes: BTreeMap<String, PeerState>,
}

/// The state of one peer (see the module's documentation).
#[must_use]
pub fn peer_state(
    config: &PeerConfig,
    routes: &BTreeMap<IpNetwork, RouteSpec>,
    stats: Option<&PeerStats>,
    previous: Option<&PeerStats>,
    now: SystemTime,
) -> PeerState {
    if !config
        .allowed_ips
        .iter()
        .all(|cidr| routes.contains_key(cidr))
    {
        return PeerState::NotRouted;
    }
    let Some(stats) = stats else {
        return PeerState::NoHandshake;
    };
    let Some(at) = stats.last_handshake else {
        return PeerState::NoHandshake;
    };
    // A handshake stamped in the future (a clock step) counts as just now.
    let age = now.duration_since(at).unwrap_or(Duration::ZERO);
    if age <= HANDSHAKE_FRESH {
        return PeerState::Encrypted;
    }
    let unanswered = previous.is_some_and(|before| {
        stats.tx_bytes > before.tx_bytes && stats.rx_bytes == before.rx_bytes
    });
    if unanswered {
        PeerState::Broken
    } else {
        PeerState::Encrypted
    }
}

/// The coverage of every remote node.
#[must_use]
pub fn coverage(observed: Observed<'_>, now: SystemTime) -> Coverage {
    let mut result = Coverage::default();
    for (name, outcome) in observed.nodes {
        let state = match outcome
            .peer
            .and_then(|key| observed.peers.get(&key).map(|config| (key, config)))
        {
            None => PeerState::NotPeered,
            Some((key, config)) => peer_state(
                config,
                observed.routes,
                observed.stats.get(&key),
                observed.previous.get(&key),
                now,
            ),
        };
        match state {
            PeerState::NotPeered => result.not_peered += 1,
            _ => result.expected += 1,
        }
        result.encrypted += usize::from(state.encrypted());
        result.nodes.insert(name.clone(), state);
    }
    result
}

impl Coverage {
    /// True when every peer is encrypted.
    #[must_use]
    pub fn complete(&self) -> bool {
        self.expected == self.encrypted
    }
}

impl fmt::Display for Coverage {
    /// The coverage line: "2/3 peers encrypted, 1 not (see issues), 1 node(s)
    /// not peered (see issues)".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} peers encrypted", self.encrypted, self.expected)?;
        if self.expected > self.encrypted {
            write!(f, ", {} not", self.expected - self.encrypted)?;
            let mut why: BTreeMap<PeerState, usize> = BTreeMap::new();
            for state in self.nodes.values() {
                if !state.encrypted() && *state != PeerState::NotPeered {
                    *why.entry(*state).or_default() += 1;
                }
            }
            let parts: Vec<String> = why.iter().map(|(s, n)| format!("{n} {s}")).collect();
            if !parts.is_empty() {
                write!(f, " ({})", parts.join(", "))?;
            }
        }
        if self.not_peered > 0 {
            write!(f, ", {} node(s) not peered (see issues)", self.not_peered)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::PeerIssue;

    fn key(i: u8) -> PublicKey {
        let public = x25519_dalek::x25519([i; 32], x25519_dalek::X25519_BASEPOINT_BYTES);
        PublicKey::from_bytes(public).unwrap()
    }

    fn cidr(i: u8) -> IpNetwork {
        format!("10.244.{i}.0/24").parse().unwrap()
    }

    #[test]
    fn idle_peers_count_broken_stale_and_unrouted_ones_do_not() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ago = |s: u64| Some(now - Duration::from_secs(s));
        let stats = |at: Option<SystemTime>, rx: u64, tx: u64| PeerStats {
            last_handshake: at,
            rx_bytes: rx,
            tx_bytes: tx,
        };
        // (name, key, routed, stats now, stats before, expected state)
        let cases = [
            (
                "fresh",
                1,
                true,
                stats(ago(10), 5, 5),
                None,
                PeerState::Encrypted,
            ),
            (
                "idle",
                2,
                true,
                stats(ago(3600), 5, 5),
                Some(stats(ago(3600), 5, 5)),
                PeerState::Encrypted,
            ),
            (
                "broken",
                3,
                true,
                stats(ago(3600), 5, 900),
                Some(stats(ago(3600), 5, 600)),
                PeerState::Broken,
            ),
            (
                "answered",
                4,
                true,
                stats(ago(3600), 9, 900),
                Some(stats(ago(3600), 5, 600)),
                PeerState::Encrypted,
            ),
            (
                "new",
                5,
                true,
                stats(None, 0, 148),
                None,
                PeerState::NoHandshake,
            ),
            (
                "gated",
                6,
                false,
                stats(ago(10), 5, 5),
                None,
                PeerState::NotRouted,
            ),
            (
                "future",
                7,
                true,
                stats(Some(now + Duration::from_secs(30)), 1, 1),
                None,
                PeerState::Encrypted,
            ),
        ];
        let mut nodes = BTreeMap::new();
        let mut peers = BTreeMap::new();
        let mut routes = BTreeMap::new();
        let mut now_stats = BTreeMap::new();
        let mut before = BTreeMap::new();
        for (name, i, routed, current, previous, _) in &cases {
            nodes.insert(
                (*name).to_owned(),
                NodeOutcome {
                    peer: Some(key(*i)),
                    issues: vec![],
                },
            );
            peers.insert(
                key(*i),
                PeerConfig {
                    allowed_ips: [cidr(*i)].into(),
                    ..PeerConfig::default()
                },
            );
            if *routed {
                routes.insert(
                    cidr(*i),
                    RouteSpec {
                        dst: cidr(*i),
                        dev: "wireseal0".into(),
                        mtu: 1420,
                        src: None,
                    },
                );
            }
            now_stats.insert(key(*i), *current);
            if let Some(previous) = previous {
                before.insert(key(*i), *previous);
            }
        }
        nodes.insert(
            "bad".into(),
            NodeOutcome {
                peer: None,
                issues: vec![PeerIssue::MissingKey],
            },
        );
        let c = coverage(
            Observed {
                nodes: &nodes,
                peers: &peers,
                routes: &routes,
                stats: &now_stats,
                previous: &before,
            },
            now,
        );
        for (name, _, _, _, _, want) in &cases {
            assert_eq!(c.nodes[*name], *want, "{name}");
        }
        assert_eq!((c.expected, c.encrypted, c.not_peered), (7, 4, 1));
        assert!(!c.complete());
        assert_eq!(
            c.to_string(),
            "4/7 peers encrypted, 3 not (1 no handshake yet, 1 not routed into the tunnel, \
             1 broken: sending, no answer), 1 node(s) not peered (see issues)"
        );
        let empty = BTreeMap::new();
        let none = coverage(
            Observed {
                nodes: &empty,
                peers: &BTreeMap::new(),
                routes: &BTreeMap::new(),
                stats: &BTreeMap::new(),
                previous: &BTreeMap::new(),
            },
            now,
        );
        assert!(none.complete());
        assert_eq!(none.to_string(), "0/0 peers encrypted");
    }
}

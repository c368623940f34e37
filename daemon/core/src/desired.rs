//! `desired(self, nodes, config)`: from the Node views to the state wireseal
//! wants on this node, with a per-node account of why a node is or is not a peer.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ipnetwork::IpNetwork;
use thiserror::Error;

use crate::annotation::{NodeInputError, overlaps};
use crate::key::PublicKey;
use crate::node::NodeView;
use crate::state::{
    DesiredState, DeviceSpec, Family, LinkSpec, PeerConfig, RouteSpec, RuleSpec, host_address,
};

/// Settings of the local node that shape the desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshConfig {
    /// Tunnel interface name.
    pub interface: String,
    /// WireGuard UDP listen port.
    pub listen_port: u16,
    /// fwmark of the datapath's own packets.
    pub fwmark: u32,
    /// wireseal's routing table.
    pub route_table: u32,
    /// Priority of wireseal's policy rules.
    pub rule_priority: u32,
    /// Resolved tunnel MTU (interface and routes).
    pub mtu: u32,
    /// Persistent keepalive for every peer, in seconds.
    pub persistent_keepalive: Option<u16>,
    /// The addresses on this node's interfaces other than the tunnel link,
    /// as last read: the CNI's. Per family, the lowest of them inside this
    /// node's own pod CIDRs becomes the host source (see [`host_source`]):
    /// the preferred source of the routes into the tunnel, and an address of
    /// the tunnel link.
    pub local_addresses: BTreeSet<IpAddr>,
    /// The addresses on the tunnel link, as last read: wireseal's copies of
    /// earlier host sources. One still inside this node's pod CIDRs stays the
    /// source while no address elsewhere qualifies (see [`host_source`]).
    pub tunnel_addresses: BTreeSet<IpAddr>,
}

/// Why a remote node is not (fully) a peer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PeerIssue {
    /// A value on the Node is invalid (see the error).
    #[error("{0}")]
    InvalidInput(NodeInputError),
    /// No `wireseal.dev/public-key` yet (its agent has not started, or it has no wireseal).
    #[error("no public key published")]
    MissingKey,
    /// The same public key is published by other nodes; none of them is programmed,
    /// because WireGuard could not tell their packets apart.
    #[error("public key also claimed by {}", others.join(", "))]
    DuplicateKey {
        /// The other nodes claiming it.
        others: Vec<String>,
    },
    /// The node publishes this node's own public key.
    #[error("publishes this node's own public key")]
    KeyIsOurs,
    /// No pod CIDR is left to route to this node.
    #[error("no pod CIDRs")]
    NoPodCidrs,
    /// A pod CIDR overlaps another node's; it is left out on both.
    #[error("pod CIDR {cidr} overlaps {other_cidr} of node {other}")]
    CidrConflict {
        /// This node's CIDR.
        cidr: IpNetwork,
        /// The other node.
        other: String,
        /// The other node's CIDR.
        other_cidr: IpNetwork,
    },
    /// Neither an endpoint nor an InternalIP: this node cannot start a handshake
    /// to it, but it can still reach us.
    #[error("no endpoint and no InternalIP; only it can start the handshake")]
    NoEndpoint,
    /// A peer, but no handshake has succeeded yet: its pod CIDRs are not routed
    /// into the tunnel until one has, so its traffic keeps the CNI's path.
    #[error("no handshake yet; traffic keeps the CNI's path until one succeeds")]
    AwaitingHandshake,
}

/// What became of one remote node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeOutcome {
    /// Its key, when it was made a peer.
    pub peer: Option<PublicKey>,
    /// Problems found, whether or not it became a peer.
    pub issues: Vec<PeerIssue>,
}

/// A family routed into the tunnel for which this node has no address inside
/// its own pod CIDRs: its routes go without a preferred source, so packets
/// the node itself sends to pods on other nodes leave with a source outside
/// the pod CIDRs (typically the node's address), which the peers' WireGuard
/// drops.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub struct NoHostSource {
    /// This node.
    pub node: String,
    /// The family without a source.
    pub family: Family,
    /// This node's pod CIDRs of that family; empty when it has none.
    pub pod_cidrs: Vec<IpNetwork>,
}

impl fmt::Display for NoHostSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let family = match self.family {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        };
        let consequence = "so host-network traffic (kubelet, host-network pods, an API server \
            calling a webhook) to pods on other nodes enters the tunnel with the node's own \
            address as its source, and the peers' WireGuard drops it";
        if self.pod_cidrs.is_empty() {
            return write!(
                f,
                "node {} has no {family} pod CIDR, {consequence}; give the Node one \
                 (spec.podCIDRs, or the wireseal.dev/pod-cidrs annotation)",
                self.node
            );
        }
        let cidrs: Vec<String> = self.pod_cidrs.iter().map(ToString::to_string).collect();
        write!(
            f,
            "node {} has no {family} address inside its pod CIDRs {} on any interface, \
             {consequence}; the CNI's bridge, gateway or tunnel device usually carries one \
             (flannel's cni0, Cilium's cilium_host, Calico's tunnel device; some appear only \
             with the first pod), otherwise add one that the CNI never gives to a pod",
            self.node,
            cidrs.join(", ")
        )
    }
}

/// The desired state plus the account of every remote node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// What wireseal wants on this node.
    pub state: DesiredState,
    /// Remote nodes by name (this node excluded).
    pub nodes: BTreeMap<String, NodeOutcome>,
    /// The node each peer key belongs to.
    pub peer_nodes: BTreeMap<PublicKey, String>,
    /// The preferred source of the routes into the tunnel, per family that
    /// has one; each is also an address of the tunnel link.
    pub host_sources: BTreeMap<Family, IpAddr>,
    /// The families routed into the tunnel without a preferred source.
    pub host_source_issues: Vec<NoHostSource>,
}

/// The source this node's own packets into the tunnel get for `family`: the
/// lowest of `local` (the CNI's addresses) inside `own_cidrs`, so the choice
/// is stable while the addresses are; failing that, the lowest of `tunnel`
/// (wireseal's copy on its own link) inside `own_cidrs`. `None` when neither
/// has an address of that family inside.
///
/// The copy is kept while the CNI's address is away (a ptp CNI's gateway
/// goes with the node's last pod; a bridge may be recreated) because taking
/// the last IPv4 address off a link makes Linux flush every IPv4 route
/// through it, in every table: pod traffic would leave by the CNI's plain
/// routes until the next pass wrote them again. It is kept no longer than it
/// lies inside this node's pod CIDRs, so a changed pod CIDR (or one handed to
/// another node) never keeps a stale address here; and the CNI's address
/// wins when there is one, so a gateway that moved takes the copy along.
#[must_use]
pub fn host_source(
    own_cidrs: &[IpNetwork],
    local: &BTreeSet<IpAddr>,
    tunnel: &BTreeSet<IpAddr>,
    family: Family,
) -> Option<IpAddr> {
    let inside =
        |ip: &IpAddr| Family::of_ip(*ip) == family && own_cidrs.iter().any(|c| c.contains(*ip));
    local
        .iter()
        .find(|ip| inside(ip))
        .or_else(|| tunnel.iter().find(|ip| inside(ip)))
        .copied()
}

/// Computes the desired state of node `self_name`, whose device uses `self_key`.
///
/// Never peers with itself; a node with a missing or invalid key, or a key
/// claimed by two nodes, gets no peer and is reported in [`Desired::nodes`].
#[must_use]
pub fn desired(
    self_name: &str,
    self_key: &PublicKey,
    nodes: &[NodeView],
    config: &MeshConfig,
) -> Desired {
    let mut outcomes: BTreeMap<String, NodeOutcome> = BTreeMap::new();
    let mut own_cidrs: &[IpNetwork] = &[];
    let mut remotes: BTreeMap<&str, &NodeView> = BTreeMap::new();
    for node in nodes {
        if node.name == self_name {
            own_cidrs = &node.pod_cidrs;
        } else {
            // A repeated name (not possible from one API server) keeps the last.
            remotes.insert(&node.name, node);
        }
    }

    let mut by_key: BTreeMap<PublicKey, Vec<&str>> = BTreeMap::new();
    for (name, node) in &remotes {
        let outcome = outcomes.entry((*name).to_owned()).or_default();
        outcome
            .issues
            .extend(node.problems.iter().cloned().map(PeerIssue::InvalidInput));
        match node.public_key {
            Some(key) if key == *self_key => outcome.issues.push(PeerIssue::KeyIsOurs),
            Some(key) => by_key.entry(key).or_default().push(name),
            None if node.problems.is_empty() => outcome.issues.push(PeerIssue::MissingKey),
            None => {}
        }
    }

    let mut candidates: BTreeMap<&str, PublicKey> = BTreeMap::new();
    for (key, names) in &by_key {
        if let [single] = names.as_slice() {
            candidates.insert(single, *key);
            continue;
        }
        for name in names {
            let others = names
                .iter()
                .filter(|n| *n != name)
                .map(|n| (*n).to_owned())
                .collect();
            outcomes
                .entry((*name).to_owned())
                .or_default()
                .issues
                .push(PeerIssue::DuplicateKey { others });
        }
    }

    let allowed = allowed_cidrs(&candidates, &remotes, own_cidrs, &mut outcomes);
    let host_sources: BTreeMap<Family, IpAddr> = [Family::V4, Family::V6]
        .into_iter()
        .filter_map(|family| {
            host_source(
                own_cidrs,
                &config.local_addresses,
                &config.tunnel_addresses,
                family,
            )
            .map(|ip| (family, ip))
        })
        .collect();

    let mut peers = BTreeMap::new();
    let mut peer_nodes = BTreeMap::new();
    let mut routes = BTreeMap::new();
    for (name, key) in &candidates {
        let node = remotes[name];
        let outcome = outcomes.entry((*name).to_owned()).or_default();
        let cidrs = allowed.get(name).cloned().unwrap_or_default();
        if cidrs.is_empty() {
            outcome.issues.push(PeerIssue::NoPodCidrs);
            continue;
        }
        let endpoint = endpoint_of(node, config.listen_port);
        if endpoint.is_none() {
            outcome.issues.push(PeerIssue::NoEndpoint);
        }
        for cidr in &cidrs {
            routes.insert(
                *cidr,
                RouteSpec {
                    dst: *cidr,
                    dev: config.interface.clone(),
                    mtu: config.mtu,
                    src: host_sources.get(&Family::of(cidr)).copied(),
                },
            );
        }
        peers.insert(
            *key,
            PeerConfig {
                endpoint,
                allowed_ips: cidrs,
                persistent_keepalive: config.persistent_keepalive,
            },
        );
        peer_nodes.insert(*key, (*name).to_owned());
        outcome.peer = Some(*key);
    }

    let families = routes.keys().map(Family::of).collect::<BTreeSet<_>>();
    let host_source_issues = families
        .iter()
        .filter(|family| !host_sources.contains_key(family))
        .map(|family| NoHostSource {
            node: self_name.to_owned(),
            family: *family,
            pod_cidrs: own_cidrs
                .iter()
                .filter(|cidr| Family::of(cidr) == *family)
                .copied()
                .collect(),
        })
        .collect();
    let host_sources: BTreeMap<Family, IpAddr> = host_sources
        .into_iter()
        .filter(|(family, _)| families.contains(family))
        .collect();
    let rules = families
        .into_iter()
        .map(|family| RuleSpec {
            family,
            priority: config.rule_priority,
            table: config.route_table,
            fwmark: config.fwmark,
        })
        .collect();

    Desired {
        state: DesiredState {
            link: LinkSpec {
                name: config.interface.clone(),
                mtu: config.mtu,
                addresses: host_sources.values().copied().map(host_address).collect(),
            },
            device: DeviceSpec {
                public_key: *self_key,
                listen_port: config.listen_port,
                fwmark: config.fwmark,
                peers,
            },
            routes,
            rules,
        },
        nodes: outcomes,
        peer_nodes,
        host_sources,
        host_source_issues,
    }
}

/// Make-before-break: keeps in the desired state only the routes (and rules)
/// towards peers in `established`, the peers with which a handshake has
/// succeeded, and the routes already `routed` into the tunnel. The other
/// peers stay peers, so their handshake can complete, but their traffic keeps
/// whatever path it had.
///
/// Without this, the node that learns of a new peer first would steer replies
/// into a tunnel the other side does not accept yet, and lose them until the
/// other side catches up and WireGuard retries its handshake.
///
/// A CIDR already routed into the tunnel stays there while its peer awaits a
/// new handshake (a re-keyed node, a replaced node taking over the CIDR):
/// taking the route away would send that traffic in clear over the CNI until
/// the handshake completes. In the tunnel, WireGuard holds it until then.
///
/// Returns the peers still awaiting a handshake.
pub fn gate_routes(
    want: &mut Desired,
    established: &BTreeSet<PublicKey>,
    routed: &BTreeSet<IpNetwork>,
) -> BTreeSet<PublicKey> {
    let awaiting: BTreeSet<PublicKey> = want
        .state
        .device
        .peers
        .keys()
        .filter(|key| !established.contains(key))
        .copied()
        .collect();
    for key in &awaiting {
        if let Some(peer) = want.state.device.peers.get(key) {
            for cidr in peer.allowed_ips.iter().filter(|c| !routed.contains(c)) {
                want.state.routes.remove(cidr);
            }
        }
        if let Some(outcome) = want
            .peer_nodes
            .get(key)
            .and_then(|name| want.nodes.get_mut(name))
        {
            outcome.issues.push(PeerIssue::AwaitingHandshake);
        }
    }
    let families: BTreeSet<Family> = want.state.routes.keys().map(Family::of).collect();
    want.state
        .rules
        .retain(|rule| families.contains(&rule.family));
    awaiting
}

/// The pod CIDRs each candidate may be given: a CIDR overlapping this node's
/// own pod CIDRs, or another node's, would make WireGuard's allowed-IPs
/// ambiguous (the last writer wins), so it is left out on every node involved.
fn allowed_cidrs<'a>(
    candidates: &BTreeMap<&'a str, PublicKey>,
    remotes: &BTreeMap<&'a str, &NodeView>,
    own_cidrs: &[IpNetwork],
    outcomes: &mut BTreeMap<String, NodeOutcome>,
) -> BTreeMap<&'a str, BTreeSet<IpNetwork>> {
    // Only nodes that can become peers count: a node without a usable key is
    // never routed into the tunnel, and letting its claims knock out a valid
    // node's CIDRs would let one bad annotation take another node off the mesh.
    let mut claims: Vec<(&str, IpNetwork)> = candidates
        .keys()
        .flat_map(|name| {
            remotes[name]
                .pod_cidrs
                .iter()
                .map(move |cidr| (*name, *cidr))
        })
        .collect();
    claims.extend(own_cidrs.iter().map(|cidr| (THIS_NODE, *cidr)));
    let conflicts = conflicts(&claims);
    let mut allowed = BTreeMap::new();
    for name in candidates.keys() {
        let mut cidrs = BTreeSet::new();
        for cidr in &remotes[name].pod_cidrs {
            match conflicts.get(&(*name, *cidr)) {
                Some((other, other_cidr)) => {
                    outcomes.entry((*name).to_owned()).or_default().issues.push(
                        PeerIssue::CidrConflict {
                            cidr: *cidr,
                            other: (*other).to_owned(),
                            other_cidr: *other_cidr,
                        },
                    );
                }
                None => {
                    cidrs.insert(*cidr);
                }
            }
        }
        allowed.insert(*name, cidrs);
    }
    allowed
}

/// How this node is named in a conflict (never a valid Node name).
const THIS_NODE: &str = "(this node)";

/// Every claim that overlaps a claim of another node, with one such claim.
///
/// CIDRs either nest or are disjoint. Sorted by first address (the larger
/// first on a tie), the claims overlapping one another form runs whose first
/// member contains all the others, so one sweep finds them: O(n log n) instead
/// of comparing every pair of the cluster's pod CIDRs on every pass.
fn conflicts<'a>(
    claims: &[(&'a str, IpNetwork)],
) -> BTreeMap<(&'a str, IpNetwork), (&'a str, IpNetwork)> {
    let mut sorted: Vec<(Span, &str, IpNetwork)> = claims
        .iter()
        .map(|(node, cidr)| (span(cidr), *node, *cidr))
        .collect();
    sorted.sort_by(|a, b| {
        (a.0.family, a.0.first, std::cmp::Reverse(a.0.last), a.1, a.2).cmp(&(
            b.0.family,
            b.0.first,
            std::cmp::Reverse(b.0.last),
            b.1,
            b.2,
        ))
    });
    let mut found = BTreeMap::new();
    let mut start = 0;
    while start < sorted.len() {
        let root = sorted[start].0;
        let mut end = start + 1;
        while end < sorted.len()
            && sorted[end].0.family == root.family
            && sorted[end].0.first <= root.last
        {
            end += 1;
        }
        let run = &sorted[start..end];
        if run.iter().any(|(_, node, _)| *node != run[0].1) {
            for (_, node, cidr) in run {
                // Overlapping members of other nodes; the run's first member
                // overlaps every other, so this scan stops at once in practice.
                if let Some((_, other, other_cidr)) = run
                    .iter()
                    .find(|(_, other, other_cidr)| other != node && overlaps(*other_cidr, *cidr))
                {
                    found.insert((*node, *cidr), (*other, *other_cidr));
                }
            }
        }
        start = end;
    }
    found
}

/// The address range of a network, comparable within a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    family: Family,
    first: u128,
    last: u128,
}

fn span(net: &IpNetwork) -> Span {
    match net {
        IpNetwork::V4(v4) => Span {
            family: Family::V4,
            first: u128::from(u32::from(v4.network())),
            last: u128::from(u32::from(v4.broadcast())),
        },
        IpNetwork::V6(v6) => {
            let first = u128::from(v6.network());
            let host_bits = 128 - u32::from(v6.prefix());
            let last = if host_bits >= 128 {
                u128::MAX
            } else {
                first | ((1u128 << host_bits) - 1)
            };
            Span {
                family: Family::V6,
                first,
                last,
            }
        }
    }
}

fn endpoint_of(node: &NodeView, default_port: u16) -> Option<SocketAddr> {
    node.endpoint.or_else(|| {
        node.internal_ip()
            .map(|ip| SocketAddr::new(ip, default_port))
    })
}

#[cfg(test)]
#[path = "desired_tests.rs"]
mod tests;

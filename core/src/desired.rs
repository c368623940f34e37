//! `desired(self, nodes, config)`: from the Node views to the state wireseal
//! wants on this node, with a per-node account of why a node is or is not a
//! peer, and of every claim refused.
//!
//! Every value on a Node is its own node's word, and that node may be
//! compromised. So each claim is bounded first (see [`crate::claims`]), and
//! when two nodes claim the same key or overlapping pod CIDRs, the one the
//! datapath already holds keeps it and only the newcomer is refused: no
//! node's claim can take another node off the mesh, or redirect its traffic.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use ipnetwork::IpNetwork;
use thiserror::Error;

pub use self::host_source::{NoHostSource, host_source};
use self::host_source::{host_sources, missing_host_sources};
use self::ownership::{allowed_cidrs, bounded_claims, bounds, cidr_owners, key_owners};
use self::strict::catch_alls;
use crate::annotation::{InputErrorKind, NodeInputError, check_endpoint_address};
use crate::claims::OutOfBounds;
use crate::key::PublicKey;
use crate::node::NodeView;
use crate::state::{
    CatchAll, DesiredState, DeviceSpec, Family, LinkSpec, PeerConfig, RouteSpec, RuleSpec,
    host_address,
};

/// Settings of the local node that shape the desired state, and what the
/// last observation of the node found that they depend on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MeshConfig {
    /// Tunnel interface name.
    pub interface: String,
    /// WireGuard UDP listen port.
    pub listen_port: u16,
    /// fwmark of the datapath's own packets.
    pub fwmark: u32,
    /// wireseal's routing table: the routes into the tunnel.
    pub route_table: u32,
    /// Priority of wireseal's policy rules (the catch-all table's rule, in
    /// strict mode, comes right after it: one more).
    pub rule_priority: u32,
    /// Resolved tunnel MTU (interface and routes).
    pub mtu: u32,
    /// Persistent keepalive for every peer, in seconds.
    pub persistent_keepalive: Option<u16>,
    /// The cluster's pod networks (`--cluster-cidrs`): every pod CIDR a node
    /// claims must lie inside one of its family, and the
    /// `wireseal.dev/pod-cidrs` override is honoured only when they are set.
    /// Empty: not configured.
    pub cluster_cidrs: Vec<IpNetwork>,
    /// Endpoints are used only inside these (`--peer-endpoint-cidrs`); empty: any.
    pub peer_endpoint_cidrs: Vec<IpNetwork>,
    /// Addresses besides the nodes' own that no claim may contain and that
    /// never enter the tunnel: the API server's the agent uses.
    pub protected: BTreeSet<IpAddr>,
    /// Strict mode (`--strict`); `None` when off.
    pub strict: Option<Strict>,
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
    /// The peers the datapath holds now, as last read: whoever holds a key
    /// or a pod CIDR there keeps it against a newcomer's claim.
    pub programmed: BTreeMap<PublicKey, PeerConfig>,
    /// Now, in seconds since the Unix epoch: a node's announced next key
    /// replaces its key once its switch time has come (see [`crate::rotation`]).
    pub now: i64,
}

/// Strict mode: traffic to remote pod CIDRs that cannot be encrypted is
/// dropped, never sent in clear.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Strict {
    /// The routing table of the catch-alls, looked up right after
    /// wireseal's own table by a rule of its own.
    pub catch_all_table: u32,
    /// Ranges inside the catch-alls that must stay plain (`--strict-exclude`).
    pub exclude: Vec<IpNetwork>,
}

/// Why a remote node is not (fully) a peer, or what of its claims was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PeerIssue {
    /// A value on the Node is invalid (see the error).
    #[error("{0}")]
    InvalidInput(NodeInputError),
    /// No `wireseal.dev/public-key` yet (its agent has not started, or it has no wireseal).
    #[error("no public key published")]
    MissingKey,
    /// Another node holds the same public key and keeps it: this node is
    /// not programmed with it (WireGuard could not tell their packets apart).
    #[error("public key refused: node {owner} publishes it too and keeps it")]
    KeyHeldBy {
        /// The node that keeps the key.
        owner: String,
    },
    /// The node publishes this node's own public key.
    #[error("public key refused: it is this node's own")]
    KeyIsOurs,
    /// The node announces, as its next key, a key another node (or this
    /// one) holds: the rotation is refused, the node keeps its current key
    /// until its switch time and is refused at it.
    #[error("next public key refused: {} holds it", holder(owner))]
    NextKeyHeldBy {
        /// The node that keeps the key ([`THIS_NODE`] for this one).
        owner: String,
    },
    /// No pod CIDR is left to route to this node.
    #[error("no pod CIDRs")]
    NoPodCidrs,
    /// A pod CIDR no node may claim.
    #[error("pod CIDR {cidr} refused: it {reason}")]
    OutOfBounds {
        /// The claimed CIDR.
        cidr: IpNetwork,
        /// Why it is never routed.
        reason: OutOfBounds,
    },
    /// A pod CIDR that overlaps one another node (or this node) holds; the
    /// holder keeps it.
    #[error(
        "pod CIDR {cidr} refused: it overlaps {other_cidr}, which {} keeps",
        holder(other)
    )]
    CidrConflict {
        /// This node's CIDR.
        cidr: IpNetwork,
        /// The node that keeps the other CIDR ([`THIS_NODE`] for this one).
        other: String,
        /// The other node's CIDR.
        other_cidr: IpNetwork,
    },
    /// The address peers would send to is refused (see the reason); the node
    /// stays a peer, reached at the address its authenticated packets come from.
    #[error("endpoint {address} refused: {reason}")]
    EndpointRefused {
        /// The refused address.
        address: IpAddr,
        /// Why.
        reason: String,
    },
    /// Neither an endpoint nor an InternalIP: this node cannot start a handshake
    /// to it, but it can still reach us.
    #[error("no endpoint and no InternalIP; only it can start the handshake")]
    NoEndpoint,
    /// A peer, but no handshake has succeeded yet: its pod CIDRs are not routed
    /// into the tunnel until one has, so its traffic keeps the CNI's path.
    #[error("no handshake yet; traffic keeps the CNI's path until one succeeds")]
    AwaitingHandshake,
    /// A peer without a handshake yet, in strict mode: its traffic enters the
    /// tunnel, where WireGuard holds it until the handshake completes.
    #[error("no handshake yet; its traffic waits in the tunnel (strict mode)")]
    AwaitingHandshakeStrict,
}

/// How this node is named as the holder of a conflicting CIDR (never a
/// valid Node name).
pub const THIS_NODE: &str = "(this node)";

fn holder(other: &str) -> String {
    if other == THIS_NODE {
        "this node".to_owned()
    } else {
        format!("node {other}")
    }
}

impl PeerIssue {
    /// True for a refused claim or bad input: what a Kubernetes Event on the
    /// node is raised for. The others are states (no key yet, no handshake).
    #[must_use]
    pub fn is_refusal(&self) -> bool {
        self.refusal().is_some()
    }

    /// For a refusal, what was refused: `invalid-input`, `key`,
    /// `out-of-bounds`, `cidr-conflict` or `endpoint` (a metric label, and
    /// the Event's reason); `None` for a state.
    #[must_use]
    pub fn refusal(&self) -> Option<&'static str> {
        match self {
            Self::InvalidInput(_) => Some("invalid-input"),
            Self::KeyHeldBy { .. } | Self::KeyIsOurs | Self::NextKeyHeldBy { .. } => Some("key"),
            Self::OutOfBounds { .. } => Some("out-of-bounds"),
            Self::CidrConflict { .. } => Some("cidr-conflict"),
            Self::EndpointRefused { .. } => Some("endpoint"),
            Self::MissingKey
            | Self::NoPodCidrs
            | Self::NoEndpoint
            | Self::AwaitingHandshake
            | Self::AwaitingHandshakeStrict => None,
        }
    }
}

/// What became of one remote node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeOutcome {
    /// Its key, when it was made a peer.
    pub peer: Option<PublicKey>,
    /// Problems found, whether or not it became a peer.
    pub issues: Vec<PeerIssue>,
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
    /// Whether this is strict mode's desired state.
    pub strict: bool,
}

/// Computes the desired state of node `self_name`, whose device uses `self_key`.
///
/// Never peers with itself. A node with a missing or invalid key gets no
/// peer; a key or pod CIDR two nodes claim goes to the one the datapath holds
/// it for already (then the older node, then by name), never to neither; a
/// claim out of bounds is refused. Each is reported in [`Desired::nodes`].
/// `nodes` is every Node, this one included (its pod CIDRs are read).
#[must_use]
pub fn desired<'a>(
    self_name: &str,
    self_key: &PublicKey,
    nodes: impl IntoIterator<Item = &'a NodeView>,
    config: &MeshConfig,
) -> Desired {
    let (own_cidrs, remotes) = split_off_self(self_name, nodes);
    let mut outcomes = input_problems(&remotes);
    let bounds = bounds(&remotes, own_cidrs, config);
    let claims = bounded_claims(&remotes, &bounds, config, &mut outcomes);
    let candidates = key_owners(&remotes, &claims, self_key, config, &mut outcomes);
    let accepted = cidr_owners(&candidates, &remotes, &claims, own_cidrs, config);
    let allowed = allowed_cidrs(&candidates, &claims, &accepted, &mut outcomes);
    let mut host_sources = host_sources(own_cidrs, config);
    let mesh = peers_and_routes(
        &candidates,
        &remotes,
        &allowed,
        &host_sources,
        config,
        &mut outcomes,
    );
    let catch_alls = match &config.strict {
        Some(strict) => catch_alls(strict, &accepted, own_cidrs, &bounds, config),
        None => BTreeMap::new(),
    };
    let routed: BTreeSet<Family> = mesh.routes.keys().map(Family::of).collect();
    let host_source_issues = missing_host_sources(self_name, own_cidrs, &routed, &host_sources);
    host_sources.retain(|family, _| routed.contains(family));
    let rules = rules_for(&mesh.routes, &catch_alls, config);

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
                peers: mesh.peers,
            },
            routes: mesh.routes,
            catch_alls,
            rules,
        },
        nodes: outcomes,
        peer_nodes: mesh.peer_nodes,
        host_sources,
        host_source_issues,
        strict: config.strict.is_some(),
    }
}

/// This node's own pod CIDRs, and every other node by name. A repeated name
/// (not possible from one API server) keeps the last.
fn split_off_self<'a>(
    self_name: &str,
    nodes: impl IntoIterator<Item = &'a NodeView>,
) -> (&'a [IpNetwork], BTreeMap<&'a str, &'a NodeView>) {
    let mut own_cidrs: &[IpNetwork] = &[];
    let mut remotes = BTreeMap::new();
    for node in nodes {
        if node.name == self_name {
            own_cidrs = &node.pod_cidrs;
        } else {
            remotes.insert(node.name.as_str(), node);
        }
    }
    (own_cidrs, remotes)
}

/// An outcome for every remote node, starting with the problems found in
/// its input.
fn input_problems(remotes: &BTreeMap<&str, &NodeView>) -> BTreeMap<String, NodeOutcome> {
    remotes
        .iter()
        .map(|(name, node)| {
            let issues = node
                .problems
                .iter()
                .cloned()
                .map(PeerIssue::InvalidInput)
                .collect();
            ((*name).to_owned(), NodeOutcome { peer: None, issues })
        })
        .collect()
}

pub(super) fn outcome<'o>(
    outcomes: &'o mut BTreeMap<String, NodeOutcome>,
    name: &str,
) -> &'o mut NodeOutcome {
    outcomes.entry(name.to_owned()).or_default()
}

/// The peers, the node each belongs to, and the routes to their pod CIDRs.
struct Mesh {
    peers: BTreeMap<PublicKey, PeerConfig>,
    peer_nodes: BTreeMap<PublicKey, String>,
    routes: BTreeMap<IpNetwork, RouteSpec>,
}

/// Makes a peer of every candidate that keeps at least one pod CIDR, and
/// routes those CIDRs into the tunnel with this node's host source.
fn peers_and_routes(
    candidates: &BTreeMap<&str, PublicKey>,
    remotes: &BTreeMap<&str, &NodeView>,
    allowed: &BTreeMap<&str, BTreeSet<IpNetwork>>,
    host_sources: &BTreeMap<Family, IpAddr>,
    config: &MeshConfig,
    outcomes: &mut BTreeMap<String, NodeOutcome>,
) -> Mesh {
    let mut mesh = Mesh {
        peers: BTreeMap::new(),
        peer_nodes: BTreeMap::new(),
        routes: BTreeMap::new(),
    };
    for (name, key) in candidates {
        let outcome = outcome(outcomes, name);
        let cidrs = allowed.get(name).cloned().unwrap_or_default();
        if cidrs.is_empty() {
            outcome.issues.push(PeerIssue::NoPodCidrs);
            continue;
        }
        let endpoint = match remotes
            .get(name)
            .and_then(|node| endpoint_of(node, config.listen_port))
        {
            None => {
                outcome.issues.push(PeerIssue::NoEndpoint);
                None
            }
            Some(endpoint) => match refuse_endpoint(endpoint.ip(), config) {
                Some(reason) => {
                    outcome.issues.push(PeerIssue::EndpointRefused {
                        address: endpoint.ip(),
                        reason,
                    });
                    None
                }
                None => Some(endpoint),
            },
        };
        for cidr in &cidrs {
            mesh.routes.insert(
                *cidr,
                RouteSpec {
                    dst: *cidr,
                    dev: config.interface.clone(),
                    mtu: config.mtu,
                    src: host_sources.get(&Family::of(cidr)).copied(),
                },
            );
        }
        mesh.peers.insert(
            *key,
            PeerConfig {
                endpoint,
                allowed_ips: cidrs,
                persistent_keepalive: config.persistent_keepalive,
            },
        );
        mesh.peer_nodes.insert(*key, (*name).to_owned());
        outcome.peer = Some(*key);
    }
    mesh
}

/// Why peers must not send to `address`, if they must not: an address no
/// node can be reached at (the InternalIP stands in for a missing endpoint
/// and is checked here; a published endpoint was checked when decoded), or
/// one outside `--peer-endpoint-cidrs`.
fn refuse_endpoint(address: IpAddr, config: &MeshConfig) -> Option<String> {
    if let Err(kind) = check_endpoint_address(address) {
        return Some(match kind {
            InputErrorKind::EndpointNotRoutable(why) => format!("it is {why}"),
            other => format!("it {other}"),
        });
    }
    let allowed = &config.peer_endpoint_cidrs;
    (!allowed.is_empty() && !allowed.iter().any(|net| net.contains(address))).then(|| {
        let list: Vec<String> = allowed.iter().map(ToString::to_string).collect();
        format!("it is outside the peer endpoint CIDRs {}", list.join(", "))
    })
}

/// One rule per family routed into the tunnel; in strict mode, one more per
/// family with catch-alls, right after it, for the catch-all table.
fn rules_for(
    routes: &BTreeMap<IpNetwork, RouteSpec>,
    catch_alls: &BTreeMap<IpNetwork, CatchAll>,
    config: &MeshConfig,
) -> BTreeSet<RuleSpec> {
    let mut rules = BTreeSet::new();
    for family in routes.keys().map(Family::of) {
        rules.insert(tunnel_rule(family, config));
    }
    if let Some(strict) = &config.strict {
        for family in catch_alls.keys().map(Family::of) {
            rules.insert(tunnel_rule(family, config));
            rules.insert(RuleSpec {
                family,
                priority: config.rule_priority.saturating_add(1),
                table: strict.catch_all_table,
                fwmark: config.fwmark,
            });
        }
    }
    rules
}

fn tunnel_rule(family: Family, config: &MeshConfig) -> RuleSpec {
    RuleSpec {
        family,
        priority: config.rule_priority,
        table: config.route_table,
        fwmark: config.fwmark,
    }
}

/// Make-before-break, outside strict mode: keeps in the desired state only
/// the routes (and rules) towards peers in `established`, the peers with
/// which a handshake has succeeded, and the routes already `routed` into the
/// tunnel. The other peers stay peers, so their handshake can complete, but
/// their traffic keeps whatever path it had.
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
/// In strict mode nothing is gated: a peer's traffic enters the tunnel at
/// once and waits there for the handshake, rather than going out in clear.
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
        if !want.strict
            && let Some(peer) = want.state.device.peers.get(key)
        {
            for cidr in peer.allowed_ips.iter().filter(|c| !routed.contains(c)) {
                want.state.routes.remove(cidr);
            }
        }
        if let Some(outcome) = want
            .peer_nodes
            .get(key)
            .and_then(|name| want.nodes.get_mut(name))
        {
            outcome.issues.push(if want.strict {
                PeerIssue::AwaitingHandshakeStrict
            } else {
                PeerIssue::AwaitingHandshake
            });
        }
    }
    if !want.strict {
        let families: BTreeSet<Family> = want.state.routes.keys().map(Family::of).collect();
        want.state
            .rules
            .retain(|rule| families.contains(&rule.family));
    }
    awaiting
}

pub(super) fn endpoint_of(node: &NodeView, default_port: u16) -> Option<SocketAddr> {
    node.endpoint_or(default_port)
}

mod host_source;
mod ownership;
mod strict;
#[cfg(test)]
pub(crate) mod tests;

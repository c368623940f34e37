//! Who keeps a key or a pod CIDR: every claim bounded first, then, between
//! two nodes claiming the same, the one the datapath holds it for already.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::{MeshConfig, NodeOutcome, PeerIssue, THIS_NODE, endpoint_of, outcome};
use crate::claims::{Bounds, Disjoint, Hold, OutOfBounds, Rank};
use crate::key::PublicKey;
use crate::node::{AddressKind, CidrSource, NodeView};
use crate::rotation;
use crate::state::PeerConfig;

/// What no pod CIDR claim may contain or touch: the special-purpose ranges,
/// everything outside the cluster CIDRs, every node's addresses and
/// endpoints, the protected addresses (the API server), this node's own.
/// Whatever a peer claims, traffic to these never enters the tunnel, so the
/// agent always reaches the API server and sees every change (the deletion
/// of a hostile Node included).
pub(super) fn bounds(
    remotes: &BTreeMap<&str, &NodeView>,
    own_cidrs: &[IpNetwork],
    config: &MeshConfig,
) -> Bounds {
    let cluster = (!config.cluster_cidrs.is_empty()).then_some(config.cluster_cidrs.as_slice());
    let mut bounds = Bounds::new(cluster);
    for address in &config.protected {
        bounds.protect(*address, || "the API server address".to_owned());
    }
    for address in &config.local_addresses {
        // The CNI's gateway inside our own pod CIDR is ours in any case; a
        // remote claim on it is a conflict with this node.
        if !own_cidrs.iter().any(|own| own.contains(*address)) {
            bounds.protect(*address, || "an address of this node".to_owned());
        }
    }
    for (name, node) in remotes {
        for address in &node.addresses {
            let kind = match address.kind {
                AddressKind::Internal => "InternalIP",
                AddressKind::External => "ExternalIP",
            };
            bounds.protect(address.ip, || format!("node {name}'s {kind}"));
        }
        if let Some(endpoint) = node.endpoint {
            bounds.protect(endpoint.ip(), || format!("node {name}'s endpoint"));
        }
    }
    bounds
}

/// Each remote node's pod CIDRs that pass the bounds. An annotation override
/// needs `--cluster-cidrs`: without them nothing bounds what a node routes
/// to itself (a DNS server's address, a public range), while `spec.podCIDRs`
/// comes from the cluster's IPAM and cannot be changed once set.
pub(super) fn bounded_claims<'a>(
    remotes: &BTreeMap<&'a str, &NodeView>,
    bounds: &Bounds,
    config: &MeshConfig,
    outcomes: &mut BTreeMap<String, NodeOutcome>,
) -> BTreeMap<&'a str, Vec<IpNetwork>> {
    let mut claims = BTreeMap::new();
    for (name, node) in remotes {
        let mut kept = Vec::with_capacity(node.pod_cidrs.len());
        for cidr in &node.pod_cidrs {
            let refused = if node.pod_cidrs_source == CidrSource::Annotation
                && config.cluster_cidrs.is_empty()
            {
                Err(OutOfBounds::OutsideClusterCidrs(Vec::new()))
            } else {
                bounds.check(*cidr)
            };
            match refused {
                Ok(()) => kept.push(*cidr),
                Err(reason) => outcome(outcomes, name).issues.push(PeerIssue::OutOfBounds {
                    cidr: *cidr,
                    reason,
                }),
            }
        }
        claims.insert(*name, kept);
    }
    claims
}

/// The nodes that may become peers, with their keys. A key that is ours is
/// refused; a key several nodes claim goes to one of them only, by
/// [`Rank`]: the node the datapath holds it for (the node claims every pod
/// CIDR the key's peer carries there, better still if the peer's
/// authenticated endpoint is the node's), then the older node, then by name.
/// The others are refused with the owner named: copying a node's key, or
/// its key and some of its CIDRs, never takes that node off the mesh.
///
/// A rotation's next key is a claim too, from its announcement on: a node
/// announcing a key another node holds is refused, and a node copying a
/// key announced as next loses it to the rotating node. While it rotates, a
/// node holds what the datapath holds for its published key (one step
/// weaker than holding the key itself, so an incumbent keeps its key
/// against any announcement).
pub(super) fn key_owners<'a>(
    remotes: &BTreeMap<&'a str, &NodeView>,
    claims: &BTreeMap<&'a str, Vec<IpNetwork>>,
    self_key: &PublicKey,
    config: &MeshConfig,
    outcomes: &mut BTreeMap<String, NodeOutcome>,
) -> BTreeMap<&'a str, PublicKey> {
    let mut by_key: BTreeMap<PublicKey, Vec<(&str, KeyClaim)>> = BTreeMap::new();
    let mut phases = BTreeMap::new();
    for (name, node) in remotes {
        let issues = &mut outcome(outcomes, name).issues;
        let phase = rotation::phase(node, config.now);
        if let Some(refused) = &phase.refused {
            issues.push(PeerIssue::InvalidInput(refused.clone()));
        }
        match phase.in_use {
            Some(key) if key == *self_key => issues.push(PeerIssue::KeyIsOurs),
            Some(key) => by_key.entry(key).or_default().push((name, KeyClaim::InUse)),
            None if node.problems.is_empty() => issues.push(PeerIssue::MissingKey),
            None => {}
        }
        match phase.announced {
            Some(key) if key == *self_key => issues.push(PeerIssue::NextKeyHeldBy {
                owner: THIS_NODE.to_owned(),
            }),
            Some(key) => by_key.entry(key).or_default().push((name, KeyClaim::Next)),
            None => {}
        }
        phases.insert(*name, phase);
    }
    let mut candidates = BTreeMap::new();
    for (key, names) in by_key {
        let rank = |(name, claim): &(&'a str, KeyClaim)| {
            let node = remotes[name];
            let cidrs = claims.get(name).map(Vec::as_slice).unwrap_or_default();
            let endpoint = endpoint_of(node, config.listen_port).map(|e| e.ip());
            let direct = key_hold(config.programmed.get(&key), cidrs, endpoint);
            let previous = phases[name]
                .previous
                .and_then(|previous| config.programmed.get(&previous));
            let hold = direct.min(key_hold(previous, cidrs, endpoint).max(Hold::Held));
            (
                hold,
                *claim,
                Rank::new(name, hold, CidrSource::Spec, node.created),
            )
        };
        let Some(owner) = names.iter().min_by_key(|claim| rank(claim)).copied() else {
            continue;
        };
        for (name, claim) in names.iter().filter(|claim| **claim != owner) {
            let owner = owner.0.to_owned();
            outcome(outcomes, name).issues.push(match claim {
                KeyClaim::InUse => PeerIssue::KeyHeldBy { owner },
                KeyClaim::Next => PeerIssue::NextKeyHeldBy { owner },
            });
        }
        if owner.1 == KeyClaim::InUse {
            candidates.insert(owner.0, key);
        }
    }
    candidates
}

/// How a node claims a key: the one peers use for it now, or the next one
/// it announced. Between equal holds, the key in use wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum KeyClaim {
    InUse,
    Next,
}

/// How strongly the datapath's `peer` is a node's that claims `cidrs` and
/// is reached at `endpoint`.
fn key_hold(peer: Option<&PeerConfig>, cidrs: &[IpNetwork], endpoint: Option<IpAddr>) -> Hold {
    match peer {
        Some(peer) if !peer.allowed_ips.is_empty() => {
            if !peer.allowed_ips.iter().all(|held| cidrs.contains(held)) {
                Hold::None
            } else if peer.endpoint.is_none_or(|at| Some(at.ip()) == endpoint) {
                Hold::Full
            } else {
                Hold::Held
            }
        }
        _ => Hold::None,
    }
}

/// The datapath's peer for a node's key, or, while the node rotates, for
/// its published key: the pod CIDRs it carries stay the node's.
fn held_peer<'c>(
    config: &'c MeshConfig,
    node: &NodeView,
    key: &PublicKey,
) -> Option<&'c PeerConfig> {
    config.programmed.get(key).or_else(|| {
        rotation::phase(node, config.now)
            .previous
            .and_then(|previous| config.programmed.get(&previous))
    })
}

/// Who a pod CIDR belongs to: this node, or a remote node by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Owner<'a> {
    ThisNode,
    Remote(&'a str),
}

/// Every pod CIDR claim that is kept, none overlapping another: this node's
/// own first, then the candidates' by [`Rank`] (the datapath's peer for the
/// node holds the CIDR already; then `spec.podCIDRs` before the override;
/// then the older node; then by name). In strict mode without cluster CIDRs,
/// the nodes that are not peers (no wireseal there) follow, so their pod
/// CIDRs get a catch-all too; their claims never take one from a peer.
pub(super) fn cidr_owners<'a>(
    candidates: &BTreeMap<&'a str, PublicKey>,
    remotes: &BTreeMap<&'a str, &NodeView>,
    claims: &BTreeMap<&'a str, Vec<IpNetwork>>,
    own_cidrs: &[IpNetwork],
    config: &MeshConfig,
) -> Disjoint<Owner<'a>> {
    let mut accepted = Disjoint::default();
    for cidr in own_cidrs {
        // Our own list has no overlaps (validated with the Node).
        let _ = accepted.insert(*cidr, Owner::ThisNode);
    }
    let mut ranked: Vec<(Rank<'a>, IpNetwork)> = Vec::new();
    for (name, key) in candidates {
        let node = remotes[name];
        let held = held_peer(config, node, key);
        for cidr in claims.get(name).into_iter().flatten() {
            let hold = if held.is_some_and(|peer| peer.allowed_ips.contains(cidr)) {
                Hold::Held
            } else {
                Hold::None
            };
            ranked.push((
                Rank::new(name, hold, node.pod_cidrs_source, node.created),
                *cidr,
            ));
        }
    }
    ranked.sort();
    for (rank, cidr) in ranked {
        // A refused claim is recorded by `allowed_cidrs`.
        let _ = accepted.insert(cidr, Owner::Remote(rank.node));
    }
    if config.strict.is_some() && config.cluster_cidrs.is_empty() {
        for (name, cidrs) in claims {
            if candidates.contains_key(name) {
                continue;
            }
            for cidr in cidrs {
                let _ = accepted.insert(*cidr, Owner::Remote(name));
            }
        }
    }
    accepted
}

/// Each candidate's accepted pod CIDRs; every refused one is reported with
/// the claim that keeps it.
pub(super) fn allowed_cidrs<'a>(
    candidates: &BTreeMap<&'a str, PublicKey>,
    claims: &BTreeMap<&'a str, Vec<IpNetwork>>,
    accepted: &Disjoint<Owner<'a>>,
    outcomes: &mut BTreeMap<String, NodeOutcome>,
) -> BTreeMap<&'a str, BTreeSet<IpNetwork>> {
    let mut allowed = BTreeMap::new();
    for name in candidates.keys() {
        let mut cidrs = BTreeSet::new();
        for cidr in claims.get(name).into_iter().flatten() {
            match accepted.overlapping(*cidr) {
                Some((held, Owner::Remote(owner))) if held == *cidr && owner == *name => {
                    cidrs.insert(*cidr);
                }
                Some((other_cidr, owner)) => {
                    let other = match owner {
                        Owner::ThisNode => THIS_NODE.to_owned(),
                        Owner::Remote(other) => other.to_owned(),
                    };
                    outcome(outcomes, name)
                        .issues
                        .push(PeerIssue::CidrConflict {
                            cidr: *cidr,
                            other,
                            other_cidr,
                        });
                }
                // Every claim of a candidate was offered: unreachable, but
                // refusing is the safe answer.
                None => {}
            }
        }
        allowed.insert(*name, cidrs);
    }
    allowed
}

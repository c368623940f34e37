//! `plan(desired, observed)`: the minimal set of changes that turns what is on
//! the node into what wireseal wants, in a deterministic order.
//!
//! Order of application (the executor must follow it):
//! 1. remove stale rules — steering goes first, so no packet is sent into a
//!    table that is about to change under it;
//! 2. create the link, or set its MTU;
//! 3. device settings (private key, listen port, fwmark);
//! 4. add or update peers — before any removal, so a re-keyed node's new peer
//!    takes over its allowed IPs before the old one goes;
//! 5. add or replace routes;
//! 6. remove stale routes, then stale peers — a departing node's prefixes
//!    leave the table before its peer leaves the device;
//! 7. add rules — last, so the rule never points at an incomplete table.

use std::collections::{BTreeMap, BTreeSet};

use ipnetwork::IpNetwork;

use crate::key::PublicKey;
use crate::state::{
    DesiredState, LinkSpec, ObservedDevice, ObservedState, PeerConfig, RouteSpec, RuleSpec,
};

/// Changes to the tunnel interface.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LinkPlan {
    /// Create the interface (it does not exist).
    pub create: Option<LinkSpec>,
    /// Set the MTU of the existing interface.
    pub set_mtu: Option<u32>,
}

/// Changes to the WireGuard device. Peer updates carry the whole desired peer
/// configuration; a peer is never removed and re-added to change it, since
/// that would reset its session.
///
/// Allowed IPs that a kept peer loses and no peer claims are listed apart in
/// `remove_allowed_ips`, so that a datapath can take just those away: the
/// kernel's only other way, replacing a peer's whole list, leaves the peer
/// without any allowed IP for an instant and drops its packets meanwhile.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DevicePlan {
    /// Set the private key whose public key is this (the key itself comes from keymgr).
    pub set_private_key: Option<PublicKey>,
    /// Set the listen port.
    pub listen_port: Option<u16>,
    /// Set the fwmark.
    pub fwmark: Option<u32>,
    /// Peers to add or update, with their full configuration.
    pub upsert_peers: BTreeMap<PublicKey, PeerConfig>,
    /// Peers to remove.
    pub remove_peers: BTreeSet<PublicKey>,
    /// Allowed IPs to take from the peers that stay (they hold them now and no
    /// desired peer does). Part of the removals, like `remove_peers`. The
    /// upserted configurations already lack them: a datapath that replaces a
    /// peer's whole list may ignore this.
    pub remove_allowed_ips: BTreeSet<IpNetwork>,
}

impl DevicePlan {
    /// True when the device needs no change.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.set_private_key.is_none()
            && self.listen_port.is_none()
            && self.fwmark.is_none()
            && self.upsert_peers.is_empty()
            && self.remove_peers.is_empty()
            && self.remove_allowed_ips.is_empty()
    }
}

/// Changes to routes in wireseal's table and to its policy rules.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RoutingPlan {
    /// Routes to add, or replace when one with the same destination differs.
    pub add_routes: BTreeMap<IpNetwork, RouteSpec>,
    /// Destinations whose routes to remove.
    pub remove_routes: BTreeSet<IpNetwork>,
    /// Rules to add.
    pub add_rules: BTreeSet<RuleSpec>,
    /// Rules to remove.
    pub remove_rules: BTreeSet<RuleSpec>,
}

impl RoutingPlan {
    /// True when routing needs no change.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.add_routes.is_empty()
            && self.remove_routes.is_empty()
            && self.add_rules.is_empty()
            && self.remove_rules.is_empty()
    }
}

/// Everything to change, grouped by the component that applies it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[must_use]
pub struct Plan {
    /// Interface changes.
    pub link: LinkPlan,
    /// WireGuard device changes.
    pub device: DevicePlan,
    /// Route and rule changes.
    pub routing: RoutingPlan,
}

impl Plan {
    /// True when nothing needs to change.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.link == LinkPlan::default() && self.device.is_empty() && self.routing.is_empty()
    }

    /// Number of individual changes, for logs and metrics.
    #[must_use]
    pub fn len(&self) -> usize {
        usize::from(self.link.create.is_some())
            + usize::from(self.link.set_mtu.is_some())
            + usize::from(self.device.set_private_key.is_some())
            + usize::from(self.device.listen_port.is_some())
            + usize::from(self.device.fwmark.is_some())
            + self.device.upsert_peers.len()
            + self.device.remove_peers.len()
            + self.device.remove_allowed_ips.len()
            + self.routing.add_routes.len()
            + self.routing.remove_routes.len()
            + self.routing.add_rules.len()
            + self.routing.remove_rules.len()
    }
}

/// Computes the changes that take `observed` to `desired`.
pub fn plan(desired: &DesiredState, observed: &ObservedState) -> Plan {
    Plan {
        link: plan_link(desired, observed),
        device: plan_device(desired, observed.device.as_ref()),
        routing: plan_routing(desired, observed),
    }
}

fn plan_link(desired: &DesiredState, observed: &ObservedState) -> LinkPlan {
    match &observed.link {
        None => LinkPlan {
            create: Some(desired.link.clone()),
            set_mtu: None,
        },
        Some(link) if link.mtu != desired.link.mtu => LinkPlan {
            create: None,
            set_mtu: Some(desired.link.mtu),
        },
        Some(_) => LinkPlan::default(),
    }
}

fn plan_device(desired: &DesiredState, observed: Option<&ObservedDevice>) -> DevicePlan {
    let empty = ObservedDevice::default();
    let observed = observed.unwrap_or(&empty);
    let want = &desired.device;
    let upsert_peers = want
        .peers
        .iter()
        .filter(|(key, peer)| observed.peers.get(*key) != Some(*peer))
        .map(|(key, peer)| (*key, peer.clone()))
        .collect();
    let remove_peers = observed
        .peers
        .keys()
        .filter(|key| !want.peers.contains_key(*key))
        .copied()
        .collect();
    let claimed: BTreeSet<&IpNetwork> = want.peers.values().flat_map(|p| &p.allowed_ips).collect();
    let remove_allowed_ips = observed
        .peers
        .iter()
        .filter(|(key, _)| want.peers.contains_key(*key))
        .flat_map(|(_, peer)| &peer.allowed_ips)
        .filter(|ip| !claimed.contains(ip))
        .copied()
        .collect();
    DevicePlan {
        set_private_key: (observed.public_key != Some(want.public_key)).then_some(want.public_key),
        listen_port: (observed.listen_port != want.listen_port).then_some(want.listen_port),
        fwmark: (observed.fwmark != want.fwmark).then_some(want.fwmark),
        upsert_peers,
        remove_peers,
        remove_allowed_ips,
    }
}

fn plan_routing(desired: &DesiredState, observed: &ObservedState) -> RoutingPlan {
    RoutingPlan {
        add_routes: desired
            .routes
            .iter()
            .filter(|(dst, route)| observed.routes.get(*dst) != Some(*route))
            .map(|(dst, route)| (*dst, route.clone()))
            .collect(),
        remove_routes: observed
            .routes
            .keys()
            .filter(|dst| !desired.routes.contains_key(*dst))
            .copied()
            .collect(),
        add_rules: desired.rules.difference(&observed.rules).copied().collect(),
        remove_rules: observed.rules.difference(&desired.rules).copied().collect(),
    }
}

impl ObservedState {
    /// The state after `plan` has been applied without error: the model the
    /// property tests and the test datapath use to check a plan against.
    pub fn apply(&mut self, plan: &Plan) {
        for rule in &plan.routing.remove_rules {
            self.rules.remove(rule);
        }
        if let Some(link) = &plan.link.create {
            self.link = Some(link.clone());
        }
        if let (Some(link), Some(mtu)) = (self.link.as_mut(), plan.link.set_mtu) {
            link.mtu = mtu;
        }
        let device = self.device.get_or_insert_with(ObservedDevice::default);
        let change = &plan.device;
        if let Some(key) = change.set_private_key {
            device.public_key = Some(key);
        }
        if let Some(port) = change.listen_port {
            device.listen_port = port;
        }
        if let Some(mark) = change.fwmark {
            device.fwmark = mark;
        }
        for (key, peer) in &change.upsert_peers {
            // WireGuard moves an allowed IP to the peer that claims it last.
            for other in device.peers.values_mut() {
                other
                    .allowed_ips
                    .retain(|ip| !peer.allowed_ips.contains(ip));
            }
            device.peers.insert(*key, peer.clone());
        }
        for (dst, route) in &plan.routing.add_routes {
            self.routes.insert(*dst, route.clone());
        }
        for dst in &plan.routing.remove_routes {
            self.routes.remove(dst);
        }
        for key in &change.remove_peers {
            device.peers.remove(key);
        }
        for peer in device.peers.values_mut() {
            peer.allowed_ips
                .retain(|ip| !change.remove_allowed_ips.contains(ip));
        }
        self.rules.extend(plan.routing.add_rules.iter().copied());
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;

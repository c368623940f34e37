//! `plan(desired, observed)`: the minimal set of changes that turns what is on
//! the node into what wireseal wants, in a deterministic order.
//!
//! Order of application (the executor must follow it):
//! 1. remove stale rules — steering goes first, so no packet is sent into a
//!    table that is about to change under it;
//! 2. create the link, or set its MTU; then add the link's new addresses —
//!    before the routes that name them as their preferred source;
//! 3. device settings (private key, listen port, fwmark);
//! 4. add or update peers — before any removal, so a re-keyed node's new peer
//!    takes over its allowed IPs before the old one goes;
//! 5. add or replace routes;
//! 6. remove stale routes, then stale peers — a departing node's prefixes
//!    leave the table before its peer leaves the device —, then the link's
//!    stale addresses, once no route names them as its source any more; when
//!    that takes the link's last IPv4 address, Linux flushes every IPv4 route
//!    through the link, so the plan's `restore_routes` are written right
//!    after;
//! 7. add rules — last, so the rule never points at an incomplete table.

use std::collections::{BTreeMap, BTreeSet};

use ipnetwork::IpNetwork;

use crate::key::PublicKey;
use crate::state::{
    DesiredState, Family, LinkSpec, ObservedDevice, ObservedState, PeerConfig, RouteSpec, RuleSpec,
};

/// Changes to the tunnel interface.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LinkPlan {
    /// Create the interface (it does not exist), without addresses: a new
    /// link gets them from `add_addresses`, as every datapath creates its
    /// link bare.
    pub create: Option<LinkSpec>,
    /// Set the MTU of the existing interface.
    pub set_mtu: Option<u32>,
    /// Addresses to add to the interface (step 2).
    pub add_addresses: BTreeSet<IpNetwork>,
    /// Addresses to remove from the interface (step 6, after the routes).
    pub remove_addresses: BTreeSet<IpNetwork>,
}

impl LinkPlan {
    /// True when the interface needs no change.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.create.is_none()
            && self.set_mtu.is_none()
            && self.add_addresses.is_empty()
            && self.remove_addresses.is_empty()
    }
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
    /// Routes to write once the link's stale addresses are gone (step 6):
    /// the plan takes the link's last IPv4 address away, and Linux then
    /// drops every IPv4 route through the link (`fib_disable_ip`). Every
    /// desired IPv4 route of the link is here then, and not in `add_routes`.
    pub restore_routes: BTreeMap<IpNetwork, RouteSpec>,
}

impl RoutingPlan {
    /// True when routing needs no change.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.add_routes.is_empty()
            && self.remove_routes.is_empty()
            && self.add_rules.is_empty()
            && self.remove_rules.is_empty()
            && self.restore_routes.is_empty()
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
        self.link.is_empty() && self.device.is_empty() && self.routing.is_empty()
    }

    /// Number of individual changes, for logs and metrics.
    #[must_use]
    pub fn len(&self) -> usize {
        usize::from(self.link.create.is_some())
            + usize::from(self.link.set_mtu.is_some())
            + self.link.add_addresses.len()
            + self.link.remove_addresses.len()
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
            + self.routing.restore_routes.len()
    }
}

/// Computes the changes that take `observed` to `desired`.
pub fn plan(desired: &DesiredState, observed: &ObservedState) -> Plan {
    let mut routing = plan_routing(desired, observed);
    if let Some(link) = &observed.link
        && has_ipv4(&link.addresses)
        && !has_ipv4(&desired.link.addresses)
    {
        // Written before the flush they would be lost: write them after.
        routing.restore_routes = desired
            .routes
            .iter()
            .filter(|(dst, route)| flushed_with(&link.name, dst, route))
            .map(|(dst, route)| (*dst, route.clone()))
            .collect();
        routing
            .add_routes
            .retain(|dst, route| !flushed_with(&link.name, dst, route));
    }
    Plan {
        link: plan_link(desired, observed),
        device: plan_device(desired, observed.device.as_ref()),
        routing,
    }
}

fn has_ipv4(addresses: &BTreeSet<IpNetwork>) -> bool {
    addresses.iter().any(|a| Family::of(a) == Family::V4)
}

/// True for a route Linux drops when `link` loses its last IPv4 address.
fn flushed_with(link: &str, dst: &IpNetwork, route: &RouteSpec) -> bool {
    Family::of(dst) == Family::V4 && route.dev == link
}

fn plan_link(desired: &DesiredState, observed: &ObservedState) -> LinkPlan {
    let want = &desired.link;
    match &observed.link {
        None => LinkPlan {
            create: Some(LinkSpec {
                addresses: BTreeSet::new(),
                ..want.clone()
            }),
            add_addresses: want.addresses.clone(),
            ..LinkPlan::default()
        },
        Some(link) => LinkPlan {
            create: None,
            set_mtu: (link.mtu != want.mtu).then_some(want.mtu),
            add_addresses: want
                .addresses
                .difference(&link.addresses)
                .copied()
                .collect(),
            remove_addresses: link
                .addresses
                .difference(&want.addresses)
                .copied()
                .collect(),
        },
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
        restore_routes: BTreeMap::new(),
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
        if let Some(link) = self.link.as_mut() {
            if let Some(mtu) = plan.link.set_mtu {
                link.mtu = mtu;
            }
            link.addresses
                .extend(plan.link.add_addresses.iter().copied());
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
        if let Some(link) = self.link.as_mut() {
            let had_ipv4 = has_ipv4(&link.addresses);
            link.addresses
                .retain(|address| !plan.link.remove_addresses.contains(address));
            // The kernel's rule: a link without IPv4 address loses its IPv4 routes.
            if had_ipv4 && !has_ipv4(&link.addresses) {
                self.routes
                    .retain(|dst, route| !flushed_with(&link.name, dst, route));
            }
        }
        for (dst, route) in &plan.routing.restore_routes {
            self.routes.insert(*dst, route.clone());
        }
        self.rules.extend(plan.routing.add_rules.iter().copied());
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;

//! `plan(desired, observed)`: the changes that turn what is on the node into
//! what wireseal wants, as one ordered list of [`Step`]s. Every datapath
//! (kernel WireGuard, the userspace process, the in-memory model) carries the
//! steps out in this order and in no other; nothing else decides the order.
//!
//! The order, and why:
//! 1. remove stale rules: steering goes first, so no packet is sent into a
//!    table that is about to change under it; then add strict mode's new
//!    catch-alls, so that from here on whatever leaves the tunnel's table
//!    is dropped, not sent in clear;
//! 2. create the link, or set its MTU; then add the link's new addresses,
//!    before the routes that name them as their preferred source;
//! 3. configure the device: private key, listen port, fwmark, then added or
//!    updated peers, before any removal, so a re-keyed node's new peer takes
//!    over its allowed IPs before the old one goes;
//! 4. add or replace routes;
//! 5. remove stale routes, so a departing node's prefixes leave the table
//!    before its peer leaves the device; then remove stale peers and the
//!    allowed IPs no peer keeps;
//! 6. remove the link's stale addresses, once no route names them; when that
//!    takes the link's last IPv4 address, Linux flushes every IPv4 route
//!    through the link, so those routes are written again right after;
//! 7. remove stale catch-alls, once the routes they stood behind are in
//!    place; then add rules, last, so a rule never points at an incomplete
//!    table.
//!
//! [`changes`] computes what differs, grouped by object; [`Changes::into_plan`]
//! puts it in the order above.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ipnetwork::IpNetwork;

use crate::key::PublicKey;
use crate::state::{
    CatchAll, DesiredState, Family, LinkSpec, ObservedDevice, ObservedState, PeerConfig, RouteSpec,
    RuleSpec,
};

/// Changes to the WireGuard device, carried out as one step. Peer updates
/// carry the whole desired peer configuration; a peer is never removed and
/// re-added to change it, since that would reset its session.
///
/// Allowed IPs that a kept peer loses and no peer claims are listed apart in
/// `remove_allowed_ips`, so that a datapath can take just those away: the
/// kernel's only other way, replacing a peer's whole list, leaves the peer
/// without any allowed IP for an instant and drops its packets meanwhile.
///
/// A plan holds two device steps at most: settings and upserts (step 3), and
/// removals (step 5).
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
    /// desired peer does). The upserted configurations already lack them: a
    /// datapath that replaces a peer's whole list may ignore this.
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

    /// Number of individual changes.
    #[must_use]
    pub fn len(&self) -> usize {
        usize::from(self.set_private_key.is_some())
            + usize::from(self.listen_port.is_some())
            + usize::from(self.fwmark.is_some())
            + self.upsert_peers.len()
            + self.remove_peers.len()
            + self.remove_allowed_ips.len()
    }

    /// Splits off the removals (step 5), leaving settings and upserts (step 3).
    fn split_removals(&mut self) -> Self {
        Self {
            remove_peers: std::mem::take(&mut self.remove_peers),
            remove_allowed_ips: std::mem::take(&mut self.remove_allowed_ips),
            ..Self::default()
        }
    }
}

/// One change to the node. A plan is a list of them, in the order of this
/// module's documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Remove a stale policy rule.
    RemoveRule(RuleSpec),
    /// Add (or change) a catch-all in the catch-all table (strict mode).
    AddCatchAll(CatchAll),
    /// Create the tunnel interface, without addresses (they follow as
    /// [`Step::AddAddress`]): every datapath creates its link bare.
    CreateLink(LinkSpec),
    /// Set the tunnel interface's MTU.
    SetMtu {
        /// Interface name.
        link: String,
        /// The new MTU.
        mtu: u32,
    },
    /// Add an address (a host source, as a /32 or /128) to the tunnel interface.
    AddAddress {
        /// Interface name.
        link: String,
        /// The address with its prefix length.
        address: IpNetwork,
    },
    /// Change the WireGuard device.
    Device(DevicePlan),
    /// Add a route, or replace the one with the same destination.
    ReplaceRoute(RouteSpec),
    /// Remove the route to a destination from wireseal's table.
    RemoveRoute(IpNetwork),
    /// Remove an address from the tunnel interface.
    RemoveAddress {
        /// Interface name.
        link: String,
        /// The address with its prefix length.
        address: IpNetwork,
    },
    /// Remove the catch-all to a destination from the catch-all table.
    RemoveCatchAll(IpNetwork),
    /// Add a policy rule.
    AddRule(RuleSpec),
}

impl Step {
    /// Number of individual changes in this step (a device step may carry many).
    #[must_use]
    pub fn len(&self) -> usize {
        match self {
            Self::Device(device) => device.len(),
            _ => 1,
        }
    }

    /// False: a step always changes something (a plan holds no empty device step).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RemoveRule(rule) => write!(f, "remove rule {rule}"),
            Self::AddCatchAll(all) => write!(f, "add catch-all {all}"),
            Self::RemoveCatchAll(dst) => write!(f, "remove catch-all {dst}"),
            Self::CreateLink(link) => write!(f, "create link {} mtu {}", link.name, link.mtu),
            Self::SetMtu { link, mtu } => write!(f, "set mtu {mtu} on {link}"),
            Self::AddAddress { link, address } => write!(f, "add address {address} to {link}"),
            Self::Device(device) => {
                let mut parts = Vec::new();
                if device.set_private_key.is_some() {
                    parts.push("set private key".to_owned());
                }
                if let Some(port) = device.listen_port {
                    parts.push(format!("listen port {port}"));
                }
                if let Some(mark) = device.fwmark {
                    parts.push(format!("fwmark {mark:#x}"));
                }
                let peers = |keys: &mut dyn Iterator<Item = &PublicKey>| {
                    keys.map(PublicKey::fingerprint)
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                if !device.upsert_peers.is_empty() {
                    parts.push(format!(
                        "set peers {}",
                        peers(&mut device.upsert_peers.keys())
                    ));
                }
                if !device.remove_peers.is_empty() {
                    parts.push(format!(
                        "remove peers {}",
                        peers(&mut device.remove_peers.iter())
                    ));
                }
                if !device.remove_allowed_ips.is_empty() {
                    let ips: Vec<String> = device
                        .remove_allowed_ips
                        .iter()
                        .map(ToString::to_string)
                        .collect();
                    parts.push(format!("remove allowed IPs {}", ips.join(" ")));
                }
                write!(f, "device: {}", parts.join(", "))
            }
            Self::ReplaceRoute(route) => write!(f, "replace route {route}"),
            Self::RemoveRoute(dst) => write!(f, "remove route {dst}"),
            Self::RemoveAddress { link, address } => {
                write!(f, "remove address {address} from {link}")
            }
            Self::AddRule(rule) => write!(f, "add rule {rule}"),
        }
    }
}

/// Everything to change, as ordered steps.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[must_use]
pub struct Plan {
    steps: Vec<Step>,
}

impl Plan {
    /// The steps, in the order they must be carried out.
    #[must_use]
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// True when nothing needs to change.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Number of individual changes, for logs and metrics.
    #[must_use]
    pub fn len(&self) -> usize {
        self.steps.iter().map(Step::len).sum()
    }

    /// How many steps of each kind, for the log line of a pass.
    #[must_use]
    pub fn summary(&self) -> PlanSummary {
        let mut summary = PlanSummary::default();
        for step in &self.steps {
            match step {
                Step::RemoveRule(_) => summary.rules_removed += 1,
                Step::AddCatchAll(_) | Step::RemoveCatchAll(_) => summary.catch_alls_changed += 1,
                Step::AddRule(_) => summary.rules_added += 1,
                Step::CreateLink(_) | Step::SetMtu { .. } => summary.link_changes += 1,
                Step::AddAddress { .. } => summary.addresses_added += 1,
                Step::RemoveAddress { .. } => summary.addresses_removed += 1,
                Step::Device(device) => {
                    summary.peers_upserted += device.upsert_peers.len();
                    summary.peers_removed += device.remove_peers.len();
                }
                Step::ReplaceRoute(_) => summary.routes_written += 1,
                Step::RemoveRoute(_) => summary.routes_removed += 1,
            }
        }
        summary
    }
}

impl IntoIterator for Plan {
    type Item = Step;
    type IntoIter = std::vec::IntoIter<Step>;

    fn into_iter(self) -> Self::IntoIter {
        self.steps.into_iter()
    }
}

/// Counts of a plan's steps by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PlanSummary {
    /// Rules removed.
    pub rules_removed: usize,
    /// Catch-alls added, changed or removed.
    pub catch_alls_changed: usize,
    /// Link created or MTU set.
    pub link_changes: usize,
    /// Addresses added to the link.
    pub addresses_added: usize,
    /// Peers added or updated.
    pub peers_upserted: usize,
    /// Routes added, replaced or written again after a flush.
    pub routes_written: usize,
    /// Routes removed.
    pub routes_removed: usize,
    /// Peers removed.
    pub peers_removed: usize,
    /// Addresses removed from the link.
    pub addresses_removed: usize,
    /// Rules added.
    pub rules_added: usize,
}

/// Changes to the tunnel interface.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LinkChanges {
    /// The interface's name.
    pub name: String,
    /// Create the interface (it does not exist), without addresses.
    pub create: Option<LinkSpec>,
    /// Set the MTU of the existing interface.
    pub set_mtu: Option<u32>,
    /// Addresses to add to the interface.
    pub add_addresses: BTreeSet<IpNetwork>,
    /// Addresses to remove from the interface.
    pub remove_addresses: BTreeSet<IpNetwork>,
}

impl LinkChanges {
    /// True when the interface needs no change.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.create.is_none()
            && self.set_mtu.is_none()
            && self.add_addresses.is_empty()
            && self.remove_addresses.is_empty()
    }
}

/// Changes to routes in wireseal's table and to its policy rules.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RoutingChanges {
    /// Routes to add, or replace when one with the same destination differs.
    pub add_routes: BTreeMap<IpNetwork, RouteSpec>,
    /// Destinations whose routes to remove.
    pub remove_routes: BTreeSet<IpNetwork>,
    /// Rules to add.
    pub add_rules: BTreeSet<RuleSpec>,
    /// Rules to remove.
    pub remove_rules: BTreeSet<RuleSpec>,
    /// Catch-alls to add or change.
    pub add_catch_alls: BTreeMap<IpNetwork, CatchAll>,
    /// Destinations whose catch-alls to remove.
    pub remove_catch_alls: BTreeSet<IpNetwork>,
    /// Routes to write once the link's stale addresses are gone: the
    /// changes take the link's last IPv4 address away, and Linux then drops
    /// every IPv4 route through the link (`fib_disable_ip`). Every desired
    /// IPv4 route of the link is here then, and not in `add_routes`.
    pub restore_routes: BTreeMap<IpNetwork, RouteSpec>,
}

impl RoutingChanges {
    /// True when routing needs no change.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.add_routes.is_empty()
            && self.remove_routes.is_empty()
            && self.add_rules.is_empty()
            && self.remove_rules.is_empty()
            && self.add_catch_alls.is_empty()
            && self.remove_catch_alls.is_empty()
            && self.restore_routes.is_empty()
    }
}

/// What differs between the desired and the observed state, by object.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[must_use]
pub struct Changes {
    /// Interface changes.
    pub link: LinkChanges,
    /// WireGuard device changes.
    pub device: DevicePlan,
    /// Route and rule changes.
    pub routing: RoutingChanges,
}

impl Changes {
    /// True when nothing differs.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.link.is_empty() && self.device.is_empty() && self.routing.is_empty()
    }

    /// Number of individual changes.
    #[must_use]
    pub fn len(&self) -> usize {
        usize::from(self.link.create.is_some())
            + usize::from(self.link.set_mtu.is_some())
            + self.link.add_addresses.len()
            + self.link.remove_addresses.len()
            + self.device.len()
            + self.routing.add_routes.len()
            + self.routing.remove_routes.len()
            + self.routing.add_rules.len()
            + self.routing.remove_rules.len()
            + self.routing.add_catch_alls.len()
            + self.routing.remove_catch_alls.len()
            + self.routing.restore_routes.len()
    }

    /// The changes as steps, in the order of this module's documentation.
    pub fn into_plan(self) -> Plan {
        let Self {
            link,
            mut device,
            routing,
        } = self;
        let removals = device.split_removals();
        let name = link.name;
        let mut steps = Vec::new();
        steps.extend(routing.remove_rules.into_iter().map(Step::RemoveRule));
        steps.extend(routing.add_catch_alls.into_values().map(Step::AddCatchAll));
        steps.extend(link.create.map(Step::CreateLink));
        steps.extend(link.set_mtu.map(|mtu| Step::SetMtu {
            link: name.clone(),
            mtu,
        }));
        steps.extend(
            link.add_addresses
                .into_iter()
                .map(|address| Step::AddAddress {
                    link: name.clone(),
                    address,
                }),
        );
        if !device.is_empty() {
            steps.push(Step::Device(device));
        }
        steps.extend(routing.add_routes.into_values().map(Step::ReplaceRoute));
        steps.extend(routing.remove_routes.into_iter().map(Step::RemoveRoute));
        if !removals.is_empty() {
            steps.push(Step::Device(removals));
        }
        steps.extend(
            link.remove_addresses
                .into_iter()
                .map(|address| Step::RemoveAddress {
                    link: name.clone(),
                    address,
                }),
        );
        steps.extend(routing.restore_routes.into_values().map(Step::ReplaceRoute));
        steps.extend(
            routing
                .remove_catch_alls
                .into_iter()
                .map(Step::RemoveCatchAll),
        );
        steps.extend(routing.add_rules.into_iter().map(Step::AddRule));
        Plan { steps }
    }
}

/// Computes the plan that takes `observed` to `desired`.
pub fn plan(desired: &DesiredState, observed: &ObservedState) -> Plan {
    changes(desired, observed).into_plan()
}

/// Computes what differs between `desired` and `observed`.
pub fn changes(desired: &DesiredState, observed: &ObservedState) -> Changes {
    let mut routing = routing_changes(desired, observed);
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
    Changes {
        link: link_changes(desired, observed),
        device: device_changes(desired, observed.device.as_ref()),
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

fn link_changes(desired: &DesiredState, observed: &ObservedState) -> LinkChanges {
    let want = &desired.link;
    match &observed.link {
        None => LinkChanges {
            name: want.name.clone(),
            create: Some(LinkSpec {
                addresses: BTreeSet::new(),
                ..want.clone()
            }),
            add_addresses: want.addresses.clone(),
            ..LinkChanges::default()
        },
        Some(link) => LinkChanges {
            name: want.name.clone(),
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

fn device_changes(desired: &DesiredState, observed: Option<&ObservedDevice>) -> DevicePlan {
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

fn routing_changes(desired: &DesiredState, observed: &ObservedState) -> RoutingChanges {
    RoutingChanges {
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
        add_catch_alls: desired
            .catch_alls
            .iter()
            .filter(|(dst, all)| observed.catch_alls.get(*dst) != Some(*all))
            .map(|(dst, all)| (*dst, *all))
            .collect(),
        remove_catch_alls: observed
            .catch_alls
            .keys()
            .filter(|dst| !desired.catch_alls.contains_key(*dst))
            .copied()
            .collect(),
        restore_routes: BTreeMap::new(),
    }
}

impl ObservedState {
    /// The state after `plan` has been carried out without error: the model
    /// that the property tests and the in-memory datapath check plans against.
    pub fn apply(&mut self, plan: &Plan) {
        for step in plan.steps() {
            self.apply_step(step);
        }
    }

    /// The state after one step, as the kernel would leave it.
    pub fn apply_step(&mut self, step: &Step) {
        match step {
            Step::RemoveRule(rule) => {
                self.rules.remove(rule);
            }
            Step::AddCatchAll(all) => {
                self.catch_alls.insert(all.dst, *all);
            }
            Step::RemoveCatchAll(dst) => {
                self.catch_alls.remove(dst);
            }
            Step::CreateLink(link) => self.link = Some(link.clone()),
            Step::SetMtu { mtu, .. } => {
                if let Some(link) = self.link.as_mut() {
                    link.mtu = *mtu;
                }
            }
            Step::AddAddress { address, .. } => {
                if let Some(link) = self.link.as_mut() {
                    link.addresses.insert(*address);
                }
            }
            Step::Device(change) => self
                .device
                .get_or_insert_with(ObservedDevice::default)
                .apply(change),
            Step::ReplaceRoute(route) => {
                self.routes.insert(route.dst, route.clone());
            }
            Step::RemoveRoute(dst) => {
                self.routes.remove(dst);
            }
            Step::RemoveAddress { address, .. } => {
                if let Some(link) = self.link.as_mut() {
                    let had_ipv4 = has_ipv4(&link.addresses);
                    link.addresses.remove(address);
                    // The kernel's rule: a link without IPv4 address loses its IPv4 routes.
                    if had_ipv4 && !has_ipv4(&link.addresses) {
                        self.routes
                            .retain(|dst, route| !flushed_with(&link.name, dst, route));
                    }
                }
            }
            Step::AddRule(rule) => {
                self.rules.insert(*rule);
            }
        }
    }
}

impl ObservedDevice {
    /// The device after `change`, as WireGuard leaves it.
    pub fn apply(&mut self, change: &DevicePlan) {
        if let Some(key) = change.set_private_key {
            self.public_key = Some(key);
        }
        if let Some(port) = change.listen_port {
            self.listen_port = port;
        }
        if let Some(mark) = change.fwmark {
            self.fwmark = mark;
        }
        for (key, peer) in &change.upsert_peers {
            // WireGuard moves an allowed IP to the peer that claims it last.
            for other in self.peers.values_mut() {
                other
                    .allowed_ips
                    .retain(|ip| !peer.allowed_ips.contains(ip));
            }
            self.peers.insert(*key, peer.clone());
        }
        for key in &change.remove_peers {
            self.peers.remove(key);
        }
        for peer in self.peers.values_mut() {
            peer.allowed_ips
                .retain(|ip| !change.remove_allowed_ips.contains(ip));
        }
    }
}

#[cfg(test)]
mod tests;

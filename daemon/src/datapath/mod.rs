//! The seams between the reconcile loop and the node: the WireGuard device
//! ([`Datapath`], one implementation per datapath) and the tunnel interface's
//! MTU and addresses, routes and rules ([`Routing`], shared by both datapaths).

pub mod any;
pub mod kernel;
pub mod memory;
pub mod netlink_routing;
pub mod uapi;
pub mod userspace;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::IpAddr;
use std::time::SystemTime;

use ipnetwork::IpNetwork;
use thiserror::Error;
use wireseal_core::{
    DatapathKind, DevicePlan, LinkSpec, ObservedDevice, PeerConfig, PublicKey, RouteSpec,
    RoutingPlan, RuleSpec,
};
use wireseal_keymgr::PrivateKey;

/// Traffic counters and handshake time of one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PeerStats {
    /// Time of the last completed handshake, if any.
    pub last_handshake: Option<SystemTime>,
    /// Bytes received from the peer.
    pub rx_bytes: u64,
    /// Bytes sent to the peer.
    pub tx_bytes: u64,
}

/// The device as read back, with per-peer statistics.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceObservation {
    /// The device configuration; `None` when there is no device yet.
    pub device: Option<ObservedDevice>,
    /// Statistics by peer.
    pub stats: BTreeMap<PublicKey, PeerStats>,
}

/// A failure of the datapath or of routing, with what was being done.
#[derive(Debug, Error)]
#[error("{operation}: {source}")]
pub struct DatapathError {
    /// What was attempted, e.g. "set peer 3fG7…" or "add route 10.244.1.0/24".
    pub operation: String,
    /// The underlying error.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl DatapathError {
    /// Wraps `source` with the operation that failed.
    pub fn new(
        operation: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            operation: operation.into(),
            source: source.into(),
        }
    }
}

/// The WireGuard device of one datapath.
pub trait Datapath: Send {
    /// Which datapath this is.
    fn kind(&self) -> DatapathKind;

    /// Makes sure the tunnel interface exists (creating the kernel link, or
    /// starting or finding the userspace process). Adopts an existing one.
    fn ensure_link(
        &mut self,
        link: &LinkSpec,
    ) -> impl Future<Output = Result<(), DatapathError>> + Send;

    /// Reads the device back.
    fn observe(&mut self) -> impl Future<Output = Result<DeviceObservation, DatapathError>> + Send;

    /// Asks for a handshake with these peers (their desired configuration
    /// given), which have none yet. Routes towards a peer wait for its first
    /// handshake, so a datapath that only starts one when it has a packet to
    /// send must be asked. The default does nothing.
    fn request_handshake(
        &mut self,
        _peers: &BTreeMap<PublicKey, PeerConfig>,
        _key: &PrivateKey,
    ) -> impl Future<Output = Result<(), DatapathError>> + Send {
        async { Ok(()) }
    }

    /// Applies device changes: settings, then peer upserts, then removals.
    /// `key` is the private key to set when the plan asks for it.
    fn apply(
        &mut self,
        plan: &DevicePlan,
        key: &PrivateKey,
    ) -> impl Future<Output = Result<(), DatapathError>> + Send;
}

/// What routing reads back: the tunnel interface and wireseal's table and rules.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RoutingObservation {
    /// The tunnel interface with its addresses (link-local ones left out),
    /// if it exists.
    pub link: Option<LinkSpec>,
    /// Routes in wireseal's table.
    pub routes: BTreeMap<IpNetwork, RouteSpec>,
    /// wireseal's rules.
    pub rules: BTreeSet<RuleSpec>,
}

/// The interface MTU and addresses, routes and policy rules, the same for
/// both datapaths.
pub trait Routing: Send {
    /// Reads back the tunnel interface, the routes in `table` and the rules at `priority`.
    fn observe(
        &mut self,
        interface: &str,
        table: u32,
        priority: u32,
    ) -> impl Future<Output = Result<RoutingObservation, DatapathError>> + Send;

    /// Sets the tunnel interface up (the userspace datapath creates it down).
    fn ensure_up(
        &mut self,
        interface: &str,
    ) -> impl Future<Output = Result<(), DatapathError>> + Send;

    /// Sets the tunnel interface's MTU.
    fn set_mtu(
        &mut self,
        interface: &str,
        mtu: u32,
    ) -> impl Future<Output = Result<(), DatapathError>> + Send;

    /// Adds addresses to the tunnel interface (the host sources, as /32 or
    /// /128), before the routes that name them. Adding one that is there is
    /// success.
    fn add_addresses(
        &mut self,
        interface: &str,
        addresses: &BTreeSet<IpNetwork>,
    ) -> impl Future<Output = Result<(), DatapathError>> + Send;

    /// Removes addresses from the tunnel interface, after the routes stopped
    /// naming them. Removing one that is gone is success.
    fn remove_addresses(
        &mut self,
        interface: &str,
        addresses: &BTreeSet<IpNetwork>,
    ) -> impl Future<Output = Result<(), DatapathError>> + Send;

    /// Applies route and rule changes. `phase` selects which part, so the
    /// reconcile loop can interleave them with device changes in the order
    /// documented in `wireseal_core::plan`.
    fn apply(
        &mut self,
        plan: &RoutingPlan,
        phase: RoutingPhase,
    ) -> impl Future<Output = Result<(), DatapathError>> + Send;

    /// The device and MTU of the path the kernel would use to reach `dst`.
    fn path_mtu(
        &mut self,
        dst: IpAddr,
    ) -> impl Future<Output = Result<(String, u32), DatapathError>> + Send;

    /// The pod-facing link (veth or bridge, other than `exclude`) with the
    /// largest MTU: what the CNI gave its pods.
    fn pod_link_mtu(
        &mut self,
        exclude: &BTreeSet<String>,
    ) -> impl Future<Output = Result<Option<(String, u32)>, DatapathError>> + Send;

    /// Write requests sent to the kernel so far (link, routes, rules; reads
    /// not counted), so each pass can log what it cost. The default: none.
    fn writes(&self) -> u64 {
        0
    }

    /// The node's addresses that can be a route's preferred source, read
    /// anew on every call: the CNI adds and removes them (flannel's cni0
    /// appears with the first pod). Those on the tunnel link `tunnel`
    /// (wireseal's copies) apart from the others, as the choice of the host
    /// source treats them apart. Leaves out a source the kernel refused since
    /// the addresses last changed.
    fn local_addresses(
        &mut self,
        tunnel: &str,
    ) -> impl Future<Output = Result<NodeAddresses, DatapathError>> + Send;
}

/// The node's usable addresses, as candidates for the host source.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeAddresses {
    /// On every interface but the tunnel link: the CNI's.
    pub elsewhere: BTreeSet<IpAddr>,
    /// On the tunnel link: wireseal's copies of earlier host sources.
    pub tunnel: BTreeSet<IpAddr>,
}

/// The parts of a routing plan, in the order they are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutingPhase {
    /// Stale rules go first.
    RemoveRules,
    /// Routes are added or replaced, then stale ones removed.
    Routes,
    /// Routes written again after the tunnel link lost its last IPv4
    /// address, which made Linux flush them (`restore_routes`).
    Restore,
    /// New rules go last.
    AddRules,
}

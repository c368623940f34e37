//! The host source: the address the node's own packets into the tunnel
//! leave from, so that the peers' WireGuard accepts them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use thiserror::Error;

use super::MeshConfig;
use crate::state::Family;

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

/// Per family, the source of this node's own packets into the tunnel (see
/// [`host_source`]).
pub(super) fn host_sources(
    own_cidrs: &[IpNetwork],
    config: &MeshConfig,
) -> BTreeMap<Family, IpAddr> {
    [Family::V4, Family::V6]
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
        .collect()
}

/// The families routed into the tunnel that have no host source.
pub(super) fn missing_host_sources(
    self_name: &str,
    own_cidrs: &[IpNetwork],
    families: &BTreeSet<Family>,
    host_sources: &BTreeMap<Family, IpAddr>,
) -> Vec<NoHostSource> {
    families
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
        .collect()
}

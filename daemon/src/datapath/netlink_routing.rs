//! Routing through netlink: the tunnel interface's MTU and addresses,
//! wireseal's table and its policy rules. The same for both datapaths.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use tracing::warn;
use wireseal_core::{RouteSpec, RoutingPlan};
use wireseal_netlink::{AddressInfo, ApplyError, ApplyItem, Errno, Netlink, RoutingIds};

use super::{DatapathError, NodeAddresses, Routing, RoutingObservation, RoutingPhase};

/// Routing on this node's kernel.
pub struct NetlinkRouting {
    netlink: Netlink,
    table: u32,
    fwmark: u32,
    warned_foreign: bool,
    /// The usable addresses as last read.
    addresses: BTreeSet<IpAddr>,
    /// Preferred sources the kernel refused, and the addresses there were
    /// then: not offered again until the addresses change, so a refused
    /// source cannot make every pass write its routes twice.
    refused: Option<(BTreeSet<IpAddr>, BTreeSet<IpAddr>)>,
}

impl std::fmt::Debug for NetlinkRouting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetlinkRouting")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl NetlinkRouting {
    /// Routing in `table`; underlay paths are looked up as the datapath's own
    /// packets (marked `fwmark`) would take them.
    #[must_use]
    pub fn new(netlink: Netlink, table: u32, fwmark: u32) -> Self {
        Self {
            netlink,
            table,
            fwmark,
            warned_foreign: false,
            addresses: BTreeSet::new(),
            refused: None,
        }
    }

    /// A route whose preferred source is no longer an address of this node
    /// (deleted between reading the addresses and writing the route) is
    /// refused with `EINVAL`. Leaving its destination without a route into
    /// the tunnel would send its pods' traffic along the CNI's plain path
    /// until the next pass, so it is written again at once without a source,
    /// and that source is not offered again until the addresses change (the
    /// address event that removed it wakes the next pass, which reads them
    /// anew). Every other failure is returned as it was.
    async fn retry_without_refused_sources(&mut self, err: ApplyError) -> Result<(), ApplyError> {
        let (refused, mut failures): (Vec<_>, Vec<_>) =
            err.failures.into_iter().partition(|failure| {
                matches!(&failure.item, ApplyItem::ReplaceRoute(route) if route.src.is_some())
                    && failure.errno() == Some(Errno(nix::errno::Errno::EINVAL as i32))
            });
        let mut retry = RoutingPlan::default();
        let mut sources = BTreeSet::new();
        for failure in &refused {
            if let ApplyItem::ReplaceRoute(route) = &failure.item {
                sources.extend(route.src);
                let plain = RouteSpec {
                    src: None,
                    ..route.clone()
                };
                retry.add_routes.insert(route.dst, plain);
            }
        }
        if retry.add_routes.is_empty() {
            return Err(ApplyError { failures });
        }
        let first = refused
            .first()
            .map(|failure| failure.error.to_string())
            .unwrap_or_default();
        match self.netlink.apply_routes(self.table, &retry).await {
            Ok(()) => {
                warn!(
                    routes = retry.add_routes.len(),
                    sources = ?sources,
                    error = %first,
                    "the kernel refused the routes' preferred source (no longer an address of this node?); \
                     wrote them without it, and will read the addresses again"
                );
                self.refused = Some((self.addresses.clone(), sources));
            }
            Err(mut again) => failures.append(&mut again.failures),
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(ApplyError { failures })
        }
    }
}

fn wrap(operation: &str) -> impl FnOnce(ApplyError) -> DatapathError + '_ {
    move |err| DatapathError::new(operation, err)
}

impl Routing for NetlinkRouting {
    async fn observe(
        &mut self,
        interface: &str,
        table: u32,
        priority: u32,
    ) -> Result<RoutingObservation, DatapathError> {
        let observed = self
            .netlink
            .observe_routing(interface, RoutingIds { table, priority })
            .await
            .map_err(|err| DatapathError::new("reading routes and rules", err))?;
        if !observed.foreign_rules.is_empty() && !self.warned_foreign {
            warn!(
                priority,
                count = observed.foreign_rules.len(),
                "other rules share wireseal's rule priority; they are left alone, but the order between them is the kernel's"
            );
            self.warned_foreign = true;
        }
        Ok(RoutingObservation {
            link: observed.state.link,
            routes: observed.state.routes,
            rules: observed.state.rules,
        })
    }

    async fn ensure_up(&mut self, interface: &str) -> Result<(), DatapathError> {
        self.netlink
            .ensure_up(interface)
            .await
            .map(|_| ())
            .map_err(|err| DatapathError::new(format!("setting {interface} up"), err))
    }

    async fn set_mtu(&mut self, interface: &str, mtu: u32) -> Result<(), DatapathError> {
        self.netlink
            .set_link_mtu(interface, Some(mtu))
            .await
            .map_err(wrap("setting the tunnel MTU"))
    }

    async fn add_addresses(
        &mut self,
        interface: &str,
        addresses: &BTreeSet<IpNetwork>,
    ) -> Result<(), DatapathError> {
        self.netlink
            .add_link_addresses(interface, addresses)
            .await
            .map_err(wrap("adding the host sources to the tunnel link"))
    }

    async fn remove_addresses(
        &mut self,
        interface: &str,
        addresses: &BTreeSet<IpNetwork>,
    ) -> Result<(), DatapathError> {
        self.netlink
            .remove_link_addresses(interface, addresses)
            .await
            .map_err(wrap("removing stale addresses from the tunnel link"))
    }

    async fn apply(
        &mut self,
        plan: &RoutingPlan,
        phase: RoutingPhase,
    ) -> Result<(), DatapathError> {
        match phase {
            RoutingPhase::RemoveRules => self
                .netlink
                .remove_stale_rules(plan)
                .await
                .map_err(wrap("removing rules")),
            RoutingPhase::Routes => match self.netlink.apply_routes(self.table, plan).await {
                Ok(()) => Ok(()),
                Err(err) => self
                    .retry_without_refused_sources(err)
                    .await
                    .map_err(wrap("changing routes")),
            },
            RoutingPhase::Restore => self
                .netlink
                .restore_routes(self.table, plan)
                .await
                .map_err(wrap("writing the routes the kernel flushed again")),
            RoutingPhase::AddRules => self
                .netlink
                .add_rules(plan)
                .await
                .map_err(wrap("adding rules")),
        }
    }

    async fn path_mtu(&mut self, dst: IpAddr) -> Result<(String, u32), DatapathError> {
        self.netlink
            .underlay_path(dst, Some(self.fwmark))
            .await
            .map(|path| (path.dev, path.mtu))
            .map_err(|err| DatapathError::new(format!("looking up the path MTU to {dst}"), err))
    }

    async fn pod_link_mtu(
        &mut self,
        exclude: &BTreeSet<String>,
    ) -> Result<Option<(String, u32)>, DatapathError> {
        let links = self
            .netlink
            .links()
            .await
            .map_err(|err| DatapathError::new("listing links", err))?;
        Ok(links
            .into_values()
            .filter(|link| {
                matches!(link.kind.as_deref(), Some("veth" | "bridge"))
                    && !exclude.contains(&link.name)
            })
            .map(|link| (link.name, link.mtu))
            .max_by_key(|(name, mtu)| (*mtu, std::cmp::Reverse(name.clone()))))
    }

    fn writes(&self) -> u64 {
        self.netlink.writes()
    }

    async fn local_addresses(&mut self, tunnel: &str) -> Result<NodeAddresses, DatapathError> {
        let own = self
            .netlink
            .link(tunnel)
            .await
            .map_err(|err| DatapathError::new(format!("reading link {tunnel}"), err))?
            .map(|link| link.index);
        let (on_tunnel, elsewhere): (Vec<_>, Vec<_>) = self
            .netlink
            .addresses()
            .await
            .map_err(|err| DatapathError::new("listing addresses", err))?
            .into_iter()
            .filter(|address| address.usable)
            .partition(|address| Some(address.index) == own);
        let all = |found: Vec<AddressInfo>| -> BTreeSet<IpAddr> {
            found.into_iter().map(|address| address.address).collect()
        };
        let (elsewhere, on_tunnel) = (all(elsewhere), all(on_tunnel));
        let addresses: BTreeSet<IpAddr> = elsewhere.union(&on_tunnel).copied().collect();
        self.addresses.clone_from(&addresses);
        let offered = offered(addresses, &mut self.refused);
        Ok(NodeAddresses {
            elsewhere: elsewhere.intersection(&offered).copied().collect(),
            tunnel: on_tunnel.intersection(&offered).copied().collect(),
        })
    }
}

/// The addresses to offer as sources: all of them, less those the kernel
/// refused while the addresses were the same as now. Once they change, the
/// refusal is forgotten and every address is offered again.
fn offered(
    addresses: BTreeSet<IpAddr>,
    refused: &mut Option<(BTreeSet<IpAddr>, BTreeSet<IpAddr>)>,
) -> BTreeSet<IpAddr> {
    match refused {
        Some((among, sources)) if *among == addresses => {
            addresses.difference(sources).copied().collect()
        }
        Some(_) => {
            *refused = None;
            addresses
        }
        None => addresses,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(addresses: &[&str]) -> BTreeSet<IpAddr> {
        addresses.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn a_refused_source_is_offered_again_once_the_addresses_change() {
        let mut refused = None;
        let now = set(&["192.0.2.10", "10.244.0.1", "10.244.0.7"]);
        assert_eq!(offered(now.clone(), &mut refused), now);

        refused = Some((now.clone(), set(&["10.244.0.1"])));
        // Same addresses: the next lowest is offered instead, so the routes
        // are not written twice on every pass.
        assert_eq!(
            offered(now, &mut refused),
            set(&["192.0.2.10", "10.244.0.7"])
        );
        assert!(refused.is_some());
        // Anything changes (an address added, DAD done): all offered again.
        let later = set(&["192.0.2.10", "10.244.0.1", "10.244.0.7", "fd00::1"]);
        assert_eq!(offered(later.clone(), &mut refused), later);
        assert!(refused.is_none());
    }
}

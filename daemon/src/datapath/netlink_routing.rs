//! Routing through netlink: the tunnel interface's MTU and addresses,
//! wireseal's table and its policy rules. The same for both datapaths.

use std::collections::BTreeSet;
use std::net::IpAddr;

use tracing::warn;
use wireseal_core::{RouteSpec, Step};
use wireseal_netlink::{AddressInfo, Errno, LinkIndexes, Netlink, RoutingIds};

use super::{DatapathError, NodeAddresses, Routing, RoutingObservation};

/// Routing on this node's kernel.
pub struct NetlinkRouting {
    netlink: Netlink,
    ids: RoutingIds,
    fwmark: u32,
    warned_foreign: bool,
    /// Link indexes resolved during this pass (cleared on every observe).
    links: LinkIndexes,
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
            .field("ids", &self.ids)
            .finish_non_exhaustive()
    }
}

impl NetlinkRouting {
    /// Routing in wireseal's tables and rules (`ids`); underlay paths are
    /// looked up as the datapath's own packets (marked `fwmark`) would take them.
    #[must_use]
    pub fn new(netlink: Netlink, ids: RoutingIds, fwmark: u32) -> Self {
        Self {
            netlink,
            ids,
            fwmark,
            warned_foreign: false,
            links: LinkIndexes::default(),
            addresses: BTreeSet::new(),
            refused: None,
        }
    }

    /// Writes `route`. A route whose preferred source is no longer an address
    /// of this node (deleted between reading the addresses and writing the
    /// route) is refused with `EINVAL`. Leaving its destination without a
    /// route into the tunnel would send its pods' traffic along the CNI's
    /// plain path until the next pass, so it is written again at once without
    /// a source, and that source is not offered again until the addresses
    /// change (the address event that removed it wakes the next pass, which
    /// reads them anew). Every other failure is returned as it was.
    async fn replace_route(&mut self, route: &RouteSpec) -> Result<(), DatapathError> {
        let step = Step::ReplaceRoute(route.clone());
        let err = match self
            .netlink
            .apply_step(self.ids, &step, &mut self.links)
            .await
        {
            Ok(()) => return Ok(()),
            Err(err) => err,
        };
        let Some(source) = route
            .src
            .filter(|_| err.errno() == Some(Errno(nix::errno::Errno::EINVAL as i32)))
        else {
            return Err(err.into());
        };
        let plain = Step::ReplaceRoute(RouteSpec {
            src: None,
            ..route.clone()
        });
        self.netlink
            .apply_step(self.ids, &plain, &mut self.links)
            .await?;
        warn!(
            route = %route.dst,
            %source,
            error = %err,
            "the kernel refused the route's preferred source (no longer an address of this node?); \
             wrote it without one, and will read the addresses again"
        );
        let sources = match self.refused.take() {
            Some((among, mut sources)) if among == self.addresses => {
                sources.insert(source);
                sources
            }
            _ => BTreeSet::from([source]),
        };
        self.refused = Some((self.addresses.clone(), sources));
        Ok(())
    }
}

impl Routing for NetlinkRouting {
    async fn observe(&mut self, interface: &str) -> Result<RoutingObservation, DatapathError> {
        let priority = self.ids.priority;
        let observed = self.netlink.observe_routing(interface, self.ids).await?;
        // A new pass: links may have been replaced since the last one.
        self.links.clear();
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
            catch_alls: observed.state.catch_alls,
            rules: observed.state.rules,
        })
    }

    async fn ensure_up(&mut self, interface: &str) -> Result<(), DatapathError> {
        self.netlink.ensure_up(interface).await?;
        Ok(())
    }

    async fn apply(&mut self, step: &Step) -> Result<(), DatapathError> {
        match step {
            Step::ReplaceRoute(route) => self.replace_route(route).await,
            _ => Ok(self
                .netlink
                .apply_step(self.ids, step, &mut self.links)
                .await?),
        }
    }

    async fn path_mtu(&mut self, dst: IpAddr) -> Result<(String, u32), DatapathError> {
        let path = self.netlink.underlay_path(dst, Some(self.fwmark)).await?;
        Ok((path.dev, path.mtu))
    }

    async fn pod_link_mtu(
        &mut self,
        exclude: &BTreeSet<String>,
    ) -> Result<Option<(String, u32)>, DatapathError> {
        let links = self.netlink.links().await?;
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
        let own = self.netlink.link(tunnel).await?.map(|link| link.index);
        let (on_tunnel, elsewhere): (Vec<_>, Vec<_>) = self
            .netlink
            .addresses()
            .await?
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

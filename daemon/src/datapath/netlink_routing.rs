//! Routing through netlink: the tunnel interface's MTU, wireseal's table and
//! its policy rules. The same for both datapaths.

use std::collections::BTreeSet;
use std::net::IpAddr;

use tracing::warn;
use wireseal_core::RoutingPlan;
use wireseal_netlink::{Netlink, RoutingIds};

use super::{DatapathError, Routing, RoutingObservation, RoutingPhase};

/// Routing on this node's kernel.
pub struct NetlinkRouting {
    netlink: Netlink,
    table: u32,
    fwmark: u32,
    warned_foreign: bool,
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
        }
    }
}

fn wrap(operation: &str) -> impl FnOnce(wireseal_netlink::ApplyError) -> DatapathError + '_ {
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
            RoutingPhase::Routes => self
                .netlink
                .apply_routes(self.table, plan)
                .await
                .map_err(wrap("changing routes")),
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
}

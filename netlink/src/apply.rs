//! Applying a [`RoutingPlan`] (and the MTU and address changes of a
//! [`LinkPlan`]) in the order documented in `wireseal_core::plan`, and
//! observing the same objects.
//!
//! Every item is attempted; failures are collected and returned together, so
//! one bad route does not leave the rest of the plan unapplied. The next
//! reconcile retries what failed, since it re-plans from what it observes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ipnetwork::IpNetwork;
use tracing::{debug, info};
use wireseal_core::{LinkPlan, LinkSpec, ObservedState, RouteSpec, RoutingPlan, RuleSpec};

use crate::address::is_link_local;
use crate::conn::Netlink;
use crate::error::{Errno, Error, Op};
use crate::rule::ForeignRule;

/// wireseal's identifiers in the kernel's routing configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoutingIds {
    /// wireseal's routing table.
    pub table: u32,
    /// The priority of wireseal's policy rules.
    pub priority: u32,
}

/// One change of a routing apply.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ApplyItem {
    /// Remove a stale rule.
    RemoveRule(RuleSpec),
    /// Set the tunnel link's MTU.
    SetMtu {
        /// Interface name.
        iface: String,
        /// New MTU.
        mtu: u32,
    },
    /// Add an address to the tunnel link.
    AddAddress {
        /// Interface name.
        iface: String,
        /// The address with its prefix length.
        address: IpNetwork,
    },
    /// Add or replace a route.
    ReplaceRoute(RouteSpec),
    /// Remove a stale route.
    RemoveRoute(IpNetwork),
    /// Remove a stale address from the tunnel link.
    RemoveAddress {
        /// Interface name.
        iface: String,
        /// The address with its prefix length.
        address: IpNetwork,
    },
    /// Add a rule.
    AddRule(RuleSpec),
}

impl fmt::Display for ApplyItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RemoveRule(rule) => write!(
                f,
                "remove {} rule priority {} table {}",
                rule.family, rule.priority, rule.table
            ),
            Self::SetMtu { iface, mtu } => write!(f, "set mtu {mtu} on {iface}"),
            Self::AddAddress { iface, address } => write!(f, "add address {address} to {iface}"),
            Self::RemoveAddress { iface, address } => {
                write!(f, "remove address {address} from {iface}")
            }
            Self::ReplaceRoute(route) => {
                write!(
                    f,
                    "replace route {} dev {} mtu {}",
                    route.dst, route.dev, route.mtu
                )?;
                if let Some(src) = route.src {
                    write!(f, " src {src}")?;
                }
                Ok(())
            }
            Self::RemoveRoute(dst) => write!(f, "remove route {dst}"),
            Self::AddRule(rule) => write!(
                f,
                "add {} rule priority {} table {}",
                rule.family, rule.priority, rule.table
            ),
        }
    }
}

/// One failed item with its error.
#[derive(Debug)]
pub struct ApplyFailure {
    /// What was being changed.
    pub item: ApplyItem,
    /// Why it failed.
    pub error: Error,
}

impl ApplyFailure {
    /// The kernel's errno, if the failure carries one.
    #[must_use]
    pub fn errno(&self) -> Option<Errno> {
        self.error.errno()
    }
}

/// Some items of a plan failed; all the others were applied.
#[derive(Debug, Default)]
pub struct ApplyError {
    /// Each failed item, in application order.
    pub failures: Vec<ApplyFailure>,
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} routing change(s) failed", self.failures.len())?;
        for (n, failure) in self.failures.iter().enumerate() {
            let sep = if n == 0 { ": " } else { "; " };
            write!(f, "{sep}{}: {}", failure.item, failure.error)?;
        }
        Ok(())
    }
}

impl std::error::Error for ApplyError {}

impl ApplyError {
    fn push(&mut self, item: ApplyItem, error: Error) {
        self.failures.push(ApplyFailure { item, error });
    }

    fn into_result(self) -> Result<(), Self> {
        if self.failures.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }
}

/// The routing part of the observed state, plus what was found but is not
/// wireseal's.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedRouting {
    /// The link, routes and rules (`device` is left `None`: the datapath
    /// observes the WireGuard device).
    pub state: ObservedState,
    /// Rules at wireseal's priority that are not wireseal's; never touched.
    pub foreign_rules: Vec<ForeignRule>,
}

impl Netlink {
    /// Reads the tunnel link with its addresses, the routes in wireseal's
    /// table and wireseal's rules in one call.
    ///
    /// The link's addresses are all of them but the link-local ones: those
    /// are the kernel's (IPv6 autoconfiguration), never a host source, and
    /// wireseal leaves them alone. Every other address on its own link is
    /// wireseal's to keep or remove.
    ///
    /// # Errors
    /// The first read that fails.
    pub async fn observe_routing(
        &self,
        iface: &str,
        ids: RoutingIds,
    ) -> Result<ObservedRouting, Error> {
        let link = match self.link(iface).await? {
            Some(link) => {
                let addresses = self
                    .addresses_of(link.index)
                    .await?
                    .into_iter()
                    .filter(|address| !is_link_local(address.address))
                    .filter_map(|address| IpNetwork::new(address.address, address.prefix_len).ok())
                    .collect();
                Some(LinkSpec {
                    name: link.name,
                    mtu: link.mtu,
                    addresses,
                })
            }
            None => None,
        };
        let routes = self.routes(ids.table).await?;
        let rules = self.rules(ids.priority, ids.table).await?;
        debug!(
            iface,
            table = ids.table,
            link = link.is_some(),
            routes = routes.len(),
            rules = rules.ours.len(),
            foreign_rules = rules.foreign.len(),
            "observed routing"
        );
        Ok(ObservedRouting {
            state: ObservedState {
                link,
                device: None,
                routes,
                rules: rules.ours,
            },
            foreign_rules: rules.foreign,
        })
    }

    /// Applies a routing plan and the tunnel link's MTU and address changes
    /// in the documented order: remove stale rules, set the MTU, add the
    /// link's new addresses, add or replace routes, remove stale routes,
    /// remove the link's stale addresses, write the routes that removal
    /// flushed, add rules. Creating the link is the datapath's: `link.create`
    /// is ignored. For the datapaths, whose device changes go between these
    /// steps, call [`Self::remove_stale_rules`], [`Self::set_link_mtu`],
    /// [`Self::add_link_addresses`], [`Self::apply_routes`],
    /// [`Self::remove_link_addresses`], [`Self::restore_routes`] and
    /// [`Self::add_rules`] around the device calls instead. An empty plan
    /// writes nothing.
    ///
    /// # Errors
    /// [`ApplyError`] listing every item that failed; the rest were applied.
    pub async fn apply_routing(
        &self,
        table: u32,
        iface: &str,
        link: &LinkPlan,
        plan: &RoutingPlan,
    ) -> Result<(), ApplyError> {
        let mut failures = ApplyError::default();
        let before = self.writes();
        collect(&mut failures, self.remove_stale_rules(plan).await);
        collect(&mut failures, self.set_link_mtu(iface, link.set_mtu).await);
        collect(
            &mut failures,
            self.add_link_addresses(iface, &link.add_addresses).await,
        );
        collect(&mut failures, self.apply_routes(table, plan).await);
        collect(
            &mut failures,
            self.remove_link_addresses(iface, &link.remove_addresses)
                .await,
        );
        collect(&mut failures, self.restore_routes(table, plan).await);
        collect(&mut failures, self.add_rules(plan).await);
        if self.writes() != before {
            info!(
                table,
                iface,
                routes_added = plan.add_routes.len(),
                routes_removed = plan.remove_routes.len(),
                routes_restored = plan.restore_routes.len(),
                rules_added = plan.add_rules.len(),
                rules_removed = plan.remove_rules.len(),
                addresses_added = link.add_addresses.len(),
                addresses_removed = link.remove_addresses.len(),
                mtu = ?link.set_mtu,
                failed = failures.failures.len(),
                writes = self.writes() - before,
                "applied routing plan"
            );
        }
        failures.into_result()
    }

    /// Step 1: removes the plan's stale rules.
    ///
    /// # Errors
    /// [`ApplyError`] with each rule that could not be removed.
    pub async fn remove_stale_rules(&self, plan: &RoutingPlan) -> Result<(), ApplyError> {
        let mut failures = ApplyError::default();
        for rule in &plan.remove_rules {
            if let Err(error) = self.delete_rule(rule).await {
                failures.push(ApplyItem::RemoveRule(*rule), error);
            }
        }
        failures.into_result()
    }

    /// Step 2: sets the tunnel link's MTU when the plan changes it.
    ///
    /// # Errors
    /// [`ApplyError`] with the MTU change when it failed.
    pub async fn set_link_mtu(&self, iface: &str, mtu: Option<u32>) -> Result<(), ApplyError> {
        let mut failures = ApplyError::default();
        if let Some(mtu) = mtu
            && let Err(error) = self.set_mtu(iface, mtu).await
        {
            failures.push(
                ApplyItem::SetMtu {
                    iface: iface.to_owned(),
                    mtu,
                },
                error,
            );
        }
        failures.into_result()
    }

    /// Step 2 (second part): adds `addresses` to the tunnel link, before any
    /// route names one as its preferred source. Nothing to add writes nothing.
    ///
    /// # Errors
    /// [`ApplyError`] with each address that could not be added.
    pub async fn add_link_addresses(
        &self,
        iface: &str,
        addresses: &BTreeSet<IpNetwork>,
    ) -> Result<(), ApplyError> {
        self.change_link_addresses(iface, addresses, AddressChange::Add)
            .await
    }

    /// Step 6 (last part): removes `addresses` from the tunnel link, once the
    /// routes no longer name them. A link that is gone took them along.
    ///
    /// # Errors
    /// [`ApplyError`] with each address that could not be removed.
    pub async fn remove_link_addresses(
        &self,
        iface: &str,
        addresses: &BTreeSet<IpNetwork>,
    ) -> Result<(), ApplyError> {
        self.change_link_addresses(iface, addresses, AddressChange::Remove)
            .await
    }

    async fn change_link_addresses(
        &self,
        iface: &str,
        addresses: &BTreeSet<IpNetwork>,
        change: AddressChange,
    ) -> Result<(), ApplyError> {
        let mut failures = ApplyError::default();
        if addresses.is_empty() {
            return Ok(());
        }
        let index = self.resolve(iface).await;
        for address in addresses {
            let result = match (index, change) {
                (Ok(Some(index)), AddressChange::Add) => {
                    self.add_address_on(iface, index, *address).await
                }
                (Ok(Some(index)), AddressChange::Remove) => {
                    self.delete_address_on(iface, index, *address).await
                }
                (Ok(None), AddressChange::Add) => Err(unresolved(iface, None)),
                (Ok(None), AddressChange::Remove) => Ok(()),
                (Err(errno), _) => Err(unresolved(iface, errno)),
            };
            if let Err(error) = result {
                let (iface, address) = (iface.to_owned(), *address);
                let item = match change {
                    AddressChange::Add => ApplyItem::AddAddress { iface, address },
                    AddressChange::Remove => ApplyItem::RemoveAddress { iface, address },
                };
                failures.push(item, error);
            }
        }
        failures.into_result()
    }

    /// The index of link `iface`, once per apply step: `Ok(None)` when it
    /// does not exist; a failed lookup kept as its errno, so that every item
    /// of the step can report it.
    async fn resolve(&self, iface: &str) -> Result<Option<u32>, Option<Errno>> {
        self.link(iface)
            .await
            .map(|link| link.map(|link| link.index))
            .map_err(|err| err.errno())
    }

    /// Steps 5 and 6 (routing part): adds or replaces the plan's routes in
    /// `table`, then removes its stale routes.
    ///
    /// # Errors
    /// [`ApplyError`] with each route that could not be changed.
    pub async fn apply_routes(&self, table: u32, plan: &RoutingPlan) -> Result<(), ApplyError> {
        let mut failures = self.replace_routes(table, &plan.add_routes).await;
        for dst in &plan.remove_routes {
            if let Err(error) = self.delete_route(*dst, table).await {
                failures.push(ApplyItem::RemoveRoute(*dst), error);
            }
        }
        failures.into_result()
    }

    /// Step 6 (end): writes the plan's `restore_routes` in `table`, the
    /// routes Linux flushed when the tunnel link lost its last IPv4 address.
    ///
    /// # Errors
    /// [`ApplyError`] with each route that could not be written.
    pub async fn restore_routes(&self, table: u32, plan: &RoutingPlan) -> Result<(), ApplyError> {
        self.replace_routes(table, &plan.restore_routes)
            .await
            .into_result()
    }

    /// Adds or replaces `routes` in `table`, each device resolved once.
    async fn replace_routes(
        &self,
        table: u32,
        routes: &BTreeMap<IpNetwork, RouteSpec>,
    ) -> ApplyError {
        let mut failures = ApplyError::default();
        // The lookup error is kept as its errno (`None`: no such link).
        let mut indexes: BTreeMap<&str, Result<u32, Option<Errno>>> = BTreeMap::new();
        for route in routes.values() {
            if !indexes.contains_key(route.dev.as_str()) {
                let index = self.index_of(&route.dev).await.map_err(|err| err.errno());
                indexes.insert(route.dev.as_str(), index);
            }
            let result = match indexes.get(route.dev.as_str()) {
                Some(Ok(index)) => self.replace_route_via(route, *index, table).await,
                Some(Err(errno)) => Err(unresolved(&route.dev, *errno)),
                None => Err(unresolved(&route.dev, None)),
            };
            if let Err(error) = result {
                failures.push(ApplyItem::ReplaceRoute(route.clone()), error);
            }
        }
        failures
    }

    /// Step 7: adds the plan's rules.
    ///
    /// # Errors
    /// [`ApplyError`] with each rule that could not be added.
    pub async fn add_rules(&self, plan: &RoutingPlan) -> Result<(), ApplyError> {
        let mut failures = ApplyError::default();
        for rule in &plan.add_rules {
            if let Err(error) = self.add_rule(rule).await {
                failures.push(ApplyItem::AddRule(*rule), error);
            }
        }
        failures.into_result()
    }
}

/// Which way a link's addresses change.
#[derive(Debug, Clone, Copy)]
enum AddressChange {
    Add,
    Remove,
}

/// The error of an item whose link could not be resolved: the lookup's
/// errno, or (`None`) no such link.
fn unresolved(iface: &str, errno: Option<Errno>) -> Error {
    match errno {
        Some(errno) => Error::Kernel {
            op: Op::GetLink {
                iface: iface.to_owned(),
            },
            errno,
        },
        None => Error::LinkNotFound {
            iface: iface.to_owned(),
        },
    }
}

fn collect(into: &mut ApplyError, result: Result<(), ApplyError>) {
    if let Err(mut step) = result {
        into.failures.append(&mut step.failures);
    }
}

//! Applying a [`RoutingPlan`] (and the link MTU change of a `LinkPlan`) in the
//! order documented in `wireseal_core::plan`, and observing the same objects.
//!
//! Every item is attempted; failures are collected and returned together, so
//! one bad route does not leave the rest of the plan unapplied. The next
//! reconcile retries what failed, since it re-plans from what it observes.

use std::collections::BTreeMap;
use std::fmt;

use ipnetwork::IpNetwork;
use tracing::{debug, info};
use wireseal_core::{LinkSpec, ObservedState, RouteSpec, RoutingPlan, RuleSpec};

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
    /// Add or replace a route.
    ReplaceRoute(RouteSpec),
    /// Remove a stale route.
    RemoveRoute(IpNetwork),
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
    /// Reads the tunnel link, the routes in wireseal's table and wireseal's
    /// rules in one call.
    ///
    /// # Errors
    /// The first read that fails.
    pub async fn observe_routing(
        &self,
        iface: &str,
        ids: RoutingIds,
    ) -> Result<ObservedRouting, Error> {
        let link = self.link(iface).await?.map(|link| LinkSpec {
            name: link.name,
            mtu: link.mtu,
        });
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

    /// Applies a routing plan and the tunnel link's MTU change in the
    /// documented order: remove stale rules, set the MTU, add or replace
    /// routes, remove stale routes, add rules. For the kernel datapath, whose
    /// device changes go between these steps, call [`Self::remove_stale_rules`],
    /// [`Self::set_link_mtu`], [`Self::apply_routes`] and [`Self::add_rules`]
    /// around the device calls instead. An empty plan writes nothing.
    ///
    /// # Errors
    /// [`ApplyError`] listing every item that failed; the rest were applied.
    pub async fn apply_routing(
        &self,
        table: u32,
        iface: &str,
        set_mtu: Option<u32>,
        plan: &RoutingPlan,
    ) -> Result<(), ApplyError> {
        let mut failures = ApplyError::default();
        let before = self.writes();
        collect(&mut failures, self.remove_stale_rules(plan).await);
        collect(&mut failures, self.set_link_mtu(iface, set_mtu).await);
        collect(&mut failures, self.apply_routes(table, plan).await);
        collect(&mut failures, self.add_rules(plan).await);
        if self.writes() != before {
            info!(
                table,
                iface,
                routes_added = plan.add_routes.len(),
                routes_removed = plan.remove_routes.len(),
                rules_added = plan.add_rules.len(),
                rules_removed = plan.remove_rules.len(),
                mtu = ?set_mtu,
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

    /// Steps 5 and 6 (routing part): adds or replaces the plan's routes in
    /// `table`, then removes its stale routes.
    ///
    /// # Errors
    /// [`ApplyError`] with each route that could not be changed.
    pub async fn apply_routes(&self, table: u32, plan: &RoutingPlan) -> Result<(), ApplyError> {
        let mut failures = ApplyError::default();
        // Each device is resolved once per apply, not once per route.
        // The lookup error is kept as its errno (`None`: no such link).
        let mut indexes: BTreeMap<&str, Result<u32, Option<Errno>>> = BTreeMap::new();
        for route in plan.add_routes.values() {
            if !indexes.contains_key(route.dev.as_str()) {
                let index = self.index_of(&route.dev).await.map_err(|err| err.errno());
                indexes.insert(route.dev.as_str(), index);
            }
            let result = match indexes.get(route.dev.as_str()) {
                Some(Ok(index)) => self.replace_route_via(route, *index, table).await,
                Some(Err(Some(errno))) => Err(Error::Kernel {
                    op: Op::GetLink {
                        iface: route.dev.clone(),
                    },
                    errno: *errno,
                }),
                _ => Err(Error::LinkNotFound {
                    iface: route.dev.clone(),
                }),
            };
            if let Err(error) = result {
                failures.push(ApplyItem::ReplaceRoute(route.clone()), error);
            }
        }
        for dst in &plan.remove_routes {
            if let Err(error) = self.delete_route(*dst, table).await {
                failures.push(ApplyItem::RemoveRoute(*dst), error);
            }
        }
        failures.into_result()
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

fn collect(into: &mut ApplyError, result: Result<(), ApplyError>) {
    if let Err(mut step) = result {
        into.failures.append(&mut step.failures);
    }
}

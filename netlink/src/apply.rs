//! Carrying out the link, address, route and rule [`Step`]s of a plan (the
//! device steps are the datapath's), and observing the same objects.
//!
//! The order is the plan's; every step here is idempotent, so a retried or
//! concurrent pass converges. The next reconcile retries what failed, since
//! it re-plans from what it observes.

use std::collections::BTreeMap;

use ipnetwork::IpNetwork;
use tracing::debug;
use wireseal_core::{LinkSpec, ObservedState, Step};

use crate::address::is_link_local;
use crate::conn::Netlink;
use crate::error::{Errno, Error, Op};
use crate::rule::ForeignRule;

/// wireseal's identifiers in the kernel's routing configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoutingIds {
    /// wireseal's routing table: the routes into the tunnel.
    pub table: u32,
    /// The priority of wireseal's policy rules.
    pub priority: u32,
    /// The table of strict mode's catch-alls, looked up by the rule at
    /// `priority + 1`.
    pub catch_all_table: u32,
}

impl RoutingIds {
    /// The priority of the catch-all table's rules.
    #[must_use]
    pub fn catch_all_priority(&self) -> u32 {
        self.priority.saturating_add(1)
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
        let catch_alls = self.catch_alls(ids.catch_all_table).await?;
        let mut rules = self.rules(ids.priority, ids.table).await?;
        let strict = self
            .rules(ids.catch_all_priority(), ids.catch_all_table)
            .await?;
        rules.ours.extend(strict.ours);
        rules.foreign.extend(strict.foreign);
        debug!(
            iface,
            table = ids.table,
            link = link.is_some(),
            routes = routes.len(),
            catch_alls = catch_alls.len(),
            rules = rules.ours.len(),
            foreign_rules = rules.foreign.len(),
            "observed routing"
        );
        Ok(ObservedRouting {
            state: ObservedState {
                link,
                device: None,
                routes,
                catch_alls,
                rules: rules.ours,
            },
            foreign_rules: rules.foreign,
        })
    }

    /// Carries out one link, address, route, catch-all or rule step of a
    /// plan, in wireseal's tables (`ids`); `links` keeps the link indexes
    /// resolved so far, so that 5,000 routes through one link cost one
    /// lookup, not 5,000.
    ///
    /// # Errors
    /// The kernel's error; [`Error::LinkNotFound`] when the step's link does
    /// not exist (except when removing an address: a link that is gone took
    /// its addresses along); [`Error::NotANetlinkStep`] for the steps that
    /// are the datapath's (creating the link, changing the device).
    pub async fn apply_step(
        &self,
        ids: RoutingIds,
        step: &Step,
        links: &mut LinkIndexes,
    ) -> Result<(), Error> {
        let table = ids.table;
        match step {
            Step::RemoveRule(rule) => self.delete_rule(rule).await,
            Step::AddCatchAll(all) => self.replace_catch_all(all, ids.catch_all_table).await,
            Step::RemoveCatchAll(dst) => self.delete_route(*dst, ids.catch_all_table).await,
            Step::AddRule(rule) => self.add_rule(rule).await,
            Step::SetMtu { link, mtu } => self.set_mtu(link, *mtu).await,
            Step::AddAddress { link, address } => {
                let index = links.resolve(self, link).await?;
                self.add_address_on(link, index, *address).await
            }
            Step::RemoveAddress { link, address } => match links.resolve(self, link).await {
                Ok(index) => self.delete_address_on(link, index, *address).await,
                Err(Error::LinkNotFound { .. }) => Ok(()),
                Err(err) => Err(err),
            },
            Step::ReplaceRoute(route) => {
                let index = links.resolve(self, &route.dev).await?;
                let result = self.replace_route_via(route, index, table).await;
                if result.is_err() {
                    // The link may have been replaced under the same name.
                    links.forget(&route.dev);
                }
                result
            }
            Step::RemoveRoute(dst) => self.delete_route(*dst, table).await,
            Step::CreateLink(_) | Step::Device(_) => Err(Error::NotANetlinkStep {
                step: step.to_string(),
            }),
        }
    }
}

/// Link indexes by name, resolved once and reused while one plan is carried
/// out. Start a new one (or [`LinkIndexes::clear`] it) for every pass: a link
/// deleted and created again gets a new index.
#[derive(Debug, Default)]
pub struct LinkIndexes {
    /// A failed lookup is kept as its error's errno (`None`: no such link),
    /// so that every step through that link reports it without asking again.
    known: BTreeMap<String, Result<u32, Option<Errno>>>,
}

impl LinkIndexes {
    /// Forgets every index.
    pub fn clear(&mut self) {
        self.known.clear();
    }

    fn forget(&mut self, iface: &str) {
        self.known.remove(iface);
    }

    async fn resolve(&mut self, netlink: &Netlink, iface: &str) -> Result<u32, Error> {
        let found = match self.known.get(iface) {
            Some(found) => *found,
            None => {
                let found = match netlink.link(iface).await {
                    Ok(Some(link)) => Ok(link.index),
                    Ok(None) => Err(None),
                    Err(err) => Err(err.errno()),
                };
                self.known.insert(iface.to_owned(), found);
                found
            }
        };
        found.map_err(|errno| unresolved(iface, errno))
    }
}

/// The error of a step whose link could not be resolved: the lookup's
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

//! Coarse change notifications: "a link, address, route or rule changed".
//! The agent debounces them and re-runs its level-triggered reconcile, which
//! is how a route or rule someone else deleted comes back, and how the routes'
//! preferred source follows the addresses the CNI adds and removes.

use std::net::IpAddr;

use futures::StreamExt as _;
use futures::channel::mpsc::UnboundedReceiver;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::SocketAddr;
use rtnetlink::MulticastGroup;
use tokio::task::JoinHandle;
use tracing::trace;

use crate::address::parse_address;
use crate::error::Error;
use crate::route::route_table;

/// What kind of object changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Change {
    /// A link appeared, changed or disappeared (`RTM_NEWLINK`/`RTM_DELLINK`).
    Link {
        /// Its index.
        index: u32,
    },
    /// A route was added, changed or removed.
    Route {
        /// The table it is in, so the agent can ignore churn in other tables.
        table: u32,
    },
    /// A policy rule was added or removed.
    Rule,
    /// An address was added to or removed from an interface
    /// (`RTM_NEWADDR`/`RTM_DELADDR`).
    Address {
        /// The interface's index.
        index: u32,
        /// The address, when the message carries one.
        address: Option<IpAddr>,
    },
}

/// A subscription to the kernel's link, address, route and rule multicast
/// groups (`RTNLGRP_LINK`, `RTNLGRP_IPV{4,6}_IFADDR`, `RTNLGRP_IPV{4,6}_ROUTE`,
/// `RTNLGRP_IPV{4,6}_RULE`) of the network namespace it was opened in.
#[derive(Debug)]
pub struct Monitor {
    messages: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
    task: JoinHandle<()>,
}

impl Monitor {
    /// Subscribes. Changes made after this returns are reported.
    ///
    /// # Errors
    /// [`Error::Socket`] when the socket cannot be opened or joined to the groups.
    ///
    /// # Panics
    /// When called outside a tokio runtime (it spawns a task).
    pub fn subscribe() -> Result<Self, Error> {
        let groups = [
            MulticastGroup::Link,
            MulticastGroup::Ipv4Ifaddr,
            MulticastGroup::Ipv6Ifaddr,
            MulticastGroup::Ipv4Route,
            MulticastGroup::Ipv6Route,
            MulticastGroup::Ipv4Rule,
            MulticastGroup::Ipv6Rule,
        ];
        let (connection, _handle, messages) =
            rtnetlink::new_multicast_connection(&groups).map_err(Error::Socket)?;
        let task = tokio::spawn(connection);
        Ok(Self { messages, task })
    }

    /// The next change, or `None` when the subscription has ended (the
    /// connection task stopped). Messages that are not about links, addresses,
    /// routes or rules are skipped.
    pub async fn next(&mut self) -> Option<Change> {
        while let Some((message, _)) = self.messages.next().await {
            if let Some(change) = classify(&message) {
                trace!(?change, "netlink change");
                return Some(change);
            }
        }
        None
    }

    /// A change already received, without waiting; `None` when there is none
    /// queued. Lets a debouncer drain a burst.
    pub fn try_next(&mut self) -> Option<Change> {
        while let Ok((message, _)) = self.messages.try_recv() {
            if let Some(change) = classify(&message) {
                return Some(change);
            }
        }
        None
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn classify(message: &NetlinkMessage<RouteNetlinkMessage>) -> Option<Change> {
    let NetlinkPayload::InnerMessage(inner) = &message.payload else {
        return None;
    };
    match inner {
        RouteNetlinkMessage::NewLink(link) | RouteNetlinkMessage::DelLink(link) => {
            Some(Change::Link {
                index: link.header.index,
            })
        }
        RouteNetlinkMessage::NewRoute(route) | RouteNetlinkMessage::DelRoute(route) => {
            Some(Change::Route {
                table: route_table(route),
            })
        }
        RouteNetlinkMessage::NewRule(_) | RouteNetlinkMessage::DelRule(_) => Some(Change::Rule),
        RouteNetlinkMessage::NewAddress(address) | RouteNetlinkMessage::DelAddress(address) => {
            Some(Change::Address {
                index: address.header.index,
                address: parse_address(address).map(|info| info.address),
            })
        }
        _ => None,
    }
}

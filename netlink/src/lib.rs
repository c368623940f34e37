//! wireseal's netlink crate: the only code in wireseal that talks netlink.
//!
//! It programs what both datapaths share — the tunnel link's MTU, state and
//! addresses, the routes in wireseal's own routing table and one policy rule
//! per address family —, lists the node's addresses (the routes' preferred
//! source comes from them, and goes on the tunnel link too), applies a [`wireseal_core::RoutingPlan`] in the order documented in
//! [`wireseal_core::plan`](mod@wireseal_core::plan), reads the same objects back into the routing part of
//! an [`wireseal_core::ObservedState`], reports kernel changes to them, finds
//! the underlay MTU towards a peer, and drives kernel WireGuard devices over
//! generic netlink.
//!
//! Every write is idempotent: `EEXIST` on an add and `ENOENT`/`ESRCH` (for an
//! address `EADDRNOTAVAIL`) on a delete count as success, so a retried or
//! concurrent apply converges.
//! Every request on one [`Netlink`] handle is serialised, because the kernel
//! tracks only one dump per socket and rejects a second with `EBUSY`.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod address;
mod apply;
mod conn;
mod error;
mod link;
mod monitor;
mod mtu;
mod route;
mod rule;
pub mod wireguard;

pub use address::{AddressInfo, is_link_local};
pub use apply::{ApplyError, ApplyFailure, ApplyItem, ObservedRouting, RoutingIds};
pub use conn::Netlink;
pub use error::{Errno, Error, Op};
pub use link::{LinkInfo, WIREGUARD_KIND};
pub use monitor::{Change, Monitor};
pub use mtu::UnderlayPath;
pub use rule::{ForeignRule, ObservedRules};
pub use wireguard::WireGuard;

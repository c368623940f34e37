//! wireseal's netlink crate: the only code in wireseal that talks netlink.
//!
//! It programs what both datapaths share — the tunnel link's MTU, state and
//! addresses, the routes in wireseal's own routing table and one policy rule
//! per address family —, one plan [`wireseal_core::Step`] at a time
//! ([`Netlink::apply_step`]), lists the node's addresses (the routes'
//! preferred source comes from them, and goes on the tunnel link too), reads
//! the same objects back into the routing part of an
//! [`wireseal_core::ObservedState`], reports kernel changes to them, and finds
//! the underlay MTU towards a peer. [`wireguard`] holds the WireGuard device's
//! two protocols side by side: generic netlink for kernel WireGuard (and its
//! connection), and the UAPI text the userspace datapath speaks.
//! [`nftables`] keeps the leak counter: an `nftables` table of wireseal's own
//! that counts pod packets leaving for other nodes outside the tunnel.
//!
//! Every write is idempotent: `EEXIST` on an add and `ENOENT`/`ESRCH` (for an
//! address `EADDRNOTAVAIL`) on a delete count as success, so a retried or
//! concurrent apply converges.
//! Every request on one [`Netlink`] handle is serialised, because the kernel
//! tracks only one dump per socket and rejects a second with `EBUSY`.
#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod address;
mod apply;
mod conn;
mod error;
mod family;
// The decoders of kernel replies for the fuzz targets (fuzz/); not an API.
#[doc(hidden)]
pub mod fuzzing;
mod link;
mod monitor;
mod mtu;
pub mod nftables;
mod route;
mod rule;
pub mod wireguard;
pub mod xfrm;

pub use address::{AddressInfo, is_link_local};
pub use apply::{LinkIndexes, ObservedRouting, RoutingIds};
pub use conn::Netlink;
pub use error::{Errno, Error, Op};
pub use link::{LinkInfo, WIREGUARD_KIND, XFRM_KIND};
pub use monitor::{Change, Monitor};
pub use mtu::UnderlayPath;
pub use rule::{ForeignRule, ObservedRules};
pub use wireguard::WireGuard;

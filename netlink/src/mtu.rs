//! Underlay MTU: which MTU the kernel would use to send to a peer's endpoint.
//! The agent derives the tunnel MTU from it (`wireseal_core::state::tunnel_mtu`).

use std::net::IpAddr;

use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::route::{RouteAttribute, RouteMessage};
use tracing::debug;
use wireseal_core::Family;

use crate::conn::Netlink;
use crate::error::{Error, Op};
use crate::family::{address_family, route_address};
use crate::route::{parse_route, route_table};

/// The main routing table (`RT_TABLE_MAIN`).
const MAIN_TABLE: u32 = 254;

/// The path the kernel picks towards a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnderlayPath {
    /// Output interface index.
    pub oif: u32,
    /// Output interface name.
    pub dev: String,
    /// The MTU that applies: the route's MTU when it sets one, else the device's.
    pub mtu: u32,
}

impl Netlink {
    /// Asks the kernel (`RTM_GETROUTE` for the address, as `ip route get`)
    /// which route and device a packet to `dst` takes, and returns the route's
    /// MTU if it sets one, else the device's MTU. Pass wireseal's fwmark, which
    /// its encrypted packets carry, so the lookup follows the same policy
    /// rules they do.
    ///
    /// # Errors
    /// [`Error::NoRoute`] when the kernel has no route (`ENETUNREACH`,
    /// `EHOSTUNREACH`), or the kernel's error.
    pub async fn underlay_path(
        &self,
        dst: IpAddr,
        fwmark: Option<u32>,
    ) -> Result<UnderlayPath, Error> {
        let op = Op::GetRoute { dst };
        let mut request = RouteMessage::default();
        request.header.address_family = address_family(Family::of_ip(dst));
        request.header.destination_prefix_length = if dst.is_ipv4() { 32 } else { 128 };
        request
            .attributes
            .push(RouteAttribute::Destination(route_address(dst)));
        if let Some(mark) = fwmark {
            request.attributes.push(RouteAttribute::Mark(mark));
        }
        let reply = match self.get(&op, RouteNetlinkMessage::GetRoute(request)).await {
            Ok(reply) => reply,
            Err(err)
                if matches!(
                    err.errno().map(|errno| errno.raw()),
                    Some(libc::ENETUNREACH | libc::EHOSTUNREACH)
                ) =>
            {
                return Err(Error::NoRoute { dst });
            }
            Err(err) => return Err(err),
        };
        let RouteNetlinkMessage::NewRoute(message) = reply else {
            return Err(Error::UnexpectedReply { op });
        };
        let parsed =
            parse_route(&message).ok_or_else(|| Error::UnexpectedReply { op: op.clone() })?;
        let oif = parsed.oif.ok_or(Error::NoRoute { dst })?;
        self.path_via(dst, oif, parsed.mtu).await
    }

    /// [`Self::underlay_path`]'s MTU.
    ///
    /// # Errors
    /// As [`Self::underlay_path`].
    pub async fn underlay_mtu(&self, dst: IpAddr, fwmark: Option<u32>) -> Result<u32, Error> {
        Ok(self.underlay_path(dst, fwmark).await?.mtu)
    }

    /// The path of the main table's default route for `family` (the one with
    /// the lowest metric): its MTU if it sets one, else its device's.
    ///
    /// # Errors
    /// [`Error::NoRoute`] when the main table has no default route with an
    /// output device, or the kernel's error.
    pub async fn default_route_path(&self, family: Family) -> Result<UnderlayPath, Error> {
        let unspecified = match family {
            Family::V4 => IpAddr::from([0u8; 4]),
            Family::V6 => IpAddr::from([0u8; 16]),
        };
        let op = Op::DumpRoutes { family };
        let mut request = RouteMessage::default();
        request.header.address_family = address_family(family);
        let replies = self
            .dump(&op, &RouteNetlinkMessage::GetRoute(request))
            .await?;
        let best = replies
            .iter()
            .filter_map(|reply| match reply {
                RouteNetlinkMessage::NewRoute(message) if route_table(message) == MAIN_TABLE => {
                    let mut route = parse_route(message)?;
                    // A multipath default has its devices in the next hops;
                    // the first one stands for all (they normally share an MTU).
                    route.oif = route.oif.or_else(|| first_hop_oif(message));
                    Some(route)
                }
                _ => None,
            })
            .filter(|route| route.dst.prefix() == 0 && route.oif.is_some())
            .min_by_key(|route| route.priority);
        let Some(route) = best else {
            return Err(Error::NoRoute { dst: unspecified });
        };
        let oif = route.oif.ok_or(Error::NoRoute { dst: unspecified })?;
        self.path_via(unspecified, oif, route.mtu).await
    }

    async fn path_via(
        &self,
        dst: IpAddr,
        oif: u32,
        route_mtu: Option<u32>,
    ) -> Result<UnderlayPath, Error> {
        let link = self
            .link_by_index(oif)
            .await?
            .ok_or(Error::NoRoute { dst })?;
        let mtu = route_mtu.filter(|mtu| *mtu != 0).unwrap_or(link.mtu);
        debug!(%dst, dev = %link.name, route_mtu = ?route_mtu, device_mtu = link.mtu, mtu, "underlay path");
        Ok(UnderlayPath {
            oif,
            dev: link.name,
            mtu,
        })
    }
}

fn first_hop_oif(message: &RouteMessage) -> Option<u32> {
    message
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            RouteAttribute::MultiPath(hops) => hops.first().map(|hop| hop.interface_index),
            _ => None,
        })
}

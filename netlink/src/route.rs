//! Routes in wireseal's own table: observe, add-or-replace, delete.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteMetric, RouteProtocol,
    RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use wireseal_core::{CatchAll, CatchAllKind, Family, RouteSpec};

use crate::conn::Netlink;
use crate::error::{Errno, Error, Op};
use crate::family::{address_family, header_table, route_address};

impl Netlink {
    /// Every route in `table`, IPv4 and IPv6, by destination, with the output
    /// device's name resolved from its index, the MTU from `RTAX_MTU` (0 when
    /// the route sets none) and the preferred source from `RTA_PREFSRC`.
    ///
    /// A route without an output device (blackhole, unreachable, multipath)
    /// is reported with an empty `dev`, so a plan never mistakes it for one of
    /// wireseal's and replaces it.
    ///
    /// # Errors
    /// The kernel's error for the link or route dumps.
    pub async fn routes(&self, table: u32) -> Result<BTreeMap<IpNetwork, RouteSpec>, Error> {
        let links = self.links().await?;
        let mut routes = BTreeMap::new();
        for parsed in self.dump_table(table).await? {
            let dev = parsed
                .oif
                .and_then(|index| links.get(&index))
                .map(|link| link.name.clone())
                .unwrap_or_default();
            routes.insert(
                parsed.dst,
                RouteSpec {
                    dst: parsed.dst,
                    dev,
                    mtu: parsed.mtu.unwrap_or(0),
                    src: parsed.prefsrc,
                },
            );
        }
        Ok(routes)
    }

    /// Every route in the catch-all `table`, by destination: blackholes and
    /// throws as such, anything else as [`CatchAllKind::Other`] (never one
    /// wireseal wrote there).
    ///
    /// # Errors
    /// The kernel's error for the route dumps.
    pub async fn catch_alls(&self, table: u32) -> Result<BTreeMap<IpNetwork, CatchAll>, Error> {
        Ok(self
            .dump_table(table)
            .await?
            .into_iter()
            .map(|parsed| {
                let kind = match parsed.kind {
                    RouteType::BlackHole => CatchAllKind::Blackhole,
                    RouteType::Throw => CatchAllKind::Throw,
                    _ => CatchAllKind::Other,
                };
                (
                    parsed.dst,
                    CatchAll {
                        dst: parsed.dst,
                        kind,
                    },
                )
            })
            .collect())
    }

    /// The routes of `table`, both families.
    async fn dump_table(&self, table: u32) -> Result<Vec<ParsedRoute>, Error> {
        let mut out = Vec::new();
        for family in [Family::V4, Family::V6] {
            let op = Op::DumpRoutes { family };
            let mut request = RouteMessage::default();
            request.header.address_family = address_family(family);
            let replies = self
                .dump(&op, &RouteNetlinkMessage::GetRoute(request))
                .await?;
            for reply in replies {
                let RouteNetlinkMessage::NewRoute(message) = reply else {
                    continue;
                };
                if route_table(&message) != table {
                    continue;
                }
                out.extend(parse_route(&message));
            }
        }
        Ok(out)
    }

    /// Adds `catch_all` to `table`, or replaces the route with the same
    /// destination in one write: a blackhole becoming a throw (or back)
    /// never leaves the destination without one.
    ///
    /// # Errors
    /// The kernel's error (an `EEXIST` is success).
    pub async fn replace_catch_all(&self, catch_all: &CatchAll, table: u32) -> Result<(), Error> {
        let op = Op::ReplaceCatchAll {
            dst: catch_all.dst,
            kind: catch_all.kind.to_string(),
            table,
        };
        match self
            .write(
                &op,
                RouteNetlinkMessage::NewRoute(catch_all_message(catch_all, table)),
                NLM_F_CREATE | NLM_F_REPLACE,
            )
            .await
        {
            Err(err) if err.errno() == Some(Errno(libc::EEXIST)) => Ok(()),
            other => other,
        }
    }

    /// Adds `route` to `table`, or replaces the route with the same destination
    /// (`NLM_F_REPLACE`), so a changed MTU, device or preferred source takes
    /// effect in one write, without a moment with no route.
    ///
    /// # Errors
    /// [`Error::LinkNotFound`] when `route.dev` does not exist, or the kernel's
    /// error (an `EEXIST` is success; `EINVAL` when `route.src` is not an
    /// address of this node, e.g. one deleted since it was read).
    pub async fn replace_route(&self, route: &RouteSpec, table: u32) -> Result<(), Error> {
        let index = self.index_of(&route.dev).await?;
        self.replace_route_via(route, index, table).await
    }

    /// [`Self::replace_route`] with the output device's index already known.
    pub(crate) async fn replace_route_via(
        &self,
        route: &RouteSpec,
        oif: u32,
        table: u32,
    ) -> Result<(), Error> {
        let op = Op::ReplaceRoute {
            dst: route.dst,
            iface: route.dev.clone(),
            src: route.src,
            table,
        };
        let message = replace_message(route, oif, table);
        match self
            .write(
                &op,
                RouteNetlinkMessage::NewRoute(message),
                NLM_F_CREATE | NLM_F_REPLACE,
            )
            .await
        {
            Err(err) if err.errno() == Some(Errno(libc::EEXIST)) => Ok(()),
            other => other,
        }
    }

    /// Deletes the route to `dst` from `table`. A route that is already gone
    /// is success: our view of the table may be stale.
    ///
    /// # Errors
    /// The kernel's error other than `ENOENT`/`ESRCH`.
    pub async fn delete_route(&self, dst: IpNetwork, table: u32) -> Result<(), Error> {
        let op = Op::DeleteRoute { dst, table };
        match self
            .write(
                &op,
                RouteNetlinkMessage::DelRoute(delete_message(dst, table)),
                0,
            )
            .await
        {
            Err(err) if matches!(err.errno(), Some(Errno(libc::ENOENT | libc::ESRCH))) => Ok(()),
            other => other,
        }
    }
}

/// `RTM_NEWROUTE` for `dst dev OIF table T mtu M [src S]` (scope link, unicast).
pub(crate) fn replace_message(route: &RouteSpec, oif: u32, table: u32) -> RouteMessage {
    let mut message = RouteMessage::default();
    message.header = RouteHeader {
        address_family: address_family(Family::of(&route.dst)),
        destination_prefix_length: route.dst.prefix(),
        table: header_table(table),
        protocol: RouteProtocol::Static,
        scope: RouteScope::Link,
        kind: RouteType::Unicast,
        ..RouteHeader::default()
    };
    message.attributes = vec![
        RouteAttribute::Table(table),
        RouteAttribute::Destination(route_address(route.dst.network())),
        RouteAttribute::Oif(oif),
    ];
    if let Some(src) = route.src {
        message
            .attributes
            .push(RouteAttribute::PrefSource(route_address(src)));
    }
    if route.mtu != 0 {
        message
            .attributes
            .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(route.mtu)]));
    }
    message
}

/// `RTM_NEWROUTE` for `blackhole|throw dst table T`: no device, so nothing
/// but wireseal removes it. A kind wireseal does not write is never asked for.
pub(crate) fn catch_all_message(catch_all: &CatchAll, table: u32) -> RouteMessage {
    let mut message = RouteMessage::default();
    message.header = RouteHeader {
        address_family: address_family(Family::of(&catch_all.dst)),
        destination_prefix_length: catch_all.dst.prefix(),
        table: header_table(table),
        protocol: RouteProtocol::Static,
        scope: RouteScope::Universe,
        kind: match catch_all.kind {
            CatchAllKind::Throw => RouteType::Throw,
            CatchAllKind::Blackhole | CatchAllKind::Other => RouteType::BlackHole,
        },
        ..RouteHeader::default()
    };
    message.attributes = vec![
        RouteAttribute::Table(table),
        RouteAttribute::Destination(route_address(catch_all.dst.network())),
    ];
    message
}

/// `RTM_DELROUTE` for `dst table T`: scope "nowhere" and type/protocol
/// unspecified match any route with that destination, as `ip route del` does.
fn delete_message(dst: IpNetwork, table: u32) -> RouteMessage {
    let mut message = RouteMessage::default();
    message.header = RouteHeader {
        address_family: address_family(Family::of(&dst)),
        destination_prefix_length: dst.prefix(),
        table: header_table(table),
        scope: RouteScope::NoWhere,
        ..RouteHeader::default()
    };
    message.attributes = vec![
        RouteAttribute::Table(table),
        RouteAttribute::Destination(route_address(dst.network())),
    ];
    message
}

/// The interesting parts of a route message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParsedRoute {
    pub(crate) dst: IpNetwork,
    pub(crate) oif: Option<u32>,
    pub(crate) mtu: Option<u32>,
    pub(crate) prefsrc: Option<IpAddr>,
    pub(crate) priority: u32,
    pub(crate) kind: RouteType,
}

pub(crate) fn parse_route(message: &RouteMessage) -> Option<ParsedRoute> {
    let family = match message.header.address_family {
        AddressFamily::Inet => Family::V4,
        AddressFamily::Inet6 => Family::V6,
        _ => return None,
    };
    let mut dst_ip = match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Family::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let mut parsed = ParsedRoute {
        dst: IpNetwork::from(dst_ip),
        oif: None,
        mtu: None,
        prefsrc: None,
        priority: 0,
        kind: message.header.kind,
    };
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst_ip = IpAddr::V4(*ip),
            RouteAttribute::Destination(RouteAddress::Inet6(ip)) => dst_ip = IpAddr::V6(*ip),
            RouteAttribute::PrefSource(RouteAddress::Inet(ip)) => {
                parsed.prefsrc = Some(IpAddr::V4(*ip));
            }
            RouteAttribute::PrefSource(RouteAddress::Inet6(ip)) => {
                parsed.prefsrc = Some(IpAddr::V6(*ip));
            }
            RouteAttribute::Oif(index) => parsed.oif = Some(*index),
            RouteAttribute::Priority(priority) => parsed.priority = *priority,
            RouteAttribute::Metrics(metrics) => {
                for metric in metrics {
                    if let RouteMetric::Mtu(mtu) = metric {
                        parsed.mtu = Some(*mtu);
                    }
                }
            }
            _ => {}
        }
    }
    parsed.dst = IpNetwork::new(dst_ip, message.header.destination_prefix_length).ok()?;
    Some(parsed)
}

/// The table of a route: `RTA_TABLE` when present (needed above 255), else
/// the header's 8-bit field.
pub(crate) fn route_table(message: &RouteMessage) -> u32 {
    message
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            RouteAttribute::Table(table) => Some(*table),
            _ => None,
        })
        .unwrap_or_else(|| u32::from(message.header.table))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_message_round_trips_through_the_parser() {
        let route = RouteSpec {
            dst: "10.244.1.0/24".parse().unwrap(),
            dev: "wireseal0".into(),
            mtu: 1420,
            src: None,
        };
        let message = replace_message(&route, 7, 51830);
        assert_eq!(message.header.table, 0, "tables above 255 go in RTA_TABLE");
        assert_eq!(route_table(&message), 51830);
        let parsed = parse_route(&message).unwrap();
        assert_eq!(parsed.dst, route.dst);
        assert_eq!(parsed.oif, Some(7));
        assert_eq!(parsed.mtu, Some(1420));
        assert_eq!(parsed.prefsrc, None);

        for src in ["10.244.0.1", "fd00:244::1"] {
            let src: IpAddr = src.parse().unwrap();
            let dst = if src.is_ipv4() {
                "10.244.1.0/24"
            } else {
                "fd00:244:1::/64"
            };
            let route = RouteSpec {
                dst: dst.parse().unwrap(),
                src: Some(src),
                ..route.clone()
            };
            let parsed = parse_route(&replace_message(&route, 7, 51830)).unwrap();
            assert_eq!(parsed.prefsrc, Some(src));
        }
    }

    #[test]
    fn small_tables_use_the_header_field_too() {
        let dst: IpNetwork = "fd00:1::/64".parse().unwrap();
        let message = delete_message(dst, 200);
        assert_eq!(message.header.table, 200);
        assert_eq!(message.header.address_family, AddressFamily::Inet6);
        assert_eq!(parse_route(&message).unwrap().dst, dst);
    }
}

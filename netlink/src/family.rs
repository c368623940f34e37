//! The small conversions every message builder shares: address families
//! and table numbers as netlink wants them.

use std::net::IpAddr;

use netlink_packet_route::AddressFamily;
use netlink_packet_route::route::RouteAddress;
use wireseal_core::Family;

/// The 8-bit header table field: the table itself when it fits, else
/// `RT_TABLE_UNSPEC` with the real id in the `RTA_TABLE`/`FRA_TABLE` attribute.
pub(crate) fn header_table(table: u32) -> u8 {
    u8::try_from(table).unwrap_or(0)
}

pub(crate) fn address_family(family: Family) -> AddressFamily {
    match family {
        Family::V4 => AddressFamily::Inet,
        Family::V6 => AddressFamily::Inet6,
    }
}

pub(crate) fn route_address(ip: IpAddr) -> RouteAddress {
    RouteAddress::from(ip)
}

//! Addresses on the node's interfaces. The agent picks the preferred source
//! of its routes into the tunnel among them: an address inside the node's own
//! pod CIDRs, which the CNI puts on its bridge, gateway or tunnel device.

use std::net::IpAddr;

use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use wireseal_core::Family;

use crate::conn::Netlink;
use crate::error::{Error, Op};
use crate::route::address_family;

/// One address on one of the node's interfaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AddressInfo {
    /// The interface's index.
    pub index: u32,
    /// The local address (`IFA_LOCAL`, else `IFA_ADDRESS`: on a
    /// point-to-point link `IFA_ADDRESS` is the other end's).
    pub address: IpAddr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// False while an IPv6 address is in duplicate address detection, or
    /// after DAD failed: the kernel does not use it as a source and refuses
    /// it as a route's preferred source (`EINVAL`).
    pub usable: bool,
}

impl Netlink {
    /// Every address on every interface, IPv4 then IPv6, in the kernel's order.
    ///
    /// # Errors
    /// The kernel's error for the address dumps.
    pub async fn addresses(&self) -> Result<Vec<AddressInfo>, Error> {
        let mut addresses = Vec::new();
        for family in [Family::V4, Family::V6] {
            let op = Op::DumpAddresses { family };
            let mut request = AddressMessage::default();
            request.header.family = address_family(family);
            let replies = self
                .dump(&op, &RouteNetlinkMessage::GetAddress(request))
                .await?;
            addresses.extend(replies.iter().filter_map(|reply| match reply {
                // A dump of one family may still carry others on old kernels.
                RouteNetlinkMessage::NewAddress(message)
                    if message.header.family == address_family(family) =>
                {
                    parse_address(message)
                }
                _ => None,
            }));
        }
        Ok(addresses)
    }
}

pub(crate) fn parse_address(message: &AddressMessage) -> Option<AddressInfo> {
    let mut local = None;
    let mut address = None;
    let header = message.header.flags;
    let mut dad_failed = header.contains(AddressHeaderFlags::Dadfailed);
    let mut tentative = header.contains(AddressHeaderFlags::Tentative)
        && !header.contains(AddressHeaderFlags::Optimistic);
    for attribute in &message.attributes {
        match attribute {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            // IFA_FLAGS carries all 32 bits and wins over the header's 8.
            AddressAttribute::Flags(flags) => {
                dad_failed = flags.contains(AddressFlags::Dadfailed);
                // Optimistic DAD lets the address be used while it runs.
                tentative = flags.contains(AddressFlags::Tentative)
                    && !flags.contains(AddressFlags::Optimistic);
            }
            _ => {}
        }
    }
    Some(AddressInfo {
        index: message.header.index,
        address: local.or(address)?,
        prefix_len: message.header.prefix_len,
        usable: !dad_failed && !tentative,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(attributes: Vec<AddressAttribute>) -> AddressMessage {
        let mut message = AddressMessage::default();
        message.header.index = 4;
        message.header.prefix_len = 24;
        message.attributes = attributes;
        message
    }

    #[test]
    fn the_local_address_wins_over_the_peer_of_a_point_to_point_link() {
        let local: IpAddr = "10.244.0.1".parse().unwrap();
        let peer: IpAddr = "10.244.9.9".parse().unwrap();
        let parsed = parse_address(&message(vec![
            AddressAttribute::Address(peer),
            AddressAttribute::Local(local),
        ]))
        .unwrap();
        assert_eq!(parsed.address, local);
        assert_eq!((parsed.index, parsed.prefix_len), (4, 24));
        assert!(parsed.usable);
        let only = parse_address(&message(vec![AddressAttribute::Address(peer)])).unwrap();
        assert_eq!(only.address, peer);
        assert!(parse_address(&message(vec![])).is_none());
    }

    #[test]
    fn tentative_and_failed_addresses_are_not_usable() {
        let ip: IpAddr = "fd00:244::1".parse().unwrap();
        let with = |flags| {
            parse_address(&message(vec![
                AddressAttribute::Address(ip),
                AddressAttribute::Flags(flags),
            ]))
            .unwrap()
            .usable
        };
        assert!(with(AddressFlags::Permanent));
        assert!(!with(AddressFlags::Tentative));
        assert!(with(AddressFlags::Tentative | AddressFlags::Optimistic));
        assert!(!with(AddressFlags::Dadfailed | AddressFlags::Tentative));
        let mut header_only = message(vec![AddressAttribute::Address(ip)]);
        header_only.header.flags = AddressHeaderFlags::Tentative;
        assert!(!parse_address(&header_only).unwrap().usable);
    }
}

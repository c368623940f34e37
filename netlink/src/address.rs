//! Addresses on the node's interfaces. The agent picks the preferred source
//! of its routes into the tunnel among them: an address inside the node's own
//! pod CIDRs, which the CNI puts on its bridge, gateway or tunnel device. It
//! then puts a copy of that source on the tunnel link, and removes stale ones.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use wireseal_core::Family;

use crate::conn::Netlink;
use crate::error::{Errno, Error, Op};
use crate::family::address_family;

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

    /// The addresses on the link with index `index`, as [`Self::addresses`]
    /// lists them.
    ///
    /// # Errors
    /// The kernel's error for the address dumps.
    pub async fn addresses_of(&self, index: u32) -> Result<Vec<AddressInfo>, Error> {
        let mut addresses = self.addresses().await?;
        addresses.retain(|address| address.index == index);
        Ok(addresses)
    }

    /// Adds `address` (with its prefix length) to link `iface`, scope global.
    /// An IPv6 address is added without duplicate address detection (usable
    /// at once; nothing else may hold it on a tunnel) and without a prefix
    /// route. The address already there with that prefix length is success.
    ///
    /// # Errors
    /// [`Error::LinkNotFound`], or the kernel's error.
    pub async fn add_address(&self, iface: &str, address: IpNetwork) -> Result<(), Error> {
        let index = self.index_of(iface).await?;
        self.add_address_on(iface, index, address).await
    }

    /// [`Self::add_address`] with the link's index already known.
    pub(crate) async fn add_address_on(
        &self,
        iface: &str,
        index: u32,
        address: IpNetwork,
    ) -> Result<(), Error> {
        let op = Op::AddAddress {
            iface: iface.to_owned(),
            address,
        };
        let mut message = address_message(index, address);
        if address.is_ipv6() {
            message.attributes.push(AddressAttribute::Flags(
                AddressFlags::Nodad | AddressFlags::Noprefixroute,
            ));
        }
        match self
            .write(
                &op,
                RouteNetlinkMessage::NewAddress(message),
                NLM_F_CREATE | NLM_F_EXCL,
            )
            .await
        {
            Err(err) if err.errno() == Some(Errno(libc::EEXIST)) => Ok(()),
            Err(err) if err.errno() == Some(Errno(libc::ENODEV)) => Err(Error::LinkNotFound {
                iface: iface.to_owned(),
            }),
            other => other,
        }
    }

    /// Deletes `address` (matching its prefix length too) from link `iface`.
    /// An address that is not there is success, and so is a link that is
    /// gone: its addresses went with it.
    ///
    /// # Errors
    /// The kernel's error other than `EADDRNOTAVAIL` and `ENODEV`.
    pub async fn delete_address(&self, iface: &str, address: IpNetwork) -> Result<(), Error> {
        let Some(link) = self.link(iface).await? else {
            return Ok(());
        };
        self.delete_address_on(iface, link.index, address).await
    }

    /// [`Self::delete_address`] with the link's index already known.
    pub(crate) async fn delete_address_on(
        &self,
        iface: &str,
        index: u32,
        address: IpNetwork,
    ) -> Result<(), Error> {
        let op = Op::DeleteAddress {
            iface: iface.to_owned(),
            address,
        };
        let message = address_message(index, address);
        match self
            .write(&op, RouteNetlinkMessage::DelAddress(message), 0)
            .await
        {
            Err(err) if matches!(err.errno(), Some(Errno(libc::EADDRNOTAVAIL | libc::ENODEV))) => {
                Ok(())
            }
            other => other,
        }
    }
}

/// IPv4 169.254.0.0/16 and IPv6 fe80::/10: addresses the kernel or a link's
/// autoconfiguration assigns, never a host source, and never wireseal's.
#[must_use]
pub fn is_link_local(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    }
}

/// `RTM_NEWADDR`/`RTM_DELADDR` for `address` on link `index`, as `ip addr`
/// sends it: `IFA_LOCAL` and `IFA_ADDRESS` both the address (no peer), so a
/// delete matches the prefix length too.
pub(crate) fn address_message(index: u32, address: IpNetwork) -> AddressMessage {
    let family = match address {
        IpNetwork::V4(_) => Family::V4,
        IpNetwork::V6(_) => Family::V6,
    };
    let mut message = AddressMessage::default();
    message.header.family = address_family(family);
    message.header.prefix_len = address.prefix();
    message.header.index = index;
    message.attributes = vec![
        AddressAttribute::Local(address.ip()),
        AddressAttribute::Address(address.ip()),
    ];
    message
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
    fn address_messages_round_trip_through_the_parser() {
        for text in ["10.244.0.1/32", "fd00:244::1/128", "10.244.0.1/24"] {
            let address: IpNetwork = text.parse().unwrap();
            let message = address_message(7, address);
            let parsed = parse_address(&message).unwrap();
            assert_eq!(
                (parsed.index, parsed.address, parsed.prefix_len),
                (7, address.ip(), address.prefix())
            );
        }
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

//! Links: find by name or index, set MTU and up, delete, create a kernel
//! WireGuard link or an XFRM interface. TUN devices are never created here: the userspace datapath
//! process owns its TUN.

use std::collections::BTreeMap;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoXfrm, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage,
};
use tracing::info;

use crate::conn::Netlink;
use crate::error::{Errno, Error, Op, check_name};

/// The link kind of kernel WireGuard interfaces.
pub const WIREGUARD_KIND: &str = "wireguard";
/// The kernel's link kind of an XFRM interface.
pub const XFRM_KIND: &str = "xfrm";

/// A link as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// MTU.
    pub mtu: u32,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// `IFLA_INFO_KIND` (`wireguard`, `veth`, `tun` …); `None` for links
    /// without one, such as physical NICs and loopback.
    pub kind: Option<String>,
}

impl Netlink {
    /// Finds a link by name; `Ok(None)` when it does not exist.
    ///
    /// # Errors
    /// [`Error::InvalidName`], or the kernel's error other than "no such device".
    pub async fn link(&self, iface: &str) -> Result<Option<LinkInfo>, Error> {
        check_name(iface)?;
        let op = Op::GetLink {
            iface: iface.to_owned(),
        };
        let mut message = LinkMessage::default();
        message
            .attributes
            .push(LinkAttribute::IfName(iface.to_owned()));
        match self.get(&op, RouteNetlinkMessage::GetLink(message)).await {
            Ok(reply) => parse_reply(&op, reply).map(Some),
            Err(err) if is_no_device(&err) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Finds a link by index; `Ok(None)` when it does not exist.
    ///
    /// # Errors
    /// The kernel's error other than "no such device".
    pub async fn link_by_index(&self, index: u32) -> Result<Option<LinkInfo>, Error> {
        let op = Op::GetLinkByIndex { index };
        let mut message = LinkMessage::default();
        message.header.index = index;
        match self.get(&op, RouteNetlinkMessage::GetLink(message)).await {
            Ok(reply) => parse_reply(&op, reply).map(Some),
            Err(err) if is_no_device(&err) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// All links, by index.
    ///
    /// # Errors
    /// The kernel's error for the dump.
    pub async fn links(&self) -> Result<BTreeMap<u32, LinkInfo>, Error> {
        let op = Op::DumpLinks;
        let replies = self
            .dump(&op, &RouteNetlinkMessage::GetLink(LinkMessage::default()))
            .await?;
        let mut links = BTreeMap::new();
        for reply in replies {
            if let RouteNetlinkMessage::NewLink(message) = reply {
                let link = parse_link(&message);
                links.insert(link.index, link);
            }
        }
        Ok(links)
    }

    /// Sets a link's MTU.
    ///
    /// # Errors
    /// [`Error::LinkNotFound`], or the kernel's error (e.g. `EINVAL` for an MTU
    /// outside the device's range).
    pub async fn set_mtu(&self, iface: &str, mtu: u32) -> Result<(), Error> {
        check_name(iface)?;
        let op = Op::SetMtu {
            iface: iface.to_owned(),
            mtu,
        };
        let mut message = LinkMessage::default();
        message
            .attributes
            .push(LinkAttribute::IfName(iface.to_owned()));
        message.attributes.push(LinkAttribute::Mtu(mtu));
        self.write(&op, RouteNetlinkMessage::SetLink(message), 0)
            .await
            .map_err(|err| not_found_as(err, iface))
    }

    /// Sets a link administratively up. Setting an up link up again is a no-op
    /// for the kernel, but still one write.
    ///
    /// # Errors
    /// [`Error::LinkNotFound`], or the kernel's error.
    pub async fn set_up(&self, iface: &str) -> Result<(), Error> {
        check_name(iface)?;
        let op = Op::SetUp {
            iface: iface.to_owned(),
        };
        let mut message = LinkMessage::default();
        message.header.flags = LinkFlags::Up;
        message.header.change_mask = LinkFlags::Up;
        message
            .attributes
            .push(LinkAttribute::IfName(iface.to_owned()));
        self.write(&op, RouteNetlinkMessage::SetLink(message), 0)
            .await
            .map_err(|err| not_found_as(err, iface))
    }

    /// Sets a link up unless it already is: reads first, so a reconcile that
    /// finds the link up writes nothing. Returns whether it wrote.
    ///
    /// # Errors
    /// [`Error::LinkNotFound`], or the kernel's error.
    pub async fn ensure_up(&self, iface: &str) -> Result<bool, Error> {
        let link = self.link(iface).await?.ok_or_else(|| Error::LinkNotFound {
            iface: iface.to_owned(),
        })?;
        if link.up {
            return Ok(false);
        }
        self.set_up(iface).await?;
        Ok(true)
    }

    /// Deletes a link by name (cleanup). A missing link is success.
    ///
    /// # Errors
    /// The kernel's error other than "no such device".
    pub async fn delete_link(&self, iface: &str) -> Result<(), Error> {
        check_name(iface)?;
        let op = Op::DeleteLink {
            iface: iface.to_owned(),
        };
        let mut message = LinkMessage::default();
        message
            .attributes
            .push(LinkAttribute::IfName(iface.to_owned()));
        match self
            .write(&op, RouteNetlinkMessage::DelLink(message), 0)
            .await
        {
            Err(err) if is_no_device(&err) => Ok(()),
            other => other,
        }
    }

    /// Creates a kernel WireGuard link. An existing `wireguard` link of that
    /// name is adopted (success, nothing changed).
    ///
    /// # Errors
    /// [`Error::WireGuardUnsupported`] when this kernel cannot create WireGuard
    /// links — the one error on which `--datapath auto` falls back to
    /// userspace; [`Error::WrongLinkKind`] when the name is taken by another
    /// kind of link; otherwise the kernel's error.
    pub async fn create_wireguard(&self, iface: &str) -> Result<(), Error> {
        let result = self
            .create_link(
                iface,
                WIREGUARD_KIND,
                vec![NlLinkInfo::Kind(InfoKind::Wireguard)],
            )
            .await;
        match result {
            Err(err) => match err.errno() {
                Some(errno) if is_unsupported_kind(errno) => Err(Error::WireGuardUnsupported {
                    iface: iface.to_owned(),
                    errno,
                }),
                _ => Err(err),
            },
            ok => ok,
        }
    }

    /// Creates an XFRM interface (IPsec mode): packets routed into it are
    /// encrypted by the SAs whose policies carry its `if_id`, and decrypted
    /// packets of those SAs arrive on it. An existing `xfrm` link of that
    /// name is adopted.
    ///
    /// # Errors
    /// [`Error::WrongLinkKind`] when the name is taken by another kind of
    /// link; otherwise the kernel's error (`EOPNOTSUPP` or `ENOENT` on a
    /// kernel without `xfrm_interface`).
    pub async fn create_xfrm(&self, iface: &str, if_id: u32) -> Result<(), Error> {
        self.create_link(
            iface,
            XFRM_KIND,
            vec![
                NlLinkInfo::Kind(InfoKind::Xfrm),
                NlLinkInfo::Data(InfoData::Xfrm(vec![InfoXfrm::IfId(if_id)])),
            ],
        )
        .await
    }

    /// Creates a link of `kind`; an existing link of that name and kind is
    /// adopted (success, nothing changed).
    async fn create_link(
        &self,
        iface: &str,
        kind: &'static str,
        info: Vec<NlLinkInfo>,
    ) -> Result<(), Error> {
        check_name(iface)?;
        let op = Op::CreateLink {
            iface: iface.to_owned(),
            kind,
        };
        let mut message = LinkMessage::default();
        message
            .attributes
            .push(LinkAttribute::IfName(iface.to_owned()));
        message.attributes.push(LinkAttribute::LinkInfo(info));
        let result = self
            .write(
                &op,
                RouteNetlinkMessage::NewLink(message),
                NLM_F_CREATE | NLM_F_EXCL,
            )
            .await;
        match result {
            Ok(()) => {
                info!(iface, kind, "created link");
                Ok(())
            }
            Err(err) => match err.errno() {
                Some(Errno(libc::EEXIST)) => match self.link(iface).await? {
                    Some(link) if link.kind.as_deref() == Some(kind) => Ok(()),
                    Some(link) => Err(Error::WrongLinkKind {
                        iface: iface.to_owned(),
                        found: link.kind,
                        expected: kind,
                    }),
                    // Deleted between the two requests: report the original error.
                    None => Err(err),
                },
                _ => Err(err),
            },
        }
    }

    /// Resolves an interface name to its index.
    pub(crate) async fn index_of(&self, iface: &str) -> Result<u32, Error> {
        self.link(iface)
            .await?
            .map(|link| link.index)
            .ok_or_else(|| Error::LinkNotFound {
                iface: iface.to_owned(),
            })
    }
}

/// `rtnl_newlink` answers `EOPNOTSUPP` when no module provides the kind (and
/// none can be loaded); `ENODEV`/`ENOENT` cover kernels and containers where
/// module loading itself fails.
fn is_unsupported_kind(errno: Errno) -> bool {
    matches!(errno.raw(), libc::EOPNOTSUPP | libc::ENODEV | libc::ENOENT)
}

fn is_no_device(err: &Error) -> bool {
    matches!(err.errno(), Some(Errno(libc::ENODEV)))
}

fn not_found_as(err: Error, iface: &str) -> Error {
    if is_no_device(&err) {
        Error::LinkNotFound {
            iface: iface.to_owned(),
        }
    } else {
        err
    }
}

fn parse_reply(op: &Op, reply: RouteNetlinkMessage) -> Result<LinkInfo, Error> {
    match reply {
        RouteNetlinkMessage::NewLink(message) => Ok(parse_link(&message)),
        _ => Err(Error::UnexpectedReply { op: op.clone() }),
    }
}

pub(crate) fn parse_link(message: &LinkMessage) -> LinkInfo {
    let mut link = LinkInfo {
        index: message.header.index,
        name: String::new(),
        mtu: 0,
        up: message.header.flags.contains(LinkFlags::Up),
        kind: None,
    };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name.clone_from(name),
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let NlLinkInfo::Kind(kind) = info {
                        link.kind = Some(kind.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    link
}

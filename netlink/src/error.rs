//! Errors with the context an operator needs: what was being done, to which
//! interface, table or destination, and the kernel's errno.

use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use wireseal_core::Family;

/// A kernel error number (positive, as in `errno.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Errno(pub i32);

impl Errno {
    /// The raw positive errno value.
    #[must_use]
    pub fn raw(self) -> i32 {
        self.0
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let io = std::io::Error::from_raw_os_error(self.0);
        write!(f, "{io}")
    }
}

/// The netlink operation that failed, with the objects it was about.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op {
    /// Looking up a link by name.
    GetLink {
        /// Interface name.
        iface: String,
    },
    /// Looking up a link by index.
    GetLinkByIndex {
        /// Interface index.
        index: u32,
    },
    /// Listing all links.
    DumpLinks,
    /// Setting a link's MTU.
    SetMtu {
        /// Interface name.
        iface: String,
        /// Requested MTU.
        mtu: u32,
    },
    /// Setting a link administratively up.
    SetUp {
        /// Interface name.
        iface: String,
    },
    /// Creating a link of a kind.
    CreateLink {
        /// Interface name.
        iface: String,
        /// Link kind, e.g. `wireguard`.
        kind: &'static str,
    },
    /// Deleting a link.
    DeleteLink {
        /// Interface name.
        iface: String,
    },
    /// Listing the addresses of a family.
    DumpAddresses {
        /// Address family.
        family: Family,
    },
    /// Adding an address to a link.
    AddAddress {
        /// Interface name.
        iface: String,
        /// The address and its prefix length.
        address: IpNetwork,
    },
    /// Deleting an address from a link.
    DeleteAddress {
        /// Interface name.
        iface: String,
        /// The address and its prefix length.
        address: IpNetwork,
    },
    /// Listing the routes of a family.
    DumpRoutes {
        /// Address family.
        family: Family,
    },
    /// Adding or replacing a route.
    ReplaceRoute {
        /// Destination.
        dst: IpNetwork,
        /// Output interface.
        iface: String,
        /// Preferred source, if the route sets one.
        src: Option<IpAddr>,
        /// Routing table.
        table: u32,
    },
    /// Adding or replacing a catch-all (blackhole or throw).
    ReplaceCatchAll {
        /// Destination.
        dst: IpNetwork,
        /// Blackhole or throw.
        kind: String,
        /// Routing table.
        table: u32,
    },
    /// Deleting a route.
    DeleteRoute {
        /// Destination.
        dst: IpNetwork,
        /// Routing table.
        table: u32,
    },
    /// Asking the kernel which route a destination takes.
    GetRoute {
        /// Destination address.
        dst: IpAddr,
    },
    /// Listing the policy rules of a family.
    DumpRules {
        /// Address family.
        family: Family,
    },
    /// Adding a policy rule.
    AddRule {
        /// Address family.
        family: Family,
        /// Rule priority.
        priority: u32,
        /// Table looked up.
        table: u32,
    },
    /// Deleting a policy rule.
    DeleteRule {
        /// Address family.
        family: Family,
        /// Rule priority.
        priority: u32,
        /// Table looked up.
        table: u32,
    },
    /// Reading a WireGuard device over generic netlink.
    WgGetDevice {
        /// Interface name.
        iface: String,
    },
    /// Configuring a WireGuard device over generic netlink.
    WgSetDevice {
        /// Interface name.
        iface: String,
        /// Index of the message within the split request (from 0).
        message: usize,
        /// Number of messages of the split request.
        of: usize,
    },
    /// Resolving the `wireguard` generic netlink family.
    WgResolveFamily,
    /// Reading the leak counters (the `inet wireseal` table's rules).
    ReadLeakCounters,
    /// Creating the leak-counting table afresh.
    CreateLeakTable,
    /// Replacing the leak counter's sets of remote pod CIDRs.
    SetLeakCidrs {
        /// How many CIDRs (both families).
        count: usize,
    },
    /// Deleting the leak-counting table.
    DeleteLeakTable,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::GetLink { iface } => write!(f, "get link {iface}"),
            Self::GetLinkByIndex { index } => write!(f, "get link #{index}"),
            Self::DumpLinks => f.write_str("list links"),
            Self::SetMtu { iface, mtu } => write!(f, "set mtu {mtu} on {iface}"),
            Self::SetUp { iface } => write!(f, "set {iface} up"),
            Self::CreateLink { iface, kind } => write!(f, "create {kind} link {iface}"),
            Self::DeleteLink { iface } => write!(f, "delete link {iface}"),
            Self::DumpAddresses { family } => write!(f, "list {family} addresses"),
            Self::AddAddress { iface, address } => write!(f, "add address {address} to {iface}"),
            Self::DeleteAddress { iface, address } => {
                write!(f, "delete address {address} from {iface}")
            }
            Self::DumpRoutes { family } => write!(f, "list {family} routes"),
            Self::ReplaceRoute {
                dst,
                iface,
                src,
                table,
            } => {
                write!(f, "replace route {dst} dev {iface}")?;
                if let Some(src) = src {
                    write!(f, " src {src}")?;
                }
                write!(f, " table {table}")
            }
            Self::ReplaceCatchAll { dst, kind, table } => {
                write!(f, "replace {kind} {dst} table {table}")
            }
            Self::DeleteRoute { dst, table } => write!(f, "delete route {dst} table {table}"),
            Self::GetRoute { dst } => write!(f, "get route to {dst}"),
            Self::DumpRules { family } => write!(f, "list {family} rules"),
            Self::AddRule {
                family,
                priority,
                table,
            } => write!(f, "add {family} rule priority {priority} table {table}"),
            Self::DeleteRule {
                family,
                priority,
                table,
            } => write!(f, "delete {family} rule priority {priority} table {table}"),
            Self::WgGetDevice { iface } => write!(f, "get wireguard device {iface}"),
            Self::WgSetDevice { iface, message, of } => {
                write!(
                    f,
                    "set wireguard device {iface} (message {} of {of})",
                    message + 1
                )
            }
            Self::WgResolveFamily => f.write_str("resolve the wireguard generic netlink family"),
            Self::ReadLeakCounters => {
                f.write_str("read the leak counters (nftables inet wireseal)")
            }
            Self::CreateLeakTable => f.write_str("create the nftables table inet wireseal"),
            Self::SetLeakCidrs { count } => {
                write!(
                    f,
                    "set the {count} remote pod CIDRs of nftables table inet wireseal"
                )
            }
            Self::DeleteLeakTable => f.write_str("delete the nftables table inet wireseal"),
        }
    }
}

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The netlink socket could not be opened or bound.
    #[error("cannot open a netlink socket")]
    Socket(#[source] std::io::Error),
    /// The kernel answered the request with an error.
    #[error("{op}: {errno}")]
    Kernel {
        /// What was being done.
        op: Op,
        /// The kernel's errno.
        errno: Errno,
    },
    /// Sending or receiving on the socket failed, or the kernel did not answer in time.
    #[error("{op}: {source}")]
    Io {
        /// The operation.
        op: Op,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// The request could not be sent: the connection task has stopped.
    #[error("{op}: the netlink connection is closed")]
    ConnectionClosed {
        /// What was being done.
        op: Op,
    },
    /// The kernel's answer could not be decoded or was not the expected message.
    #[error("{op}: unexpected or undecodable reply from the kernel")]
    UnexpectedReply {
        /// What was being done.
        op: Op,
    },
    /// No link with this name exists.
    #[error("no link named {iface}")]
    LinkNotFound {
        /// Interface name.
        iface: String,
    },
    /// This kernel cannot create WireGuard links (no module, or the kind is
    /// unknown). The agent's `--datapath auto` falls back to userspace on
    /// exactly this error.
    #[error("kernel WireGuard is not available: creating {iface} failed with {errno}")]
    WireGuardUnsupported {
        /// Interface name.
        iface: String,
        /// The kernel's errno (`EOPNOTSUPP`, or `ENODEV`/`ENOENT` from the
        /// generic netlink family lookup).
        errno: Errno,
    },
    /// A link with the name exists, but it is not of the requested kind.
    #[error("link {iface} exists with kind {found:?}, expected {expected}")]
    WrongLinkKind {
        /// Interface name.
        iface: String,
        /// The kind found (`None` when the kernel reports none, e.g. a physical NIC).
        found: Option<String>,
        /// The kind wanted.
        expected: &'static str,
    },
    /// An interface name the kernel would refuse (empty, or 16 bytes or more).
    #[error("invalid interface name {iface:?}: must be 1 to 15 bytes")]
    InvalidName {
        /// The rejected name.
        iface: String,
    },
    /// The underlay has no route to a destination.
    #[error("no route to {dst}")]
    NoRoute {
        /// Destination address.
        dst: IpAddr,
    },
    /// A plan step that a datapath carries out, not this crate's routing
    /// (creating the tunnel link, changing the WireGuard device).
    #[error("not a link, address, route or rule step: {step}")]
    NotANetlinkStep {
        /// The step.
        step: String,
    },
}

impl Error {
    /// The kernel errno, if this error carries one.
    #[must_use]
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Self::Kernel { errno, .. } | Self::WireGuardUnsupported { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// Checks an interface name the way the kernel does (`IFNAMSIZ` = 16 with NUL).
impl Error {
    /// Whether the kernel lacks what the request needs (`nf_tables`, or
    /// netlink's netfilter family itself) rather than refusing this request.
    /// A rule dump names a missing subsystem `EINVAL`, a batch `EOPNOTSUPP`.
    #[must_use]
    pub fn unsupported(&self) -> bool {
        match self {
            Self::Socket(err) => err.raw_os_error() == Some(libc::EPROTONOSUPPORT),
            Self::Kernel { op, errno } => {
                matches!(
                    errno.0,
                    libc::EOPNOTSUPP | libc::EPROTONOSUPPORT | libc::EAFNOSUPPORT
                ) || (*op == Op::ReadLeakCounters && errno.0 == libc::EINVAL)
            }
            _ => false,
        }
    }
}

pub(crate) fn check_name(iface: &str) -> Result<(), Error> {
    if iface.is_empty()
        || iface.len() >= 16
        || iface.contains(['/', '\0'])
        || iface.contains(char::is_whitespace)
    {
        return Err(Error::InvalidName {
            iface: iface.to_owned(),
        });
    }
    Ok(())
}

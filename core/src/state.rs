//! The shapes shared by the desired and the observed state: the tunnel link, the
//! WireGuard device with its peers, the routes in wireseal's table and the
//! policy rules. Both datapaths (kernel and userspace) are described by the same
//! types; routes and rules are the same for both.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

use ipnetwork::IpNetwork;

use crate::key::PublicKey;

/// IPv4 or IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of a network.
    #[must_use]
    pub fn of(net: &IpNetwork) -> Self {
        match net {
            IpNetwork::V4(_) => Self::V4,
            IpNetwork::V6(_) => Self::V6,
        }
    }

    /// The family of an address.
    #[must_use]
    pub fn of_ip(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }

    /// Bytes WireGuard adds to each packet on an underlay of this family:
    /// outer IP header (20 / 40) + UDP (8) + WireGuard data header (16) + tag (16).
    #[must_use]
    pub fn wireguard_overhead(self) -> u32 {
        match self {
            Self::V4 => 60,
            Self::V6 => 80,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V4 => "ipv4",
            Self::V6 => "ipv6",
        })
    }
}

/// The tunnel MTU for an underlay path MTU, or `None` when the underlay is too
/// small to carry even the IPv6 minimum (1280) through the tunnel.
#[must_use]
pub fn tunnel_mtu(underlay_mtu: u32, underlay: Family) -> Option<u32> {
    let mtu = underlay_mtu.checked_sub(underlay.wireguard_overhead())?;
    (mtu >= MIN_TUNNEL_MTU).then_some(mtu)
}

/// The smallest tunnel MTU wireseal configures: IPv6's minimum link MTU.
pub const MIN_TUNNEL_MTU: u32 = 1280;

/// The tunnel network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSpec {
    /// Interface name, e.g. `wireseal0`.
    pub name: String,
    /// Interface MTU.
    pub mtu: u32,
    /// The addresses on the interface that wireseal manages: every address
    /// but the kernel's link-local ones. Desired: the host sources, each as
    /// a host prefix (see [`host_address`]).
    ///
    /// The routes into the tunnel already give the node's own packets that
    /// source, but kube-proxy masquerades host traffic to a Service with the
    /// *output device's* address (`MASQUERADE` ignores the route's preferred
    /// source), and a device without one makes the kernel fall back to the
    /// node's address, which the peers' WireGuard drops. The same address
    /// also stays on the CNI's device: the node then has it twice, which
    /// Linux allows (one `local` entry per device in the local table).
    pub addresses: BTreeSet<IpNetwork>,
}

/// A host source as it goes on the tunnel link: a /32 or /128, so that it
/// adds no prefix route and claims no other address of the pod CIDR.
#[must_use]
pub fn host_address(ip: IpAddr) -> IpNetwork {
    IpNetwork::from(ip)
}

/// What wireseal configures on one WireGuard peer. The same on both datapaths.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerConfig {
    /// Where to send this peer's packets; `None` until known (the peer can still
    /// reach us, and we learn its endpoint from its first packet).
    pub endpoint: Option<SocketAddr>,
    /// Inner addresses this peer may send from and that are routed to it.
    pub allowed_ips: BTreeSet<IpNetwork>,
    /// Persistent keepalive interval in seconds.
    pub persistent_keepalive: Option<u16>,
}

/// The WireGuard device as wireseal wants it. The private key is not here: it
/// stays in keymgr; the device is identified by the matching public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    /// Public key of the private key the device must use.
    pub public_key: PublicKey,
    /// UDP listen port.
    pub listen_port: u16,
    /// fwmark put on the device's own UDP packets, so they skip wireseal's rule.
    pub fwmark: u32,
    /// Peers by public key.
    pub peers: BTreeMap<PublicKey, PeerConfig>,
}

/// The WireGuard device as the datapath reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedDevice {
    /// Public key of the configured private key; `None` when none is set.
    pub public_key: Option<PublicKey>,
    /// UDP listen port (0 when unset).
    pub listen_port: u16,
    /// fwmark (0 when unset).
    pub fwmark: u32,
    /// Peers by public key.
    pub peers: BTreeMap<PublicKey, PeerConfig>,
}

/// Traffic counters and handshake time of one peer, as a datapath reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PeerStats {
    /// Time of the last completed handshake, if any.
    pub last_handshake: Option<SystemTime>,
    /// Bytes received from the peer.
    pub rx_bytes: u64,
    /// Bytes sent to the peer.
    pub tx_bytes: u64,
}

/// The WireGuard device as read back from either datapath, with per-peer
/// statistics.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceObservation {
    /// The device configuration; `None` when there is no device yet.
    pub device: Option<ObservedDevice>,
    /// Statistics by peer.
    pub stats: BTreeMap<PublicKey, PeerStats>,
}

/// A route to a remote pod CIDR through the tunnel, in wireseal's table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteSpec {
    /// Destination network.
    pub dst: IpNetwork,
    /// Output interface name.
    pub dev: String,
    /// Route MTU (the tunnel MTU), so TCP picks a fitting MSS.
    pub mtu: u32,
    /// Preferred source (`RTA_PREFSRC`) of the packets the node itself sends
    /// along this route: an address of this node inside its own pod CIDRs,
    /// so the peer's WireGuard accepts them (its allowed IPs for us are our
    /// pod CIDRs) and routes the replies back through the tunnel. `None` when
    /// the node has no such address; the kernel then picks the source.
    pub src: Option<IpAddr>,
}

impl fmt::Display for RouteSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} dev {} mtu {}", self.dst, self.dev, self.mtu)?;
        if let Some(src) = self.src {
            write!(f, " src {src}")?;
        }
        Ok(())
    }
}

/// What a catch-all route does with a packet (strict mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CatchAllKind {
    /// Drop it: the packet was headed for a remote pod and no tunnel took it.
    Blackhole,
    /// Go on with the next rule (the CNI's routes): for what must stay plain.
    Throw,
    /// Found in the catch-all table but not a kind wireseal writes (a
    /// unicast or unreachable route someone added): never desired, so it is
    /// replaced or removed.
    Other,
}

impl fmt::Display for CatchAllKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Blackhole => "blackhole",
            Self::Throw => "throw",
            Self::Other => "foreign route",
        })
    }
}

/// A device-independent route in the catch-all table (strict mode): nothing
/// can remove it but wireseal, unlike a route through the tunnel link, which
/// goes with the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CatchAll {
    /// Destination network.
    pub dst: IpNetwork,
    /// Drop or let through.
    pub kind: CatchAllKind,
}

impl fmt::Display for CatchAll {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.dst)
    }
}

/// wireseal's policy rule for one family:
/// `ip rule add not fwmark MARK/MARK lookup TABLE priority PRIORITY`.
///
/// Packets that do not carry wireseal's mark look up wireseal's table, which
/// holds only remote pod CIDRs; anything else falls through to the next rules.
/// The datapath's own encrypted packets carry the mark and skip the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleSpec {
    /// Address family.
    pub family: Family,
    /// Rule priority (lower runs first).
    pub priority: u32,
    /// Routing table looked up.
    pub table: u32,
    /// The fwmark (and mask) that exempts a packet from this rule.
    pub fwmark: u32,
}

impl fmt::Display for RuleSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} not fwmark {:#x}/{:#x} lookup {} priority {}",
            self.family, self.fwmark, self.fwmark, self.table, self.priority
        )
    }
}

/// Everything wireseal wants on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredState {
    /// The tunnel interface.
    pub link: LinkSpec,
    /// The WireGuard device.
    pub device: DeviceSpec,
    /// Routes in wireseal's table, by destination.
    pub routes: BTreeMap<IpNetwork, RouteSpec>,
    /// Catch-alls in the catch-all table, by destination (strict mode).
    pub catch_alls: BTreeMap<IpNetwork, CatchAll>,
    /// Policy rules: one per family in use, and in strict mode one more per
    /// family for the catch-all table.
    pub rules: BTreeSet<RuleSpec>,
}

impl DesiredState {
    /// Sets the tunnel MTU on the link and on every route: the only part of
    /// the desired state that depends on it.
    pub fn set_mtu(&mut self, mtu: u32) {
        self.link.mtu = mtu;
        for route in self.routes.values_mut() {
            route.mtu = mtu;
        }
    }
}

/// What is on the node now, as read back from the kernel and the datapath.
/// Only wireseal's own objects: its link, its table's routes, its rules.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedState {
    /// The tunnel interface, if it exists.
    pub link: Option<LinkSpec>,
    /// The WireGuard device, if the datapath answers.
    pub device: Option<ObservedDevice>,
    /// Routes found in wireseal's table, by destination.
    pub routes: BTreeMap<IpNetwork, RouteSpec>,
    /// Routes found in the catch-all table, by destination.
    pub catch_alls: BTreeMap<IpNetwork, CatchAll>,
    /// wireseal's rules found (matching its priorities and tables).
    pub rules: BTreeSet<RuleSpec>,
}

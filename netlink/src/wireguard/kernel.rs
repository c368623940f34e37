//! The kernel backend's encoder: a [`DevicePlan`] becomes `WG_CMD_SET_DEVICE`
//! generic netlink messages each small enough for one netlink buffer, and the
//! replies of `WG_CMD_GET_DEVICE` become a [`WgDevice`] and a
//! [`DeviceObservation`]. The userspace backend's twin is [`super::uapi`]: the
//! same plan, the same observation, another protocol. No sockets here, so all
//! of it is unit-tested on a kernel without WireGuard.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, UNIX_EPOCH};

use ipnetwork::IpNetwork;
use netlink_packet_core::Emitable as _;
use netlink_packet_wireguard::{
    WireguardAddressFamily, WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute,
    WireguardCmd, WireguardMessage, WireguardPeer, WireguardPeerAttribute, WireguardPeerFlags,
};
use tracing::warn;
use wireseal_core::{
    DeviceObservation, DevicePlan, ObservedDevice, PeerConfig, PeerStats, PublicKey,
};

/// The largest netlink message (headers included) the encoder produces: the
/// buffer size `wg(8)` uses (`MNL_SOCKET_BUFFER_SIZE` on 4 KiB-page systems
/// is 8 KiB), which every kernel accepts in one read.
pub const MAX_MESSAGE_LEN: usize = 8192;

/// `struct nlmsghdr` (16) + `struct genlmsghdr` (4).
const HEADERS_LEN: usize = 20;
/// The header of a nested attribute (`WGDEVICE_A_PEERS`, one peer,
/// `WGPEER_A_ALLOWEDIPS`).
const NEST_LEN: usize = 4;

/// A WireGuard device as the kernel reports it. The private key never leaves
/// this crate: only whether one is set, and its public key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WgDevice {
    /// Interface index.
    pub ifindex: u32,
    /// Interface name.
    pub iface: String,
    /// Whether a private key is configured.
    pub has_private_key: bool,
    /// The public key of the configured private key.
    pub public_key: Option<[u8; 32]>,
    /// UDP listen port (0 when unset).
    pub listen_port: u16,
    /// fwmark (0 when unset).
    pub fwmark: u32,
    /// Peers, in the kernel's order.
    pub peers: Vec<WgPeer>,
}

/// A WireGuard peer as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WgPeer {
    /// The peer's public key.
    pub public_key: [u8; 32],
    /// Whether a preshared key is set (the key itself is not kept).
    pub has_preshared_key: bool,
    /// Current endpoint.
    pub endpoint: Option<SocketAddr>,
    /// Allowed IPs.
    pub allowed_ips: BTreeSet<IpNetwork>,
    /// Persistent keepalive interval in seconds (0: off).
    pub persistent_keepalive: u16,
    /// Time of the last handshake since the Unix epoch; `None` if never.
    pub last_handshake: Option<Duration>,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
}

impl WgDevice {
    /// The device and its peers' statistics in the core's vocabulary, as
    /// [`super::uapi::decode_get`] gives them for the userspace datapath.
    /// Keys the core would reject (zero, low-order: nothing can handshake
    /// with them) are left out with a warning.
    #[must_use]
    pub fn to_observation(&self) -> DeviceObservation {
        let mut device = ObservedDevice {
            public_key: self
                .public_key
                .and_then(|key| PublicKey::from_bytes(key).ok()),
            listen_port: self.listen_port,
            fwmark: self.fwmark,
            peers: BTreeMap::new(),
        };
        let mut stats = BTreeMap::new();
        for peer in &self.peers {
            match PublicKey::from_bytes(peer.public_key) {
                Ok(key) => {
                    device.peers.insert(
                        key,
                        PeerConfig {
                            endpoint: peer.endpoint,
                            allowed_ips: peer.allowed_ips.clone(),
                            persistent_keepalive: (peer.persistent_keepalive != 0)
                                .then_some(peer.persistent_keepalive),
                        },
                    );
                    stats.insert(
                        key,
                        PeerStats {
                            last_handshake: peer
                                .last_handshake
                                .and_then(|since| UNIX_EPOCH.checked_add(since)),
                            rx_bytes: peer.rx_bytes,
                            tx_bytes: peer.tx_bytes,
                        },
                    );
                }
                Err(err) => {
                    warn!(iface = %self.iface, error = %err, "ignoring a kernel peer with an unusable key")
                }
            }
        }
        DeviceObservation {
            device: Some(device),
            stats,
        }
    }
}

/// The public key of a transient peer that takes allowed IPs away from the
/// peers that keep existing: the kernel moves an allowed IP to the last peer
/// that claims it, so giving the IPs to this peer and then removing it takes
/// exactly those IPs away. The alternative, `WGPEER_F_REPLACE_ALLOWEDIPS` on
/// the peer that loses them, empties that peer's list before refilling it,
/// and its packets in between are dropped; `WGALLOWEDIP_F_REMOVE_ME` exists
/// only in recent kernels, and older ones would not refuse it but ignore it.
/// Never a real peer's key: it is the X25519 public key of no known secret
/// (a fixed string), and a leftover (a crash between the two halves) is an
/// unknown peer, which the next plan removes.
pub const ALLOWED_IP_SINK: [u8; 32] = *b"wireseal: allowed IPs removed ..";

/// Encodes `plan` for `iface` as `WG_CMD_SET_DEVICE` messages, none longer
/// than `max_len` bytes once serialised, in the plan's own order: settings,
/// added or updated peers, removed peers, then the allowed IPs taken away.
///
/// The private key goes in only when the plan sets it. Upserted peers carry
/// their whole configuration (keepalive 0 when off) and add their allowed
/// IPs to what the peer has: allowed IPs are never replaced, since that
/// empties a peer's list for an instant. Those the plan takes away go
/// through [`ALLOWED_IP_SINK`]. A peer whose allowed IPs do not fit in one
/// message continues in the next with `WGPEER_F_UPDATE_ONLY`.
/// `WGDEVICE_F_REPLACE_PEERS` is never used: it would reset every session.
///
/// Returns no message when the plan has nothing to do.
#[must_use]
pub fn encode_set(
    iface: &str,
    plan: &DevicePlan,
    private_key: &[u8; 32],
    max_len: usize,
) -> Vec<WireguardMessage> {
    let mut packer = Packer::new(iface, max_len);
    if plan.set_private_key.is_some() {
        packer.push_setting(WireguardAttribute::PrivateKey(*private_key));
    }
    if let Some(port) = plan.listen_port {
        packer.push_setting(WireguardAttribute::ListenPort(port));
    }
    if let Some(mark) = plan.fwmark {
        packer.push_setting(WireguardAttribute::Fwmark(mark));
    }
    for (key, peer) in &plan.upsert_peers {
        let mut head = vec![
            WireguardPeerAttribute::PublicKey(*key.as_bytes()),
            WireguardPeerAttribute::PersistentKeepalive(peer.persistent_keepalive.unwrap_or(0)),
        ];
        if let Some(endpoint) = peer.endpoint {
            head.push(WireguardPeerAttribute::Endpoint(endpoint));
        }
        let allowed = peer.allowed_ips.iter().map(allowed_ip).collect();
        packer.push_peer(*key.as_bytes(), head, allowed);
    }
    for key in &plan.remove_peers {
        let head = vec![
            WireguardPeerAttribute::PublicKey(*key.as_bytes()),
            WireguardPeerAttribute::Flags(WireguardPeerFlags::RemoveMe),
        ];
        packer.push_peer(*key.as_bytes(), head, Vec::new());
    }
    if !plan.remove_allowed_ips.is_empty() {
        let allowed = plan.remove_allowed_ips.iter().map(allowed_ip).collect();
        let take = vec![WireguardPeerAttribute::PublicKey(ALLOWED_IP_SINK)];
        packer.push_peer(ALLOWED_IP_SINK, take, allowed);
        let remove = vec![
            WireguardPeerAttribute::PublicKey(ALLOWED_IP_SINK),
            WireguardPeerAttribute::Flags(WireguardPeerFlags::RemoveMe),
        ];
        packer.push_peer(ALLOWED_IP_SINK, remove, Vec::new());
    }
    packer.finish()
}

/// A `WG_CMD_GET_DEVICE` request for `iface`.
#[must_use]
pub fn encode_get(iface: &str) -> WireguardMessage {
    WireguardMessage {
        cmd: WireguardCmd::GetDevice,
        attributes: vec![WireguardAttribute::IfName(iface.to_owned())],
    }
}

/// Decodes the replies of one `WG_CMD_GET_DEVICE` dump. The kernel splits a
/// large device over several messages and may split one peer's allowed IPs
/// across two; those parts are merged. A private key in the replies is
/// overwritten in place and only its presence kept.
#[must_use]
pub fn decode_get(replies: Vec<WireguardMessage>) -> WgDevice {
    let mut device = WgDevice::default();
    for mut reply in replies {
        for attribute in &mut reply.attributes {
            match attribute {
                WireguardAttribute::IfIndex(index) => device.ifindex = *index,
                WireguardAttribute::IfName(name) => device.iface.clone_from(name),
                WireguardAttribute::PrivateKey(key) => {
                    device.has_private_key = *key != [0; 32];
                    *key = [0; 32];
                }
                WireguardAttribute::PublicKey(key) => {
                    device.public_key = (*key != [0; 32]).then_some(*key);
                }
                WireguardAttribute::ListenPort(port) => device.listen_port = *port,
                WireguardAttribute::Fwmark(mark) => device.fwmark = *mark,
                WireguardAttribute::Peers(peers) => {
                    for peer in peers.iter_mut() {
                        merge_peer(&mut device.peers, decode_peer(peer));
                    }
                }
                _ => {}
            }
        }
    }
    device
}

fn merge_peer(peers: &mut Vec<WgPeer>, peer: WgPeer) {
    match peers.last_mut() {
        Some(last) if last.public_key == peer.public_key => {
            last.allowed_ips.extend(peer.allowed_ips)
        }
        _ => peers.push(peer),
    }
}

fn decode_peer(peer: &mut WireguardPeer) -> WgPeer {
    let mut out = WgPeer::default();
    for attribute in &mut peer.0 {
        match attribute {
            WireguardPeerAttribute::PublicKey(key) => out.public_key = *key,
            WireguardPeerAttribute::PresharedKey(key) => {
                out.has_preshared_key = *key != [0; 32];
                *key = [0; 32];
            }
            WireguardPeerAttribute::Endpoint(endpoint) => out.endpoint = Some(*endpoint),
            WireguardPeerAttribute::PersistentKeepalive(seconds) => {
                out.persistent_keepalive = *seconds
            }
            WireguardPeerAttribute::LastHandshake(time) => {
                let seconds = u64::try_from(time.seconds).unwrap_or(0);
                let nanos = u32::try_from(time.nano_seconds).unwrap_or(0);
                // Duration::new panics when the nanoseconds carry past u64 seconds.
                out.last_handshake = (seconds != 0 || nanos != 0)
                    .then(|| {
                        Duration::from_secs(seconds).checked_add(Duration::from_nanos(nanos.into()))
                    })
                    .flatten();
            }
            WireguardPeerAttribute::RxBytes(bytes) => out.rx_bytes = *bytes,
            WireguardPeerAttribute::TxBytes(bytes) => out.tx_bytes = *bytes,
            WireguardPeerAttribute::AllowedIps(ips) => {
                out.allowed_ips
                    .extend(ips.iter().filter_map(decode_allowed_ip));
            }
            _ => {}
        }
    }
    out
}

fn decode_allowed_ip(ip: &WireguardAllowedIp) -> Option<IpNetwork> {
    let mut addr = None;
    let mut cidr = None;
    for attribute in &ip.0 {
        match attribute {
            WireguardAllowedIpAttr::IpAddr(a) => addr = Some(*a),
            WireguardAllowedIpAttr::Cidr(c) => cidr = Some(*c),
            _ => {}
        }
    }
    IpNetwork::new(addr?, cidr?).ok()
}

fn allowed_ip(net: &IpNetwork) -> WireguardAllowedIp {
    let family = match net.ip() {
        IpAddr::V4(_) => WireguardAddressFamily::Ipv4,
        IpAddr::V6(_) => WireguardAddressFamily::Ipv6,
    };
    WireguardAllowedIp(vec![
        WireguardAllowedIpAttr::Family(family),
        WireguardAllowedIpAttr::IpAddr(net.network()),
        WireguardAllowedIpAttr::Cidr(net.prefix()),
    ])
}

/// Packs settings and peers greedily into messages under a size limit.
struct Packer {
    iface: String,
    max_len: usize,
    /// Length of a message with only the interface name and an empty peers nest.
    base_len: usize,
    messages: Vec<WireguardMessage>,
    settings: Vec<WireguardAttribute>,
    peers: Vec<WireguardPeer>,
    used: usize,
}

impl Packer {
    fn new(iface: &str, max_len: usize) -> Self {
        let base_len =
            HEADERS_LEN + WireguardAttribute::IfName(iface.to_owned()).buffer_len() + NEST_LEN;
        Self {
            iface: iface.to_owned(),
            max_len,
            base_len,
            messages: Vec::new(),
            settings: Vec::new(),
            peers: Vec::new(),
            used: base_len,
        }
    }

    /// Device settings go in the first message, before any peer.
    fn push_setting(&mut self, attribute: WireguardAttribute) {
        self.used += attribute.buffer_len();
        self.settings.push(attribute);
    }

    fn push_peer(
        &mut self,
        key: [u8; 32],
        head: Vec<WireguardPeerAttribute>,
        allowed: Vec<WireguardAllowedIp>,
    ) {
        let head_len = NEST_LEN + head.as_slice().buffer_len() + NEST_LEN;
        let allowed_len: usize = allowed.iter().map(|ip| ip.buffer_len()).sum();
        if self.used + head_len + allowed_len > self.max_len
            && self.base_len + head_len + allowed_len <= self.max_len
        {
            // It fits whole in a fresh message: do not split it needlessly.
            self.flush();
        }
        let mut head = head;
        let mut rest = allowed.into_iter().peekable();
        loop {
            let head_len = NEST_LEN + head.as_slice().buffer_len() + NEST_LEN;
            let first = rest.peek().map_or(0, |ip| ip.buffer_len());
            if self.used + head_len + first > self.max_len {
                self.flush();
            }
            let mut chunk = Vec::new();
            let mut len = head_len;
            while let Some(ip) = rest.peek() {
                let ip_len = ip.buffer_len();
                if self.used + len + ip_len > self.max_len && !chunk.is_empty() {
                    break;
                }
                len += ip_len;
                chunk.extend(rest.next());
            }
            let mut attributes = head;
            if !chunk.is_empty() {
                attributes.push(WireguardPeerAttribute::AllowedIps(chunk));
            } else {
                len -= NEST_LEN;
            }
            self.used += len;
            self.peers.push(WireguardPeer(attributes));
            if rest.peek().is_none() {
                return;
            }
            self.flush();
            // The rest of this peer's allowed IPs: add to the peer just
            // configured, and never create it anew if it vanished meanwhile.
            head = vec![
                WireguardPeerAttribute::PublicKey(key),
                WireguardPeerAttribute::Flags(WireguardPeerFlags::UpdateOnly),
            ];
        }
    }

    fn flush(&mut self) {
        if self.settings.is_empty() && self.peers.is_empty() {
            return;
        }
        let mut attributes = vec![WireguardAttribute::IfName(self.iface.clone())];
        attributes.append(&mut self.settings);
        if !self.peers.is_empty() {
            attributes.push(WireguardAttribute::Peers(std::mem::take(&mut self.peers)));
        }
        self.messages.push(WireguardMessage {
            cmd: WireguardCmd::SetDevice,
            attributes,
        });
        self.used = self.base_len;
    }

    fn finish(mut self) -> Vec<WireguardMessage> {
        self.flush();
        self.messages
    }
}

#[cfg(test)]
mod tests;

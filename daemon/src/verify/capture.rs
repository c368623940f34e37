//! An AF_PACKET capture on every interface of the node but the tunnel's
//! and loopback, for the length of one probe: does a canary appear in
//! clear on any of them, and do WireGuard messages pass to and from the
//! peer's endpoint?

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::socket::{
    AddressFamily, LinkAddr, SockFlag, SockProtocol, SockType, recvfrom, setsockopt, socket,
    sockopt,
};
use nix::sys::time::TimeVal;
use serde::Serialize;

/// ARPHRD_ETHER: frames start with an Ethernet header.
const ARPHRD_ETHER: u16 = 1;
/// Raw IP links (TUN, WireGuard, IPIP …): frames start with the IP header.
const ARPHRD_NONE: u16 = 0xFFFE;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86DD;
const ETHERTYPE_VLAN: [u16; 2] = [0x8100, 0x88A8];
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ESP: u8 = 50;

/// What the capture saw.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Seen {
    /// Frames inspected.
    pub frames: u64,
    /// Frames that carried the canary, outside the tunnel.
    pub canary_in_clear: u64,
    /// The interfaces those frames crossed.
    pub canary_interfaces: Vec<u32>,
    /// WireGuard messages to the peer's endpoint.
    pub wireguard_out: u64,
    /// WireGuard messages from it.
    pub wireguard_in: u64,
    /// ESP packets to or from the peer's address.
    pub esp: u64,
}

/// A capture running on its own thread until [`Capture::finish`].
#[derive(Debug)]
pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Seen>,
}

impl Capture {
    /// Starts capturing: frames on `skip` (interface indexes: the tunnel,
    /// loopback) are not inspected; `canary` is searched in every other
    /// frame; WireGuard and ESP are counted relative to `endpoint`.
    ///
    /// # Errors
    /// When the packet socket cannot be opened (not root: CAP_NET_RAW).
    pub fn start(skip: Vec<u32>, canary: Vec<u8>, endpoint: Option<SocketAddr>) -> Result<Self> {
        let fd = socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::EthAll,
        )
        .context("opening an AF_PACKET socket (verify's probe needs root: CAP_NET_RAW)")?;
        setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(0, 50_000))
            .context("setting the capture's receive timeout")?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("verify-capture".into())
            .spawn(move || capture(&fd, &stopping, &skip, &canary, endpoint))
            .context("starting the capture thread")?;
        Ok(Self { stop, thread })
    }

    /// Stops after `linger` (frames still in flight) and returns what was seen.
    #[must_use]
    pub fn finish(self, linger: Duration) -> Seen {
        std::thread::sleep(linger);
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

fn capture(
    fd: &OwnedFd,
    stop: &AtomicBool,
    skip: &[u32],
    canary: &[u8],
    endpoint: Option<SocketAddr>,
) -> Seen {
    let mut seen = Seen::default();
    let mut buf = vec![0u8; 65_536 + 128];
    while !stop.load(Ordering::Relaxed) {
        let Ok((len, from)) = recvfrom::<LinkAddr>(std::os::fd::AsRawFd::as_raw_fd(fd), &mut buf)
        else {
            // EAGAIN on the timeout: look at the stop flag again.
            continue;
        };
        let Some(from) = from else { continue };
        let ifindex = u32::try_from(from.ifindex()).unwrap_or(u32::MAX);
        if skip.contains(&ifindex) {
            continue;
        }
        let frame = &buf[..len.min(buf.len())];
        seen.frames += 1;
        if contains(frame, canary) {
            seen.canary_in_clear += 1;
            if !seen.canary_interfaces.contains(&ifindex) {
                seen.canary_interfaces.push(ifindex);
            }
        }
        if let (Some(endpoint), Some(packet)) = (endpoint, ip_packet(from.hatype(), frame)) {
            classify(packet, endpoint, &mut seen);
        }
    }
    seen
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// The IP packet inside a frame of a link of type `hatype`.
fn ip_packet(hatype: u16, frame: &[u8]) -> Option<&[u8]> {
    match hatype {
        ARPHRD_ETHER => {
            let mut offset = 12;
            loop {
                let ethertype = u16::from_be_bytes([*frame.get(offset)?, *frame.get(offset + 1)?]);
                if ETHERTYPE_VLAN.contains(&ethertype) {
                    offset += 4;
                    continue;
                }
                return matches!(ethertype, ETHERTYPE_IPV4 | ETHERTYPE_IPV6)
                    .then(|| frame.get(offset + 2..))
                    .flatten();
            }
        }
        ARPHRD_NONE => Some(frame),
        _ => None,
    }
}

/// Counts a WireGuard message (UDP, type 1–4, three zero bytes) or an ESP
/// packet between this node and `endpoint`.
fn classify(packet: &[u8], endpoint: SocketAddr, seen: &mut Seen) {
    let Some((src, dst, protocol, payload)) = parse_ip(packet) else {
        return;
    };
    let peer = endpoint.ip();
    if protocol == IPPROTO_ESP && (src == peer || dst == peer) {
        seen.esp += 1;
        return;
    }
    if protocol != IPPROTO_UDP || payload.len() < 8 + 4 {
        return;
    }
    let sport = u16::from_be_bytes([payload[0], payload[1]]);
    let dport = u16::from_be_bytes([payload[2], payload[3]]);
    let message = &payload[8..];
    let wireguard = (1..=4).contains(&message[0]) && message[1..4] == [0, 0, 0];
    if !wireguard {
        return;
    }
    if dst == peer && dport == endpoint.port() {
        seen.wireguard_out += 1;
    } else if src == peer && sport == endpoint.port() {
        seen.wireguard_in += 1;
    }
}

/// Source, destination, protocol and payload of an IPv4 or IPv6 packet
/// (IPv6 extension headers are not walked: WireGuard and ESP follow the
/// fixed header).
fn parse_ip(packet: &[u8]) -> Option<(IpAddr, IpAddr, u8, &[u8])> {
    match packet.first()? >> 4 {
        4 => {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            let header: [u8; 20] = packet.get(..20)?.try_into().ok()?;
            let src = Ipv4Addr::new(header[12], header[13], header[14], header[15]);
            let dst = Ipv4Addr::new(header[16], header[17], header[18], header[19]);
            Some((src.into(), dst.into(), header[9], packet.get(ihl..)?))
        }
        6 => {
            let src: [u8; 16] = packet.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = packet.get(24..40)?.try_into().ok()?;
            Some((
                Ipv6Addr::from(src).into(),
                Ipv6Addr::from(dst).into(),
                *packet.get(6)?,
                packet.get(40..)?,
            ))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, IPPROTO_UDP, 0, 0];
        p.extend(src);
        p.extend(dst);
        p.extend(sport.to_be_bytes());
        p.extend(dport.to_be_bytes());
        p.extend([0, 0, 0, 0]);
        p.extend(payload);
        p
    }

    fn ether(packet: &[u8]) -> Vec<u8> {
        let mut f = vec![0; 12];
        f.extend(ETHERTYPE_IPV4.to_be_bytes());
        f.extend(packet);
        f
    }

    #[test]
    fn wireguard_to_and_from_the_endpoint_is_counted_and_nothing_else() {
        let endpoint: SocketAddr = "192.0.2.2:51830".parse().unwrap();
        let mut seen = Seen::default();
        let data = [4, 0, 0, 0, 1, 2, 3];
        for (frame, hatype) in [
            (
                ether(&udp4([192, 0, 2, 1], [192, 0, 2, 2], 51830, 51830, &data)),
                ARPHRD_ETHER,
            ),
            (
                udp4([192, 0, 2, 2], [192, 0, 2, 1], 51830, 40000, &data),
                ARPHRD_NONE,
            ),
            // not WireGuard: a reserved byte set
            (
                ether(&udp4(
                    [192, 0, 2, 1],
                    [192, 0, 2, 2],
                    1,
                    51830,
                    &[4, 1, 0, 0],
                )),
                ARPHRD_ETHER,
            ),
            // another port
            (
                ether(&udp4([192, 0, 2, 1], [192, 0, 2, 2], 1, 53, &data)),
                ARPHRD_ETHER,
            ),
            // truncated
            (vec![0x45, 0, 0], ARPHRD_NONE),
        ] {
            if let Some(packet) = ip_packet(hatype, &frame) {
                classify(packet, endpoint, &mut seen);
            }
        }
        assert_eq!((seen.wireguard_out, seen.wireguard_in), (1, 1));
    }

    #[test]
    fn the_canary_is_found_anywhere_in_a_frame() {
        assert!(contains(
            b"xx wireseal-verify-abc yy",
            b"wireseal-verify-abc"
        ));
        assert!(!contains(b"wireseal-verify-ab", b"wireseal-verify-abc"));
        assert!(!contains(b"anything", b""));
    }
}

//! The active half of `wireseal verify` on a node: for each peer, an ICMP
//! echo carrying a fresh canary goes from this node's host source to the
//! peer's, through the tunnel, while every other interface is captured.
//! The path is proven when the echo comes back, the canary never appears
//! in clear, and WireGuard messages (or ESP) pass to and from the peer.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrStorage, bind, recvfrom,
    sendto, setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;
use serde::Serialize;

use super::capture::{Capture, Seen};

/// Echo requests per probe, and the pause between them.
const REQUESTS: u16 = 3;
const BETWEEN: Duration = Duration::from_millis(100);
/// How long to wait for the replies after the last request.
const WAIT: Duration = Duration::from_secs(2);
/// Frames still on their way when the replies are in.
const LINGER: Duration = Duration::from_millis(200);

/// One peer's probe.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeReport {
    /// The local address the echo left from.
    pub source: IpAddr,
    /// The peer's address it went to.
    pub target: IpAddr,
    /// The peer's WireGuard endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<SocketAddr>,
    /// The canary carried (hex).
    pub canary: String,
    /// Echo requests sent and replies carrying the canary received.
    pub sent: u16,
    /// See `sent`.
    pub received: u16,
    /// What the capture saw meanwhile.
    pub seen: Seen,
    /// When the probe started (RFC 3339).
    pub at: String,
}

impl ProbeReport {
    /// Why the probe failed; empty when it proved the path.
    #[must_use]
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.seen.canary_in_clear > 0 {
            out.push(format!(
                "the canary crossed {} frame(s) in clear (interface index {:?})",
                self.seen.canary_in_clear, self.seen.canary_interfaces
            ));
        }
        if self.received == 0 {
            out.push(format!(
                "no echo reply from {} through the tunnel",
                self.target
            ));
        }
        let encrypted =
            self.seen.wireguard_out > 0 && self.seen.wireguard_in > 0 || self.seen.esp > 0;
        if self.received > 0 && !encrypted {
            out.push(format!(
                "no WireGuard messages seen to and from the peer's endpoint {} during the probe",
                self.endpoint
                    .map_or_else(|| "(unknown)".to_owned(), |e| e.to_string())
            ));
        }
        out
    }
}

/// Probes `target` from `source`, capturing every interface but `skip`.
///
/// # Errors
/// When the raw sockets cannot be opened or bound (not root, or `source`
/// is not an address of this node).
pub fn probe(
    source: IpAddr,
    target: IpAddr,
    endpoint: Option<SocketAddr>,
    skip: Vec<u32>,
) -> Result<ProbeReport> {
    if source.is_ipv4() != target.is_ipv4() {
        bail!("source {source} and target {target} are of different families");
    }
    let canary = fresh_canary()?;
    let at = k8s_openapi::jiff::Timestamp::now().to_string();
    let socket = icmp_socket(source)?;
    let capture = Capture::start(skip, canary.as_bytes().to_vec(), endpoint)?;
    let id = u16::try_from(std::process::id() & 0xffff).unwrap_or(0);
    let target_addr = SockaddrStorage::from(SocketAddr::new(target, 0));
    let mut sent = 0;
    for seq in 0..REQUESTS {
        let request = echo_request(source.is_ipv4(), id, seq, canary.as_bytes());
        if sendto(
            socket.as_raw_fd(),
            &request,
            &target_addr,
            MsgFlags::empty(),
        )
        .is_ok()
        {
            sent += 1;
        }
        std::thread::sleep(BETWEEN);
    }
    let received = replies(&socket, source.is_ipv4(), id, canary.as_bytes(), sent);
    let seen = capture.finish(LINGER);
    Ok(ProbeReport {
        source,
        target,
        endpoint,
        canary,
        sent,
        received,
        seen,
        at,
    })
}

/// A raw ICMP (or ICMPv6) socket bound to `source`, so the echo leaves from
/// the address the peer accepts from this node.
fn icmp_socket(source: IpAddr) -> Result<OwnedFd> {
    let (family, protocol) = if source.is_ipv4() {
        (AddressFamily::Inet, SockProtocol::Icmp)
    } else {
        (AddressFamily::Inet6, SockProtocol::IcmpV6)
    };
    let fd = socket(family, SockType::Raw, SockFlag::SOCK_CLOEXEC, protocol)
        .context("opening a raw ICMP socket (verify's probe needs root: CAP_NET_RAW)")?;
    bind(
        fd.as_raw_fd(),
        &SockaddrStorage::from(SocketAddr::new(source, 0)),
    )
    .with_context(|| format!("binding the probe to {source}, this node's host source"))?;
    setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(0, 100_000))
        .context("setting the probe's receive timeout")?;
    Ok(fd)
}

/// Replies carrying the canary, until `expected` came or [`WAIT`] passed.
fn replies(socket: &OwnedFd, v4: bool, id: u16, canary: &[u8], expected: u16) -> u16 {
    let deadline = Instant::now() + WAIT;
    let mut received = 0;
    let mut buf = [0u8; 2048];
    while received < expected && Instant::now() < deadline {
        let Ok((len, _)) = recvfrom::<SockaddrStorage>(socket.as_raw_fd(), &mut buf) else {
            continue;
        };
        let packet = &buf[..len.min(buf.len())];
        // A raw IPv4 socket hands over the IP header; an ICMPv6 one does not.
        let icmp = if v4 {
            let ihl = usize::from(packet.first().map_or(0, |b| b & 0x0f)) * 4;
            packet.get(ihl..).unwrap_or_default()
        } else {
            packet
        };
        let reply_type = if v4 { 0 } else { 129 };
        if icmp.len() >= 8
            && icmp[0] == reply_type
            && icmp[4..6] == id.to_be_bytes()
            && icmp[8..].windows(canary.len()).any(|w| w == canary)
        {
            received += 1;
        }
    }
    received
}

/// An echo request; IPv4's checksum is ours to fill, the kernel fills ICMPv6's.
fn echo_request(v4: bool, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut packet = vec![if v4 { 8 } else { 128 }, 0, 0, 0];
    packet.extend(id.to_be_bytes());
    packet.extend(seq.to_be_bytes());
    packet.extend(payload);
    if v4 {
        let sum = checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    packet
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(0xffff)
}

/// "wireseal-canary-" and 16 random bytes in hex: never in any packet by chance.
fn fresh_canary() -> Result<String> {
    let mut bytes = [0u8; 16];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").context("opening /dev/urandom")?,
        &mut bytes,
    )
    .context("reading /dev/urandom")?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("wireseal-canary-{hex}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echo_request_sums_to_zero() {
        let packet = echo_request(true, 0x1234, 1, b"wireseal-canary-00");
        assert_eq!(checksum(&packet), 0, "a correct checksum sums to zero");
        assert_eq!(&packet[..2], &[8, 0]);
        let v6 = echo_request(false, 1, 2, b"x");
        assert_eq!(&v6[..4], &[128, 0, 0, 0], "the kernel fills ICMPv6's");
    }

    #[test]
    fn canaries_are_fresh() {
        let (a, b) = (fresh_canary().unwrap(), fresh_canary().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), "wireseal-canary-".len() + 32);
    }
}

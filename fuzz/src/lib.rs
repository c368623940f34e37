//! Shared checks of the fuzz targets: what "well-formed" means for text shown
//! to people and for IP packets handed to a kernel.
#![allow(clippy::missing_panics_doc, reason = "a failed check is a finding")]

use std::io;
use std::net::SocketAddr;

use wireseal_tunnel::device::Network;
use wireseal_tunnel::offload::{fold, sum};

/// The agent's conversion of a Node into the core's view, compiled from the
/// daemon's own source file: it needs only k8s-openapi and the core, and this
/// keeps the agent's Kubernetes client stack out of the fuzz build.
#[path = "../../daemon/src/k8s/node_view.rs"]
pub mod node_view;

/// Panics when `text` holds a control character (a terminal escape, a
/// newline that forges a log line).
pub fn assert_printable(text: &str) {
    if let Some(c) = text.chars().find(|c| c.is_control()) {
        panic!("control character {c:?} in {text:?}");
    }
}

/// The IP header length and whether the packet is IPv6, for a packet whose
/// version nibble is 4 or 6.
#[must_use]
pub fn ip_header(packet: &[u8]) -> Option<(usize, bool)> {
    match packet.first()? >> 4 {
        4 => Some((usize::from(packet[0] & 0xf) * 4, false)),
        6 => Some((40, true)),
        _ => None,
    }
}

/// The length the IP header says the packet has.
#[must_use]
pub fn ip_total_len(packet: &[u8], v6: bool) -> usize {
    if v6 {
        40 + usize::from(u16::from_be_bytes([packet[4], packet[5]]))
    } else {
        usize::from(u16::from_be_bytes([packet[2], packet[3]]))
    }
}

/// True when the IPv4 header checksum verifies (always for IPv6, which has none).
#[must_use]
pub fn ip_checksum_ok(packet: &[u8], ip_len: usize, v6: bool) -> bool {
    v6 || fold(sum(&packet[..ip_len], 0)) == 0xffff
}

/// True when the TCP checksum over the pseudo header and segment verifies.
#[must_use]
pub fn tcp_checksum_ok(packet: &[u8], ip_len: usize, v6: bool) -> bool {
    let addrs = if v6 { &packet[8..40] } else { &packet[12..20] };
    let l4 = &packet[ip_len..];
    fold(sum(l4, sum(addrs, 6 + l4.len() as u64))) == 0xffff
}

/// Sets the IP length fields and recomputes the IPv4 header and TCP
/// checksums of a TCP packet in place, as a sender who wants it accepted
/// would; a no-op for anything else.
pub fn fix_tcp_packet(packet: &mut [u8]) {
    let Some((ip_len, v6)) = ip_header(packet) else {
        return;
    };
    if packet.len() < ip_len + 20 || (!v6 && ip_len < 20) || packet.len() > 65_535 {
        return;
    }
    let len = u16::try_from(packet.len()).unwrap_or(u16::MAX);
    if v6 {
        packet[4..6].copy_from_slice(&(len - 40).to_be_bytes());
        packet[6] = 6;
    } else {
        packet[2..4].copy_from_slice(&len.to_be_bytes());
        packet[9] = 6;
        packet[10..12].fill(0);
        let csum = !fold(sum(&packet[..ip_len], 0));
        packet[10..12].copy_from_slice(&csum.to_be_bytes());
    }
    packet[ip_len + 16..ip_len + 18].fill(0);
    let addrs = if v6 { &packet[8..40] } else { &packet[12..20] };
    let l4_len = (packet.len() - ip_len) as u64;
    let csum = !fold(sum(&packet[ip_len..], sum(addrs, 6 + l4_len)));
    packet[ip_len + 16..ip_len + 18].copy_from_slice(&csum.to_be_bytes());
}

/// Splits fuzzer input into records: a flags byte, a big-endian u16 length,
/// then that many bytes (cut short at the end of the input).
#[must_use]
pub fn records(mut data: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    while data.len() >= 3 {
        let flags = data[0];
        let len = usize::from(u16::from_be_bytes([data[1], data[2]]));
        let end = (3 + len).min(data.len());
        out.push((flags, &data[3..end]));
        data = &data[end..];
    }
    out
}

/// The inverse of [`records`], for the seed corpora.
#[must_use]
pub fn encode_records<'a>(items: impl IntoIterator<Item = (u8, &'a [u8])>) -> Vec<u8> {
    let mut out = Vec::new();
    for (flags, bytes) in items {
        let len = u16::try_from(bytes.len()).expect("a record fits in 64 KiB");
        out.push(flags);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

/// A tunnel device's network without sockets: binds succeed (port 0 gets
/// 40000), sends go nowhere.
pub struct NoNet;

impl Network for NoNet {
    fn bind(&self, port: u16, _: u32) -> io::Result<u16> {
        Ok(if port == 0 { 40000 } else { port })
    }
    fn set_fwmark(&self, _: u32) -> io::Result<()> {
        Ok(())
    }
    fn send_to(&self, _: &[u8], _: SocketAddr) {}
}

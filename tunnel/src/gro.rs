//! GRO for TUN writes: consecutive TCP segments of one flow, decrypted from one burst
//! of datagrams, are merged into a single super-segment and written once with a
//! virtio-net GSO header. The receiving kernel then runs its TCP stack once per ~45
//! segments instead of once per segment, which is where the receive side spends its
//! time. The merge rules follow Linux's own `tcp_gro_receive` (and wireguard-go's
//! `tcpGRO`): same flow, next sequence number, same ACK, window and options, equal
//! segment sizes, no SYN/FIN/RST/URG, PSH closes a merge.
//!
//! A merged packet goes to the kernel with `NEEDS_CSUM`: the kernel trusts it and
//! never sees the segments' own checksums. So, as wireguard-go does, only segments
//! whose IPv4 header and TCP checksums are correct are merged; a corrupt one is
//! written as it came, for the kernel to drop. A merge holds at most
//! [`MAX_SEGMENTS`] segments of at least [`MIN_SEGMENT`] bytes, so a peer cannot
//! make one super-segment that the receiving stack re-splits into thousands.

use crate::offload::{VNET_HDR_LEN, fold, sum};

/// Packets one [`GroBatch`] holds before it must be flushed.
pub const GRO_SLOTS: usize = 64;

/// Most segments in one merged packet (Linux's own GRO stops at 64 as well).
pub const MAX_SEGMENTS: usize = 64;

/// Smallest segment payload that starts a merge. Bulk TCP sends MSS-sized
/// segments (hundreds of bytes at the least); tinier ones are delivered unmerged.
pub const MIN_SEGMENT: usize = 64;

/// Bytes per slot: a virtio-net header plus the largest IP packet.
const SLOT: usize = VNET_HDR_LEN + 65_535;

const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const F_NEEDS_CSUM: u8 = 1;

/// Where a TCP segment's fields are, parsed once when it enters the batch.
#[derive(Clone, Copy, Debug)]
struct Tcp {
    v6: bool,
    ip_len: usize,
    tcp_len: usize,
    seq: u32,
    flags: u8,
}

/// One packet (or merged super-segment) waiting to be written.
#[derive(Clone, Copy, Debug)]
struct Item {
    /// IP packet length (without the virtio-net header).
    len: usize,
    /// Set for TCP segments that may take more payload.
    tcp: Option<Tcp>,
    /// Payload bytes of the first segment (the MSS of the merge).
    seg_size: usize,
    /// Number of segments merged.
    segs: usize,
    /// No further merge (PSH seen, or a shorter segment ended it).
    closed: bool,
}

/// Decrypted packets waiting for the TUN, merged where possible.
pub struct GroBatch {
    data: Vec<u8>,
    items: Vec<Item>,
}

impl Default for GroBatch {
    fn default() -> Self {
        Self {
            data: vec![0; GRO_SLOTS * SLOT],
            items: Vec::with_capacity(GRO_SLOTS),
        }
    }
}

fn parse_tcp(p: &[u8]) -> Option<Tcp> {
    let (v6, ip_len) = match p.first()? >> 4 {
        4 => {
            let ihl = usize::from(p[0] & 0xf) * 4;
            // No IP options, no fragments, protocol TCP.
            let frag = u16::from_be_bytes([*p.get(6)?, *p.get(7)?]) & 0x3fff;
            if ihl != 20 || frag != 0 || *p.get(9)? != 6 {
                return None;
            }
            (false, 20)
        }
        // Only a plain header followed directly by TCP (no extension headers).
        6 if *p.get(6)? == 6 => (true, 40),
        _ => return None,
    };
    let tcp_len = usize::from(p.get(ip_len + 12)? >> 4) * 4;
    if tcp_len < 20 || p.len() < ip_len + tcp_len {
        return None;
    }
    if !v6 && usize::from(u16::from_be_bytes([p[2], p[3]])) != p.len() {
        return None; // the IPv4 length must be the packet's (no trailing bytes)
    }
    if v6 && usize::from(u16::from_be_bytes([p[4], p[5]])) + 40 != p.len() {
        return None;
    }
    let t = &p[ip_len..];
    Some(Tcp {
        v6,
        ip_len,
        tcp_len,
        seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
        flags: t[13],
    })
}

impl GroBatch {
    /// True when no more packets fit.
    #[must_use]
    pub fn is_full(&self) -> bool {
        self.items.len() == GRO_SLOTS
    }

    /// Adds a decrypted packet, merging it into an earlier segment of its flow when
    /// the rules allow. Returns false when the batch is full (flush, then retry).
    pub fn push(&mut self, packet: &[u8]) -> bool {
        if packet.len() > SLOT - VNET_HDR_LEN {
            return true; // cannot be a valid IP packet; drop
        }
        let parsed = parse_tcp(packet);
        let tcp = parsed
            .filter(|t| t.flags & 0x07 == 0 && t.flags & 0x20 == 0)
            .filter(|t| checksums_ok(packet, t));
        if let Some(t) = tcp
            && packet.len() > t.ip_len + t.tcp_len
            && self.try_merge(packet, t)
        {
            return true;
        }
        if self.is_full() {
            return false;
        }
        if let Some(t) = parsed {
            // Nothing of this connection may be merged past this packet (an ACK, a
            // FIN, a gap): that would reorder it.
            self.close_flow(packet, &t);
        }
        let slot = self.items.len() * SLOT;
        self.data[slot + VNET_HDR_LEN..slot + VNET_HDR_LEN + packet.len()].copy_from_slice(packet);
        let seg_size = tcp.map_or(0, |t| packet.len() - t.ip_len - t.tcp_len);
        let head = tcp.filter(|_| seg_size >= MIN_SEGMENT);
        self.items.push(Item {
            len: packet.len(),
            tcp: head,
            seg_size,
            segs: 1,
            closed: head.is_none_or(|t| t.flags & 0x08 != 0),
        });
        true
    }

    fn close_flow(&mut self, packet: &[u8], t: &Tcp) {
        let key = |p: &[u8], t: &Tcp| -> ([u8; 32], [u8; 4]) {
            let mut addrs = [0u8; 32];
            let a = if t.v6 { &p[8..40] } else { &p[12..20] };
            addrs[..a.len()].copy_from_slice(a);
            let mut ports = [0u8; 4];
            ports.copy_from_slice(&p[t.ip_len..t.ip_len + 4]);
            (addrs, ports)
        };
        let mine = key(packet, t);
        for (idx, item) in self.items.iter_mut().enumerate() {
            if let Some(head) = item.tcp
                && !item.closed
                && head.v6 == t.v6
            {
                let slot = idx * SLOT + VNET_HDR_LEN;
                if key(&self.data[slot..slot + item.len], &head) == mine {
                    item.closed = true;
                }
            }
        }
    }

    fn try_merge(&mut self, packet: &[u8], t: Tcp) -> bool {
        let payload = packet.len() - t.ip_len - t.tcp_len;
        // Look back only a few items: a flow's segments arrive close together.
        let n = self.items.len();
        for idx in (n.saturating_sub(8)..n).rev() {
            let item = self.items[idx];
            let Some(head) = item.tcp else { continue };
            if item.closed || head.v6 != t.v6 || head.tcp_len != t.tcp_len {
                continue;
            }
            let slot = idx * SLOT + VNET_HDR_LEN;
            let first = &self.data[slot..slot + item.len];
            if !same_flow(first, packet, &t) {
                continue;
            }
            let merged_payload = item.len - t.ip_len - t.tcp_len;
            #[allow(clippy::cast_possible_truncation)] // sequence numbers wrap
            let expect = head.seq.wrapping_add(merged_payload as u32);
            if expect != t.seq
                || payload > item.seg_size
                || item.len + payload > 65_535
                || item.segs >= MAX_SEGMENTS
            {
                // Same flow but not mergeable: later segments must not jump ahead.
                self.items[idx].closed = true;
                return false;
            }
            let end = slot + item.len;
            self.data[end..end + payload].copy_from_slice(&packet[t.ip_len + t.tcp_len..]);
            let it = &mut self.items[idx];
            it.len += payload;
            it.segs += 1;
            if t.flags & 0x08 != 0 {
                // PSH: carry it over and stop merging into this one.
                self.data[slot + t.ip_len + 13] |= 0x08;
                it.closed = true;
            }
            if payload < it.seg_size || it.segs == MAX_SEGMENTS {
                it.closed = true;
            }
            return true;
        }
        false
    }

    /// Finishes headers and hands every packet (virtio-net header included) to
    /// `write`, then empties the batch.
    pub fn flush(&mut self, mut write: impl FnMut(&[u8])) {
        for (idx, item) in self.items.iter().enumerate() {
            let slot = idx * SLOT;
            let buf = &mut self.data[slot..slot + VNET_HDR_LEN + item.len];
            let (hdr, p) = buf.split_at_mut(VNET_HDR_LEN);
            hdr.fill(0);
            if let (Some(t), true) = (item.tcp, item.segs > 1) {
                finish_merged(hdr, p, t, item.seg_size);
            }
            write(buf);
        }
        self.items.clear();
    }
}

/// The IP length and checksums the receiving kernel verifies per segment. A
/// merged super-segment goes in with `CHECKSUM_PARTIAL` and a fresh IPv4
/// header checksum, so nothing checks its parts again: a segment with a bad
/// checksum (or a length other than its own) is never merged. As wireguard-go
/// does before its TCP GRO.
fn checksums_ok(p: &[u8], t: &Tcp) -> bool {
    let (addrs, ip_ok) = if t.v6 {
        let payload = usize::from(u16::from_be_bytes([p[4], p[5]]));
        (&p[8..40], payload + 40 == p.len())
    } else {
        let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
        (
            &p[12..20],
            total == p.len() && fold(sum(&p[..20], 0)) == 0xffff,
        )
    };
    let l4_len = (p.len() - t.ip_len) as u64;
    ip_ok && fold(sum(&p[t.ip_len..], sum(addrs, 6 + l4_len))) == 0xffff
}

/// Same addresses, ports, ACK, window, TCP options and IP fields that must match.
fn same_flow(first: &[u8], p: &[u8], t: &Tcp) -> bool {
    let (ip, tl) = (t.ip_len, t.tcp_len);
    let ip_same = if t.v6 {
        // Version/class/flow label, hop limit and addresses.
        first[..4] == p[..4] && first[7] == p[7] && first[8..40] == p[8..40]
    } else {
        // TOS, DF, TTL and addresses (ID and checksum legitimately differ).
        first[1] == p[1]
            && first[6] & 0x40 == p[6] & 0x40
            && first[8] == p[8]
            && first[12..20] == p[12..20]
    };
    ip_same
        && first[ip..ip + 4] == p[ip..ip + 4] // ports
        && first[ip + 8..ip + 12] == p[ip + 8..ip + 12] // ack
        && first[ip + 14..ip + 16] == p[ip + 14..ip + 16] // window
        && first[ip + 20..ip + tl] == p[ip + 20..ip + tl] // options
        && first[ip + 13] & !0x08 == p[ip + 13] & !0x08 // flags (PSH aside)
}

/// Rewrites lengths and checksums of a merged super-segment and fills the GSO header.
fn finish_merged(hdr: &mut [u8], p: &mut [u8], t: Tcp, seg_size: usize) {
    let len = p.len();
    let total = u16::try_from(len).unwrap_or(u16::MAX);
    if t.v6 {
        p[4..6].copy_from_slice(&(total - 40).to_be_bytes());
    } else {
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p[10..12].fill(0);
        let csum = !fold(sum(&p[..20], 0));
        p[10..12].copy_from_slice(&csum.to_be_bytes());
    }
    // CHECKSUM_PARTIAL: the field holds the pseudo-header sum, the kernel (or
    // whoever segments it again) completes it.
    let l4_len = (len - t.ip_len) as u64;
    let addrs = if t.v6 { &p[8..40] } else { &p[12..20] };
    let pseudo = fold(sum(addrs, 6 + l4_len));
    p[t.ip_len + 16..t.ip_len + 18].copy_from_slice(&pseudo.to_be_bytes());
    hdr[0] = F_NEEDS_CSUM;
    hdr[1] = if t.v6 { GSO_TCPV6 } else { GSO_TCPV4 };
    let put = |h: &mut [u8], at: usize, v: usize| {
        h[at..at + 2].copy_from_slice(&u16::try_from(v).unwrap_or(u16::MAX).to_ne_bytes());
    };
    put(hdr, 2, t.ip_len + t.tcp_len);
    put(hdr, 4, seg_size);
    put(hdr, 6, t.ip_len);
    put(hdr, 8, 16);
}

#[cfg(test)]
mod tests;

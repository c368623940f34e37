//! TUN offloads through the virtio-net header (`IFF_VNET_HDR` + `TUNSETOFFLOAD`).
//!
//! With TSO enabled the kernel hands the TUN reader one TCP "super-segment" of up to
//! 64 KiB per `read()` instead of ~45 MTU-sized packets, so the local TCP stack and
//! the TUN are crossed once per burst. We cut it into MTU-sized segments here (the
//! work a NIC would do) before encrypting each one. Packets the kernel left with a
//! partial checksum (`NEEDS_CSUM`) get their checksum completed, since the peer's
//! kernel will verify it. The design follows wireguard-go's `tun/offload_linux.go`.

/// Size of `struct virtio_net_hdr` (no `num_buffers`).
pub const VNET_HDR_LEN: usize = 10;

const F_NEEDS_CSUM: u8 = 1;
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const GSO_ECN: u8 = 0x80;

/// The parsed virtio-net header (little-endian on the hosts we run on; the TUN uses the
/// host's byte order unless TUNSETVNETBE/LE says otherwise).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// `VIRTIO_NET_HDR_F_*`.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`.
    pub gso_type: u8,
    /// Length of the headers to copy into every segment.
    pub hdr_len: u16,
    /// Payload bytes per segment (the MSS).
    pub gso_size: u16,
    /// Where checksumming starts (the transport header).
    pub csum_start: u16,
    /// Offset of the checksum field from `csum_start`.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Decodes the first [`VNET_HDR_LEN`] bytes of `buf`.
    #[must_use]
    pub fn decode(buf: &[u8]) -> Option<Self> {
        let b = buf.get(..VNET_HDR_LEN)?;
        let u16_at = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Some(Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }
}

/// Why a packet read from the TUN could not be turned into wire-ready packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitError {
    /// Header fields inconsistent with the packet (never from a sane kernel).
    Malformed,
    /// A GSO type we did not enable (e.g. UDP).
    Unsupported,
    /// The output buffer is too small.
    NoRoom,
}

/// Ones'-complement sum of `data` (RFC 1071), not yet folded or inverted.
#[must_use]
pub fn sum(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        // Adding 8 bytes as two 32-bit halves keeps carries inside the u64.
        acc += u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
        acc += u64::from(u32::from_be_bytes([c[4], c[5], c[6], c[7]]));
    }
    let mut rest = chunks.remainder().chunks_exact(2);
    for c in &mut rest {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = rest.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Folds a sum to 16 bits.
#[must_use]
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    #[allow(clippy::cast_possible_truncation)] // < 2^16 after folding
    let folded = acc as u16;
    folded
}

/// The TCP/UDP pseudo-header sum for a packet with the given IP version.
fn pseudo_sum(packet: &[u8], v6: bool, proto: u8, l4_len: usize) -> u64 {
    let addrs = if v6 { &packet[8..40] } else { &packet[12..20] };
    sum(addrs, u64::from(proto) + l4_len as u64)
}

/// Completes a partial checksum (`NEEDS_CSUM`): the field already holds the folded
/// pseudo-header sum, so summing from `csum_start` to the end and inverting finishes it.
fn complete_checksum(packet: &mut [u8], hdr: &VnetHdr) -> Result<(), SplitError> {
    let start = usize::from(hdr.csum_start);
    let field = start + usize::from(hdr.csum_offset);
    if field + 2 > packet.len() {
        return Err(SplitError::Malformed);
    }
    let csum = !fold(sum(&packet[start..], 0));
    packet[field..field + 2].copy_from_slice(&csum.to_be_bytes());
    Ok(())
}

/// Turns one TUN read (`vnet header + packet`) into one or more plain IP packets in
/// `out`, back to back, recording each packet's `(offset, len)` in `segs`.
///
/// # Errors
/// [`SplitError`]; the caller drops the packet.
pub fn split(
    read: &mut [u8],
    out: &mut [u8],
    segs: &mut Vec<(usize, usize)>,
) -> Result<(), SplitError> {
    segs.clear();
    let hdr = VnetHdr::decode(read).ok_or(SplitError::Malformed)?;
    let packet = &mut read[VNET_HDR_LEN..];
    if packet.is_empty() {
        return Err(SplitError::Malformed);
    }
    let gso = hdr.gso_type & !GSO_ECN;
    if gso == GSO_NONE {
        if hdr.flags & F_NEEDS_CSUM != 0 {
            complete_checksum(packet, &hdr)?;
        }
        let dst = out.get_mut(..packet.len()).ok_or(SplitError::NoRoom)?;
        dst.copy_from_slice(packet);
        segs.push((0, packet.len()));
        return Ok(());
    }
    let v6 = match (gso, packet[0] >> 4) {
        (GSO_TCPV4, 4) => false,
        (GSO_TCPV6, 6) => true,
        (GSO_TCPV4 | GSO_TCPV6, _) => return Err(SplitError::Malformed),
        _ => return Err(SplitError::Unsupported),
    };
    split_tcp(packet, &hdr, v6, out, segs)
}

fn split_tcp(
    packet: &[u8],
    hdr: &VnetHdr,
    v6: bool,
    out: &mut [u8],
    segs: &mut Vec<(usize, usize)>,
) -> Result<(), SplitError> {
    let ip_len = usize::from(hdr.csum_start);
    let min_ip = if v6 { 40 } else { 20 };
    if ip_len < min_ip || ip_len + 20 > packet.len() {
        return Err(SplitError::Malformed);
    }
    // Each segment's IPv4 checksum covers `ip_len` bytes, and the receiver
    // checks the header its IHL gives: they must be the same.
    if !v6 && usize::from(packet[0] & 0xf) * 4 != ip_len {
        return Err(SplitError::Malformed);
    }
    let tcp_len = usize::from(packet[ip_len + 12] >> 4) * 4;
    let headers = ip_len + tcp_len;
    let mss = usize::from(hdr.gso_size);
    if tcp_len < 20 || headers > packet.len() || mss == 0 {
        return Err(SplitError::Malformed);
    }
    let payload = &packet[headers..];
    let seq0 = u32::from_be_bytes([
        packet[ip_len + 4],
        packet[ip_len + 5],
        packet[ip_len + 6],
        packet[ip_len + 7],
    ]);
    let id0 = u16::from_be_bytes([packet[4], packet[5]]);
    let count = payload.len().div_ceil(mss).max(1);
    let mut at = 0usize;
    for i in 0..count {
        let chunk = &payload[(i * mss).min(payload.len())..((i + 1) * mss).min(payload.len())];
        let len = headers + chunk.len();
        let seg = out.get_mut(at..at + len).ok_or(SplitError::NoRoom)?;
        seg[..headers].copy_from_slice(&packet[..headers]);
        seg[headers..].copy_from_slice(chunk);
        let total = u16::try_from(len).map_err(|_| SplitError::Malformed)?;
        if v6 {
            seg[4..6].copy_from_slice(&(total - 40).to_be_bytes());
        } else {
            seg[2..4].copy_from_slice(&total.to_be_bytes());
            #[allow(clippy::cast_possible_truncation)] // IDs wrap by design
            let id = id0.wrapping_add(i as u16);
            seg[4..6].copy_from_slice(&id.to_be_bytes());
            seg[10..12].fill(0);
            let csum = !fold(sum(&seg[..ip_len], 0));
            seg[10..12].copy_from_slice(&csum.to_be_bytes());
        }
        let tcp = &mut seg[ip_len..];
        #[allow(clippy::cast_possible_truncation)] // sequence numbers wrap by design
        let seq = seq0.wrapping_add((i * mss) as u32);
        tcp[4..8].copy_from_slice(&seq.to_be_bytes());
        if i + 1 < count {
            tcp[13] &= !(0x01 | 0x08); // FIN and PSH only on the last segment
        }
        if i > 0 {
            tcp[13] &= !0x80; // CWR only on the first
        }
        tcp[16..18].fill(0);
        let l4_len = len - ip_len;
        let csum = !fold(sum(&seg[ip_len..], pseudo_sum(seg, v6, 6, l4_len)));
        seg[ip_len + 16..ip_len + 18].copy_from_slice(&csum.to_be_bytes());
        segs.push((at, len));
        at += len;
    }
    Ok(())
}

#[cfg(test)]
mod tests;

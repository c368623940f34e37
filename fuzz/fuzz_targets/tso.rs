//! What the TUN hands the tunnel with TSO on (a virtio-net header and a
//! packet; the local kernel writes it, but a bug must not panic the datapath)
//! through the split into wire-sized segments: no panic, and when it succeeds
//! every segment is a packet the peer's kernel accepts (IP length, IPv4 header
//! and TCP checksums) and the segments' payloads, in order, are the original's.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wireseal_fuzz::{ip_checksum_ok, ip_header, ip_total_len, tcp_checksum_ok};
use wireseal_tunnel::offload::{VNET_HDR_LEN, VnetHdr, split};

fuzz_target!(|data: &[u8]| {
    let Some(hdr) = VnetHdr::decode(data) else {
        return;
    };
    let mut read = data.to_vec();
    let mut out = vec![0u8; 256 * 1024];
    let mut segs = Vec::new();
    if split(&mut read, &mut out, &mut segs).is_err() {
        return;
    }
    let packet = &read[VNET_HDR_LEN..];
    assert!(!segs.is_empty());
    if hdr.gso_type & 0x7f == 0 {
        // No segmentation: the packet as read (its checksum completed).
        assert_eq!(segs, vec![(0, packet.len())]);
        assert_eq!(&out[..packet.len()], packet);
        return;
    }
    let v6 = packet[0] >> 4 == 6;
    let ip_len = usize::from(hdr.csum_start);
    let tcp_len = usize::from(packet[ip_len + 12] >> 4) * 4;
    let headers = ip_len + tcp_len;
    let mss = usize::from(hdr.gso_size);
    let mut payload = Vec::new();
    let mut expect_at = 0;
    for (i, (at, len)) in segs.iter().enumerate() {
        assert_eq!(*at, expect_at, "segments back to back");
        expect_at += len;
        let seg = &out[*at..at + len];
        assert_eq!(ip_total_len(seg, v6), seg.len(), "IP length of segment {i}");
        // The receiver checks the header the IHL gives, whatever csum_start said.
        let (ihl, _) = ip_header(seg).expect("an IP packet");
        assert!(
            seg.len() >= ihl && ip_checksum_ok(seg, ihl, v6),
            "IPv4 checksum of segment {i}"
        );
        assert!(
            tcp_checksum_ok(seg, ip_len, v6),
            "TCP checksum of segment {i}"
        );
        assert!(seg.len() - headers <= mss, "segment {i} over the MSS");
        if i + 1 < segs.len() {
            assert_eq!(
                seg.len() - headers,
                mss,
                "short segment {i} before the last"
            );
        }
        let seq = u32::from_be_bytes([
            seg[ip_len + 4],
            seg[ip_len + 5],
            seg[ip_len + 6],
            seg[ip_len + 7],
        ]);
        let seq0 = u32::from_be_bytes([
            packet[ip_len + 4],
            packet[ip_len + 5],
            packet[ip_len + 6],
            packet[ip_len + 7],
        ]);
        let sent = u32::try_from(payload.len()).expect("under 64 KiB");
        assert_eq!(
            seq,
            seq0.wrapping_add(sent),
            "sequence number of segment {i}"
        );
        payload.extend_from_slice(&seg[headers..]);
    }
    assert_eq!(payload, &packet[headers..], "payload changed");
});

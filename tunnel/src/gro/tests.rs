//! Merging rules and the headers of a merged super-segment.

use super::*;

fn seg(seq: u32, payload: usize, flags: u8, sport: u16) -> Vec<u8> {
    let mut p = vec![0u8; 20 + 32];
    p[0] = 0x45;
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&[10, 0, 0, 1]);
    p[16..20].copy_from_slice(&[10, 0, 0, 2]);
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&5201u16.to_be_bytes());
    p[24..28].copy_from_slice(&seq.to_be_bytes());
    p[28..32].copy_from_slice(&77u32.to_be_bytes());
    p[32] = 8 << 4; // 12 bytes of options (timestamps)
    p[33] = flags;
    p[34..36].copy_from_slice(&512u16.to_be_bytes());
    p[40..52].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 3]);
    p.extend((0..payload).map(|i| (seq as usize + i) as u8));
    let total = u16::try_from(p.len()).unwrap();
    p[2..4].copy_from_slice(&total.to_be_bytes());
    set_checksums(&mut p);
    p
}

/// Correct IPv4 header and TCP checksums, as a sender writes them.
fn set_checksums(p: &mut [u8]) {
    p[10..12].fill(0);
    let ip = !fold(sum(&p[..20], 0));
    p[10..12].copy_from_slice(&ip.to_be_bytes());
    p[36..38].fill(0);
    let l4 = (p.len() - 20) as u64;
    let tcp = !fold(sum(&p[20..], sum(&p[12..20], 6 + l4)));
    p[36..38].copy_from_slice(&tcp.to_be_bytes());
}

fn written(batch: &mut GroBatch) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    batch.flush(|b| out.push(b.to_vec()));
    out
}

#[test]
fn consecutive_segments_merge_into_one_gso_packet() {
    let mut b = GroBatch::default();
    for i in 0..3u32 {
        assert!(b.push(&seg(1000 + i * 100, 100, 0x10, 1)));
    }
    assert!(b.push(&seg(1300, 40, 0x18, 1))); // shorter, with PSH: ends the merge
    let out = written(&mut b);
    assert_eq!(out.len(), 1);
    let (hdr, p) = out[0].split_at(VNET_HDR_LEN);
    assert_eq!(hdr[0], F_NEEDS_CSUM);
    assert_eq!(hdr[1], GSO_TCPV4);
    assert_eq!(u16::from_ne_bytes([hdr[2], hdr[3]]), 52, "hdr_len");
    assert_eq!(u16::from_ne_bytes([hdr[4], hdr[5]]), 100, "gso_size");
    assert_eq!(u16::from_ne_bytes([hdr[6], hdr[7]]), 20, "csum_start");
    assert_eq!(u16::from_ne_bytes([hdr[8], hdr[9]]), 16, "csum_offset");
    assert_eq!(p.len(), 52 + 340);
    assert_eq!(usize::from(u16::from_be_bytes([p[2], p[3]])), p.len());
    assert_eq!(fold(sum(&p[..20], 0)), 0xffff, "IPv4 header checksum");
    assert_eq!(p[33] & 0x08, 0x08, "PSH carried over");
    let payload: Vec<u8> = (0..340).map(|i| (1000 + i) as u8).collect();
    assert_eq!(&p[52..], &payload[..]);
    let pseudo = fold(sum(&p[12..20], 6 + (p.len() - 20) as u64));
    assert_eq!(
        u16::from_be_bytes([p[36], p[37]]),
        pseudo,
        "partial checksum"
    );
}

#[test]
fn gaps_other_flows_and_control_packets_do_not_merge() {
    let mut b = GroBatch::default();
    b.push(&seg(0, 100, 0x10, 1));
    b.push(&seg(0, 100, 0x10, 2)); // another flow
    b.push(&seg(100, 100, 0x10, 1)); // merges with the first
    b.push(&seg(300, 100, 0x10, 2)); // gap in flow 2: separate, and closes flow 2
    b.push(&seg(200, 0, 0x11, 1)); // FIN: never merged, closes flow 1
    b.push(&seg(200, 100, 0x10, 1)); // must not jump ahead of the FIN
    let out = written(&mut b);
    let sizes: Vec<usize> = out.iter().map(|o| o.len() - VNET_HDR_LEN).collect();
    assert_eq!(sizes, vec![252, 152, 152, 52, 152]);
    // Unmerged packets go out unchanged behind an all-zero header.
    assert_eq!(out[1][..VNET_HDR_LEN], [0; VNET_HDR_LEN]);
    assert_eq!(&out[1][VNET_HDR_LEN..], &seg(0, 100, 0x10, 2)[..]);
}

#[test]
fn non_tcp_and_garbage_pass_through() {
    let mut b = GroBatch::default();
    let udp = {
        let mut p = seg(0, 10, 0x10, 1);
        p[9] = 17;
        p
    };
    assert!(b.push(&udp));
    assert!(b.push(&[0x60]));
    assert!(b.push(&[]));
    let out = written(&mut b);
    assert_eq!(out.len(), 3);
    assert_eq!(&out[0][VNET_HDR_LEN..], &udp[..]);
}

#[test]
fn fills_up_and_asks_for_a_flush() {
    let mut b = GroBatch::default();
    for i in 0..GRO_SLOTS {
        assert!(b.push(&seg(0, 10, 0x10, u16::try_from(i).unwrap())));
    }
    assert!(b.is_full());
    assert!(!b.push(&seg(0, 10, 0x10, 9999)));
    assert_eq!(written(&mut b).len(), GRO_SLOTS);
}

#[test]
fn segments_with_a_bad_checksum_are_never_merged() {
    let mut b = GroBatch::default();
    b.push(&seg(0, 100, 0x10, 1));
    let mut bad = seg(100, 100, 0x10, 1);
    bad[60] ^= 0xff; // payload corrupted after the sender's checksum
    b.push(&bad);
    // Nothing merges past it either: that would reorder the flow.
    b.push(&seg(200, 100, 0x10, 1));
    let mut bad_ip = seg(0, 100, 0x10, 2);
    bad_ip[8] = 63; // TTL changed without the header checksum
    b.push(&bad_ip);
    b.push(&seg(100, 100, 0x10, 2));
    let out = written(&mut b);
    assert_eq!(out.len(), 5, "every packet on its own");
    // The corrupt ones go to the kernel as they came, without NEEDS_CSUM, so the
    // kernel verifies and drops them.
    assert_eq!(out[1][..VNET_HDR_LEN], [0; VNET_HDR_LEN]);
    assert_eq!(&out[1][VNET_HDR_LEN..], &bad[..]);
    assert_eq!(&out[3][VNET_HDR_LEN..], &bad_ip[..]);
}

#[test]
fn a_merge_holds_at_most_64_segments() {
    let mut b = GroBatch::default();
    for i in 0..65u32 {
        assert!(b.push(&seg(i * 100, 100, 0x10, 1)));
    }
    let out = written(&mut b);
    assert_eq!(out.len(), 2);
    let (hdr, p) = out[0].split_at(VNET_HDR_LEN);
    assert_eq!(hdr[1], GSO_TCPV4);
    assert_eq!(p.len(), 52 + MAX_SEGMENTS * 100);
    // The 65th starts the next packet, in order.
    let second = &out[1][VNET_HDR_LEN..];
    assert_eq!(
        u32::from_be_bytes([second[24], second[25], second[26], second[27]]),
        6400
    );
}

#[test]
fn tiny_segments_are_not_merged() {
    let mut b = GroBatch::default();
    for i in 0..10u32 {
        assert!(b.push(&seg(i * 8, 8, 0x10, 1)));
    }
    let out = written(&mut b);
    assert_eq!(out.len(), 10);
    assert!(out.iter().all(|o| o[..VNET_HDR_LEN] == [0; VNET_HDR_LEN]));
}

#[test]
fn a_length_field_that_disagrees_with_the_packet_is_not_merged() {
    let mut b = GroBatch::default();
    let mut padded = seg(0, 96, 0x10, 1);
    padded.extend_from_slice(&[0; 4]); // trailing bytes beyond the IPv4 length
    b.push(&padded);
    // Taken for payload, the padding would land in the stream as data.
    b.push(&seg(100, 100, 0x10, 1));
    assert_eq!(written(&mut b).len(), 2);
}

#[test]
fn random_packets_never_panic() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut b = GroBatch::default();
    for i in 0..20_000u32 {
        // Start from a valid segment and corrupt a few bytes, so the parser gets far.
        let mut p = seg(
            i.wrapping_mul(100),
            (next() % 200) as usize,
            0x10,
            (i % 3) as u16,
        );
        for _ in 0..(next() % 4) {
            let at = (next() as usize) % p.len();
            p[at] = next() as u8;
        }
        p.truncate((next() as usize) % (p.len() + 1));
        if !b.push(&p) {
            b.flush(|_| {});
            assert!(b.push(&p));
        }
    }
    b.flush(|buf| assert!(buf.len() >= VNET_HDR_LEN));
}

/// Found by fuzzing (fuzz/, target gro): a segment whose TCP checksum is
/// wrong was merged, and the merged packet's fresh checksum made the kernel
/// take its bytes. Nor may a bad IPv4 header checksum or length be merged.
#[test]
fn segments_the_kernel_would_drop_are_never_merged() {
    let bad_tcp = {
        let mut p = seg(1100, 100, 0x10, 1);
        p[60] ^= 0xff; // payload changed after the checksum
        p
    };
    let bad_ip = {
        let mut p = seg(1100, 100, 0x10, 1);
        p[8] = 63; // TTL changed after the checksum
        p
    };
    let long = {
        let mut p = seg(1100, 100, 0x10, 1);
        p[2..4].copy_from_slice(&100u16.to_be_bytes()); // shorter than the packet
        p
    };
    for bad in [bad_tcp, bad_ip, long] {
        let mut b = GroBatch::default();
        assert!(b.push(&seg(1000, 100, 0x10, 1)));
        assert!(b.push(&bad));
        let out = written(&mut b);
        assert_eq!(out.len(), 2, "merged a segment the kernel drops");
        assert_eq!(out[0][..VNET_HDR_LEN], [0; VNET_HDR_LEN]);
        assert_eq!(&out[1][VNET_HDR_LEN..], &bad[..], "passed on unchanged");
    }
}

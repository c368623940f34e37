//! Splitting checked against an independent checksum verification.

use super::*;

fn verify(data: &[u8], seed: u64) -> bool {
    fold(sum(data, seed)) == 0xffff
}

fn tso_packet(v6: bool, payload: &[u8], mss: u16, flags: u8) -> Vec<u8> {
    let ip_len = if v6 { 40 } else { 20 };
    let mut p = vec![0u8; ip_len + 20];
    if v6 {
        p[0] = 0x60;
        p[6] = 6;
        p[7] = 64;
        p[8..24].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        p[24..40].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    } else {
        p[0] = 0x45;
        p[4..6].copy_from_slice(&0xfff0u16.to_be_bytes()); // ID wraps during the split
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
    }
    let t = ip_len;
    p[t..t + 2].copy_from_slice(&5201u16.to_be_bytes());
    p[t + 2..t + 4].copy_from_slice(&40000u16.to_be_bytes());
    p[t + 4..t + 8].copy_from_slice(&0xffff_f000u32.to_be_bytes()); // seq wraps too
    p[t + 12] = 5 << 4;
    p[t + 13] = flags;
    p.extend_from_slice(payload);
    let mut hdr = vec![0u8; VNET_HDR_LEN];
    hdr[0] = F_NEEDS_CSUM;
    hdr[1] = if v6 { GSO_TCPV6 } else { GSO_TCPV4 };
    hdr[2..4].copy_from_slice(&u16::try_from(ip_len + 20).unwrap().to_ne_bytes());
    hdr[4..6].copy_from_slice(&mss.to_ne_bytes());
    hdr[6..8].copy_from_slice(&u16::try_from(ip_len).unwrap().to_ne_bytes());
    hdr[8..10].copy_from_slice(&16u16.to_ne_bytes());
    hdr.extend_from_slice(&p);
    hdr
}

fn check_split(v6: bool) {
    let payload: Vec<u8> = (0..3500u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut read = tso_packet(v6, &payload, 1000, 0x80 | 0x10 | 0x08 | 0x01);
    let mut out = vec![0u8; 1 << 16];
    let mut segs = Vec::new();
    split(&mut read, &mut out, &mut segs).unwrap();
    assert_eq!(segs.len(), 4);
    let ip_len = if v6 { 40 } else { 20 };
    let mut joined = Vec::new();
    for (i, &(off, len)) in segs.iter().enumerate() {
        let seg = &out[off..off + len];
        let chunk = if i < 3 { 1000 } else { 500 };
        assert_eq!(len, ip_len + 20 + chunk);
        if v6 {
            assert_eq!(usize::from(u16::from_be_bytes([seg[4], seg[5]])), len - 40);
        } else {
            assert_eq!(usize::from(u16::from_be_bytes([seg[2], seg[3]])), len);
            assert_eq!(
                u16::from_be_bytes([seg[4], seg[5]]),
                0xfff0u16.wrapping_add(i as u16)
            );
            assert!(verify(&seg[..20], 0), "IPv4 header checksum of segment {i}");
        }
        let tcp = &seg[ip_len..];
        let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
        assert_eq!(seq, 0xffff_f000u32.wrapping_add(1000 * i as u32));
        let flags = tcp[13];
        assert_eq!(flags & 0x10, 0x10, "ACK everywhere");
        assert_eq!(flags & 0x80 != 0, i == 0, "CWR only first");
        assert_eq!(flags & 0x09 != 0, i == 3, "PSH/FIN only last");
        let addrs = if v6 { &seg[8..40] } else { &seg[12..20] };
        let pseudo = sum(addrs, 6 + tcp.len() as u64);
        assert!(verify(tcp, pseudo), "TCP checksum of segment {i}");
        joined.extend_from_slice(&tcp[20..]);
    }
    assert_eq!(joined, payload);
}

#[test]
fn splits_tso_v4() {
    check_split(false);
}

#[test]
fn splits_tso_v6() {
    check_split(true);
}

#[test]
fn completes_a_partial_udp_checksum() {
    // UDP over IPv4 with the pseudo-header sum pre-seeded, as the kernel leaves it.
    let mut p = vec![
        0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ];
    let payload = b"odd-length payload!";
    let udp_len = 8 + payload.len();
    p.extend_from_slice(&[0x12, 0x34, 0x00, 0x35]);
    p.extend_from_slice(&u16::try_from(udp_len).unwrap().to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    let total = u16::try_from(p.len()).unwrap();
    p[2..4].copy_from_slice(&total.to_be_bytes());
    let seed = fold(sum(&p[12..20], 17 + udp_len as u64));
    p[26..28].copy_from_slice(&seed.to_be_bytes());
    let mut read = vec![F_NEEDS_CSUM, GSO_NONE, 0, 0, 0, 0];
    read.extend_from_slice(&20u16.to_ne_bytes());
    read.extend_from_slice(&6u16.to_ne_bytes());
    read.extend_from_slice(&p);
    let mut out = vec![0u8; 2048];
    let mut segs = Vec::new();
    split(&mut read, &mut out, &mut segs).unwrap();
    let seg = &out[..segs[0].1];
    assert!(verify(&seg[20..], sum(&seg[12..20], 17 + udp_len as u64)));
}

#[test]
fn rejects_garbage_without_panicking() {
    let mut out = vec![0u8; 4096];
    let mut segs = Vec::new();
    for len in 0..80 {
        for fill in [0u8, 0xff, 0x45, 0x01, 0x04] {
            let mut read = vec![fill; len];
            let _ = split(&mut read, &mut out, &mut segs);
        }
    }
    // A TSO header with a zero MSS or a transport offset past the end is refused.
    let mut read = tso_packet(false, &[1; 100], 0, 0x10);
    assert_eq!(
        split(&mut read, &mut out, &mut segs),
        Err(SplitError::Malformed)
    );
    let mut read = tso_packet(false, &[1; 100], 10, 0x10);
    read[6..8].copy_from_slice(&5000u16.to_ne_bytes());
    assert_eq!(
        split(&mut read, &mut out, &mut segs),
        Err(SplitError::Malformed)
    );
    // Too small an output buffer is NoRoom, not a panic.
    let mut read = tso_packet(true, &[1; 3000], 100, 0x10);
    let mut tiny = vec![0u8; 500];
    assert_eq!(
        split(&mut read, &mut tiny, &mut segs),
        Err(SplitError::NoRoom)
    );
}

/// Found by fuzzing (fuzz/, target tso): a header whose IHL disagreed with
/// `csum_start` was split into segments whose IPv4 checksum the receiver
/// computes over other bytes, and drops.
#[test]
fn an_ihl_other_than_csum_start_is_malformed() {
    let payload = [7u8; 3000];
    let mut read = tso_packet(false, &payload, 1000, 0x10);
    read[VNET_HDR_LEN] = 0x41; // IHL 1 (4 bytes); csum_start says 20
    let mut out = vec![0u8; 1 << 16];
    let mut segs = Vec::new();
    assert_eq!(
        split(&mut read, &mut out, &mut segs),
        Err(SplitError::Malformed)
    );
    read[VNET_HDR_LEN] = 0x46; // IHL 6 (24 bytes)
    assert_eq!(
        split(&mut read, &mut out, &mut segs),
        Err(SplitError::Malformed)
    );
}

//! Attacker-chosen inner packets, encrypted by a peer, decapsulated by the
//! tunnel and merged by GRO as the receive path does: every packet written to
//! the TUN is either one that arrived, unchanged, or a super-segment the
//! kernel accepts (lengths, checksums and the virtio-net header consistent)
//! made only of segments the kernel would have accepted one by one, with no
//! byte lost or added.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use wireseal_fuzz::{
    NoNet, fix_tcp_packet, ip_checksum_ok, ip_header, ip_total_len, records, tcp_checksum_ok,
};
use wireseal_keymgr::PrivateKey;
use wireseal_tunnel::device::{Device, MAX_DATAGRAM, Sink};
use wireseal_tunnel::gro::GroBatch;
use wireseal_tunnel::offload::{VNET_HDR_LEN, VnetHdr, split};
use wireseal_tunnel::uapi::{Request, parse_request};

const A_ADDR: &str = "192.0.2.1:51830";
const B_ADDR: &str = "192.0.2.2:51830";

#[derive(Default)]
struct Mem {
    tunnel: Vec<Vec<u8>>,
    network: Vec<Vec<u8>>,
}

impl Sink for Mem {
    fn to_tunnel(&mut self, packet: &[u8]) {
        self.tunnel.push(packet.to_vec());
    }
    fn to_network(&mut self, datagram: &[u8], _: SocketAddr) {
        self.network.push(datagram.to_vec());
    }
}

fn hex(secret: [u8; 32]) -> (String, String) {
    let private: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let public = PrivateKey::from_bytes(secret)
        .expect("a usable key")
        .public_key()
        .to_hex();
    (private, public)
}

fn configure(device: &Device, own: [u8; 32], peer: [u8; 32], endpoint: &str) {
    let text = format!(
        "set=1\nprivate_key={}\npublic_key={}\nendpoint={endpoint}\n\
         allowed_ip=0.0.0.0/0\nallowed_ip=::/0",
        hex(own).0,
        hex(peer).1
    );
    let Ok(Request::Set(request)) = parse_request(text.lines()) else {
        panic!("bad set request");
    };
    device.apply(request).expect("the pair configures");
}

/// A (the attacker's peer) and B (the tunnel under test), both accepting any
/// inner address from the other, with a completed handshake.
struct Pair {
    a: Device,
    b: Device,
    scratch: Vec<u8>,
    out: Vec<u8>,
    /// Reused: a batch is 4 MiB, and `flush` leaves it empty.
    batch: GroBatch,
}

impl Pair {
    fn new() -> Self {
        let (ka, kb) = ([1u8; 32], [2u8; 32]);
        let pair = Self {
            a: Device::new(Box::new(NoNet)),
            b: Device::new(Box::new(NoNet)),
            scratch: vec![0; MAX_DATAGRAM],
            out: vec![0; MAX_DATAGRAM],
            batch: GroBatch::default(),
        };
        configure(&pair.a, ka, kb, B_ADDR);
        configure(&pair.b, kb, ka, A_ADDR);
        pair
    }

    /// Shuttles a packet from A to B, handshaking first when needed; returns
    /// what reached B's TUN.
    fn send(&mut self, packet: &[u8]) -> Vec<Vec<u8>> {
        let (a_addr, b_addr) = (A_ADDR.parse().expect("addr"), B_ADDR.parse().expect("addr"));
        let mut to_b = Vec::new();
        if let Some((len, _)) = self.a.read().encapsulate(packet, &mut self.out) {
            to_b.push(self.out[..len].to_vec());
        }
        let mut delivered = Vec::new();
        for _ in 0..6 {
            let mut at_b = Mem::default();
            for datagram in to_b.drain(..) {
                self.b
                    .read()
                    .decapsulate(a_addr, &datagram, &mut self.scratch, &mut at_b);
            }
            delivered.extend(at_b.tunnel);
            let mut at_a = Mem::default();
            for datagram in at_b.network {
                self.a
                    .read()
                    .decapsulate(b_addr, &datagram, &mut self.scratch, &mut at_a);
            }
            to_b = at_a.network;
            if to_b.is_empty() {
                break;
            }
        }
        delivered
    }
}

fn pair() -> &'static Mutex<Pair> {
    static PAIR: OnceLock<Mutex<Pair>> = OnceLock::new();
    PAIR.get_or_init(|| {
        let mut pair = Pair::new();
        // The handshake, so the inputs are data packets from the start.
        let hello = [
            0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        pair.send(&hello);
        Mutex::new(pair)
    })
}

/// One segment of a flow as the peer's kernel would see it.
#[derive(PartialEq, Eq, Debug)]
struct Segment<'a> {
    addrs: &'a [u8],
    ports: &'a [u8],
    seq: &'a [u8],
    payload: &'a [u8],
}

fn segment(p: &[u8]) -> Option<Segment<'_>> {
    let (ip_len, v6) = ip_header(p)?;
    if ip_len < 20 || p.len() < ip_len + 20 {
        return None;
    }
    let tcp_len = usize::from(p[ip_len + 12] >> 4) * 4;
    if tcp_len < 20 || p.len() < ip_len + tcp_len {
        return None;
    }
    Some(Segment {
        addrs: if v6 { &p[8..40] } else { &p[12..20] },
        ports: &p[ip_len..ip_len + 4],
        seq: &p[ip_len + 4..ip_len + 8],
        payload: &p[ip_len + tcp_len..],
    })
}

fn check_merged(buf: &[u8], delivered: &[Vec<u8>]) -> usize {
    let hdr = VnetHdr::decode(buf).expect("a virtio-net header");
    let p = &buf[VNET_HDR_LEN..];
    let (ip_len, v6) = ip_header(p).expect("a merged IP packet");
    // What the kernel's virtio_net_hdr_to_skb and IP input insist on.
    assert_eq!(hdr.flags, 1, "NEEDS_CSUM");
    assert_eq!(
        hdr.gso_type,
        if v6 { 4 } else { 1 },
        "GSO type of the version"
    );
    assert_eq!(usize::from(hdr.csum_start), ip_len);
    assert_eq!(hdr.csum_offset, 16);
    let tcp_len = usize::from(p[ip_len + 12] >> 4) * 4;
    assert_eq!(usize::from(hdr.hdr_len), ip_len + tcp_len);
    assert!(hdr.gso_size > 0);
    assert!(
        p.len() - ip_len - tcp_len > usize::from(hdr.gso_size),
        "one segment only"
    );
    assert_eq!(ip_total_len(p, v6), p.len(), "IP length");
    assert!(ip_checksum_ok(p, ip_len, v6), "IPv4 header checksum");
    // Cut it up again as the kernel's GSO does: each segment must be one that
    // arrived, in order, and one the kernel would have taken on its own.
    let mut read = buf.to_vec();
    let mut out = vec![0u8; 2 * buf.len() + 64 * 64];
    let mut segs = Vec::new();
    split(&mut read, &mut out, &mut segs).expect("the kernel can segment it");
    let mut at = 0;
    for (offset, len) in &segs {
        let piece = &out[*offset..offset + len];
        assert!(tcp_checksum_ok(piece, ip_len, v6));
        // The first packet after the previous piece's that carries this
        // piece and that the kernel would have taken (a copy with a bad
        // checksum may have arrived too, and stayed unmerged).
        let accepted = |d: &Vec<u8>| {
            ip_total_len(d, v6) == d.len()
                && ip_checksum_ok(d, ip_len, v6)
                && tcp_checksum_ok(d, ip_len, v6)
        };
        let source = delivered[at..]
            .iter()
            .position(|d| segment(d).is_some() && segment(d) == segment(piece) && accepted(d))
            .map(|i| at + i)
            .unwrap_or_else(|| {
                panic!(
                    "merged segment {:?} never arrived with valid lengths and checksums",
                    segment(piece)
                )
            });
        at = source + 1;
    }
    segs.len()
}

fuzz_target!(|data: &[u8]| {
    let mut pair = pair()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut delivered = Vec::new();
    for (flags, bytes) in records(data) {
        let mut packet = bytes.to_vec();
        if flags & 1 != 0 {
            fix_tcp_packet(&mut packet);
        }
        delivered.extend(pair.send(&packet));
    }
    let batch = &mut pair.batch;
    let mut written: Vec<Vec<u8>> = Vec::new();
    for packet in &delivered {
        if !batch.push(packet) {
            batch.flush(|buf| written.push(buf.to_vec()));
            assert!(batch.push(packet), "an empty batch takes a packet");
        }
    }
    batch.flush(|buf| written.push(buf.to_vec()));
    drop(pair);
    let mut count = 0;
    for buf in &written {
        if buf[..VNET_HDR_LEN] == [0; VNET_HDR_LEN] {
            let p = &buf[VNET_HDR_LEN..];
            assert!(
                delivered.iter().any(|d| d == p),
                "a packet that never arrived"
            );
            count += 1;
        } else {
            count += check_merged(buf, &delivered);
        }
    }
    assert_eq!(count, delivered.len(), "packets lost or added");
});

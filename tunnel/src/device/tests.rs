//! Two devices wired in memory: handshake, data, roaming, the source check.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use boringtun::x25519;

use super::*;
use crate::uapi::{Request, parse_request};

struct NoNet;
impl Network for NoNet {
    fn bind(&self, port: u16, _: u32) -> io::Result<u16> {
        Ok(port)
    }
    fn set_fwmark(&self, _: u32) -> io::Result<()> {
        Ok(())
    }
    fn send_to(&self, _: &[u8], _: SocketAddr) {}
}

#[derive(Default)]
struct Mem {
    tunnel: Vec<Vec<u8>>,
    network: Vec<(Vec<u8>, SocketAddr)>,
}
impl Sink for Mem {
    fn to_tunnel(&mut self, packet: &[u8]) {
        self.tunnel.push(packet.to_vec());
    }
    fn to_network(&mut self, datagram: &[u8], dst: SocketAddr) {
        self.network.push((datagram.to_vec(), dst));
    }
}

fn hex(bytes: &[u8; 32]) -> String {
    let mut s = String::new();
    crate::key::encode_hex(bytes, &mut s);
    s
}

fn public_of(secret: [u8; 32]) -> [u8; 32] {
    x25519::PublicKey::from(&x25519::StaticSecret::from(secret)).to_bytes()
}

fn set(dev: &Device, text: &str) {
    let Ok(Request::Set(req)) = parse_request(text.lines()) else {
        panic!("bad test request {text}");
    };
    dev.apply(req).unwrap();
}

const A_ADDR: &str = "192.0.2.1:51830";
const B_ADDR: &str = "192.0.2.2:51830";

/// A (10.0.0.1) and B (10.0.0.2), each allowing only the other's /32.
fn pair() -> (Device, Device) {
    let (ka, kb) = ([1u8; 32], [2u8; 32]);
    let a = Device::new(Box::new(NoNet));
    let b = Device::new(Box::new(NoNet));
    set(
        &a,
        &format!(
            "set=1\nprivate_key={}\npublic_key={}\nendpoint={B_ADDR}\nallowed_ip=10.0.0.2/32",
            hex(&ka),
            hex(&public_of(kb))
        ),
    );
    set(
        &b,
        &format!(
            "set=1\nprivate_key={}\npublic_key={}\nendpoint={A_ADDR}\nallowed_ip=10.0.0.1/32",
            hex(&kb),
            hex(&public_of(ka))
        ),
    );
    (a, b)
}

fn ipv4(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    let len = u16::try_from(20 + payload.len()).unwrap();
    p[2..4].copy_from_slice(&len.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p.extend_from_slice(payload);
    p
}

/// Sends `packet` into `from`'s TUN side and shuttles datagrams between the two devices
/// until none is left. `src_of_from` is the address `to` sees `from`'s datagrams from.
/// Returns what reached each side's TUN.
fn exchange(
    from: &Device,
    to: &Device,
    packet: &[u8],
    src_of_from: SocketAddr,
) -> (Vec<Vec<u8>>, Vec<Vec<u8>>, Vec<SocketAddr>) {
    let mut scratch = vec![0u8; MAX_DATAGRAM];
    let mut out = vec![0u8; MAX_DATAGRAM];
    let mut to_from: Vec<(Vec<u8>, SocketAddr)> = Vec::new();
    let mut to_to: Vec<Vec<u8>> = Vec::new();
    if let Some((len, _dst)) = from.read().encapsulate(packet, &mut out) {
        to_to.push(out[..len].to_vec());
    }
    let (mut at_from, mut at_to, mut dsts) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..10 {
        let mut sink = Mem::default();
        for d in to_to.drain(..) {
            to.read()
                .decapsulate(src_of_from, &d, &mut scratch, &mut sink);
        }
        at_to.extend(sink.tunnel);
        dsts.extend(sink.network.iter().map(|(_, a)| *a));
        to_from.extend(sink.network);
        let mut sink = Mem::default();
        for (d, _) in to_from.drain(..) {
            from.read()
                .decapsulate(B_ADDR.parse().unwrap(), &d, &mut scratch, &mut sink);
        }
        at_from.extend(sink.tunnel);
        to_to.extend(sink.network.into_iter().map(|(d, _)| d));
        if to_to.is_empty() && to_from.is_empty() {
            break;
        }
    }
    (at_from, at_to, dsts)
}

#[test]
fn handshake_then_data_flows_and_is_counted() {
    let (a, b) = pair();
    let ping = ipv4([10, 0, 0, 1], [10, 0, 0, 2], b"hello");
    let (_, at_b, _) = exchange(&a, &b, &ping, A_ADDR.parse().unwrap());
    assert_eq!(
        at_b,
        vec![ping.clone()],
        "queued packet delivered after the handshake"
    );
    let (_, at_b, _) = exchange(&a, &b, &ping, A_ADDR.parse().unwrap());
    assert_eq!(at_b, vec![ping]);
    let st = b.read();
    let peer = st.peers().next().unwrap();
    assert!(peer.rx_bytes.load(Ordering::Relaxed) > 0);
    assert!(peer.tx_bytes.load(Ordering::Relaxed) > 0);
    let mut inner = peer.lock();
    inner.refresh_handshake_time();
    assert!(inner.last_handshake.is_some());
}

#[test]
fn source_check_drops_spoofed_inner_source() {
    let (a, b) = pair();
    let good = ipv4([10, 0, 0, 1], [10, 0, 0, 2], b"ok");
    exchange(&a, &b, &good, A_ADDR.parse().unwrap());
    // A routes it to B (destination 10.0.0.2), but its source is not A's allowed IP.
    let spoofed = ipv4([10, 0, 0, 99], [10, 0, 0, 2], b"spoof");
    let (_, at_b, _) = exchange(&a, &b, &spoofed, A_ADDR.parse().unwrap());
    assert!(at_b.is_empty(), "spoofed packet must not reach the TUN");
    assert_eq!(b.counters().source_check_drops.load(Ordering::Relaxed), 1);
}

#[test]
fn roaming_follows_authenticated_packets_only() {
    let (a, b) = pair();
    let ping = ipv4([10, 0, 0, 1], [10, 0, 0, 2], b"x");
    exchange(&a, &b, &ping, A_ADDR.parse().unwrap());
    let roamed: SocketAddr = "198.51.100.7:40000".parse().unwrap();
    // Garbage from elsewhere changes nothing.
    let mut scratch = vec![0u8; MAX_DATAGRAM];
    let mut sink = Mem::default();
    let mut junk = vec![4u8, 0, 0, 0];
    junk.extend_from_slice(&[0xAA; 60]);
    b.read().decapsulate(roamed, &junk, &mut scratch, &mut sink);
    let endpoint = |d: &Device| d.read().peers().next().unwrap().lock().endpoint;
    assert_eq!(endpoint(&b), Some(A_ADDR.parse().unwrap()));
    // An authenticated data packet from the new address moves the endpoint.
    let (_, at_b, _) = exchange(&a, &b, &ping, roamed);
    assert_eq!(at_b.len(), 1);
    assert_eq!(endpoint(&b), Some(roamed));
    // And B's next packet to A goes there (v4-mapped sources count as IPv4).
    let mapped: SocketAddr = "[::ffff:198.51.100.8]:40001".parse().unwrap();
    exchange(&a, &b, &ping, mapped);
    assert_eq!(endpoint(&b), Some("198.51.100.8:40001".parse().unwrap()));
    let mut out = vec![0u8; MAX_DATAGRAM];
    let reply = ipv4([10, 0, 0, 2], [10, 0, 0, 1], b"back");
    let (_, dst) = b.read().encapsulate(&reply, &mut out).unwrap();
    assert_eq!(dst, "198.51.100.8:40001".parse().unwrap());
}

#[test]
fn no_route_and_no_key_drop() {
    let (a, _) = pair();
    let mut out = vec![0u8; MAX_DATAGRAM];
    let elsewhere = ipv4([10, 0, 0, 1], [10, 9, 9, 9], b"x");
    assert!(a.read().encapsulate(&elsewhere, &mut out).is_none());
    assert_eq!(a.counters().no_route_drops.load(Ordering::Relaxed), 1);
    // Removing the private key stops all sessions.
    set(&a, &format!("set=1\nprivate_key={}", "0".repeat(64)));
    let to_b = ipv4([10, 0, 0, 1], [10, 0, 0, 2], b"x");
    assert!(a.read().encapsulate(&to_b, &mut out).is_none());
}

#[test]
fn replace_peers_keeps_sessions_of_peers_named_again() {
    let (a, b) = pair();
    let ping = ipv4([10, 0, 0, 1], [10, 0, 0, 2], b"x");
    exchange(&a, &b, &ping, A_ADDR.parse().unwrap());
    let pk = hex(&public_of([2u8; 32]));
    set(
        &a,
        &format!(
            "set=1\nreplace_peers=true\npublic_key={pk}\nendpoint={B_ADDR}\nreplace_allowed_ips=true\nallowed_ip=10.0.0.2/32"
        ),
    );
    // Still an established session: the packet is encrypted at once (a data message,
    // type 4), not queued behind a new handshake initiation (type 1).
    let mut out = vec![0u8; MAX_DATAGRAM];
    let (len, _) = a.read().encapsulate(&ping, &mut out).unwrap();
    assert_eq!(out[0], 4);
    assert_eq!(len, 32 + ping.len(), "header + payload + tag");
}

#[test]
fn under_load_handshakes_get_cookie_replies() {
    let (a, b) = pair();
    let mut scratch = vec![0u8; MAX_DATAGRAM];
    let mut init = vec![0u8; 256];
    let (mut responses, mut cookies) = (0, 0);
    // A flood of initiations from one peer: past the shared limit B stops doing
    // Diffie-Hellman for them and answers with cookie replies (type 3) instead.
    for _ in 0..(2 * HANDSHAKE_RATE_LIMIT) {
        let len = {
            let st = a.read();
            let peer = st.peers().next().unwrap();
            let mut inner = peer.lock();
            let tunn = inner.tunn.as_mut().unwrap();
            match tunn.format_handshake_initiation(&mut init, true) {
                boringtun::noise::TunnResult::WriteToNetwork(p) => p.len(),
                _ => panic!("no initiation"),
            }
        };
        let mut sink = Mem::default();
        b.read().decapsulate(
            A_ADDR.parse().unwrap(),
            &init[..len],
            &mut scratch,
            &mut sink,
        );
        for (reply, dst) in sink.network {
            assert_eq!(dst, A_ADDR.parse().unwrap());
            match reply[0] {
                2 => responses += 1,
                3 => cookies += 1,
                t => panic!("unexpected reply type {t}"),
            }
        }
    }
    assert!(responses > 0, "the first handshakes are answered");
    assert!(cookies > 0, "under load, cookies are demanded");
    assert!(responses <= usize::try_from(HANDSHAKE_RATE_LIMIT).unwrap());
}

#[test]
fn outgoing_packets_go_to_the_peer_with_the_longest_prefix() {
    let dev = Device::new(Box::new(NoNet));
    let (p1, p2) = (hex(&public_of([3u8; 32])), hex(&public_of([4u8; 32])));
    set(
        &dev,
        &format!(
            "set=1\nprivate_key={}\npublic_key={p1}\nendpoint=192.0.2.3:1\nallowed_ip=10.0.0.0/8\n\
         public_key={p2}\nendpoint=192.0.2.4:1\nallowed_ip=10.1.0.0/16",
            hex(&[1u8; 32])
        ),
    );
    let mut out = vec![0u8; MAX_DATAGRAM];
    // No session yet: the packet is queued and a handshake initiation goes to the
    // chosen peer's endpoint, which is what tells us the routing decision.
    let to = |dst: [u8; 4], out: &mut [u8]| {
        dev.read()
            .encapsulate(&ipv4([10, 9, 9, 9], dst, b"x"), out)
            .map(|(_, a)| a)
    };
    assert_eq!(
        to([10, 1, 2, 3], &mut out),
        Some("192.0.2.4:1".parse().unwrap())
    );
    assert_eq!(
        to([10, 2, 2, 3], &mut out),
        Some("192.0.2.3:1".parse().unwrap())
    );
    assert_eq!(to([11, 0, 0, 1], &mut out), None);
}

#[test]
fn first_packet_resends_a_lost_initial_handshake() {
    // `pair()` configured A's peer with an endpoint, so A sent an initiation at once;
    // nobody delivered it. A's first real packet must not wait for the 5 s retry.
    let (a, _b) = pair();
    let mut out = vec![0u8; MAX_DATAGRAM];
    let ping = ipv4([10, 0, 0, 1], [10, 0, 0, 2], b"x");
    let (len, dst) = a.read().encapsulate(&ping, &mut out).unwrap();
    assert_eq!((out[0], len), (1, 148), "a fresh handshake initiation");
    assert_eq!(dst, B_ADDR.parse().unwrap());
    // Only once: the next packet waits behind that handshake as usual.
    assert!(a.read().encapsulate(&ping, &mut out).is_none());
}

/// A tiny deterministic generator, so a failure replays exactly.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn hostile_datagrams_and_packets_never_panic_or_break_the_session() {
    let (a, b) = pair();
    let ping = ipv4([10, 0, 0, 1], [10, 0, 0, 2], b"before");
    exchange(&a, &b, &ping, A_ADDR.parse().unwrap());
    let mut rng = XorShift(0x5eed_1234_abcd_ef01);
    let mut scratch = vec![0u8; MAX_DATAGRAM];
    let mut out = vec![0u8; MAX_DATAGRAM];
    let mut buf = vec![0u8; 2048];
    let src: SocketAddr = "203.0.113.9:4444".parse().unwrap();
    for i in 0..20_000 {
        let len = usize::try_from(rng.next() % 400).unwrap();
        for byte in &mut buf[..len] {
            *byte = rng.next() as u8;
        }
        // Make many of them look like WireGuard messages of each type and size.
        if len >= 4 && i % 2 == 0 {
            buf[0] = 1 + (i % 4) as u8;
            buf[1..4].fill(0);
        }
        let mut sink = Mem::default();
        b.read()
            .decapsulate(src, &buf[..len], &mut scratch, &mut sink);
        assert!(sink.tunnel.is_empty(), "garbage decrypted into a packet");
        let _ = a.read().encapsulate(&buf[..len], &mut out);
    }
    // The real session is unharmed and the endpoint did not move to the attacker.
    let after = ipv4([10, 0, 0, 1], [10, 0, 0, 2], b"after");
    let (_, at_b, _) = exchange(&a, &b, &after, A_ADDR.parse().unwrap());
    assert_eq!(at_b, vec![after]);
    let endpoint = b.read().peers().next().unwrap().lock().endpoint;
    assert_eq!(endpoint, Some(A_ADDR.parse().unwrap()));
}

/// A rotation of A's key from `[1; 32]` to `[11; 32]`: A's next key is its
/// alternate; B replaces A's public key, keeping the allowed IP.
const A_NEXT: [u8; 32] = [11; 32];

fn announce_next(a: &Device) {
    set(
        a,
        &format!("set=1\nwireseal_alternate_private_key={}", hex(&A_NEXT)),
    );
}

fn peer_switches(b: &Device) {
    set(
        b,
        &format!(
            "set=1\npublic_key={}\nremove=true\npublic_key={}\nendpoint={A_ADDR}\nallowed_ip=10.0.0.1/32",
            hex(&public_of([1; 32])),
            hex(&public_of(A_NEXT))
        ),
    );
}

fn switch(a: &Device) {
    set(a, &format!("set=1\nprivate_key={}", hex(&A_NEXT)));
}

/// A packet from A to B and one from B to A (B's first when `b_first`):
/// how many reached B and A.
fn both_ways(a: &Device, b: &Device, b_first: bool) -> (usize, usize) {
    let to_b = ipv4([10, 0, 0, 1], [10, 0, 0, 2], b"a->b");
    let to_a = ipv4([10, 0, 0, 2], [10, 0, 0, 1], b"b->a");
    let a_to_b = || exchange(a, b, &to_b, A_ADDR.parse().unwrap()).1.len();
    let b_to_a = || exchange(b, a, &to_a, B_ADDR.parse().unwrap()).1.len();
    if b_first {
        let at_a = b_to_a();
        (a_to_b(), at_a)
    } else {
        let at_b = a_to_b();
        (at_b, b_to_a())
    }
}

#[test]
fn a_rotation_where_the_peer_switches_first_answers_its_handshake_to_the_next_key() {
    let (a, b) = pair();
    assert_eq!(both_ways(&a, &b, false), (1, 1));
    announce_next(&a);
    assert_eq!(
        both_ways(&a, &b, false),
        (1, 1),
        "the alternate key changes nothing"
    );
    // B moves to A's next key before A switches: its handshake to that key
    // is answered under the alternate key, and A answers B on that session.
    peer_switches(&b);
    assert_eq!(both_ways(&a, &b, true), (1, 1));
    assert_eq!(both_ways(&a, &b, false), (1, 1));
    // A switches: the session B started stays; nothing waits for a handshake.
    switch(&a);
    assert_eq!(both_ways(&a, &b, false), (1, 1));
    assert_eq!(both_ways(&a, &b, true), (1, 1));
    assert_eq!(
        a.read().private_key_bytes(),
        Some(x25519::StaticSecret::from(A_NEXT).to_bytes())
    );
}

#[test]
fn a_rotation_where_the_node_switches_first_keeps_the_old_session_until_the_peer_follows() {
    let (a, b) = pair();
    assert_eq!(both_ways(&a, &b, false), (1, 1));
    announce_next(&a);
    switch(&a);
    // B still knows A by its old key: A's old session carries both ways.
    assert_eq!(both_ways(&a, &b, false), (1, 1));
    assert_eq!(both_ways(&a, &b, true), (1, 1));
    // B follows: its handshake reaches A's new key at once.
    peer_switches(&b);
    assert_eq!(both_ways(&a, &b, true), (1, 1));
    assert_eq!(both_ways(&a, &b, false), (1, 1));
    // The old key goes; the new session stays.
    set(
        &a,
        &format!("set=1\nwireseal_alternate_private_key={}", "0".repeat(64)),
    );
    assert_eq!(both_ways(&a, &b, false), (1, 1));
}

#[test]
fn without_the_alternate_key_a_handshake_to_the_next_key_is_refused() {
    let (a, b) = pair();
    both_ways(&a, &b, false);
    peer_switches(&b);
    let invalid = a.counters().invalid_datagrams.load(Ordering::Relaxed);
    assert_eq!(both_ways(&a, &b, true), (0, 0));
    assert!(a.counters().invalid_datagrams.load(Ordering::Relaxed) > invalid);
}

//! Bulk TCP through two `wireseal-tunnel` processes in network namespaces, checked
//! byte for byte, with and without TUN offloads, over IPv4 and IPv6. Root only: ignored
//! unless asked for, and failing (never passing) without root or a tool.

mod common;

use std::io::{Read as _, Write as _};
use std::time::Duration;

use common::*;

const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("wg", "wireguard-tools"),
    ("ping", "iputils-ping"),
];

/// A pattern no two nearby offsets share, so a lost, duplicated or reordered chunk
/// shows up as a mismatch.
fn pattern(offset: u64) -> u8 {
    let x = offset.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (x >> 56) as u8 ^ (offset as u8)
}

/// Bulk TCP through the tunnel, checked byte for byte: with TUN offloads the sender's
/// kernel hands over TCP super-segments that we cut up and checksum ourselves; a wrong
/// checksum, length or sequence number would stall or corrupt the stream. Runs once
/// with offloads and once without.
fn tcp_bulk(extra: &[&str], v6: bool) {
    use std::net::{TcpListener, TcpStream};
    let (ip_a, ip_b) = if v6 {
        ("fd51::1", "fd51::2")
    } else {
        ("10.251.0.1", "10.251.0.2")
    };
    require(TOOLS);
    let pair = Pair::new();
    let dir = tempfile::tempdir().expect("test setup");
    let (ia, ib) = (format!("wst{}a", pair.id), format!("wst{}b", pair.id));
    let _da = start_wireseal_with(pair.a.name(), &ia, extra);
    let _db = start_wireseal_with(pair.b.name(), &ib, extra);
    configure_pair(&pair, dir.path(), &ia, &ib, ip_a, ip_b);
    ping(pair.a.name(), ip_b, &[]);

    const BYTES: u64 = 48 << 20;
    let (tx, rx) = std::sync::mpsc::channel();
    let server = pair.b.spawn(move || {
        let listener = TcpListener::bind((ip_b, 0)).expect("bind");
        tx.send(listener.local_addr().expect("test setup").port())
            .expect("test setup");
        let (mut conn, _) = listener.accept().expect("accept");
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("test setup");
        let (mut at, mut buf) = (0u64, vec![0u8; 1 << 16]);
        loop {
            let n = conn.read(&mut buf).expect("read through the tunnel");
            if n == 0 {
                return at;
            }
            for &b in &buf[..n] {
                assert_eq!(b, pattern(at), "stream corrupted at byte {at}");
                at += 1;
            }
        }
    });
    let port = rx.recv_timeout(DEADLINE).expect("server port");
    let client = pair.a.spawn(move || {
        let mut conn = TcpStream::connect((ip_b, port)).expect("connect");
        conn.set_write_timeout(Some(Duration::from_secs(20)))
            .expect("test setup");
        let mut buf = vec![0u8; 1 << 16];
        let mut at = 0u64;
        while at < BYTES {
            for b in &mut buf {
                *b = pattern(at);
                at += 1;
            }
            conn.write_all(&buf).expect("write through the tunnel");
        }
    });
    client.join().expect("client thread");
    let received = server.join().expect("server thread");
    assert_eq!(received, BYTES);
}
#[test]
#[ignore = "needs root: TUN devices and network namespaces"]
fn tcp_bulk_transfer_with_tun_offloads() {
    tcp_bulk(&[], false);
}

#[test]
#[ignore = "needs root: TUN devices and network namespaces"]
fn tcp_bulk_transfer_ipv6_with_tun_offloads() {
    tcp_bulk(&[], true);
}

#[test]
#[ignore = "needs root: TUN devices and network namespaces"]
fn tcp_bulk_transfer_without_tun_offloads() {
    tcp_bulk(&["--tun-offload=false"], false);
}

#[test]
#[ignore = "needs root: TUN devices and network namespaces"]
fn tcp_bulk_transfer_with_two_threads_per_direction() {
    // Two readers per fd may reorder packets; the stream must still arrive intact.
    tcp_bulk(&["--threads", "2"], false);
}

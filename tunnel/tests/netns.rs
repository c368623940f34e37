//! End-to-end tests in network namespaces, as root: two real `wireseal-tunnel`
//! processes configured with Debian's `wg`, interop with Debian's `wireguard-go`, the
//! wire seen by tcpdump, fwmark, IPv6, roaming and restarts.
//!
//! Root only: ignored unless asked for, and failing (never passing) without root or
//! a tool; the message names the package.

mod common;

use std::time::Duration;

use common::*;

const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("wg", "wireguard-tools"),
    ("ping", "iputils-ping"),
    ("tcpdump", "tcpdump"),
    ("ss", "iproute2"),
];

/// "wireseal-canary" — sent inside the tunnel, must never be seen on the underlay.
const CANARY_HEX: &str = "77697265736561 6c2d63616e617279";
const CANARY: &[u8] = b"wireseal-canary";

/// Message type of a WireGuard datagram, or a description of why the frame is not
/// allowed on the underlay.
fn wire_check(frame: &[u8]) -> Result<Option<u8>, String> {
    if contains(frame, CANARY) {
        return Err("plaintext canary on the wire".into());
    }
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    let (udp_at, proto) = match ethertype {
        0x0806 => return Ok(None), // ARP
        0x0800 => {
            let ihl = usize::from(frame[14] & 0xf) * 4;
            (14 + ihl, frame[14 + 9])
        }
        0x86dd => match frame[14 + 6] {
            // Neighbour discovery and MLD (hop-by-hop header) of the link itself.
            0 | 58 => return Ok(None),
            nh => (14 + 40, nh),
        },
        other => return Err(format!("unexpected ethertype {other:#06x}")),
    };
    if proto == 1 && frame.get(udp_at) == Some(&3) {
        // ICMP "port unreachable" for a handshake that reached a peer before it was
        // listening: allowed when it quotes our own WireGuard UDP packet.
        let quoted = udp_at + 8;
        let q_ihl = usize::from(frame[quoted] & 0xf) * 4;
        let q_udp = quoted + q_ihl;
        let q_dport = u16::from_be_bytes([frame[q_udp + 2], frame[q_udp + 3]]);
        if frame[quoted + 9] == 17 && q_dport == PORT {
            return Ok(None);
        }
    }
    if proto != 17 {
        return Err(format!("non-UDP IP packet (protocol {proto}) on the wire"));
    }
    let sport = u16::from_be_bytes([frame[udp_at], frame[udp_at + 1]]);
    let dport = u16::from_be_bytes([frame[udp_at + 2], frame[udp_at + 3]]);
    if sport != PORT || dport != PORT {
        return Err(format!("UDP {sport}->{dport} is not WireGuard's port"));
    }
    let payload = &frame[udp_at + 8..];
    let kind = payload[0];
    if !(1..=4).contains(&kind) || payload[1..4] != [0, 0, 0] {
        return Err(format!(
            "UDP payload is not a WireGuard message (type {kind})"
        ));
    }
    Ok(Some(kind))
}

#[test]
#[ignore = "needs root: TUN devices and network namespaces"]
fn two_tunnels_ping_show_handshake_and_leak_nothing() {
    require(TOOLS);
    let pair = Pair::new();
    let dir = tempfile::tempdir().unwrap();
    let (ia, ib) = (format!("wst{}a", pair.id), format!("wst{}b", pair.id));
    let _da = start_wireseal(pair.a.name(), &ia);
    let _db = start_wireseal(pair.b.name(), &ib);
    // Capture from before the configuration: the handshake starts as soon as a
    // peer is configured.
    let wire = Capture::start(pair.b.name(), &pair.veth_b, dir.path().join("wire.pcap"));
    let (_, pb) = configure_pair(&pair, dir.path(), &ia, &ib, "10.251.0.1", "10.251.0.2");

    let inner = Capture::start(pair.b.name(), &ib, dir.path().join("inner.pcap"));
    ping(
        pair.a.name(),
        "10.251.0.2",
        &["-p", &CANARY_HEX.replace(' ', ""), "-s", "200"],
    );
    ping(pair.b.name(), "10.251.0.1", &[]);
    let frames = wire.finish();
    let inner_frames = inner.finish();

    // Positive control: the canary really is in the traffic, inside the tunnel.
    assert!(
        inner_frames.iter().any(|f| contains(f, CANARY)),
        "the canary never reached the TUN ({} frames captured there): the leak check \
         below would prove nothing",
        inner_frames.len()
    );
    let mut kinds = [0usize; 5];
    for frame in &frames {
        match wire_check(frame) {
            Ok(Some(kind)) => kinds[usize::from(kind)] += 1,
            Ok(None) => {}
            Err(why) => panic!("{why}: frame {frame:02x?}"),
        }
    }
    assert!(
        kinds[1] >= 1 && kinds[2] >= 1,
        "handshake not seen on the wire: {kinds:?}"
    );
    assert!(
        kinds[4] >= 12,
        "expected >= 12 data messages, saw {kinds:?}"
    );

    for (ns, iface) in [(pair.a.name(), &ia), (pair.b.name(), &ib)] {
        let (handshake, rx, tx) = peer_stats(ns, iface);
        assert!(
            now_secs().abs_diff(handshake) < 60,
            "{iface}: latest handshake {handshake} is not recent"
        );
        assert!(rx > 0 && tx > 0, "{iface}: transfer rx={rx} tx={tx}");
    }
    // `wg showconf` round-trips what `wg set` configured.
    let conf = ns_run(pair.a.name(), &["wg", "showconf", &ia]);
    let private = std::fs::read_to_string(dir.path().join("a.key")).unwrap();
    for line in [
        format!("ListenPort = {PORT}"),
        format!("PrivateKey = {}", private.trim()),
        format!("PublicKey = {pb}"),
        "AllowedIPs = 10.251.0.2/32".to_string(),
        format!("Endpoint = {}:{PORT}", pair.under_b),
    ] {
        assert!(conf.contains(&line), "showconf lacks {line:?}:\n{conf}");
    }
}

#[test]
#[ignore = "needs root: TUN devices and network namespaces"]
fn interop_with_wireguard_go_both_initiators() {
    require(TOOLS);
    require(&[("wireguard-go", "wireguard-go")]);
    let pair = Pair::new();
    let dir = tempfile::tempdir().unwrap();
    let (ia, ib) = (format!("wst{}a", pair.id), format!("wgo{}b", pair.id));
    let _ours = start_wireseal(pair.a.name(), &ia);
    let _theirs = start_wireguard_go(pair.b.name(), &ib);
    let (pa, pb) = configure_pair(&pair, dir.path(), &ia, &ib, "10.251.0.1", "10.251.0.2");

    // wireguard-go sends first, so it initiates the handshake.
    let wire = Capture::start(pair.a.name(), &pair.veth_a, dir.path().join("1.pcap"));
    ping(pair.b.name(), "10.251.0.1", &[]);
    ping(pair.a.name(), "10.251.0.2", &[]);
    let first_init = |frames: &[Vec<u8>]| {
        frames
            .iter()
            .find(|f| wire_check(f) == Ok(Some(1)))
            .map(|f| f[26..30].to_vec()) // IPv4 source address
            .expect("no handshake initiation on the wire")
    };
    let b_addr: Vec<u8> = pair
        .under_b
        .split('.')
        .map(|o| o.parse::<u8>().unwrap())
        .collect();
    let a_addr: Vec<u8> = pair
        .under_a
        .split('.')
        .map(|o| o.parse::<u8>().unwrap())
        .collect();
    assert_eq!(
        first_init(&wire.finish()),
        b_addr,
        "wireguard-go should have initiated"
    );

    // Forget the peer on both sides, so the next handshake starts from scratch, then
    // re-add it, wireseal-tunnel first: its immediate initiation reaches a
    // wireguard-go that does not know it yet and is lost, so this also checks that
    // the first real packet re-sends it at once.
    let sides = [
        (pair.a.name(), &ia, &pb, "10.251.0.2", &pair.under_b),
        (pair.b.name(), &ib, &pa, "10.251.0.1", &pair.under_a),
    ];
    for (ns, iface, key, _, _) in sides {
        ns_run(ns, &["wg", "set", iface, "peer", key, "remove"]);
    }
    for (ns, iface, key, ip, under) in sides {
        ns_run(
            ns,
            &[
                "wg",
                "set",
                iface,
                "peer",
                key,
                "allowed-ips",
                &format!("{ip}/32"),
                "endpoint",
                &format!("{under}:{PORT}"),
            ],
        );
    }
    let wire = Capture::start(pair.a.name(), &pair.veth_a, dir.path().join("2.pcap"));
    ping(pair.a.name(), "10.251.0.2", &[]);
    ping(pair.b.name(), "10.251.0.1", &[]);
    assert_eq!(
        first_init(&wire.finish()),
        a_addr,
        "wireseal-tunnel should have initiated"
    );
    for (ns, iface) in [(pair.a.name(), &ia), (pair.b.name(), &ib)] {
        let (handshake, rx, tx) = peer_stats(ns, iface);
        assert!(
            now_secs().abs_diff(handshake) < 60,
            "{iface}: stale handshake"
        );
        assert!(rx > 0 && tx > 0, "{iface}: rx={rx} tx={tx}");
    }
}

#[test]
#[ignore = "needs root: TUN devices and network namespaces"]
fn fwmark_reaches_the_udp_socket() {
    require(TOOLS);
    let ns = Netns::new();
    let iface = format!("wst{}m", unique());
    let _d = start_wireseal(ns.name(), &iface);
    ns_run(
        ns.name(),
        &[
            "wg",
            "set",
            &iface,
            "listen-port",
            "51999",
            "fwmark",
            "0x5a5a",
        ],
    );
    assert_eq!(
        ns_run(ns.name(), &["wg", "show", &iface, "fwmark"]).trim(),
        "0x5a5a"
    );
    let sockets = || {
        ns_run(
            ns.name(),
            &["ss", "-u", "-a", "-n", "-e", "sport", "=", ":51999"],
        )
    };
    let listing = sockets();
    assert!(
        listing.contains("fwmark:0x5a5a"),
        "socket lacks the mark:\n{listing}"
    );
    ns_run(ns.name(), &["wg", "set", &iface, "fwmark", "0"]);
    let listing = sockets();
    assert!(
        listing.contains(":51999") && !listing.contains("fwmark:"),
        "mark not cleared:\n{listing}"
    );
}

#[test]
#[ignore = "needs root: TUN devices and network namespaces"]
fn ipv6_underlay_keepalive_handshake_and_roaming_after_port_change() {
    require(TOOLS);
    let pair = Pair::new();
    let dir = tempfile::tempdir().unwrap();
    let (ia, ib) = (format!("wst{}a", pair.id), format!("wst{}b", pair.id));
    let (ua, ub) = ("fd50::1", "fd50::2");
    // nodad: the addresses are usable at once instead of after duplicate detection.
    ns_run(
        pair.a.name(),
        &[
            "ip",
            "addr",
            "add",
            &format!("{ua}/64"),
            "dev",
            &pair.veth_a,
            "nodad",
        ],
    );
    ns_run(
        pair.b.name(),
        &[
            "ip",
            "addr",
            "add",
            &format!("{ub}/64"),
            "dev",
            &pair.veth_b,
            "nodad",
        ],
    );
    let _da = start_wireseal(pair.a.name(), &ia);
    let _db = start_wireseal(pair.b.name(), &ib);
    let (ka, pa) = genkey(dir.path(), "a.key");
    let (kb, pb) = genkey(dir.path(), "b.key");
    let port = PORT.to_string();
    for (ns, iface, key, peer, peer_inner, peer_under, inner) in [
        (pair.a.name(), &ia, &ka, &pb, "fd51::2", ub, "fd51::1"),
        (pair.b.name(), &ib, &kb, &pa, "fd51::1", ua, "fd51::2"),
    ] {
        ns_run(
            ns,
            &[
                "wg",
                "set",
                iface,
                "listen-port",
                &port,
                "private-key",
                key.to_str().unwrap(),
                "peer",
                peer,
                "allowed-ips",
                &format!("{peer_inner}/128"),
                "endpoint",
                &format!("[{peer_under}]:{PORT}"),
                "persistent-keepalive",
                "1",
            ],
        );
        ns_run(
            ns,
            &[
                "ip",
                "addr",
                "add",
                &format!("{inner}/128"),
                "dev",
                iface,
                "nodad",
            ],
        );
        ns_run(ns, &["ip", "link", "set", iface, "mtu", "1420", "up"]);
        ns_run(
            ns,
            &[
                "ip",
                "route",
                "add",
                &format!("{peer_inner}/128"),
                "dev",
                iface,
            ],
        );
    }
    // No traffic at all: persistent keepalive alone must bring the tunnel up.
    for (ns, iface) in [(pair.a.name(), &ia), (pair.b.name(), &ib)] {
        wait_until(&format!("a keepalive-driven handshake on {iface}"), || {
            peer_stats(ns, iface).0 != 0
        });
    }
    ping(pair.a.name(), "fd51::2", &[]);
    assert_eq!(
        ns_run(pair.b.name(), &["wg", "show", &ib, "endpoints"])
            .split('\t')
            .nth(1)
            .map(str::trim),
        Some(format!("[{ua}]:{PORT}").as_str())
    );

    // A moves to another port: B learns it from A's next authenticated packet.
    ns_run(pair.a.name(), &["wg", "set", &ia, "listen-port", "51831"]);
    ping(pair.a.name(), "fd51::2", &[]);
    wait_until("B to follow A to its new port", || {
        ns_run(pair.b.name(), &["wg", "show", &ib, "endpoints"]).contains(&format!("[{ua}]:51831"))
    });
    ping(pair.b.name(), "fd51::1", &[]);
}

#[test]
#[ignore = "needs root: TUN devices and network namespaces"]
fn a_restarted_tunnel_is_back_after_one_reapply() {
    require(TOOLS);
    let pair = Pair::new();
    let dir = tempfile::tempdir().unwrap();
    let (ia, ib) = (format!("wst{}a", pair.id), format!("wst{}b", pair.id));
    let _da = start_wireseal(pair.a.name(), &ia);
    let mut db = start_wireseal(pair.b.name(), &ib);
    let (pa, _) = configure_pair(&pair, dir.path(), &ia, &ib, "10.251.0.1", "10.251.0.2");
    ping(pair.a.name(), "10.251.0.2", &[]);

    // B's datapath restarts; its agent re-applies the same configuration.
    assert!(db.stop().expect("exit").success());
    let _db = start_wireseal(pair.b.name(), &ib);
    configure(
        pair.b.name(),
        &ib,
        &dir.path().join("b.key"),
        &pa,
        "10.251.0.1",
        &pair.under_a,
        "10.251.0.2",
    );
    // A still holds the old session; B's re-applied peer handshakes at once, so A's
    // very next pings get through (without it A would wait ~15 s for its timers).
    let start = std::time::Instant::now();
    ping(pair.a.name(), "10.251.0.2", &[]);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "traffic took {:?} to recover",
        start.elapsed()
    );
}

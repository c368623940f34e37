//! The leak counter's table against a real kernel in a private namespace:
//! created, filled, counting only what leaves outside the tunnel, kept
//! across a set update, recognised as stale for another tunnel, removed.
//! `nft` cross-checks what the kernel holds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr, UdpSocket};

use ipnetwork::IpNetwork;
use wireseal_netlink::nftables::{LeakCounter, LeakCounts, Leaked};
use wireseal_netns::Netns;

const PAYLOAD: [u8; 12] = *b"leak-canary!";

/// Sends `count` UDP datagrams of [`PAYLOAD`] to `ip` from inside the
/// namespace (the calling thread is in it).
fn send(ip: &str, count: usize) {
    let ip: IpAddr = ip.parse().unwrap();
    let bind: SocketAddr = if ip.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let socket = UdpSocket::bind(bind).unwrap();
    for _ in 0..count {
        socket.send_to(&PAYLOAD, (ip, 9)).unwrap();
    }
}

fn cidrs(list: &[&str]) -> Vec<IpNetwork> {
    list.iter().map(|c| c.parse().unwrap()).collect()
}

fn nft_list(ns: &Netns) -> String {
    let out = ns
        .exec("nft", &["list", "table", "inet", "wireseal"])
        .expect("nft list table inet wireseal");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
#[ignore = "needs root, network namespaces and nftables"]
fn the_table_counts_what_leaves_for_remote_pod_cidrs_outside_the_tunnel() {
    let ns = Netns::new();
    // wsn-out stands for the underlay, wsn-tun for the tunnel: veth links
    // whose far ends nobody answers on; postrouting has seen each packet
    // before its neighbour lookup.
    for (link, v4, v6) in [
        ("wsn-out", "192.0.2.1/24", "fd00:2::1/64"),
        ("wsn-tun", "198.51.100.1/24", "fd00:3::1/64"),
    ] {
        let peer = format!("{link}p");
        ns.run_ip(&["link", "add", link, "type", "veth", "peer", "name", &peer]);
        ns.run_ip(&["link", "set", &peer, "up"]);
        ns.run_ip(&["addr", "add", v4, "dev", link]);
        ns.run_ip(&["addr", "add", v6, "dev", link, "nodad"]);
        ns.run_ip(&["link", "set", link, "up"]);
    }
    ns.run_ip(&["route", "add", "10.244.1.0/24", "dev", "wsn-out"]);
    ns.run_ip(&["route", "add", "10.244.9.0/24", "dev", "wsn-out"]);
    ns.run_ip(&["route", "add", "10.244.2.0/24", "dev", "wsn-tun"]);
    ns.run_ip(&["route", "add", "fd00:244:1::/64", "dev", "wsn-out"]);
    let remote = cidrs(&["10.244.2.0/24", "10.244.1.0/24", "fd00:244:1::/64"]);

    let (created, counted) = ns.run(|| async move {
        let mut counter = LeakCounter::open("wsn-tun").unwrap();
        assert_eq!(counter.read().await.unwrap(), None, "no table yet");
        counter.create(&remote).await.unwrap();
        let created = counter.read().await.unwrap();
        send("10.244.1.5", 3); // leaves through the underlay: counted
        send("10.244.2.5", 2); // through the tunnel: not counted
        send("10.244.9.9", 4); // not a remote pod CIDR: not counted
        send("fd00:244:1::5", 2); // IPv6 through the underlay: counted
        (created, counter.read().await.unwrap())
    });
    assert_eq!(created, Some(LeakCounts::default()));
    let udp4 = 20 + 8 + PAYLOAD.len() as u64;
    let udp6 = 40 + 8 + PAYLOAD.len() as u64;
    assert_eq!(
        counted,
        Some(LeakCounts {
            ipv4: Leaked {
                packets: 3,
                bytes: 3 * udp4
            },
            ipv6: Leaked {
                packets: 2,
                bytes: 2 * udp6
            },
        })
    );
    let listed = nft_list(&ns);
    for expected in [
        "10.244.1.0-10.244.2.255",
        "fd00:244:1::/64",
        "hook postrouting priority",
        "policy accept",
        &format!("counter packets 3 bytes {}", 3 * udp4),
        "comment \"wireseal leaks ipv4: daddr @remote4 oifname != wsn-tun, lo\"",
    ] {
        assert!(
            listed.contains(expected),
            "{expected:?} missing from\n{listed}"
        );
    }

    let (kept, stale, recreated) = ns.run(|| async move {
        let mut counter = LeakCounter::open("wsn-tun").unwrap();
        // The set changes, the counters stay; 10.244.1.0/24 is no longer remote.
        counter
            .set_remote(&cidrs(&["10.244.2.0/24"]))
            .await
            .unwrap();
        send("10.244.1.5", 5);
        let kept = counter.read().await.unwrap();
        // Made for another tunnel: stale.
        let stale = LeakCounter::open("wsn-other")
            .unwrap()
            .read()
            .await
            .unwrap();
        counter.create(&cidrs(&["10.244.1.0/24"])).await.unwrap();
        (kept, stale, counter.read().await.unwrap())
    });
    assert_eq!(kept.unwrap().ipv4.packets, 3);
    assert_eq!(stale, None);
    assert_eq!(recreated, Some(LeakCounts::default()));
    let listed = nft_list(&ns);
    assert!(listed.contains("10.244.1.0/24"), "{listed}");
    assert!(!listed.contains("10.244.2.0"), "{listed}");

    let (removed, again, after) = ns.run(|| async move {
        let mut counter = LeakCounter::open("wsn-tun").unwrap();
        (
            counter.remove().await.unwrap(),
            counter.remove().await.unwrap(),
            counter.read().await.unwrap(),
        )
    });
    assert!(removed);
    assert!(!again, "a second removal finds nothing");
    assert_eq!(after, None);
    let out = ns.exec("nft", &["list", "tables"]).unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("wireseal"));
}

#[test]
#[ignore = "needs root, network namespaces and nftables"]
fn thousands_of_disjoint_pod_cidrs_fit_in_the_sets() {
    let ns = Netns::new();
    ns.run_ip(&[
        "link", "add", "wsn-out", "type", "veth", "peer", "name", "wsn-outp",
    ]);
    for link in ["wsn-out", "wsn-outp"] {
        ns.run_ip(&["link", "set", link, "up"]);
    }
    ns.run_ip(&["addr", "add", "192.0.2.1/24", "dev", "wsn-out"]);
    ns.run_ip(&["route", "add", "10.0.0.0/8", "dev", "wsn-out"]);
    // Every other /24 of 10.0.0.0/8: 3,000 intervals that cannot merge,
    // more than one transaction holds.
    let remote: Vec<IpNetwork> = (0..3000u32)
        .map(|i| {
            format!("10.{}.{}.0/24", i / 128, (i % 128) * 2)
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(remote.last().unwrap().to_string(), "10.23.110.0/24");
    let gap = "10.23.107.5"; // an odd /24: between two remote CIDRs
    let counted = ns.run(|| async move {
        let mut counter = LeakCounter::open("wsn-tun").unwrap();
        counter.create(&remote).await.unwrap();
        counter.set_remote(&remote).await.unwrap();
        send("10.23.110.9", 2);
        send(gap, 3);
        counter.read().await.unwrap().unwrap()
    });
    assert_eq!(
        counted.ipv4.packets, 2,
        "the last CIDR counts, the gap does not"
    );
    let listed = nft_list(&ns);
    assert_eq!(
        listed.matches("/24").count(),
        3000,
        "every CIDR is in the set"
    );
}

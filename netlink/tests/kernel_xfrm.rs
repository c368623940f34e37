//! IPsec mode's pieces against a kernel with ESP: two namespaces ("nodes")
//! with an XFRM interface each, ESP SAs whose SPIs and keys both sides
//! derive on their own from the two X25519 keys (wireseal-core,
//! wireseal-keymgr), and policies, all programmed by this crate. Pings
//! between the nodes' pod addresses pass and the SAs count them; without the
//! inbound SA the packets are dropped, not delivered in clear.
//!
//! The build machines' kernel has XFRM but no ESP and no XFRM interfaces,
//! so these tests are ignored there and `vagrant/vmlab.sh` runs this binary
//! with `--ignored` inside a VM (Debian's kernel, esp4/esp6,
//! xfrm_interface); CI runs that lab.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use wireseal_core::ipsec::{Sender, inbound_spis};
use wireseal_keymgr::PrivateKey;
use wireseal_keymgr::esp::derive_esp_key;
use wireseal_netlink::xfrm::{Direction, Policy, Sa, Xfrm, new_sa};
use wireseal_netlink::{Netlink, XFRM_KIND};
use wireseal_netns::{Netns, Pair};

const WHERE: &str =
    "needs a kernel with ESP and XFRM interfaces: vagrant/vmlab.sh runs it inside its VMs";
const IF_ID: u32 = 51830;
const IFACE: &str = "wsx0";

fn net(text: &str) -> IpNetwork {
    text.parse().unwrap()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// One side: its namespace, key, underlay address and pod CIDR (its pod
/// address, .1, sits on loopback).
struct Node<'a> {
    ns: &'a Netns,
    key: PrivateKey,
    name: &'static str,
    under: IpAddr,
    pods: IpNetwork,
}

impl Node<'_> {
    fn pod(&self) -> IpAddr {
        match self.pods {
            IpNetwork::V4(v4) => IpAddr::V4(v4.nth(1).unwrap()),
            IpNetwork::V6(_) => unreachable!("IPv4 pods in this test"),
        }
    }
}

/// The two nodes of `pair`, each with a fresh key and a /24 of pods.
fn nodes(pair: &Pair) -> (Node<'_>, Node<'_>) {
    let node = |ns, name, under: &str, pods| Node {
        ns,
        key: PrivateKey::generate().unwrap(),
        name,
        under: ip(under),
        pods: net(pods),
    };
    (
        node(&pair.a, "node-a", &pair.under_a, "10.244.0.0/24"),
        node(&pair.b, "node-b", &pair.under_b, "10.244.1.0/24"),
    )
}

/// The SA from `from` to `to` as both of them program it, with the SPI the
/// receiver's epoch 0 gives it.
fn sa(from: &Node<'_>, to: &Node<'_>) -> (Sa, u32) {
    let (from_key, to_key) = (from.key.public_key(), to.key.public_key());
    let spis = inbound_spis(
        &to_key,
        0,
        &[Sender {
            name: from.name,
            key: &from_key,
            created: Some(0),
        }],
    );
    let spi = spis[from.name];
    (
        Sa {
            src: from.under,
            dst: to.under,
            spi,
            reqid: spi,
            if_id: IF_ID,
            replay_window: 128,
            oseq: 0,
        },
        spi,
    )
}

/// Programs `me`: its XFRM interface, its pod address, the route to the
/// other's pods into the interface, both SAs and the policies.
async fn program(me: &Node<'_>, other: &Node<'_>, with_inbound: bool) {
    let netlink = Netlink::connect().unwrap();
    netlink.create_xfrm(IFACE, IF_ID).await.unwrap();
    // Adopted when it exists already.
    netlink.create_xfrm(IFACE, IF_ID).await.unwrap();
    let link = netlink.link(IFACE).await.unwrap().unwrap();
    assert_eq!(link.kind.as_deref(), Some(XFRM_KIND));
    netlink.set_up(IFACE).await.unwrap();
    me.ns
        .run_ip(&["addr", "add", &format!("{}/32", me.pod()), "dev", "lo"]);
    me.ns.run_ip(&["link", "set", "lo", "up"]);
    me.ns.run_ip(&[
        "route",
        "add",
        &other.pods.to_string(),
        "dev",
        IFACE,
        "src",
        &me.pod().to_string(),
    ]);

    let xfrm = Xfrm::connect().unwrap();
    let (me_key, other_key) = (me.key.public_key(), other.key.public_key());
    let (out, out_spi) = sa(me, other);
    let key = derive_esp_key(&me.key, &me_key, &other_key, 0, out_spi).unwrap();
    xfrm.add_sa(new_sa(&out, key.as_bytes(), false).unwrap())
        .await
        .unwrap();
    let (inbound, in_spi) = sa(other, me);
    if with_inbound {
        let key = derive_esp_key(&me.key, &other_key, &me_key, 0, in_spi).unwrap();
        xfrm.add_sa(new_sa(&inbound, key.as_bytes(), false).unwrap())
            .await
            .unwrap();
    }
    let policy = |src: IpNetwork, dst: IpNetwork, dir, tunnel: &Sa| Policy {
        src,
        dst,
        dir,
        tunnel_src: tunnel.src,
        tunnel_dst: tunnel.dst,
        reqid: tunnel.reqid,
        if_id: IF_ID,
        priority: 10,
    };
    xfrm.add_policy(&policy(me.pods, other.pods, Direction::Out, &out))
        .await
        .unwrap();
    for dir in [Direction::In, Direction::Fwd] {
        xfrm.add_policy(&policy(other.pods, me.pods, dir, &inbound))
            .await
            .unwrap();
    }
}

fn ping(from: &Node<'_>, to: &Node<'_>) -> bool {
    from.ns
        .command("ping")
        .args(["-n", "-q", "-c", "3", "-i", "0.2", "-W", "2", "-I"])
        .arg(from.pod().to_string())
        .arg(to.pod().to_string())
        .status()
        .unwrap()
        .success()
}

/// The kernel's XFRM error counters of a namespace, for the failure message.
fn xfrm_stat(ns: &Netns) -> String {
    let out = ns.command("cat").arg("/proc/net/xfrm_stat").output();
    out.map_or_else(
        |err| err.to_string(),
        |o| String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

#[test]
#[ignore = "needs a kernel with ESP and XFRM interfaces: vagrant/vmlab.sh runs it inside its VMs"]
fn two_nodes_talk_esp_with_keys_each_derives_from_the_x25519_keys() {
    assert!(
        std::fs::read_to_string("/proc/net/xfrm_stat").is_ok(),
        "{WHERE}: no /proc/net/xfrm_stat"
    );
    let pair = Pair::new();
    let (a, b) = nodes(&pair);
    a.ns.run(|| program(&a, &b, true));
    b.ns.run(|| program(&b, &a, true));
    assert!(
        ping(&a, &b),
        "pod a -> pod b through ESP failed\n{}",
        xfrm_stat(a.ns)
    );
    assert!(ping(&b, &a), "pod b -> pod a through ESP failed");
    // Both SAs of each side carried the pings: ESP, with the derived keys
    // agreeing (a wrong key is an integrity failure, counted and dropped).
    for node in [&a, &b] {
        let sas = node
            .ns
            .run(|| async { Xfrm::connect().unwrap().sas().await.unwrap() });
        assert_eq!(sas.len(), 2, "{sas:?}");
        for sa in &sas {
            assert!(sa.packets >= 3, "{sa:?}");
            assert_eq!((sa.replay_errors, sa.integrity_errors), (0, 0), "{sa:?}");
            assert_eq!(sa.if_id, Some(IF_ID));
        }
    }
}

#[test]
#[ignore = "needs a kernel with ESP and XFRM interfaces: vagrant/vmlab.sh runs it inside its VMs"]
fn without_the_inbound_sa_packets_are_dropped_not_delivered_in_clear() {
    let pair = Pair::new();
    let (a, b) = nodes(&pair);
    a.ns.run(|| program(&a, &b, true));
    // b has no SA for what a sends: its in policy requires one, so the ESP
    // packets find no state and are dropped; nothing reaches b's pod.
    b.ns.run(|| program(&b, &a, false));
    assert!(!ping(&a, &b), "a ping went through without b's inbound SA");
    let stat = xfrm_stat(b.ns);
    let no_state = stat
        .lines()
        .find(|l| l.starts_with("XfrmInNoStates"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(
        no_state > 0,
        "b dropped nothing for want of a state:\n{stat}"
    );
}

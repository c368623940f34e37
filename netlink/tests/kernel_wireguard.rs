//! Kernel WireGuard driven by this crate, against a real kernel module.
//!
//! The build machines' kernel has no WireGuard, so these tests are ignored by
//! a plain `cargo test` (the ignore reason says where they run) and
//! `vagrant/vmlab.sh` runs this test binary with `--ignored` inside one of
//! its VMs, on Debian's kernel with `wireguard.ko`; CI runs that lab. There
//! each test fails loudly when something it needs is missing: they never
//! pass without having touched the kernel.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Output};
use std::time::Duration;

use ipnetwork::IpNetwork;
use wireseal_core::{
    Changes, DesiredState, DevicePlan, DeviceSpec, LinkSpec, ObservedState, PeerConfig, PublicKey,
    Step, changes, plan,
};
use wireseal_keymgr::PrivateKey;
use wireseal_netlink::wireguard::WgDevice;
use wireseal_netlink::{Netlink, WireGuard};
use wireseal_netns::Netns;

const WHERE: &str = "needs a kernel with WireGuard: vagrant/vmlab.sh runs it inside its VMs";

const PORT: u16 = 51830;
const FWMARK: u32 = 0x1000_0000;
/// Peers in the large-set test: the size the control-plane benchmark uses.
const PEERS: u32 = 5000;
/// Extra allowed IPs of one peer: more than one 8 KiB message holds, so that
/// peer is split across messages on the way in and on the way out.
const WIDE_PEER_EXTRA: u32 = 700;

/// 32 bytes that are a usable public key for peer `i`. Any u-coordinate
/// works for the kernel; deriving them avoids 5,000 scalar multiplications
/// in an emulated VM.
fn peer_key(i: u32) -> PublicKey {
    let mut state = u64::from(i).wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut bytes = [0u8; 32];
    for chunk in bytes.chunks_mut(8) {
        // splitmix64
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    PublicKey::from_bytes(bytes).expect("a derived key is not low-order")
}

fn net(text: &str) -> IpNetwork {
    text.parse().expect(text)
}

/// Peer `i` as a node of a 5,000-node cluster: its underlay endpoint and
/// its /24 pod CIDR; every seventh keeps a persistent keepalive.
fn peer_config(i: u32) -> PeerConfig {
    let [_, _, hi, lo] = i.to_be_bytes();
    PeerConfig {
        endpoint: Some(SocketAddr::from((Ipv4Addr::new(198, 18, hi, lo), PORT))),
        allowed_ips: BTreeSet::from([net(&format!("10.{hi}.{lo}.0/24"))]),
        persistent_keepalive: i.is_multiple_of(7).then_some(25),
    }
}

fn desired_state(own: PublicKey, peers: BTreeMap<PublicKey, PeerConfig>) -> DesiredState {
    DesiredState {
        link: LinkSpec {
            name: "wk0".to_owned(),
            mtu: 1420,
            addresses: BTreeSet::new(),
        },
        device: DeviceSpec {
            public_key: own,
            listen_port: PORT,
            fwmark: FWMARK,
            peers,
        },
        routes: BTreeMap::new(),
        catch_alls: BTreeMap::new(),
        rules: BTreeSet::new(),
    }
}

/// What the kernel holds, in the shape the planner compares against.
fn observed_state(device: &WgDevice) -> ObservedState {
    ObservedState {
        link: Some(LinkSpec {
            name: "wk0".to_owned(),
            mtu: 1420,
            addresses: BTreeSet::new(),
        }),
        device: device.to_observation().device,
        routes: BTreeMap::new(),
        catch_alls: BTreeMap::new(),
        rules: BTreeSet::new(),
    }
}

/// Applies device changes as the agent does: as the plan's device steps
/// (settings and upserts, then removals), returning the messages sent.
async fn apply(wg: &WireGuard, plan: &DevicePlan, key: &PrivateKey) -> u64 {
    let before = wg.writes();
    let steps = Changes {
        device: plan.clone(),
        ..Changes::default()
    }
    .into_plan();
    for step in steps.steps() {
        let Step::Device(device) = step else {
            panic!("a device change planned as {step}");
        };
        wg.set_device("wk0", device, key.as_bytes())
            .await
            .unwrap_or_else(|err| panic!("{step} failed: {err}"));
    }
    wg.writes() - before
}

#[test]
#[ignore = "needs a kernel with WireGuard: vagrant/vmlab.sh runs it inside its VMs"]
fn five_thousand_peers_are_set_read_back_and_changed_by_difference() {
    let ns = Netns::new();
    ns.run_for(Duration::from_secs(600), || async {
        let nl = Netlink::connect().unwrap();
        nl.create_wireguard("wk0")
            .await
            .unwrap_or_else(|err| panic!("creating a wireguard link failed ({WHERE}): {err}"));
        let wg = WireGuard::connect().unwrap();
        let own = PrivateKey::generate().unwrap();

        let mut peers: BTreeMap<PublicKey, PeerConfig> =
            (0..PEERS).map(|i| (peer_key(i), peer_config(i))).collect();
        let wide = peer_key(0);
        let wide_peer = peers.get_mut(&wide).unwrap();
        for j in 0..WIDE_PEER_EXTRA {
            let [_, _, hi, lo] = j.to_be_bytes();
            wide_peer
                .allowed_ips
                .insert(net(&format!("172.16.{hi}.{lo}/32")));
        }
        let mut desired = desired_state(own.public_key(), peers);

        // 1. The whole set on an empty device.
        let first = changes(&desired, &ObservedState::default());
        assert_eq!(first.device.upsert_peers.len(), PEERS as usize);
        let messages = apply(&wg, &first.device, &own).await;
        let device = wg.get_device("wk0").await.unwrap();
        assert_eq!(
            device.peers.len(),
            PEERS as usize,
            "every peer is in the kernel"
        );
        assert!(device.has_private_key);
        assert_eq!(device.public_key, Some(*own.public_key().as_bytes()));
        assert_eq!((device.listen_port, device.fwmark), (PORT, FWMARK));
        let observed = observed_state(&device);
        assert!(
            observed.device.as_ref().unwrap().peers == desired.device.peers,
            "the kernel holds exactly the planned peers, allowed IPs, endpoints and keepalives"
        );
        assert_eq!(
            device
                .peers
                .iter()
                .find(|p| p.public_key == *wide.as_bytes())
                .unwrap()
                .allowed_ips
                .len(),
            1 + WIDE_PEER_EXTRA as usize,
            "the peer split across messages kept every allowed IP"
        );
        assert!(
            messages > 50,
            "5,000 peers cannot fit a few 8 KiB messages; sent {messages}"
        );
        assert!(
            plan(&desired, &observed).is_empty(),
            "re-planning against the kernel's own report is empty"
        );

        // 2. A typical change set: one node leaves, one joins, one re-keys,
        // one loses an allowed IP, the wide peer drops all its extras.
        let leaving = peer_key(1);
        let rekeyed_old = peer_key(2);
        let narrowed = peer_key(3);
        let peers = &mut desired.device.peers;
        peers.remove(&leaving);
        let config = peers.remove(&rekeyed_old).unwrap();
        peers.insert(peer_key(PEERS + 1), config);
        peers.insert(peer_key(PEERS), peer_config(PEERS));
        peers
            .get_mut(&narrowed)
            .unwrap()
            .allowed_ips
            .insert(net("10.200.0.0/24"));
        peers.get_mut(&wide).unwrap().allowed_ips = peer_config(0).allowed_ips;
        let change = changes(&desired, &observed);
        assert_eq!(change.device.remove_peers.len(), 2);
        assert_eq!(change.device.upsert_peers.len(), 4);
        assert_eq!(
            change.device.remove_allowed_ips.len(),
            WIDE_PEER_EXTRA as usize
        );
        assert!(change.device.set_private_key.is_none());
        let messages = apply(&wg, &change.device, &own).await;
        assert!(
            messages <= 4,
            "a change to five peers of 5,000 is one message of upserts, then the two \
             removals and the 700 allowed IPs taken away (through the sink) in three; sent {messages}"
        );
        let device = wg.get_device("wk0").await.unwrap();
        assert_eq!(device.peers.len(), PEERS as usize);
        let observed = observed_state(&device);
        assert!(
            observed.device.as_ref().unwrap().peers == desired.device.peers,
            "after the difference the kernel holds exactly the new set"
        );
        assert!(plan(&desired, &observed).is_empty());

        // 3. Narrowing the narrowed peer back removes just that allowed IP.
        desired
            .device
            .peers
            .get_mut(&narrowed)
            .unwrap()
            .allowed_ips
            .remove(&net("10.200.0.0/24"));
        let change = changes(&desired, &observed);
        assert_eq!(change.device.upsert_peers.len(), 1);
        assert_eq!(change.device.remove_allowed_ips.len(), 1);
        assert_eq!(
            apply(&wg, &change.device, &own).await,
            2,
            "the upsert, then the sink taking the IP away"
        );
        let device = wg.get_device("wk0").await.unwrap();
        let peer = device
            .peers
            .iter()
            .find(|p| p.public_key == *narrowed.as_bytes())
            .unwrap();
        assert_eq!(peer.allowed_ips, peer_config(3).allowed_ips);
        assert!(plan(&desired, &observed_state(&device)).is_empty());
    });
}

/// Three namespaces: A in the middle, B and C each on a veth to A.
struct Triangle {
    a: Netns,
    b: Netns,
    c: Netns,
}

impl Triangle {
    fn new() -> Self {
        let (a, b, c) = (Netns::new(), Netns::new(), Netns::new());
        a.run_ip(&[
            "link",
            "add",
            "wkab",
            "type",
            "veth",
            "peer",
            "name",
            "wkba",
            "netns",
            b.name(),
        ]);
        a.run_ip(&[
            "link",
            "add",
            "wkac",
            "type",
            "veth",
            "peer",
            "name",
            "wkca",
            "netns",
            c.name(),
        ]);
        for (ns, dev, addr) in [
            (&a, "wkab", "192.0.2.1/24"),
            (&b, "wkba", "192.0.2.2/24"),
            (&a, "wkac", "198.51.100.1/24"),
            (&c, "wkca", "198.51.100.2/24"),
        ] {
            ns.run_ip(&["addr", "add", addr, "dev", dev]);
            ns.run_ip(&["link", "set", dev, "up"]);
        }
        for (ns, addr) in [
            (&a, "10.0.0.1/24"),
            (&b, "10.0.0.2/24"),
            (&c, "10.0.0.3/24"),
        ] {
            ns.run_ip(&["link", "add", "wk0", "type", "wireguard"]);
            ns.run_ip(&["addr", "add", addr, "dev", "wk0"]);
            ns.run_ip(&["link", "set", "wk0", "up"]);
        }
        Self { a, b, c }
    }
}

fn peer(endpoint: &str, allowed: &[&str]) -> PeerConfig {
    PeerConfig {
        endpoint: Some(endpoint.parse().unwrap()),
        allowed_ips: allowed.iter().map(|a| net(a)).collect(),
        persistent_keepalive: None,
    }
}

/// Sets `key` and `peers` on `ns`'s `wk0` through this crate.
fn configure(ns: &Netns, key: &PrivateKey, peers: &[(PublicKey, &str, &[&str])]) -> WgDevice {
    let mut device = DevicePlan {
        set_private_key: Some(key.public_key()),
        listen_port: Some(PORT),
        ..DevicePlan::default()
    };
    for (key, endpoint, allowed) in peers {
        device.upsert_peers.insert(*key, peer(endpoint, allowed));
    }
    ns.run(|| async {
        let wg = WireGuard::connect().unwrap();
        apply(&wg, &device, key).await;
        wg.get_device("wk0").await.unwrap()
    })
}

fn device(ns: &Netns) -> WgDevice {
    ns.run(|| async {
        WireGuard::connect()
            .unwrap()
            .get_device("wk0")
            .await
            .unwrap()
    })
}

/// `ping -n -q ARGS` inside `ns`.
fn ping_command(ns: &Netns, args: &[&str]) -> Command {
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", ns.name(), "ping", "-n", "-q"])
        .args(args);
    command
}

fn ping(ns: &Netns, args: &[&str]) -> Output {
    ping_command(ns, args)
        .output()
        .expect("ping (iputils-ping) must be on PATH")
}

fn spawn_ping(ns: &Netns, args: &[&str]) -> std::process::Child {
    ping_command(ns, args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ping (iputils-ping) must be on PATH")
}

/// Pings until one answer comes back (the first packets start the handshake).
fn reach(ns: &Netns, addr: &str) {
    for _ in 0..20 {
        if ping(ns, &["-c", "1", "-W", "2", addr]).status.success() {
            return;
        }
    }
    panic!("{addr} never answered through WireGuard from {}", ns.name());
}

fn handshake_of(device: &WgDevice, peer: &PublicKey) -> Option<Duration> {
    device
        .peers
        .iter()
        .find(|p| p.public_key == *peer.as_bytes())
        .unwrap_or_else(|| panic!("no peer {peer} on {}", device.iface))
        .last_handshake
}

#[test]
#[ignore = "needs a kernel with WireGuard: vagrant/vmlab.sh runs it inside its VMs"]
fn allowed_ip_removal_and_a_rekeyed_peer_leave_other_sessions_alone() {
    let t = Triangle::new();
    let (ka, kb, kc, kc2) = (
        PrivateKey::generate().unwrap(),
        PrivateKey::generate().unwrap(),
        PrivateKey::generate().unwrap(),
        PrivateKey::generate().unwrap(),
    );
    let (pa, pb, pc, pc2) = (
        ka.public_key(),
        kb.public_key(),
        kc.public_key(),
        kc2.public_key(),
    );
    configure(
        &t.a,
        &ka,
        &[
            (pb, "192.0.2.2:51830", &["10.0.0.2/32", "10.9.0.0/24"]),
            (pc, "198.51.100.2:51830", &["10.0.0.3/32"]),
        ],
    );
    configure(&t.b, &kb, &[(pa, "192.0.2.1:51830", &["10.0.0.0/24"])]);
    configure(&t.c, &kc, &[(pa, "198.51.100.1:51830", &["10.0.0.0/24"])]);
    reach(&t.a, "10.0.0.2");
    reach(&t.a, "10.0.0.3");
    let session_b = handshake_of(&device(&t.a), &pb).expect("A and B have handshaken");

    // A steady stream to B across every change below: 5 s at 50 per second.
    let stream = spawn_ping(&t.a, &["-i", "0.02", "-c", "250", "-W", "1", "10.0.0.2"]);
    std::thread::sleep(Duration::from_millis(500));

    // B loses an allowed IP, as the planner does it: B's entry updated in
    // place, the lost IP taken away through the sink peer. B's other allowed
    // IP must never be missing meanwhile: the ping to it would see ENOKEY.
    let mut narrow = DevicePlan::default();
    narrow
        .upsert_peers
        .insert(pb, peer("192.0.2.2:51830", &["10.0.0.2/32"]));
    narrow.remove_allowed_ips.insert(net("10.9.0.0/24"));
    let after = t.a.run(|| async {
        let wg = WireGuard::connect().unwrap();
        apply(&wg, &narrow, &ka).await;
        wg.get_device("wk0").await.unwrap()
    });
    let b = after
        .peers
        .iter()
        .find(|p| p.public_key == *pb.as_bytes())
        .unwrap();
    assert_eq!(b.allowed_ips, BTreeSet::from([net("10.0.0.2/32")]));
    assert_eq!(after.peers.len(), 2, "the sink peer is gone");

    // C re-keys: A adds the new key (taking over C's allowed IP) and then
    // removes the old one, the order the agent's plan uses.
    configure(&t.c, &kc2, &[]);
    let mut rekey = DevicePlan::default();
    rekey
        .upsert_peers
        .insert(pc2, peer("198.51.100.2:51830", &["10.0.0.3/32"]));
    rekey.remove_peers.insert(pc);
    t.a.run(|| async {
        let wg = WireGuard::connect().unwrap();
        apply(&wg, &rekey, &ka).await;
    });
    reach(&t.a, "10.0.0.3");

    let out = stream.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains("250 received") && summary.contains(" 0% packet loss"),
        "A→B lost packets while B's allowed IPs and C's key changed: {summary}"
    );
    let a = device(&t.a);
    let keys: BTreeSet<[u8; 32]> = a.peers.iter().map(|p| p.public_key).collect();
    assert_eq!(keys, BTreeSet::from([*pb.as_bytes(), *pc2.as_bytes()]));
    assert_eq!(
        handshake_of(&a, &pb),
        Some(session_b),
        "B's session was kept: no new handshake was needed"
    );
    assert!(handshake_of(&a, &pc2).is_some(), "the new key handshook");
}

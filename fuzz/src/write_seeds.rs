//! Writes the seed corpora under fuzz/corpus/ from real inputs: the
//! annotations, Nodes, UAPI transcripts and packets of the crates' tests, and
//! netlink replies made by the netlink crate's own encoders. Run on demand
//! (fuzz/README.md); the files it writes are checked in. A libFuzzer binary
//! like the targets (it links the same instrumented crates): it writes the
//! files in libFuzzer's init hook and exits before any fuzzing.
#![no_main]
#![allow(clippy::unwrap_used, reason = "a generator: a failure is a bug to fix")]
#![allow(unreachable_code, reason = "the init hook exits before the fuzz loop")]

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeSpec, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use wireseal_core::annotation::{self, DatapathKind, NodeStatus as WiresealStatus};
use wireseal_core::{CatchAll, CatchAllKind, DevicePlan, PeerConfig, PublicKey, RouteSpec};
use wireseal_fuzz::{NoNet, encode_records};
use wireseal_keymgr::PrivateKey;
use wireseal_netlink::fuzzing::{routing_seed, wireguard_seed};
use wireseal_tunnel::device::Device;
use wireseal_tunnel::offload::{fold, sum};
use wireseal_tunnel::uapi::handle_connection;

const KEY: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";

fn key(i: u8) -> PublicKey {
    PrivateKey::from_bytes([i; 32]).unwrap().public_key()
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
}

fn status() -> WiresealStatus {
    WiresealStatus {
        datapath: Some(DatapathKind::Userspace),
        encryption: Some(annotation::Encryption::Ipsec),
        encryption_ready: false,
        peers_expected: 3,
        peers_encrypted: 2,
        message: Some("1 peer without handshake".into()),
        host_sources: vec![
            "10.244.1.1".parse().unwrap(),
            "fd00:244:1::1".parse().unwrap(),
        ],
    }
}

fn node(name: &str, i: u8, endpoint: bool) -> Node {
    let ip = format!("192.0.2.{}", 10 + i);
    let mut annotations = annotation::encode_own(
        &key(i),
        None,
        endpoint.then(|| format!("{ip}:51830").parse().unwrap()),
        Some(&status()),
        Some(u32::from(i)),
    );
    if i == 3 {
        annotations.insert(
            annotation::POD_CIDRS.into(),
            format!("10.244.{i}.0/24,fd00:244:{i}::/64"),
        );
    }
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            creation_timestamp: Some(Time(
                k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + i64::from(i)).unwrap(),
            )),
            annotations: Some(annotations),
            labels: Some(BTreeMap::from([(
                "kubernetes.io/os".into(),
                "linux".into(),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some(format!("10.244.{i}.0/24")),
            pod_cidrs: Some(vec![
                format!("10.244.{i}.0/24"),
                format!("fd00:244:{i}::/64"),
            ]),
            ..NodeSpec::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: ip,
                },
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: format!("fd00:192::{i}"),
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: name.into(),
                },
            ]),
            ..NodeStatus::default()
        }),
    }
}

libfuzzer_sys::fuzz_target!(
    init: {
        annotations();
        nodes();
        uapi();
        packets();
        netlink();
        println!("seed corpora written under fuzz/corpus/");
        std::process::exit(0);
    },
    |_data: &[u8]| {}
);

fn annotations() {
    let json = serde_json::to_string(&status()).unwrap();
    let cases: [(u8, &str, &str); 12] = [
        (0, "key", KEY),
        (
            0,
            "key-low-order",
            "4Ot6fDtBuK4WVuP68Z/EatoJjeucMrH9hmIFFl9JuAA=",
        ),
        (
            0,
            "key-newline",
            "hSDwCYkwp1R0i33ctD73\nWg2/Og0mOBr066SpjqqbTmo=",
        ),
        (1, "endpoint-v4", "192.0.2.1:51830"),
        (1, "endpoint-v6", "[2001:db8::1]:51830"),
        (1, "endpoint-link-local", "[fe80::1%eth0]:51830"),
        (1, "endpoint-mapped", "[::ffff:192.0.2.1]:51830"),
        (2, "cidrs", "10.244.1.0/24,fd00:244:1::/64"),
        (2, "cidrs-host-bits", "10.244.1.1/24"),
        (2, "cidrs-overlap", "10.244.0.0/16, 10.244.1.0/24"),
        (3, "status", &json),
        (
            3,
            "status-escape",
            r#"{"encryptionReady":true,"peersExpected":1,"peersEncrypted":1,"message":"\u001b[2J"}"#,
        ),
    ];
    for (which, name, value) in cases {
        let mut bytes = vec![which];
        bytes.extend_from_slice(value.as_bytes());
        write("annotations", name, &bytes);
    }
}

fn nodes() {
    let a = node("node-a", 1, true);
    write("node_view", "node", &serde_json::to_vec(&a).unwrap());
    write(
        "node_view",
        "node-override",
        &serde_json::to_vec(&node("node-c", 3, false)).unwrap(),
    );
    let mut bad = node("node-bad", 4, true);
    let annotations = bad.metadata.annotations.as_mut().unwrap();
    annotations.insert(annotation::PUBLIC_KEY.into(), "AAAA".into());
    annotations.insert(annotation::POD_CIDRS.into(), "192.0.2.0/24".into());
    write("node_view", "node-bad", &serde_json::to_vec(&bad).unwrap());
    let cluster = vec![a, node("node-b", 2, true), node("node-c", 3, false), bad];
    write(
        "desired_plan",
        "cluster",
        &serde_json::to_vec(&cluster).unwrap(),
    );
    // Two nodes with one key and overlapping CIDRs: one keeps them.
    let mut twin = node("node-d", 2, true);
    twin.spec.as_mut().unwrap().pod_cidrs = Some(vec!["10.244.2.0/23".into()]);
    let conflict = vec![node("node-a", 1, true), node("node-b", 2, true), twin];
    write(
        "desired_plan",
        "conflict",
        &serde_json::to_vec(&conflict).unwrap(),
    );
}

fn uapi() {
    let private = "a8b9d3a1c4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e4f";
    let (peer, peer2) = (key(2).to_hex(), key(3).to_hex());
    let set = format!(
        "set=1\nprivate_key={private}\nlisten_port=51830\nfwmark=0x10\nreplace_peers=true\n\
         public_key={peer}\npreshared_key={private}\nendpoint=[fd00::1]:51820\n\
         persistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=10.1.2.0/24\n\
         allowed_ip=fd00::/64\nprotocol_version=1\npublic_key={peer2}\nendpoint=192.0.2.3:51830\n\
         allowed_ip=10.1.3.0/24\n\n"
    );
    let transcripts = [
        ("get", "get=1\n\n".to_owned()),
        ("set", set.clone()),
        ("set-then-get", format!("{set}get=1\n\n")),
        (
            "remove",
            format!("{set}set=1\npublic_key={peer2}\nremove=true\n\nget=1\n\n"),
        ),
        ("bad", "set=1\nlisten_port=65536\n\n".to_owned()),
    ];
    for (name, text) in &transcripts {
        write("tunnel_uapi", name, text.as_bytes());
    }
    // The agent's side: what the tunnel really answers.
    let device = Device::new(Box::new(NoNet));
    let mut answer = Vec::new();
    handle_connection(&device, transcripts[2].1.as_bytes(), &mut answer).unwrap();
    let answer = String::from_utf8(answer).unwrap();
    let get = answer.split_once("\n\n").unwrap().1;
    write("agent_uapi", "get", get.as_bytes());
    write("agent_uapi", "set", b"errno=0\n\n");
    write("agent_uapi", "refused", b"errno=-22\n\n");
}

/// A TCP segment of one flow, as the GRO tests build them (timestamps option).
fn segment(v6: bool, seq: u32, payload: usize, flags: u8, sport: u16) -> Vec<u8> {
    let ip_len = if v6 { 40 } else { 20 };
    let mut p = vec![0u8; ip_len + 32];
    if v6 {
        p[0] = 0x60;
        p[6] = 6;
        p[7] = 64;
        p[8..24].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        p[24..40].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    } else {
        p[0] = 0x45;
        p[6] = 0x40;
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
    }
    let t = ip_len;
    p[t..t + 2].copy_from_slice(&sport.to_be_bytes());
    p[t + 2..t + 4].copy_from_slice(&5201u16.to_be_bytes());
    p[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
    p[t + 8..t + 12].copy_from_slice(&77u32.to_be_bytes());
    p[t + 12] = 8 << 4;
    p[t + 13] = flags;
    p[t + 14..t + 16].copy_from_slice(&512u16.to_be_bytes());
    p[t + 20..t + 32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 3]);
    p.extend((0..payload).map(|i| (seq as usize + i) as u8));
    wireseal_fuzz::fix_tcp_packet(&mut p);
    p
}

fn packets() {
    for v6 in [false, true] {
        let family = if v6 { "v6" } else { "v4" };
        let flow: Vec<Vec<u8>> = (0..4u32)
            .map(|i| segment(v6, 1000 + i * 100, 100, 0x10, 1))
            .chain([segment(v6, 1400, 40, 0x18, 1)])
            .collect();
        let records = encode_records(flow.iter().map(|p| (1, p.as_slice())));
        write("gro", &format!("flow-{family}"), &records);
        // Two flows interleaved, a gap and a FIN.
        let mixed = [
            segment(v6, 0, 100, 0x10, 1),
            segment(v6, 0, 100, 0x10, 2),
            segment(v6, 100, 100, 0x10, 1),
            segment(v6, 300, 100, 0x10, 2),
            segment(v6, 200, 0, 0x11, 1),
            segment(v6, 200, 100, 0x10, 1),
        ];
        let records = encode_records(mixed.iter().map(|p| (1, p.as_slice())));
        write("gro", &format!("mixed-{family}"), &records);
        // A TSO read: the flow's first segment with 3500 bytes, MSS 1000.
        let mut big = segment(v6, 0xffff_f000, 3500, 0x80 | 0x18, 40000);
        let ip_len: u16 = if v6 { 40 } else { 20 };
        // The kernel leaves the pseudo-header sum in the checksum field.
        let addrs = if v6 { &big[8..40] } else { &big[12..20] };
        let pseudo = fold(sum(addrs, 6 + (big.len() - usize::from(ip_len)) as u64));
        let t = usize::from(ip_len);
        big[t + 16..t + 18].copy_from_slice(&pseudo.to_be_bytes());
        let mut read = vec![1u8, if v6 { 4 } else { 1 }];
        for field in [ip_len + 32, 1000, ip_len, 16] {
            read.extend_from_slice(&field.to_ne_bytes());
        }
        read.extend_from_slice(&big);
        write("tso", &format!("gso-{family}"), &read);
        let mut plain = vec![0u8; 10];
        plain.extend_from_slice(&segment(v6, 5, 20, 0x18, 1));
        write("tso", &format!("plain-{family}"), &plain);
    }
}

fn netlink() {
    let peer = |i: u8, endpoint: Option<&str>, cidrs: &[&str]| {
        (
            key(i),
            PeerConfig {
                endpoint: endpoint.map(|e| e.parse().unwrap()),
                allowed_ips: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
                persistent_keepalive: Some(25),
            },
        )
    };
    let plan = DevicePlan {
        set_private_key: Some(key(1)),
        listen_port: Some(51830),
        fwmark: Some(0x1000_0000),
        upsert_peers: [
            peer(
                2,
                Some("192.0.2.12:51830"),
                &["10.244.2.0/24", "fd00:244:2::/64"],
            ),
            peer(3, Some("[2001:db8::3]:51830"), &["10.244.3.0/24"]),
            peer(
                4,
                None,
                &["10.244.4.0/24", "10.245.0.0/16", "fd00:244:4::/64"],
            ),
        ]
        .into(),
        remove_peers: [key(5)].into(),
        remove_allowed_ips: ["10.244.9.0/24".parse().unwrap()].into(),
    };
    write(
        "netlink_wireguard",
        "device",
        &wireguard_seed(&plan, &[7; 32], 4096),
    );
    // Split small, as the kernel splits a large device: a peer's allowed IPs
    // continue in the next message.
    write(
        "netlink_wireguard",
        "device-split",
        &wireguard_seed(&plan, &[7; 32], 200),
    );
    let route = |dst: &str, src: Option<&str>| RouteSpec {
        dst: dst.parse().unwrap(),
        dev: "wireseal0".into(),
        mtu: 1420,
        src: src.map(|s| s.parse().unwrap()),
    };
    let routes = [
        route("10.244.2.0/24", Some("10.244.1.1")),
        route("fd00:244:2::/64", Some("fd00:244:1::1")),
        route("10.244.3.0/24", None),
    ];
    let catch_alls = [
        CatchAll {
            dst: "10.244.0.0/16".parse().unwrap(),
            kind: CatchAllKind::Blackhole,
        },
        CatchAll {
            dst: "10.244.3.0/25".parse().unwrap(),
            kind: CatchAllKind::Throw,
        },
    ];
    let addresses = [
        "10.244.1.1/32".parse().unwrap(),
        "fd00:244:1::1/128".parse().unwrap(),
    ];
    write(
        "netlink_routing",
        "dump",
        &routing_seed(&routes, &catch_alls, &addresses),
    );
    write(
        "netlink_routing",
        "routes",
        &routing_seed(&routes, &[], &[]),
    );
    write(
        "netlink_routing",
        "addresses",
        &routing_seed(&[], &[], &addresses),
    );
}

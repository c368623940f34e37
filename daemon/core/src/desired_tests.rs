use super::*;
use crate::annotation::{Field, InputErrorKind};

/// A valid public key per index: X25519 of a fixed scalar.
pub(crate) fn key(i: u8) -> PublicKey {
    let public = x25519_dalek::x25519(
        [i.wrapping_add(1); 32],
        x25519_dalek::X25519_BASEPOINT_BYTES,
    );
    PublicKey::from_bytes(public).unwrap()
}

pub(crate) fn config() -> MeshConfig {
    MeshConfig {
        interface: "wireseal0".into(),
        listen_port: 51830,
        fwmark: 0x1000_0000,
        route_table: 51830,
        rule_priority: 90,
        mtu: 1440,
        persistent_keepalive: Some(25),
        local_addresses: BTreeSet::new(),
        tunnel_addresses: BTreeSet::new(),
    }
}

fn view(name: &str, key_index: Option<u8>, cidrs: &[&str], ip: &str) -> NodeView {
    NodeView {
        name: name.into(),
        addresses: vec![crate::node::NodeAddress {
            kind: crate::node::AddressKind::Internal,
            ip: ip.parse().unwrap(),
        }],
        pod_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
        public_key: key_index.map(key),
        ..NodeView::default()
    }
}

fn cluster() -> Vec<NodeView> {
    vec![
        view("a", Some(0), &["10.244.0.0/24"], "192.0.2.10"),
        view(
            "b",
            Some(1),
            &["10.244.1.0/24", "fd00:244:1::/64"],
            "192.0.2.11",
        ),
        view("c", Some(2), &["10.244.2.0/24"], "192.0.2.12"),
    ]
}

#[test]
fn peers_are_the_other_nodes() {
    let d = desired("a", &key(0), &cluster(), &config());
    let peers: Vec<_> = d.state.device.peers.keys().copied().collect();
    assert_eq!(peers.len(), 2);
    assert!(peers.contains(&key(1)) && peers.contains(&key(2)));
    assert_eq!(d.peer_nodes[&key(1)], "b");
    let b = &d.state.device.peers[&key(1)];
    assert_eq!(b.endpoint.unwrap().to_string(), "192.0.2.11:51830");
    assert_eq!(b.allowed_ips.len(), 2);
    assert_eq!(b.persistent_keepalive, Some(25));
    assert_eq!(d.state.routes.len(), 3);
    assert!(
        d.state
            .routes
            .values()
            .all(|r| r.dev == "wireseal0" && r.mtu == 1440)
    );
    assert_eq!(
        d.state.rules.iter().map(|r| r.family).collect::<Vec<_>>(),
        vec![Family::V4, Family::V6]
    );
    assert!(d.nodes.values().all(|o| o.issues.is_empty()));
    assert!(!d.nodes.contains_key("a"));
}

#[test]
fn a_published_endpoint_wins_over_the_internal_ip() {
    let mut nodes = cluster();
    nodes[1].endpoint = Some("198.51.100.7:4000".parse().unwrap());
    let d = desired("a", &key(0), &nodes, &config());
    assert_eq!(
        d.state.device.peers[&key(1)].endpoint.unwrap().to_string(),
        "198.51.100.7:4000"
    );
}

#[test]
fn duplicate_keys_program_neither_node() {
    let mut nodes = cluster();
    nodes.push(view("d", Some(2), &["10.244.3.0/24"], "192.0.2.13"));
    let d = desired("a", &key(0), &nodes, &config());
    assert_eq!(
        d.state.device.peers.keys().copied().collect::<Vec<_>>(),
        vec![key(1)]
    );
    assert_eq!(
        d.nodes["c"].issues,
        vec![PeerIssue::DuplicateKey {
            others: vec!["d".into()]
        }]
    );
    assert_eq!(
        d.nodes["d"].issues,
        vec![PeerIssue::DuplicateKey {
            others: vec!["c".into()]
        }]
    );
    assert_eq!(d.nodes["c"].peer, None);
}

#[test]
fn a_node_claiming_our_key_is_not_a_peer() {
    let mut nodes = cluster();
    nodes[2].public_key = Some(key(0));
    let d = desired("a", &key(0), &nodes, &config());
    assert_eq!(d.nodes["c"].issues, vec![PeerIssue::KeyIsOurs]);
    assert!(!d.state.device.peers.contains_key(&key(0)));
}

#[test]
fn missing_or_invalid_keys_are_reported() {
    let mut nodes = cluster();
    nodes[1].public_key = None;
    nodes[2].public_key = None;
    nodes[2].problems.push(NodeInputError::new(
        "c",
        Field::Annotation(crate::annotation::PUBLIC_KEY),
        "garbage",
        InputErrorKind::Empty,
    ));
    let d = desired("a", &key(0), &nodes, &config());
    assert!(d.state.device.peers.is_empty());
    assert!(
        d.state.rules.is_empty(),
        "no rule without a route to steer to"
    );
    assert_eq!(d.nodes["b"].issues, vec![PeerIssue::MissingKey]);
    assert!(matches!(
        d.nodes["c"].issues[..],
        [PeerIssue::InvalidInput(_)]
    ));
}

#[test]
fn overlapping_pod_cidrs_are_left_out_on_both_sides() {
    let mut nodes = cluster();
    nodes[2].pod_cidrs.push("10.244.1.128/25".parse().unwrap());
    nodes.push(view("d", Some(3), &["10.244.0.0/25"], "192.0.2.13"));
    let d = desired("a", &key(0), &nodes, &config());
    let b = &d.state.device.peers[&key(1)];
    assert_eq!(
        b.allowed_ips
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        vec!["fd00:244:1::/64"]
    );
    let c = &d.state.device.peers[&key(2)];
    assert_eq!(
        c.allowed_ips
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        vec!["10.244.2.0/24"]
    );
    // d overlaps our own CIDR: it has nothing left and is not a peer.
    assert!(!d.state.device.peers.contains_key(&key(3)));
    assert!(matches!(
        d.nodes["d"].issues[..],
        [PeerIssue::CidrConflict { .. }, PeerIssue::NoPodCidrs]
    ));
    assert!(
        !d.state
            .routes
            .contains_key(&"10.244.1.0/24".parse().unwrap())
    );
}

#[test]
fn an_invalid_node_cannot_knock_out_a_valid_one_with_an_overlapping_cidr() {
    let mut nodes = cluster();
    nodes.push(view("intruder", None, &["10.244.1.0/25"], "192.0.2.99"));
    let d = desired("a", &key(0), &nodes, &config());
    assert_eq!(
        d.state.device.peers[&key(1)].allowed_ips.len(),
        2,
        "node b keeps its CIDRs"
    );
    assert_eq!(d.nodes["intruder"].issues, vec![PeerIssue::MissingKey]);
}

#[test]
fn a_node_without_pod_cidrs_or_address() {
    let mut nodes = cluster();
    nodes[1].pod_cidrs.clear();
    nodes[2].addresses.clear();
    let d = desired("a", &key(0), &nodes, &config());
    assert_eq!(d.nodes["b"].issues, vec![PeerIssue::NoPodCidrs]);
    assert_eq!(d.nodes["c"].issues, vec![PeerIssue::NoEndpoint]);
    assert_eq!(d.state.device.peers[&key(2)].endpoint, None);
}

#[test]
fn unknown_self_still_yields_peers() {
    let d = desired("not-registered-yet", &key(9), &cluster(), &config());
    assert_eq!(d.state.device.peers.len(), 3);
}

#[test]
fn routes_wait_for_a_handshake() {
    let mut d = desired("a", &key(0), &cluster(), &config());
    let awaiting = gate_routes(&mut d, &[key(2)].into(), &BTreeSet::new());
    assert_eq!(awaiting, [key(1)].into());
    // b stays a peer so its handshake can complete, but nothing is routed to it yet.
    assert!(d.state.device.peers.contains_key(&key(1)));
    assert_eq!(
        d.state
            .routes
            .keys()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        vec!["10.244.2.0/24"]
    );
    assert_eq!(
        d.state.rules.iter().map(|r| r.family).collect::<Vec<_>>(),
        vec![Family::V4],
        "no IPv6 route left"
    );
    assert_eq!(d.nodes["b"].issues, vec![PeerIssue::AwaitingHandshake]);
    let mut all = desired("a", &key(0), &cluster(), &config());
    assert!(gate_routes(&mut all, &[key(1), key(2)].into(), &BTreeSet::new()).is_empty());
    assert_eq!(all.state.routes.len(), 3);
}

fn with_addresses(addresses: &[&str]) -> MeshConfig {
    MeshConfig {
        local_addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
        ..config()
    }
}

#[test]
fn host_traffic_gets_the_lowest_own_pod_address_as_source() {
    // The node's underlay address, a pod gateway and a second address in our
    // CIDR, an address in b's CIDR (not ours), and an IPv6 address while we
    // have no IPv6 pod CIDR.
    let config = with_addresses(&[
        "192.0.2.10",
        "10.244.0.9",
        "10.244.0.1",
        "10.244.1.1",
        "fd00:244:1::1",
    ]);
    let d = desired("a", &key(0), &cluster(), &config);
    let v4: IpAddr = "10.244.0.1".parse().unwrap();
    for route in d.state.routes.values() {
        match Family::of(&route.dst) {
            Family::V4 => assert_eq!(route.src, Some(v4), "{route:?}"),
            Family::V6 => assert_eq!(route.src, None, "{route:?}"),
        }
    }
    assert_eq!(d.host_sources, BTreeMap::from([(Family::V4, v4)]));
    // b's IPv6 CIDR is routed into the tunnel, but we have no IPv6 pod CIDR.
    assert_eq!(
        d.host_source_issues,
        vec![NoHostSource {
            node: "a".into(),
            family: Family::V6,
            pod_cidrs: vec![],
        }]
    );
    // Allowed IPs are the pod CIDRs: the source needs no change there.
    assert_eq!(
        d.state.device.peers[&key(1)].allowed_ips,
        cluster()[1].pod_cidrs.iter().copied().collect()
    );
}

#[test]
fn dual_stack_sources_per_family() {
    let mut nodes = cluster();
    nodes[0].pod_cidrs.push("fd00:244::/64".parse().unwrap());
    let config = with_addresses(&["fd00:244::1", "10.244.0.1", "fd00:244::"]);
    let d = desired("a", &key(0), &nodes, &config);
    assert_eq!(
        d.host_sources,
        BTreeMap::from([
            (Family::V4, "10.244.0.1".parse().unwrap()),
            (Family::V6, "fd00:244::".parse().unwrap()),
        ])
    );
    assert!(d.host_source_issues.is_empty());
    let v6 = &d.state.routes[&"fd00:244:1::/64".parse().unwrap()];
    assert_eq!(v6.src, Some("fd00:244::".parse().unwrap()));
    assert_eq!(
        host_source(
            &nodes[0].pod_cidrs,
            &config.local_addresses,
            &BTreeSet::new(),
            Family::V6
        ),
        Some("fd00:244::".parse().unwrap())
    );
}

#[test]
fn without_an_own_pod_address_routes_go_without_source_and_say_why() {
    let d = desired("a", &key(0), &cluster(), &with_addresses(&["192.0.2.10"]));
    assert!(d.state.routes.values().all(|r| r.src.is_none()));
    assert!(d.host_sources.is_empty());
    let families: Vec<Family> = d.host_source_issues.iter().map(|i| i.family).collect();
    assert_eq!(families, vec![Family::V4, Family::V6]);
    let v4 = d.host_source_issues[0].to_string();
    for part in [
        "node a ",
        "no IPv4 address inside its pod CIDRs 10.244.0.0/24",
        "host-network traffic",
        "pods on other nodes",
        "drops it",
        "cni0",
    ] {
        assert!(v4.contains(part), "{part:?} missing from {v4}");
    }
    let v6 = d.host_source_issues[1].to_string();
    assert!(v6.contains("node a has no IPv6 pod CIDR"), "{v6}");
    assert!(v6.contains("wireseal.dev/pod-cidrs"), "{v6}");
}

#[test]
fn no_peer_no_host_source_issue() {
    let alone = vec![cluster().remove(0)];
    let d = desired("a", &key(0), &alone, &config());
    assert!(d.host_source_issues.is_empty());
    assert!(d.host_sources.is_empty());
}

#[test]
fn host_sources_survive_the_handshake_gate() {
    let mut d = desired("a", &key(0), &cluster(), &with_addresses(&["10.244.0.1"]));
    gate_routes(&mut d, &BTreeSet::from([key(2)]), &BTreeSet::new());
    let routes: Vec<_> = d.state.routes.values().collect();
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].src, Some("10.244.0.1".parse().unwrap()));
}

#[test]
fn a_routed_cidr_stays_routed_while_its_peer_rehandshakes() {
    // b re-keyed (or was replaced): its new key has no handshake yet, but its
    // CIDRs are in the tunnel already. Taking them out would send b's traffic
    // in clear until the handshake; they stay, and the issue is still shown.
    let mut d = desired("a", &key(0), &cluster(), &config());
    let all_routes = d.state.routes.clone();
    let routed: BTreeSet<IpNetwork> = all_routes.keys().copied().collect();
    let awaiting = gate_routes(&mut d, &[key(2)].into(), &routed);
    assert_eq!(awaiting, [key(1)].into());
    assert_eq!(d.state.routes, all_routes);
    assert_eq!(d.state.rules.len(), 2, "both families keep their rule");
    assert_eq!(d.nodes["b"].issues, vec![PeerIssue::AwaitingHandshake]);
}

#[test]
fn issues_display_readably() {
    let issue = PeerIssue::DuplicateKey {
        others: vec!["x".into(), "y".into()],
    };
    assert_eq!(issue.to_string(), "public key also claimed by x, y");
}

mod sweep {
    use proptest::prelude::*;

    use super::super::conflicts;
    use crate::annotation::overlaps;

    fn pool() -> Vec<ipnetwork::IpNetwork> {
        [
            "10.0.0.0/8",
            "10.244.0.0/16",
            "10.244.1.0/24",
            "10.244.1.128/25",
            "10.244.2.0/24",
            "10.245.0.0/16",
            "192.168.0.0/24",
            "fd00::/8",
            "fd00:244::/48",
            "fd00:244:1::/64",
            "fd01::/16",
            "::/0",
            "0.0.0.0/0",
        ]
        .iter()
        .map(|c| c.parse().unwrap())
        .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]
        /// The sweep flags exactly the claims that overlap a claim of another node.
        #[test]
        fn sweep_equals_pairwise(claims in proptest::collection::vec((0usize..5, proptest::sample::select(pool())), 0..12)) {
            let names = ["a", "b", "c", "d", "e"];
            let claims: Vec<(&str, ipnetwork::IpNetwork)> = claims.iter().map(|(n, c)| (names[*n], *c)).collect();
            let found = conflicts(&claims);
            for (node, cidr) in &claims {
                let naive = claims.iter().any(|(other, other_cidr)| other != node && overlaps(*other_cidr, *cidr));
                prop_assert_eq!(found.contains_key(&(*node, *cidr)), naive, "{} {}", node, cidr);
                if let Some((other, other_cidr)) = found.get(&(*node, *cidr)) {
                    prop_assert!(other != node && overlaps(*other_cidr, *cidr));
                }
            }
        }
    }
}

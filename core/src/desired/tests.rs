use super::*;
use crate::annotation::{Field, InputErrorKind};
use crate::node::{AddressKind, CidrSource};

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
        ..MeshConfig::default()
    }
}

fn view(name: &str, key_index: Option<u8>, cidrs: &[&str], ip: &str) -> NodeView {
    NodeView {
        name: name.into(),
        addresses: vec![crate::node::NodeAddress {
            kind: AddressKind::Internal,
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
fn a_copied_key_stays_with_the_node_that_has_it() {
    // d copies c's key. Nothing programmed yet: the older node keeps it.
    let mut nodes = cluster();
    nodes[2].created = Some(1_000);
    let mut copier = view("d", Some(2), &["10.244.3.0/24"], "192.0.2.13");
    copier.created = Some(2_000);
    nodes.push(copier);
    let d = desired("a", &key(0), &nodes, &config());
    assert_eq!(d.nodes["c"].peer, Some(key(2)));
    assert_eq!(d.peer_nodes[&key(2)], "c");
    assert_eq!(
        d.nodes["d"].issues,
        vec![PeerIssue::KeyHeldBy { owner: "c".into() }]
    );
    assert_eq!(d.nodes["d"].peer, None);
    assert_eq!(
        d.state.device.peers[&key(2)].allowed_ips,
        ["10.244.2.0/24".parse().unwrap()].into()
    );

    // Even a copier older than the victim cannot take a key the datapath
    // holds for the victim (its peer there carries the victim's CIDRs).
    let programmed = programmed_for(&d);
    nodes[3].created = Some(1);
    let again = desired(
        "a",
        &key(0),
        &nodes,
        &MeshConfig {
            programmed,
            ..config()
        },
    );
    assert_eq!(again.peer_nodes[&key(2)], "c");
    assert_eq!(again.state.device.peers, d.state.device.peers);
}

/// The peers as a datapath holds them after `d` was applied.
fn programmed_for(d: &Desired) -> BTreeMap<PublicKey, PeerConfig> {
    d.state.device.peers.clone()
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
fn an_overlapping_newcomer_is_refused_and_the_holder_keeps_its_cidr() {
    // c (older than b here? no: no creation times, so by name) claims a
    // piece of b's CIDR; d claims a piece of ours.
    let mut nodes = cluster();
    nodes[2].pod_cidrs.push("10.244.1.128/25".parse().unwrap());
    nodes.push(view("d", Some(3), &["10.244.0.0/25"], "192.0.2.13"));
    let before = desired("a", &key(0), &cluster(), &config());
    let held = MeshConfig {
        programmed: programmed_for(&before),
        ..config()
    };
    let d = desired("a", &key(0), &nodes, &held);
    // b keeps both its CIDRs: the datapath holds them for it.
    assert_eq!(
        d.state.device.peers[&key(1)],
        before.state.device.peers[&key(1)]
    );
    // c keeps its own, and only the piece of b's is refused, naming b.
    let c = &d.state.device.peers[&key(2)];
    assert_eq!(c.allowed_ips, ["10.244.2.0/24".parse().unwrap()].into());
    assert_eq!(
        d.nodes["c"].issues,
        vec![PeerIssue::CidrConflict {
            cidr: "10.244.1.128/25".parse().unwrap(),
            other: "b".into(),
            other_cidr: "10.244.1.0/24".parse().unwrap(),
        }]
    );
    // d overlaps our own CIDR: it has nothing left and is not a peer.
    assert!(!d.state.device.peers.contains_key(&key(3)));
    assert!(matches!(
        d.nodes["d"].issues[..],
        [PeerIssue::CidrConflict { .. }, PeerIssue::NoPodCidrs]
    ));
    assert_eq!(
        d.state
            .routes
            .get(&"10.244.1.0/24".parse().unwrap())
            .map(|r| r.dst),
        Some("10.244.1.0/24".parse().unwrap())
    );
    assert!(d.nodes["c"].issues.iter().all(PeerIssue::is_refusal));
}

#[test]
fn with_nothing_held_the_older_node_then_spec_over_override_wins() {
    let mut b = view("b", Some(1), &["10.244.1.0/24"], "192.0.2.11");
    let mut z = view("z", Some(9), &["10.244.1.0/24"], "192.0.2.19");
    // z is older: it wins a tie of sources.
    b.created = Some(2_000);
    z.created = Some(1_000);
    let nodes = vec![
        view("a", Some(0), &["10.244.0.0/24"], "192.0.2.10"),
        b.clone(),
        z.clone(),
    ];
    let d = desired("a", &key(0), &nodes, &config());
    assert_eq!(d.peer_nodes.get(&key(9)).map(String::as_str), Some("z"));
    assert!(!d.state.device.peers.contains_key(&key(1)));
    // The same claim through the override weighs less than spec.podCIDRs,
    // whatever the age (the override needs cluster CIDRs to be honoured).
    z.pod_cidrs_source = CidrSource::Annotation;
    let cluster = MeshConfig {
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        ..config()
    };
    let nodes = vec![nodes[0].clone(), b, z];
    let d = desired("a", &key(0), &nodes, &cluster);
    assert_eq!(d.peer_nodes.get(&key(1)).map(String::as_str), Some("b"));
    assert!(matches!(
        d.nodes["z"].issues[..],
        [PeerIssue::CidrConflict { .. }, PeerIssue::NoPodCidrs]
    ));
}

#[test]
fn hijack_claims_are_out_of_bounds() {
    // A node with a key claims what would route other traffic to itself:
    // another node's address, the API server, a DNS server (only through the
    // override, which needs cluster CIDRs), the cloud's metadata service, a
    // default route, b's endpoint.
    let mut nodes = cluster();
    nodes[1].endpoint = Some("198.51.100.7:51830".parse().unwrap());
    let mut evil = view("evil", Some(5), &[], "192.0.2.66");
    evil.pod_cidrs = [
        "192.0.2.11/32",
        "10.96.0.1/32",
        "169.254.169.254/32",
        "::/0",
        "198.51.100.0/24",
        "10.244.5.0/24",
    ]
    .iter()
    .map(|c| c.parse().unwrap())
    .collect();
    nodes.push(evil.clone());
    let guarded = MeshConfig {
        protected: ["10.96.0.1".parse().unwrap()].into(),
        ..config()
    };
    let d = desired("a", &key(0), &nodes, &guarded);
    let refused: Vec<String> = d.nodes["evil"]
        .issues
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        refused,
        [
            "pod CIDR 192.0.2.11/32 refused: it contains node b's InternalIP 192.0.2.11",
            "pod CIDR 10.96.0.1/32 refused: it contains the API server address 10.96.0.1",
            "pod CIDR 169.254.169.254/32 refused: it overlaps link-local (169.254.0.0/16)",
            "pod CIDR ::/0 refused: it is a default route",
            "pod CIDR 198.51.100.0/24 refused: it contains node b's endpoint 198.51.100.7",
        ]
    );
    // Only the honest-looking claim is routed to it.
    assert_eq!(
        d.state.device.peers[&key(5)].allowed_ips,
        ["10.244.5.0/24".parse().unwrap()].into()
    );
    for dst in [
        "192.0.2.11/32",
        "10.96.0.1/32",
        "169.254.169.254/32",
        "::/0",
    ] {
        assert!(!d.state.routes.contains_key(&dst.parse().unwrap()), "{dst}");
    }

    // Through the override, without cluster CIDRs nothing bounds a claim
    // such as a DNS server's address: the override is refused outright.
    evil.pod_cidrs = vec!["8.8.8.8/32".parse().unwrap()];
    evil.pod_cidrs_source = CidrSource::Annotation;
    let nodes = [cluster(), vec![evil]].concat();
    let d = desired("a", &key(0), &nodes, &config());
    assert_eq!(
        d.nodes["evil"].issues[0].to_string(),
        "pod CIDR 8.8.8.8/32 refused: it is outside the cluster CIDRs (none of its family is configured)"
    );
    // With cluster CIDRs, it must lie inside them.
    let bounded = MeshConfig {
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        ..config()
    };
    let d = desired("a", &key(0), &nodes, &bounded);
    assert_eq!(
        d.nodes["evil"].issues[0].to_string(),
        "pod CIDR 8.8.8.8/32 refused: it is outside the cluster CIDRs 10.244.0.0/16"
    );
    assert!(!d.state.device.peers.contains_key(&key(5)));
}

#[test]
fn unusable_endpoints_are_refused_but_the_node_stays_a_peer() {
    let mut nodes = cluster();
    nodes[1].addresses[0].ip = "127.0.0.1".parse().unwrap();
    let d = desired("a", &key(0), &nodes, &config());
    assert_eq!(d.state.device.peers[&key(1)].endpoint, None);
    assert_eq!(
        d.nodes["b"].issues[0].to_string(),
        "endpoint 127.0.0.1 refused: it is a loopback address"
    );
    let filtered = MeshConfig {
        peer_endpoint_cidrs: vec!["192.0.2.0/28".parse().unwrap()],
        ..config()
    };
    let d = desired("a", &key(0), &cluster(), &filtered);
    assert_eq!(
        d.state.device.peers[&key(1)]
            .endpoint
            .map(|e| e.ip().to_string())
            .as_deref(),
        Some("192.0.2.11")
    );
    let mut far = cluster();
    far[2].endpoint = Some("203.0.113.9:51830".parse().unwrap());
    let d = desired("a", &key(0), &far, &filtered);
    assert_eq!(d.state.device.peers[&key(2)].endpoint, None);
    assert_eq!(
        d.nodes["c"].issues[0].to_string(),
        "endpoint 203.0.113.9 refused: it is outside the peer endpoint CIDRs 192.0.2.0/28"
    );
}

fn strict(cluster: &[&str], exclude: &[&str]) -> MeshConfig {
    MeshConfig {
        strict: Some(Strict {
            catch_all_table: 51831,
            exclude: exclude.iter().map(|c| c.parse().unwrap()).collect(),
        }),
        cluster_cidrs: cluster.iter().map(|c| c.parse().unwrap()).collect(),
        protected: ["10.244.200.1".parse().unwrap()].into(),
        ..config()
    }
}

fn catch_all_list(d: &Desired) -> Vec<String> {
    d.state
        .catch_alls
        .values()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn strict_mode_blackholes_the_cluster_cidrs_and_lets_through_what_must_stay_plain() {
    let d = desired(
        "a",
        &key(0),
        &cluster(),
        &strict(&["10.244.0.0/16", "fd00:244::/40"], &["10.244.250.0/24"]),
    );
    assert_eq!(
        catch_all_list(&d),
        [
            "blackhole 10.244.0.0/16",
            "throw 10.244.0.0/24",
            "throw 10.244.200.1/32",
            "throw 10.244.250.0/24",
            "blackhole fd00:244::/40",
        ]
    );
    // Two rules per family: the tunnel's table, then the catch-alls'.
    let rules: Vec<(Family, u32, u32)> = d
        .state
        .rules
        .iter()
        .map(|r| (r.family, r.priority, r.table))
        .collect();
    assert_eq!(
        rules,
        [
            (Family::V4, 90, 51830),
            (Family::V4, 91, 51831),
            (Family::V6, 90, 51830),
            (Family::V6, 91, 51831),
        ]
    );
    // Nothing waits outside the tunnel for a handshake.
    let mut gated = d.clone();
    let awaiting = gate_routes(&mut gated, &BTreeSet::new(), &BTreeSet::new());
    assert_eq!(awaiting.len(), 2);
    assert_eq!(gated.state.routes, d.state.routes);
    assert_eq!(gated.state.rules, d.state.rules);
    assert_eq!(
        gated.nodes["b"].issues,
        vec![PeerIssue::AwaitingHandshakeStrict]
    );
}

#[test]
fn strict_mode_without_cluster_cidrs_blackholes_every_accepted_pod_cidr_and_no_refused_one() {
    let mut nodes = cluster();
    // A node without wireseal (no key): its spec CIDR is blackholed too, so
    // its pods are unreachable rather than reached in clear.
    nodes.push(view("windows", None, &["10.244.7.0/24"], "192.0.2.17"));
    // A hostile claim: never blackholed (it would take 10/8 off the network).
    nodes.push(view("evil", Some(5), &["10.0.0.0/8"], "192.0.2.66"));
    let d = desired("a", &key(0), &nodes, &strict(&[], &[]));
    assert_eq!(
        catch_all_list(&d),
        [
            "blackhole 10.244.1.0/24",
            "blackhole 10.244.2.0/24",
            "blackhole 10.244.7.0/24",
            "blackhole fd00:244:1::/64",
        ]
    );
    assert!(d.nodes["evil"].issues.iter().any(PeerIssue::is_refusal));
}

#[test]
fn no_hostile_claim_takes_anything_from_a_programmed_node() {
    // Whatever one node publishes, every honest node that the datapath
    // holds keeps its key, its CIDRs and its route.
    let honest = cluster();
    let before = desired("a", &key(0), &honest, &config());
    let held = MeshConfig {
        programmed: programmed_for(&before),
        protected: ["10.96.0.1".parse().unwrap()].into(),
        ..config()
    };
    let claims = [
        "0.0.0.0/0",
        "10.0.0.0/8",
        "10.244.0.0/16",
        "10.244.1.0/24",
        "10.244.1.0/25",
        "10.244.2.0/24",
        "10.244.0.0/24",
        "192.0.2.11/32",
        "10.96.0.1/32",
        "fd00::/8",
        "fd00:244:1::/64",
        "169.254.169.254/32",
    ];
    for copy_key in [Some(1u8), Some(2), Some(0), Some(7), None] {
        for source in [CidrSource::Spec, CidrSource::Annotation] {
            for claim in claims {
                let mut evil = view("aaa-evil", copy_key, &[claim], "192.0.2.66");
                evil.created = Some(0);
                evil.pod_cidrs_source = source;
                let nodes = [honest.clone(), vec![evil]].concat();
                for cfg in [
                    held.clone(),
                    MeshConfig {
                        cluster_cidrs: vec![
                            "10.0.0.0/8".parse().unwrap(),
                            "fd00::/8".parse().unwrap(),
                        ],
                        ..held.clone()
                    },
                ] {
                    let d = desired("a", &key(0), &nodes, &cfg);
                    for (k, peer) in &before.state.device.peers {
                        assert_eq!(
                            d.state.device.peers.get(k),
                            Some(peer),
                            "{claim} {copy_key:?} {source:?}"
                        );
                        for cidr in &peer.allowed_ips {
                            assert_eq!(
                                d.state.routes.get(cidr),
                                before.state.routes.get(cidr),
                                "{claim}"
                            );
                        }
                    }
                    assert!(
                        d.nodes["aaa-evil"].issues.iter().any(PeerIssue::is_refusal)
                            || d.nodes["aaa-evil"].peer.is_some()
                            || copy_key.is_none()
                            || copy_key == Some(0),
                        "{claim} {copy_key:?}: {:?}",
                        d.nodes["aaa-evil"]
                    );
                }
            }
        }
    }
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
    // CIDR, an address outside every pod CIDR, and an IPv6 address while we
    // have no IPv6 pod CIDR.
    let config = with_addresses(&[
        "192.0.2.10",
        "10.244.0.9",
        "10.244.0.1",
        "10.244.9.1",
        "2001:db8::5",
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
    let issue = PeerIssue::KeyHeldBy { owner: "x".into() };
    assert_eq!(
        issue.to_string(),
        "public key refused: node x publishes it too and keeps it"
    );
}

mod disjoint {
    use proptest::prelude::*;

    use crate::annotation::overlaps;
    use crate::claims::Disjoint;

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
        /// Claims offered in order: one is accepted exactly when it overlaps
        /// none accepted before it (checked pairwise), and the lookup names
        /// an accepted claim it overlaps.
        #[test]
        fn one_lookup_equals_pairwise(claims in proptest::collection::vec(proptest::sample::select(pool()), 0..12)) {
            let mut accepted = Disjoint::default();
            let mut naive: Vec<ipnetwork::IpNetwork> = Vec::new();
            for (i, cidr) in claims.iter().enumerate() {
                let blocked = naive.iter().any(|other| overlaps(*other, *cidr));
                match accepted.insert(*cidr, i) {
                    Ok(()) => {
                        prop_assert!(!blocked, "{} accepted over an overlap", cidr);
                        naive.push(*cidr);
                    }
                    Err((other, _)) => {
                        prop_assert!(blocked, "{} refused without an overlap", cidr);
                        prop_assert!(naive.contains(&other) && overlaps(other, *cidr));
                    }
                }
            }
        }
    }
}

use proptest::prelude::*;

use std::net::IpAddr;

use super::*;
use crate::desired::{MeshConfig, Strict, desired, host_source};
use crate::node::{AddressKind, NodeAddress, NodeView};
use crate::state::{CatchAllKind, Family, ObservedDevice, host_address};

fn key(i: u8) -> PublicKey {
    let public = x25519_dalek::x25519(
        [i.wrapping_add(1); 32],
        x25519_dalek::X25519_BASEPOINT_BYTES,
    );
    PublicKey::from_bytes(public).unwrap()
}

fn config(mtu: u32) -> MeshConfig {
    MeshConfig {
        interface: "wireseal0".into(),
        listen_port: 51830,
        fwmark: 0x1000_0000,
        route_table: 51830,
        rule_priority: 90,
        mtu,
        persistent_keepalive: None,
        local_addresses: BTreeSet::new(),
        tunnel_addresses: BTreeSet::new(),
        ..MeshConfig::default()
    }
}

/// Strict mode, with or without cluster CIDRs.
fn strict(config: MeshConfig, cluster: bool) -> MeshConfig {
    MeshConfig {
        strict: Some(Strict {
            catch_all_table: 51831,
            exclude: vec!["10.244.3.0/25".parse().unwrap()],
        }),
        cluster_cidrs: if cluster {
            vec![
                "10.244.0.0/16".parse().unwrap(),
                "fd00:244::/48".parse().unwrap(),
            ]
        } else {
            Vec::new()
        },
        ..config
    }
}

/// Addresses a node may have: its underlay address, addresses inside and
/// outside the pool's pod CIDRs, in both families.
fn address_pool() -> Vec<IpAddr> {
    [
        "192.0.2.10",
        "10.244.0.1",
        "10.244.0.7",
        "10.244.1.1",
        "10.244.2.129",
        "fd00:244:1::1",
        "fd00:244::",
        "2001:db8::1",
    ]
    .iter()
    .map(|a| a.parse().unwrap())
    .collect()
}

/// Addresses that may be on the tunnel link: host sources of the address
/// pool, the same address with a wider prefix (added by hand), and others.
fn link_address_pool() -> Vec<IpNetwork> {
    [
        "10.244.0.1/32",
        "10.244.0.1/24",
        "10.244.1.1/32",
        "192.0.2.10/32",
        "fd00:244:1::1/128",
        "fd00:244::/128",
        "fd00:244::/64",
    ]
    .iter()
    .map(|c| c.parse().unwrap())
    .collect()
}

fn cidr_pool() -> Vec<IpNetwork> {
    [
        "10.244.0.0/24",
        "10.244.1.0/24",
        "10.244.2.0/24",
        "10.244.3.0/24",
        "10.244.0.0/16",
        "10.244.2.128/25",
        "fd00:244:1::/64",
        "fd00:244:2::/64",
        "fd00:244::/48",
    ]
    .iter()
    .map(|c| c.parse().unwrap())
    .collect()
}

prop_compose! {
    /// A node drawn from small pools, so duplicate keys, overlapping CIDRs,
    /// missing keys and our own name all turn up often.
    fn arb_node()(
        name in 0u8..6,
        key_index in proptest::option::weighted(0.85, 0u8..7),
        cidrs in proptest::sample::subsequence(cidr_pool(), 0..3),
        has_endpoint in any::<bool>(),
        host in 1u8..250,
    ) -> NodeView {
        NodeView {
            name: format!("n{name}"),
            addresses: vec![NodeAddress { kind: AddressKind::Internal, ip: [192, 0, 2, host].into() }],
            pod_cidrs: cidrs,
            public_key: key_index.map(key),
            endpoint: has_endpoint.then(|| ([198, 51, 100, host], 51830).into()),
            ..NodeView::default()
        }
    }
}

prop_compose! {
    fn arb_peer()(
        cidrs in proptest::sample::subsequence(cidr_pool(), 0..3),
        port in proptest::option::of(1u16..3),
        keepalive in proptest::option::of(Just(25u16)),
    ) -> PeerConfig {
        PeerConfig {
            endpoint: port.map(|p| ([192, 0, 2, 10], 51830 + p).into()),
            allowed_ips: cidrs.into_iter().collect(),
            persistent_keepalive: keepalive,
        }
    }
}

prop_compose! {
    /// Whatever may be on a node: nothing, a half-configured device, stale
    /// peers, foreign MTUs, stray routes and rules in our table.
    fn arb_observed()(
        link_mtu in proptest::option::of(prop_oneof![Just(1420u32), Just(1440), Just(1500)]),
        link_addresses in proptest::sample::subsequence(link_address_pool(), 0..3),
        device in proptest::option::of((
            proptest::option::of(0u8..8),
            prop_oneof![Just(0u16), Just(51830)],
            prop_oneof![Just(0u32), Just(0x1000_0000)],
            proptest::collection::btree_map(0u8..8, arb_peer(), 0..5),
        )),
        routes in proptest::sample::subsequence(cidr_pool(), 0..5),
        route_mtu in prop_oneof![Just(1420u32), Just(1440)],
        route_src in proptest::option::of(proptest::sample::select(address_pool())),
        rules in proptest::sample::subsequence(vec![(Family::V4, 90u32, 51830u32), (Family::V6, 90, 51830), (Family::V4, 91, 51830), (Family::V4, 91, 51831), (Family::V6, 91, 51831)], 0..4),
        catch_alls in proptest::sample::subsequence(cidr_pool(), 0..3),
        throw in any::<bool>(),
    ) -> ObservedState {
        ObservedState {
            link: link_mtu.map(|mtu| LinkSpec {
                name: "wireseal0".into(),
                mtu,
                addresses: link_addresses.into_iter().collect(),
            }),
            device: device.map(|(own, listen_port, fwmark, peers)| ObservedDevice {
                public_key: own.map(key),
                listen_port,
                fwmark,
                peers: peers.into_iter().map(|(k, p)| (key(k), p)).collect(),
            }),
            routes: routes
                .into_iter()
                .map(|dst| (dst, RouteSpec { dst, dev: "wireseal0".into(), mtu: route_mtu, src: route_src }))
                .collect(),
            catch_alls: catch_alls
                .into_iter()
                .map(|dst| (dst, CatchAll { dst, kind: if throw { CatchAllKind::Throw } else { CatchAllKind::Blackhole } }))
                .collect(),
            rules: rules
                .into_iter()
                .map(|(family, priority, table)| RuleSpec { family, priority, table, fwmark: 0x1000_0000 })
                .collect(),
        }
    }
}

/// The addresses on the observed tunnel link, as the agent reads them.
fn on_tunnel(observed: &ObservedState) -> BTreeSet<IpAddr> {
    observed
        .link
        .iter()
        .flat_map(|link| link.addresses.iter().map(IpNetwork::ip))
        .collect()
}

/// This node's pod CIDRs as `desired` sees them (the last node of its name).
fn own_cidrs(nodes: &[NodeView], me: u8) -> Vec<IpNetwork> {
    let name = format!("n{me}");
    nodes
        .iter()
        .rev()
        .find(|n| n.name == name)
        .map(|n| n.pod_cidrs.clone())
        .unwrap_or_default()
}

fn self_key(i: u8) -> PublicKey {
    key(i % 7)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// Applying a plan and planning again gives nothing to do, and the node
    /// then holds exactly the desired state.
    #[test]
    fn replan_after_apply_is_empty(
        nodes in proptest::collection::vec(arb_node(), 0..8),
        observed in arb_observed(),
        me in 0u8..6,
        own in 0u8..7,
        mtu in prop_oneof![Just(1420u32), Just(1440)],
        local in proptest::sample::subsequence(address_pool(), 0..4),
        mode in 0u8..3,
    ) {
        let config = MeshConfig {
            local_addresses: local.into_iter().collect(),
            tunnel_addresses: on_tunnel(&observed),
            ..config(mtu)
        };
        let config = match mode {
            0 => config,
            strict_mode => strict(config, strict_mode == 2),
        };
        let d = desired(&format!("n{me}"), &self_key(own), &nodes, &config);
        let first = plan(&d.state, &observed);
        let mut after = observed;
        after.apply(&first);
        let second = plan(&d.state, &after);
        prop_assert!(second.is_empty(), "second plan not empty: {second:?}");
        prop_assert_eq!(after.link.as_ref(), Some(&d.state.link));
        let device = after.device.as_ref().unwrap();
        prop_assert_eq!(&device.peers, &d.state.device.peers);
        prop_assert_eq!(&after.routes, &d.state.routes);
        prop_assert_eq!(&after.catch_alls, &d.state.catch_alls);
        prop_assert_eq!(&after.rules, &d.state.rules);
        // Every route's source is this node's own address of its family,
        // inside this node's pod CIDRs.
        for route in d.state.routes.values() {
            if let Some(src) = route.src {
                prop_assert_eq!(Family::of_ip(src), Family::of(&route.dst));
                prop_assert!(config.local_addresses.contains(&src) || config.tunnel_addresses.contains(&src));
                prop_assert_eq!(d.host_sources.get(&Family::of(&route.dst)), Some(&src));
            }
        }
        // The link carries exactly the host sources, as host prefixes.
        let sources: BTreeSet<IpNetwork> =
            d.host_sources.values().copied().map(host_address).collect();
        prop_assert_eq!(&d.state.link.addresses, &sources);
        for address in &d.state.link.addresses {
            prop_assert_eq!(address.prefix(), match address { IpNetwork::V4(_) => 32, IpNetwork::V6(_) => 128 });
            prop_assert!(
                config.local_addresses.contains(&address.ip())
                    || config.tunnel_addresses.contains(&address.ip())
            );
        }
        // The CNI's address is the source when there is one; a copy on the
        // tunnel only while there is none.
        for (family, src) in &d.host_sources {
            let own = own_cidrs(&nodes, me);
            match host_source(&own, &config.local_addresses, &BTreeSet::new(), *family) {
                Some(cni) => prop_assert_eq!(cni, *src),
                None => prop_assert!(config.tunnel_addresses.contains(src)),
            }
        }
    }

    /// A route's preferred source is on the link from step 2 on, and an
    /// address leaves the link only when no desired route names it: the
    /// plan never has a route point at an address it is removing.
    #[test]
    fn a_route_source_is_on_the_link_before_the_route_and_stays(
        nodes in proptest::collection::vec(arb_node(), 0..8),
        observed in arb_observed(),
        me in 0u8..6,
        local in proptest::sample::subsequence(address_pool(), 0..4),
    ) {
        let config = MeshConfig {
            local_addresses: local.into_iter().collect(),
            tunnel_addresses: on_tunnel(&observed),
            ..config(1440)
        };
        let d = desired(&format!("n{me}"), &key(0), &nodes, &config);
        let p = changes(&d.state, &observed);
        let on_link: BTreeSet<IpNetwork> = observed
            .link
            .as_ref()
            .map(|link| link.addresses.clone())
            .unwrap_or_default();
        for src in d.state.routes.values().filter_map(|route| route.src) {
            let address = host_address(src);
            prop_assert!(on_link.contains(&address) || p.link.add_addresses.contains(&address));
            prop_assert!(!p.link.remove_addresses.contains(&address));
        }
        // Nothing is both added and removed, and a new link starts bare.
        prop_assert!(p.link.add_addresses.is_disjoint(&p.link.remove_addresses));
        if let Some(created) = &p.link.create {
            prop_assert!(created.addresses.is_empty());
        }
    }

    /// Carried out one step at a time, a plan never leaves the node in a
    /// state that misroutes or drops what the end state carries: a route's
    /// source is on the link before the route is written; a rule is added
    /// only once every desired route of its family is in the table; a peer
    /// leaves the device only after the routes to its prefixes (that no
    /// desired peer takes over) have left the table.
    #[test]
    fn every_intermediate_state_is_safe(
        nodes in proptest::collection::vec(arb_node(), 0..8),
        observed in arb_observed(),
        me in 0u8..6,
        local in proptest::sample::subsequence(address_pool(), 0..4),
    ) {
        let config = MeshConfig {
            local_addresses: local.into_iter().collect(),
            tunnel_addresses: on_tunnel(&observed),
            ..config(1440)
        };
        let d = desired(&format!("n{me}"), &key(0), &nodes, &config);
        let p = plan(&d.state, &observed);
        let mut state = observed;
        let mut catch_alls_in_place = false;
        for step in p.steps() {
            // Once the new catch-alls are in, every one the end state has
            // stays in until the plan ends: nothing between leaves a hole
            // through which traffic would go out in clear.
            if catch_alls_in_place {
                for (dst, all) in &d.state.catch_alls {
                    prop_assert_eq!(state.catch_alls.get(dst), Some(all), "{} missing before {}", dst, step);
                }
            }
            if !matches!(step, Step::RemoveRule(_) | Step::AddCatchAll(_)) {
                catch_alls_in_place = true;
            }
            match step {
                Step::ReplaceRoute(route) => {
                    if let Some(src) = route.src {
                        let on_link = state.link.as_ref().is_some_and(|l| l.addresses.contains(&host_address(src)));
                        prop_assert!(on_link, "{step} before its source is on the link");
                    }
                }
                Step::AddRule(rule) => {
                    for (dst, route) in &d.state.routes {
                        if Family::of(dst) == rule.family {
                            prop_assert_eq!(state.routes.get(dst), Some(route), "{} before {}", step, dst);
                        }
                    }
                }
                Step::Device(device) => {
                    for removed in &device.remove_peers {
                        let held = state.device.as_ref().and_then(|dev| dev.peers.get(removed));
                        for ip in held.iter().flat_map(|peer| &peer.allowed_ips) {
                            prop_assert!(
                                !state.routes.contains_key(ip) || d.state.routes.contains_key(ip),
                                "peer removed while its stale route {} is in the table", ip
                            );
                        }
                    }
                }
                _ => {}
            }
            state.apply_step(step);
        }
        prop_assert!(plan(&d.state, &state).is_empty());
    }

    /// The same nodes in any order give the same desired state and plan.
    #[test]
    fn same_inputs_same_plan(
        nodes in proptest::collection::vec(arb_node(), 0..8).prop_shuffle(),
        observed in arb_observed(),
        me in 0u8..6,
        local in proptest::sample::subsequence(address_pool(), 0..4).prop_shuffle(),
    ) {
        // Names are unique in a real cluster; keep the last of each, as desired() does.
        let mut unique: BTreeMap<String, NodeView> = BTreeMap::new();
        for node in &nodes {
            unique.insert(node.name.clone(), node.clone());
        }
        let forward: Vec<NodeView> = unique.values().cloned().collect();
        let backward: Vec<NodeView> = unique.values().rev().cloned().collect();
        let name = format!("n{me}");
        let config = MeshConfig { local_addresses: local.into_iter().collect(), ..config(1440) };
        let a = desired(&name, &key(0), &forward, &config);
        let b = desired(&name, &key(0), &backward, &config);
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(plan(&a.state, &observed), plan(&b.state, &observed));
    }

    /// Never a peer for ourselves, by name or by key.
    #[test]
    fn never_peers_with_self(
        nodes in proptest::collection::vec(arb_node(), 0..8),
        me in 0u8..6,
        own in 0u8..7,
    ) {
        let name = format!("n{me}");
        let d = desired(&name, &self_key(own), &nodes, &config(1440));
        prop_assert!(!d.state.device.peers.contains_key(&self_key(own)));
        prop_assert!(d.peer_nodes.values().all(|n| *n != name));
        prop_assert!(!d.nodes.contains_key(&name));
    }

    /// A plan never removes a peer that is still desired (that would reset its
    /// session), and the peers it keeps have disjoint allowed IPs.
    #[test]
    fn never_removes_a_desired_peer(
        nodes in proptest::collection::vec(arb_node(), 0..8),
        observed in arb_observed(),
        me in 0u8..6,
    ) {
        let d = desired(&format!("n{me}"), &key(0), &nodes, &config(1440));
        let p = changes(&d.state, &observed);
        for removed in &p.device.remove_peers {
            prop_assert!(!d.state.device.peers.contains_key(removed));
        }
        // An allowed IP is taken away only when no desired peer claims it.
        for ip in &p.device.remove_allowed_ips {
            prop_assert!(d.state.device.peers.values().all(|peer| !peer.allowed_ips.contains(ip)));
        }
        let peers: Vec<&PeerConfig> = d.state.device.peers.values().collect();
        for (i, peer) in peers.iter().enumerate() {
            for other in &peers[i + 1..] {
                for ip in &peer.allowed_ips {
                    prop_assert!(
                        !other.allowed_ips.iter().any(|o| crate::annotation::overlaps(*o, *ip)),
                        "{ip} given to two peers"
                    );
                }
            }
        }
    }
}

#[test]
fn nothing_on_the_node_plans_everything_in_order() {
    let nodes = vec![NodeView {
        name: "b".into(),
        pod_cidrs: vec!["10.244.1.0/24".parse().unwrap()],
        public_key: Some(key(1)),
        endpoint: Some("192.0.2.11:51830".parse().unwrap()),
        ..NodeView::default()
    }];
    let d = desired("a", &key(0), &nodes, &config(1440));
    let p = changes(&d.state, &ObservedState::default());
    assert_eq!(
        p.link.create,
        Some(LinkSpec {
            name: "wireseal0".into(),
            mtu: 1440,
            addresses: BTreeSet::new(),
        })
    );
    assert_eq!(p.device.set_private_key, Some(key(0)));
    assert_eq!(p.device.listen_port, Some(51830));
    assert_eq!(p.device.fwmark, Some(0x1000_0000));
    assert_eq!(p.device.upsert_peers.len(), 1);
    assert_eq!(p.routing.add_routes.len(), 1);
    assert_eq!(p.routing.add_rules.len(), 1);
    assert_eq!(p.len(), 7);
    let steps = plan(&d.state, &ObservedState::default());
    let kinds: Vec<&str> = steps.steps().iter().map(kind).collect();
    assert_eq!(kinds, ["create link", "device", "route", "add rule"]);
    assert_eq!(steps.len(), 7);
}

fn kind(step: &Step) -> &'static str {
    match step {
        Step::RemoveRule(_) => "remove rule",
        Step::AddCatchAll(_) => "add catch-all",
        Step::RemoveCatchAll(_) => "remove catch-all",
        Step::CreateLink(_) => "create link",
        Step::SetMtu { .. } => "mtu",
        Step::AddAddress { .. } => "add address",
        Step::Device(_) => "device",
        Step::ReplaceRoute(_) => "route",
        Step::RemoveRoute(_) => "remove route",
        Step::RemoveAddress { .. } => "remove address",
        Step::AddRule(_) => "add rule",
    }
}

#[test]
fn every_kind_of_change_comes_in_the_documented_order() {
    // b leaves, c arrives, a's source moves (its old address goes, taking
    // the link's last IPv4 address, so the IPv4 routes are written again),
    // the MTU changes, and a stale rule of another priority goes.
    let node = |name: &str, k, cidr: &str| NodeView {
        name: name.into(),
        pod_cidrs: vec![cidr.parse().unwrap()],
        public_key: Some(key(k)),
        endpoint: Some("192.0.2.11:51830".parse().unwrap()),
        ..NodeView::default()
    };
    let before = [node("a", 0, "10.244.0.0/24"), node("b", 1, "10.244.1.0/24")];
    let mut observed = programmed(&before, &sourced(&["10.244.0.1"]));
    observed.rules.insert(RuleSpec {
        family: Family::V4,
        priority: 91,
        table: 51830,
        fwmark: 0x1000_0000,
    });
    let after = [node("a", 0, "fd00:244::/64"), node("c", 2, "10.244.2.0/24")];
    let want = desired("a", &key(0), &after, &config(1400));
    let p = plan(&want.state, &observed);
    let kinds: Vec<&str> = p.steps().iter().map(kind).collect();
    assert_eq!(
        kinds,
        [
            "remove rule",
            "mtu",
            "device",
            "remove route",
            "device",
            "remove address",
            "route",
        ],
        "{p:#?}"
    );
    // The new route is written after the address removal flushed the link's
    // IPv4 routes, not before (where the flush would take it away again).
    let mut model = observed.clone();
    model.apply(&p);
    assert_eq!(model.routes, want.state.routes);
    assert!(plan(&want.state, &model).is_empty());
    // The first device step adds c; the second removes b, after b's route.
    let devices: Vec<&DevicePlan> = p
        .steps()
        .iter()
        .filter_map(|step| match step {
            Step::Device(device) => Some(device),
            _ => None,
        })
        .collect();
    assert_eq!(
        devices[0].upsert_peers.keys().collect::<Vec<_>>(),
        [&key(2)]
    );
    assert!(devices[0].remove_peers.is_empty());
    assert_eq!(
        devices[1].remove_peers.iter().collect::<Vec<_>>(),
        [&key(1)]
    );
    assert!(devices[1].upsert_peers.is_empty());
}

#[test]
fn a_narrowed_peer_loses_just_that_allowed_ip_and_a_moved_one_moves() {
    let node = |name: &str, k, cidrs: &[&str]| NodeView {
        name: name.into(),
        pod_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
        public_key: Some(key(k)),
        endpoint: Some("192.0.2.11:51830".parse().unwrap()),
        ..NodeView::default()
    };
    let before = desired(
        "a",
        &key(0),
        &[
            node(
                "b",
                1,
                &["10.244.1.0/24", "10.244.101.0/24", "10.244.201.0/24"],
            ),
            node("c", 2, &["10.244.2.0/24"]),
        ],
        &config(1440),
    );
    let mut observed = ObservedState::default();
    observed.apply(&plan(&before.state, &observed));
    // b drops 10.244.101.0/24 (nobody takes it) and hands 10.244.201.0/24 to c.
    let after = desired(
        "a",
        &key(0),
        &[
            node("b", 1, &["10.244.1.0/24"]),
            node("c", 2, &["10.244.2.0/24", "10.244.201.0/24"]),
        ],
        &config(1440),
    );
    let p = changes(&after.state, &observed);
    assert_eq!(
        p.device.remove_allowed_ips,
        ["10.244.101.0/24".parse().unwrap()].into(),
        "only the IP nobody claims is taken away; the moved one moves with c's upsert"
    );
    assert!(p.device.remove_peers.is_empty(), "no session is reset");
    observed.apply(&p.into_plan());
    assert!(plan(&after.state, &observed).is_empty());
    assert_eq!(observed.device.unwrap().peers, after.state.device.peers);
}

#[test]
fn a_rekeyed_node_adds_the_new_peer_and_removes_the_old() {
    let node = |k| NodeView {
        name: "b".into(),
        pod_cidrs: vec!["10.244.1.0/24".parse().unwrap()],
        public_key: Some(key(k)),
        endpoint: Some("192.0.2.11:51830".parse().unwrap()),
        ..NodeView::default()
    };
    let before = desired("a", &key(0), &[node(1)], &config(1440));
    let mut observed = ObservedState::default();
    observed.apply(&plan(&before.state, &observed));
    let after = desired("a", &key(0), &[node(2)], &config(1440));
    let p = changes(&after.state, &observed);
    assert_eq!(
        p.device.upsert_peers.keys().copied().collect::<Vec<_>>(),
        vec![key(2)]
    );
    assert_eq!(
        p.device.remove_peers.iter().copied().collect::<Vec<_>>(),
        vec![key(1)]
    );
    assert!(
        p.routing.is_empty(),
        "routes and rules stay: {:?}",
        p.routing
    );
    assert_eq!(p.len(), 2);
}

/// Node "b", a peer with pod CIDR 10.244.1.0/24.
fn node_b() -> NodeView {
    NodeView {
        name: "b".into(),
        pod_cidrs: vec!["10.244.1.0/24".parse().unwrap()],
        public_key: Some(key(1)),
        ..NodeView::default()
    }
}

/// Node "a" with `nodes` programmed as `config` wants, from nothing.
fn programmed(nodes: &[NodeView], config: &MeshConfig) -> ObservedState {
    let mut observed = ObservedState::default();
    observed.apply(&plan(
        &desired("a", &key(0), nodes, config).state,
        &observed,
    ));
    observed
}

#[test]
fn an_mtu_change_replaces_routes_and_sets_the_link() {
    let nodes = vec![node_b()];
    let observed = programmed(&nodes, &config(1440));
    let p = changes(
        &desired("a", &key(0), &nodes, &config(1420)).state,
        &observed,
    );
    assert_eq!(p.link.set_mtu, Some(1420));
    assert_eq!(p.routing.add_routes.len(), 1);
    assert!(p.routing.remove_routes.is_empty());
    assert!(p.device.is_empty());
}

#[test]
fn set_mtu_equals_computing_with_that_mtu() {
    let nodes = vec![NodeView {
        name: "b".into(),
        pod_cidrs: vec![
            "10.244.1.0/24".parse().unwrap(),
            "fd00:244:1::/64".parse().unwrap(),
        ],
        public_key: Some(key(1)),
        ..NodeView::default()
    }];
    let mut first = desired("a", &key(0), &nodes, &config(1420));
    first.state.set_mtu(1380);
    assert_eq!(
        first.state,
        desired("a", &key(0), &nodes, &config(1380)).state
    );
}

#[test]
fn tunnel_mtu_follows_the_underlay() {
    use crate::state::tunnel_mtu;
    assert_eq!(tunnel_mtu(1500, Family::V4), Some(1440));
    assert_eq!(tunnel_mtu(1500, Family::V6), Some(1420));
    assert_eq!(tunnel_mtu(9001, Family::V4), Some(8941));
    assert_eq!(tunnel_mtu(1300, Family::V4), None);
    assert_eq!(tunnel_mtu(40, Family::V6), None);
}

#[test]
fn a_new_source_replaces_the_routes_in_place() {
    let all = with_own_cidr("10.244.0.0/24");
    let mut observed = programmed(&all, &config(1440));
    let gateway: IpAddr = "10.244.0.1".parse().unwrap();
    let with_source = MeshConfig {
        local_addresses: [gateway].into(),
        ..config(1440)
    };
    let p = changes(&desired("a", &key(0), &all, &with_source).state, &observed);
    // A replace (NLM_F_REPLACE), never a remove and add: no gap for pod traffic.
    assert_eq!(p.routing.add_routes.len(), 1);
    assert!(p.routing.remove_routes.is_empty());
    assert_eq!(
        p.routing.add_routes.values().next().unwrap().src,
        Some(gateway)
    );
    // And the source goes on the link: the only other change.
    assert_eq!(p.link.add_addresses, nets(&["10.244.0.1/32"]));
    assert_eq!(p.len(), 2);
    observed.apply(&p.into_plan());
    // The CNI's address goes: the copy on the link stays the source.
    let copy_only = MeshConfig {
        tunnel_addresses: on_tunnel(&observed),
        ..config(1440)
    };
    let p = changes(&desired("a", &key(0), &all, &copy_only).state, &observed);
    assert!(p.is_empty(), "{p:?}");
    // Neither is there (someone took the copy too): the route loses its
    // source the same way, in place.
    let p = changes(&desired("a", &key(0), &all, &config(1440)).state, &observed);
    assert_eq!(p.routing.restore_routes.values().next().unwrap().src, None);
    assert!(p.routing.remove_routes.is_empty());
    assert_eq!(p.link.remove_addresses, nets(&["10.244.0.1/32"]));
}

/// Node "a" with pod CIDR `cidr`, beside node "b".
fn with_own_cidr(cidr: &str) -> [NodeView; 2] {
    [
        NodeView {
            name: "a".into(),
            pod_cidrs: vec![cidr.parse().unwrap()],
            ..NodeView::default()
        },
        node_b(),
    ]
}

fn sourced(addresses: &[&str]) -> MeshConfig {
    MeshConfig {
        local_addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
        ..config(1440)
    }
}

fn nets(addresses: &[&str]) -> BTreeSet<IpNetwork> {
    addresses.iter().map(|a| a.parse().unwrap()).collect()
}

#[test]
fn the_host_source_goes_on_the_link_and_follows_the_cni() {
    // A new link is created bare; the source goes on it next, as a /32.
    let all = with_own_cidr("10.244.0.0/24");
    let cni = sourced(&["192.0.2.10", "10.244.0.1"]);
    let want = desired("a", &key(0), &all, &cni);
    assert_eq!(want.state.link.addresses, nets(&["10.244.0.1/32"]));
    let p = changes(&want.state, &ObservedState::default());
    assert_eq!(p.link.create.as_ref().unwrap().addresses, BTreeSet::new());
    assert_eq!(p.link.add_addresses, nets(&["10.244.0.1/32"]));
    let mut observed = ObservedState::default();
    observed.apply(&p.into_plan());
    assert!(plan(&want.state, &observed).is_empty());

    // The pod CIDR changes and the CNI moves its gateway into it: the new
    // address is added, the route replaced, the old address removed.
    let all = with_own_cidr("10.244.5.0/24");
    let moved = desired("a", &key(0), &all, &sourced(&["192.0.2.10", "10.244.5.1"]));
    let p = changes(&moved.state, &observed);
    assert_eq!(p.link.add_addresses, nets(&["10.244.5.1/32"]));
    assert_eq!(p.link.remove_addresses, nets(&["10.244.0.1/32"]));
    assert_eq!(
        p.routing.add_routes.values().next().unwrap().src,
        Some("10.244.5.1".parse().unwrap())
    );
    assert_eq!(p.len(), 3);
    observed.apply(&p.into_plan());

    // The CNI's address goes (a ptp CNI's with the node's last pod): the
    // copy on the link stays the source, and nothing changes.
    let copy_only = MeshConfig {
        tunnel_addresses: on_tunnel(&observed),
        ..sourced(&["192.0.2.10"])
    };
    let p = changes(&desired("a", &key(0), &all, &copy_only).state, &observed);
    assert!(p.is_empty(), "{p:?}");

    // The pod CIDR changes again, and the CNI has no address in the new one
    // yet: the copy is outside it, so it goes, and it is the link's last
    // IPv4 address. Linux then flushes the IPv4 routes through the link, so
    // they are written after the removal, not before.
    let all = with_own_cidr("10.244.6.0/24");
    let stale = desired("a", &key(0), &all, &copy_only);
    assert!(stale.host_sources.is_empty());
    let p = changes(&stale.state, &observed);
    assert_eq!(p.link.remove_addresses, nets(&["10.244.5.1/32"]));
    assert!(p.link.add_addresses.is_empty());
    assert!(p.routing.add_routes.is_empty());
    let restored = p.routing.restore_routes.values().next().unwrap();
    assert_eq!(
        (restored.dst, restored.src),
        ("10.244.1.0/24".parse().unwrap(), None)
    );
    observed.apply(&p.clone().into_plan());
    assert!(observed.link.as_ref().unwrap().addresses.is_empty());
    assert!(plan(&stale.state, &observed).is_empty());
}

/// Node "a" and its peer "b", each with an IPv4 and an IPv6 pod CIDR.
fn dual_stack() -> [NodeView; 2] {
    [
        NodeView {
            name: "a".into(),
            pod_cidrs: vec![
                "10.244.0.0/24".parse().unwrap(),
                "fd00:244::/64".parse().unwrap(),
            ],
            ..NodeView::default()
        },
        NodeView {
            pod_cidrs: vec![
                "10.244.1.0/24".parse().unwrap(),
                "fd00:244:1::/64".parse().unwrap(),
            ],
            ..node_b()
        },
    ]
}

#[test]
fn losing_the_last_ipv4_address_flushes_ipv4_routes_in_the_model_and_the_plan_restores_them() {
    // Dual stack: b's IPv4 and IPv6 CIDRs routed; a's IPv4 source goes,
    // its IPv6 one stays.
    let all = dual_stack();
    let both = sourced(&["10.244.0.1", "fd00:244::1"]);
    let mut observed = programmed(&all, &both);
    let v6_only = desired("a", &key(0), &all, &sourced(&["fd00:244::1"]));
    let p = changes(&v6_only.state, &observed);
    // Only the IPv4 route is restored; the IPv6 one is untouched.
    assert_eq!(
        p.routing.restore_routes.keys().copied().collect::<Vec<_>>(),
        vec!["10.244.1.0/24".parse::<IpNetwork>().unwrap()]
    );
    assert!(p.routing.add_routes.is_empty());
    // Without the restore, the model loses the IPv4 route, as the kernel does.
    let mut unrestored = observed.clone();
    unrestored.apply(
        &Changes {
            routing: RoutingChanges::default(),
            ..p.clone()
        }
        .into_plan(),
    );
    assert_eq!(
        unrestored.routes.keys().copied().collect::<Vec<_>>(),
        vec!["fd00:244:1::/64".parse::<IpNetwork>().unwrap()]
    );
    observed.apply(&p.into_plan());
    assert_eq!(observed.routes, v6_only.state.routes);
    // Losing the IPv6 address, by contrast, flushes nothing: a plain replace.
    let v4_only = desired("a", &key(0), &all, &sourced(&["10.244.0.1"]));
    let mut observed = programmed(&all, &both);
    let p = changes(&v4_only.state, &observed);
    assert!(p.routing.restore_routes.is_empty());
    assert_eq!(p.routing.add_routes.len(), 1);
    observed.apply(&p.into_plan());
    assert_eq!(observed.routes, v4_only.state.routes);
}

#[test]
fn the_link_keeps_only_the_host_sources_and_ipv6_gets_a_128() {
    let all = dual_stack();
    let want = desired(
        "a",
        &key(0),
        &all,
        &sourced(&["10.244.0.1", "fd00:244::1", "2001:db8::1"]),
    );
    assert_eq!(
        want.state.link.addresses,
        nets(&["10.244.0.1/32", "fd00:244::1/128"])
    );
    // Found on the link: the same address with another prefix, and one
    // somebody added by hand. Both go; the /32 and /128 come.
    let mut observed = programmed(&all, &config(1440));
    observed.link.as_mut().unwrap().addresses = nets(&["10.244.0.1/24", "198.51.100.7/32"]);
    let p = changes(&want.state, &observed);
    assert_eq!(
        p.link.add_addresses,
        nets(&["10.244.0.1/32", "fd00:244::1/128"])
    );
    assert_eq!(
        p.link.remove_addresses,
        nets(&["10.244.0.1/24", "198.51.100.7/32"])
    );
    observed.apply(&p.into_plan());
    assert!(plan(&want.state, &observed).is_empty());
}

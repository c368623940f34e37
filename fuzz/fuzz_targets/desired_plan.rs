//! Arbitrary Nodes (a JSON list, the first one this node) through `desired()`
//! and `plan()`, in plain and strict mode, starting from the state an earlier
//! set of Nodes left: never a route to a special-purpose range, a default
//! route, a node's address, a peer's endpoint or the API server; one owner per
//! allowed IP; the same Nodes in another order give the same state; a plan
//! carried out leaves exactly the desired state, and planning again gives
//! nothing to do.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Node;
use libfuzzer_sys::fuzz_target;
use wireseal_core::claims::SPECIAL_PURPOSE;
use wireseal_core::{
    Desired, MeshConfig, NodeView, ObservedState, PublicKey, Strict, desired, plan,
};
use wireseal_fuzz::assert_printable;
use wireseal_fuzz::node_view::node_view;

/// This node's key (any valid key; a Node may publish it too).
const SELF_KEY: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";
/// The API server's address: never routed into the tunnel.
const API_SERVER: &str = "10.244.7.1";

fn net(text: &str) -> IpNetwork {
    text.parse().expect("a literal network")
}

fn config(strict: bool, local: &BTreeSet<IpAddr>) -> MeshConfig {
    MeshConfig {
        interface: "wireseal0".into(),
        listen_port: 51830,
        fwmark: 0x1000_0000,
        route_table: 51830,
        rule_priority: 90,
        mtu: 1420,
        persistent_keepalive: Some(25),
        protected: [API_SERVER.parse().expect("an address")].into(),
        local_addresses: local.clone(),
        strict: strict.then(|| Strict {
            catch_all_table: 51831,
            exclude: vec![net("10.244.3.0/25")],
        }),
        cluster_cidrs: if strict {
            vec![net("10.244.0.0/16"), net("fd00:244::/48")]
        } else {
            Vec::new()
        },
        ..MeshConfig::default()
    }
}

fn check(d: &Desired, views: &[NodeView], config: &MeshConfig, self_key: &PublicKey) {
    let state = &d.state;
    let special: Vec<IpNetwork> = SPECIAL_PURPOSE
        .iter()
        .map(|(range, _)| net(range))
        .collect();
    let mut forbidden: Vec<IpAddr> = views
        .iter()
        .flat_map(|view| view.addresses.iter().map(|a| a.ip))
        .collect();
    forbidden.extend(config.protected.iter().copied());
    forbidden.extend(
        state
            .device
            .peers
            .values()
            .filter_map(|peer| peer.endpoint.map(|e| e.ip())),
    );
    for dst in state.routes.keys() {
        assert_ne!(dst.prefix(), 0, "a default route");
        for range in &special {
            assert!(
                !wireseal_core::annotation::overlaps(*dst, *range),
                "route {dst} overlaps {range}"
            );
        }
        for ip in &forbidden {
            assert!(!dst.contains(*ip), "route {dst} holds {ip}");
        }
        if !config.cluster_cidrs.is_empty() {
            assert!(
                config
                    .cluster_cidrs
                    .iter()
                    .any(|c| c.contains(dst.ip()) && c.prefix() <= dst.prefix()),
                "route {dst} outside the cluster CIDRs"
            );
        }
        assert!(
            state
                .device
                .peers
                .values()
                .any(|p| p.allowed_ips.contains(dst)),
            "route {dst} leads to no peer"
        );
    }
    assert!(
        !state.device.peers.contains_key(self_key),
        "peers with itself"
    );
    let mut owned: Vec<IpNetwork> = Vec::new();
    for peer in state.device.peers.values() {
        for ip in &peer.allowed_ips {
            for other in &owned {
                assert!(
                    !wireseal_core::annotation::overlaps(*ip, *other),
                    "{ip} and {other} go to two peers"
                );
            }
        }
        owned.extend(peer.allowed_ips.iter().copied());
    }
    for outcome in d.nodes.values() {
        for issue in &outcome.issues {
            assert_printable(&issue.to_string());
        }
    }
}

/// Carries out the plan from `observed` and checks the result.
fn converge(d: &Desired, mut observed: ObservedState) -> ObservedState {
    let first = plan(&d.state, &observed);
    observed.apply(&first);
    let again = plan(&d.state, &observed);
    assert!(again.is_empty(), "second plan not empty: {again:?}");
    assert_eq!(observed.link.as_ref(), Some(&d.state.link));
    let device = observed.device.as_ref().expect("a device after a plan");
    assert_eq!(device.peers, d.state.device.peers);
    assert_eq!(observed.routes, d.state.routes);
    assert_eq!(observed.catch_alls, d.state.catch_alls);
    assert_eq!(observed.rules, d.state.rules);
    observed
}

fuzz_target!(|data: &[u8]| {
    let Ok(nodes) = serde_json::from_slice::<Vec<Node>>(data) else {
        return;
    };
    if nodes.len() > 64 {
        return;
    }
    // One API server never returns two Nodes of one name.
    let mut by_name: BTreeMap<String, NodeView> = BTreeMap::new();
    let mut order = Vec::new();
    for node in &nodes {
        let view = node_view(node);
        if !by_name.contains_key(&view.name) {
            order.push(view.name.clone());
        }
        by_name.insert(view.name.clone(), view);
    }
    let views: Vec<NodeView> = order.iter().map(|name| by_name[name].clone()).collect();
    let Some(me) = views.first().map(|v| v.name.clone()) else {
        return;
    };
    let self_key = PublicKey::from_base64(SELF_KEY).expect("a valid key");
    // The CNI's addresses: the first address of each of this node's pod CIDRs.
    let local: BTreeSet<IpAddr> = views[0]
        .pod_cidrs
        .iter()
        .filter_map(|cidr| cidr.iter().nth(1))
        .collect();
    for strict in [false, true] {
        let mut config = config(strict, &local);
        // What an earlier set of Nodes (the first half) left programmed.
        let earlier = desired(&me, &self_key, &views[..views.len().div_ceil(2)], &config);
        check(&earlier, &views, &config, &self_key);
        let observed = converge(&earlier, ObservedState::default());
        config.programmed = earlier.state.device.peers.clone();
        config.tunnel_addresses = observed
            .link
            .as_ref()
            .map(|link| link.addresses.iter().map(IpNetwork::ip).collect())
            .unwrap_or_default();
        let now = desired(&me, &self_key, &views, &config);
        check(&now, &views, &config, &self_key);
        let reversed = desired(&me, &self_key, views.iter().rev(), &config);
        assert_eq!(reversed.state, now.state, "node order changed the state");
        converge(&now, observed);
    }
});

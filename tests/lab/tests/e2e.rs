//! End-to-end tests on a local cluster in network namespaces: real agents, real
//! userspace datapaths, the fake apiserver, and the CNI played by host-gw routes.
//! They need root: ignored unless asked for, and failing (never passing) without it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use wireseal_lab::capture::CaptureReport;
use wireseal_lab::identity::Identity;
use wireseal_lab::service;
use wireseal_lab::topology::{Family, Stack, family_name, pod_cidrs, pod_gateway};
use wireseal_lab::traffic::{self, Pinger};
use wireseal_lab::{Lab, LabConfig, Refused, WIREGUARD_PORT};

const UP: Duration = Duration::from_secs(60);
const CONVERGE: Duration = Duration::from_secs(20);

fn lab(nodes: usize, pods: usize) -> Lab {
    Lab::up(LabConfig {
        nodes,
        pods,
        ..LabConfig::default()
    })
    .expect("the lab needs root, iproute2 and the built binaries")
}

/// Canary pings between the first pods of `pairs` while capturing the underlay.
fn capture(lab: &Lab, pairs: &[(usize, usize)]) -> CaptureReport {
    lab.capture_pings(pairs).unwrap()
}

/// What crossed the underlay while `traffic` ran.
fn capture_while(lab: &Lab, traffic: impl FnOnce()) -> CaptureReport {
    lab.capture_while(traffic).unwrap()
}

/// Canary pings from the host namespace of each `from` node to the first pod
/// of the `to` node; returns the (from, to) pairs that lost pings.
fn host_pings(lab: &Lab, pairs: &[(usize, usize)]) -> Vec<(usize, usize)> {
    pairs
        .iter()
        .copied()
        .filter(|(from, to)| {
            let result =
                traffic::host_ping(&lab.network, *from, (*to, 0), 3, Duration::from_millis(50))
                    .unwrap();
            result.received < result.sent
        })
        .collect()
}

/// How node `i` routes to the first pod of node `to`, for failure messages.
fn route_to_pod(lab: &Lab, i: usize, to: usize) -> String {
    let ns = &lab.network.nodes[i].ns;
    let dst = lab.network.nodes[to].pods[0].ip.to_string();
    let show = |args: &[&str]| {
        ns.ip(args).map_or_else(
            |err| err.to_string(),
            |out| String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    format!(
        "node-{i}: ip route get {dst}: {}ip route show table 51830:\n{}",
        show(&["route", "get", &dst]),
        show(&["route", "show", "table", "51830"])
    )
}

fn eventually(lab: &Lab, what: &str, timeout: Duration, check: impl FnMut(&Lab) -> bool) {
    lab.eventually(what, timeout, check);
}

/// A fixed-count ping every 10 ms in the background.
fn background_ping(lab: &Lab, from: (usize, usize), to: (usize, usize), count: u32) -> Pinger {
    Pinger::start(
        &lab.network,
        from,
        to,
        Some(count),
        Duration::from_millis(10),
    )
    .unwrap()
}

/// Three nodes with `pods` pods each on `stack`: without wireseal the
/// canary crosses the underlay in clear in every family of the stack; with
/// it, every pod reaches every pod on the other nodes in every family, only
/// WireGuard crosses, and every peer is encrypted with the pod CIDRs of
/// every family as its allowed IPs.
fn sealed_cluster(stack: Stack, pods: usize) -> Lab {
    let mut lab = Lab::up(LabConfig {
        nodes: 3,
        pods,
        stack,
        ..LabConfig::default()
    })
    .expect("the lab needs root, iproute2 and the built binaries");
    let ring = [(0, 1), (1, 2), (2, 0)];
    let plain = capture(&lab, &ring);
    for family in stack.families() {
        assert!(
            plain.canary_frames_of(*family) > 0,
            "without wireseal the {} canary must be visible, or the check proves nothing: {plain}",
            family_name(*family)
        );
    }
    assert!(!plain.encrypted());

    lab.start_wireseal().unwrap();
    lab.wait_encrypted(UP).unwrap();
    let sealed = lab.prove_sealed(&ring).unwrap();
    assert_eq!(sealed.canary_frames, 0, "{sealed}");

    for i in 0..3 {
        let status = lab.status(i).unwrap();
        assert_eq!(
            status.datapath,
            Some(wireseal_core::DatapathKind::Userspace)
        );
        assert_eq!(status.coverage_line(), "2/2 peers encrypted");
        let text = lab.status_text(i).unwrap();
        assert!(text.contains("2/2 peers encrypted"), "{text}");
        for peer in &status.peers {
            let k: usize = peer.node.trim_start_matches("node-").parse().unwrap();
            assert_eq!(peer.allowed_ips, pod_cidrs(stack, k), "node-{i}: {peer:?}");
            // Peers are reached at their first InternalIP.
            assert_eq!(
                peer.endpoint.map(|e| e.ip()),
                Some(lab.network.nodes[k].ip),
                "node-{i}: {peer:?}"
            );
        }
    }
    lab
}

#[test]
#[ignore = "needs root and network namespaces"]
fn all_pods_connect_and_only_wireguard_crosses_the_wire() {
    let lab = sealed_cluster(Stack::V4, 2);
    // The lab's pods have MTU 1500, above the tunnel's 1440: said loudly.
    let warning = lab.status(0).unwrap().mtu_warning.expect("an MTU warning");
    assert!(
        warning.starts_with("pod link p0 has MTU 1500, above the tunnel MTU 1440"),
        "{warning}"
    );
    assert!(
        lab.status_text(0)
            .unwrap()
            .contains("warning: pod link p0 has MTU 1500")
    );
    // A CNI set to a fitting MTU silences it (the link change triggers a pass).
    for pod in ["p0", "p1"] {
        lab.network.nodes[0]
            .ns
            .ip(&["link", "set", pod, "mtu", "1400"])
            .unwrap();
    }
    eventually(&lab, "the MTU warning clears", CONVERGE, |lab| {
        lab.status(0).is_ok_and(|s| s.mtu_warning.is_none())
    });

    // The datapath chosen by --datapath auto is published on the Node.
    let node = lab.apiserver().state().get_node("node-0").unwrap();
    let status = &node.metadata.annotations.unwrap()["wireseal.dev/status"];
    assert!(status.contains(r#""datapath":"userspace""#), "{status}");

    // Tearing the lab down leaves nothing behind.
    let prefix = lab.prefix.clone();
    drop(lab);
    assert_eq!(wireseal_lab::leftovers(&prefix), Vec::<String>::new());
}

/// Dual-stack nodes (IPv4 first, as a dual-stack cluster lists them): pod
/// traffic of both families is encrypted, over the IPv4 underlay, and a
/// capture sees the canary of neither; a node's own traffic to another
/// node's IPv6 address stays off the tunnel.
#[test]
#[ignore = "needs root and network namespaces"]
fn dual_stack_pods_are_encrypted_in_both_families() {
    let lab = sealed_cluster(Stack::Dual, 1);
    let node1_v6 = lab.network.nodes[1].address(Family::V6).unwrap();
    let route = lab.network.nodes[0]
        .ns
        .ip(&["route", "get", &node1_v6.to_string()])
        .unwrap();
    let route = String::from_utf8_lossy(&route.stdout);
    assert!(route.contains("dev eth0"), "{route}");
}

/// An IPv6-only cluster: IPv6 underlay, InternalIPs, pod CIDRs and API
/// server; the peers are reached over IPv6 and pod traffic is sealed.
#[test]
#[ignore = "needs root and network namespaces"]
fn an_ipv6_only_cluster_is_encrypted() {
    let lab = sealed_cluster(Stack::V6, 1);
    for i in 0..3 {
        let status = lab.status(i).unwrap();
        assert!(
            status
                .peers
                .iter()
                .all(|p| p.endpoint.is_some_and(|e| e.is_ipv6())),
            "{:?}",
            status.peers
        );
    }
}

#[test]
#[ignore = "needs root and network namespaces"]
fn agent_restart_and_crash_lose_no_packet() {
    let mut lab = lab(2, 1);
    lab.start_wireseal().unwrap();
    lab.wait_encrypted(UP).unwrap();
    let forward = background_ping(&lab, (0, 0), (1, 0), 400);
    let backward = background_ping(&lab, (1, 0), (0, 0), 400);
    thread::sleep(Duration::from_millis(500));
    lab.stop_agent(0);
    lab.start_agent(0).unwrap();
    thread::sleep(Duration::from_millis(800));
    lab.kill_agent(1);
    lab.start_agent(1).unwrap();
    let (forward, backward) = (forward.wait().unwrap(), backward.wait().unwrap());
    assert_eq!(
        forward.received, forward.sent,
        "node-0 → node-1 lost packets across agent restarts: {forward:?}"
    );
    assert_eq!(
        backward.received, backward.sent,
        "node-1 → node-0 lost packets: {backward:?}"
    );
    assert_eq!(forward.sent, 400);
    // The restarted agents adopted the running datapath and converge again.
    eventually(&lab, "restarted agents report the mesh", CONVERGE, |lab| {
        (0..2).all(|i| lab.status(i).is_ok_and(|s| s.encrypted() == 1))
    });
    let sealed = capture(&lab, &[(0, 1), (1, 0)]);
    assert!(sealed.encrypted(), "{sealed}");
}

#[test]
#[ignore = "needs root and network namespaces"]
fn an_api_server_outage_keeps_traffic_flowing() {
    let mut lab = lab(2, 1);
    lab.start_wireseal().unwrap();
    lab.wait_encrypted(UP).unwrap();
    let faults = lab.apiserver().faults().clone();
    let ping = background_ping(&lab, (0, 0), (1, 0), 500);
    thread::sleep(Duration::from_millis(300));
    faults.refuse_connections();
    thread::sleep(Duration::from_secs(4));
    // Agents keep the last good state; a forced resync during the outage changes nothing.
    for i in 0..2 {
        assert_eq!(
            lab.status(i).unwrap().expected(),
            1,
            "peer kept during the outage"
        );
    }
    faults.accept_connections();
    let result = ping.wait().unwrap();
    assert_eq!(
        result.received, result.sent,
        "traffic must not notice an API outage: {result:?}"
    );
    assert!(capture(&lab, &[(0, 1)]).encrypted());
}

#[test]
#[ignore = "needs root and network namespaces"]
fn nodes_joining_leaving_and_rekeying_change_the_mesh() {
    let mut lab = lab(3, 1);
    // node-2 is not part of the cluster yet.
    lab.delete_node(2).unwrap();
    for i in 0..2 {
        lab.start_tunnel(i).unwrap();
        lab.start_agent(i).unwrap();
    }
    eventually(&lab, "node-0 and node-1 peer", UP, |lab| {
        (0..2).all(|i| lab.status(i).is_ok_and(|s| s.expected() == 1))
    });

    // node-2 joins: registered, then its wireseal starts.
    lab.register_node(2).unwrap();
    lab.start_tunnel(2).unwrap();
    lab.start_agent(2).unwrap();
    let joined = Instant::now();
    lab.wait_encrypted(UP).unwrap();
    let join_secs = joined.elapsed().as_secs_f64();
    assert!(capture(&lab, &[(0, 2), (2, 1)]).encrypted());

    // node-1 is re-keyed: new key file, agent restarted. Canary pings from
    // node-0 to node-1 run across it under capture: while the new key awaits
    // its handshake the CIDRs stay in the tunnel, so nothing crosses in clear.
    let old = lab.status(1).unwrap().public_key.unwrap();
    let rekey_capture = lab.start_capture().unwrap();
    let rekey_ping = Pinger::start(
        &lab.network,
        (0, 0),
        (1, 0),
        None,
        Duration::from_millis(10),
    )
    .unwrap();
    lab.stop_agent(1);
    std::fs::remove_file(lab.dir.join("node-1/state/private.key")).unwrap();
    lab.start_agent(1).unwrap();
    eventually(
        &lab,
        "the others follow node-1's new key",
        CONVERGE,
        |lab| {
            let Ok(new) = lab
                .status(1)
                .and_then(|s| s.public_key.ok_or_else(|| anyhow::anyhow!("no key")))
            else {
                return false;
            };
            new != old
                && [0, 2].iter().all(|i| {
                    lab.status(*i).is_ok_and(|s| {
                        s.peers
                            .iter()
                            .any(|p| p.node == "node-1" && p.public_key == Some(new))
                    })
                })
        },
    );
    lab.wait_encrypted(CONVERGE).unwrap();
    let pinged = rekey_ping.finish().unwrap();
    let report = lab.finish_capture(rekey_capture).unwrap();
    assert!(
        report.plaintext_count == 0 && report.canary_frames == 0,
        "pod traffic crossed in clear during the re-key ({} pings, {} answered): {report}",
        pinged.sent,
        pinged.received
    );
    assert!(
        pinged.received > 0,
        "the pings went through after the re-key"
    );
    assert_eq!(traffic::all_pairs(&lab.network, 1).unwrap(), vec![]);

    // node-2 leaves: wireseal removed, Node deleted. The others drop it and
    // reach its pods over the CNI's plain route again.
    lab.cleanup_node(2).unwrap();
    lab.delete_node(2).unwrap();
    eventually(&lab, "node-2 leaves every mesh", CONVERGE, |lab| {
        (0..2).all(|i| {
            lab.status(i)
                .is_ok_and(|s| s.expected() == 1 && !s.peers.iter().any(|p| p.node == "node-2"))
        })
    });
    let result = traffic::ping(&lab.network, (0, 0), (2, 0), 3, Duration::from_millis(50)).unwrap();
    assert_eq!(
        result.received, 3,
        "node-2's pods reachable over the CNI path after it left"
    );
    assert!(join_secs < 30.0, "joining took {join_secs:.1} s");
}

#[test]
#[ignore = "needs root and network namespaces"]
fn malformed_input_on_one_node_leaves_the_rest_working() {
    let mut lab = lab(2, 1);
    // A Node without an agent, with a garbage key and a pod CIDR overlapping node-1's.
    let mut intruder = wireseal_lab::node_object("intruder", 9, "198.18.0.99");
    intruder.metadata.annotations =
        Some([("wireseal.dev/public-key".to_owned(), "garbage!".to_owned())].into());
    intruder.spec.as_mut().unwrap().pod_cidrs = Some(vec!["10.244.1.0/25".to_owned()]);
    lab.apiserver().state().create_node(&intruder).unwrap();
    lab.start_wireseal().unwrap();
    lab.wait_encrypted(UP).unwrap();
    assert_eq!(traffic::all_pairs(&lab.network, 2).unwrap(), vec![]);
    let sealed = capture(&lab, &[(0, 1), (1, 0)]);
    assert!(
        sealed.encrypted(),
        "{sealed}; plaintext: {:?}",
        sealed.plaintext
    );
    let status = lab.status(0).unwrap();
    let bad = status.peers.iter().find(|p| p.node == "intruder").unwrap();
    assert_eq!(bad.public_key, None);
    assert!(
        bad.issues
            .iter()
            .any(|i| i.contains("wireseal.dev/public-key")),
        "{:?}",
        bad.issues
    );
    eventually(&lab, "an Event on the intruder", CONVERGE, |lab| {
        lab.apiserver()
            .state()
            .events()
            .iter()
            .any(|e| e.involved_object.name.as_deref() == Some("intruder"))
    });
}

#[test]
#[ignore = "needs root and network namespaces"]
fn deleted_routes_and_rules_come_back() {
    let mut lab = lab(2, 1);
    lab.start_wireseal().unwrap();
    lab.wait_encrypted(UP).unwrap();
    let ns = &lab.network.nodes[0].ns;
    ns.ip(&["rule", "del", "priority", "90"]).unwrap();
    ns.ip(&["route", "del", "10.244.1.0/24", "table", "51830"])
        .unwrap();
    eventually(&lab, "rule and route restored", CONVERGE, |lab| {
        let ns = &lab.network.nodes[0].ns;
        let rules = String::from_utf8_lossy(&ns.ip(&["rule", "show"]).unwrap().stdout).into_owned();
        let routes =
            String::from_utf8_lossy(&ns.ip(&["route", "show", "table", "51830"]).unwrap().stdout)
                .into_owned();
        rules.contains("90:\tnot from all fwmark 0x10000000/0x10000000 lookup 51830")
            && routes.contains("10.244.1.0/24 dev wireseal0")
    });
    assert!(capture(&lab, &[(0, 1)]).encrypted());
}

#[test]
#[ignore = "needs root and network namespaces"]
fn toggling_beside_the_cni_under_ping_and_cleanup_restores_the_node() {
    let mut lab = lab(2, 1);
    let before: Vec<String> = (0..2).map(|i| lab.routing_snapshot(i).unwrap()).collect();

    // On: wireseal takes the traffic from the CNI's routes while a ping runs.
    let ping_on = background_ping(&lab, (0, 0), (1, 0), 300);
    thread::sleep(Duration::from_millis(300));
    lab.start_wireseal().unwrap();
    let on = ping_on.wait().unwrap();
    lab.wait_encrypted(UP).unwrap();
    assert!(capture(&lab, &[(0, 1)]).encrypted());
    // The snapshot sees what wireseal adds, the host source on its link too.
    eventually(&lab, "the host source on wireseal0", CONVERGE, |lab| {
        lab.routing_snapshot(0).is_ok_and(|snapshot| {
            snapshot.contains(&format!(
                "inet {}/32 scope global wireseal0",
                pod_gateway(0)
            ))
        })
    });

    // Off: agents stopped, `wireseal cleanup --drain 2` on every node, as the
    // cleanup DaemonSet does it, node-1's half a second after node-0's, under
    // ping. Meanwhile node-1 still encrypts its replies to node-0: the drain
    // keeps node-0's datapath delivering them (without it, about 30 of 300 pings were lost).
    let ping_off = background_ping(&lab, (0, 0), (1, 0), 300);
    thread::sleep(Duration::from_millis(300));
    lab.cleanup_all(Duration::from_secs(2), Duration::from_millis(500))
        .unwrap();
    let off = ping_off.wait().unwrap();
    let plain = capture(&lab, &[(0, 1)]);
    assert!(
        plain.canary_frames > 0,
        "the CNI's plain path carries the traffic again: {plain}"
    );
    for (i, snapshot) in before.iter().enumerate() {
        assert_eq!(
            &lab.routing_snapshot(i).unwrap(),
            snapshot,
            "node-{i} is not as it was before wireseal"
        );
    }
    // Both directions of the toggle keep the pods connected; report what was lost.
    let lost_on = on.sent - on.received;
    let lost_off = off.sent - off.received;
    println!(
        "toggle on lost {lost_on}/{} pings, toggle off lost {lost_off}/{}",
        on.sent, off.sent
    );
    assert!(
        lost_on * 10 <= on.sent,
        "turning wireseal on lost too much: {on:?}"
    );
    assert_eq!(
        lost_off, 0,
        "turning wireseal off with a drain must lose nothing: {off:?}"
    );
}

/// Host-network traffic (kubelet, host-network pods, an API server calling a
/// webhook on another node) to a pod on another node takes the tunnel too,
/// is answered, and never crosses the wire in clear: the peer's WireGuard
/// only accepts sources inside this node's pod CIDRs, so the routes into the
/// tunnel must give host packets such a source.
#[test]
#[ignore = "needs root and network namespaces"]
fn host_network_reaches_pods_on_other_nodes_encrypted() {
    let mut lab = lab(2, 1);
    let pairs = [(0, 1), (1, 0)];
    let mut lost = Vec::new();
    let plain = capture_while(&lab, || lost = host_pings(&lab, &pairs));
    assert_eq!(lost, vec![], "host → remote pod works over the CNI alone");
    assert!(
        plain.canary_frames > 0,
        "without wireseal the host's canary must be visible: {plain}"
    );

    lab.start_wireseal().unwrap();
    lab.wait_encrypted(UP).unwrap();
    let sealed = capture_while(&lab, || lost = host_pings(&lab, &pairs));
    assert_eq!(
        lost,
        vec![],
        "host → pod on another node lost pings with wireseal on\n{}\n{}\n{}\n{}",
        route_to_pod(&lab, 0, 1),
        route_to_pod(&lab, 1, 0),
        lab.logs(0),
        lab.logs(1)
    );
    assert!(
        sealed.encrypted(),
        "{sealed}; plaintext: {:?}",
        sealed.plaintext
    );
}

/// wireseal's table on node `i`, as `ip route` shows it.
fn tunnel_routes(lab: &Lab, i: usize) -> String {
    lab.network.nodes[i]
        .ns
        .ip(&["route", "show", "table", "51830"])
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default()
}

/// Whether node `i`'s policy rule is in place.
fn has_rule(lab: &Lab, i: usize) -> bool {
    lab.network.nodes[i]
        .ns
        .ip(&["rule", "show"])
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("90:\tnot from all fwmark"))
}

/// Waits for node `i`'s agent to run a pass after now: its rule is deleted
/// and must come back, which only a pass does (reading the addresses anew).
fn next_pass(lab: &Lab, i: usize) {
    lab.network.nodes[i]
        .ns
        .ip(&["rule", "del", "priority", "90"])
        .unwrap();
    eventually(lab, "a pass puts the rule back", CONVERGE, |lab| {
        has_rule(lab, i)
    });
}

/// The host source follows the CNI's gateway address, and wireseal keeps a
/// copy on its tunnel link: that copy stands in while the CNI's address is
/// away (taking the link's last IPv4 address away would make the kernel drop
/// the routes through it), and the source is lost only when neither is
/// there. When the CNI's address comes back, the agent, woken by the
/// address event, takes it again.
#[test]
#[ignore = "needs root and network namespaces"]
fn the_host_source_follows_the_cni_gateway_address() {
    let mut lab = lab(2, 1);
    lab.start_wireseal().unwrap();
    lab.wait_encrypted(UP).unwrap();
    let gateway = pod_gateway(0);
    let status = lab.status(0).unwrap();
    assert_eq!(status.host_sources, vec![IpAddr::from(gateway)]);
    assert_eq!(status.host_source_warning, None);
    let text = lab.status_text(0).unwrap();
    assert!(text.contains(&format!("host src {gateway}")), "{text}");
    let sourced = format!("10.244.1.0/24 dev wireseal0 proto static scope link src {gateway}");
    let routes = tunnel_routes(&lab, 0);
    assert!(routes.contains(&sourced), "{routes}");
    let copy = format!("inet {gateway}/32 scope global wireseal0");
    assert!(tunnel_addresses(&lab, 0).contains(&copy));

    // The CNI's address goes (with the last address of p0 the kernel also
    // drops the pod's route through it): the copy keeps the source, and the
    // node still reaches pods on other nodes.
    let on_p0 = format!("{gateway}/32");
    lab.network.nodes[0]
        .ns
        .ip(&["addr", "del", &on_p0, "dev", "p0"])
        .unwrap();
    next_pass(&lab, 0);
    assert!(tunnel_routes(&lab, 0).contains(&sourced));
    assert!(tunnel_addresses(&lab, 0).contains(&copy));
    let status = lab.status(0).unwrap();
    assert_eq!(status.host_sources, vec![IpAddr::from(gateway)]);
    assert_eq!(status.host_source_warning, None);
    let mut lost = Vec::new();
    let sealed = capture_while(&lab, || lost = host_pings(&lab, &[(0, 1)]));
    assert_eq!(lost, vec![], "{}", route_to_pod(&lab, 0, 1));
    assert!(sealed.encrypted(), "{sealed}");

    // The copy goes too (by hand): the link's last IPv4 address, so the
    // kernel drops the routes through it; the agent writes them back
    // without a source and says what breaks.
    lab.network.nodes[0]
        .ns
        .ip(&["addr", "del", &on_p0, "dev", "wireseal0"])
        .unwrap();
    eventually(
        &lab,
        "routes back without a source, and a warning",
        CONVERGE,
        |lab| {
            let routes = tunnel_routes(lab, 0);
            routes.contains("10.244.1.0/24 dev wireseal0")
                && !routes.contains(" src ")
                && lab.status(0).is_ok_and(|s| {
                    s.host_sources.is_empty()
                        && s.host_source_warning.as_deref().is_some_and(|w| {
                            w.starts_with(
                            "node node-0 has no IPv4 address inside its pod CIDRs 10.244.0.0/24",
                        )
                        })
                })
        },
    );
    let text = lab.status_text(0).unwrap();
    assert!(
        text.contains("warning: node node-0 has no IPv4 address") && text.contains("host src none"),
        "{text}"
    );
    assert!(!tunnel_addresses(&lab, 0).contains(&copy));

    // Back, as a CNI sets up a pod.
    let pod = format!("{}/32", lab.network.nodes[0].pods[0].ip);
    for args in [
        &["addr", "add", &on_p0, "dev", "p0"][..],
        &["route", "replace", &pod, "dev", "p0"],
    ] {
        lab.network.nodes[0].ns.ip(args).unwrap();
    }
    eventually(
        &lab,
        "the source is back, on the link too",
        CONVERGE,
        |lab| {
            tunnel_routes(lab, 0).contains(&format!("src {gateway}"))
                && tunnel_addresses(lab, 0).contains(&copy)
                && lab.status(0).is_ok_and(|s| s.host_source_warning.is_none())
        },
    );
    let mut lost = Vec::new();
    let sealed = capture_while(&lab, || lost = host_pings(&lab, &[(0, 1), (1, 0)]));
    assert_eq!(lost, vec![], "{}", route_to_pod(&lab, 0, 1));
    assert!(
        sealed.encrypted(),
        "{sealed}; plaintext: {:?}",
        sealed.plaintext
    );
    assert!(capture(&lab, &[(0, 1), (1, 0)]).encrypted());
}

/// Node `i`'s host connection to the Service's ClusterIP, answered or why not.
fn host_to_service(lab: &Lab, i: usize) -> anyhow::Result<()> {
    traffic::tcp_echo(
        &lab.network.nodes[i].ns,
        service::cluster_address(),
        Duration::from_secs(2),
    )
}

/// The addresses on node `i`'s tunnel link, as `ip` shows them.
fn tunnel_addresses(lab: &Lab, i: usize) -> String {
    lab.network.nodes[i]
        .ns
        .ip(&["-4", "addr", "show", "dev", "wireseal0"])
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default()
}

/// The node's own connection to a Service whose endpoint is a pod on another
/// node, as a kube-apiserver calls an admission webhook or metrics-server
/// through its ClusterIP. kube-proxy (played by nftables) DNATs it in output
/// and masquerades it, since its source (the node's address, chosen for the
/// ClusterIP) is outside the cluster CIDR; MASQUERADE takes the output
/// device's address. wireseal puts the host source on its tunnel link, so
/// that address is one the peer's WireGuard accepts.
#[test]
#[ignore = "needs root and network namespaces"]
fn host_network_reaches_a_service_on_another_node_encrypted() {
    let mut lab = lab(2, 1);
    let IpAddr::V4(pod) = lab.network.nodes[1].pods[0].ip else {
        panic!("an IPv4 lab's pods have IPv4 addresses");
    };
    let endpoint = std::net::SocketAddrV4::new(pod, service::TARGET_PORT);
    let _server =
        traffic::EchoServer::start(&lab.network.nodes[1].pods[0].ns, service::TARGET_PORT).unwrap();
    for node in &lab.network.nodes {
        service::install(&node.ns, endpoint).unwrap();
    }
    let mut answered = Ok(());
    let plain = capture_while(&lab, || answered = host_to_service(&lab, 0));
    if let Err(err) = &answered {
        panic!("host → ClusterIP works over the CNI alone: {err:#}");
    }
    assert!(
        plain.canary_frames > 0,
        "without wireseal the canary must be visible: {plain}"
    );

    lab.start_wireseal().unwrap();
    lab.wait_encrypted(UP).unwrap();
    let gateway = pod_gateway(0);
    eventually(&lab, "the host source on wireseal0", CONVERGE, |lab| {
        tunnel_addresses(lab, 0).contains(&format!("inet {gateway}/32 scope global wireseal0"))
    });
    let text = lab.status_text(0).unwrap();
    assert!(text.contains(&format!("host src {gateway}")), "{text}");
    let sealed = capture_while(&lab, || answered = host_to_service(&lab, 0));
    if let Err(err) = &answered {
        panic!(
            "host → ClusterIP → pod on another node failed with wireseal on: {err:#}\n{}\n{}\n{}",
            tunnel_addresses(&lab, 0),
            route_to_pod(&lab, 0, 1),
            lab.logs(0)
        );
    }
    assert!(
        sealed.encrypted(),
        "{sealed}; plaintext: {:?}",
        sealed.plaintext
    );
    // A pod's connection to the ClusterIP keeps its own source (not
    // masqueraded) and works too.
    let pod = &lab.network.nodes[0].pods[0].ns;
    traffic::tcp_echo(pod, service::cluster_address(), Duration::from_secs(2)).unwrap();

    // The address is what makes it work. Node-0 as it was before it: the
    // agent stopped (the datapath stays), the address taken off the link,
    // and the route as it was (taking the link's last IPv4 address away
    // made the kernel drop it). MASQUERADE then falls back to the node's
    // address, which node-1's WireGuard drops: encrypted, never answered.
    lab.stop_agent(0);
    let ns = &lab.network.nodes[0].ns;
    ns.ip(&["addr", "del", &format!("{gateway}/32"), "dev", "wireseal0"])
        .unwrap();
    let route = wireseal_lab::topology::pod_cidr(1);
    ns.ip(&[
        "route",
        "replace",
        &route,
        "dev",
        "wireseal0",
        "table",
        "51830",
        "src",
        &gateway.to_string(),
        "mtu",
        "1440",
    ])
    .unwrap();
    let dropped = capture_while(&lab, || answered = host_to_service(&lab, 0));
    assert!(
        answered.is_err(),
        "without the address on wireseal0 the peer must drop the masqueraded connection"
    );
    assert!(
        dropped.plaintext_count == 0 && dropped.canary_frames == 0 && dropped.wireguard[3] > 0,
        "it went into the tunnel: {dropped}; plaintext: {:?}",
        dropped.plaintext
    );
    // The agent puts it back on start, and the Service answers again.
    lab.start_agent(0).unwrap();
    eventually(&lab, "the host source back on wireseal0", CONVERGE, |lab| {
        tunnel_addresses(lab, 0).contains(&format!("inet {gateway}/32"))
    });
    host_to_service(&lab, 0).unwrap();
}

const KEY: &str = "wireseal.dev/public-key";

fn annotation(lab: &Lab, node: &str, key: &str) -> Option<String> {
    lab.apiserver().state().node_annotation(node, key)
}

fn annotate(key: &str, value: Option<&str>) -> serde_json::Value {
    json!({"metadata": {"annotations": {key: value}}})
}

/// A refusal by one of wireseal's admission policies, with its message.
fn assert_denied(result: Result<(), Refused>, policy: &str, message: &str) {
    let refused = result.expect_err("the policy must refuse this write");
    assert_eq!(
        (refused.code, refused.reason.as_str()),
        (403, "Forbidden"),
        "{refused:?}"
    );
    let expected = format!(
        "is forbidden: ValidatingAdmissionPolicy '{policy}' with binding '{policy}' denied request: {message}"
    );
    assert!(
        refused.message.contains(&expected),
        "{}\nexpected: {expected}",
        refused.message
    );
}

#[test]
#[ignore = "needs root and network namespaces"]
fn a_node_cannot_rewrite_another_nodes_key_and_every_node_publishes_its_own() {
    let mut lab = lab(3, 1);
    let names: Vec<String> = lab.network.nodes.iter().map(|n| n.name.clone()).collect();
    lab.start_wireseal().unwrap();
    // Each agent runs under its node-bound token and the shipped policies:
    // the mesh only comes up if every agent's own publishing is admitted.
    lab.wait_encrypted(UP).unwrap();
    for (i, name) in names.iter().enumerate() {
        let key = lab.status(i).unwrap().public_key.unwrap().to_string();
        assert_eq!(
            annotation(&lab, name, KEY).as_deref(),
            Some(key.as_str()),
            "{name}"
        );
    }
    let refusals = |lab: &Lab| {
        lab.apiserver()
            .access_log()
            .into_iter()
            .filter(|e| e.method != "GET" && e.status >= 400)
            .collect::<Vec<_>>()
    };
    assert_eq!(refusals(&lab), vec![], "no agent write was refused");
    let victim_key = annotation(&lab, &names[1], KEY).unwrap();

    // Root on node-0 takes its agent's token and writes node-1's key, and
    // node-0's own address as node-1's endpoint, through the status
    // subresource and the Node itself.
    let node0 = Identity::Agent(names[0].clone());
    let forged = json!({"metadata": {"annotations": {
        KEY: "Ab3dKl0s2mW9uJxq0d1mVh6Y2cUeR8gT5nZpF4kLQmE=",
        "wireseal.dev/endpoint": "198.18.0.10:51830",
    }}});
    let not_own = "the wireseal agent may only write the Node its token is bound to \
                   (user info authentication.kubernetes.io/node-name)";
    for status in [true, false] {
        assert_denied(
            lab.patch_node_as(0, &node0, &names[1], status, forged.clone())
                .unwrap(),
            "wireseal-agent-own-node",
            not_own,
        );
    }
    // A token of the agent's ServiceAccount that names no node: refused even
    // on the node it is used from.
    assert_denied(
        lab.patch_node_as(0, &Identity::UnboundAgent, &names[0], true, forged)
            .unwrap(),
        "wireseal-agent-own-node",
        not_own,
    );
    // On its own Node, the token may write its annotations (the same value:
    // the agent's key stays), but not the operator's pod-cidrs override.
    let own_key = annotation(&lab, &names[0], KEY).unwrap();
    lab.patch_node_as(0, &node0, &names[0], true, annotate(KEY, Some(&own_key)))
        .unwrap()
        .unwrap();
    assert_denied(
        lab.patch_node_as(
            0,
            &node0,
            &names[0],
            true,
            annotate("wireseal.dev/pod-cidrs", Some("0.0.0.0/0")),
        )
        .unwrap(),
        "wireseal-agent-own-node",
        "the wireseal agent may only change the annotations wireseal.dev/public-key, \
         wireseal.dev/next-public-key, wireseal.dev/key-switch-at, wireseal.dev/endpoint, \
         wireseal.dev/status and wireseal.dev/ipsec-epoch",
    );

    // Nothing reached node-1's Node, and every peer still encrypts to its key.
    assert_eq!(annotation(&lab, &names[1], KEY), Some(victim_key.clone()));
    assert_eq!(
        annotation(&lab, &names[1], "wireseal.dev/endpoint"),
        Some(format!(
            "{}:{WIREGUARD_PORT}",
            wireseal_lab::topology::node_ip(1)
        ))
    );
    lab.wait_encrypted(CONVERGE).unwrap();
    for i in [0, 2] {
        let peer = lab
            .status(i)
            .unwrap()
            .peers
            .into_iter()
            .find(|p| p.node == names[1])
            .unwrap();
        assert_eq!(
            peer.public_key.map(|k| k.to_string()),
            Some(victim_key.clone())
        );
    }
    assert_eq!(
        refusals(&lab).len(),
        4,
        "the four refusals above, and no agent write"
    );
}

#[test]
#[ignore = "needs root and network namespaces"]
fn the_kubelet_may_not_change_wireseal_annotations_and_an_admin_may_set_pod_cidrs() {
    // The API server alone: no agent runs, the Nodes are as registered.
    let lab = lab(2, 1);
    let node = lab.network.nodes[1].name.clone();
    let kubelet = Identity::Kubelet(node.clone());
    let writers = "wireseal-annotation-writers";

    // The kubelet writes its Node's status as always...
    let ready = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}});
    lab.patch_node_as(1, &kubelet, &node, true, ready)
        .unwrap()
        .unwrap();
    // ...but not a wireseal.dev/ annotation, not even on its own Node.
    assert_denied(
        lab.patch_node_as(
            1,
            &kubelet,
            &node,
            true,
            annotate(KEY, Some("Ab3dKl0s2mW9uJxq0d1mVh6Y2cUeR8gT5nZpF4kLQmE=")),
        )
        .unwrap(),
        writers,
        "only the wireseal agent, on its own Node, may change wireseal.dev/ annotations",
    );
    assert_eq!(annotation(&lab, &node, KEY), None);
    // Nor the pod-cidrs override.
    let cidrs = wireseal_lab::topology::pod_cidr(1);
    assert_denied(
        lab.patch_node_as(
            1,
            &kubelet,
            &node,
            false,
            annotate("wireseal.dev/pod-cidrs", Some(&cidrs)),
        )
        .unwrap(),
        writers,
        "only members of system:masters may set or remove wireseal.dev/pod-cidrs",
    );
    // A cluster admin may set it, and remove it; not a public key.
    lab.patch_node_as(
        0,
        &Identity::Admin,
        &node,
        false,
        annotate("wireseal.dev/pod-cidrs", Some(&cidrs)),
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        annotation(&lab, &node, "wireseal.dev/pod-cidrs"),
        Some(cidrs)
    );
    lab.patch_node_as(
        0,
        &Identity::Admin,
        &node,
        false,
        annotate("wireseal.dev/pod-cidrs", None),
    )
    .unwrap()
    .unwrap();
    assert_eq!(annotation(&lab, &node, "wireseal.dev/pod-cidrs"), None);
    assert_denied(
        lab.patch_node_as(0, &Identity::Admin, &node, false, annotate(KEY, Some("x")))
            .unwrap(),
        writers,
        "only the wireseal agent, on its own Node",
    );
}

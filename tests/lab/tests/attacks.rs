//! A compromised node against the rest, in the network-namespace lab: real
//! agents and datapaths, a node whose agent is stopped (its tunnel keeps
//! its real key, so it could decrypt what it is sent) and whose Node is then
//! rewritten as root on that node, or anyone who can edit Nodes, would. The
//! hostile values are written into the fake apiserver's store directly, as
//! on a cluster without wireseal's admission policies: what is tested here is
//! what the agents do with them. Each attack runs in both families: on an
//! IPv4 lab and an IPv6-only one (where the API server and the underlay are
//! IPv6 too), or on dual-stack nodes with both families' pod traffic. They
//! need root and fail (never skip) without it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::Duration;

use wireseal_lab::capture::{Capture, CaptureReport};
use wireseal_lab::topology::{Family, Stack, cluster_cidr, family_name, pod_cidr, pod_cidr6};
use wireseal_lab::traffic;
use wireseal_lab::{Lab, LabConfig, WIREGUARD_PORT};

const UP: Duration = Duration::from_secs(60);
const CONVERGE: Duration = Duration::from_secs(20);
/// The compromised node.
const EVIL: usize = 2;

fn lab(stack: Stack, args: &[&str]) -> Lab {
    let mut lab = Lab::up(LabConfig {
        nodes: 3,
        pods: 1,
        stack,
        ..LabConfig::default()
    })
    .expect("the lab needs root, iproute2 and the built binaries");
    lab.set_agent_args(args);
    lab.start_wireseal().unwrap();
    lab.wait_encrypted(UP).unwrap();
    // Root on node-2: its agent stops, its datapath (with its real key) stays.
    lab.stop_agent(EVIL);
    lab
}

fn eventually(lab: &Lab, what: &str, check: impl FnMut(&Lab) -> bool) {
    lab.eventually(what, CONVERGE, check);
}

/// Rewrites the compromised Node in the store.
fn rewrite(lab: &Lab, change: impl FnOnce(&mut k8s_openapi::api::core::v1::Node)) {
    let name = lab.network.nodes[EVIL].name.clone();
    lab.apiserver().state().modify_node(&name, change).unwrap();
}

/// Time for every agent to see a rewrite and plan from it (a watch event,
/// the 100 ms debounce, one pass): the checks of what must *not* happen
/// come after it, before the refusals are looked at, so that a run against
/// agents without these defences fails on the consequence itself.
fn settle() {
    thread::sleep(Duration::from_secs(2));
}

fn set_annotation(node: &mut k8s_openapi::api::core::v1::Node, key: &str, value: Option<&str>) {
    let all = node.metadata.annotations.get_or_insert_with(BTreeMap::new);
    match value {
        Some(value) => all.insert(key.to_owned(), value.to_owned()),
        None => all.remove(key),
    };
}

/// The issues node `i`'s agent reports about `node`.
fn issues(lab: &Lab, i: usize, node: usize) -> Vec<String> {
    let name = &lab.network.nodes[node].name;
    lab.status(i)
        .ok()
        .and_then(|s| s.peers.into_iter().find(|p| &p.node == name))
        .map(|p| p.issues)
        .unwrap_or_default()
}

fn refusals(lab: &Lab, i: usize) -> usize {
    issues(lab, i, EVIL)
        .iter()
        .filter(|issue| issue.contains("refused"))
        .count()
}

/// Events on the compromised Node, by reason.
fn events(lab: &Lab) -> Vec<(String, String)> {
    let name = lab.network.nodes[EVIL].name.clone();
    lab.apiserver()
        .state()
        .events()
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(&name))
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect()
}

/// What crossed the underlay while pod 0 of node-0 pinged pod 0 of node-1
/// in every family of the lab.
fn capture_victim_traffic(lab: &Lab) -> CaptureReport {
    static CAPTURES: AtomicU32 = AtomicU32::new(0);
    let file = lab.dir.join(format!(
        "attack-{}.pcap",
        CAPTURES.fetch_add(1, Ordering::Relaxed)
    ));
    let capture = Capture::start(&lab.network.underlay, "any", &file).unwrap();
    let results: Vec<_> = lab
        .network
        .stack
        .families()
        .iter()
        .map(|family| {
            let pinged = traffic::ping_family(
                &lab.network,
                *family,
                (0, 0),
                (1, 0),
                5,
                Duration::from_millis(50),
            );
            (*family, pinged.unwrap())
        })
        .collect();
    let report = capture.finish(lab.apiserver_ip(), WIREGUARD_PORT).unwrap();
    for (family, result) in results {
        assert_eq!(
            result.received,
            result.sent,
            "the victim's pods must stay reachable over {}",
            family_name(family)
        );
    }
    report
}

/// Whether `routes` (`ip route show` output) has a route for exactly `claim`.
fn routed(routes: &str, claim: &str) -> bool {
    let (address, prefix) = claim.split_once('/').unwrap();
    let full = if address.contains(':') { "128" } else { "32" };
    let shown = match prefix {
        "0" => "default".to_owned(),
        p if p == full => address.to_owned(),
        _ => claim.to_owned(),
    };
    routes
        .lines()
        .any(|line| line.split_whitespace().next() == Some(shown.as_str()))
}

/// Pings `dst` from node `from`'s own namespace; true when every ping came back.
fn host_ping_address(lab: &Lab, from: usize, dst: &str) -> bool {
    lab.network.nodes[from]
        .ns
        .exec("ping", &["-c", "3", "-i", "0.2", "-W", "1", dst])
        .is_ok()
}

/// A compromised node claims, as pod CIDRs, another node's address, the API
/// server's and the cloud's metadata service, then the default route. Before
/// bounded claims, every node routed those into its tunnel: node-2 received
/// (and, holding its key, decrypted) node-0's traffic to node-1's address,
/// and the claim on the API server cut every agent off from it, so that
/// deleting node-2's Node afterwards changed nothing: no agent saw the
/// deletion.
#[test]
#[ignore = "needs root and network namespaces"]
fn claims_on_a_node_the_api_server_or_the_metadata_service_are_refused() {
    claims_on_protected_addresses_are_refused(Stack::V4);
}

/// The same on an IPv6-only cluster: node-1's IPv6 address, the API server's
/// (reached over IPv6), AWS's IPv6 metadata service, then `::/0`.
#[test]
#[ignore = "needs root and network namespaces"]
fn ipv6_claims_on_a_node_the_api_server_or_the_metadata_service_are_refused() {
    claims_on_protected_addresses_are_refused(Stack::V6);
}

fn claims_on_protected_addresses_are_refused(stack: Stack) {
    let lab = lab(stack, &[]);
    let victim = lab.network.nodes[1].ip.to_string();
    let api = lab.apiserver_ip();
    let claims: Vec<String> = match stack.primary() {
        Family::V4 => vec![
            pod_cidr(EVIL),
            format!("{victim}/32"),
            format!("{api}/32"),
            "169.254.169.254/32".to_owned(),
        ],
        Family::V6 => vec![
            pod_cidr6(EVIL),
            format!("{victim}/128"),
            format!("{api}/128"),
            "fd00:ec2::254/128".to_owned(),
        ],
    };
    let default_route = match stack.primary() {
        Family::V4 => "0.0.0.0/0",
        Family::V6 => "::/0",
    };
    rewrite(&lab, |node| {
        let spec = node.spec.get_or_insert_with(Default::default);
        spec.pod_cidrs = Some(claims.clone());
        spec.pod_cidr = Some(claims[0].clone());
    });
    settle();
    let family = if stack.primary() == Family::V4 {
        "-4"
    } else {
        "-6"
    };
    let tunnel_routes = || {
        String::from_utf8_lossy(
            &lab.network.nodes[0]
                .ns
                .ip(&[family, "route", "show", "table", "51830"])
                .unwrap()
                .stdout,
        )
        .into_owned()
    };
    let routes = tunnel_routes();
    for claim in &claims[1..] {
        assert!(!routed(&routes, claim), "{claim} routed:\n{routes}");
    }
    assert!(
        routed(&routes, &claims[0]),
        "node-2 keeps its pods' CIDR:\n{routes}"
    );

    // node-0's packets to node-1's address never reach node-2's tunnel.
    let icmp = if stack.primary() == Family::V4 {
        "icmp"
    } else {
        "icmp6"
    };
    let evil_sees_victim_traffic = |name: &str| {
        let file = lab.dir.join(format!("evil-tunnel-{name}.pcap"));
        let on_evil = Capture::start(&lab.network.nodes[EVIL].ns, "wireseal0", &file).unwrap();
        assert!(host_ping_address(&lab, 0, &victim), "node-0 reaches node-1");
        on_evil
            .finish_matching(&format!("{icmp} and host {victim}"))
            .unwrap()
    };
    assert_eq!(
        evil_sees_victim_traffic("claims"),
        0,
        "node-2 received node-0's traffic to node-1"
    );
    let refused = claims.len() - 1;
    for i in [0, 1] {
        eventually(&lab, "the claims refused", |lab| {
            refusals(lab, i) == refused
        });
    }

    // One Event per refused claim, on the compromised Node.
    eventually(&lab, "an Event per claim on node-2", |lab| {
        events(lab)
            .iter()
            .filter(|(reason, _)| reason == "WiresealClaimRefused")
            .count()
            == refused
    });

    // The default route alone: refused (it contains node-2's own address,
    // among others), nothing of it routed.
    rewrite(&lab, |node| {
        let spec = node.spec.get_or_insert_with(Default::default);
        spec.pod_cidrs = Some(vec![default_route.to_owned()]);
        spec.pod_cidr = Some(default_route.to_owned());
    });
    settle();
    let routes = tunnel_routes();
    assert!(
        !routed(&routes, default_route),
        "{default_route} routed:\n{routes}"
    );
    assert_eq!(
        evil_sees_victim_traffic("default"),
        0,
        "node-2 received node-0's traffic to node-1 through {default_route}"
    );
    eventually(&lab, "the default route refused", |lab| {
        issues(lab, 0, EVIL)
            .iter()
            .any(|issue| issue.contains(default_route))
    });

    // Every agent still reaches the API server: the hostile Node's deletion
    // is seen, and node-2 leaves every mesh.
    lab.delete_node(EVIL).unwrap();
    for i in [0, 1] {
        eventually(&lab, "node-2's deletion seen", |lab| {
            lab.status(i).is_ok_and(|s| {
                s.peers.len() == 1 && s.peers[0].node == lab.network.nodes[1 - i].name
            })
        });
    }
}

/// A compromised node claims its victim's pod CIDR, a range over every
/// node's, or its victim's public key, in each family on dual-stack nodes.
/// Before sticky ownership, every agent then dropped the victim as a peer
/// too: the victim's pod traffic went out in clear over the CNI. Now the
/// victim keeps what it holds, only the newcomer is refused (with an Event),
/// and the canary of neither family ever crosses in clear.
#[test]
#[ignore = "needs root and network namespaces"]
fn an_overlapping_claim_or_a_copied_key_never_downgrades_the_victim() {
    let stack = Stack::Dual;
    let lab = lab(stack, &["--cluster-cidrs", &stack.cluster_cidrs()]);
    let victim_key = lab.status(1).unwrap().public_key.unwrap().to_base64();
    type Attack = (String, &'static str, String);
    let mut attacks: Vec<Attack> = stack
        .families()
        .iter()
        .flat_map(|family| {
            let (victim, everyone, evil_and_part) = match family {
                Family::V4 => (pod_cidr(1), cluster_cidr(*family), "10.244.1.0/25"),
                Family::V6 => (pod_cidr6(1), cluster_cidr(*family), "fd00:10:244:1::/65"),
            };
            let own = match family {
                Family::V4 => pod_cidr(EVIL),
                Family::V6 => pod_cidr6(EVIL),
            };
            let name = family_name(*family);
            [
                (format!("{name}: victim's CIDR"), victim),
                (
                    format!("{name}: a range over everyone"),
                    everyone.to_owned(),
                ),
                (
                    format!("{name}: CIDR and more"),
                    format!("{own},{evil_and_part}"),
                ),
            ]
            .map(|(what, value)| (what, "wireseal.dev/pod-cidrs", value))
        })
        .collect();
    attacks.push((
        "victim's key".to_owned(),
        "wireseal.dev/public-key",
        victim_key,
    ));
    for (what, key, value) in &attacks {
        let before = lab
            .apiserver()
            .state()
            .node_annotation(&lab.network.nodes[EVIL].name, key);
        rewrite(&lab, |node| set_annotation(node, key, Some(value)));
        settle();
        let report = capture_victim_traffic(&lab);
        assert_eq!(report.canary_frames, 0, "{what}: {report}");
        assert_eq!(report.plaintext_count, 0, "{what}: {report}");
        assert!(report.encrypted(), "{what}: {report}");
        for i in [0, 1] {
            eventually(&lab, &format!("{what}: refused"), |lab| {
                refusals(lab, i) >= 1
            });
        }
        // The victim is still node-0's peer, encrypted.
        let victim = &lab.network.nodes[1].name;
        let peer = lab
            .status(0)
            .unwrap()
            .peers
            .into_iter()
            .find(|p| &p.node == victim)
            .unwrap();
        assert!(
            peer.public_key.is_some() && peer.issues.is_empty(),
            "{what}: {peer:?}"
        );
        rewrite(&lab, |node| set_annotation(node, key, before.as_deref()));
        eventually(&lab, &format!("{what}: withdrawn"), |lab| {
            refusals(lab, 0) == 0
        });
    }
    let refused = events(&lab);
    assert!(
        refused.len() >= attacks.len()
            && refused
                .iter()
                .all(|(reason, _)| reason == "WiresealClaimRefused"),
        "{refused:?}"
    );
}

/// Endpoints that would make every peer send a node's traffic elsewhere:
/// loopback, the metadata service, an IPv4-mapped address. Each is refused
/// with an Event, and the node stays reachable at its InternalIP.
#[test]
#[ignore = "needs root and network namespaces"]
fn hostile_endpoints_are_refused() {
    hostile_endpoints_refused(
        Stack::V4,
        &[
            "127.0.0.1:51830",
            "169.254.169.254:51830",
            "[::ffff:198.18.0.12]:51830",
        ],
    );
}

/// The same on an IPv6-only cluster: IPv6 loopback, link-local, AWS's IPv6
/// metadata service, an IPv4-mapped address and a zoned one (node-2's own
/// address with a zone).
#[test]
#[ignore = "needs root and network namespaces"]
fn hostile_ipv6_endpoints_are_refused() {
    hostile_endpoints_refused(
        Stack::V6,
        &[
            "[::1]:51830",
            "[fe80::1]:51830",
            "[fd00:ec2::254]:51830",
            "[::ffff:198.18.0.12]:51830",
            "[fd00:198:18::12%2]:51830",
        ],
    );
}

fn hostile_endpoints_refused(stack: Stack, endpoints: &[&str]) {
    let lab = lab(stack, &[]);
    let evil_ip = lab.network.nodes[EVIL].ip.to_string();
    for endpoint in endpoints {
        rewrite(&lab, |node| {
            set_annotation(node, "wireseal.dev/endpoint", Some(endpoint));
        });
        settle();
        let peer = lab
            .status(0)
            .unwrap()
            .peers
            .into_iter()
            .find(|p| p.node == lab.network.nodes[EVIL].name)
            .unwrap();
        assert_eq!(
            peer.endpoint.map(|e| e.ip().to_string()),
            Some(evil_ip.clone()),
            "{endpoint} taken as node-2's endpoint"
        );
        eventually(&lab, &format!("{endpoint} refused"), |lab| {
            issues(lab, 0, EVIL).iter().any(|issue| {
                issue.contains(endpoint)
                    && issue.contains("not an address another node can be reached at")
            })
        });
    }
    eventually(&lab, "Events about the endpoints", |lab| {
        events(lab)
            .iter()
            .filter(|(reason, _)| reason == "InvalidWiresealInput")
            .count()
            >= endpoints.len()
    });
}

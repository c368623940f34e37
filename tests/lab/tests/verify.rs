//! `wireseal verify` in the network-namespace lab, run inside a node with
//! an admin's kubeconfig, as an auditor on that node would: it passes on a
//! healthy cluster, and fails, naming the peer, when a node is switched off
//! or when a peer is gated onto the CNI's plain route (and then its capture
//! sees the probe's canary in clear). Needs root; fails (never skips)
//! without it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use serde_json::Value;
use wireseal_core::coverage::PeerState;
use wireseal_lab::identity::Identity;
use wireseal_lab::process::locate;
use wireseal_lab::{Lab, LabConfig, kubeconfig_path};

const UP: Duration = Duration::from_secs(60);

fn lab() -> Lab {
    Lab::up(LabConfig {
        nodes: 3,
        pods: 1,
        ..LabConfig::default()
    })
    .expect("the lab needs root, iproute2 and the built binaries")
}

/// `wireseal verify --json` inside node `i`: its exit code and report.
fn verify(lab: &Lab, i: usize, extra: &[&str]) -> (i32, Value) {
    let wireseal = locate("wireseal").unwrap();
    let output = lab.network.nodes[i]
        .ns
        .command(&wireseal.to_string_lossy())
        .args([
            "verify",
            "--json",
            "--state-dir",
            &lab.state_dir(i),
            "--kubeconfig",
        ])
        .arg(kubeconfig_path(&lab.dir, &Identity::Admin))
        .args(extra)
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "verify printed no JSON report ({err}): {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code().unwrap_or(-1), report)
}

fn peer<'a>(report: &'a Value, node: &str) -> &'a Value {
    report["local"]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["node"] == node)
        .unwrap_or_else(|| panic!("no peer {node} in {report:#}"))
}

fn failures(value: &Value) -> Vec<String> {
    value["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_owned())
        .collect()
}

#[test]
#[ignore = "needs root: network namespaces, veth, TUN, policy routing"]
fn verify_passes_on_a_healthy_cluster_and_names_a_node_switched_off() {
    let mut lab = lab();
    lab.start_wireseal().unwrap();
    lab.wait_encrypted(UP).unwrap();

    let (code, report) = verify(&lab, 0, &[]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["ok"], true);
    let nodes = report["cluster"]["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3, "{report:#}");
    for node in nodes {
        assert!(failures(node).is_empty(), "{node:#}");
        assert_eq!(node["condition"]["status"], "True", "{node:#}");
    }
    // Every peer was probed through the tunnel: replies, WireGuard both
    // ways on the underlay, and the canary never in clear.
    for name in ["node-1", "node-2"] {
        let peer = peer(&report, name);
        let probes = peer["probes"].as_array().unwrap();
        assert_eq!(probes.len(), 1, "{peer:#}");
        let probe = &probes[0];
        assert!(probe["received"].as_u64().unwrap() > 0, "{probe:#}");
        assert_eq!(probe["seen"]["canaryInClear"], 0, "{probe:#}");
        assert!(
            probe["seen"]["wireguardOut"].as_u64().unwrap() > 0,
            "{probe:#}"
        );
        assert!(
            probe["seen"]["wireguardIn"].as_u64().unwrap() > 0,
            "{probe:#}"
        );
    }

    // The same cluster as `wireseal status --all` shows it.
    let wireseal = locate("wireseal").unwrap();
    let all = lab.network.nodes[0]
        .ns
        .command(&wireseal.to_string_lossy())
        .args(["status", "--all", "--kubeconfig"])
        .arg(kubeconfig_path(&lab.dir, &Identity::Admin))
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&all.stdout);
    assert!(all.status.success(), "{table}");
    for i in 0..3 {
        let row = table
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("node-{i} ")))
            .unwrap_or_else(|| panic!("no node-{i} in {table}"));
        assert!(row.contains(" True ") && row.contains(" 2/2 "), "{row}");
    }

    // node-2 switched off: its agent and datapath stop. Its Node still says
    // what it said last, but the probe from node-0 gets no answer.
    lab.stop_agent(2);
    lab.stop_tunnel(2);
    let (code, report) = verify(&lab, 0, &[]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["ok"], false);
    assert!(failures(peer(&report, "node-1")).is_empty(), "{report:#}");
    let off = failures(peer(&report, "node-2"));
    assert!(
        off.iter().any(|f| f.starts_with("no echo reply from")),
        "{off:?}"
    );
    assert!(
        failures(&report)
            .iter()
            .any(|f| f.starts_with("node-0 → node-2: ")),
        "{report:#}"
    );
}

#[test]
#[ignore = "needs root: network namespaces, veth, TUN, policy routing"]
fn verify_fails_on_a_gated_peer_and_its_capture_sees_the_canary_in_clear() {
    let mut lab = lab();
    // WireGuard between node-0 and node-1 is blocked before wireseal starts:
    // without --strict, node-1's pods stay on the CNI's plain route.
    lab.block_wireguard(0, 1).unwrap();
    lab.start_wireseal().unwrap();
    let deadline = Instant::now() + UP;
    loop {
        let status = lab.status(0);
        let ready = status.as_ref().is_ok_and(|s| {
            // node-1's host source (the probe's target) comes with its
            // status annotation, which may arrive after its key.
            s.expected() == 2
                && s.peers
                    .iter()
                    .any(|p| p.node == "node-2" && p.state == PeerState::Encrypted)
                && s.peers
                    .iter()
                    .any(|p| p.node == "node-1" && !p.host_sources.is_empty())
        });
        if ready {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node-0 never peered with node-2: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    let (code, report) = verify(&lab, 0, &["--no-cluster"]);
    assert_eq!(code, 1, "{report:#}");
    assert!(report.get("cluster").is_none(), "{report:#}");
    assert!(failures(peer(&report, "node-2")).is_empty(), "{report:#}");
    let gated = peer(&report, "node-1");
    let why = failures(gated);
    assert!(
        why.iter().any(|f| f.starts_with("not encrypted")),
        "{why:?}"
    );
    // The probe went out over the CNI in clear, and the capture says so.
    let probe = &gated["probes"][0];
    assert!(
        probe["seen"]["canaryInClear"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{gated:#}"
    );
    assert!(
        why.iter().any(|f| f.starts_with("the canary crossed")),
        "{why:?}"
    );
}

//! The kernel's leak counter (`nftables` table `inet wireseal`) in the lab,
//! without `--strict`: at 0 on every node while pods ping across healthy
//! peers; above 0 on a node whose peer is gated (UDP 51830 blocked) once its
//! pods talk to that peer's pods; counting on a node whose wireseal is off
//! (agent stopped, tunnel gone: the table stays) and reported by the agent
//! started again; gone after `wireseal cleanup`. `nft` in each node's
//! namespace cross-checks what the agents report. They need root and fail
//! (never skip) without it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::thread;
use std::time::{Duration, Instant};

use wireseal::leaks::LeakState;
use wireseal_lab::traffic::ping;
use wireseal_lab::{Lab, LabConfig};

const UP: Duration = Duration::from_secs(60);
const CONVERGE: Duration = Duration::from_secs(30);
const PING_GAP: Duration = Duration::from_millis(20);

fn eventually(lab: &Lab, what: &str, check: impl FnMut(&Lab) -> bool) {
    lab.eventually(what, CONVERGE, check);
}

/// Packets counted in node `i`'s table, as `nft -j` lists it; `None`
/// without the table.
fn nft_packets(lab: &Lab, i: usize) -> Option<u64> {
    let out = lab.network.nodes[i]
        .ns
        .exec("nft", &["-j", "list", "table", "inet", "wireseal"])
        .ok()?;
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut packets = 0;
    for item in listed["nftables"].as_array().unwrap() {
        for expr in item["rule"]["expr"].as_array().into_iter().flatten() {
            packets += expr["counter"]["packets"].as_u64().unwrap_or(0);
        }
    }
    Some(packets)
}

/// Node `i`'s agent reports the counter running, with `packets` in both families.
fn reported(lab: &Lab, i: usize) -> Option<u64> {
    let status = lab.status(i).ok()?;
    (status.leaks.state == LeakState::Counting).then(|| status.leaks.packets())
}

#[test]
#[ignore = "needs root, network namespaces, nftables and the built binaries"]
fn the_leak_counter_stays_at_zero_when_sealed_and_counts_gated_and_stopped_peers() {
    let mut lab = Lab::up(LabConfig {
        nodes: 3,
        pods: 1,
        ..LabConfig::default()
    })
    .expect("the lab needs root, iproute2, nft and the built binaries");
    lab.set_agent_args(&["--cluster-cidrs", "10.244.0.0/16"]);
    // node-0 and node-1 never complete a handshake; node-2 reaches both.
    lab.block_wireguard(0, 1).unwrap();
    lab.start_wireseal().unwrap();
    let deadline = Instant::now() + UP;
    while !lab.status(2).is_ok_and(|s| s.encrypted() == 2)
        || !lab
            .status(0)
            .is_ok_and(|s| s.encrypted() == 1 && s.expected() == 2)
    {
        assert!(
            Instant::now() < deadline,
            "node-2 never sealed with both, node-0 with node-2:\n{}\n{}\n{}",
            lab.status_text(0).unwrap_or_default(),
            lab.status_text(2).unwrap_or_default(),
            lab.logs(0)
        );
        thread::sleep(Duration::from_millis(200));
    }
    for i in 0..3 {
        eventually(&lab, "every agent counts", |lab| reported(lab, i).is_some());
    }

    // Healthy paths: pods of node-2 and pods of the others, both ways.
    for (from, to) in [(2, 0), (2, 1), (0, 2), (1, 2)] {
        let pinged = ping(&lab.network, (from, 0), (to, 0), 20, PING_GAP).unwrap();
        assert!(pinged.received > 0, "{from} → {to}: {pinged:?}");
    }
    for i in 0..3 {
        assert_eq!(
            nft_packets(&lab, i),
            Some(0),
            "node-{i} counted a sealed packet"
        );
        assert_eq!(reported(&lab, i), Some(0), "node-{i}");
    }
    // verify reads the kernel's counter itself: 0 before and after, passes.
    let (code, report) = lab.verify_local(2, &["--no-probe"]).unwrap();
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["local"]["leaks"]["before"], 0, "{report:#}");
    assert_eq!(report["local"]["leaks"]["after"], 0, "{report:#}");

    // The gated peer: without --strict node-0's pod reaches node-1's in clear.
    let pinged = ping(&lab.network, (0, 0), (1, 0), 20, PING_GAP).unwrap();
    let leaked = nft_packets(&lab, 0).unwrap();
    assert!(
        leaked >= u64::from(pinged.sent),
        "node-0 counted {leaked} of {} pings sent in clear",
        pinged.sent
    );
    eventually(&lab, "node-0's agent reports the leak", |lab| {
        reported(lab, 0).is_some_and(|n| n >= leaked)
    });
    let text = lab.status_text(0).unwrap();
    assert!(text.contains("leaks: "), "{text}");
    // Without --strict an earlier leak is reported by verify, not a failure
    // of its own (node-0 fails for its gated peer).
    let (code, report) = lab.verify_local(0, &["--no-probe"]).unwrap();
    assert_eq!(code, 1, "{report:#}");
    let warnings = report["local"]["warnings"].to_string();
    assert!(
        warnings.contains("packet(s) have left for other nodes' pods"),
        "{report:#}"
    );
    assert!(report["local"]["leaks"]["after"].as_u64().unwrap() >= leaked);
    assert!(
        !report["failures"].to_string().contains("while verify ran"),
        "no new leak while verify ran: {report:#}"
    );
    assert_eq!(nft_packets(&lab, 2), Some(0), "node-2 stays sealed");

    // wireseal off on node-2: the agent stops, the tunnel goes; the table
    // stays and counts what now leaves in clear.
    lab.stop_agent(2);
    lab.stop_tunnel(2);
    let before = nft_packets(&lab, 2).expect("the table outlives the agent");
    assert_eq!(before, 0);
    let pinged = ping(&lab.network, (2, 0), (0, 0), 10, PING_GAP).unwrap();
    let leaked = nft_packets(&lab, 2).unwrap();
    assert!(
        leaked >= u64::from(pinged.sent),
        "node-2 counted {leaked} of {} pings sent while off",
        pinged.sent
    );
    // The agent started again reports what leaked while it was away.
    lab.start_tunnel(2).unwrap();
    lab.start_agent(2).unwrap();
    eventually(&lab, "node-2's new agent reports the leak", |lab| {
        reported(lab, 2).is_some_and(|n| n >= leaked)
    });

    lab.cleanup_node(2).unwrap();
    assert_eq!(nft_packets(&lab, 2), None, "cleanup removes the table");
}

//! Node writes at steady state: an agent writes its Node (which every agent
//! in the cluster then receives) only when something others need changes,
//! not when a tunnel goes idle or handshakes again. The lab's node-0 runs
//! with a persistent keepalive of 25 s, the others with none, and pod
//! traffic comes in two bursts. In between, the sessions with node-0 are
//! kept alive; the one between node-1 and node-2 rekeys once (WireGuard's
//! initiator does, 120 s into a session that carried data) and then
//! expires (180 s after its handshake), and the second burst brings it
//! back: about 5 minutes. Needs root; fails (never skips) without it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wireseal_core::coverage::{HANDSHAKE_FRESH, PeerState};
use wireseal_lab::{Lab, LabConfig};

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
#[ignore = "needs root and network namespaces"]
fn idle_and_kept_alive_tunnels_cause_no_node_writes() {
    let mut lab = Lab::up(LabConfig {
        nodes: 3,
        pods: 1,
        ..LabConfig::default()
    })
    .expect("the lab needs root, iproute2 and the built binaries");
    let mut keepalive = BTreeMap::new();
    for i in 0..3 {
        let seconds: u16 = if i == 0 { 25 } else { 0 };
        lab.set_agent_args(&["--persistent-keepalive", &seconds.to_string()]);
        lab.start_tunnel(i).unwrap();
        lab.start_agent(i).unwrap();
        keepalive.insert(lab.network.nodes[i].name.clone(), seconds);
    }
    lab.wait_encrypted(Duration::from_secs(60)).unwrap();
    let idle_peer = lab.network.nodes[2].name.clone();
    let idle_handshake = |lab: &Lab| {
        let status = lab.status(1).ok()?;
        let peer = status.peers.into_iter().find(|p| p.node == idle_peer)?;
        Some((
            now_unix().saturating_sub(peer.last_handshake_unix?),
            peer.state,
        ))
    };

    lab.wait_conditions_true(Duration::from_secs(60)).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let before = lab.node_writes();
    let started = Instant::now();
    lab.ping_all_pairs();
    // Until node-1's session with node-2 has outlived a session's lifetime
    // while idle (it rekeys once first), with node-1 still counting the peer
    // as encrypted on every look.
    loop {
        lab.check_processes().unwrap();
        let (age, state) = idle_handshake(&lab).expect("node-1 lists node-2 with a handshake");
        assert_eq!(
            state,
            PeerState::Encrypted,
            "an idle peer counts, at {age} s"
        );
        if age > HANDSHAKE_FRESH.as_secs() + 10 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(420),
            "the idle session never expired (handshake {age} s ago)"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    lab.ping_all_pairs();
    // A few passes (every 5 s) after the second burst.
    std::thread::sleep(Duration::from_secs(15));
    let after = lab.node_writes();
    let window = started.elapsed();

    let (age, state) = idle_handshake(&lab).unwrap();
    assert!(age < 20, "the second burst handshook again ({age} s ago)");
    assert_eq!(state, PeerState::Encrypted);
    let writes: BTreeMap<&String, usize> = after
        .iter()
        .map(|(node, n)| (node, n - before.get(node).copied().unwrap_or_default()))
        .collect();
    println!(
        "Node writes in {} s at steady state (node-0 keepalive 25 s, the others 0; \
         node-1/node-2 idle until their session expired): {writes:?}",
        window.as_secs()
    );
    assert!(
        writes.values().all(|n| *n == 0),
        "no Node write at steady state: {writes:?}\n{}",
        lab.apiserver()
            .access_log()
            .iter()
            .filter(|e| e.method == "PATCH")
            .map(|e| format!("{} {} {}", e.method, e.path, e.status))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for i in 0..3 {
        let (status, reason, message) = lab.condition(i).unwrap();
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("True", "AllPeersEncrypted"),
            "{message}"
        );
        assert!(
            message.starts_with("2/2 peers encrypted, datapath userspace"),
            "{message}"
        );
    }
}

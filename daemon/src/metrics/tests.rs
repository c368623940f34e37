use std::collections::BTreeSet;

use wireseal_core::coverage::PeerState;
use wireseal_core::{DatapathKind, PublicKey};

use super::*;
use crate::status::PeerStatus;

fn key(i: u8) -> PublicKey {
    PublicKey::from_bytes(x25519_dalek::x25519(
        [i; 32],
        x25519_dalek::X25519_BASEPOINT_BYTES,
    ))
    .unwrap()
}

fn peer(name: &str, i: u8, cidrs: &[&str], state: PeerState) -> PeerStatus {
    PeerStatus {
        node: name.into(),
        public_key: Some(key(i)),
        endpoint: None,
        allowed_ips: cidrs.iter().map(|c| (*c).to_owned()).collect(),
        last_handshake_unix: Some(1_000),
        rx_bytes: 10 * u64::from(i),
        tx_bytes: 20 * u64::from(i),
        encrypted: state.encrypted(),
        state,
        issues: vec![],
        host_sources: vec![],
    }
}

#[test]
fn a_missing_host_source_is_a_metric() {
    let metrics = Metrics::new();
    assert!(
        metrics
            .encode(&AgentStatus::default())
            .contains("\nwireseal_host_source_missing 0\n")
    );
    let text = metrics.encode(&AgentStatus {
        host_source_warning: Some("no address in 10.244.0.0/24".into()),
        ..AgentStatus::default()
    });
    assert!(
        text.contains("\nwireseal_host_source_missing 1\n"),
        "{text}"
    );
    assert!(
        text.contains("\nwireseal_peers_expected{family=\"ipv4\"} 0\n"),
        "{text}"
    );
}

#[test]
fn per_peer_series_follow_the_nodes_and_go_with_them() {
    let metrics = Metrics::new();
    let mut status = AgentStatus {
        node: "node-0".into(),
        datapath: Some(DatapathKind::Userspace),
        strict: true,
        tunnel_mtu: 1420,
        peers: vec![
            peer(
                "node-1",
                1,
                &["10.244.1.0/24", "fd00:1::/64"],
                PeerState::Encrypted,
            ),
            peer("node-2", 2, &["10.244.2.0/24"], PeerState::NoHandshake),
        ],
        ..AgentStatus::default()
    };
    metrics.refused("node-2", "cidr-conflict");
    let text = metrics.encode(&status);
    for line in [
        "wireseal_info{version=\"",
        "datapath=\"userspace\",encryption=\"wireguard\",strict=\"true\"} 1",
        "wireseal_peers_expected{family=\"ipv4\"} 2",
        "wireseal_peers_encrypted{family=\"ipv4\"} 1",
        "wireseal_peers_expected{family=\"ipv6\"} 1",
        "wireseal_peers_encrypted{family=\"ipv6\"} 1",
        "wireseal_peer_receive_bytes{peer=\"node-1\"} 10",
        "wireseal_peer_transmit_bytes{peer=\"node-2\"} 40",
        "wireseal_peer_encrypted{peer=\"node-2\"} 0",
        "wireseal_peer_last_handshake_age_seconds{peer=\"node-1\"}",
        "wireseal_refused_peer_input_total{node=\"node-2\",kind=\"cidr-conflict\"} 1",
        "wireseal_tunnel_mtu 1420",
    ] {
        assert!(text.contains(line), "{line} missing in\n{text}");
    }

    // node-2 leaves: none of its series stay.
    status.peers.pop();
    let text = metrics.encode(&status);
    assert!(!text.contains("node-2"), "{text}");
    assert!(
        text.contains("wireseal_peers_expected{family=\"ipv4\"} 1"),
        "{text}"
    );
}

#[test]
fn per_peer_series_can_be_turned_off() {
    let metrics = Metrics::with_per_peer(false);
    let text = metrics.encode(&AgentStatus {
        peers: vec![peer("node-1", 1, &["10.244.1.0/24"], PeerState::Encrypted)],
        ..AgentStatus::default()
    });
    assert!(!text.contains("peer=\""), "{text}");
    assert!(
        text.contains("wireseal_peers_encrypted{family=\"ipv4\"} 1"),
        "{text}"
    );
}

#[test]
fn the_reconcile_histogram_and_node_writes_count() {
    let metrics = Metrics::new();
    metrics.reconcile(true, Duration::from_millis(3));
    metrics.reconcile(false, Duration::from_secs(2));
    metrics.node_write(true);
    let text = metrics.encode(&AgentStatus::default());
    assert!(
        text.contains("wireseal_reconcile_duration_seconds_count 2"),
        "{text}"
    );
    assert!(
        text.contains("wireseal_reconcile_duration_seconds_bucket{le=\"0.005\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("wireseal_reconciles_total{result=\"error\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("wireseal_node_writes_total{result=\"ok\"} 1"),
        "{text}"
    );
}

/// README.md's metric table names exactly the metric families the agent
/// exports: a metric added, renamed or removed without the docs fails here.
#[test]
fn the_readme_lists_every_metric_and_no_other() {
    let exported: BTreeSet<String> = Metrics::exported_families().into_keys().collect();
    let readme = include_str!("../../../README.md");
    let documented: BTreeSet<String> = readme
        .lines()
        .filter_map(|line| line.strip_prefix("| `wireseal_"))
        .filter_map(|rest| rest.split('`').next())
        .map(|name| {
            let name = format!("wireseal_{name}");
            // The table names counters as they are scraped (`_total`);
            // OpenMetrics' TYPE line names the family without it.
            name.strip_suffix("_total")
                .map_or(name.clone(), str::to_owned)
        })
        .collect();
    assert_eq!(
        exported, documented,
        "README.md's \"Metrics\" table and the exported metrics differ"
    );
}

#[test]
fn leak_counters_follow_the_kernel_and_exist_only_where_it_counts() {
    use crate::leaks::{LeakCount, LeakState, LeakStatus};
    let metrics = Metrics::new();
    let text = metrics.encode(&AgentStatus::default());
    assert!(!text.contains("wireseal_leaked_packets_total{"), "{text}");
    assert!(text.contains("\nwireseal_leak_counter_up 0\n"), "{text}");
    let leaks = |packets, bytes| AgentStatus {
        leaks: LeakStatus {
            state: LeakState::Counting,
            ipv4: LeakCount { packets, bytes },
            ipv6: LeakCount::default(),
            error: None,
        },
        ..AgentStatus::default()
    };
    // A restarted agent reports what the kernel counted while it was away.
    let _ = metrics.encode(&leaks(5, 500));
    let text = metrics.encode(&leaks(7, 700));
    assert!(text.contains("\nwireseal_leak_counter_up 1\n"), "{text}");
    assert!(
        text.contains("wireseal_leaked_packets_total{family=\"ipv4\"} 7\n"),
        "{text}"
    );
    assert!(
        text.contains("wireseal_leaked_bytes_total{family=\"ipv4\"} 700\n"),
        "{text}"
    );
    assert!(
        text.contains("wireseal_leaked_packets_total{family=\"ipv6\"} 0\n"),
        "{text}"
    );
    // The table made anew counts from zero: the metric still only grows.
    let text = metrics.encode(&leaks(2, 200));
    assert!(
        text.contains("wireseal_leaked_packets_total{family=\"ipv4\"} 9\n"),
        "{text}"
    );
}

#[test]
fn the_kernels_xfrm_counters_are_mirrored_in_ipsec_mode_only() {
    let metrics = Metrics::new();
    let text = metrics.encode(&AgentStatus::default());
    assert!(!text.contains("wireseal_ipsec_xfrm_errors{"), "{text}");
    let text = metrics.encode(&AgentStatus {
        xfrm_errors: Some(BTreeMap::from([
            ("XfrmOutNoStates".to_owned(), 10),
            ("XfrmInStateProtoError".to_owned(), 0),
        ])),
        ..AgentStatus::default()
    });
    assert!(
        text.contains("wireseal_ipsec_xfrm_errors{counter=\"XfrmOutNoStates\"} 10\n"),
        "{text}"
    );
    assert!(
        text.contains("wireseal_ipsec_xfrm_errors{counter=\"XfrmInStateProtoError\"} 0\n"),
        "{text}"
    );
}

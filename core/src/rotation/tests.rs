use std::collections::BTreeMap;

use super::*;
use crate::annotation::{NEXT_PUBLIC_KEY, decode_next_key, encode_own};
use crate::desired::tests::{config, key};
use crate::desired::{Desired, MeshConfig, PeerIssue, THIS_NODE, desired};
use crate::node::{AddressKind, NodeAddress, NodeFields};

/// 2026-12-03T14:00:00Z.
const NOW: i64 = 1_796_306_400;

fn view(name: &str, key_index: u8, cidr: &str, ip: &str) -> NodeView {
    NodeView {
        name: name.into(),
        created: Some(1_000),
        addresses: vec![NodeAddress {
            kind: AddressKind::Internal,
            ip: ip.parse().unwrap(),
        }],
        pod_cidrs: vec![cidr.parse().unwrap()],
        public_key: Some(key(key_index)),
        ..NodeView::default()
    }
}

fn cluster() -> Vec<NodeView> {
    vec![
        view("a", 0, "10.244.0.0/24", "192.0.2.10"),
        view("b", 1, "10.244.1.0/24", "192.0.2.11"),
        view("c", 2, "10.244.2.0/24", "192.0.2.12"),
    ]
}

fn at(now: i64, programmed: Option<&Desired>) -> MeshConfig {
    MeshConfig {
        now,
        programmed: programmed
            .map(|d| d.state.device.peers.clone())
            .unwrap_or_default(),
        ..config()
    }
}

#[test]
fn switch_times_round_trip_and_anything_else_is_refused() {
    assert_eq!(format_switch_at(NOW), "2026-12-03T14:00:00Z");
    assert_eq!(decode_switch_at("2026-12-03T14:00:00Z"), Ok(NOW));
    assert_eq!(format_switch_at(0), "1970-01-01T00:00:00Z");
    for secs in [0, 951_782_400, 4_107_542_399, NOW + 86_399] {
        assert_eq!(decode_switch_at(&format_switch_at(secs)), Ok(secs));
    }
    assert_eq!(decode_switch_at("2000-02-29T00:00:00Z"), Ok(951_782_400));
    for bad in [
        "",
        "2026-12-03 14:00:00Z",
        "2026-12-03T14:00:00",
        "2026-12-03T14:00:00+01:00",
        "2026-13-03T14:00:00Z",
        "2026-02-29T14:00:00Z",
        "2026-12-03T24:00:00Z",
        "2026-12-03T14:60:00Z",
        "+026-12-03T14:00:00Z",
        "2026-12-0３T14:00:00Z",
        "1764770400",
    ] {
        assert_eq!(
            decode_switch_at(bad),
            Err(InputErrorKind::SwitchAtSyntax),
            "{bad:?}"
        );
    }
}

#[test]
fn the_codec_writes_both_annotations_and_reads_them_only_together() {
    let next = NextKey {
        key: key(9),
        switch_at: NOW,
    };
    let out = encode_own(&key(1), Some(&next), None, None, None);
    assert_eq!(out[KEY_SWITCH_AT_NAME], "2026-12-03T14:00:00Z");
    let decoded = decode_next_key(
        out.get(NEXT_PUBLIC_KEY).map(String::as_str),
        out.get(KEY_SWITCH_AT_NAME).map(String::as_str),
    );
    assert_eq!(decoded, Ok(Some(next)));
    assert!(!encode_own(&key(1), None, None, None, None).contains_key(NEXT_PUBLIC_KEY));

    let annotations: BTreeMap<String, String> = [
        (NEXT_PUBLIC_KEY.to_owned(), "not a key".to_owned()),
        (
            KEY_SWITCH_AT_NAME.to_owned(),
            "2026-12-03T14:00:00Z".to_owned(),
        ),
    ]
    .into();
    let bad_key = NodeView::from_fields(&NodeFields {
        name: "n",
        annotations: Some(&annotations),
        ..NodeFields::default()
    });
    assert_eq!(bad_key.next_key, None);
    assert_eq!(
        bad_key.problems[0].field,
        Field::Annotation(NEXT_PUBLIC_KEY)
    );

    let alone: BTreeMap<String, String> =
        [(KEY_SWITCH_AT_NAME.to_owned(), "soon".to_owned())].into();
    let view = NodeView::from_fields(&NodeFields {
        name: "n",
        annotations: Some(&alone),
        ..NodeFields::default()
    });
    assert_eq!(view.next_key, None);
    assert_eq!(
        view.problems[0].kind,
        InputErrorKind::RotationIncomplete {
            missing: NEXT_PUBLIC_KEY
        }
    );
}

const KEY_SWITCH_AT_NAME: &str = annotation::KEY_SWITCH_AT;

#[test]
fn peers_replace_the_key_at_the_switch_time_with_the_same_allowed_ips() {
    let mut nodes = cluster();
    let before = desired("a", &key(0), &nodes, &at(NOW, None));
    nodes[1].next_key = Some(NextKey {
        key: key(11),
        switch_at: NOW + 60,
    });
    let announced = desired("a", &key(0), &nodes, &at(NOW, Some(&before)));
    assert_eq!(announced.state, before.state, "nothing changes before T");
    assert!(announced.nodes["b"].issues.is_empty());
    assert_eq!(next_switch(&nodes, NOW), Some(NOW + 60));
    assert_eq!(next_switch(&nodes, NOW + 60), None, "T is not ahead at T");

    let switched = desired("a", &key(0), &nodes, &at(NOW + 60, Some(&before)));
    assert_eq!(switched.nodes["b"].peer, Some(key(11)));
    assert!(switched.nodes["b"].issues.is_empty());
    assert!(!switched.state.device.peers.contains_key(&key(1)));
    assert_eq!(
        switched.state.device.peers[&key(11)].allowed_ips,
        before.state.device.peers[&key(1)].allowed_ips
    );
    assert_eq!(switched.state.routes, before.state.routes);

    // The rotating node then publishes the new key alone: nothing moves.
    nodes[1].public_key = Some(key(11));
    nodes[1].next_key = None;
    let after = desired("a", &key(0), &nodes, &at(NOW + 61, Some(&switched)));
    assert_eq!(after.state, switched.state);
}

#[test]
fn a_switch_announced_too_far_ahead_is_refused_and_the_key_stays() {
    let mut nodes = cluster();
    nodes[1].next_key = Some(NextKey {
        key: key(11),
        switch_at: NOW + MAX_SWITCH_LEAD + 1,
    });
    let d = desired("a", &key(0), &nodes, &at(NOW, None));
    assert_eq!(d.nodes["b"].peer, Some(key(1)));
    assert!(matches!(
        &d.nodes["b"].issues[..],
        [PeerIssue::InvalidInput(err)] if err.kind == InputErrorKind::SwitchTooFar { max_days: 7 }
    ));
    assert_eq!(next_switch(&nodes, NOW), None, "no wake-up a year ahead");

    // Far in the past: the node switched long ago (or announced and went
    // away); its next key is the one to use, now.
    nodes[1].next_key = Some(NextKey {
        key: key(11),
        switch_at: 0,
    });
    let d = desired("a", &key(0), &nodes, &at(NOW, None));
    assert_eq!(d.nodes["b"].peer, Some(key(11)));
}

#[test]
fn announcing_another_nodes_key_or_ours_as_next_is_refused() {
    let mut nodes = cluster();
    let before = desired("a", &key(0), &nodes, &at(NOW, None));
    // c announces b's key as its next key, with an early switch; c is the
    // older node, so without the datapath's memory it would win the key.
    nodes[1].created = Some(2_000);
    nodes[2].next_key = Some(NextKey {
        key: key(1),
        switch_at: NOW + 60,
    });
    let announced = desired("a", &key(0), &nodes, &at(NOW, Some(&before)));
    assert_eq!(
        announced.nodes["c"].issues,
        vec![PeerIssue::NextKeyHeldBy { owner: "b".into() }]
    );
    assert_eq!(announced.nodes["b"].peer, Some(key(1)));
    assert_eq!(announced.state, before.state);

    let switched = desired("a", &key(0), &nodes, &at(NOW + 60, Some(&before)));
    assert_eq!(switched.nodes["b"].peer, Some(key(1)), "b keeps its key");
    assert_eq!(
        switched.state.device.peers[&key(1)].allowed_ips,
        before.state.device.peers[&key(1)].allowed_ips
    );
    assert_eq!(
        switched.nodes["c"].issues,
        vec![PeerIssue::KeyHeldBy { owner: "b".into() }]
    );
    assert!(
        !switched
            .state
            .device
            .peers
            .values()
            .any(|p| p.allowed_ips.contains(&"10.244.2.0/24".parse().unwrap()))
    );

    nodes[2].next_key = Some(NextKey {
        key: key(0),
        switch_at: NOW + 60,
    });
    let ours = desired("a", &key(0), &nodes, &at(NOW, Some(&before)));
    assert_eq!(
        ours.nodes["c"].issues,
        vec![PeerIssue::NextKeyHeldBy {
            owner: THIS_NODE.into()
        }]
    );
    assert_eq!(ours.nodes["c"].peer, Some(key(2)));
}

#[test]
fn copying_a_key_announced_as_next_never_takes_it_from_the_rotating_node() {
    let mut nodes = cluster();
    let before = desired("a", &key(0), &nodes, &at(NOW, None));
    nodes[1].next_key = Some(NextKey {
        key: key(11),
        switch_at: NOW + 60,
    });
    // An older newcomer publishes b's announced next key as its own.
    let mut copier = view("d", 11, "10.244.3.0/24", "192.0.2.13");
    copier.created = Some(1);
    nodes.push(copier);
    let mut programmed = Some(before);
    for now in [NOW, NOW + 30, NOW + 60, NOW + 90] {
        let d = desired("a", &key(0), &nodes, &at(now, programmed.as_ref()));
        assert_eq!(
            d.nodes["d"].issues,
            vec![PeerIssue::KeyHeldBy { owner: "b".into() }],
            "at {now}"
        );
        let expected = if now >= NOW + 60 { key(11) } else { key(1) };
        assert_eq!(d.nodes["b"].peer, Some(expected), "at {now}");
        programmed = Some(d);
    }
}

#[test]
fn a_rotating_node_keeps_its_pod_cidrs_against_an_older_claimant() {
    let mut nodes = cluster();
    let before = desired("a", &key(0), &nodes, &at(NOW, None));
    // d, older than b, claims b's pod CIDR: refused while b's key holds it,
    // and still refused once b's peer is its new key.
    let mut squatter = view("d", 3, "10.244.1.0/24", "192.0.2.13");
    squatter.created = Some(1);
    nodes.push(squatter);
    nodes[1].next_key = Some(NextKey {
        key: key(11),
        switch_at: NOW + 60,
    });
    let d = desired("a", &key(0), &nodes, &at(NOW + 60, Some(&before)));
    assert_eq!(
        d.state.device.peers[&key(11)].allowed_ips,
        before.state.device.peers[&key(1)].allowed_ips
    );
    assert!(
        d.nodes["d"]
            .issues
            .iter()
            .any(|issue| matches!(issue, PeerIssue::CidrConflict { other, .. } if other == "b")),
        "{:?}",
        d.nodes["d"].issues
    );
}

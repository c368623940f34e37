use k8s_openapi::api::core::v1::{
    NodeAddress, NodeCondition, NodeSpec, NodeStatus, PodCondition, PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use wireseal_core::annotation::{PUBLIC_KEY, STATUS};

use super::*;

fn key(i: u8) -> String {
    let public = x25519_dalek::x25519([i; 32], x25519_dalek::X25519_BASEPOINT_BYTES);
    wireseal_core::PublicKey::from_bytes(public)
        .unwrap()
        .to_base64()
}

/// A Node with (optionally) a key, a status annotation and a condition.
fn node(i: u8, keyed: bool, expected: Option<u32>, condition: Option<(&str, &str)>) -> Node {
    let mut annotations = BTreeMap::new();
    if keyed {
        annotations.insert(PUBLIC_KEY.to_owned(), key(i));
    }
    if let Some(expected) = expected {
        annotations.insert(
            STATUS.to_owned(),
            format!(
                r#"{{"datapath":"kernel","encryptionReady":true,"peersExpected":{expected},"peersEncrypted":{expected}}}"#
            ),
        );
    }
    Node {
        metadata: ObjectMeta {
            name: Some(format!("node-{i}")),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            pod_cidrs: Some(vec![format!("10.244.{i}.0/24")]),
            ..NodeSpec::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(vec![NodeAddress {
                type_: "InternalIP".into(),
                address: format!("192.0.2.{}", i + 1),
            }]),
            conditions: condition.map(|(status, reason)| {
                vec![
                    NodeCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        ..NodeCondition::default()
                    },
                    NodeCondition {
                        type_: CONDITION_TYPE.into(),
                        status: status.into(),
                        reason: Some(reason.into()),
                        message: Some("2/2 peers encrypted, datapath kernel".into()),
                        ..NodeCondition::default()
                    },
                ]
            }),
            ..NodeStatus::default()
        }),
    }
}

fn pod(node: &str, ready: bool) -> Pod {
    Pod {
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        }),
        ..Pod::default()
    }
}

#[test]
fn a_healthy_mesh_passes() {
    let nodes: Vec<Node> = (0..3)
        .map(|i| node(i, true, Some(2), Some(("True", "AllPeersEncrypted"))))
        .collect();
    let reports = assess(&nodes, None);
    assert!(reports.iter().all(NodeReport::ok), "{reports:#?}");
    assert_eq!(reports[1].datapath, Some(DatapathKind::Kernel));
    assert_eq!(reports[1].public_key.as_deref(), Some(key(1).as_str()));
    assert_eq!(reports[1].agent_ready, None, "pods not checked");
}

#[test]
fn a_node_without_wireseal_one_not_encrypted_and_one_missing_peers_fail() {
    let nodes = vec![
        // two other nodes publish a key, but it peers with one only
        node(0, true, Some(1), Some(("True", "AllPeersEncrypted"))),
        // no agent at all
        node(1, false, None, None),
        node(2, true, Some(1), Some(("False", "PeersNotEncrypted"))),
        node(3, true, Some(2), Some(("True", "AllPeersEncrypted"))),
    ];
    let reports = assess(&nodes, None);
    let by_name: BTreeMap<&str, &NodeReport> =
        reports.iter().map(|r| (r.name.as_str(), r)).collect();
    assert!(
        by_name["node-0"].failures[0].starts_with("peers missing: it has 1 peer(s), 2 other"),
        "{:?}",
        by_name["node-0"]
    );
    assert!(by_name["node-1"].failures[0].contains("wireseal is not running here"));
    assert!(
        by_name["node-2"]
            .failures
            .iter()
            .any(|f| f.starts_with("not encrypted (PeersNotEncrypted)")),
        "{:?}",
        by_name["node-2"]
    );
    assert!(by_name["node-3"].ok(), "{:?}", by_name["node-3"]);
}

#[test]
fn a_keyed_node_without_a_condition_or_a_ready_pod_fails() {
    let nodes = vec![
        node(0, true, Some(1), None),
        node(1, true, Some(1), Some(("True", "AllPeersEncrypted"))),
    ];
    let pods = vec![pod("node-0", true), pod("node-1", false)];
    let reports = assess(&nodes, Some(&pods));
    assert!(reports[0].failures[0].contains("no WiresealEncrypted condition"));
    assert_eq!(reports[0].agent_ready, Some(true));
    assert_eq!(
        reports[1].failures,
        vec!["no ready wireseal pod runs on this node".to_owned()],
        "its last condition says True, but its agent is gone"
    );
}

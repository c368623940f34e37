//! Helpers shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used, unreachable_pub)]

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use wireseal_fake_apiserver::{AccessLogEntry, FakeApiServer, Handle};

/// Upper bound for any single test.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A Node the way a kubelet + IPAM would leave it.
pub fn node(name: &str, index: u8, labels: &[(&str, &str)]) -> Node {
    let cidr = format!("10.244.{index}.0/24");
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some(cidr.clone()),
            pod_cidrs: Some(vec![cidr]),
            ..NodeSpec::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: format!("192.0.2.{}", 10 + index),
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: name.into(),
                },
            ]),
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..NodeCondition::default()
            }]),
            ..NodeStatus::default()
        }),
    }
}

/// A client configured the way the agent is: from a kubeconfig file.
pub async fn client_for(h: &Handle) -> Client {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    h.write_kubeconfig(&path).unwrap();
    let kc = Kubeconfig::read_from(&path).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(cfg).unwrap()
}

/// A server with `node-a` (role=edge) and `node-b` (role=core), and a client.
pub async fn two_nodes() -> (Handle, Client) {
    let h = FakeApiServer::start_local().await.unwrap();
    h.state()
        .create_node(&node("node-a", 0, &[("role", "edge")]))
        .unwrap();
    h.state()
        .create_node(&node("node-b", 1, &[("role", "core")]))
        .unwrap();
    let c = client_for(&h).await;
    (h, c)
}

/// Polls `cond` until it holds, failing the test after `timeout`.
pub async fn eventually(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs a test body with [`TEST_TIMEOUT`].
pub async fn bounded<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .expect("test exceeded its time bound");
}

pub fn is_node_list(e: &AccessLogEntry) -> bool {
    e.method == "GET" && e.path.starts_with("/api/v1/nodes?") && !e.path.contains("watch=true")
}

pub fn is_node_watch(e: &AccessLogEntry) -> bool {
    e.method == "GET" && e.path.starts_with("/api/v1/nodes?") && e.path.contains("watch=true")
}

pub fn count(h: &Handle, pred: impl Fn(&AccessLogEntry) -> bool) -> usize {
    h.access_log().iter().filter(|e| pred(e)).count()
}

/// A tokens file: an agent account bound to node-a, and an admin.
pub const TOKENS: &str = "
- token: agent-a
  user:
    username: system:serviceaccount:demo:agent
    groups: [system:serviceaccounts, system:authenticated]
    extra:
      authentication.kubernetes.io/node-name: [node-a]
- token: admin
  user:
    username: kubernetes-admin
    groups: [system:masters, system:authenticated]
";

/// A policy for [`TOKENS`]' agent account: it may only write the Node its token names, and never
/// delete one; a second validation without a reason answers 422.
pub const ADMISSION_POLICY: &str = "
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: own-node}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
      - apiGroups: ['']
        apiVersions: ['*']
        operations: [CREATE, UPDATE, DELETE]
        resources: [nodes, nodes/*]
  matchConditions:
    - name: agent
      expression: request.userInfo.username == 'system:serviceaccount:demo:agent'
  validations:
    - expression: request.operation != 'DELETE'
      reason: Forbidden
      message: agents do not delete Nodes
    - expression: >-
        object.metadata.name in request.userInfo.extra['authentication.kubernetes.io/node-name']
      reason: Forbidden
      messageExpression: \"'only its own Node, not ' + object.metadata.name\"
    - expression: >-
        !has(object.metadata.labels) || !('bad' in object.metadata.labels)
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: own-node-binding}
spec:
  policyName: own-node
  validationActions: [Deny]
";

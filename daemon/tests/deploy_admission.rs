//! The ValidatingAdmissionPolicies in deploy/kubernetes/30-admission.yaml,
//! evaluated as shipped: the expressions are read from the file and run by a
//! CEL interpreter (the `cel` crate, through the fake apiserver's admission
//! module, which enforces them in the lab too) against a table of admission
//! requests. Every denial is checked to come from an expression that
//! evaluated to false (not from an error), next to a request that differs only
//! in what is attacked and is allowed. The chart's template is held to the same
//! policies, and the expressions to the Node schema of Kubernetes 1.30, the
//! oldest version they are for.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod manifests;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};
use wireseal_fake_apiserver::UserInfo;
use wireseal_fake_apiserver::admission::{Denial, Operation, Policies, Request};

use manifests::*;

const OWN_NODE: &str = "wireseal-agent-own-node";
const WRITERS: &str = "wireseal-annotation-writers";
const NODE_CLAIM: &str = "authentication.kubernetes.io/node-name";
const KEY: &str = "wireseal.dev/public-key";
const NEXT_KEY: &str = "wireseal.dev/next-public-key";
const EPOCH: &str = "wireseal.dev/ipsec-epoch";
const SWITCH_AT: &str = "wireseal.dev/key-switch-at";
const TAINT: &str = "wireseal.dev/agent-not-ready";

fn policy_text() -> String {
    std::fs::read_to_string(deploy_dir().join("kubernetes/30-admission.yaml")).unwrap()
}

fn shipped() -> Policies {
    Policies::parse(&policy_text()).unwrap()
}

// ---------------------------------------------------------------------------
// Who asks.

/// The agent's ServiceAccount with a token the kubelet issued to its pod on
/// `node` (None: a token without the node claim, e.g. a legacy Secret token).
fn agent(node: Option<&str>) -> UserInfo {
    let mut extra = std::collections::BTreeMap::new();
    extra.insert(
        "authentication.kubernetes.io/pod-name".to_owned(),
        vec!["wireseal-x7k2p".to_owned()],
    );
    if let Some(node) = node {
        extra.insert(NODE_CLAIM.to_owned(), vec![node.to_owned()]);
    }
    UserInfo {
        username: "system:serviceaccount:wireseal:wireseal".into(),
        uid: "5f1c".into(),
        groups: vec![
            "system:serviceaccounts".into(),
            "system:serviceaccounts:wireseal".into(),
            "system:authenticated".into(),
        ],
        extra,
    }
}

fn kubelet(node: &str) -> UserInfo {
    UserInfo {
        username: format!("system:node:{node}"),
        groups: vec!["system:nodes".into(), "system:authenticated".into()],
        ..UserInfo::default()
    }
}

fn user(name: &str, groups: &[&str]) -> UserInfo {
    UserInfo {
        username: name.into(),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        ..UserInfo::default()
    }
}

fn admin() -> UserInfo {
    user(
        "kubernetes-admin",
        &["system:masters", "system:authenticated"],
    )
}

// ---------------------------------------------------------------------------
// What is written.

/// A Node as a kubelet registers and reports it, with its agent's annotations
/// and the not-ready taint strict mode starts with.
fn node(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "uid": "0b6f",
            "resourceVersion": "4711",
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"},
            "annotations": {
                "node.alpha.kubernetes.io/ttl": "0",
                KEY: "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=",
                "wireseal.dev/endpoint": "192.0.2.10:51830",
                "wireseal.dev/status": "{\"v\":1}",
            },
        },
        "spec": {
            "podCIDR": "10.244.0.0/24",
            "podCIDRs": ["10.244.0.0/24"],
            "providerID": format!("kind://docker/kind/{name}"),
            "taints": [
                {"key": TAINT, "effect": "NoSchedule"},
                {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"},
            ],
        },
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": "192.0.2.10"},
                {"type": "Hostname", "address": name},
            ],
            "capacity": {"cpu": "2", "memory": "8Gi", "pods": "110"},
            "allocatable": {"cpu": "2", "memory": "7Gi", "pods": "110"},
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "KubeletReady"},
                {"type": "MemoryPressure", "status": "False"},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {"kubeletVersion": "v1.33.1", "osImage": "Debian GNU/Linux 13"},
            "images": [{"names": ["registry.k8s.io/pause:3.10"], "sizeBytes": 320_368}],
        },
    })
}

/// `node(name)` changed by `f`.
fn changed(name: &str, f: impl FnOnce(&mut Value)) -> Value {
    let mut n = node(name);
    f(&mut n);
    n
}

/// Removes the field at a JSON pointer, which must be there.
fn remove(v: &mut Value, pointer: &str) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let key = key.replace("~1", "/").replace("~0", "~");
    let removed = v
        .pointer_mut(parent)
        .unwrap()
        .as_object_mut()
        .unwrap()
        .remove(&key);
    assert!(removed.is_some(), "nothing at {pointer}");
}

fn own_condition(status: &str) -> Value {
    json!({"type": "WiresealEncrypted", "status": status, "reason": "PeersEncrypted"})
}

// ---------------------------------------------------------------------------
// The table.

#[derive(Debug)]
enum Expect {
    Allow,
    /// Denied by this policy, with a message containing this text.
    Deny(&'static str, &'static str),
}

struct Case {
    what: &'static str,
    user: UserInfo,
    operation: Operation,
    subresource: &'static str,
    old: Option<Value>,
    new: Option<Value>,
    expect: Expect,
}

fn update(
    what: &'static str,
    user: UserInfo,
    subresource: &'static str,
    old: Value,
    new: Value,
    expect: Expect,
) -> Case {
    Case {
        what,
        user,
        operation: Operation::Update,
        subresource,
        old: Some(old),
        new: Some(new),
        expect,
    }
}

fn evaluate(policies: &Policies, case: &Case) -> Result<(), Denial> {
    let name = case
        .new
        .as_ref()
        .or(case.old.as_ref())
        .and_then(|n| n["metadata"]["name"].as_str())
        .unwrap();
    policies.validate(&Request {
        operation: case.operation,
        group: "",
        version: "v1",
        kind: "Node",
        resource: "nodes",
        subresource: case.subresource,
        name,
        namespace: "",
        user: &case.user,
        object: case.new.as_ref(),
        old_object: case.old.as_ref(),
    })
}

const NOT_OWN_NODE: Expect = Expect::Deny(OWN_NODE, "only write the Node its token is bound to");
const ONLY_OWN_ANNOTATIONS: Expect = Expect::Deny(OWN_NODE, "may only change the annotations");
const METADATA: Expect = Expect::Deny(OWN_NODE, "labels, finalizers or owner references");
const SPEC: Expect = Expect::Deny(OWN_NODE, "remove its own wireseal.dev/agent-not-ready");
const STATUS: Expect = Expect::Deny(OWN_NODE, "WiresealEncrypted condition");
const ONLY_UPDATE: Expect = Expect::Deny(OWN_NODE, "never create or delete");
const ONLY_AGENT: Expect = Expect::Deny(WRITERS, "only the wireseal agent, on its own Node");
const ONLY_ADMINS: Expect = Expect::Deny(WRITERS, "only members of system:masters");

fn with_annotation(name: &str, key: &str, value: Option<&str>) -> Value {
    changed(name, |n| match value {
        Some(v) => n["metadata"]["annotations"][key] = json!(v),
        None => remove(
            n,
            &format!("/metadata/annotations/{}", key.replace('/', "~1")),
        ),
    })
}

#[allow(clippy::too_many_lines)]
fn agent_cases() -> Vec<Case> {
    let a = || agent(Some("node-a"));
    let new_key = |name| {
        with_annotation(
            name,
            KEY,
            Some("Ab3dKl0s2mW9uJxq0d1mVh6Y2cUeR8gT5nZpF4kLQmE="),
        )
    };
    let no_annotations = changed("node-a", |n| remove(n, "/metadata/annotations"));
    let only_own = changed("node-a", |n| {
        n["metadata"]["annotations"] =
            json!({KEY: "k", "wireseal.dev/endpoint": "e", "wireseal.dev/status": "s"});
    });
    let without_own_taint = changed("node-a", |n| {
        n["spec"]["taints"] =
            json!([{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]);
    });
    let with_condition = |status| {
        changed("node-a", |n| {
            n["status"]["conditions"]
                .as_array_mut()
                .unwrap()
                .push(own_condition(status));
        })
    };
    let announce = |name| {
        changed(name, |n| {
            n["metadata"]["annotations"][NEXT_KEY] =
                json!("Ab3dKl0s2mW9uJxq0d1mVh6Y2cUeR8gT5nZpF4kLQmE=");
            n["metadata"]["annotations"][SWITCH_AT] = json!("2026-12-03T14:02:00Z");
        })
    };
    vec![
        // A key rotation: the next key and switch time announced, then
        // withdrawn with the switch.
        update(
            "own node: a rotation announced",
            a(),
            "status",
            node("node-a"),
            announce("node-a"),
            Expect::Allow,
        ),
        update(
            "own node: the rotation's annotations removed at the switch",
            a(),
            "status",
            announce("node-a"),
            new_key("node-a"),
            Expect::Allow,
        ),
        update(
            "another node: a rotation announced for it",
            a(),
            "status",
            node("node-b"),
            announce("node-b"),
            NOT_OWN_NODE,
        ),
        // Its own Node, the way the agent publishes (merge patch on nodes/status).
        update(
            "own node: a new public key",
            a(),
            "status",
            node("node-a"),
            new_key("node-a"),
            Expect::Allow,
        ),
        update(
            "another node: a new public key",
            a(),
            "status",
            node("node-b"),
            new_key("node-b"),
            NOT_OWN_NODE,
        ),
        update(
            "own node, through the Node itself",
            a(),
            "",
            node("node-a"),
            new_key("node-a"),
            Expect::Allow,
        ),
        update(
            "another node, through the Node itself",
            a(),
            "",
            node("node-b"),
            new_key("node-b"),
            NOT_OWN_NODE,
        ),
        update(
            "a token without the node claim",
            agent(None),
            "status",
            node("node-a"),
            new_key("node-a"),
            NOT_OWN_NODE,
        ),
        update(
            "a token claiming two nodes",
            {
                let mut u = a();
                u.extra
                    .insert(NODE_CLAIM.into(), vec!["node-a".into(), "node-b".into()]);
                u
            },
            "status",
            node("node-a"),
            new_key("node-a"),
            NOT_OWN_NODE,
        ),
        update(
            "a token without any extra",
            {
                let mut u = a();
                u.extra.clear();
                u
            },
            "status",
            node("node-a"),
            new_key("node-a"),
            NOT_OWN_NODE,
        ),
        update(
            "first publication: no annotations before",
            a(),
            "status",
            no_annotations.clone(),
            only_own.clone(),
            Expect::Allow,
        ),
        update(
            "its annotations removed: none left",
            a(),
            "status",
            only_own,
            no_annotations.clone(),
            Expect::Allow,
        ),
        update(
            "nothing changes",
            a(),
            "status",
            node("node-a"),
            node("node-a"),
            Expect::Allow,
        ),
        update(
            "a foreign annotation changed",
            a(),
            "status",
            node("node-a"),
            with_annotation("node-a", "node.alpha.kubernetes.io/ttl", Some("30")),
            ONLY_OWN_ANNOTATIONS,
        ),
        update(
            "a foreign annotation removed",
            a(),
            "status",
            node("node-a"),
            with_annotation("node-a", "node.alpha.kubernetes.io/ttl", None),
            ONLY_OWN_ANNOTATIONS,
        ),
        update(
            "a foreign annotation added to a Node without any",
            a(),
            "status",
            no_annotations,
            changed("node-a", |n| {
                n["metadata"]["annotations"] = json!({"example.com/x": "y"})
            }),
            ONLY_OWN_ANNOTATIONS,
        ),
        update(
            "the pod-cidrs override set by the agent",
            a(),
            "status",
            node("node-a"),
            with_annotation("node-a", "wireseal.dev/pod-cidrs", Some("0.0.0.0/0")),
            ONLY_OWN_ANNOTATIONS,
        ),
        update(
            "a label changed",
            a(),
            "",
            node("node-a"),
            changed("node-a", |n| {
                n["metadata"]["labels"]["node-role.kubernetes.io/ingress"] = json!("")
            }),
            METADATA,
        ),
        update(
            "a finalizer added",
            a(),
            "",
            node("node-a"),
            changed("node-a", |n| {
                n["metadata"]["finalizers"] = json!(["example.com/hold"])
            }),
            METADATA,
        ),
        update(
            "an owner reference added (garbage collection would delete the Node)",
            a(),
            "",
            node("node-a"),
            changed("node-a", |n| {
                n["metadata"]["ownerReferences"] =
                    json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "1"}]);
            }),
            METADATA,
        ),
        // spec: only its own taint's removal.
        update(
            "its not-ready taint removed",
            a(),
            "",
            node("node-a"),
            without_own_taint.clone(),
            Expect::Allow,
        ),
        update(
            "its not-ready taint removed from another node",
            a(),
            "",
            node("node-b"),
            changed("node-b", |n| {
                n["spec"]["taints"] = without_own_taint["spec"]["taints"].clone()
            }),
            NOT_OWN_NODE,
        ),
        update(
            "its taint, the last one, removed: no taints left",
            a(),
            "",
            changed("node-a", |n| {
                n["spec"]["taints"] = json!([{"key": TAINT, "effect": "NoSchedule"}])
            }),
            changed("node-a", |n| remove(n, "/spec/taints")),
            Expect::Allow,
        ),
        update(
            "no taints before or after",
            a(),
            "",
            changed("node-a", |n| remove(n, "/spec/taints")),
            changed("node-a", |n| remove(n, "/spec/taints")),
            Expect::Allow,
        ),
        update(
            "its not-ready taint added back",
            a(),
            "",
            without_own_taint.clone(),
            node("node-a"),
            SPEC,
        ),
        update(
            "another taint removed",
            a(),
            "",
            node("node-a"),
            changed("node-a", |n| {
                n["spec"]["taints"] = json!([{"key": TAINT, "effect": "NoSchedule"}])
            }),
            SPEC,
        ),
        update(
            "its taint key with another effect removed",
            a(),
            "",
            changed("node-a", |n| {
                n["spec"]["taints"] = json!([{"key": TAINT, "effect": "NoExecute"}]);
            }),
            changed("node-a", |n| n["spec"]["taints"] = json!([])),
            SPEC,
        ),
        update(
            "a taint added",
            a(),
            "",
            without_own_taint.clone(),
            changed("node-a", |n| {
                n["spec"]["taints"] = json!([
                    {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"},
                    {"key": "evil", "effect": "NoExecute"},
                ]);
            }),
            SPEC,
        ),
        update(
            "cordoned",
            a(),
            "",
            node("node-a"),
            changed("node-a", |n| n["spec"]["unschedulable"] = json!(true)),
            SPEC,
        ),
        update(
            "its taint removed and cordoned at once",
            a(),
            "",
            node("node-a"),
            changed("node-a", |n| {
                n["spec"]["taints"] = without_own_taint["spec"]["taints"].clone();
                n["spec"]["unschedulable"] = json!(true);
            }),
            SPEC,
        ),
        update(
            "pod CIDRs changed",
            a(),
            "",
            node("node-a"),
            changed("node-a", |n| {
                n["spec"]["podCIDRs"] = json!(["10.244.0.0/24", "0.0.0.0/0"])
            }),
            SPEC,
        ),
        update(
            "provider ID set where there was none",
            a(),
            "",
            changed("node-a", |n| remove(n, "/spec/providerID")),
            node("node-a"),
            SPEC,
        ),
        // status: only its own condition.
        update(
            "its condition added",
            a(),
            "status",
            node("node-a"),
            with_condition("True"),
            Expect::Allow,
        ),
        update(
            "its condition changed",
            a(),
            "status",
            with_condition("True"),
            with_condition("False"),
            Expect::Allow,
        ),
        update(
            "its condition added to a Node without conditions",
            a(),
            "status",
            changed("node-a", |n| remove(n, "/status/conditions")),
            changed("node-a", |n| {
                n["status"]["conditions"] = json!([own_condition("True")])
            }),
            Expect::Allow,
        ),
        update(
            "its condition added twice",
            a(),
            "status",
            node("node-a"),
            changed("node-a", |n| {
                let c = n["status"]["conditions"].as_array_mut().unwrap();
                c.push(own_condition("True"));
                c.push(own_condition("False"));
            }),
            STATUS,
        ),
        update(
            "its condition on another node",
            a(),
            "status",
            node("node-b"),
            changed("node-b", |n| {
                n["status"]["conditions"]
                    .as_array_mut()
                    .unwrap()
                    .push(own_condition("True"));
            }),
            NOT_OWN_NODE,
        ),
        update(
            "the Ready condition changed",
            a(),
            "status",
            node("node-a"),
            changed("node-a", |n| {
                n["status"]["conditions"][0]["status"] = json!("False")
            }),
            STATUS,
        ),
        update(
            "status.addresses changed (peers would send to the new address)",
            a(),
            "status",
            node("node-a"),
            changed("node-a", |n| {
                n["status"]["addresses"][0]["address"] = json!("203.0.113.66")
            }),
            STATUS,
        ),
        update(
            "capacity changed",
            a(),
            "status",
            node("node-a"),
            changed("node-a", |n| {
                n["status"]["capacity"]["pods"] = json!("1000")
            }),
            STATUS,
        ),
        update(
            "node info removed",
            a(),
            "status",
            node("node-a"),
            changed("node-a", |n| remove(n, "/status/nodeInfo")),
            STATUS,
        ),
        // Creating and deleting Nodes.
        Case {
            what: "creates its own Node",
            user: a(),
            operation: Operation::Create,
            subresource: "",
            old: None,
            new: Some(node("node-a")),
            expect: ONLY_UPDATE,
        },
        Case {
            what: "deletes its own Node",
            user: a(),
            operation: Operation::Delete,
            subresource: "",
            old: Some(node("node-a")),
            new: None,
            expect: ONLY_UPDATE,
        },
    ]
}

fn others_cases() -> Vec<Case> {
    let cidrs = |value| with_annotation("node-a", "wireseal.dev/pod-cidrs", value);
    let heartbeat = changed("node-a", |n| {
        n["status"]["conditions"][0]["lastHeartbeatTime"] = json!("2026-12-03T10:00:00Z");
    });
    let kubelet_key = with_annotation(
        "node-a",
        KEY,
        Some("Ab3dKl0s2mW9uJxq0d1mVh6Y2cUeR8gT5nZpF4kLQmE="),
    );
    let plain = changed("node-a", |n| remove(n, "/metadata/annotations"));
    vec![
        update(
            "the kubelet's heartbeat",
            kubelet("node-a"),
            "status",
            node("node-a"),
            heartbeat,
            Expect::Allow,
        ),
        update(
            "the kubelet rewrites its Node's public key",
            kubelet("node-a"),
            "status",
            node("node-a"),
            kubelet_key.clone(),
            ONLY_AGENT,
        ),
        update(
            "own node: an IPsec rekey publishes the next epoch",
            agent(Some("node-a")),
            "status",
            with_annotation("node-a", EPOCH, Some("4")),
            with_annotation("node-a", EPOCH, Some("5")),
            Expect::Allow,
        ),
        update(
            "another node's IPsec epoch moved",
            agent(Some("node-a")),
            "status",
            with_annotation("node-b", EPOCH, Some("4")),
            with_annotation("node-b", EPOCH, Some("5")),
            NOT_OWN_NODE,
        ),
        update(
            "the kubelet moves its Node's IPsec epoch",
            kubelet("node-a"),
            "status",
            node("node-a"),
            with_annotation("node-a", EPOCH, Some("9")),
            ONLY_AGENT,
        ),
        update(
            "the kubelet announces a next key for its Node",
            kubelet("node-a"),
            "status",
            node("node-a"),
            with_annotation(
                "node-a",
                NEXT_KEY,
                Some("Ab3dKl0s2mW9uJxq0d1mVh6Y2cUeR8gT5nZpF4kLQmE="),
            ),
            ONLY_AGENT,
        ),
        update(
            "an admin moves a node's switch time",
            admin(),
            "",
            node("node-a"),
            with_annotation("node-a", SWITCH_AT, Some("2030-01-01T00:00:00Z")),
            ONLY_AGENT,
        ),
        update(
            "the kubelet removes its Node's endpoint",
            kubelet("node-a"),
            "",
            node("node-a"),
            with_annotation("node-a", "wireseal.dev/endpoint", None),
            ONLY_AGENT,
        ),
        Case {
            what: "the kubelet registers its Node",
            user: kubelet("node-a"),
            operation: Operation::Create,
            subresource: "",
            old: None,
            new: Some(plain.clone()),
            expect: Expect::Allow,
        },
        Case {
            what: "the kubelet registers its Node with a public key",
            user: kubelet("node-a"),
            operation: Operation::Create,
            subresource: "",
            old: None,
            new: Some(node("node-a")),
            expect: ONLY_AGENT,
        },
        update(
            "another ServiceAccount of wireseal's namespace",
            user(
                "system:serviceaccount:wireseal:wireseal-cleanup",
                &["system:serviceaccounts", "system:serviceaccounts:wireseal"],
            ),
            "status",
            node("node-a"),
            kubelet_key.clone(),
            ONLY_AGENT,
        ),
        update(
            "an admin sets the pod-cidrs override",
            admin(),
            "",
            node("node-a"),
            cidrs(Some("10.8.0.0/16")),
            Expect::Allow,
        ),
        update(
            "an admin removes it",
            admin(),
            "",
            cidrs(Some("10.8.0.0/16")),
            node("node-a"),
            Expect::Allow,
        ),
        update(
            "an admin sets it on a Node without annotations",
            admin(),
            "",
            plain,
            changed("node-a", |n| {
                n["metadata"]["annotations"] = json!({"wireseal.dev/pod-cidrs": "10.8.0.0/16"})
            }),
            Expect::Allow,
        ),
        update(
            "an admin rewrites a public key",
            admin(),
            "",
            node("node-a"),
            kubelet_key,
            ONLY_AGENT,
        ),
        update(
            "a controller sets the pod-cidrs override",
            user(
                "system:serviceaccount:kube-system:node-controller",
                &[
                    "system:serviceaccounts",
                    "system:serviceaccounts:kube-system",
                ],
            ),
            "",
            node("node-a"),
            cidrs(Some("10.8.0.0/16")),
            ONLY_ADMINS,
        ),
        update(
            "the kubelet removes the override",
            kubelet("node-a"),
            "",
            cidrs(Some("10.8.0.0/16")),
            node("node-a"),
            ONLY_ADMINS,
        ),
        update(
            "a user without groups changes it",
            user("mallory", &[]),
            "",
            cidrs(Some("10.8.0.0/16")),
            cidrs(Some("0.0.0.0/0")),
            ONLY_ADMINS,
        ),
        update(
            "a user changes other annotations and labels",
            user("alice", &["system:authenticated"]),
            "",
            node("node-a"),
            changed("node-a", |n| {
                n["metadata"]["annotations"]["example.com/owner"] = json!("alice");
                n["metadata"]["labels"]["tier"] = json!("edge");
            }),
            Expect::Allow,
        ),
    ]
}

fn check(policies: &Policies, cases: &[Case]) {
    let mut failures = Vec::new();
    for case in cases {
        if matches!(case.expect, Expect::Deny(..)) && case.operation == Operation::Update {
            assert_ne!(
                case.old, case.new,
                "{}: a denial of no change proves nothing",
                case.what
            );
        }
        let result = evaluate(policies, case);
        let ok = match (&case.expect, &result) {
            (Expect::Allow, Ok(())) => true,
            (Expect::Deny(policy, text), Err(denial)) => {
                !denial.error
                    && denial.policy == *policy
                    && denial.binding == *policy
                    && denial.message.contains(text)
                    && (denial.code, denial.reason) == (403, "Forbidden")
            }
            _ => false,
        };
        if !ok {
            failures.push(format!(
                "{}: expected {:?}, got {result:?}",
                case.what, case.expect
            ));
        }
        // Without the policies, every one of these requests would pass.
        assert!(evaluate(&Policies::default(), case).is_ok());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_agent_may_write_only_its_own_node_and_only_its_fields() {
    let cases = agent_cases();
    assert!(
        cases
            .iter()
            .filter(|c| matches!(c.expect, Expect::Allow))
            .count()
            >= 10
    );
    check(&shipped(), &cases);
}

#[test]
fn nobody_else_may_change_wireseal_annotations_and_admins_may_set_pod_cidrs() {
    check(&shipped(), &others_cases());
}

#[test]
fn the_policies_match_the_agents_service_account_exactly() {
    // The username in both matchConditions is the RBAC's ServiceAccount and
    // the DaemonSet's, so renaming one without the other fails here.
    let docs = documents();
    let account = find(&docs, "ServiceAccount");
    let username = format!(
        "'system:serviceaccount:{}:{}'",
        account["metadata"]["namespace"].as_str().unwrap(),
        account["metadata"]["name"].as_str().unwrap()
    );
    let ds = daemonset(&docs, "wireseal");
    assert_eq!(
        pod_spec(ds)["serviceAccountName"],
        account["metadata"]["name"]
    );
    let policies: Vec<&serde_yaml::Value> = docs
        .iter()
        .filter(|d| d["kind"] == "ValidatingAdmissionPolicy")
        .collect();
    assert_eq!(policies.len(), 2);
    for policy in &policies {
        let conditions = seq(&policy["spec"]["matchConditions"]);
        assert_eq!(conditions.len(), 1);
        let expression = conditions[0]["expression"].as_str().unwrap();
        assert_eq!(expression.matches(&username).count(), 1, "{expression}");
        assert_eq!(policy["spec"]["failurePolicy"], "Fail", "never fail open");
        // Nodes and every subresource, in every version.
        let rules = seq(&policy["spec"]["matchConstraints"]["resourceRules"]);
        assert_eq!(rules.len(), 1);
        assert_eq!(strings(&rules[0]["resources"]), ["nodes", "nodes/*"]);
        assert_eq!(strings(&rules[0]["apiVersions"]), ["*"]);
        // Each policy has its binding, which denies.
        let name = &policy["metadata"]["name"];
        let binding = docs
            .iter()
            .find(|d| {
                d["kind"] == "ValidatingAdmissionPolicyBinding" && d["spec"]["policyName"] == *name
            })
            .unwrap_or_else(|| panic!("no binding for {name:?}"));
        assert_eq!(strings(&binding["spec"]["validationActions"]), ["Deny"]);
        assert!(binding["spec"].get("matchResources").is_none());
    }
    // A Node write by the same ServiceAccount name in another namespace is
    // not the agent's: the other policy applies to it.
    let mut stranger = agent(Some("node-a"));
    stranger.username = "system:serviceaccount:default:wireseal".into();
    let case = update(
        "stranger",
        stranger,
        "status",
        node("node-a"),
        with_annotation("node-a", KEY, Some("x")),
        ONLY_AGENT,
    );
    check(&shipped(), &[case]);
}

#[test]
fn admission_policies_pass_strict_schema_validation_at_the_version_floor() {
    // 1.37 is validated with every manifest in deploy_manifests.rs.
    validate_strict(
        Some("1.30.0"),
        &[deploy_dir().join("kubernetes/30-admission.yaml")],
    );
}

// ---------------------------------------------------------------------------
// The expressions against the Node schema.

/// The property names of one object schema kubernetes-validate ships, e.g.
/// ("1.30.0", "nodespec-v1").
fn schema_fields(version: &str, schema: &str) -> BTreeSet<String> {
    static PACKAGE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let package = PACKAGE.get_or_init(|| {
        // The Python that kubernetes-validate runs with: .ci/install puts it
        // in a virtual environment, linked from PATH, beside its python3.
        let validate = std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|dir| dir.join("kubernetes-validate"))
            .find(|path| path.exists())
            .expect("kubernetes-validate on PATH (see .ci/install)");
        let python = std::fs::canonicalize(&validate)
            .unwrap()
            .with_file_name("python3");
        let output = Command::new(python)
            .args([
                "-c",
                "import kubernetes_validate, os; print(os.path.dirname(kubernetes_validate.__file__))",
            ])
            .output()
            .expect("python3 with kubernetes-validate (see .ci/install)");
        assert!(output.status.success());
        PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
    });
    let dir = package.join(format!("kubernetes-json-schema/v{version}-local-strict"));
    let text = std::fs::read_to_string(dir.join(format!("{schema}.json"))).unwrap();
    let schema: Value = serde_json::from_str(&text).unwrap();
    schema["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

/// Every `object.<part>.<field>` and `oldObject.<part>.<field>` an expression
/// of the policies names, as (part, field).
fn named_fields(text: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for root in ["object.", "oldObject."] {
        for (at, _) in text.match_indices(root) {
            // "oldObject." also ends in "Object.", never in "object.".
            if at > 0 && text.as_bytes()[at - 1].is_ascii_alphanumeric() {
                continue;
            }
            let path: Vec<&str> = text[at + root.len()..]
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '.'))
                .next()
                .unwrap()
                .split('.')
                .collect();
            if let [part, field, ..] = path.as_slice() {
                out.insert(((*part).to_owned(), (*field).to_owned()));
            }
        }
    }
    out
}

#[test]
fn the_expressions_name_only_and_all_node_fields_of_kubernetes_1_30() {
    // A field the cluster's schema lacks would not compile there, and a policy
    // that does not compile denies every agent write: only 1.30's fields.
    let floor = "1.30.0";
    let text = policy_text();
    let named = named_fields(&text);
    let schemas = [
        ("metadata", "objectmeta-meta-v1"),
        ("spec", "nodespec-v1"),
        ("status", "nodestatus-v1"),
    ];
    for (part, field) in &named {
        let schema = schemas
            .iter()
            .find(|(p, _)| p == part)
            .unwrap_or_else(|| panic!("object.{part} is not part of a Node"))
            .1;
        assert!(
            schema_fields(floor, schema).contains(field),
            "object.{part}.{field} is not in Kubernetes {floor}'s schema"
        );
    }
    // The agent's policy compares every field of spec and status, and every
    // field of metadata a client can change.
    let server_managed = [
        "creationTimestamp",
        "deletionGracePeriodSeconds",
        "deletionTimestamp",
        "generateName",
        "generation",
        "managedFields",
        "namespace",
        "resourceVersion",
        "selfLink",
        "uid",
    ];
    for (part, schema) in schemas {
        let mut covered: BTreeSet<String> = named
            .iter()
            .filter(|(p, _)| p == part)
            .map(|(_, f)| f.clone())
            .collect();
        if part == "metadata" {
            covered.extend(server_managed.iter().map(|f| (*f).to_owned()));
        }
        assert_eq!(covered, schema_fields(floor, schema), "object.{part}");
    }
    // Fields later versions added are not compared; deploy/README.md names them.
    let readme = std::fs::read_to_string(deploy_dir().join("README.md")).unwrap();
    for (part, schema) in &schemas[1..] {
        let newer: Vec<String> = schema_fields("1.37.0", schema)
            .difference(&schema_fields(floor, schema))
            .map(|f| format!("{part}.{f}"))
            .collect();
        for field in newer {
            assert!(
                readme.contains(&format!("`{field}`")),
                "deploy/README.md must name {field}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// The chart.

/// The chart's template as helm would render it with the default values and
/// release `wireseal` in namespace `wireseal`, for the template actions it
/// uses (any other action fails the test).
fn rendered_chart_policies() -> Vec<Value> {
    let dir = deploy_dir().join("helm/wireseal");
    let values: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("values.yaml")).unwrap()).unwrap();
    assert_eq!(values["admission"]["enabled"], true);
    let groups: Vec<String> = values["admission"]["podCidrsGroups"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|g| g.as_str().unwrap().to_owned())
        .collect();
    let template = std::fs::read_to_string(dir.join("templates/admission.yaml")).unwrap();
    let groups_json = serde_json::to_string(&groups).unwrap();
    let groups_text = groups.join(", ");
    render_template(
        &template,
        |line| {
            let trimmed = line.trim();
            // The `if`/`end` around the file, and the release labels (stripped below).
            let skipped = trimmed == "{{- if .Values.admission.enabled }}"
                || trimmed == "{{- end }}"
                || trimmed == "{{- include \"wireseal.labels\" . | nindent 4 }}";
            (!skipped).then(|| line.to_owned())
        },
        &[
            // toJson: a JSON list of strings is a CEL list of strings.
            (
                "{{ .Values.admission.podCidrsGroups | toJson }}",
                &groups_json,
            ),
            (
                "{{ join \", \" .Values.admission.podCidrsGroups }}",
                &groups_text,
            ),
        ],
    )
}

fn without_labels(mut doc: Value) -> Value {
    doc["metadata"].as_object_mut().unwrap().remove("labels");
    doc
}

#[test]
fn the_chart_renders_the_same_policies() {
    let chart: Vec<Value> = rendered_chart_policies()
        .into_iter()
        .map(without_labels)
        .collect();
    let plain: Vec<Value> = serde_yaml::Deserializer::from_str(&policy_text())
        .map(|doc| {
            use serde::Deserialize as _;
            Value::deserialize(doc).unwrap()
        })
        .filter(|doc| !doc.is_null())
        .map(without_labels)
        .collect();
    assert_eq!(plain.len(), 4);
    assert_eq!(chart, plain);
    // And the rendered text loads in the evaluator as it is.
    let text = serde_json::to_string(&chart).unwrap();
    let mut policies = Policies::default();
    for doc in serde_json::from_str::<Vec<Value>>(&text).unwrap() {
        policies.add(&serde_json::to_string(&doc).unwrap()).unwrap();
    }
    check(&policies, &agent_cases()[..3]);
}

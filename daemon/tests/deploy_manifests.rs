//! The manifests in deploy/ are valid Kubernetes objects (checked offline
//! against the published schemas) and grant the agent exactly what it uses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use serde::Deserialize;
use serde_yaml::Value;

fn manifests() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", dir.display());
    files
}

fn documents() -> Vec<Value> {
    manifests()
        .iter()
        .flat_map(|path| {
            let text = std::fs::read_to_string(path).unwrap();
            serde_yaml::Deserializer::from_str(&text)
                .map(|doc| Value::deserialize(doc).unwrap())
                .filter(|doc| !doc.is_null())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn manifests_pass_strict_schema_validation() {
    let output = Command::new("kubernetes-validate")
        .arg("--strict")
        .args(manifests())
        .output()
        .expect("kubernetes-validate is required: python3 -m pip install kubernetes-validate==1.37.0 (see .ci/install)");
    assert!(
        output.status.success(),
        "kubernetes-validate --strict failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in deploy/"))
}

#[test]
fn rbac_grants_exactly_what_the_agent_uses() {
    let docs = documents();
    let role = find(&docs, "ClusterRole");
    let mut grants: Vec<String> = Vec::new();
    for rule in role["rules"].as_sequence().unwrap() {
        for group in rule["apiGroups"].as_sequence().unwrap() {
            for resource in rule["resources"].as_sequence().unwrap() {
                for verb in rule["verbs"].as_sequence().unwrap() {
                    grants.push(format!(
                        "{}/{}:{}",
                        group.as_str().unwrap(),
                        resource.as_str().unwrap(),
                        verb.as_str().unwrap()
                    ));
                }
            }
        }
    }
    grants.sort();
    assert_eq!(
        grants,
        [
            "/nodes/status:patch",
            "/nodes:get",
            "/nodes:list",
            "/nodes:watch",
            "events.k8s.io/events:create",
            "events.k8s.io/events:patch",
        ],
        "the agent needs no more (and the agent_k8s test checks it uses no more)"
    );

    let account = find(&docs, "ServiceAccount");
    let binding = find(&docs, "ClusterRoleBinding");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    let subject = &binding["subjects"][0];
    assert_eq!(subject["kind"], "ServiceAccount");
    assert_eq!(subject["name"], account["metadata"]["name"]);
    assert_eq!(subject["namespace"], account["metadata"]["namespace"]);
}

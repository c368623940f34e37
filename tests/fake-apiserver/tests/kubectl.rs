//! The real kubectl against the fake: keeps the fake's wire formats honest
//! (discovery, Table, merge patches, watch framing, describe's extra reads).
//! kubectl must be on PATH; without it these tests fail, they never skip.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{bounded, eventually, two_nodes};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use wireseal_fake_apiserver::Handle;

const KUBECTL_TIMEOUT: Duration = Duration::from_secs(40);

fn kubectl_path() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("kubectl"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("kubectl is not on PATH: the kubectl compatibility tests need the real kubectl (it is on the machine image)")
        })
}

/// A kubeconfig and a fresh discovery cache for one server.
struct Kubectl {
    dir: tempfile::TempDir,
}

impl Kubectl {
    fn new(h: &Handle) -> Self {
        let dir = tempfile::tempdir().unwrap();
        h.write_kubeconfig(&dir.path().join("kubeconfig")).unwrap();
        Self { dir }
    }

    fn from_kubeconfig(path: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(path, dir.path().join("kubeconfig")).unwrap();
        Self { dir }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(kubectl_path());
        cmd.arg("--kubeconfig")
            .arg(self.dir.path().join("kubeconfig"))
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .args(args)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// Runs kubectl to completion (bounded); returns (success, stdout, stderr).
    async fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = tokio::time::timeout(KUBECTL_TIMEOUT, self.command(args).output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} took longer than {KUBECTL_TIMEOUT:?}"))
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    async fn ok(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.run(args).await;
        assert!(
            ok,
            "kubectl {args:?} failed:\nstdout: {stdout}\nstderr: {stderr}"
        );
        stdout
    }
}

fn columns(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// Starts the binary on a free port with its kubeconfig in `dir` and `args`;
/// returns it, the kubeconfig and the address of its first stdout line.
async fn binary(dir: &Path, args: &[&std::ffi::OsStr]) -> (tokio::process::Child, PathBuf, String) {
    let kubeconfig = dir.join("kubeconfig");
    let mut child = Command::new(env!("CARGO_BIN_EXE_fake-apiserver"))
        .args(["--listen", "127.0.0.1:0", "--kubeconfig-out"])
        .arg(&kubeconfig)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(KUBECTL_TIMEOUT, out.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let addr = first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
    (child, kubeconfig, addr.to_owned())
}

#[tokio::test]
async fn get_nodes_prints_real_columns() {
    bounded(async {
        let (h, _c) = two_nodes().await;
        let k = Kubectl::new(&h);
        let out = k.ok(&["get", "nodes"]).await;
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            columns(lines[0]),
            ["NAME", "STATUS", "ROLES", "AGE", "VERSION"],
            "{out}"
        );
        assert_eq!(lines.len(), 3, "{out}");
        assert_eq!(
            &columns(lines[1])[..3],
            ["node-a", "Ready", "<none>"],
            "{out}"
        );
        assert_eq!(columns(lines[2])[0], "node-b", "{out}");
        // Table requested by kubectl's Accept header, not a bare NodeList.
        assert!(
            h.access_log()
                .iter()
                .any(|e| e.path.starts_with("/api/v1/nodes?limit="))
        );

        let wide = k
            .ok(&["get", "nodes", "-o", "wide", "-l", "role=edge"])
            .await;
        assert!(
            wide.lines().next().unwrap().contains("INTERNAL-IP"),
            "{wide}"
        );
        assert!(
            wide.contains("192.0.2.10") && !wide.contains("node-b"),
            "{wide}"
        );

        let json: Value =
            serde_json::from_str(&k.ok(&["get", "node", "node-a", "-o", "json"]).await).unwrap();
        assert_eq!(json["kind"], "Node");
        assert_eq!(json["metadata"]["name"], "node-a");
        assert_eq!(json["spec"]["podCIDR"], "10.244.0.0/24");
        let stored_rv = h
            .state()
            .get_node("node-a")
            .unwrap()
            .metadata
            .resource_version
            .unwrap();
        assert_eq!(json["metadata"]["resourceVersion"], stored_rv);
    })
    .await;
}

#[tokio::test]
async fn annotate_and_label_write_through() {
    bounded(async {
        let (h, _c) = two_nodes().await;
        let k = Kubectl::new(&h);
        k.ok(&[
            "annotate",
            "node",
            "node-a",
            "wireseal.dev/public-key=abc",
            "--overwrite",
        ])
        .await;
        k.ok(&[
            "annotate",
            "node",
            "node-a",
            "wireseal.dev/public-key=def",
            "--overwrite",
        ])
        .await;
        let node = h.state().get_node("node-a").unwrap();
        assert_eq!(node.annotations()["wireseal.dev/public-key"], "def");
        let read_back = k
            .ok(&[
                "get",
                "node",
                "node-a",
                "-o",
                "jsonpath={.metadata.annotations}",
            ])
            .await;
        assert!(
            read_back.contains("\"wireseal.dev/public-key\":\"def\""),
            "{read_back}"
        );

        k.ok(&["label", "node", "node-b", "color=blue"]).await;
        assert_eq!(
            h.state().get_node("node-b").unwrap().labels()["color"],
            "blue"
        );
        let listed = k
            .ok(&["get", "nodes", "-l", "color=blue", "-o", "name"])
            .await;
        assert_eq!(listed.trim(), "node/node-b");

        // A stale --resource-version surfaces the fake's 409.
        let (ok, _, stderr) = k
            .run(&[
                "annotate",
                "node",
                "node-a",
                "x=y",
                "--resource-version=101",
            ])
            .await;
        assert!(!ok && stderr.contains("Conflict"), "{stderr}");
        assert!(
            h.access_log()
                .iter()
                .any(|e| e.method == "PATCH" && e.status == 409)
        );
    })
    .await;
}

#[tokio::test]
async fn get_watch_shows_changes_from_another_client() {
    bounded(async {
        let (h, c) = two_nodes().await;
        let k = Kubectl::new(&h);
        let mut child = k
            .command(&["get", "nodes", "-w", "--show-labels"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = lines.clone();
        let stdout = child.stdout.take().unwrap();
        let reader = tokio::spawn(async move {
            let mut r = BufReader::new(stdout).lines();
            while let Ok(Some(l)) = r.next_line().await {
                sink.lock().unwrap().push(l);
            }
        });
        let seen = |needle: &'static str| {
            let lines = lines.clone();
            move || lines.lock().unwrap().iter().any(|l| l.contains(needle))
        };
        eventually("initial rows", KUBECTL_TIMEOUT, seen("node-b")).await;
        eventually("kubectl watching", KUBECTL_TIMEOUT, || {
            h.faults().open_watches() >= 1
        })
        .await;

        let nodes: Api<Node> = Api::all(c);
        let patch = json!({"metadata": {"labels": {"wireseal.dev/seen": "yes"}}});
        nodes
            .patch("node-b", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        eventually(
            "kubectl prints the change",
            KUBECTL_TIMEOUT,
            seen("wireseal.dev/seen=yes"),
        )
        .await;
        let changed: Vec<String> = lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("wireseal.dev/seen=yes"))
            .cloned()
            .collect();
        assert!(
            changed.iter().all(|l| l.starts_with("node-b")),
            "{changed:?}"
        );
        child.start_kill().unwrap();
        let _ = child.wait().await;
        reader.abort();
    })
    .await;
}

#[tokio::test]
async fn describe_node_shows_annotation_podcidr_and_events() {
    bounded(async {
        let (h, c) = two_nodes().await;
        let k = Kubectl::new(&h);
        k.ok(&[
            "annotate",
            "node",
            "node-a",
            "wireseal.dev/public-key=describe-me",
        ])
        .await;
        let node = Api::<Node>::all(c.clone()).get("node-a").await.unwrap();
        let recorder = Recorder::new(
            c,
            Reporter {
                controller: "wireseal-agent".into(),
                instance: None,
            },
        );
        let ev = Event {
            type_: EventType::Warning,
            reason: "BadPeerAnnotation".into(),
            note: Some("peer node-b has no public key".into()),
            action: "Reconcile".into(),
            secondary: None,
        };
        recorder.publish(&ev, &node.object_ref(&())).await.unwrap();

        let out = k.ok(&["describe", "node", "node-a"]).await;
        assert!(
            out.contains("wireseal.dev/public-key: describe-me"),
            "{out}"
        );
        assert!(
            out.lines()
                .any(|l| l.starts_with("PodCIDR:") && l.contains("10.244.0.0/24")),
            "{out}"
        );
        let events = out.split("Events:").nth(1).unwrap_or_default();
        assert!(events.contains("BadPeerAnnotation"), "{out}");
        assert!(events.contains("peer node-b has no public key"), "{out}");
        assert!(events.contains("wireseal-agent"), "{out}");
        assert!(
            h.access_log()
                .iter()
                .any(|e| e.path.starts_with("/api/v1/events?")
                    && e.path.contains("involvedObject.name")),
            "describe reads events through core/v1"
        );
    })
    .await;
}

/// The binary, driven as the e2e harness and the demo drive it: stdout
/// contract, --nodes, --kubeconfig-out, and the admin endpoints.
#[tokio::test]
async fn binary_with_nodes_file_kubeconfig_and_admin_endpoints() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let nodes_file = dir.path().join("nodes.yaml");
        std::fs::write(
            &nodes_file,
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: demo-1\nspec:\n  podCIDR: 10.1.0.0/24\n---\n\
             {\"kind\":\"NodeList\",\"apiVersion\":\"v1\",\"items\":[{\"metadata\":{\"name\":\"demo-2\"}}]}\n",
        )
        .unwrap();
        let (mut child, kubeconfig, addr) =
            binary(dir.path(), &["--nodes".as_ref(), nodes_file.as_ref()]).await;
        let url = format!("http://{addr}");
        assert!(std::fs::read_to_string(&kubeconfig).unwrap().contains(&url));

        let k = Kubectl::from_kubeconfig(&kubeconfig);
        let names = k.ok(&["get", "nodes", "-o", "name"]).await;
        assert_eq!(names.lines().collect::<Vec<_>>(), ["node/demo-1", "node/demo-2"]);

        // The agent's way in: a kube-rs client from the written kubeconfig.
        let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
        let client = kube::Client::try_from(cfg).unwrap();
        let admin = |method: &str, path: &str| {
            http::Request::builder().method(method).uri(path.to_owned()).body(Vec::new()).unwrap()
        };
        let r: Value =
            client.request(admin("POST", "/__fake/fail?code=500&count=1&method=GET&path=/api/v1/nodes")).await.unwrap();
        assert_eq!(r["status"]["pendingFailures"][0]["code"], 500);
        let (ok, _, stderr) = k.run(&["get", "nodes"]).await;
        assert!(!ok && stderr.contains("InternalError"), "{stderr}");
        k.ok(&["get", "nodes"]).await;
        let status: Value = client.request(admin("GET", "/__fake/status")).await.unwrap();
        assert_eq!(status["pendingFailures"], json!([]));
        let log: Value = client.request(admin("GET", "/__fake/log")).await.unwrap();
        assert!(log.as_array().unwrap().iter().any(|e| e["status"] == 500));
        let _: Value = client.request(admin("POST", "/__fake/refuse?seconds=1")).await.unwrap();
        let bad = client.request::<Value>(admin("POST", "/__fake/nope")).await.unwrap_err();
        assert!(matches!(bad, kube::Error::Api(ref s) if s.code == 404), "{bad:?}");
        // The outage ends by itself after a second; the same port answers again.
        let nodes: Api<Node> = Api::all(client);
        let deadline = tokio::time::Instant::now() + KUBECTL_TIMEOUT;
        let mut saw_outage = false;
        loop {
            match nodes.get("demo-1").await {
                Ok(_) if saw_outage => break,
                Ok(_) => {}
                Err(_) => saw_outage = true,
            }
            assert!(tokio::time::Instant::now() < deadline, "outage never began or never ended");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        child.start_kill().unwrap();
        let _ = child.wait().await;
    })
    .await;
}

/// Denies the anonymous user (what kubectl is to the fake, below) node-b.
const ANONYMOUS_POLICY: &str = "
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: not-node-b}
spec:
  matchConstraints:
    resourceRules:
      - {apiGroups: [''], apiVersions: [v1], operations: [UPDATE], resources: [nodes]}
  matchConditions:
    - {name: anonymous, expression: \"request.userInfo.username == 'system:anonymous'\"}
  validations:
    - {expression: \"object.metadata.name != 'node-b'\", reason: Forbidden, message: node-b is not yours}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: not-node-b}
spec: {policyName: not-node-b, validationActions: [Deny]}
";

#[tokio::test]
async fn binary_with_policies_and_tokens_as_kubectl_sees_them() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let nodes = file("nodes.yaml", "metadata: {name: node-a}\n---\nmetadata: {name: node-b}\n");
        let policy = file("policy.yaml", ANONYMOUS_POLICY);
        let (_server, kubeconfig, _) = binary(
            dir.path(),
            &["--nodes".as_ref(), nodes.as_ref(), "--admission-policy".as_ref(), policy.as_ref()],
        )
        .await;
        let k = Kubectl::from_kubeconfig(&kubeconfig);
        k.ok(&["annotate", "node", "node-a", "example.com/x=1"]).await;
        let (ok, _, stderr) = k.run(&["annotate", "node", "node-b", "example.com/x=1"]).await;
        assert!(!ok, "node-b must be refused");
        assert!(
            stderr.contains(
                "nodes \"node-b\" is forbidden: ValidatingAdmissionPolicy 'not-node-b' with binding \
                 'not-node-b' denied request: node-b is not yours"
            ),
            "{stderr}"
        );

        // With a tokens file every request needs a token, and kubectl (like
        // client-go) sends none over plain HTTP: it is told to log in. The
        // agent's kube-rs does send it (admission.rs).
        let tokens = file("tokens.yaml", common::TOKENS);
        let other = tempfile::tempdir().unwrap();
        let (_server, kubeconfig, _) = binary(other.path(), &["--tokens".as_ref(), tokens.as_ref()]).await;
        let k = Kubectl::from_kubeconfig(&kubeconfig);
        let (ok, _, stderr) = k.run(&["--token", "admin", "get", "nodes"]).await;
        assert!(!ok && stderr.contains("provide credentials"), "{stderr}");
    })
    .await;
}

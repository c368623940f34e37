//! A small cluster for the agent's Kubernetes tests: the fake apiserver in
//! process, and real `wireseal agent` processes (in-memory datapath) as nodes.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeSpec, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use wireseal::status::AgentStatus;
use wireseal_fake_apiserver::{FakeApiServer, Handle};

pub const KEY_ANNOTATION: &str = "wireseal.dev/public-key";
/// The agents' `--key-rotation-lead`.
pub const ROTATION_LEAD_SECS: u64 = 6;

/// The fake API server plus a scratch directory.
pub struct Cluster {
    pub server: Handle,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
}

impl Cluster {
    pub async fn start() -> Self {
        let server = FakeApiServer::start_local().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        server.write_kubeconfig(&kubeconfig).unwrap();
        Self {
            server,
            dir,
            kubeconfig,
        }
    }

    /// Adds a Node with InternalIP 192.0.2.<index+10> and pod CIDR 10.244.<index>.0/24.
    pub fn add_node(&self, name: &str, index: u8) {
        self.server
            .state()
            .create_node(&node(name, index, BTreeMap::new()))
            .unwrap();
    }

    /// Adds a Node with the given annotations (a node without a running agent).
    pub fn add_node_with(&self, name: &str, index: u8, annotations: &[(&str, &str)]) {
        let annotations = annotations
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.server
            .state()
            .create_node(&node(name, index, annotations))
            .unwrap();
    }

    pub fn annotation(&self, node: &str, key: &str) -> Option<String> {
        self.server.state().node_annotation(node, key)
    }

    pub fn set_annotation(&self, node: &str, key: &str, value: Option<&str>) {
        self.server
            .state()
            .modify_node(node, |n| {
                let annotations = n.metadata.annotations.get_or_insert_with(BTreeMap::new);
                match value {
                    Some(v) => annotations.insert(key.to_owned(), v.to_owned()),
                    None => annotations.remove(key),
                };
            })
            .unwrap();
    }

    pub fn spawn_agent(&self, name: &str) -> Agent {
        Agent::spawn(self, name, &self.dir.path().join(name))
    }

    /// Nodes `names` (indices in order), an agent on each, and every agent
    /// peered with every other one.
    pub async fn full_mesh(&self, names: &[&str], timeout: Duration) -> Vec<Agent> {
        for (i, name) in names.iter().enumerate() {
            self.add_node(name, u8::try_from(i).unwrap());
        }
        let agents: Vec<Agent> = names.iter().map(|n| self.spawn_agent(n)).collect();
        let all: Vec<&Agent> = agents.iter().collect();
        for agent in &agents {
            eventually("a full mesh", timeout, &all, || {
                (agent.peers()? == expected_peers(agent, &all)?).then_some(())
            })
            .await;
        }
        agents
    }
}

pub fn node(name: &str, index: u8, annotations: BTreeMap<String, String>) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            pod_cidrs: Some(vec![format!("10.244.{index}.0/24")]),
            pod_cidr: Some(format!("10.244.{index}.0/24")),
            ..NodeSpec::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(vec![NodeAddress {
                type_: "InternalIP".into(),
                address: format!("192.0.2.{}", u16::from(index) + 10),
            }]),
            ..NodeStatus::default()
        }),
    }
}

/// One `wireseal agent` process; killed on drop.
pub struct Agent {
    pub name: String,
    pub status_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub state_dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    kubeconfig: PathBuf,
}

impl Agent {
    fn spawn(cluster: &Cluster, name: &str, state_dir: &Path) -> Self {
        let mut agent = Self {
            name: name.to_owned(),
            status_addr: free_port(),
            metrics_addr: free_port(),
            state_dir: state_dir.to_owned(),
            log: cluster.dir.path().join(format!("{name}.log")),
            child: None,
            kubeconfig: cluster.kubeconfig.clone(),
        };
        agent.start();
        agent
    }

    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_wireseal"))
            .args([
                "agent",
                "--datapath",
                "memory",
                "--resync-interval",
                "1",
                "--watch-timeout",
                "5",
                // A memory datapath never completes a handshake, so every
                // change to its status is a "worse" one that the agent holds
                // back; the tests wait seconds, not the default half minute.
                "--status-hold",
                "1",
            ])
            .arg("--node-name")
            .arg(&self.name)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--status-addr")
            .arg(self.status_addr.to_string())
            .arg("--metrics-addr")
            .arg(self.metrics_addr.to_string())
            .env("WIRESEAL_LOG", "info,wireseal=debug")
            // A key rotation is announced this many seconds before its switch.
            .env("WIRESEAL_KEY_ROTATION_LEAD", ROTATION_LEAD_SECS.to_string())
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn status(&self) -> Option<AgentStatus> {
        wireseal::status_cmd::fetch(&self.state_dir).ok()
    }

    /// Node name → public key (base64) of every remote node this agent peers with.
    pub fn peers(&self) -> Option<BTreeMap<String, String>> {
        let status = self.status()?;
        Some(
            status
                .peers
                .iter()
                .filter_map(|p| p.public_key.map(|k| (p.node.clone(), k.to_string())))
                .collect(),
        )
    }

    pub fn public_key(&self) -> Option<String> {
        self.status()?.public_key.map(|k| k.to_string())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// Polls `check` until it returns `Some`, or fails the test with `what` and the agents' logs.
pub async fn eventually<T>(
    what: &str,
    timeout: Duration,
    agents: &[&Agent],
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = agents
                .iter()
                .map(|a| format!("--- {} ---\n{}", a.name, tail(&a.log_text(), 40)))
                .collect();
            panic!(
                "timed out after {timeout:?} waiting for: {what}\n{}",
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Expected peer map of `agent` in a mesh of `agents`: every other agent's key.
pub fn expected_peers(me: &Agent, agents: &[&Agent]) -> Option<BTreeMap<String, String>> {
    agents
        .iter()
        .filter(|a| a.name != me.name)
        .map(|a| a.public_key().map(|k| (a.name.clone(), k)))
        .collect()
}

//! A local multi-node wireseal cluster on one Linux machine, as root: nodes and
//! pods in network namespaces on an underlay bridge, the existing CNI played by
//! host-gw routes, the fake apiserver holding the Node objects, and per node
//! one `wireseal-tunnel` (the userspace datapath) and one `wireseal agent`.
//!
//! Used by `wireseal-lab demo` and by the end-to-end tests.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod apiserver;
pub mod capture;
pub mod netns;
pub mod process;
mod registry;
pub mod service;
pub mod topology;
pub mod traffic;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeSpec, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use wireseal::status::AgentStatus;

use crate::apiserver::ApiServer;
use crate::process::{Proc, locate};
pub use crate::registry::emergency_teardown;
use crate::topology::{APISERVER_IP, APISERVER_PORT, Network};

/// The tunnel interface name inside every node.
pub const INTERFACE: &str = "wireseal0";
/// The WireGuard port (wireseal's default).
pub const WIREGUARD_PORT: u16 = 51830;
/// Status endpoint of each agent, inside its node's namespace.
pub const STATUS_ADDR: &str = "127.0.0.1:9830";
/// Prefix of everything a lab creates (namespaces, run directories).
pub const PREFIX: &str = "wsl";

/// Size of a lab.
#[derive(Debug, Clone, Copy)]
pub struct LabConfig {
    /// Nodes.
    pub nodes: usize,
    /// Pods per node.
    pub pods: usize,
}

impl Default for LabConfig {
    fn default() -> Self {
        Self { nodes: 3, pods: 2 }
    }
}

/// Per-node wireseal processes.
#[derive(Debug, Default)]
struct NodeProcs {
    agent: Option<Proc>,
    tunnel: Option<Proc>,
}

/// A running lab. Dropping it stops every process and deletes every namespace.
#[derive(Debug)]
pub struct Lab {
    procs: Vec<NodeProcs>,
    apiserver: ApiServer,
    /// The network: nodes, pods, underlay.
    pub network: Network,
    /// Scratch directory: kubeconfig, per-node state and sockets, logs.
    pub dir: PathBuf,
    /// Prefix of this run's namespaces.
    pub prefix: String,
    wireseal: PathBuf,
    tunnel: PathBuf,
}

impl Lab {
    /// Builds the network, installs the CNI's plain routes, starts the
    /// apiserver and registers the Nodes. wireseal is not started yet.
    ///
    /// # Errors
    /// When not root, a tool is missing or the binaries are not built.
    pub fn up(config: LabConfig) -> Result<Self> {
        if !nix::unistd::geteuid().is_root() {
            bail!("the lab needs root (network namespaces, veth, TUN, policy routing)");
        }
        if config.nodes < 2 || config.nodes > 200 || config.pods == 0 || config.pods > 200 {
            bail!("a lab has 2–200 nodes and 1–200 pods per node");
        }
        let wireseal = locate("wireseal")?;
        let tunnel = locate("wireseal-tunnel")?;
        // pid and a counter: test binaries run several labs in one process.
        static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let run_id = format!("{PREFIX}{:x}{run}", std::process::id() % 0x1_0000);
        registry::set_prefix(&run_id);
        let dir = std::env::temp_dir().join(format!("wireseal-lab-{run_id}"));
        create_private_dir(&dir)?;
        let network = topology::build(&run_id, config.nodes, config.pods)?;
        topology::install_cni_routes(&network)?;
        let addr = SocketAddr::from((APISERVER_IP, APISERVER_PORT));
        let apiserver = ApiServer::start_in(&network.underlay, addr)?;
        for node in &network.nodes {
            apiserver
                .handle()
                .state()
                .create_node(&node_object(&node.name, node.index, &node.ip.to_string()))
                .map_err(|err| anyhow::anyhow!("registering Node {}: {err}", node.name))?;
        }
        apiserver
            .handle()
            .write_kubeconfig(&dir.join("kubeconfig"))?;
        let procs = (0..config.nodes).map(|_| NodeProcs::default()).collect();
        tracing::info!(dir = %dir.display(), prefix = %run_id, "lab up");
        Ok(Self {
            procs,
            apiserver,
            network,
            dir,
            prefix: run_id,
            wireseal,
            tunnel,
        })
    }

    /// The fake apiserver (Node objects, faults).
    #[must_use]
    pub fn apiserver(&self) -> &wireseal_fake_apiserver::Handle {
        self.apiserver.handle()
    }

    fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("node-{i}"))
    }

    /// Starts node `i`'s userspace datapath process.
    ///
    /// # Errors
    /// When it cannot start or its socket does not appear.
    pub fn start_tunnel(&mut self, i: usize) -> Result<()> {
        let run = self.node_dir(i).join("run");
        create_private_dir(&run)?;
        let mut command = self.network.nodes[i]
            .ns
            .command(&self.tunnel.to_string_lossy());
        command
            .args(["--interface", INTERFACE, "--uapi-dir"])
            .arg(&run);
        let log = self.node_dir(i).join("tunnel.log");
        let proc = Proc::spawn(&format!("wireseal-tunnel on node-{i}"), command, &log)?;
        self.procs[i].tunnel = Some(proc);
        let socket = run.join(format!("{INTERFACE}.sock"));
        wait_for(Duration::from_secs(10), || socket.exists()).with_context(|| {
            format!(
                "node-{i}'s tunnel socket {} did not appear",
                socket.display()
            )
        })
    }

    /// Starts node `i`'s agent.
    ///
    /// # Errors
    /// When it cannot start.
    pub fn start_agent(&mut self, i: usize) -> Result<()> {
        let node_dir = self.node_dir(i);
        let state = node_dir.join("state");
        create_private_dir(&state)?;
        let mut command = self.network.nodes[i]
            .ns
            .command(&self.wireseal.to_string_lossy());
        command
            .args([
                "agent",
                "--datapath",
                "auto",
                "--resync-interval",
                "5",
                "--status-addr",
                STATUS_ADDR,
            ])
            .args(["--node-name", &self.network.nodes[i].name])
            .arg("--kubeconfig")
            .arg(self.dir.join("kubeconfig"))
            .arg("--state-dir")
            .arg(&state)
            .arg("--uapi-dir")
            .arg(node_dir.join("run"))
            .env("WIRESEAL_LOG", "info")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBECONFIG");
        let log = node_dir.join("agent.log");
        self.procs[i].agent = Some(Proc::spawn(
            &format!("wireseal agent on node-{i}"),
            command,
            &log,
        )?);
        Ok(())
    }

    /// Starts the tunnel and the agent on every node.
    ///
    /// # Errors
    /// The first that fails to start.
    pub fn start_wireseal(&mut self) -> Result<()> {
        for i in 0..self.network.nodes.len() {
            self.start_tunnel(i)?;
            self.start_agent(i)?;
        }
        Ok(())
    }

    /// Stops node `i`'s agent (SIGTERM, as Kubernetes does). The tunnel keeps running.
    pub fn stop_agent(&mut self, i: usize) {
        if let Some(mut agent) = self.procs[i].agent.take() {
            agent.stop(Duration::from_secs(5));
        }
    }

    /// Kills node `i`'s agent with SIGKILL, as a crash or an OOM kill would.
    pub fn kill_agent(&mut self, i: usize) {
        if let Some(mut agent) = self.procs[i].agent.take() {
            agent.kill();
        }
    }

    /// Registers node `i`'s Node object again (after [`Lab::delete_node`]).
    ///
    /// # Errors
    /// When the apiserver refuses it.
    pub fn register_node(&self, i: usize) -> Result<()> {
        let node = &self.network.nodes[i];
        self.apiserver()
            .state()
            .create_node(&node_object(&node.name, node.index, &node.ip.to_string()))
            .map(|_| ())
            .map_err(|err| anyhow::anyhow!("registering Node {}: {err}", node.name))
    }

    /// Deletes node `i`'s Node object, as when a node leaves the cluster.
    ///
    /// # Errors
    /// When it does not exist.
    pub fn delete_node(&self, i: usize) -> Result<()> {
        let name = &self.network.nodes[i].name;
        self.apiserver()
            .state()
            .delete_node(name)
            .map(|_| ())
            .map_err(|err| anyhow::anyhow!("deleting Node {name}: {err}"))
    }

    /// Node `i`'s routing as `ip` shows it: links, addresses, rules, every
    /// table. Used to check that `wireseal cleanup` leaves the node as it
    /// found it.
    ///
    /// # Errors
    /// When `ip` fails.
    pub fn routing_snapshot(&self, i: usize) -> Result<String> {
        let ns = &self.network.nodes[i].ns;
        let mut out = String::new();
        for args in [
            &["-o", "link", "show"][..],
            &["-o", "addr", "show"],
            &["rule", "show"],
            &["-4", "route", "show", "table", "all"],
            &["-6", "route", "show", "table", "all"],
        ] {
            let output = ns.ip(args)?;
            let text = String::from_utf8_lossy(&output.stdout);
            // Link lines carry changing counters and queue states; keep the names.
            let lines: Vec<String> = if args.contains(&"link") {
                text.lines()
                    .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_owned()))
                    .collect()
            } else if args.contains(&"addr") {
                // The address and its device; lifetimes left out, and the
                // link-local ones, which come and go with DAD as below.
                text.lines()
                    .filter(|l| !l.contains(" fe80::"))
                    .map(|l| l.split('\\').next().unwrap_or(l).trim().to_owned())
                    .collect()
            } else {
                // Link-local addresses appear when the kernel's duplicate address
                // detection finishes, whenever that is; they are not wireseal's.
                text.lines()
                    .filter(|l| !l.starts_with("local fe80::"))
                    .map(str::to_owned)
                    .collect()
            };
            out.push_str(&format!("$ ip {}\n{}\n", args.join(" "), lines.join("\n")));
        }
        Ok(out)
    }

    /// Stops node `i`'s tunnel process.
    pub fn stop_tunnel(&mut self, i: usize) {
        if let Some(mut tunnel) = self.procs[i].tunnel.take() {
            tunnel.stop(Duration::from_secs(5));
        }
    }

    /// The end of node `i`'s agent and tunnel logs, for failure messages.
    #[must_use]
    pub fn logs(&self, i: usize) -> String {
        let procs = &self.procs[i];
        let tail = |p: &Option<Proc>| {
            p.as_ref()
                .map_or_else(|| "(not running)".to_owned(), |p| p.log_tail(25))
        };
        format!(
            "--- node-{i} agent ---\n{}\n--- node-{i} tunnel ---\n{}",
            tail(&procs.agent),
            tail(&procs.tunnel)
        )
    }

    /// Fails when any started agent or tunnel has exited.
    ///
    /// # Errors
    /// Naming the process and quoting its log.
    pub fn check_processes(&mut self) -> Result<()> {
        for procs in &mut self.procs {
            for proc in [&mut procs.agent, &mut procs.tunnel].into_iter().flatten() {
                proc.check_running()?;
            }
        }
        Ok(())
    }

    /// Node `i`'s agent status, read with `wireseal status --json` inside the node.
    ///
    /// # Errors
    /// When the agent does not answer.
    pub fn status(&self, i: usize) -> Result<AgentStatus> {
        let output = self.network.nodes[i].ns.exec(
            &self.wireseal.to_string_lossy(),
            &["status", "--json", "--status-addr", STATUS_ADDR],
        )?;
        serde_json::from_slice(&output.stdout).context("parsing wireseal status --json")
    }

    /// `wireseal status` of node `i`, as a user sees it.
    ///
    /// # Errors
    /// When the agent does not answer.
    pub fn status_text(&self, i: usize) -> Result<String> {
        let output = self.network.nodes[i].ns.exec(
            &self.wireseal.to_string_lossy(),
            &["status", "--status-addr", STATUS_ADDR],
        )?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Runs `wireseal cleanup` on node `i` (after its agent is stopped).
    ///
    /// # Errors
    /// When the command fails.
    pub fn cleanup_node(&mut self, i: usize) -> Result<()> {
        self.stop_agent(i);
        let out = self
            .cleanup_command(i, Duration::ZERO)
            .stdout(std::process::Stdio::null())
            .output()
            .with_context(|| format!("running wireseal cleanup on node-{i}"))?;
        self.reap_tunnel(i);
        check_cleanup(i, &out)
    }

    /// `wireseal cleanup --drain SECONDS` for node `i`, inside its namespace.
    fn cleanup_command(&self, i: usize, drain: Duration) -> std::process::Command {
        let mut command = self.network.nodes[i]
            .ns
            .command(&self.wireseal.to_string_lossy());
        command
            .args(["cleanup", "--interface", INTERFACE, "--drain"])
            .arg(drain.as_secs().to_string())
            .arg("--uapi-dir")
            .arg(self.node_dir(i).join("run"));
        command
    }

    /// Runs `wireseal cleanup --drain SECONDS` on every node, as the cleanup
    /// DaemonSet does (after stopping the agents): each node's cleanup starts
    /// `stagger` after the previous one's, as its pods start at different times.
    ///
    /// # Errors
    /// When a cleanup cannot start or fails.
    pub fn cleanup_all(&mut self, drain: Duration, stagger: Duration) -> Result<()> {
        for i in 0..self.procs.len() {
            self.stop_agent(i);
        }
        let mut running = Vec::new();
        for i in 0..self.procs.len() {
            if i > 0 {
                std::thread::sleep(stagger);
            }
            let child = self
                .cleanup_command(i, drain)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .with_context(|| format!("starting wireseal cleanup on node-{i}"))?;
            running.push((i, child));
        }
        for (i, child) in running {
            let out = child
                .wait_with_output()
                .with_context(|| format!("waiting for wireseal cleanup on node-{i}"))?;
            self.reap_tunnel(i);
            check_cleanup(i, &out)?;
        }
        Ok(())
    }

    /// Reaps node `i`'s userspace tunnel after a cleanup stopped it.
    fn reap_tunnel(&mut self, i: usize) {
        if let Some(mut tunnel) = self.procs[i].tunnel.take() {
            tunnel.stop(Duration::from_secs(5));
        }
    }

    /// Waits until every agent peers with every other node and every peer has
    /// a handshake (traffic is sent between all pods meanwhile to start them).
    ///
    /// # Errors
    /// On timeout, with the agents' logs.
    pub fn wait_encrypted(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let nodes = self.network.nodes.len();
        loop {
            self.check_processes()?;
            let ready = (0..nodes).all(|i| {
                self.status(i)
                    .is_ok_and(|s| s.expected() == nodes - 1 && s.encrypted() == nodes - 1)
            });
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = (0..nodes).map(|i| self.logs(i)).collect();
                bail!(
                    "the mesh did not come up within {timeout:?}\n{}",
                    logs.join("\n")
                );
            }
            // A handshake starts with the first packet to a peer.
            for i in 0..nodes {
                for k in (0..nodes).filter(|k| *k != i) {
                    let _ =
                        traffic::ping(&self.network, (i, 0), (k, 0), 1, Duration::from_millis(300));
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for procs in &mut self.procs {
            if let Some(mut agent) = procs.agent.take() {
                agent.stop(Duration::from_secs(3));
            }
            if let Some(mut tunnel) = procs.tunnel.take() {
                tunnel.stop(Duration::from_secs(3));
            }
        }
        // Logs stay for a post-mortem when asked for.
        if std::env::var_os("WIRESEAL_LAB_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The Node object of lab node `name`.
#[must_use]
pub fn node_object(name: &str, index: usize, ip: &str) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some([("kubernetes.io/hostname".to_owned(), name.to_owned())].into()),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some(topology::pod_cidr(index)),
            pod_cidrs: Some(vec![topology::pod_cidr(index)]),
            ..NodeSpec::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: ip.to_owned(),
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: name.to_owned(),
                },
            ]),
            ..NodeStatus::default()
        }),
    }
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// Polls `check` every 20 ms until true or `timeout`.
///
/// # Errors
/// On timeout.
pub fn wait_for(timeout: Duration, mut check: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !check() {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// What a lab with `prefix` left behind: its namespaces and its processes
/// still alive. Empty after a clean teardown.
#[must_use]
pub fn leftovers(prefix: &str) -> Vec<String> {
    let mut left = netns::list_with_prefix(&format!("{prefix}-"));
    left.extend(
        registry::live_pids()
            .into_iter()
            .map(|pid| format!("process {pid}")),
    );
    left
}

/// Deletes namespaces left by earlier runs (a crash, a `kill -9`).
///
/// # Errors
/// When `ip netns del` fails.
pub fn cleanup_leftovers() -> Result<usize> {
    let names = netns::list_with_prefix(PREFIX);
    for name in &names {
        netns::ip(&["netns", "del", name])?;
    }
    Ok(names.len())
}

/// A failed `wireseal cleanup` as an error naming the node and its stderr.
fn check_cleanup(i: usize, out: &std::process::Output) -> Result<()> {
    if !out.status.success() {
        bail!(
            "wireseal cleanup on node-{i} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

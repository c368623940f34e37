//! A local multi-node wireseal cluster on one Linux machine, as root: nodes and
//! pods in network namespaces on an underlay bridge, the existing CNI played by
//! host-gw routes, the fake apiserver holding the Node objects, and per node
//! one `wireseal-tunnel` (the userspace datapath) and one `wireseal agent`:
//! as processes in the node's namespace, or ([`Runtime::Containers`]) as the
//! DaemonSet's pod, its containers run from the image by a container engine
//! with what `deploy/kubernetes/20-daemonset.yaml` gives them ([`daemonset`]).
//!
//! Used by `wireseal-lab demo` and by the end-to-end tests.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod apiserver;
pub mod capture;
pub mod churn;
pub mod daemonset;
pub mod docker;
pub mod identity;
pub mod image;
pub mod pods;
pub mod process;
mod registry;
pub mod rotation;
pub mod service;
pub mod topology;
pub mod traffic;

/// The lab's network namespaces: the same harness as the privileged tests'.
pub use wireseal_netns as netns;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeSpec, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams};
use wireseal::status::AgentStatus;

use crate::apiserver::ApiServer;
use crate::capture::{Capture, CaptureReport};
use crate::identity::Identity;
use crate::process::{Proc, locate};
pub use crate::registry::emergency_teardown;
use crate::topology::{APISERVER_PORT, LabNode, Network, Stack};

/// The tunnel interface name inside every node.
pub const INTERFACE: &str = "wireseal0";
/// The WireGuard port (wireseal's default).
pub const WIREGUARD_PORT: u16 = 51830;
/// Probe endpoint (/healthz, /readyz) of each agent, inside its node's namespace.
pub const STATUS_ADDR: &str = "127.0.0.1:9830";
/// Prefix of everything a lab creates (namespaces, run directories, containers).
pub const PREFIX: &str = "wsl";

/// Size of a lab, and how wireseal runs on its nodes.
#[derive(Debug, Clone, Copy)]
pub struct LabConfig {
    /// Nodes.
    pub nodes: usize,
    /// Pods per node.
    pub pods: usize,
    /// Processes, or the DaemonSet's containers.
    pub runtime: Runtime,
    /// Arguments added after every agent's own (processes and containers
    /// alike), as a patch of the DaemonSet's `args` would add them.
    pub agent_args: &'static [&'static str],
    /// IPv4, dual-stack or IPv6-only (processes only).
    pub stack: Stack,
}

impl Default for LabConfig {
    fn default() -> Self {
        Self {
            nodes: 3,
            pods: 2,
            runtime: Runtime::Processes,
            agent_args: &[],
            stack: Stack::V4,
        }
    }
}

/// How wireseal runs on the lab's nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// `wireseal-tunnel` and `wireseal agent` as processes in each node's
    /// namespace, started with the lab's own flags.
    Processes,
    /// The DaemonSet's pod on each node: its containers, from the image the
    /// lab builds with `deploy/image/build-offline.sh`, run by docker with the
    /// manifest's settings. Each node's namespace is that of a sandbox
    /// container the pods join.
    Containers,
}

/// Per-node wireseal processes.
#[derive(Debug, Default)]
struct NodeProcs {
    agent: Option<Proc>,
    tunnel: Option<Proc>,
}

/// A running lab. Dropping it stops every process, removes every container
/// and deletes every namespace.
#[derive(Debug)]
pub struct Lab {
    procs: Vec<NodeProcs>,
    /// The DaemonSet pods running on each node (containers runtime).
    pods: Vec<Option<pods::DaemonPod>>,
    apiserver: ApiServer,
    /// The network: nodes, pods, underlay.
    pub network: Network,
    /// Image, manifests and node sandboxes (containers runtime); after
    /// `network` so the sandboxes go once the namespaces' names are gone.
    containers: Option<pods::ContainerRuntime>,
    /// Scratch directory: kubeconfig, per-node state and sockets, logs.
    pub dir: PathBuf,
    /// Prefix of this run's namespaces.
    pub prefix: String,
    wireseal: PathBuf,
    tunnel: PathBuf,
    /// Extra flags for every agent started from now on (processes or containers).
    agent_args: Vec<String>,
}

impl Lab {
    /// Which cargo profile built the `wireseal-tunnel` this lab runs, from
    /// its folder (`target/<profile>/`): the demo says which build its
    /// throughput measured. `None` outside a cargo target folder.
    #[must_use]
    pub fn tunnel_profile(&self) -> Option<String> {
        let dir = self.tunnel.parent()?;
        let inside_target = dir
            .parent()
            .and_then(|target| target.file_name())
            .is_some_and(|name| name == "target");
        inside_target
            .then(|| dir.file_name()?.to_str().map(str::to_owned))
            .flatten()
    }

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
        if config.stack != Stack::V4 && config.runtime == Runtime::Containers {
            bail!("the containers runtime has IPv4 only; IPv6 labs run processes");
        }
        let wireseal = locate("wireseal")?;
        let tunnel = locate("wireseal-tunnel")?;
        let mut containers = match config.runtime {
            Runtime::Processes => None,
            Runtime::Containers => Some(pods::ContainerRuntime::prepare(&wireseal, &tunnel)?),
        };
        // pid and a counter: test binaries run several labs in one process.
        static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let run_id = format!("{PREFIX}{:x}{run}", std::process::id() % 0x1_0000);
        registry::set_prefix(&run_id);
        let dir = std::env::temp_dir().join(format!("wireseal-lab-{run_id}"));
        create_private_dir(&dir)?;
        let network = match containers.as_mut() {
            None => topology::build(&run_id, config.stack, config.nodes, config.pods)?,
            Some(runtime) => topology::build_with(
                &run_id,
                config.stack,
                config.nodes,
                config.pods,
                |i, name| runtime.node_namespace(&run_id, i, name),
            )?,
        };
        topology::install_cni_routes(&network)?;
        // Every client has a token; every write passes wireseal's admission
        // policies, as shipped.
        let names: Vec<String> = network.nodes.iter().map(|n| n.name.clone()).collect();
        let tokens = dir.join("tokens.yaml");
        std::fs::write(&tokens, identity::tokens_file(&names))
            .with_context(|| format!("writing {}", tokens.display()))?;
        let policies = dir.join("30-admission.yaml");
        std::fs::write(&policies, identity::ADMISSION_POLICIES)
            .with_context(|| format!("writing {}", policies.display()))?;
        let apiserver = ApiServer::start_in(
            &network.underlay,
            wireseal_fake_apiserver::Config {
                listen: SocketAddr::from((config.stack.apiserver_ip(), APISERVER_PORT)),
                tokens_file: Some(tokens),
                admission_policies: vec![policies],
                ..wireseal_fake_apiserver::Config::default()
            },
        )?;
        for node in &network.nodes {
            apiserver
                .handle()
                .state()
                .create_node(&lab_node_object(node, network.stack))
                .map_err(|err| anyhow::anyhow!("registering Node {}: {err}", node.name))?;
        }
        // One kubeconfig per identity; the agents' are bound to their node.
        for who in names
            .iter()
            .flat_map(|n| [Identity::Agent(n.clone()), Identity::Kubelet(n.clone())])
            .chain([Identity::Admin, Identity::UnboundAgent])
        {
            apiserver
                .handle()
                .write_kubeconfig_with_token(&kubeconfig_path(&dir, &who), &who.token())?;
        }
        let procs = (0..config.nodes).map(|_| NodeProcs::default()).collect();
        tracing::info!(dir = %dir.display(), prefix = %run_id, runtime = ?config.runtime, "lab up");
        Ok(Self {
            procs,
            pods: (0..config.nodes).map(|_| None).collect(),
            apiserver,
            network,
            containers,
            dir,
            prefix: run_id,
            wireseal,
            tunnel,
            agent_args: config
                .agent_args
                .iter()
                .map(|arg| (*arg).to_owned())
                .collect(),
        })
    }

    /// The address the fake apiserver listens on (and captures count as the
    /// control plane).
    #[must_use]
    pub fn apiserver_ip(&self) -> std::net::IpAddr {
        self.network.stack.apiserver_ip()
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

    /// Gives every agent started from now on these extra flags (e.g.
    /// `--strict`, `--cluster-cidrs …`).
    pub fn set_agent_args(&mut self, args: &[&str]) {
        self.agent_args = args.iter().map(|a| (*a).to_owned()).collect();
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
            .arg(kubeconfig_path(
                &self.dir,
                &Identity::Agent(self.network.nodes[i].name.clone()),
            ))
            .arg("--state-dir")
            .arg(&state)
            .arg("--uapi-dir")
            .arg(node_dir.join("run"))
            .args(&self.agent_args)
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

    /// Starts the tunnel and the agent on every node: as processes, or as
    /// the DaemonSet's pod ([`Lab::start_pod`]).
    ///
    /// # Errors
    /// The first that fails to start.
    pub fn start_wireseal(&mut self) -> Result<()> {
        for i in 0..self.network.nodes.len() {
            if self.containers.is_some() {
                self.start_pod(i)?;
            } else {
                self.start_tunnel(i)?;
                self.start_agent(i)?;
            }
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
            .create_node(&lab_node_object(node, self.network.stack))
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

    /// Merge-patches Node `node` as `who` from inside node `from`'s network
    /// namespace (where root on that node would send it), through the status
    /// subresource or the Node itself: `Ok(Err(..))` is the API server's refusal.
    ///
    /// # Errors
    /// When the request cannot be made at all.
    pub fn patch_node_as(
        &self,
        from: usize,
        who: &Identity,
        node: &str,
        status: bool,
        patch: serde_json::Value,
    ) -> Result<std::result::Result<(), Refused>> {
        let kubeconfig = kubeconfig_path(&self.dir, who);
        let enter = self.network.nodes[from].ns.enter_current_thread_fn();
        let node = node.to_owned();
        std::thread::spawn(move || {
            enter()?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let api: Api<Node> = Api::all(wireseal::k8s::client(Some(&kubeconfig)).await?.0);
                let patch = Patch::Merge(&patch);
                let params = PatchParams::default();
                let result = if status {
                    api.patch_status(&node, &params, &patch).await
                } else {
                    api.patch(&node, &params, &patch).await
                };
                match result {
                    Ok(_) => Ok(Ok(())),
                    Err(kube::Error::Api(s)) => Ok(Err(Refused {
                        code: s.code,
                        reason: s.reason,
                        message: s.message,
                    })),
                    Err(err) => Err(anyhow!(err).context(format!("patching Node {node}"))),
                }
            })
        })
        .join()
        .map_err(|_| anyhow!("the request thread panicked"))?
    }

    /// Kills node `i`'s tunnel process with SIGKILL: its TUN device, and the
    /// routes through it, go at once.
    pub fn kill_tunnel(&mut self, i: usize) {
        if let Some(mut tunnel) = self.procs[i].tunnel.take() {
            tunnel.kill();
        }
    }

    /// Drops WireGuard's UDP between nodes `a` and `b`, both ways (nftables
    /// in each node's namespace, in a table of the lab's own): as a firewall
    /// between two nodes would.
    ///
    /// # Errors
    /// When nft fails.
    pub fn block_wireguard(&self, a: usize, b: usize) -> Result<()> {
        for (me, other) in [(a, b), (b, a)] {
            let ns = &self.network.nodes[me].ns;
            let mut script = "add table inet wslab_block; \
                 add chain inet wslab_block input { type filter hook input priority 0; }; "
                .to_owned();
            for peer in self.network.nodes[other].addresses() {
                let match_family = if peer.is_ipv4() { "ip" } else { "ip6" };
                script.push_str(&format!(
                    "add rule inet wslab_block input {match_family} saddr {peer} udp dport {WIREGUARD_PORT} drop; "
                ));
            }
            ns.exec("nft", &[&script])?;
        }
        Ok(())
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
        if let Some(pod) = &self.pods[i] {
            return pod.log_tails(i, 25);
        }
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
        for pod in self.pods.iter().flatten() {
            pod.check_running()?;
        }
        Ok(())
    }

    /// Node `i`'s agent state directory on the host (its status socket's): the
    /// pod's hostPath when the agent runs in the DaemonSet's pod.
    pub fn state_dir(&self, i: usize) -> String {
        let dir = if self.pods.get(i).is_some_and(Option::is_some) {
            self.node_dir(i).join("host/var/lib/wireseal")
        } else {
            self.node_dir(i).join("state")
        };
        dir.to_string_lossy().into_owned()
    }

    /// Polls `check` every 100 ms until it holds, for tests.
    ///
    /// # Panics
    /// After `timeout`, naming `what`, with every node's log tails.
    pub fn eventually(&self, what: &str, timeout: Duration, mut check: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        while !check(self) {
            if Instant::now() >= deadline {
                let logs: Vec<String> = (0..self.network.nodes.len())
                    .map(|i| self.logs(i))
                    .collect();
                panic!("timed out waiting for: {what}\n{}", logs.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Node `i`'s agent status, read with `wireseal status --json` inside the node.
    ///
    /// # Errors
    /// When the agent does not answer.
    pub fn status(&self, i: usize) -> Result<AgentStatus> {
        let stdout = self.run_status(i, &["--json"])?;
        serde_json::from_slice(&stdout).context("parsing wireseal status --json")
    }

    /// `wireseal status` of node `i`, as a user sees it.
    ///
    /// # Errors
    /// When the agent does not answer.
    pub fn status_text(&self, i: usize) -> Result<String> {
        let stdout = self.run_status(i, &[])?;
        Ok(String::from_utf8_lossy(&stdout).into_owned())
    }

    /// `wireseal status ARGS` inside node `i`: its output when the agent
    /// answered, whether or not every peer is encrypted yet (exit 0 or 1).
    fn run_status(&self, i: usize, args: &[&str]) -> Result<Vec<u8>> {
        let output = self.network.nodes[i]
            .ns
            .command(&self.wireseal.to_string_lossy())
            .args(["status", "--state-dir", &self.state_dir(i)])
            .args(args)
            .output()
            .with_context(|| format!("running wireseal status on node-{i}"))?;
        match output.status.code() {
            Some(0 | 1) => Ok(output.stdout),
            _ => bail!(
                "wireseal status on node-{i} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        }
    }

    /// `wireseal verify --no-cluster --json ARGS` inside node `i`: its exit
    /// code and its report.
    ///
    /// # Errors
    /// When it cannot run or prints no report.
    pub fn verify_local(&self, i: usize, args: &[&str]) -> Result<(i32, serde_json::Value)> {
        let output = self.network.nodes[i]
            .ns
            .command(&self.wireseal.to_string_lossy())
            .args(["verify", "--no-cluster", "--json", "--interface", INTERFACE])
            .args(["--state-dir", &self.state_dir(i)])
            .args(args)
            .output()
            .with_context(|| format!("running wireseal verify on node-{i}"))?;
        let report = serde_json::from_slice(&output.stdout).with_context(|| {
            format!(
                "wireseal verify on node-{i} printed no report: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )
        })?;
        Ok((output.status.code().unwrap_or(-1), report))
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

    /// What crossed the underlay while `traffic` ran (a capture on every
    /// port of the bridge, in this lab's directory).
    ///
    /// # Errors
    /// When tcpdump cannot run or its capture cannot be read.
    pub fn capture_while(&self, traffic: impl FnOnce()) -> Result<CaptureReport> {
        let capture = self.start_capture()?;
        traffic();
        self.finish_capture(capture)
    }

    /// Starts capturing on every port of the underlay bridge, into a new
    /// file in this lab's directory; [`Lab::finish_capture`] reads it.
    ///
    /// # Errors
    /// When tcpdump cannot run.
    pub fn start_capture(&self) -> Result<Capture> {
        static CAPTURES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let file = self.dir.join(format!(
            "capture-{}.pcap",
            CAPTURES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        Capture::start(&self.network.underlay, "any", &file)
    }

    /// Stops `capture` and classifies what crossed the underlay.
    ///
    /// # Errors
    /// When the capture cannot be read.
    pub fn finish_capture(&self, capture: Capture) -> Result<CaptureReport> {
        capture.finish(self.apiserver_ip(), WIREGUARD_PORT)
    }

    /// Three canary pings, in every family of the lab, from the first pod
    /// of each `from` node to the first pod of its `to` node, while
    /// capturing the underlay.
    ///
    /// # Errors
    /// When ping or tcpdump cannot run.
    pub fn capture_pings(&self, pairs: &[(usize, usize)]) -> Result<CaptureReport> {
        let mut pinged = Ok(());
        let report = self.capture_while(|| {
            pinged = self.network.stack.families().iter().try_for_each(|family| {
                pairs.iter().try_for_each(|(from, to)| {
                    traffic::ping_family(
                        &self.network,
                        *family,
                        (*from, 0),
                        (*to, 0),
                        3,
                        Duration::from_millis(20),
                    )
                    .map(|_| ())
                })
            });
        })?;
        pinged?;
        Ok(report)
    }

    /// The connectivity and on-the-wire proofs: every pod reaches every pod
    /// on the other nodes, and canary pings between the first pods of
    /// `pairs` cross the underlay only as WireGuard; the capture's report.
    ///
    /// # Errors
    /// Naming the pairs that failed, or what crossed in clear.
    pub fn prove_sealed(&self, pairs: &[(usize, usize)]) -> Result<CaptureReport> {
        let failed = traffic::all_pairs(&self.network, 2)?;
        if !failed.is_empty() {
            bail!("pod pairs without connectivity: {failed:?}");
        }
        let sealed = self.capture_pings(pairs)?;
        if !sealed.encrypted() {
            bail!(
                "pod traffic not sealed: {sealed}; plaintext: {:?}",
                sealed.plaintext
            );
        }
        Ok(sealed)
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
        // Containers go at once (`docker rm --force`): nothing is measured any more.
        self.pods.iter_mut().for_each(|pod| drop(pod.take()));
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

/// An API server's refusal of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// HTTP status code.
    pub code: u16,
    /// The `Status` reason, e.g. `Forbidden`.
    pub reason: String,
    /// The `Status` message.
    pub message: String,
}

/// The kubeconfig of one identity in the lab's directory.
#[must_use]
pub fn kubeconfig_path(dir: &Path, who: &Identity) -> PathBuf {
    dir.join(format!("kubeconfig.{}", who.token()))
}

/// The Node object of lab node `name` in an IPv4 lab.
#[must_use]
pub fn node_object(name: &str, index: usize, ip: &str) -> Node {
    node_object_with(name, &[ip.to_owned()], vec![topology::pod_cidr(index)])
}

/// The Node object of `node` in a lab of `stack`: an InternalIP and a pod
/// CIDR of each family, the primary first, as the kubelet and the node IPAM
/// controller write them on a dual-stack cluster.
#[must_use]
pub fn lab_node_object(node: &LabNode, stack: Stack) -> Node {
    let addresses: Vec<String> = node.addresses().iter().map(ToString::to_string).collect();
    node_object_with(
        &node.name,
        &addresses,
        topology::pod_cidrs(stack, node.index),
    )
}

fn node_object_with(name: &str, addresses: &[String], pod_cidrs: Vec<String>) -> Node {
    let mut node_addresses: Vec<NodeAddress> = addresses
        .iter()
        .map(|address| NodeAddress {
            type_: "InternalIP".into(),
            address: address.clone(),
        })
        .collect();
    node_addresses.push(NodeAddress {
        type_: "Hostname".into(),
        address: name.to_owned(),
    });
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some([("kubernetes.io/hostname".to_owned(), name.to_owned())].into()),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: pod_cidrs.first().cloned(),
            pod_cidrs: Some(pod_cidrs),
            ..NodeSpec::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(node_addresses),
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

/// What a lab with `prefix` left behind: its namespaces, its processes
/// still alive and its containers. Empty after a clean teardown.
#[must_use]
pub fn leftovers(prefix: &str) -> Vec<String> {
    let mut left = netns::list_with_prefix(&format!("{prefix}-"));
    left.extend(
        docker::labelled(Some(prefix))
            .into_iter()
            .map(|name| format!("container {name}")),
    );
    left.extend(
        registry::live_pids()
            .into_iter()
            .map(|pid| format!("process {pid}")),
    );
    left
}

/// Removes the containers and deletes the namespaces left by earlier runs (a
/// crash, a `kill -9`); how many of each.
///
/// # Errors
/// When `ip netns del` fails.
pub fn cleanup_leftovers() -> Result<(usize, usize)> {
    let containers = docker::remove_labelled();
    let names = netns::list_with_prefix(PREFIX);
    for name in &names {
        netns::ip(&["netns", "del", name])?;
    }
    Ok((names.len(), containers))
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

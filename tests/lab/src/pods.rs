//! The DaemonSets' pods on the lab's nodes, as containers ([`Runtime::Containers`]).
//!
//! Each node's network namespace belongs to a sandbox container started with
//! `--network none` (as a pod sandbox's pause container holds a pod's), named
//! for `ip netns` so the lab builds the node in it; the pods' containers join
//! it with `--network container:<sandbox>`, which is what `hostNetwork: true`
//! gives them on a real node. What else each container gets comes from the
//! manifest, through [`crate::daemonset`].
//!
//! [`Runtime::Containers`]: crate::Runtime::Containers

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Output;

use anyhow::{Context, Result, bail};

use crate::daemonset::{
    AGENT_MANIFEST, CLEANUP_MANIFEST, ContainerSpec, HttpProbe, NodeBinding, PodTemplate,
};
use crate::docker::{self, Container, LABEL};
use crate::identity::Identity;
use crate::image;
use crate::netns::{CmdError, Netns};
use crate::{Lab, kubeconfig_path};

/// What the containers runtime needs for a whole lab: the image, the two
/// DaemonSets read from `deploy/`, and each node's sandbox.
#[derive(Debug)]
pub(crate) struct ContainerRuntime {
    image: String,
    agent: PodTemplate,
    cleanup: PodTemplate,
    /// Per node, in index order; removed on drop.
    sandboxes: Vec<Container>,
}

impl ContainerRuntime {
    /// Checks docker, builds (or finds up to date) the image from the
    /// binaries the lab runs, and reads the manifests.
    pub(crate) fn prepare(wireseal: &Path, tunnel: &Path) -> Result<Self> {
        docker::check_available().context(
            "the lab's containers runtime needs docker and a running engine (see .ci/install)",
        )?;
        let bin_dir = wireseal.parent().context("wireseal has no directory")?;
        if tunnel.parent() != Some(bin_dir) {
            bail!(
                "wireseal ({}) and wireseal-tunnel ({}) are not in one directory: the image takes both from one",
                wireseal.display(),
                tunnel.display()
            );
        }
        let image = image::ensure(bin_dir)?;
        let repo = image::repo_root();
        Ok(Self {
            image,
            agent: PodTemplate::load(&repo.join(AGENT_MANIFEST))?,
            cleanup: PodTemplate::load(&repo.join(CLEANUP_MANIFEST))?,
            sandboxes: Vec::new(),
        })
    }

    /// Starts node `i`'s sandbox and names its network namespace `name`.
    pub(crate) fn node_namespace(
        &mut self,
        run_id: &str,
        i: usize,
        name: &str,
    ) -> Result<Netns, CmdError> {
        let container = format!("{run_id}-n{i}");
        // Nothing but holding the namespace: no capability, no writable root.
        let args: Vec<String> = [
            "--detach",
            "--name",
            &container,
            "--label",
            &format!("{LABEL}={run_id}"),
            "--network",
            "none",
            "--read-only",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--pull",
            "never",
            "--entrypoint",
            "sleep",
            &self.image,
            "infinity",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let sandbox = Container::run(&container, &args)?;
        let pid = sandbox.state()?.pid;
        self.sandboxes.push(sandbox);
        Netns::attach(name, pid)
    }
}

/// One DaemonSet pod running on a node: its containers, removed on drop.
#[derive(Debug)]
pub(crate) struct DaemonPod {
    template: PodTemplate,
    containers: Vec<(String, Container)>,
}

impl DaemonPod {
    fn container(&self, name: &str) -> Result<&Container> {
        self.containers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c)
            .with_context(|| format!("the {} pod has no container {name}", self.template.name))
    }

    /// The end of every container's log.
    pub(crate) fn log_tails(&self, node: usize, lines: usize) -> String {
        self.containers
            .iter()
            .map(|(name, c)| format!("--- node-{node} {name} ---\n{}", c.log_tail(lines)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Fails when a container is not running, quoting its log.
    pub(crate) fn check_running(&self) -> Result<()> {
        for (name, container) in &self.containers {
            let state = container.state()?;
            if !state.running {
                bail!(
                    "container {name} ({}) exited with {}; end of its log:\n{}",
                    container.name(),
                    state.exit_code,
                    container.log_tail(20)
                );
            }
        }
        Ok(())
    }
}

/// Which of a container's probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// `readinessProbe`.
    Readiness,
    /// `livenessProbe`.
    Liveness,
}

/// What an HTTP probe got back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeAnswer {
    /// The status code.
    pub code: u16,
    /// The body.
    pub body: String,
}

impl ProbeAnswer {
    /// The kubelet's verdict: success for 200 to 399.
    #[must_use]
    pub fn success(&self) -> bool {
        (200..400).contains(&self.code)
    }
}

/// How the `wireseal-cleanup` pod ended on a node.
#[derive(Debug, Clone)]
pub struct CleanupRun {
    /// Exit code of the init container (`wireseal cleanup`).
    pub exit_code: i32,
    /// Its log.
    pub log: String,
    /// The log of the container that keeps the pod Running afterwards.
    pub done_log: String,
}

impl Lab {
    fn container_runtime(&self) -> Result<&ContainerRuntime> {
        self.containers
            .as_ref()
            .context("this lab runs wireseal as processes, not containers (Runtime::Containers)")
    }

    fn pod(&self, i: usize) -> Result<&DaemonPod> {
        self.pods[i]
            .as_ref()
            .with_context(|| format!("node-{i} runs no pod"))
    }

    /// The agent's DaemonSet as the lab runs it.
    ///
    /// # Errors
    /// When the lab runs processes.
    pub fn agent_template(&self) -> Result<&PodTemplate> {
        Ok(&self.container_runtime()?.agent)
    }

    /// The image the containers run.
    ///
    /// # Errors
    /// When the lab runs processes.
    pub fn image(&self) -> Result<&str> {
        Ok(&self.container_runtime()?.image)
    }

    /// Runs `template`'s pod on node `i`: its init containers to completion,
    /// in order, then its containers, in order, as the kubelet starts them.
    /// `agent_args` go after the `agent` container's own arguments.
    fn run_pod(&self, i: usize, template: &PodTemplate) -> Result<(DaemonPod, Vec<(i32, String)>)> {
        let runtime = self.container_runtime()?;
        let node = &self.network.nodes[i];
        let host_root = self.node_dir(i).join("host");
        // The agent's own identity, bound to its node, as its pod's token is.
        let kubeconfig = kubeconfig_path(&self.dir, &Identity::Agent(node.name.clone()));
        let label = format!("{LABEL}={}", self.prefix);
        let binding = NodeBinding {
            node_name: &node.name,
            sandbox: runtime.sandboxes[i].name(),
            host_root: &host_root,
            image: &runtime.image,
            kubeconfig: &kubeconfig,
            label: &label,
        };
        let start = |spec: &ContainerSpec| -> Result<(String, Container)> {
            let name = format!("{}-n{i}-{}-{}", self.prefix, template.name, spec.name);
            let extra: Vec<&str> = if spec.name == "agent" {
                self.agent_args.iter().map(String::as_str).collect()
            } else {
                Vec::new()
            };
            let args = template
                .docker_run_args(spec, &binding, &name, &extra)
                .with_context(|| format!("node-{i}'s hostPath volumes for {}", spec.name))?;
            let container = Container::run(&name, &args)
                .with_context(|| format!("starting container {} on node-{i}", spec.name))?;
            Ok((spec.name.clone(), container))
        };
        let mut init = Vec::new();
        for spec in &template.init_containers {
            let (name, container) = start(spec)?;
            let code = container.wait()?;
            init.push((code, container.logs()));
            if code != 0 {
                bail!(
                    "init container {name} on node-{i} exited with {code}:\n{}",
                    container.logs()
                );
            }
        }
        let containers = template
            .containers
            .iter()
            .map(start)
            .collect::<Result<Vec<_>>>()?;
        let pod = DaemonPod {
            template: template.clone(),
            containers,
        };
        Ok((pod, init))
    }

    /// Starts the agent DaemonSet's pod (`agent`, then `tunnel`) on node `i`.
    ///
    /// # Errors
    /// When the lab runs processes, a pod already runs there, or a container
    /// cannot start.
    pub fn start_pod(&mut self, i: usize) -> Result<()> {
        if self.pods[i].is_some() {
            bail!("node-{i} already runs the wireseal pod");
        }
        let template = self.container_runtime()?.agent.clone();
        let (pod, _) = self.run_pod(i, &template)?;
        self.pods[i] = Some(pod);
        Ok(())
    }

    /// Deletes node `i`'s pod as the kubelet does: every container stopped
    /// together (SIGTERM, SIGKILL after the grace period), then removed.
    ///
    /// # Errors
    /// When there is no pod or docker fails.
    pub fn delete_pod(&mut self, i: usize) -> Result<()> {
        let pod = self.pods[i]
            .take()
            .with_context(|| format!("node-{i} runs no pod"))?;
        let containers: Vec<&Container> = pod.containers.iter().map(|(_, c)| c).collect();
        docker::stop_all(&containers, pod.template.grace)?;
        Ok(())
    }

    /// Replaces node `i`'s pod (a rolling update, `kubectl rollout restart`):
    /// the old one deleted, then a new one started.
    ///
    /// # Errors
    /// As [`Lab::delete_pod`] and [`Lab::start_pod`].
    pub fn replace_pod(&mut self, i: usize) -> Result<()> {
        self.delete_pod(i)?;
        self.start_pod(i)
    }

    /// Restarts container `name` of node `i`'s pod (a crash, an OOM kill, a
    /// failed liveness probe): stopped within the pod's grace period and
    /// started again; the pod's other containers keep running.
    ///
    /// # Errors
    /// When there is no such container or docker fails.
    pub fn restart_container(&self, i: usize, name: &str) -> Result<()> {
        let pod = self.pod(i)?;
        pod.container(name)?.restart(pod.template.grace)?;
        Ok(())
    }

    /// Stops container `name` of node `i`'s pod and leaves it stopped (its
    /// pod's other containers keep running), as when a pod is orphaned
    /// half-way through its termination.
    ///
    /// # Errors
    /// When there is no such container or docker fails.
    pub fn stop_container(&self, i: usize, name: &str) -> Result<()> {
        let pod = self.pod(i)?;
        pod.container(name)?.stop(pod.template.grace)?;
        Ok(())
    }

    /// The whole log of container `name` of node `i`'s pod.
    ///
    /// # Errors
    /// When there is no such container.
    pub fn container_log(&self, i: usize, name: &str) -> Result<String> {
        let pod = self.pod(i)?;
        Ok(pod.container(name)?.logs())
    }

    /// Whether container `name` of node `i`'s pod runs, and its last exit code.
    ///
    /// # Errors
    /// When there is no such container.
    pub fn container_state(&self, i: usize, name: &str) -> Result<docker::State> {
        let pod = self.pod(i)?;
        Ok(pod.container(name)?.state()?)
    }

    /// Runs `args` in container `name` of node `i`'s pod, as `kubectl exec` does.
    ///
    /// # Errors
    /// When there is no such container or the command fails.
    pub fn exec(&self, i: usize, name: &str, args: &[&str]) -> Result<Output> {
        let pod = self.pod(i)?;
        Ok(pod.container(name)?.exec(args)?)
    }

    /// Container `name` of node `i`'s pod's probe, run as the kubelet runs it:
    /// an HTTP GET from the node's network namespace (the kubelet's, with
    /// hostNetwork), with the probe's timeout.
    ///
    /// # Errors
    /// When the container has no such probe, or the request gets no answer
    /// (which the kubelet counts as a failure too).
    pub fn probe(&self, i: usize, name: &str, kind: ProbeKind) -> Result<ProbeAnswer> {
        let probe = self.probe_spec(name, kind)?;
        http_get(&self.network.nodes[i].ns, &probe)
    }

    /// Container `name` of node `i`'s pod's exec liveness probe, run in the
    /// container as the kubelet runs it. `Ok` when it exits 0.
    ///
    /// # Errors
    /// When the container has no exec liveness probe, or the command fails.
    pub fn exec_probe(&self, i: usize, name: &str) -> Result<()> {
        let command = self
            .agent_template()?
            .container(name)
            .with_context(|| format!("no container {name}"))?
            .liveness_exec
            .clone()
            .with_context(|| format!("container {name} has no exec liveness probe"))?;
        let args: Vec<&str> = command.iter().map(String::as_str).collect();
        self.exec(i, name, &args)?;
        Ok(())
    }

    /// The probe of the agent DaemonSet's container `name`.
    ///
    /// # Errors
    /// When it has none.
    pub fn probe_spec(&self, name: &str, kind: ProbeKind) -> Result<HttpProbe> {
        let spec = self
            .agent_template()?
            .container(name)
            .with_context(|| format!("no container {name}"))?;
        match kind {
            ProbeKind::Readiness => spec.readiness.clone(),
            ProbeKind::Liveness => spec.liveness.clone(),
        }
        .with_context(|| format!("container {name} has no {kind:?} probe"))
    }

    /// Runs the `wireseal-cleanup` DaemonSet's pod on node `i` (apply it, let
    /// the init container's `wireseal cleanup` finish and the `done`
    /// container start), then deletes it.
    ///
    /// # Errors
    /// When a container cannot start or the cleanup fails.
    pub fn run_cleanup_pod(&mut self, i: usize) -> Result<CleanupRun> {
        let template = self.container_runtime()?.cleanup.clone();
        let (pod, init) = self.run_pod(i, &template)?;
        let (exit_code, log) = init.into_iter().next().context("no init container")?;
        let done = pod.container("done")?;
        crate::wait_for(std::time::Duration::from_secs(10), || {
            !done.logs().trim().is_empty()
        })
        .context("the done container printed nothing")?;
        let done_log = done.logs();
        let containers: Vec<&Container> = pod.containers.iter().map(|(_, c)| c).collect();
        docker::stop_all(&containers, template.grace)?;
        Ok(CleanupRun {
            exit_code,
            log,
            done_log,
        })
    }

    /// Whether a socket of `protocol` (`UDP` or `TCP`, as a manifest names
    /// it) is bound to (TCP: listens on) `port` in node `i`'s namespace.
    ///
    /// # Errors
    /// When `ss` cannot run.
    pub fn port_bound(&self, i: usize, port: u16, protocol: &str) -> Result<bool> {
        let flags = if protocol == "TCP" { "-Hltn" } else { "-Hlun" };
        let output = self.network.nodes[i]
            .ns
            .exec("ss", &[flags, "sport", "=", &format!(":{port}")])?;
        Ok(!String::from_utf8_lossy(&output.stdout).trim().is_empty())
    }
}

/// An HTTP GET as the kubelet's prober sends it, from a thread in `ns`.
fn http_get(ns: &Netns, probe: &HttpProbe) -> Result<ProbeAnswer> {
    let enter = ns.enter_current_thread_fn();
    let probe = probe.clone();
    std::thread::spawn(move || -> Result<ProbeAnswer> {
        enter()?;
        let host: IpAddr = probe
            .host
            .parse()
            .with_context(|| format!("probe host {} is not an address", probe.host))?;
        let addr = SocketAddr::new(host, probe.port);
        let mut stream = TcpStream::connect_timeout(&addr, probe.timeout)
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_read_timeout(Some(probe.timeout))?;
        stream.set_write_timeout(Some(probe.timeout))?;
        write!(
            stream,
            "GET {} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/wireseal-lab\r\nAccept: */*\r\nConnection: close\r\n\r\n",
            probe.path
        )?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .with_context(|| format!("reading the answer to GET {}", probe.path))?;
        parse_response(&String::from_utf8_lossy(&response))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the probe thread panicked"))?
}

fn parse_response(text: &str) -> Result<ProbeAnswer> {
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    let code = head
        .lines()
        .next()
        .and_then(|status| status.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no HTTP status line in {head:?}"))?;
    Ok(ProbeAnswer {
        code,
        body: body.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_http_answers() {
        let answer =
            parse_response("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 5\r\n\r\nnope\n")
                .unwrap();
        assert_eq!(answer.code, 503);
        assert_eq!(answer.body, "nope\n");
        assert!(!answer.success());
        assert!(
            parse_response("HTTP/1.1 200 OK\r\n\r\nok\n")
                .unwrap()
                .success()
        );
        assert!(parse_response("garbage").is_err());
    }
}

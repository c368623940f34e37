//! The DaemonSets of `deploy/` as containers: a manifest's pod template, read
//! when the lab starts, and each container translated to `docker run`
//! options with what the kubelet would give it on a node.
//!
//! Every field of the pod template is either translated or named here as
//! having no meaning to a container runtime (scheduling, rollout), and the
//! structures refuse any other field: a manifest change the translation does
//! not handle fails the lab, instead of running the containers without it.
//!
//! What stands in for the node:
//!
//! - `hostNetwork: true`: the node's network namespace (the lab node's
//!   sandbox container, see [`NodeBinding::sandbox`]), joined with
//!   `--network container:<sandbox>`.
//! - `hostPath` directories: a per-node directory standing in for the node's
//!   `/` ([`NodeBinding::host_root`]), so nodes share no state or socket; a
//!   `CharDevice` is the machine's own device (`/dev/net/tun`), bind-mounted
//!   as the kubelet does (not `--device`, which would also allow it in the
//!   device cgroup and hide a runtime that does not).
//! - The service account's token: a kubeconfig of the fake apiserver, mounted
//!   read-only and named by `KUBECONFIG`, only where the pod mounts the token.
//! - The image: the manifest must name `ghcr.io/wireseal/wireseal:<version>`;
//!   the lab runs its own build of it ([`crate::image`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_yaml::Value;
use thiserror::Error;

/// The agent's DaemonSet, relative to the repository.
pub const AGENT_MANIFEST: &str = "deploy/kubernetes/20-daemonset.yaml";
/// The uninstall DaemonSet, relative to the repository.
pub const CLEANUP_MANIFEST: &str = "deploy/cleanup/wireseal-cleanup.yaml";
/// Where the service-account stand-in is mounted in a container.
pub const KUBECONFIG_IN_CONTAINER: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/kubeconfig";

/// A manifest the lab cannot run as it is.
#[derive(Debug, Error)]
pub enum ManifestError {
    /// The file cannot be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The manifest.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Not a DaemonSet the structures below describe (an unknown field among them).
    #[error("{path}: {source}")]
    Parse {
        /// The manifest.
        path: PathBuf,
        /// What serde found.
        #[source]
        source: serde_yaml::Error,
    },
    /// A field the translation knows but a value it has no translation for.
    #[error("{path}: {what}: {why}")]
    Unsupported {
        /// The manifest.
        path: PathBuf,
        /// The field.
        what: String,
        /// Why the lab cannot run it.
        why: String,
    },
}

// ---------------------------------------------------------------------------
// The manifest, as far as the lab reads it. `deny_unknown_fields` everywhere.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DaemonSetDoc {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: DaemonSetSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    name: String,
    #[allow(
        dead_code,
        reason = "the namespace has no meaning to a container runtime"
    )]
    namespace: Option<String>,
    #[allow(
        dead_code,
        reason = "labels select pods; no meaning to a container runtime"
    )]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(
    dead_code,
    reason = "selector and rollout settings are read to be known, not used"
)]
struct DaemonSetSpec {
    /// Which pods belong to the DaemonSet: rollout bookkeeping.
    selector: Value,
    /// One node at a time: the lab replaces pods one by one by hand.
    update_strategy: Option<Value>,
    template: Template,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(
    dead_code,
    reason = "the template's labels are read to be known, not used"
)]
struct Template {
    metadata: TemplateMetadata,
    spec: PodSpec,
}

/// The template's metadata: labels only.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(
    dead_code,
    reason = "labels select pods; no meaning to a container runtime"
)]
struct TemplateMetadata {
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code, reason = "scheduling fields are read to be known, not used")]
struct PodSpec {
    service_account_name: Option<String>,
    automount_service_account_token: Option<bool>,
    #[serde(default)]
    host_network: bool,
    #[serde(default, rename = "hostPID")]
    host_pid: bool,
    /// Scheduling and eviction: no meaning to a container runtime.
    priority_class_name: Option<String>,
    /// Scheduling: no meaning to a container runtime.
    tolerations: Option<Value>,
    /// Scheduling: no meaning to a container runtime.
    node_selector: Option<Value>,
    termination_grace_period_seconds: Option<u64>,
    #[serde(default)]
    init_containers: Vec<ContainerDoc>,
    containers: Vec<ContainerDoc>,
    #[serde(default)]
    volumes: Vec<VolumeDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ContainerDoc {
    name: String,
    image: String,
    image_pull_policy: Option<String>,
    command: Option<Vec<String>>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<EnvDoc>,
    #[serde(default)]
    ports: Vec<PortDoc>,
    readiness_probe: Option<ProbeDoc>,
    liveness_probe: Option<ProbeDoc>,
    resources: Option<ResourcesDoc>,
    security_context: Option<SecurityContextDoc>,
    #[serde(default)]
    volume_mounts: Vec<VolumeMountDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EnvDoc {
    name: String,
    value: Option<String>,
    value_from: Option<EnvSourceDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EnvSourceDoc {
    field_ref: FieldRefDoc,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FieldRefDoc {
    field_path: String,
    #[allow(dead_code, reason = "v1 is the only version of the downward API")]
    api_version: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PortDoc {
    #[allow(
        dead_code,
        reason = "a port's name only serves Services and probes by name"
    )]
    name: Option<String>,
    container_port: u16,
    protocol: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ProbeDoc {
    http_get: Option<HttpGetDoc>,
    exec: Option<ExecDoc>,
    initial_delay_seconds: Option<u64>,
    period_seconds: Option<u64>,
    timeout_seconds: Option<u64>,
    failure_threshold: Option<u32>,
    success_threshold: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ExecDoc {
    command: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct HttpGetDoc {
    host: Option<String>,
    port: u16,
    path: String,
    scheme: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourcesDoc {
    /// What the scheduler reserves: no meaning to a container runtime.
    #[allow(dead_code, reason = "requests only serve the scheduler")]
    requests: Option<BTreeMap<String, Value>>,
    limits: Option<BTreeMap<String, Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SecurityContextDoc {
    run_as_user: Option<u32>,
    allow_privilege_escalation: Option<bool>,
    read_only_root_filesystem: Option<bool>,
    privileged: Option<bool>,
    capabilities: Option<CapabilitiesDoc>,
    seccomp_profile: Option<SeccompDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CapabilitiesDoc {
    #[serde(default)]
    drop: Vec<String>,
    #[serde(default)]
    add: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeccompDoc {
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct VolumeMountDoc {
    name: String,
    mount_path: PathBuf,
    read_only: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct VolumeDoc {
    name: String,
    host_path: HostPathDoc,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostPathDoc {
    path: PathBuf,
    #[serde(rename = "type")]
    kind: Option<String>,
}

// ---------------------------------------------------------------------------
// The translation.

/// A DaemonSet's pod, as the lab runs it on each node.
#[derive(Debug, Clone)]
pub struct PodTemplate {
    /// The DaemonSet's name.
    pub name: String,
    /// `hostPID`: the containers see the machine's processes.
    pub host_pid: bool,
    /// `terminationGracePeriodSeconds` (Kubernetes' default 30 s when unset).
    pub grace: Duration,
    /// Whether the service account's token is mounted (the kubeconfig stands in).
    pub service_account: bool,
    /// Run to completion, in order, before `containers`.
    pub init_containers: Vec<ContainerSpec>,
    /// Started in order, as the kubelet does.
    pub containers: Vec<ContainerSpec>,
}

/// One container of the pod.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// Its name in the pod.
    pub name: String,
    /// `command`: replaces the image's entry point (and drops its CMD).
    pub command: Option<Vec<String>>,
    /// `args`: replace the image's CMD.
    pub args: Vec<String>,
    /// Environment, in order.
    pub env: Vec<(String, EnvValue)>,
    /// `ports` (with hostNetwork: the node's ports the pod uses).
    pub ports: Vec<(u16, String)>,
    /// `readinessProbe`.
    pub readiness: Option<HttpProbe>,
    /// `livenessProbe` with `httpGet`.
    pub liveness: Option<HttpProbe>,
    /// `livenessProbe.exec.command`: run in the container, as `kubectl exec` does.
    pub liveness_exec: Option<Vec<String>>,
    /// `resources.limits.memory`, bytes.
    pub memory_limit: Option<u64>,
    /// `resources.limits.cpu`, cores.
    pub cpu_limit: Option<f64>,
    /// The security context.
    pub security: Security,
    /// Bind mounts.
    pub mounts: Vec<Mount>,
}

/// An environment variable's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvValue {
    /// A literal.
    Literal(String),
    /// `fieldRef: spec.nodeName`.
    NodeName,
}

/// A container's security context, with Kubernetes' defaults for what is unset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Security {
    /// `runAsUser` (unset: the image's user).
    pub user: Option<u32>,
    /// `allowPrivilegeEscalation: false`.
    pub no_new_privileges: bool,
    /// `readOnlyRootFilesystem`.
    pub read_only_root: bool,
    /// `privileged`.
    pub privileged: bool,
    /// `capabilities.drop`.
    pub cap_drop: Vec<String>,
    /// `capabilities.add`.
    pub cap_add: Vec<String>,
    /// `seccompProfile.type` is `RuntimeDefault` (else unconfined, as the
    /// kubelet runs a container whose profile is unset by default).
    pub seccomp_runtime_default: bool,
}

/// A hostPath volume mounted into a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The path on the node.
    pub host_path: PathBuf,
    /// What the node must have there.
    pub kind: HostPathKind,
    /// Where it appears in the container.
    pub target: PathBuf,
    /// `readOnly`.
    pub read_only: bool,
}

/// `hostPath.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostPathKind {
    /// Created (0755) if missing.
    DirectoryOrCreate,
    /// Must exist.
    Directory,
    /// Must be a character device.
    CharDevice,
}

/// An `httpGet` probe and its timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpProbe {
    /// `host` (unset: the pod's IP, which the lab does not model: refused).
    pub host: String,
    /// `port`.
    pub port: u16,
    /// `path`.
    pub path: String,
    /// `initialDelaySeconds`.
    pub initial_delay: Duration,
    /// `periodSeconds`.
    pub period: Duration,
    /// `timeoutSeconds`.
    pub timeout: Duration,
    /// `failureThreshold`.
    pub failure_threshold: u32,
}

impl HttpProbe {
    /// How long after a start the kubelet lets this probe fail before it
    /// acts: `initialDelaySeconds + failureThreshold × periodSeconds`.
    #[must_use]
    pub fn deadline(&self) -> Duration {
        self.initial_delay + self.period * self.failure_threshold
    }
}

impl PodTemplate {
    /// Reads the DaemonSet in `path` (its only document).
    ///
    /// # Errors
    /// When it cannot be read, has a field the lab does not know, or a value
    /// it cannot run.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// [`PodTemplate::load`] on text already read; `path` names it in errors.
    ///
    /// # Errors
    /// As [`PodTemplate::load`].
    pub fn parse(path: &Path, text: &str) -> Result<Self, ManifestError> {
        let doc: DaemonSetDoc =
            serde_yaml::from_str(text).map_err(|source| ManifestError::Parse {
                path: path.to_owned(),
                source,
            })?;
        let unsupported = |what: &str, why: String| ManifestError::Unsupported {
            path: path.to_owned(),
            what: what.to_owned(),
            why,
        };
        if doc.kind != "DaemonSet" || doc.api_version != "apps/v1" {
            return Err(unsupported(
                "kind",
                format!(
                    "{} {}: expected apps/v1 DaemonSet",
                    doc.api_version, doc.kind
                ),
            ));
        }
        let pod = doc.spec.template.spec;
        if !pod.host_network {
            return Err(unsupported(
                "hostNetwork",
                "false: the lab runs pods in their node's network namespace only".into(),
            ));
        }
        let volumes = pod
            .volumes
            .iter()
            .map(|v| {
                let kind = match v.host_path.kind.as_deref() {
                    Some("DirectoryOrCreate") => HostPathKind::DirectoryOrCreate,
                    Some("Directory") => HostPathKind::Directory,
                    Some("CharDevice") => HostPathKind::CharDevice,
                    other => {
                        return Err(unsupported(
                            &format!("volumes[{}].hostPath.type", v.name),
                            format!("{other:?} is not translated"),
                        ));
                    }
                };
                Ok((v.name.clone(), (v.host_path.path.clone(), kind)))
            })
            .collect::<Result<BTreeMap<_, _>, _>>()?;
        let translate = |list: &[ContainerDoc]| {
            list.iter()
                .map(|c| translate_container(c, &volumes, &unsupported))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Self {
            name: doc.metadata.name,
            host_pid: pod.host_pid,
            grace: Duration::from_secs(pod.termination_grace_period_seconds.unwrap_or(30)),
            service_account: pod.automount_service_account_token != Some(false),
            init_containers: translate(&pod.init_containers)?,
            containers: translate(&pod.containers)?,
        })
    }

    /// The container named `name` (init containers included).
    #[must_use]
    pub fn container(&self, name: &str) -> Option<&ContainerSpec> {
        self.containers
            .iter()
            .chain(&self.init_containers)
            .find(|c| c.name == name)
    }
}

/// The image every container of `deploy/` names.
#[must_use]
pub fn manifest_image() -> String {
    format!("ghcr.io/wireseal/wireseal:{}", env!("CARGO_PKG_VERSION"))
}

fn translate_container(
    c: &ContainerDoc,
    volumes: &BTreeMap<String, (PathBuf, HostPathKind)>,
    unsupported: &impl Fn(&str, String) -> ManifestError,
) -> Result<ContainerSpec, ManifestError> {
    let at = |field: &str| format!("containers[{}].{field}", c.name);
    if c.image != manifest_image() {
        return Err(unsupported(
            &at("image"),
            format!(
                "{}: the lab runs its build of {}",
                c.image,
                manifest_image()
            ),
        ));
    }
    match c.image_pull_policy.as_deref() {
        None | Some("IfNotPresent" | "Never") => {}
        Some(other) => {
            return Err(unsupported(
                &at("imagePullPolicy"),
                format!("{other}: the lab never pulls (no registry)"),
            ));
        }
    }
    let env = c
        .env
        .iter()
        .map(|e| match (&e.value, &e.value_from) {
            (Some(value), None) => Ok((e.name.clone(), EnvValue::Literal(value.clone()))),
            (None, Some(from)) if from.field_ref.field_path == "spec.nodeName" => {
                Ok((e.name.clone(), EnvValue::NodeName))
            }
            _ => Err(unsupported(
                &at(&format!("env[{}]", e.name)),
                "only a value or fieldRef spec.nodeName is translated".into(),
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ports = c
        .ports
        .iter()
        .map(|p| {
            (
                p.container_port,
                p.protocol.clone().unwrap_or_else(|| "TCP".to_owned()),
            )
        })
        .collect();
    let probe = |p: &Option<ProbeDoc>, which: &str| -> Result<Option<HttpProbe>, ManifestError> {
        let Some(p) = p else { return Ok(None) };
        let Some(http_get) = &p.http_get else {
            // An exec probe (read separately, liveness only) or nothing.
            return if p.exec.is_some() && which == "livenessProbe" {
                Ok(None)
            } else {
                Err(unsupported(
                    &at(which),
                    "only httpGet probes and exec liveness probes are translated".into(),
                ))
            };
        };
        let (Some(host), None | Some("HTTP")) = (&http_get.host, http_get.scheme.as_deref()) else {
            return Err(unsupported(
                &at(which),
                "an HTTP probe naming its host is translated (the lab has no pod IP)".into(),
            ));
        };
        if p.success_threshold.is_some_and(|s| s != 1) {
            return Err(unsupported(
                &at(which),
                "successThreshold other than 1".into(),
            ));
        }
        Ok(Some(HttpProbe {
            host: host.clone(),
            port: http_get.port,
            path: http_get.path.clone(),
            initial_delay: Duration::from_secs(p.initial_delay_seconds.unwrap_or(0)),
            period: Duration::from_secs(p.period_seconds.unwrap_or(10)),
            timeout: Duration::from_secs(p.timeout_seconds.unwrap_or(1)),
            failure_threshold: p.failure_threshold.unwrap_or(3),
        }))
    };
    let (memory_limit, cpu_limit) = limits(c, &at, unsupported)?;
    let security = match &c.security_context {
        None => Security {
            user: None,
            no_new_privileges: false,
            read_only_root: false,
            privileged: false,
            cap_drop: Vec::new(),
            cap_add: Vec::new(),
            seccomp_runtime_default: false,
        },
        Some(s) => {
            let seccomp_runtime_default = match s.seccomp_profile.as_ref().map(|p| p.kind.as_str())
            {
                Some("RuntimeDefault") => true,
                None | Some("Unconfined") => false,
                Some(other) => {
                    return Err(unsupported(
                        &at("securityContext.seccompProfile"),
                        format!("{other} is not translated"),
                    ));
                }
            };
            let caps = s.capabilities.as_ref();
            Security {
                user: s.run_as_user,
                no_new_privileges: s.allow_privilege_escalation == Some(false),
                read_only_root: s.read_only_root_filesystem == Some(true),
                privileged: s.privileged == Some(true),
                cap_drop: caps.map(|c| c.drop.clone()).unwrap_or_default(),
                cap_add: caps.map(|c| c.add.clone()).unwrap_or_default(),
                seccomp_runtime_default,
            }
        }
    };
    let mounts = c
        .volume_mounts
        .iter()
        .map(|m| {
            let (host_path, kind) = volumes.get(&m.name).ok_or_else(|| {
                unsupported(
                    &at(&format!("volumeMounts[{}]", m.name)),
                    "no such volume".into(),
                )
            })?;
            Ok(Mount {
                host_path: host_path.clone(),
                kind: *kind,
                target: m.mount_path.clone(),
                read_only: m.read_only == Some(true),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ContainerSpec {
        name: c.name.clone(),
        command: c.command.clone(),
        args: c.args.clone(),
        env,
        ports,
        readiness: probe(&c.readiness_probe, "readinessProbe")?,
        liveness: probe(&c.liveness_probe, "livenessProbe")?,
        liveness_exec: c
            .liveness_probe
            .as_ref()
            .and_then(|p| p.exec.as_ref())
            .map(|e| e.command.clone()),
        memory_limit,
        cpu_limit,
        security,
        mounts,
    })
}

/// `resources.limits` as (memory bytes, CPU cores).
fn limits(
    c: &ContainerDoc,
    at: &impl Fn(&str) -> String,
    unsupported: &impl Fn(&str, String) -> ManifestError,
) -> Result<(Option<u64>, Option<f64>), ManifestError> {
    let mut memory = None;
    let mut cpu = None;
    for (key, value) in c
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .into_iter()
        .flatten()
    {
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => format!("{other:?}"),
        };
        let bad = || unsupported(&at(&format!("resources.limits.{key}")), text.clone());
        match key.as_str() {
            "memory" => memory = Some(memory_bytes(&text).ok_or_else(bad)?),
            "cpu" => cpu = Some(cpu_cores(&text).ok_or_else(bad)?),
            _ => return Err(bad()),
        }
    }
    Ok((memory, cpu))
}

/// A Kubernetes memory quantity (`256Mi`, `1G`, `1000`) in bytes.
fn memory_bytes(text: &str) -> Option<u64> {
    const SUFFIXES: [(&str, u64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    for (suffix, factor) in SUFFIXES {
        if let Some(number) = text.strip_suffix(suffix) {
            return number.parse::<u64>().ok()?.checked_mul(factor);
        }
    }
    text.parse().ok()
}

/// A Kubernetes CPU quantity (`500m`, `2`) in cores.
fn cpu_cores(text: &str) -> Option<f64> {
    match text.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().ok().map(|m| m / 1000.0),
        None => text.parse().ok(),
    }
}

/// What a container is bound to on one lab node.
#[derive(Debug, Clone)]
pub struct NodeBinding<'a> {
    /// The node's name (`spec.nodeName`).
    pub node_name: &'a str,
    /// The container holding the node's network namespace.
    pub sandbox: &'a str,
    /// The directory standing in for the node's `/` for hostPath directories.
    pub host_root: &'a Path,
    /// The image the lab built.
    pub image: &'a str,
    /// The fake apiserver's kubeconfig (the service account's stand-in).
    pub kubeconfig: &'a Path,
    /// Label every container of the run carries (for the cleanup of leftovers).
    pub label: &'a str,
}

impl PodTemplate {
    /// `docker run` options and arguments (after `docker run`) for `container`
    /// on a node, as container `name`, with `extra_args` after the manifest's.
    ///
    /// # Errors
    /// When a hostPath is not what its type demands (a missing device, a
    /// file where a directory should be) or a directory cannot be created.
    pub fn docker_run_args(
        &self,
        container: &ContainerSpec,
        node: &NodeBinding<'_>,
        name: &str,
        extra_args: &[&str],
    ) -> std::io::Result<Vec<String>> {
        let mut out: Vec<String> = vec![
            "--detach".into(),
            "--name".into(),
            name.into(),
            "--label".into(),
            node.label.into(),
            // The node's network namespace: hostNetwork.
            "--network".into(),
            format!("container:{}", node.sandbox),
            // IfNotPresent / Never: the image is built locally.
            "--pull".into(),
            "never".into(),
            // SIGTERM, then SIGKILL after the grace period, as the kubelet.
            "--stop-timeout".into(),
            self.grace.as_secs().to_string(),
        ];
        if self.host_pid {
            out.extend(["--pid".into(), "host".into()]);
        }
        let security = &container.security;
        if let Some(user) = security.user {
            out.extend(["--user".into(), user.to_string()]);
        }
        if security.no_new_privileges {
            out.extend(["--security-opt".into(), "no-new-privileges".into()]);
        }
        if security.read_only_root {
            out.push("--read-only".into());
        }
        if security.privileged {
            out.push("--privileged".into());
        }
        for cap in &security.cap_drop {
            out.extend(["--cap-drop".into(), cap.clone()]);
        }
        for cap in &security.cap_add {
            out.extend(["--cap-add".into(), cap.clone()]);
        }
        // The engine applies its default seccomp profile unless told otherwise:
        // RuntimeDefault is "say nothing".
        if !security.seccomp_runtime_default {
            out.extend(["--security-opt".into(), "seccomp=unconfined".into()]);
        }
        if let Some(bytes) = container.memory_limit {
            out.extend(["--memory".into(), bytes.to_string()]);
        }
        if let Some(cores) = container.cpu_limit {
            out.extend(["--cpus".into(), cores.to_string()]);
        }
        for (key, value) in &container.env {
            let value = match value {
                EnvValue::Literal(v) => v.as_str(),
                EnvValue::NodeName => node.node_name,
            };
            out.extend(["--env".into(), format!("{key}={value}")]);
        }
        if self.service_account {
            out.extend([
                "--env".into(),
                format!("KUBECONFIG={KUBECONFIG_IN_CONTAINER}"),
                "--mount".into(),
                bind(node.kubeconfig, Path::new(KUBECONFIG_IN_CONTAINER), true),
            ]);
        }
        for mount in &container.mounts {
            let source = host_source(mount, node.host_root)?;
            out.extend([
                "--mount".into(),
                bind(&source, &mount.target, mount.read_only),
            ]);
        }
        let mut command = container.command.iter().flatten();
        if let Some(entrypoint) = command.next() {
            out.extend(["--entrypoint".into(), entrypoint.clone()]);
        }
        out.push(node.image.to_owned());
        out.extend(command.cloned());
        out.extend(container.args.iter().cloned());
        out.extend(extra_args.iter().map(|a| (*a).to_owned()));
        Ok(out)
    }
}

fn bind(source: &Path, target: &Path, read_only: bool) -> String {
    let mut spec = format!(
        "type=bind,source={},target={}",
        source.display(),
        target.display()
    );
    if read_only {
        spec.push_str(",readonly");
    }
    spec
}

/// The path on the machine for a hostPath of a node whose `/` is `host_root`,
/// checked (and created) as the kubelet does for its type.
fn host_source(mount: &Mount, host_root: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _};
    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
    match mount.kind {
        // Devices are the machine's: every node's TUN devices live in its own
        // network namespace anyway.
        HostPathKind::CharDevice => {
            let meta = std::fs::metadata(&mount.host_path)?;
            if !meta.file_type().is_char_device() {
                return Err(invalid(format!(
                    "{} is not a character device",
                    mount.host_path.display()
                )));
            }
            Ok(mount.host_path.clone())
        }
        HostPathKind::Directory | HostPathKind::DirectoryOrCreate => {
            let relative = mount
                .host_path
                .strip_prefix("/")
                .map_err(|_| invalid(format!("{} is not absolute", mount.host_path.display())))?;
            let path = host_root.join(relative);
            if mount.kind == HostPathKind::DirectoryOrCreate && !path.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(&path)?;
            }
            if !path.is_dir() {
                return Err(invalid(format!("{} is not a directory", path.display())));
            }
            Ok(path)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    fn agent_text() -> String {
        std::fs::read_to_string(repo().join(AGENT_MANIFEST)).unwrap()
    }

    fn parse(text: &str) -> Result<PodTemplate, ManifestError> {
        PodTemplate::parse(Path::new(AGENT_MANIFEST), text)
    }

    fn binding<'a>(root: &'a Path, kubeconfig: &'a Path) -> NodeBinding<'a> {
        NodeBinding {
            node_name: "node-7",
            sandbox: "sb",
            host_root: root,
            image: "localhost/wireseal-lab:test",
            kubeconfig,
            label: "dev.wireseal.lab=test",
        }
    }

    #[test]
    fn the_agent_daemonset_translates_to_its_security_context() {
        let pod = PodTemplate::load(&repo().join(AGENT_MANIFEST)).unwrap();
        assert_eq!(pod.name, "wireseal");
        assert!(!pod.host_pid);
        assert!(pod.service_account);
        assert_eq!(pod.grace, Duration::from_secs(15));
        let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["agent", "tunnel"]);
        let dir = tempfile_dir();
        let kubeconfig = dir.join("kubeconfig");
        let node = binding(&dir, &kubeconfig);
        let agent = pod.container("agent").unwrap();
        let args = pod
            .docker_run_args(agent, &node, "n7-agent", &["--strict"])
            .unwrap()
            .join(" ");
        for part in [
            "--network container:sb",
            "--user 0",
            "--security-opt no-new-privileges",
            "--read-only",
            "--cap-drop ALL --cap-add NET_ADMIN",
            "--env NODE_NAME=node-7",
            "--memory 268435456",
            "--stop-timeout 15",
            &format!(
                "--mount type=bind,source={},target=/var/lib/wireseal",
                dir.join("var/lib/wireseal").display()
            ),
            "localhost/wireseal-lab:test agent --strict",
        ] {
            assert!(args.contains(part), "{part:?} not in {args}");
        }
        assert!(!args.contains("seccomp=unconfined"), "{args}");
        assert!(!args.contains("--entrypoint"), "{args}");
        let tunnel = pod.container("tunnel").unwrap();
        let args = pod
            .docker_run_args(tunnel, &node, "n7-tunnel", &[])
            .unwrap()
            .join(" ");
        assert!(
            args.contains("--mount type=bind,source=/dev/net/tun,target=/dev/net/tun"),
            "{args}"
        );
        assert!(
            args.ends_with("--entrypoint wireseal-tunnel-entrypoint localhost/wireseal-lab:test"),
            "{args}"
        );
        let readiness = agent.readiness.as_ref().unwrap();
        assert_eq!(
            (
                readiness.host.as_str(),
                readiness.port,
                readiness.path.as_str()
            ),
            ("127.0.0.1", 9830, "/readyz")
        );
        let liveness = agent.liveness.as_ref().unwrap();
        assert_eq!(liveness.deadline(), Duration::from_secs(10 + 20 * 3));
        let tunnel = pod.container("tunnel").unwrap();
        assert_eq!(
            tunnel.liveness_exec.as_deref(),
            Some(
                &[
                    "wireseal-tunnel-entrypoint".to_owned(),
                    "--check".to_owned()
                ][..]
            )
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_cleanup_daemonset_translates_with_host_pid_and_no_token() {
        let pod = PodTemplate::load(&repo().join(CLEANUP_MANIFEST)).unwrap();
        assert!(pod.host_pid);
        assert!(!pod.service_account);
        assert_eq!(pod.init_containers.len(), 1);
        assert_eq!(pod.init_containers[0].args, ["cleanup", "--drain", "15"]);
        let done = pod.container("done").unwrap();
        assert_eq!(done.command.as_ref().unwrap()[..2], ["sh", "-c"]);
        assert!(done.security.cap_add.is_empty());
    }

    fn tempfile_dir() -> PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wireseal-lab-daemonset-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// What a manifest change the translation does not handle looks like:
    /// an error naming it, never containers started without it.
    #[test]
    fn a_field_the_translation_does_not_know_fails() {
        let text = agent_text();
        for (from, to, expected) in [
            (
                "runAsUser: 0\n",
                "runAsUser: 0\n            runAsGroup: 0\n",
                "runAsGroup",
            ),
            (
                "hostNetwork: true\n",
                "hostNetwork: true\n      dnsPolicy: ClusterFirstWithHostNet\n",
                "dnsPolicy",
            ),
            (
                "      volumes:\n",
                "      volumes:\n        - name: scratch\n          emptyDir: {}\n",
                "emptyDir",
            ),
            (
                "fieldPath: spec.nodeName",
                "fieldPath: status.hostIP",
                "spec.nodeName",
            ),
            ("type: RuntimeDefault", "type: Localhost", "Localhost"),
            ("type: CharDevice", "type: Socket", "Socket"),
            ("hostNetwork: true", "hostNetwork: false", "hostNetwork"),
            ("memory: 256Mi", "memory: lots", "lots"),
            (
                "imagePullPolicy: IfNotPresent",
                "imagePullPolicy: Always",
                "Always",
            ),
            ("              host: 127.0.0.1\n", "", "host"),
        ] {
            assert!(text.contains(from), "the manifest no longer has {from:?}");
            let changed = text.replacen(from, to, 1);
            let err = parse(&changed).expect_err(expected).to_string();
            assert!(err.contains(expected), "{expected}: {err}");
        }
    }

    #[test]
    fn quantities() {
        assert_eq!(memory_bytes("64Mi"), Some(64 << 20));
        assert_eq!(memory_bytes("1G"), Some(1_000_000_000));
        assert_eq!(memory_bytes("1000"), Some(1000));
        assert_eq!(memory_bytes("1.5Gi"), None);
        assert_eq!(cpu_cores("500m"), Some(0.5));
        assert_eq!(cpu_cores("2"), Some(2.0));
    }
}

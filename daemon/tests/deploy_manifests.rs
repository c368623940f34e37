//! The manifests in deploy/ are valid Kubernetes objects (checked offline
//! against the published schemas), grant the agent exactly what it uses, and
//! run it with flags, paths and ports its real command line accepts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::{CommandFactory as _, Parser as _};
use serde::Deserialize;
use serde_yaml::Value;
use wireseal::cli::{Cli, Command as CliCommand};
use wireseal::config::Config;

/// Where `kubectl apply -f` installs from, and the uninstall helper beside it.
const DIRS: [&str; 2] = ["kubernetes", "cleanup"];

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn manifests_in(dir: &str) -> Vec<PathBuf> {
    let dir = deploy_dir().join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", dir.display());
    files
}

fn manifests() -> Vec<PathBuf> {
    DIRS.iter().flat_map(|dir| manifests_in(dir)).collect()
}

fn documents_in(dir: &str) -> Vec<Value> {
    manifests_in(dir)
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

fn documents() -> Vec<Value> {
    documents_in("kubernetes")
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

// ---------------------------------------------------------------------------
// The DaemonSet (deploy/kubernetes/20-daemonset.yaml) and the cleanup
// DaemonSet (deploy/cleanup/), against the agent's real command line.

fn daemonset<'a>(docs: &'a [Value], name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == "DaemonSet" && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no DaemonSet {name} in deploy/"))
}

fn pod_spec(ds: &Value) -> &Value {
    &ds["spec"]["template"]["spec"]
}

fn seq(value: &Value) -> &[Value] {
    value.as_sequence().map_or(&[], Vec::as_slice)
}

fn container<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
    seq(&pod[list])
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {list} entry named {name}"))
}

fn strings(value: &Value) -> Vec<String> {
    seq(value)
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

fn env_var<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    seq(&container["env"]).iter().find(|v| v["name"] == name)
}

/// Every environment variable a `wireseal` subcommand reads (its own flags and
/// the global ones), with the flag it stands for and the flag's default, from
/// the clap definition the binary parses with.
fn env_flags(subcommand: &str) -> BTreeMap<String, (String, Option<String>)> {
    let mut root = Cli::command();
    root.build();
    let sub = root
        .find_subcommand(subcommand)
        .unwrap_or_else(|| panic!("wireseal has no subcommand {subcommand}"));
    sub.get_arguments()
        .filter_map(|arg| {
            let env = arg.get_env()?.to_str()?.to_owned();
            let long = arg.get_long()?.to_owned();
            let default = arg
                .get_default_values()
                .first()
                .map(|v| v.to_string_lossy().into_owned());
            Some((env, (long, default)))
        })
        .collect()
}

/// The command line a container runs: the image's entry point (`wireseal`,
/// checked in deploy_image.rs) with the container's `args`, and every
/// `WIRESEAL_*` variable turned into the flag it sets. Fails on a variable the
/// subcommand does not read and on a value that only restates a default.
fn invocation(container: &Value, subcommand: &str) -> Vec<String> {
    assert!(
        container.get("command").is_none(),
        "{:?}: the image's entry point is wireseal; pass `args` only",
        container["name"]
    );
    let mut argv = vec!["wireseal".to_owned()];
    argv.extend(strings(&container["args"]));
    assert_eq!(argv.get(1).map(String::as_str), Some(subcommand));
    let flags = env_flags(subcommand);
    let defaults: BTreeMap<&str, Option<&str>> = flags
        .values()
        .map(|(long, default)| (long.as_str(), default.as_deref()))
        .collect();
    for arg in &argv[2..] {
        if let Some((long, value)) = arg.strip_prefix("--").and_then(|a| a.split_once('=')) {
            assert_ne!(
                defaults.get(long).copied().flatten(),
                Some(value),
                "{arg} restates the default; leave it out"
            );
        }
    }
    for var in seq(&container["env"]) {
        let name = var["name"].as_str().unwrap();
        if name == "NODE_NAME" {
            continue;
        }
        let (long, default) = flags.get(name).unwrap_or_else(|| {
            panic!(
                "{name} is not read by `wireseal {subcommand}`; it reads {:?}",
                flags.keys().collect::<Vec<_>>()
            )
        });
        let value = var["value"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: expected a plain value"));
        assert_ne!(
            Some(value),
            default.as_deref(),
            "{name}={value} restates the default of --{long}; leave it out"
        );
        argv.push(format!("--{long}={value}"));
    }
    argv
}

/// Parses and validates the agent container's command line exactly as
/// `wireseal agent` does at start-up.
fn agent_config(container: &Value) -> Config {
    let argv = invocation(container, "agent");
    let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    let CliCommand::Agent(args) = cli.command else {
        panic!("{argv:?} is not `wireseal agent`")
    };
    Config::from_args(&args, Some("node-1".to_owned())).unwrap_or_else(|e| panic!("{argv:?}: {e}"))
}

/// What `wireseal agent` runs with when nothing is set.
fn agent_defaults() -> Config {
    let cli = Cli::try_parse_from(["wireseal", "agent"]).unwrap();
    let CliCommand::Agent(args) = cli.command else {
        panic!()
    };
    Config::from_args(&args, Some("node-1".to_owned())).unwrap()
}

fn agent_daemonset() -> Value {
    daemonset(&documents(), "wireseal").clone()
}

/// The agent container and the configuration it starts with.
fn agent_container() -> (Value, Config) {
    let ds = agent_daemonset();
    let agent = container(pod_spec(&ds), "containers", "agent").clone();
    let config = agent_config(&agent);
    (agent, config)
}

/// The host path mounted at `mount_path` in `container`.
fn host_path_at<'a>(pod: &'a Value, container: &Value, mount_path: &Path) -> &'a Value {
    let mount = seq(&container["volumeMounts"])
        .iter()
        .find(|m| m["mountPath"].as_str().map(Path::new) == Some(mount_path))
        .unwrap_or_else(|| {
            panic!(
                "{:?} mounts nothing at {}",
                container["name"],
                mount_path.display()
            )
        });
    let volume = seq(&pod["volumes"])
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap_or_else(|| panic!("no volume {:?}", mount["name"]));
    &volume["hostPath"]
}

fn image() -> String {
    format!("ghcr.io/wireseal/wireseal:{}", env!("CARGO_PKG_VERSION"))
}

#[test]
fn daemonset_runs_on_every_node_under_the_rbac_service_account() {
    let docs = documents();
    let account = find(&docs, "ServiceAccount");
    let ds = daemonset(&docs, "wireseal");
    assert_eq!(
        ds["metadata"]["namespace"],
        account["metadata"]["namespace"]
    );
    let pod = pod_spec(ds);
    assert_eq!(pod["serviceAccountName"], account["metadata"]["name"]);
    assert_eq!(
        pod["hostNetwork"], true,
        "the agent programs the node's network"
    );
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    // One toleration with no key and operator Exists tolerates every taint,
    // control-plane and NoExecute ones included.
    assert!(
        seq(&pod["tolerations"])
            .iter()
            .any(|t| t["operator"] == "Exists"
                && t.get("key").is_none()
                && t.get("effect").is_none()),
        "the agent must tolerate every taint: {:?}",
        pod["tolerations"]
    );
    let strategy = &ds["spec"]["updateStrategy"];
    assert_eq!(strategy["type"], "RollingUpdate");
    assert_eq!(strategy["rollingUpdate"]["maxUnavailable"], 1);
    assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap() > 0);
    let selector = &ds["spec"]["selector"]["matchLabels"];
    for (key, value) in selector.as_mapping().unwrap() {
        assert_eq!(&ds["spec"]["template"]["metadata"]["labels"][key], value);
    }
}

#[test]
fn agent_gets_node_name_from_spec_node_name() {
    let ds = agent_daemonset();
    let agent = container(pod_spec(&ds), "containers", "agent");
    let node_name = env_var(agent, "NODE_NAME").expect("NODE_NAME on the agent");
    assert_eq!(
        node_name["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName",
        "the downward API's node name is the Node object's name"
    );
    // And the agent really falls back to NODE_NAME: without it, it refuses to start.
    let cli = Cli::try_parse_from(["wireseal", "agent"]).unwrap();
    let CliCommand::Agent(args) = cli.command else {
        panic!()
    };
    assert!(Config::from_args(&args, None).is_err());
    assert_eq!(
        Config::from_args(&args, Some("node-7".into()))
            .unwrap()
            .node_name,
        "node-7"
    );
}

#[test]
fn agent_flags_parse_with_the_real_command_line() {
    let (agent, config) = agent_container();
    let agent = &agent;
    // Nothing is overridden: the manifest runs the agent's own defaults.
    assert_eq!(config, agent_defaults());
    // A variable the agent does not read would silently do nothing: caught.
    let mut typo = agent.clone();
    typo["env"]
        .as_sequence_mut()
        .unwrap()
        .push(serde_yaml::from_str("{name: WIRESEAL_LISTENPORT, value: '51831'}").unwrap());
    let caught = std::panic::catch_unwind(|| invocation(&typo, "agent"));
    assert!(caught.is_err(), "an unknown WIRESEAL_ variable must fail");
    // A changed setting goes through the real parser and validation.
    let mut changed = agent.clone();
    changed["env"]
        .as_sequence_mut()
        .unwrap()
        .push(serde_yaml::from_str("{name: WIRESEAL_LISTEN_PORT, value: '51831'}").unwrap());
    assert_eq!(agent_config(&changed).listen_port, 51831);
}

#[test]
fn host_paths_are_the_agents_own_paths() {
    let ds = agent_daemonset();
    let pod = pod_spec(&ds);
    let agent = container(pod, "containers", "agent");
    let tunnel = container(pod, "containers", "tunnel");
    let config = agent_config(agent);

    // The key survives pod restarts: the state directory is the host's.
    let state = host_path_at(pod, agent, &config.state_dir);
    assert_eq!(
        state["path"].as_str().map(Path::new),
        Some(config.state_dir.as_path())
    );
    assert_eq!(state["type"], "DirectoryOrCreate");

    // Agent and tunnel meet at the UAPI socket; the host's `wg` looks there too.
    for c in [agent, tunnel] {
        let uapi = host_path_at(pod, c, &config.uapi_dir);
        assert_eq!(
            uapi["path"].as_str().map(Path::new),
            Some(config.uapi_dir.as_path())
        );
    }
    let tun = host_path_at(pod, tunnel, Path::new("/dev/net/tun"));
    assert_eq!(tun["path"], "/dev/net/tun");
    assert_eq!(
        tun["type"], "CharDevice",
        "never let the runtime create a directory there"
    );

    // The tunnel creates the agent's interface.
    let interface =
        env_var(tunnel, "WIRESEAL_INTERFACE").expect("WIRESEAL_INTERFACE on the tunnel");
    assert_eq!(interface["value"].as_str(), Some(config.interface.as_str()));
}

#[test]
fn tunnel_container_sets_only_variables_that_something_reads() {
    let ds = agent_daemonset();
    let pod = pod_spec(&ds);
    let tunnel = container(pod, "containers", "tunnel");
    let main_rs = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tunnel/src/main.rs"),
    )
    .unwrap();
    let entrypoint =
        std::fs::read_to_string(deploy_dir().join("image/tunnel-entrypoint.sh")).unwrap();
    for var in seq(&tunnel["env"]) {
        let name = var["name"].as_str().unwrap();
        assert!(
            main_rs.contains(&format!("env = \"{name}\""))
                || entrypoint.contains(&format!("${{{name}")),
            "{name} is read neither by wireseal-tunnel nor by its entry point"
        );
    }
}

#[test]
fn wireguard_port_is_the_listen_port() {
    let (agent, config) = agent_container();
    let agent = &agent;
    let ports = seq(&agent["ports"]);
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert_eq!(ports[0]["containerPort"], u64::from(config.listen_port));
    assert_eq!(ports[0]["protocol"], "UDP");
}

#[test]
fn probes_target_the_status_endpoint() {
    let (agent, config) = agent_container();
    let agent = &agent;
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &agent[probe]["httpGet"];
        // hostNetwork: the kubelet shares the node's namespace, and the agent
        // listens on --status-addr, not on the pod (= node) IP.
        assert_eq!(
            get["host"].as_str(),
            Some(config.status_addr.ip().to_string().as_str()),
            "{probe}"
        );
        assert_eq!(get["port"], u64::from(config.status_addr.port()), "{probe}");
        assert_eq!(get["path"], path, "{probe}");
    }
}

#[tokio::test]
async fn the_probe_paths_answer_on_the_real_status_endpoint() {
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let (addr, serving) = wireseal::http::serve(
        "127.0.0.1:0".parse().unwrap(),
        wireseal::status::SharedStatus::default(),
        wireseal::metrics::Metrics::new(),
        shutdown,
    )
    .await
    .unwrap();
    tokio::spawn(serving);
    let get =
        move |path: &'static str| tokio::task::spawn_blocking(move || http_status(addr, path));
    assert_eq!(get("/healthz").await.unwrap(), 200);
    // Not ready before the first Node list: the rollout waits for that.
    assert_eq!(get("/readyz").await.unwrap(), 503);
    assert_eq!(get("/no-such-path").await.unwrap(), 404);
}

fn http_status(addr: SocketAddr, path: &str) -> u16 {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"))
}

#[test]
fn every_container_runs_with_net_admin_only_and_the_crate_version() {
    let docs: Vec<Value> = DIRS.iter().flat_map(|dir| documents_in(dir)).collect();
    let mut seen = 0;
    for ds in docs.iter().filter(|d| d["kind"] == "DaemonSet") {
        let pod = pod_spec(ds);
        for c in seq(&pod["initContainers"])
            .iter()
            .chain(seq(&pod["containers"]))
        {
            let name = format!(
                "{}/{}",
                ds["metadata"]["name"].as_str().unwrap(),
                c["name"].as_str().unwrap()
            );
            assert_eq!(c["image"].as_str(), Some(image().as_str()), "{name}");
            assert_eq!(c["imagePullPolicy"], "IfNotPresent", "{name}");
            let security = &c["securityContext"];
            assert_ne!(security["privileged"], true, "{name}");
            assert_eq!(security["allowPrivilegeEscalation"], false, "{name}");
            assert_eq!(
                strings(&security["capabilities"]["drop"]),
                ["ALL"],
                "{name}"
            );
            let added = strings(&security["capabilities"]["add"]);
            assert!(
                added.is_empty() || added == ["NET_ADMIN"],
                "{name}: {added:?}"
            );
            seen += 1;
        }
    }
    assert_eq!(seen, 4, "agent, tunnel, cleanup, done");
}

#[test]
fn cleanup_daemonset_undoes_what_the_agent_set_up() {
    let docs = documents_in("cleanup");
    let ds = daemonset(&docs, "wireseal-cleanup");
    let pod = pod_spec(ds);
    assert_eq!(ds["metadata"]["namespace"], "wireseal");
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(
        pod["hostPID"], true,
        "to stop a userspace datapath by its pid"
    );
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert!(
        seq(&pod["tolerations"])
            .iter()
            .any(|t| t["operator"] == "Exists" && t.get("key").is_none())
    );
    let cleanup = container(pod, "initContainers", "cleanup");
    let argv = invocation(cleanup, "cleanup");
    let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    let CliCommand::Cleanup(args) = cli.command else {
        panic!("{argv:?} is not `wireseal cleanup`")
    };
    // It removes what the agent, run with its defaults, creates.
    let agent = agent_defaults();
    assert_eq!(args.interface, agent.interface);
    assert_eq!(args.route_table, agent.route_table);
    assert_eq!(args.rule_priority, agent.rule_priority);
    assert_eq!(args.uapi_dir, agent.uapi_dir);
    let uapi = host_path_at(pod, cleanup, &agent.uapi_dir);
    assert_eq!(
        uapi["path"].as_str().map(Path::new),
        Some(agent.uapi_dir.as_path())
    );
}

// ---------------------------------------------------------------------------
// The Helm chart (deploy/helm/wireseal). `helm` cannot be installed on the
// project's machines, so the chart is never rendered here: these tests hold its
// values and templates to the plain manifests and to the agent's command line.

fn chart_dir() -> PathBuf {
    deploy_dir().join("helm/wireseal")
}

fn chart_file(name: &str) -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(chart_dir().join(name)).unwrap()).unwrap()
}

fn chart_templates() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(chart_dir().join("templates"))
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&path).unwrap())
        })
        .collect();
    out.sort();
    assert!(out.len() >= 3, "{out:?}");
    out
}

/// `listenPort` → `listen_port`, as sprig's `snakecase` does.
fn snake_case(key: &str) -> String {
    let mut out = String::new();
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

#[test]
fn chart_version_is_the_crate_version() {
    let chart = chart_file("Chart.yaml");
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn chart_defaults_are_the_plain_manifests() {
    let values = chart_file("values.yaml");
    let chart = chart_file("Chart.yaml");
    let ds = agent_daemonset();
    let pod = pod_spec(&ds);
    let agent = container(pod, "containers", "agent");
    let tunnel = container(pod, "containers", "tunnel");
    let tag = match values["image"]["tag"].as_str() {
        Some("") | None => chart["appVersion"].as_str().unwrap(),
        Some(tag) => tag,
    };
    assert_eq!(
        format!("{}:{tag}", values["image"]["repository"].as_str().unwrap()),
        agent["image"].as_str().unwrap()
    );
    assert_eq!(values["image"]["pullPolicy"], agent["imagePullPolicy"]);
    assert_eq!(values["agent"]["resources"], agent["resources"]);
    assert_eq!(values["tunnel"]["resources"], tunnel["resources"]);
    assert_eq!(values["tunnel"]["privileged"], false);
    assert_eq!(values["tolerations"], pod["tolerations"]);
    assert_eq!(values["nodeSelector"], pod["nodeSelector"]);
    assert_eq!(values["priorityClassName"], pod["priorityClassName"]);
    assert_eq!(
        values["terminationGracePeriodSeconds"],
        pod["terminationGracePeriodSeconds"]
    );
    assert_eq!(
        values["maxUnavailable"],
        ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"]
    );
    // Like the manifest, the chart passes no agent flag by default.
    for (key, value) in values["agent"]["settings"].as_mapping().unwrap() {
        assert_eq!(value, "", "{key:?} must default to the agent's own default");
    }
    assert_eq!(values["agent"]["extraEnv"], Value::Sequence(Vec::new()));
}

#[test]
fn chart_settings_are_agent_flags_and_template_defaults_are_the_agents() {
    let values = chart_file("values.yaml");
    let flags = env_flags("agent");
    let settings = values["agent"]["settings"].as_mapping().unwrap();
    for key in settings.keys() {
        let key = key.as_str().unwrap();
        let env = format!("WIRESEAL_{}", snake_case(key).to_uppercase());
        let (long, _) = flags.get(&env).unwrap_or_else(|| {
            panic!("agent.settings.{key} becomes {env}, which `wireseal agent` does not read")
        });
        assert_eq!(*long, snake_case(key).replace('_', "-"));
    }
    for wanted in [
        "datapath",
        "interface",
        "listenPort",
        "mtu",
        "fwmark",
        "routeTable",
        "persistentKeepalive",
    ] {
        assert!(
            settings.contains_key(wanted),
            "values.yaml: agent.settings.{wanted}"
        );
    }
    // Where a template falls back to a literal, it must be the agent's default.
    let mut fallbacks = 0;
    for (name, text) in chart_templates() {
        for (at, _) in text.match_indices(".Values.agent.settings.") {
            let rest = &text[at + ".Values.agent.settings.".len()..];
            let key: String = rest
                .chars()
                .take_while(char::is_ascii_alphanumeric)
                .collect();
            let Some(literal) = rest[key.len()..].trim_start().strip_prefix("| default ") else {
                continue;
            };
            let literal: String = literal
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != '}')
                .filter(|c| *c != '"')
                .collect();
            let env = format!("WIRESEAL_{}", snake_case(&key).to_uppercase());
            let default = flags[&env].1.clone();
            assert_eq!(default.as_deref(), Some(literal.as_str()), "{name}: {key}");
            fallbacks += 1;
        }
    }
    assert_eq!(fallbacks, 2, "interface and listenPort");
}

/// The parts of the plain DaemonSet that carry the agent's paths, ports and
/// probes, as the template must have them too (they are not templated).
#[test]
fn chart_daemonset_keeps_the_agents_paths_ports_and_probes() {
    let template = std::fs::read_to_string(chart_dir().join("templates/daemonset.yaml")).unwrap();
    let config = agent_defaults();
    let expected = [
        "hostNetwork: true".to_owned(),
        "fieldPath: spec.nodeName".to_owned(),
        r#"args: ["agent"]"#.to_owned(),
        r#"command: ["wireseal-tunnel-entrypoint"]"#.to_owned(),
        format!("mountPath: {}", config.state_dir.display()),
        format!("path: {}", config.state_dir.display()),
        format!("mountPath: {}", config.uapi_dir.display()),
        format!("path: {}", config.uapi_dir.display()),
        "path: /dev/net/tun".to_owned(),
        "type: CharDevice".to_owned(),
        format!("host: {}", config.status_addr.ip()),
        format!("port: {}", config.status_addr.port()),
        "path: /readyz".to_owned(),
        "path: /healthz".to_owned(),
        r#"drop: ["ALL"]"#.to_owned(),
        r#"add: ["NET_ADMIN"]"#.to_owned(),
    ];
    for line in expected {
        assert!(
            template.contains(&line),
            "templates/daemonset.yaml lacks {line:?}"
        );
    }
}

#[test]
fn chart_rbac_rules_are_the_plain_rules() {
    let rules = |text: &str| {
        let start = text.find("\nrules:").unwrap();
        let end = start + text[start..].find("\n---").unwrap();
        text[start..end].to_owned()
    };
    let plain = std::fs::read_to_string(deploy_dir().join("kubernetes/10-rbac.yaml")).unwrap();
    let chart = std::fs::read_to_string(chart_dir().join("templates/rbac.yaml")).unwrap();
    assert_eq!(rules(&chart), rules(&plain));
}

#[test]
fn chart_templates_are_balanced_and_use_only_existing_values() {
    let values = chart_file("values.yaml");
    for (name, text) in chart_templates() {
        assert_eq!(
            text.matches("{{").count(),
            text.matches("}}").count(),
            "{name}"
        );
        let actions: Vec<&str> = text
            .split("{{")
            .skip(1)
            .map(|a| a.split("}}").next().unwrap().trim_start_matches('-').trim())
            .collect();
        let opened = actions
            .iter()
            .filter(|a| {
                ["if ", "with ", "range ", "define "]
                    .iter()
                    .any(|k| a.starts_with(k))
            })
            .count();
        let closed = actions
            .iter()
            .filter(|a| a.trim_end_matches('-').trim() == "end")
            .count();
        assert_eq!(opened, closed, "{name}: blocks opened and ended");
        for (at, _) in text.match_indices(".Values.") {
            let path: String = text[at + ".Values.".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '.')
                .collect();
            let mut node = &values;
            for part in path.trim_end_matches('.').split('.') {
                node = node
                    .get(part)
                    .unwrap_or_else(|| panic!("{name}: .Values.{path} is not in values.yaml"));
            }
        }
    }
}

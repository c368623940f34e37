//! The manifests in deploy/ are valid Kubernetes objects (checked offline
//! against the published schemas), grant the agent exactly what it uses, and
//! run it with flags, paths and ports its real command line accepts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};

use clap::Parser as _;
use serde_yaml::Value;
use wireseal::cli::{Cli, Command as CliCommand};
use wireseal::config::Config;

mod manifests;

use manifests::*;

#[test]
fn manifests_pass_strict_schema_validation() {
    validate_strict(None, &manifests());
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
            // The removal of the node's own wireseal.dev/agent-not-ready
            // taint (a JSON patch of spec.taints; the admission policy
            // allows nothing else on the Node itself).
            "/nodes:patch",
            "/nodes:watch",
            "events.k8s.io/events:create",
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
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tunnel/src/main.rs"),
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
fn the_tunnel_is_probed_for_datapath_progress() {
    let ds = agent_daemonset();
    let tunnel = container(pod_spec(&ds), "containers", "tunnel");
    let probe = &tunnel["livenessProbe"];
    let command: Vec<&str> = seq(&probe["exec"]["command"])
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(command, ["wireseal-tunnel-entrypoint", "--check"]);
    // The tunnel's own deadline for the answer fits in the probe's timeout.
    let timeout = probe["timeoutSeconds"].as_u64().unwrap();
    assert!(
        wireseal_tunnel::uapi::CHECK_DEADLINE.as_secs() < timeout,
        "timeoutSeconds {timeout}"
    );
    assert!(
        wireseal_tunnel::health::STALE_AFTER.as_secs()
            < probe["periodSeconds"].as_u64().unwrap()
                * probe["failureThreshold"].as_u64().unwrap(),
        "a stuck thread is seen before the probe gives up"
    );
}

#[test]
fn wireguard_port_is_the_listen_port() {
    let (agent, config) = agent_container();
    let agent = &agent;
    let ports = seq(&agent["ports"]);
    assert_eq!(ports.len(), 2, "{ports:?}");
    assert_eq!(ports[0]["name"], "wireguard");
    assert_eq!(ports[0]["containerPort"], u64::from(config.listen_port));
    assert_eq!(ports[0]["protocol"], "UDP");
}

#[test]
fn the_metrics_port_is_the_agents_metrics_address() {
    let (agent, config) = agent_container();
    let metrics = seq(&agent["ports"])
        .iter()
        .find(|p| p["name"] == "metrics")
        .cloned()
        .expect("a port named metrics, for a PodMonitor");
    let addr = config.metrics_addr.expect("metrics on by default");
    assert_eq!(metrics["containerPort"], u64::from(addr.port()));
    assert_eq!(metrics["protocol"], "TCP");
    // Scraped over hostNetwork from off the node: not loopback.
    assert!(addr.ip().is_unspecified(), "{addr}");
    // Never the probe port.
    assert_ne!(addr.port(), config.status_addr.port());
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
    let serve = |endpoint| {
        let shutdown = shutdown.clone();
        async move {
            let listener =
                wireseal::http::bind_tcp("127.0.0.1:0".parse().unwrap(), "--flag", "ENV")
                    .await
                    .unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(wireseal::http::serve_tcp(
                listener,
                endpoint,
                wireseal::status::SharedStatus::default(),
                wireseal::metrics::Metrics::new(),
                shutdown,
            ));
            addr
        }
    };
    let probes = serve(wireseal::http::Endpoint::Probes).await;
    let metrics = serve(wireseal::http::Endpoint::Metrics).await;
    let get = move |addr, path: &'static str| {
        tokio::task::spawn_blocking(move || http_status(addr, path))
    };
    assert_eq!(get(probes, "/healthz").await.unwrap(), 200);
    // Not ready before the first Node list: the rollout waits for that.
    assert_eq!(get(probes, "/readyz").await.unwrap(), 503);
    assert_eq!(get(probes, "/no-such-path").await.unwrap(), 404);
    // The peer listing is not on TCP at all, the metrics only on their own port.
    assert_eq!(get(probes, "/status").await.unwrap(), 404);
    assert_eq!(get(probes, "/metrics").await.unwrap(), 404);
    assert_eq!(get(metrics, "/metrics").await.unwrap(), 200);
    assert_eq!(get(metrics, "/status").await.unwrap(), 404);
    assert_eq!(get(metrics, "/healthz").await.unwrap(), 404);
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

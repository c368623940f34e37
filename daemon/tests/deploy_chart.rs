//! The Helm chart in deploy/helm is held to the plain manifests: its version is
//! the crate's, its default values are the manifests' values, its settings are
//! agent flags whose template fallbacks are the agent's defaults, and its
//! templates keep the manifests' paths, ports, probes and RBAC rules. `helm` is
//! not installable on the build machines, so the templates are read as text
//! (deploy/README.md says the chart is not rendered in CI).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod manifests;

use std::path::PathBuf;

use serde_yaml::Value;

use manifests::*;

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
    // The metrics address is the agent's default, its port the plain port's.
    let addr = agent_defaults().metrics_addr.unwrap();
    assert_eq!(values["metrics"]["addr"], addr.to_string());
    let port = seq(&agent["ports"])
        .iter()
        .find(|p| p["name"] == "metrics")
        .map(|p| p["containerPort"].clone());
    assert_eq!(port, Some(Value::from(addr.port())));
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
        r#"command: ["wireseal-tunnel-entrypoint", "--check"]"#.to_owned(),
        format!("mountPath: {}", config.state_dir.display()),
        format!("path: {}", config.state_dir.display()),
        format!("mountPath: {}", config.uapi_dir.display()),
        format!("path: {}", config.uapi_dir.display()),
        "path: /dev/net/tun".to_owned(),
        "type: CharDevice".to_owned(),
        "name: WIRESEAL_METRICS_ADDR".to_owned(),
        "value: {{ .Values.metrics.addr | quote }}".to_owned(),
        "- name: metrics".to_owned(),
        r#"containerPort: {{ splitList ":" .Values.metrics.addr | last }}"#.to_owned(),
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

// ---------------------------------------------------------------------------
// The monitoring objects (templates/monitoring.yaml): rendered here for the
// few actions they use, as helm would with both monitors enabled and release
// `wireseal` in namespace `wireseal`. Their CRDs are not in
// kubernetes-validate's schemas, so their structure is checked against the
// fields of monitoring.coreos.com/v1 they may use; the Service is validated.

/// The agent's metrics port (`--metrics-addr`'s default port, the
/// DaemonSet's port named `metrics`).
const METRICS_PORT: u64 = 9831;

fn rendered_monitoring() -> Vec<Value> {
    let values = chart_file("values.yaml");
    let monitoring = &values["monitoring"];
    assert_eq!(monitoring["podMonitor"]["enabled"], false, "off by default");
    assert_eq!(
        monitoring["serviceMonitor"]["enabled"], false,
        "off by default"
    );
    assert_eq!(monitoring["labels"], Value::Mapping(Default::default()));
    let template = std::fs::read_to_string(chart_dir().join("templates/monitoring.yaml")).unwrap();
    let mut skipping = false;
    render_template(
        &template,
        |line| {
            let trimmed = line.trim();
            // `with` an empty map renders nothing.
            if trimmed == "{{- with .Values.monitoring.labels }}" {
                skipping = true;
                return None;
            }
            if skipping {
                skipping = trimmed != "{{- end }}";
                return None;
            }
            if trimmed == "{{- if .Values.monitoring.podMonitor.enabled }}"
                || trimmed == "{{- if .Values.monitoring.serviceMonitor.enabled }}"
                || trimmed == "{{- end }}"
            {
                return None;
            }
            // templates/_helpers.tpl's labels.
            if trimmed == "{{- include \"wireseal.labels\" . | nindent 4 }}" {
                return Some(format!(
                    "    app.kubernetes.io/name: wireseal\n    \
                     app.kubernetes.io/instance: wireseal\n    \
                     app.kubernetes.io/version: \"{}\"\n    \
                     app.kubernetes.io/managed-by: Helm",
                    env!("CARGO_PKG_VERSION")
                ));
            }
            Some(line.to_owned())
        },
        &[(
            "{{ .Values.monitoring.interval }}",
            monitoring["interval"].as_str().unwrap(),
        )],
    )
}

fn keys(value: &Value) -> Vec<String> {
    value
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect()
}

/// Every key of `value` is one of `allowed` (a field of the CRD's schema).
fn only(value: &Value, allowed: &[&str], what: &str) {
    for key in keys(value) {
        assert!(
            allowed.contains(&key.as_str()),
            "{what}: unknown field {key}"
        );
    }
}

/// A scrape endpoint of either monitor: the agent's `metrics` port and path,
/// with the pod's node as a label.
fn check_endpoint(endpoint: &Value, what: &str) {
    only(
        endpoint,
        &["port", "path", "interval", "scrapeTimeout", "relabelings"],
        what,
    );
    assert_eq!(endpoint["port"], "metrics", "{what}");
    assert_eq!(endpoint["path"], "/metrics", "{what}");
    let relabel = &seq(&endpoint["relabelings"])[0];
    only(relabel, &["sourceLabels", "targetLabel"], what);
    assert_eq!(
        strings(&relabel["sourceLabels"]),
        ["__meta_kubernetes_pod_node_name"]
    );
    assert_eq!(relabel["targetLabel"], "node_name");
}

#[test]
fn chart_monitors_scrape_the_agents_metrics_port() {
    let docs = rendered_monitoring();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["PodMonitor", "Service", "ServiceMonitor"]);
    // The agent pods, as the chart's DaemonSet labels them.
    let daemonset = std::fs::read_to_string(chart_dir().join("templates/daemonset.yaml")).unwrap();
    let agent_pods: Value = serde_yaml::from_str(
        "app.kubernetes.io/name: wireseal\n\
         app.kubernetes.io/instance: wireseal\n\
         app.kubernetes.io/component: agent\n",
    )
    .unwrap();
    for line in [
        "app.kubernetes.io/name: wireseal",
        "app.kubernetes.io/instance: {{ .Release.Name }}",
        "app.kubernetes.io/component: agent",
    ] {
        assert!(daemonset.contains(line), "the DaemonSet's selector: {line}");
    }

    for doc in &docs {
        only(doc, &["apiVersion", "kind", "metadata", "spec"], "object");
        assert_eq!(doc["metadata"]["namespace"], "wireseal");
    }
    let pod_monitor = &docs[0];
    assert_eq!(pod_monitor["apiVersion"], "monitoring.coreos.com/v1");
    only(
        &pod_monitor["spec"],
        &["selector", "podMetricsEndpoints"],
        "PodMonitor",
    );
    assert_eq!(pod_monitor["spec"]["selector"]["matchLabels"], agent_pods);
    let endpoints = seq(&pod_monitor["spec"]["podMetricsEndpoints"]);
    assert_eq!(endpoints.len(), 1);
    check_endpoint(&endpoints[0], "PodMonitor");

    let service = &docs[1];
    assert_eq!(service["spec"]["clusterIP"], "None", "headless");
    assert_eq!(service["spec"]["selector"], agent_pods);
    let port = &seq(&service["spec"]["ports"])[0];
    assert_eq!(port["name"], "metrics");
    assert_eq!(port["port"].as_u64(), Some(METRICS_PORT));
    assert_eq!(port["targetPort"], "metrics");

    let service_monitor = &docs[2];
    assert_eq!(service_monitor["apiVersion"], "monitoring.coreos.com/v1");
    only(
        &service_monitor["spec"],
        &["selector", "endpoints"],
        "ServiceMonitor",
    );
    // It selects the Service (and only it: the pods have another component).
    let selector = service_monitor["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .unwrap();
    let service_labels = service["metadata"]["labels"].as_mapping().unwrap();
    for (key, value) in selector {
        assert_eq!(service_labels.get(key), Some(value), "{key:?}");
    }
    assert_ne!(
        selector.get("app.kubernetes.io/component"),
        agent_pods.get("app.kubernetes.io/component")
    );
    let endpoints = seq(&service_monitor["spec"]["endpoints"]);
    assert_eq!(endpoints.len(), 1);
    check_endpoint(&endpoints[0], "ServiceMonitor");

    // The Service is core Kubernetes: validated like the plain manifests.
    let dir = std::env::temp_dir().join(format!("wireseal-monitoring-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("service.yaml");
    std::fs::write(&file, serde_yaml::to_string(service).unwrap()).unwrap();
    validate_strict(None, std::slice::from_ref(&file));
    std::fs::remove_dir_all(&dir).unwrap();
}

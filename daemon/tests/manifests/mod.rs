//! Reading deploy/: the manifests, their documents, and the agent's own
//! command line and defaults to hold them against. Shared by the manifest and
//! chart tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::{CommandFactory as _, Parser as _};
use serde::Deserialize;
use serde_yaml::Value;
use wireseal::cli::{Cli, Command as CliCommand};
use wireseal::config::Config;

/// Where `kubectl apply -f` installs from, and the uninstall helper beside it.
pub const DIRS: [&str; 2] = ["kubernetes", "cleanup"];

pub fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

pub fn manifests_in(dir: &str) -> Vec<PathBuf> {
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

pub fn manifests() -> Vec<PathBuf> {
    DIRS.iter().flat_map(|dir| manifests_in(dir)).collect()
}

/// A chart template as helm renders it for release `wireseal` in namespace
/// `wireseal`, for the few actions the caller handles: `line` keeps, rewrites
/// or (`None`) drops each line, `values` are replaced as written; any action
/// left fails. Returns the YAML documents.
pub fn render_template<T: serde::de::DeserializeOwned>(
    template: &str,
    mut line: impl FnMut(&str) -> Option<String>,
    values: &[(&str, &str)],
) -> Vec<T> {
    let mut text = String::new();
    for kept in template.lines().filter_map(&mut line) {
        text.push_str(&kept);
        text.push('\n');
    }
    let mut text = text
        .replace("{{ .Release.Name }}", "wireseal")
        .replace("{{ .Release.Namespace }}", "wireseal");
    for (action, value) in values {
        text = text.replace(action, value);
    }
    assert!(
        !text.contains("{{"),
        "an action the test does not render:\n{text}"
    );
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|doc| !doc.is_null())
        .map(|doc| serde_yaml::from_value(doc).unwrap())
        .collect()
}

pub fn documents_in(dir: &str) -> Vec<Value> {
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

/// Runs `kubernetes-validate --strict` (offline schemas) on `files`, against
/// `version` (its default, 1.37, when None); fails the test on any finding.
pub fn validate_strict(version: Option<&str>, files: &[PathBuf]) {
    let mut command = std::process::Command::new("kubernetes-validate");
    command.arg("--strict");
    if let Some(version) = version {
        command.args(["--kubernetes-version", version]);
    }
    let output = command.args(files).output().expect(
        "kubernetes-validate is required: python3 -m pip install kubernetes-validate==1.37.0 (see .ci/install)",
    );
    assert!(
        output.status.success(),
        "kubernetes-validate --strict failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

pub fn documents() -> Vec<Value> {
    documents_in("kubernetes")
}

pub fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in deploy/"))
}

// ---------------------------------------------------------------------------
// The DaemonSet (deploy/kubernetes/20-daemonset.yaml) and the cleanup
// DaemonSet (deploy/cleanup/), against the agent's real command line.

pub fn daemonset<'a>(docs: &'a [Value], name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == "DaemonSet" && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no DaemonSet {name} in deploy/"))
}

pub fn pod_spec(ds: &Value) -> &Value {
    &ds["spec"]["template"]["spec"]
}

pub fn seq(value: &Value) -> &[Value] {
    value.as_sequence().map_or(&[], Vec::as_slice)
}

pub fn container<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
    seq(&pod[list])
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {list} entry named {name}"))
}

pub fn strings(value: &Value) -> Vec<String> {
    seq(value)
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

pub fn env_var<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    seq(&container["env"]).iter().find(|v| v["name"] == name)
}

/// Every environment variable a `wireseal` subcommand reads (its own flags and
/// the global ones), with the flag it stands for and the flag's default, from
/// the clap definition the binary parses with.
pub fn env_flags(subcommand: &str) -> BTreeMap<String, (String, Option<String>)> {
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
pub fn invocation(container: &Value, subcommand: &str) -> Vec<String> {
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
pub fn agent_config(container: &Value) -> Config {
    let argv = invocation(container, "agent");
    let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    let CliCommand::Agent(args) = cli.command else {
        panic!("{argv:?} is not `wireseal agent`")
    };
    Config::from_args(&args, Some("node-1".to_owned())).unwrap_or_else(|e| panic!("{argv:?}: {e}"))
}

/// What `wireseal agent` runs with when nothing is set.
pub fn agent_defaults() -> Config {
    let cli = Cli::try_parse_from(["wireseal", "agent"]).unwrap();
    let CliCommand::Agent(args) = cli.command else {
        panic!()
    };
    Config::from_args(&args, Some("node-1".to_owned())).unwrap()
}

pub fn agent_daemonset() -> Value {
    daemonset(&documents(), "wireseal").clone()
}

/// The agent container and the configuration it starts with.
pub fn agent_container() -> (Value, Config) {
    let ds = agent_daemonset();
    let agent = container(pod_spec(&ds), "containers", "agent").clone();
    let config = agent_config(&agent);
    (agent, config)
}

/// The host path mounted at `mount_path` in `container`.
pub fn host_path_at<'a>(pod: &'a Value, container: &Value, mount_path: &Path) -> &'a Value {
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

pub fn image() -> String {
    format!("ghcr.io/wireseal/wireseal:{}", env!("CARGO_PKG_VERSION"))
}

//! `wireseal verify`: evidence an auditor can keep. From any machine with a
//! kubeconfig it judges every node from the API server (datapath, key,
//! coverage, a ready agent); on a node it adds the local agent's view and,
//! for each peer, an active probe proving the path is encrypted (see
//! [`probe`]). A human report or `--json`; the exit code says whether
//! everything passed.
//!
//! On a node it also reads the kernel's leak counter (see [`crate::leaks`])
//! itself, before and after the probes. Packets counted *while verify runs*
//! fail it: plaintext is leaving now. A non-zero counter from before fails
//! it in strict mode (which promises that nothing leaks) and is reported,
//! without failing, in non-strict mode, whose first seconds with a peer
//! leak by design (traffic keeps the CNI's path until the handshake). A
//! counter that cannot be read (no `nftables`) is reported, not a failure.
#![allow(
    clippy::print_stdout,
    reason = "printing the report is this command's output"
)]

pub mod capture;
pub mod cluster;
pub mod probe;

use std::net::IpAddr;
use std::process::ExitCode;

use anyhow::{Context, Result};
use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::ListParams;
use serde::Serialize;
use wireseal_core::coverage::PeerState;

use wireseal_netlink::nftables::{LEAK_TABLE, LeakCounter};

use crate::cli::VerifyArgs;
use crate::status::{AgentStatus, PeerStatus};
use cluster::NodeReport;
use probe::ProbeReport;

/// Exit code when something was checked and failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code when nothing could be checked.
pub const EXIT_UNCHECKED: u8 = 2;

/// Everything `wireseal verify` found.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// When the report was made (RFC 3339).
    pub generated_at: String,
    /// True when everything checked passed.
    pub ok: bool,
    /// Every node as the API server shows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterSection>,
    /// This node's agent and its peers, probed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalSection>,
    /// Every failure, each naming its node.
    pub failures: Vec<String>,
    /// What could not be checked, and why.
    pub unchecked: Vec<String>,
}

/// The cluster half.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSection {
    /// Whether the agent's pods were listed (`wireseal` namespace).
    pub agent_pods_checked: bool,
    /// Every node.
    pub nodes: Vec<NodeReport>,
}

/// The node half.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalSection {
    /// This node.
    pub node: String,
    /// The datapath in use.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datapath: Option<wireseal_core::DatapathKind>,
    /// The key the datapath holds (base64).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// "N/N peers encrypted, …".
    pub coverage: String,
    /// Every remote node.
    pub peers: Vec<PeerCheck>,
    /// The kernel's leak counter around the probes.
    pub leaks: LeakCheck,
    /// What is wrong on this node itself (not with one peer).
    pub failures: Vec<String>,
    /// What was seen and does not fail the check.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The leak counter read from the kernel before and after the probes.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LeakCheck {
    /// Both families' packets counted before the probes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
    /// And after them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    /// Why the counter could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
}

/// One peer, as this node sees and probes it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerCheck {
    /// Node name.
    pub node: String,
    /// Its state in the agent's coverage.
    pub state: PeerState,
    /// The probes (one per family both sides have a host source in).
    pub probes: Vec<ProbeReport>,
    /// What is wrong.
    pub failures: Vec<String>,
}

/// Runs `wireseal verify`.
///
/// # Errors
/// Only for what stops the report itself (no runtime); every check's
/// failure is in the report and the exit code.
pub fn run(args: &VerifyArgs) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut unchecked = Vec::new();
    let cluster = if args.no_cluster {
        None
    } else {
        match runtime.block_on(cluster_section(args)) {
            Ok(section) => Some(section),
            Err(err) => {
                unchecked.push(format!("the cluster: {err:#}"));
                None
            }
        }
    };
    let local = if args.no_local {
        None
    } else {
        match crate::status_cmd::fetch(&args.state_dir) {
            Ok(status) => {
                let before = runtime.block_on(read_leaks(&args.interface));
                let mut local = local_section(args, &status, cluster.as_ref());
                let after = runtime.block_on(read_leaks(&args.interface));
                judge_leaks(&mut local, status.strict, before, after);
                Some(local)
            }
            Err(err) => {
                unchecked.push(format!("this node: {err:#}"));
                None
            }
        }
    };
    let report = assemble(cluster, local, unchecked);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("encoding the report")?
        );
    } else {
        print!("{}", render(&report));
    }
    Ok(ExitCode::from(
        if report.cluster.is_none() && report.local.is_none() {
            EXIT_UNCHECKED
        } else if report.ok {
            0
        } else {
            EXIT_FAILED
        },
    ))
}

async fn cluster_section(args: &VerifyArgs) -> Result<ClusterSection> {
    read_cluster(args.kubeconfig.as_deref(), &args.namespace).await
}

/// Every Node (and, when they can be listed, the agent's pods in
/// `namespace`), judged.
///
/// # Errors
/// When the API server cannot be reached or the Nodes cannot be listed.
pub async fn read_cluster(
    kubeconfig: Option<&std::path::Path>,
    namespace: &str,
) -> Result<ClusterSection> {
    let (client, _) = crate::k8s::client(kubeconfig).await?;
    let nodes: Vec<Node> = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .context("listing Nodes")?
        .items;
    // Without the pods a dead agent's last condition looks healthy; with no
    // right to list them (or no such namespace) the report says so.
    let pods: Option<Vec<Pod>> = Api::<Pod>::namespaced(client, namespace)
        .list(&ListParams::default().labels("app.kubernetes.io/name=wireseal"))
        .await
        .ok()
        .map(|list| list.items)
        .filter(|pods| !pods.is_empty());
    Ok(ClusterSection {
        agent_pods_checked: pods.is_some(),
        nodes: cluster::assess(&nodes, pods.as_deref()),
    })
}

fn local_section(
    args: &VerifyArgs,
    status: &AgentStatus,
    cluster: Option<&ClusterSection>,
) -> LocalSection {
    let mut failures = Vec::new();
    if !status.synced {
        failures.push("the agent has not read the complete Node list".to_owned());
    }
    if !status.last_apply_ok {
        failures.push(format!(
            "the last reconcile failed: {}",
            status.failures.join("; ")
        ));
    }
    let announced = cluster.and_then(|c| {
        c.nodes
            .iter()
            .find(|n| n.name == status.node)
            .and_then(|n| n.public_key.clone())
    });
    let held = status.public_key.map(|k| k.to_string());
    if let (Some(announced), Some(held)) = (&announced, &held)
        && announced != held
    {
        failures.push(format!(
            "the Node announces key {announced}, the datapath holds {held}"
        ));
    }
    let skip = skip_interfaces(&args.interface);
    let peers = status
        .peers
        .iter()
        .filter(|peer| args.peer.is_empty() || args.peer.contains(&peer.node))
        .map(|peer| check_peer(args, status, peer, &skip))
        .collect();
    LocalSection {
        node: status.node.clone(),
        datapath: status.datapath,
        public_key: held,
        coverage: status.coverage_line(),
        peers,
        leaks: LeakCheck::default(),
        failures,
        warnings: Vec::new(),
    }
}

/// Both families' leaked packets as the kernel counts them now.
async fn read_leaks(tunnel: &str) -> Result<u64, String> {
    let mut counter = LeakCounter::open(tunnel).map_err(|err| err.to_string())?;
    match counter.read().await {
        Ok(Some(counts)) => Ok(counts.ipv4.packets.saturating_add(counts.ipv6.packets)),
        Ok(None) => Err(format!(
            "no leak counter for {tunnel} (nftables table inet {LEAK_TABLE}): is the agent running?"
        )),
        Err(err) => Err(err.to_string()),
    }
}

/// The module's failure semantics for the leak counter.
fn judge_leaks(
    local: &mut LocalSection,
    strict: bool,
    before: Result<u64, String>,
    after: Result<u64, String>,
) {
    let (before, after) = match (before, after) {
        (Ok(before), Ok(after)) => (before, after),
        (Err(why), _) | (_, Err(why)) => {
            local
                .warnings
                .push(format!("leak counter not checked: {why}"));
            local.leaks.unavailable = Some(why);
            return;
        }
    };
    local.leaks.before = Some(before);
    local.leaks.after = Some(after);
    // A table made anew meanwhile counts from zero: all of it is new.
    let during = if after >= before {
        after - before
    } else {
        after
    };
    if during > 0 {
        local.failures.push(format!(
            "{during} packet(s) left for other nodes' pods outside the tunnel while verify ran"
        ));
    } else if after > 0 {
        let seen = format!(
            "{after} packet(s) have left for other nodes' pods outside the tunnel since the leak counter started"
        );
        if strict {
            local.failures.push(seen);
        } else {
            local.warnings.push(format!(
                "{seen} (non-strict mode lets traffic out before a handshake)"
            ));
        }
    }
}

fn check_peer(
    args: &VerifyArgs,
    status: &AgentStatus,
    peer: &PeerStatus,
    skip: &[u32],
) -> PeerCheck {
    let mut failures = Vec::new();
    if peer.state != PeerState::Encrypted {
        failures.push(format!("not encrypted: {}", peer.state));
        failures.extend(peer.issues.iter().cloned());
    }
    let mut probes = Vec::new();
    if !args.no_probe && peer.public_key.is_some() {
        let targets = probe_targets(status, peer);
        if targets.is_empty() {
            failures.push(
                "no probe possible: no host source on both sides in a common family inside the peer's pod CIDRs"
                    .to_owned(),
            );
        }
        for (source, target) in targets {
            match probe::probe(source, target, peer.endpoint, skip.to_vec()) {
                Ok(report) => {
                    failures.extend(report.failures());
                    probes.push(report);
                }
                Err(err) => failures.push(format!("probe {source} → {target}: {err:#}")),
            }
        }
    }
    PeerCheck {
        node: peer.node.clone(),
        state: peer.state,
        probes,
        failures,
    }
}

/// (local source, peer address) per family both have: the peer's published
/// host source, if it lies inside the pod CIDRs routed to it (a peer's
/// claim is not trusted to name any other address).
fn probe_targets(status: &AgentStatus, peer: &PeerStatus) -> Vec<(IpAddr, IpAddr)> {
    let routed: Vec<IpNetwork> = peer
        .allowed_ips
        .iter()
        .filter_map(|cidr| cidr.parse().ok())
        .collect();
    status
        .host_sources
        .iter()
        .filter_map(|source| {
            let target = peer.host_sources.iter().find(|target| {
                target.is_ipv4() == source.is_ipv4()
                    && routed.iter().any(|cidr| cidr.contains(**target))
            })?;
            Some((*source, *target))
        })
        .collect()
}

/// The tunnel's and loopback's interface indexes: the canary is in clear
/// there by design.
fn skip_interfaces(tunnel: &str) -> Vec<u32> {
    [tunnel, "lo"]
        .iter()
        .filter_map(|name| nix::net::if_::if_nametoindex(*name).ok())
        .collect()
}

fn assemble(
    cluster: Option<ClusterSection>,
    local: Option<LocalSection>,
    unchecked: Vec<String>,
) -> Report {
    let mut failures = Vec::new();
    if let Some(cluster) = &cluster {
        for node in &cluster.nodes {
            failures.extend(node.failures.iter().map(|f| format!("{}: {f}", node.name)));
        }
    }
    if let Some(local) = &local {
        failures.extend(
            local
                .failures
                .iter()
                .map(|f| format!("{}: {f}", local.node)),
        );
        for peer in &local.peers {
            failures.extend(
                peer.failures
                    .iter()
                    .map(|f| format!("{} → {}: {f}", local.node, peer.node)),
            );
        }
    }
    Report {
        generated_at: k8s_openapi::jiff::Timestamp::now().to_string(),
        ok: failures.is_empty() && (cluster.is_some() || local.is_some()),
        cluster,
        local,
        failures,
        unchecked,
    }
}

/// The cluster table (also `wireseal status --all`).
#[must_use]
pub fn render_cluster(cluster: &ClusterSection) -> String {
    // Every field from a Node is escaped on its own, line breaks included,
    // so no value can forge a line of the report.
    use crate::status_cmd::printable as p;
    let mut out = format!(
        "cluster: {} node(s){}\n",
        cluster.nodes.len(),
        if cluster.agent_pods_checked {
            ""
        } else {
            " (agent pods not listed: a stopped agent's last condition cannot be told from a live one)"
        }
    );
    let width = crate::status_cmd::name_width(cluster.nodes.iter().map(|n| n.name.as_str()));
    out.push_str(&format!(
        "  {:<width$} {:<10} {:<12} {:<10} {:<7} {}\n",
        "NODE", "DATAPATH", "KEY", "ENCRYPTED", "PEERS", "WHY"
    ));
    for node in &cluster.nodes {
        let key = node
            .public_key
            .as_deref()
            .map_or_else(|| "-".to_owned(), |k| k.chars().take(10).collect());
        let (status, why) = node
            .condition
            .as_ref()
            .map_or(("-".to_owned(), String::new()), |c| {
                (p(&c.status), p(&c.message))
            });
        let key = p(&key);
        let peers = match (node.peers_encrypted, node.peers_expected) {
            (Some(encrypted), Some(expected)) => format!("{encrypted}/{expected}"),
            _ => "-".to_owned(),
        };
        // The node's own word when it has one; what is wrong otherwise (a
        // node without wireseal has no condition).
        let why = if why.is_empty() {
            p(&node.failures.join("; "))
        } else {
            why
        };
        out.push_str(&format!(
            "  {:<width$} {:<10} {key:<12} {status:<10} {peers:<7} {why}\n",
            p(&node.name),
            node.datapath
                .map_or_else(|| "-".to_owned(), |d| d.to_string()),
        ));
    }
    out
}

/// The human report. Node names, reasons and messages come from Nodes, so
/// control characters are escaped, as `wireseal status` does: field by field,
/// line breaks included (a message with a line break could forge a line of
/// the report), and the whole text again.
#[must_use]
pub fn render(report: &Report) -> String {
    use crate::status_cmd::printable as p;
    let mut out = format!("wireseal verify, {}\n", report.generated_at);
    if let Some(cluster) = &report.cluster {
        out.push('\n');
        out.push_str(&render_cluster(cluster));
    }
    if let Some(local) = &report.local {
        out.push_str(&format!(
            "\nthis node: {}, datapath {}, {}\n",
            p(&local.node),
            local
                .datapath
                .map_or_else(|| "none".to_owned(), |d| d.to_string()),
            local.coverage
        ));
        for peer in &local.peers {
            let verdict = if peer.failures.is_empty() {
                "ok"
            } else {
                "FAIL"
            };
            out.push_str(&format!(
                "  {:<24} {:<14} {verdict}",
                p(&peer.node),
                peer.state.to_string()
            ));
            for probe in &peer.probes {
                out.push_str(&format!(
                    "  probe {}→{}: {}/{} replies, canary in clear {}, WireGuard out/in {}/{}{}",
                    probe.source,
                    probe.target,
                    probe.received,
                    probe.sent,
                    probe.seen.canary_in_clear,
                    probe.seen.wireguard_out,
                    probe.seen.wireguard_in,
                    if probe.seen.esp > 0 {
                        format!(", ESP {}", probe.seen.esp)
                    } else {
                        String::new()
                    }
                ));
            }
            out.push('\n');
        }
        if let (Some(before), Some(after)) = (local.leaks.before, local.leaks.after) {
            out.push_str(&format!(
                "  leak counter: {before} packet(s) before the probes, {after} after\n"
            ));
        }
        for warning in &local.warnings {
            out.push_str(&format!("  warning: {warning}\n"));
        }
    }
    for line in &report.unchecked {
        out.push_str(&format!("\nnot checked: {}", p(line)));
    }
    if !report.unchecked.is_empty() {
        out.push('\n');
    }
    if report.failures.is_empty() {
        if report.ok {
            out.push_str("\nPASS: every check passed\n");
        }
    } else {
        out.push_str(&format!("\nFAIL: {} failure(s)\n", report.failures.len()));
        for failure in &report.failures {
            out.push_str(&format!("  - {}\n", p(failure)));
        }
    }
    crate::status_cmd::printable_lines(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_nodes_cannot_forge_report_lines_or_reach_the_terminal() {
        let node = NodeReport {
            name: "node-b".into(),
            datapath: None,
            public_key: Some("\u{1b}]0;key\u{7}".into()),
            condition: Some(cluster::ConditionReport {
                status: "True\u{1b}[2J".into(),
                reason: "Encrypted".into(),
                message: "fine\n\nPASS: every check passed".into(),
                last_transition_time: None,
            }),
            peers_expected: None,
            peers_encrypted: None,
            agent_ready: None,
            failures: vec!["bad\nPASS: every check passed".into()],
        };
        let report = assemble(
            Some(ClusterSection {
                agent_pods_checked: true,
                nodes: vec![node],
            }),
            None,
            vec!["the \u{9b}31m probe\nPASS".into()],
        );
        let text = render(&report);
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert!(
            !text.lines().any(|l| l.trim_start().starts_with("PASS")),
            "{text}"
        );
        assert!(text.contains("fine\\n\\nPASS"), "{text}");
    }

    fn section() -> LocalSection {
        LocalSection {
            node: "node-0".into(),
            datapath: None,
            public_key: None,
            coverage: String::new(),
            peers: Vec::new(),
            leaks: LeakCheck::default(),
            failures: Vec::new(),
            warnings: Vec::new(),
        }
    }

    #[test]
    fn leaks_while_verify_runs_fail_and_old_ones_fail_only_in_strict_mode() {
        let mut clean = section();
        judge_leaks(&mut clean, true, Ok(0), Ok(0));
        assert!(clean.failures.is_empty() && clean.warnings.is_empty());

        let mut now = section();
        judge_leaks(&mut now, false, Ok(4), Ok(9));
        assert_eq!(
            now.failures,
            ["5 packet(s) left for other nodes' pods outside the tunnel while verify ran"]
        );

        let mut old = section();
        judge_leaks(&mut old, false, Ok(4), Ok(4));
        assert!(old.failures.is_empty());
        assert!(
            old.warnings[0].contains("4 packet(s) have left"),
            "{:?}",
            old.warnings
        );
        let mut strict = section();
        judge_leaks(&mut strict, true, Ok(4), Ok(4));
        assert_eq!(strict.failures.len(), 1);

        let mut unread = section();
        judge_leaks(&mut unread, true, Err("no nftables".into()), Ok(0));
        assert!(unread.failures.is_empty());
        assert_eq!(unread.warnings, ["leak counter not checked: no nftables"]);
        let json = serde_json::to_value(&unread.leaks).unwrap();
        assert_eq!(json["unavailable"], "no nftables");
    }
}

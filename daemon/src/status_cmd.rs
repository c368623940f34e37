//! `wireseal status`: reads the running agent's `/status` from its root-only
//! socket (`STATE_DIR/status.sock`) and prints the peers and the coverage line.
#![allow(
    clippy::print_stdout,
    reason = "printing the status is this command's output"
)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use crate::cli::StatusArgs;
use crate::status::AgentStatus;

const TIMEOUT: Duration = Duration::from_secs(5);
/// Largest status document accepted (a 5,000-node cluster is ~2 MiB).
const MAX_BODY: u64 = 64 << 20;

/// Runs `wireseal status`.
///
/// # Errors
/// When the agent cannot be reached or answers with something else than its status.
/// Exits 0 when every expected peer is encrypted and the last pass applied,
/// 1 otherwise (for scripts and probes).
pub fn run(args: &StatusArgs) -> Result<ExitCode> {
    if args.all {
        return run_all(args);
    }
    let socket = crate::http::status_socket(&args.state_dir);
    let body = fetch_raw(&socket)?;
    let status: AgentStatus = serde_json::from_str(&body).with_context(|| {
        format!(
            "the answer of {} is not a wireseal status",
            socket.display()
        )
    })?;
    if args.json {
        println!("{body}");
    } else {
        print!("{}", render(&status, SystemTime::now()));
    }
    let healthy = status.synced && status.last_apply_ok && status.coverage.complete();
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `wireseal status --all`: the cluster from the API server, as
/// `wireseal verify --no-local` judges it; exits 1 unless every node is
/// encrypted.
fn run_all(args: &StatusArgs) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let cluster = runtime.block_on(crate::verify::read_cluster(
        args.kubeconfig.as_deref(),
        &args.namespace,
    ))?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&cluster).context("encoding the cluster")?
        );
    } else {
        print!(
            "{}",
            printable_lines(&crate::verify::render_cluster(&cluster))
        );
    }
    Ok(if cluster.nodes.iter().all(|n| n.ok()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Reads the status of the agent whose state directory is `state_dir`.
///
/// # Errors
/// When the agent cannot be reached or its answer is not a status.
pub fn fetch(state_dir: &Path) -> Result<AgentStatus> {
    let socket = crate::http::status_socket(state_dir);
    let body = fetch_raw(&socket)?;
    serde_json::from_str(&body).with_context(|| {
        format!(
            "the answer of {} is not a wireseal status",
            socket.display()
        )
    })
}

fn fetch_raw(socket: &Path) -> Result<String> {
    let context = || {
        format!(
            "reaching the agent's status socket {} (is `wireseal agent` running on this node, \
             and are you root? see --state-dir)",
            socket.display()
        )
    };
    let mut stream = UnixStream::connect(socket).with_context(context)?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .with_context(context)?;
    // HTTP/1.0: the server closes after one answer, so reading to the end is the whole reply.
    stream
        .write_all(b"GET /status HTTP/1.0\r\nHost: wireseal\r\n\r\n")
        .with_context(context)?;
    let mut raw = String::new();
    stream
        .take(MAX_BODY)
        .read_to_string(&mut raw)
        .with_context(context)?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .with_context(|| format!("{} sent no HTTP answer", socket.display()))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!(
            "{} answered {}",
            socket.display(),
            head.lines().next().unwrap_or_default()
        );
    }
    Ok(body.to_owned())
}

/// Text for a terminal: node names, issues and warnings come from other
/// nodes' values, so a control character (an escape sequence that moves the
/// cursor, rewrites a line or sets a terminal title) is shown escaped, never
/// passed to the terminal. Line breaks too: one field is one line.
#[must_use]
pub fn printable(text: &str) -> String {
    if text.chars().all(|c| !c.is_control()) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The table `wireseal status` prints.
#[must_use]
pub fn render(status: &AgentStatus, now: SystemTime) -> String {
    printable_lines(&render_raw(status, now))
}

/// Escapes control characters in every line, keeping the line breaks.
#[must_use]
pub fn printable_lines(text: &str) -> String {
    text.split_inclusive('\n')
        .map(|line| match line.strip_suffix('\n') {
            Some(body) => printable(body) + "\n",
            None => printable(line),
        })
        .collect()
}

fn render_raw(status: &AgentStatus, now: SystemTime) -> String {
    let mut out = String::new();
    let datapath = status
        .datapath
        .map_or_else(|| "none yet".to_owned(), |d| d.to_string());
    let key = status
        .public_key
        .map_or_else(|| "-".to_owned(), |k| k.to_string());
    let sources = if status.host_sources.is_empty() {
        "none".to_owned()
    } else {
        let all: Vec<String> = status
            .host_sources
            .iter()
            .map(ToString::to_string)
            .collect();
        all.join(",")
    };
    out.push_str(&format!(
        "node {}  datapath {datapath}  encryption {}  mtu {}  host src {sources}  key {key}\n",
        printable(&status.node),
        status.encryption,
        status.tunnel_mtu
    ));
    if let Some(rotation) = &status.key_rotation {
        out.push_str(&format!(
            "key rotation: switching to {} at {}\n",
            rotation.next_public_key, rotation.switch_at
        ));
    }
    let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let width = name_width(status.peers.iter().map(|p| p.node.as_str()));
    out.push_str(&format!(
        "{:<width$} {:<16} {:<24} {:<10} {:>10} {:>10}  {}\n",
        "NODE", "STATE", "ENDPOINT", "HANDSHAKE", "RX", "TX", "ALLOWED IPS / ISSUES"
    ));
    for peer in &status.peers {
        let endpoint = peer
            .endpoint
            .map_or_else(|| "-".to_owned(), |e| e.to_string());
        let handshake = peer.last_handshake_unix.map_or_else(
            || "never".to_owned(),
            |at| format!("{} ago", human_age(now.saturating_sub(at))),
        );
        let detail = printable(&if peer.issues.is_empty() {
            peer.allowed_ips.join(",")
        } else {
            peer.issues.join("; ")
        });
        out.push_str(&format!(
            "{:<width$} {:<16} {:<24} {:<10} {:>10} {:>10}  {detail}\n",
            printable(&peer.node),
            short_state(peer.state),
            endpoint,
            handshake,
            human_bytes(peer.rx_bytes),
            human_bytes(peer.tx_bytes)
        ));
    }
    out.push_str(&status.coverage_line());
    out.push('\n');
    out.push_str(&format!("leaks: {}\n", status.leaks.line()));
    if let Some(counters) = &status.xfrm_errors {
        let nonzero: Vec<String> = counters
            .iter()
            .filter(|(_, value)| **value != 0)
            .map(|(name, value)| format!("{} {value}", printable(name)))
            .collect();
        out.push_str(&if nonzero.is_empty() {
            "ipsec: the kernel counts no XFRM errors\n".to_owned()
        } else {
            format!("ipsec: kernel XFRM errors: {}\n", nonzero.join(", "))
        });
    }
    for warning in [&status.mtu_warning, &status.host_source_warning]
        .into_iter()
        .flatten()
    {
        out.push_str(&format!("warning: {}\n", printable(warning)));
    }
    out
}

/// The width of a NODE column: node names are as long as the cluster makes
/// them, and the column fits the longest.
#[must_use]
pub fn name_width<'a>(names: impl Iterator<Item = &'a str>) -> usize {
    names.map(|n| n.chars().count()).max().unwrap_or(0).max(4)
}

/// A peer's state in a few words (the coverage line explains them).
fn short_state(state: wireseal_core::coverage::PeerState) -> &'static str {
    use wireseal_core::coverage::PeerState;
    match state {
        PeerState::Encrypted => "encrypted",
        PeerState::NoHandshake => "no handshake",
        PeerState::NotRouted => "not routed",
        PeerState::Broken => "broken",
        PeerState::NotPeered => "not peered",
    }
}

/// "45s", "3m", "2h", "4d": the largest unit that fits.
fn human_age(seconds: u64) -> String {
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3_600 => format!("{}m", seconds / 60),
        3_600..86_400 => format!("{}h", seconds / 3_600),
        _ => format!("{}d", seconds / 86_400),
    }
}

/// Bytes in binary units with one decimal: "0 B", "1.5 KiB", "3.2 GiB".
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    // Lossy above 2^53 bytes, which only shifts the decimal shown.
    #[allow(clippy::cast_precision_loss)]
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    #[test]
    fn ages_and_bytes_read_as_people_say_them() {
        assert_eq!(human_age(0), "0s");
        assert_eq!(human_age(59), "59s");
        assert_eq!(human_age(180), "3m");
        assert_eq!(human_age(7_300), "2h");
        assert_eq!(human_age(400_000), "4d");
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn long_node_names_keep_the_columns_apart() {
        let name = "ip-10-0-123-45.eu-west-1.compute.internal";
        let status = AgentStatus {
            node: "node-a".into(),
            peers: vec![crate::status::PeerStatus {
                node: name.into(),
                public_key: None,
                endpoint: None,
                allowed_ips: vec!["10.244.1.0/24".into()],
                last_handshake_unix: Some(100),
                rx_bytes: 5 << 20,
                tx_bytes: 12,
                encrypted: true,
                state: wireseal_core::coverage::PeerState::Encrypted,
                issues: vec![],
                host_sources: vec![],
            }],
            ..AgentStatus::default()
        };
        let text = render(&status, UNIX_EPOCH + Duration::from_secs(280));
        let row = text.lines().find(|l| l.starts_with(name)).unwrap();
        assert!(row.starts_with(&format!("{name} encrypted ")), "{text}");
        assert!(row.contains(" 3m ago "), "{row}");
        assert!(row.contains("5.0 MiB"), "{row}");
        assert!(row.contains("12 B"), "{row}");
    }

    use super::*;

    /// A status with one peer whose issue is `issue` (as another node's value made it).
    fn with_issue(issue: &str) -> AgentStatus {
        AgentStatus {
            node: "node-a".into(),
            peers: vec![crate::status::PeerStatus {
                node: "node-b".into(),
                public_key: None,
                endpoint: None,
                allowed_ips: vec![],
                last_handshake_unix: None,
                rx_bytes: 0,
                tx_bytes: 0,
                encrypted: false,
                state: wireseal_core::coverage::PeerState::NotPeered,
                issues: vec![issue.into()],
                host_sources: vec![],
            }],
            ..AgentStatus::default()
        }
    }

    #[test]
    fn control_characters_from_nodes_never_reach_the_terminal() {
        let status = with_issue("bad \u{1b}]0;pwned\u{7}\u{1b}[2J value\r");
        let text = render(&status, SystemTime::UNIX_EPOCH);
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert!(
            text.contains("bad \\u{1b}]0;pwned\\u{7}\\u{1b}[2J value\\r"),
            "{text}"
        );
    }

    #[test]
    fn a_line_break_from_a_node_cannot_forge_a_line() {
        let status = with_issue("x\nnode-c   10.0.0.3:51830   1s ago   encrypted");
        let text = render(&status, SystemTime::UNIX_EPOCH);
        assert!(!text.lines().any(|l| l.starts_with("node-c")), "{text}");
        assert!(text.contains("x\\nnode-c"), "{text}");
    }

    #[test]
    fn ipsec_mode_shows_the_kernels_xfrm_errors_that_are_not_zero() {
        let mut status = AgentStatus {
            encryption: wireseal_core::Encryption::Ipsec,
            xfrm_errors: Some(
                [
                    ("XfrmInError".to_owned(), 0),
                    ("XfrmOutNoStates".to_owned(), 10),
                ]
                .into(),
            ),
            ..AgentStatus::default()
        };
        let text = render(&status, SystemTime::now());
        assert!(text.contains("encryption ipsec"), "{text}");
        assert!(
            text.contains("ipsec: kernel XFRM errors: XfrmOutNoStates 10\n"),
            "{text}"
        );
        status.xfrm_errors = Some([("XfrmInError".to_owned(), 0)].into());
        let text = render(&status, SystemTime::now());
        assert!(
            text.contains("ipsec: the kernel counts no XFRM errors\n"),
            "{text}"
        );
        status.xfrm_errors = None;
        assert!(!render(&status, SystemTime::now()).contains("ipsec:"));
    }

    #[test]
    fn shows_the_host_source_and_every_warning() {
        let mut status = AgentStatus {
            node: "node-a".into(),
            tunnel_mtu: 1440,
            host_sources: vec!["10.244.0.1".parse().unwrap()],
            ..AgentStatus::default()
        };
        let text = render(&status, SystemTime::now());
        assert!(text.contains("host src 10.244.0.1  key -"), "{text}");
        assert!(!text.contains("warning"), "{text}");

        status.host_sources.clear();
        status.mtu_warning = Some("pod link p0 has MTU 1500".into());
        status.host_source_warning = Some("node node-a has no IPv4 address".into());
        let text = render(&status, SystemTime::now());
        assert!(text.contains("host src none"), "{text}");
        assert!(
            text.ends_with(
                "warning: pod link p0 has MTU 1500\nwarning: node node-a has no IPv4 address\n"
            ),
            "{text}"
        );
        // The JSON keeps old readers working: empty fields are left out.
        let json = serde_json::to_string(&AgentStatus::default()).unwrap();
        assert!(!json.contains("hostSource"), "{json}");
        assert!(!json.contains("xfrmErrors"), "{json}");
        let json = serde_json::to_string(&status).unwrap();
        assert!(
            json.contains(r#""hostSourceWarning":"node node-a"#),
            "{json}"
        );
    }
}

//! `wireseal status`: reads the running agent's `/status` and prints the peers
//! and the coverage line.
#![allow(
    clippy::print_stdout,
    reason = "printing the status is this command's output"
)]

use std::io::{Read, Write};
use std::net::TcpStream;
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
pub fn run(args: &StatusArgs) -> Result<()> {
    let body = fetch_raw(args.status_addr)?;
    if args.json {
        println!("{body}");
        return Ok(());
    }
    let status: AgentStatus = serde_json::from_str(&body).with_context(|| {
        format!(
            "the answer of {} is not a wireseal status",
            args.status_addr
        )
    })?;
    print!("{}", render(&status, SystemTime::now()));
    Ok(())
}

/// Reads a running agent's status.
///
/// # Errors
/// When the agent cannot be reached or its answer is not a status.
pub fn fetch(addr: std::net::SocketAddr) -> Result<AgentStatus> {
    let body = fetch_raw(addr)?;
    serde_json::from_str(&body)
        .with_context(|| format!("the answer of {addr} is not a wireseal status"))
}

fn fetch_raw(addr: std::net::SocketAddr) -> Result<String> {
    let context = || {
        format!(
            "reaching the agent's status endpoint at {addr} (is `wireseal agent` running? see --status-addr)"
        )
    };
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).with_context(context)?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .with_context(context)?;
    // HTTP/1.0: the server closes after one answer, so reading to the end is the whole reply.
    stream
        .write_all(format!("GET /status HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .with_context(context)?;
    let mut raw = String::new();
    stream
        .take(MAX_BODY)
        .read_to_string(&mut raw)
        .with_context(context)?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .with_context(|| format!("{addr} sent no HTTP answer"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!(
            "{addr} answered {}",
            head.lines().next().unwrap_or_default()
        );
    }
    Ok(body.to_owned())
}

/// The table `wireseal status` prints.
#[must_use]
pub fn render(status: &AgentStatus, now: SystemTime) -> String {
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
        "node {}  datapath {datapath}  mtu {}  host src {sources}  key {key}\n",
        status.node, status.tunnel_mtu
    ));
    out.push_str(&format!(
        "{:<20} {:<24} {:<16} {:>10} {:>10}  {}\n",
        "NODE", "ENDPOINT", "HANDSHAKE", "RX", "TX", "ALLOWED IPS / ISSUES"
    ));
    for peer in &status.peers {
        let endpoint = peer
            .endpoint
            .map_or_else(|| "-".to_owned(), |e| e.to_string());
        let handshake = peer.last_handshake_unix.map_or_else(
            || "never".to_owned(),
            |at| {
                let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
                format!("{}s ago", now.saturating_sub(at))
            },
        );
        let detail = if peer.issues.is_empty() {
            peer.allowed_ips.join(",")
        } else {
            peer.issues.join("; ")
        };
        out.push_str(&format!(
            "{:<20} {:<24} {:<16} {:>10} {:>10}  {detail}\n",
            peer.node, endpoint, handshake, peer.rx_bytes, peer.tx_bytes
        ));
    }
    out.push_str(&status.coverage_line());
    out.push('\n');
    for warning in [&status.mtu_warning, &status.host_source_warning]
        .into_iter()
        .flatten()
    {
        out.push_str(&format!("warning: {warning}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let json = serde_json::to_string(&status).unwrap();
        assert!(
            json.contains(r#""hostSourceWarning":"node node-a"#),
            "{json}"
        );
    }
}

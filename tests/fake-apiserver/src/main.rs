//! `fake-apiserver`: run the fake Kubernetes API server as a process (local
//! demo, e2e harness). Prints `listening on ADDR` as its first stdout line.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use wireseal_fake_apiserver::{Config, FakeApiServer};

/// A stateful fake Kubernetes API server (Nodes, Events) over plain HTTP.
#[derive(Debug, Parser)]
#[command(name = "fake-apiserver", version)]
struct Args {
    /// Address to serve the API on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0", env = "FAKE_APISERVER_LISTEN")]
    listen: SocketAddr,
    /// Optional second address for the same API and the /__fake/ admin
    /// endpoints that stays open during an injected outage.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Nodes to preload: YAML or JSON; a Node, a List/NodeList, or multi-doc YAML.
    #[arg(long)]
    nodes: Option<PathBuf>,
    /// Write a kubeconfig pointing at this server to FILE.
    #[arg(long, value_name = "FILE")]
    kubeconfig_out: Option<PathBuf>,
    /// How many changes the watch history keeps (watches from older versions get 410).
    #[arg(long, default_value_t = 1000)]
    history_limit: usize,
    /// Milliseconds between watch bookmarks.
    #[arg(long, default_value_t = 1000)]
    bookmark_interval_ms: u64,
    /// Bearer tokens and the users they stand for (YAML: a list of
    /// {token, user: {username, uid, groups, extra}}). Every API request then
    /// needs one (401 otherwise).
    #[arg(long, value_name = "FILE")]
    tokens: Option<PathBuf>,
    /// ValidatingAdmissionPolicies and their bindings to enforce on every
    /// write (YAML, admissionregistration.k8s.io/v1). Repeat for more files.
    #[arg(long = "admission-policy", value_name = "FILE")]
    admission_policies: Vec<PathBuf>,
    /// Log filter (tracing EnvFilter syntax); `debug` logs every request.
    #[arg(long, default_value = "info", env = "FAKE_APISERVER_LOG")]
    log: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log).context("bad --log filter")?,
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let server = FakeApiServer::start_with(Config {
        listen: args.listen,
        admin_listen: args.admin_listen,
        history_limit: args.history_limit,
        bookmark_interval: Duration::from_millis(args.bookmark_interval_ms.max(1)),
        tokens_file: args.tokens,
        admission_policies: args.admission_policies,
    })
    .await?;
    if let Some(path) = &args.nodes {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let n = server.load_nodes(&text, path)?;
        tracing::info!(nodes = n, file = %path.display(), "preloaded nodes");
    }
    if let Some(path) = &args.kubeconfig_out {
        server.write_kubeconfig(path)?;
        tracing::info!(file = %path.display(), "wrote kubeconfig");
    }

    // The first stdout line is the contract with scripts that start us on port 0.
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {}", server.addr())?;
    if let Some(admin) = server.admin_addr() {
        writeln!(out, "admin on {admin}")?;
    }
    out.flush()?;
    drop(out);

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    Ok(())
}

//! The Kubernetes adapter: a watch on every Node feeding the reconcile loop,
//! the publication of this node's annotations, and Events on Nodes whose
//! wireseal inputs are invalid.

pub mod events;
pub mod node_view;
pub mod nodes;
pub mod publish;
pub mod taint;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

use anyhow::{Context, Result};
use kube::Client;
use kube::config::{Config, KubeConfigOptions, Kubeconfig};
use tracing::warn;

pub use nodes::watch_nodes;

/// Connects to the API server: `--kubeconfig` if given, else the in-cluster
/// service account, else `KUBECONFIG` / `~/.kube/config`. Returns the
/// client and the API server's addresses as this node reaches them, which
/// must never be steered into the tunnel.
///
/// # Errors
/// When no configuration works.
pub async fn client(kubeconfig: Option<&Path>) -> Result<(Client, BTreeSet<IpAddr>)> {
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("using kubeconfig {}", path.display()))?
        }
        None => match Config::incluster() {
            Ok(config) => config,
            Err(in_cluster) => Config::infer().await.with_context(|| {
                format!("no in-cluster service account ({in_cluster}) and no usable KUBECONFIG")
            })?,
        },
    };
    let addresses = api_server_addresses(&config.cluster_url).await;
    let client = Client::try_from(config).context("building the Kubernetes client")?;
    Ok((client, addresses))
}

/// The addresses of the API server URL's host: the literal address, or what
/// its name resolves to now. A name that does not resolve protects nothing
/// here (the agent logs it); node addresses are protected anyway, and an
/// API server usually runs on one.
async fn api_server_addresses(url: &http::Uri) -> BTreeSet<IpAddr> {
    let Some(host) = url.host() else {
        return BTreeSet::new();
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return BTreeSet::from([ip]);
    }
    let port = url.port_u16().unwrap_or(443);
    match tokio::net::lookup_host((host, port)).await {
        Ok(found) => found.map(|addr| addr.ip()).collect(),
        Err(err) => {
            warn!(host, error = %err, "cannot resolve the API server's name; its addresses are not protected from hostile pod CIDR claims");
            BTreeSet::new()
        }
    }
}

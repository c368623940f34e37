//! The Kubernetes adapter: a watch on every Node feeding the reconcile loop,
//! the publication of this node's annotations, and Events on Nodes whose
//! wireseal inputs are invalid.

pub mod events;
pub mod nodes;
pub mod publish;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use kube::Client;
use kube::config::{Config, KubeConfigOptions, Kubeconfig};
use wireseal_core::NodeView;

pub use nodes::watch_nodes;

/// The cluster as the reconcile loop needs it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterView {
    /// Every Node, by name.
    pub nodes: BTreeMap<String, NodeView>,
    /// This node's `wireseal.dev/` annotations as they are on the API server.
    pub own_annotations: BTreeMap<String, String>,
    /// True once a complete list of Nodes has been read. Until then nothing
    /// is removed from the node.
    pub synced: bool,
}

/// Connects to the API server: `--kubeconfig` if given, else the in-cluster
/// service account, else `KUBECONFIG` / `~/.kube/config`.
///
/// # Errors
/// When no configuration works.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client> {
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
    Client::try_from(config).context("building the Kubernetes client")
}

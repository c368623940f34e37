//! `wireseal agent`: wires the Node watch, the reconcile loop, the publisher,
//! the event reporter and the status endpoint together, and runs them until
//! SIGTERM or SIGINT. On exit nothing is torn down: pod traffic keeps flowing
//! through the datapath while the agent restarts.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::runtime::watcher;
use tokio::sync::{mpsc, watch};
use tracing::info;
use wireseal_keymgr::{KeyOrigin, KeyStore};

use crate::cli::DatapathChoice;
use crate::config::Config;
use crate::datapath::memory::MemoryNode;
use crate::k8s::{self, ClusterView};
use crate::metrics::Metrics;
use crate::reconcile::{Outputs, Reconciler, Timing};
use crate::status::SharedStatus;

/// Runs the agent.
///
/// # Errors
/// When the key, the API server configuration or the status endpoint cannot be
/// set up. Failures after start-up are logged and retried, never fatal.
pub async fn run(config: Config) -> Result<()> {
    let store = KeyStore::new(&config.state_dir);
    let (key, origin) = store
        .load_or_create()
        .context("loading this node's private key")?;
    info!(
        public_key = %key.public_key(),
        created = matches!(origin, KeyOrigin::Created),
        path = %store.path().display(),
        "node key ready"
    );

    let client = k8s::client(config.kubeconfig.as_deref()).await?;
    let nodes_api: Api<Node> = Api::all(client.clone());
    let metrics = Metrics::new();
    let status = SharedStatus::default();
    let (shutdown_tx, shutdown) = watch::channel(false);
    let (view_tx, view_rx) = watch::channel(Arc::new(ClusterView::default()));
    let (outputs_tx, outputs_rx) = watch::channel(Outputs::default());
    let (_triggers_tx, triggers) = mpsc::channel(16);

    let (_, serving) = crate::http::serve(
        config.status_addr,
        status.clone(),
        metrics.clone(),
        shutdown.clone(),
    )
    .await?;
    tokio::spawn(serving);
    let watch_config = watcher::Config::default().timeout(config.watch_timeout_secs);
    tokio::spawn(k8s::watch_nodes(
        nodes_api.clone(),
        config.node_name.clone(),
        watch_config,
        view_tx,
        metrics.clone(),
    ));
    tokio::spawn(k8s::publish::publish_own(
        nodes_api,
        config.node_name.clone(),
        outputs_rx.clone(),
        view_rx.clone(),
        metrics.clone(),
    ));
    tokio::spawn(k8s::events::report_problems(
        client,
        config.node_name.clone(),
        outputs_rx,
        view_rx.clone(),
        metrics.clone(),
    ));
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("stopping; the datapath stays as it is so pod traffic keeps flowing");
        let _ = shutdown_tx.send(true);
    });

    let timing = Timing {
        resync: Duration::from_secs(config.resync_secs),
        ..Timing::default()
    };
    match config.datapath {
        DatapathChoice::Memory => {
            info!(
                datapath = "memory",
                "datapath chosen: in memory only, no traffic is carried"
            );
            let node = MemoryNode::new();
            let reconciler = Reconciler::new(
                config,
                key,
                node.clone(),
                node,
                view_rx,
                outputs_tx,
                status,
                timing,
            )
            .with_metrics(metrics);
            reconciler.run(triggers, shutdown).await;
        }
        DatapathChoice::Auto | DatapathChoice::Kernel | DatapathChoice::Userspace => {
            bail!(
                "--datapath {:?}: the kernel and userspace datapaths are not wired into the agent yet",
                config.datapath
            )
        }
    }
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

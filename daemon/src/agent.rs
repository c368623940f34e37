//! `wireseal agent`: wires the Node watch, the reconcile loop, the publisher,
//! the event reporter and the status endpoint together, and runs them until
//! SIGTERM or SIGINT. On exit nothing is torn down: pod traffic keeps flowing
//! through the datapath while the agent restarts.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::runtime::watcher;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};
use wireseal_core::Encryption;
use wireseal_keymgr::{KeyOrigin, KeyStore};
use wireseal_netlink::{Change, Monitor, Netlink, RoutingIds, is_link_local};

use crate::channels::{ClusterView, Outputs};
use crate::cli::DatapathChoice;
use crate::config::Config;
use crate::datapath::Datapath as _;
use crate::datapath::any::{self, AnyDatapath, AnyRouting, UserspaceSettings};
use crate::datapath::netlink_routing::NetlinkRouting;
use crate::ipsec_epoch::EpochState;
use crate::k8s;
use crate::leaks::Leaks;
use crate::lockdown;
use crate::metrics::Metrics;
use crate::reconcile::{Reconciler, Timing};
use crate::rotation::Rotation;
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
    // Every listener before anything that can take time (the API server), so a
    // taken port stops the agent at once with a line naming it.
    let listeners = crate::http::Listeners::bind(&config).await?;

    let ids = RoutingIds {
        table: config.route_table,
        priority: config.rule_priority,
        catch_all_table: config.catch_all_table,
    };
    if config.strict.is_some() && config.datapath != DatapathChoice::Memory {
        // Before anything that can take time or fail (the API server).
        let netlink = Netlink::connect().context("opening rtnetlink")?;
        let mut routing = NetlinkRouting::new(netlink, ids, config.fwmark);
        lockdown::lock_down(&mut routing, &config).await;
    }

    let (client, api_server) = k8s::client(config.kubeconfig.as_deref()).await?;
    info!(addresses = ?api_server, "API server addresses kept out of the tunnel");
    let nodes_api: Api<Node> = Api::all(client.clone());
    let metrics = Metrics::with_per_peer(config.per_peer_metrics);
    let status = SharedStatus::default();
    let (shutdown_tx, shutdown) = watch::channel(false);
    let (view_tx, view_rx) = watch::channel(Arc::new(ClusterView::default()));
    let (outputs_tx, outputs_rx) = watch::channel(Outputs::default());
    let (triggers_tx, triggers) = mpsc::channel(16);

    listeners.serve(&status, &metrics, &shutdown);
    let watch_config = watcher::Config::default().timeout(config.watch_timeout_secs);
    tokio::spawn(k8s::watch_nodes(
        nodes_api.clone(),
        config.node_name.clone(),
        watch_config,
        view_tx,
        metrics.clone(),
    ));
    tokio::spawn(k8s::taint::clear_not_ready_taint(
        nodes_api.clone(),
        config.node_name.clone(),
        outputs_rx.clone(),
        view_rx.clone(),
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
        status_hold: Duration::from_secs(config.status_hold_secs),
        ..Timing::default()
    };
    let userspace = UserspaceSettings {
        uapi_dir: config.uapi_dir.clone(),
        spawn: config.spawn_tunnel.clone(),
    };
    let (datapath, reason) = match (config.encryption, config.datapath) {
        (Encryption::Ipsec, choice) if choice != DatapathChoice::Memory => {
            any::select_ipsec(
                &config.interface,
                config.listen_port,
                config.fwmark,
                &config.state_dir,
            )
            .await?
        }
        (_, choice) => any::select(choice, &config.interface, &userspace).await?,
    };
    info!(datapath = %datapath.kind(), encryption = %config.encryption, reason = %reason, memory = matches!(datapath, AnyDatapath::Memory(_)), "datapath chosen");
    let leaks = match &datapath {
        AnyDatapath::Memory(_) => Leaks::disabled("not counted with the in-memory datapath"),
        AnyDatapath::Kernel(_) | AnyDatapath::Userspace(_) | AnyDatapath::Ipsec(_) => {
            Leaks::for_tunnel(&config.interface)
        }
    };
    let routing = match &datapath {
        AnyDatapath::Memory(node) => AnyRouting::Memory(node.clone()),
        AnyDatapath::Kernel(_) | AnyDatapath::Userspace(_) | AnyDatapath::Ipsec(_) => {
            spawn_netlink_triggers(triggers_tx, [config.route_table, config.catch_all_table]);
            let netlink = Netlink::connect().context("opening rtnetlink")?;
            AnyRouting::Netlink(NetlinkRouting::new(netlink, ids, config.fwmark))
        }
    };
    let rotation = Rotation::new(
        store,
        config.key_rotation_interval,
        config.key_rotation_lead,
    );
    let epochs = match config.encryption {
        Encryption::Ipsec => Some(ipsec_epochs(&config, key.public_key())?),
        Encryption::WireGuard => None,
    };
    let mut reconciler = Reconciler::new(
        config, key, datapath, routing, view_rx, outputs_tx, status, timing,
    )
    .with_metrics(metrics)
    .with_leaks(leaks)
    .with_protected(api_server)
    .with_rotation(rotation);
    if let Some(epochs) = epochs {
        reconciler = reconciler.with_ipsec_epochs(epochs);
    }
    reconciler.run(triggers, shutdown).await;
    Ok(())
}

/// IPsec mode's key epochs from the state directory. The old inbound SAs of
/// a rekey stay a grace period after the new epoch is published: three
/// resync intervals (a peer whose watch missed the change catches up on a
/// resync), at least 30 s.
fn ipsec_epochs(config: &Config, own: wireseal_core::PublicKey) -> Result<EpochState> {
    let grace = Duration::from_secs(config.resync_secs.saturating_mul(3).max(30));
    EpochState::load(
        &config.state_dir,
        own,
        config.ipsec_rekey_interval,
        grace,
        crate::reconcile::unix_now(),
    )
    .context("reading IPsec mode's key epoch")
}

/// Someone deleting wireseal's route, catch-all or rule, or the tunnel link changing,
/// triggers a pass that puts things back; an address coming or going (the
/// CNI's gateway, the routes' preferred source) triggers one that follows it.
/// Changes to other tables, and link-local addresses (never a source), are
/// ignored.
fn spawn_netlink_triggers(triggers: mpsc::Sender<()>, tables: [u32; 2]) {
    tokio::spawn(async move {
        loop {
            let mut monitor = match Monitor::subscribe() {
                Ok(monitor) => monitor,
                Err(err) => {
                    warn!(error = %err, "cannot watch netlink changes; relying on the periodic resync");
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    continue;
                }
            };
            while let Some(change) = monitor.next().await {
                let relevant = match change {
                    Change::Route { table: changed } => tables.contains(&changed),
                    Change::Address {
                        address: Some(address),
                        ..
                    } => !is_link_local(address),
                    // Rules, links, and whatever kinds of change netlink reports later.
                    _ => true,
                };
                if relevant && triggers.try_send(()).is_err() && triggers.is_closed() {
                    return;
                }
            }
            // The subscription ended (socket overrun or closed): resubscribe; the
            // resync covers anything missed meanwhile.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
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

//! The level-triggered reconcile loop: on every trigger (a Node change, a
//! netlink change, the periodic resync) it observes the node, computes the
//! desired state from the latest Node list, plans the difference and applies it.
//!
//! One task owns the datapath. Nothing is removed before the first complete
//! list of Nodes: on a restart, or while the API server is unreachable, the
//! node keeps what it has.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};
use wireseal_core::annotation::{self, NodeStatus};
use wireseal_core::state::{Family, tunnel_mtu};
use wireseal_core::{
    Desired, MeshConfig, ObservedState, Plan, PublicKey, desired, gate_routes, plan,
};
use wireseal_keymgr::PrivateKey;

use crate::config::{Config, EndpointSetting, MtuSetting};
use crate::datapath::{Datapath, DatapathError, NodeAddresses, PeerStats, Routing, RoutingPhase};
use crate::k8s::ClusterView;
use crate::metrics::Metrics;
use crate::status::{AgentStatus, PeerStatus, SharedStatus};

/// A peer counts as encrypted when its last handshake is at most this old.
/// WireGuard re-handshakes every 2 minutes on an active session; 3 minutes
/// leaves room for an idle peer's keepalive-less session to still be counted.
pub const HANDSHAKE_FRESH: Duration = Duration::from_secs(180);

/// First re-check while peers await a handshake, doubling up to the maximum.
const HANDSHAKE_POLL: Duration = Duration::from_millis(100);
const HANDSHAKE_POLL_MAX: Duration = Duration::from_secs(5);

/// Most endpoints whose underlay path is looked up per pass.
const MAX_PATH_LOOKUPS: usize = 32;

/// MTU used with `--mtu auto` before any underlay path is known: fits an IPv6 underlay of 1500.
const FALLBACK_TUNNEL_MTU: u32 = 1420;

/// The loop's timing.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Full pass even without any trigger.
    pub resync: Duration,
    /// Wait after a trigger for more to arrive, so a burst costs one pass.
    pub debounce: Duration,
    /// Retry after a failed pass.
    pub retry: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            resync: Duration::from_secs(30),
            debounce: Duration::from_millis(100),
            retry: Duration::from_secs(2),
        }
    }
}

/// What the loop publishes for the Kubernetes side.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outputs {
    /// The annotations this node should carry (key, endpoint, status).
    pub own_annotations: Option<BTreeMap<String, String>>,
    /// Per remote node, the readable problems with its inputs.
    pub problems: BTreeMap<String, Vec<String>>,
}

/// The reconcile loop and everything it owns.
pub struct Reconciler<D, R> {
    config: Config,
    key: PrivateKey,
    datapath: D,
    routing: R,
    nodes: watch::Receiver<Arc<ClusterView>>,
    outputs: watch::Sender<Outputs>,
    status: SharedStatus,
    timing: Timing,
    metrics: Metrics,
    mtu_warning: Option<String>,
    /// The preferred sources of the last pass, and its warning when a family
    /// had none: each logged when it changes, not on every pass.
    host_sources: BTreeMap<Family, IpAddr>,
    host_source_warning: Option<String>,
}

impl<D: Datapath, R: Routing> Reconciler<D, R> {
    /// Builds the loop.
    #[allow(
        clippy::too_many_arguments,
        reason = "one-time wiring of the loop's owned parts"
    )]
    pub fn new(
        config: Config,
        key: PrivateKey,
        datapath: D,
        routing: R,
        nodes: watch::Receiver<Arc<ClusterView>>,
        outputs: watch::Sender<Outputs>,
        status: SharedStatus,
        timing: Timing,
    ) -> Self {
        Self {
            config,
            key,
            datapath,
            routing,
            nodes,
            outputs,
            status,
            timing,
            metrics: Metrics::new(),
            mtu_warning: None,
            host_sources: BTreeMap::new(),
            host_source_warning: None,
        }
    }

    /// Counts passes in `metrics`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Runs until `shutdown` fires. `triggers` carries external change
    /// notifications (netlink); each one causes a pass.
    pub async fn run(
        mut self,
        mut triggers: mpsc::Receiver<()>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut resync = tokio::time::interval(self.timing.resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retry_at: Option<tokio::time::Instant> = None;
        let mut handshake_wait = HANDSHAKE_POLL;
        loop {
            let retry = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.changed() => break,
                changed = self.nodes.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    tokio::time::sleep(self.timing.debounce).await;
                }
                Some(()) = triggers.recv() => {
                    tokio::time::sleep(self.timing.debounce).await;
                    while triggers.try_recv().is_ok() {}
                }
                _ = resync.tick() => {}
                () = retry => {}
            }
            let result = self.pass().await;
            self.metrics.reconcile(result.is_ok());
            retry_at = match result {
                Ok(0) => {
                    handshake_wait = HANDSHAKE_POLL;
                    None
                }
                // A handshake completes within a round trip once both sides
                // know each other; look again soon, then less often.
                Ok(_) => {
                    let at = tokio::time::Instant::now() + handshake_wait;
                    handshake_wait = (handshake_wait * 2).min(HANDSHAKE_POLL_MAX);
                    Some(at)
                }
                Err(err) => {
                    warn!(error = %format!("{err:#}"), "reconcile failed; retrying");
                    Some(tokio::time::Instant::now() + self.timing.retry)
                }
            };
        }
        info!("reconcile loop stopped; the datapath stays as it is");
    }

    /// One observe → plan → apply pass. Returns how many peers still await
    /// their first handshake (their traffic keeps the CNI's path meanwhile).
    ///
    /// # Errors
    /// The first failure to observe, or every failure to apply.
    pub async fn pass(&mut self) -> Result<usize, anyhow::Error> {
        let view = self.nodes.borrow_and_update().clone();
        if !view.synced {
            debug!("waiting for the first complete Node list before changing anything");
            return Ok(0);
        }
        let writes_before = self.routing.writes();
        let nodes: Vec<_> = view.nodes.values().cloned().collect();
        let public = self.key.public_key();
        // Read on every pass: the CNI adds its gateway address with the first
        // pod and may remove or change it at any time. Our link's copy of it
        // comes apart: it stands in only while the CNI has none.
        let addresses = self.routing.local_addresses(&self.config.interface).await?;
        let mut mesh = self.mesh_config(FALLBACK_TUNNEL_MTU, addresses);
        let mut want = desired(&self.config.node_name, &public, &nodes, &mesh);
        let host_source_warning = self.check_host_sources(&want);
        let (auto_mtu, underlay_devices) = self.underlay(&want).await;
        if let (MtuSetting::Auto, Some(mtu)) = (self.config.mtu, auto_mtu) {
            mesh.mtu = mtu;
            want.state.set_mtu(mtu);
        }
        let mtu_warning = self.check_pod_mtu(mesh.mtu, &underlay_devices).await;

        self.datapath.ensure_link(&want.state.link).await?;
        self.routing.ensure_up(&self.config.interface).await?;
        let device = self.datapath.observe().await?;
        let established: BTreeSet<PublicKey> = device
            .stats
            .iter()
            .filter(|(_, stats)| stats.last_handshake.is_some())
            .map(|(key, _)| *key)
            .collect();
        let routing = self
            .routing
            .observe(
                &self.config.interface,
                self.config.route_table,
                self.config.rule_priority,
            )
            .await?;
        let routed = routing.routes.keys().copied().collect();
        let awaiting = gate_routes(&mut want, &established, &routed);
        let observed = ObservedState {
            link: routing.link,
            device: device.device,
            routes: routing.routes,
            rules: routing.rules,
        };
        let change = plan(&want.state, &observed);
        if !change.is_empty() {
            info!(
                changes = change.len(),
                peers_upserted = change.device.upsert_peers.len(),
                peers_removed = change.device.remove_peers.len(),
                routes_added = change.routing.add_routes.len(),
                routes_removed = change.routing.remove_routes.len(),
                addresses_added = change.link.add_addresses.len(),
                addresses_removed = change.link.remove_addresses.len(),
                routes_restored = change.routing.restore_routes.len(),
                rules_added = change.routing.add_rules.len(),
                rules_removed = change.routing.remove_rules.len(),
                awaiting_handshake = awaiting.len(),
                "applying plan"
            );
        }
        let started = tokio::time::Instant::now();
        let mut applied = self.execute(&change).await;
        // What this pass cost the kernel: "only the difference is written"
        // is checked against this (the control-plane benchmark reads it).
        let writes = self.routing.writes().saturating_sub(writes_before);
        if !change.is_empty() || writes != 0 {
            info!(
                ok = applied.is_ok(),
                netlink_writes = writes,
                apply_ms = started.elapsed().as_secs_f64() * 1e3,
                "applied plan"
            );
        }
        if applied.is_ok() && !awaiting.is_empty() {
            let waiting = want
                .state
                .device
                .peers
                .iter()
                .filter(|(key, _)| awaiting.contains(*key))
                .map(|(key, config)| (*key, config.clone()))
                .collect();
            applied = self
                .datapath
                .request_handshake(&waiting, &self.key)
                .await
                .map_err(anyhow::Error::from);
        }
        self.report(
            &view,
            &want,
            &device.stats,
            applied.is_ok(),
            Warnings {
                mtu: mtu_warning,
                host_source: host_source_warning,
            },
        );
        applied.map(|()| awaiting.len())
    }

    fn mesh_config(&self, mtu: u32, addresses: NodeAddresses) -> MeshConfig {
        MeshConfig {
            interface: self.config.interface.clone(),
            listen_port: self.config.listen_port,
            fwmark: self.config.fwmark,
            route_table: self.config.route_table,
            rule_priority: self.config.rule_priority,
            mtu: match self.config.mtu {
                MtuSetting::Fixed(fixed) => fixed,
                MtuSetting::Auto => mtu,
            },
            persistent_keepalive: self.config.persistent_keepalive,
            local_addresses: addresses.elsewhere,
            tunnel_addresses: addresses.tunnel,
        }
    }

    /// Host-network traffic to pods on other nodes only passes the peers'
    /// WireGuard with a source inside this node's pod CIDRs. Logs the
    /// sources when they change, and warns once per change when a family
    /// routed into the tunnel has none.
    fn check_host_sources(&mut self, want: &Desired) -> Option<String> {
        if want.host_sources != self.host_sources {
            if !want.host_sources.is_empty() {
                info!(
                    node = %self.config.node_name,
                    sources = ?want.host_sources.values().collect::<Vec<_>>(),
                    "host-network traffic into the tunnel leaves from this node's pod address"
                );
            }
            self.host_sources.clone_from(&want.host_sources);
        }
        if want.host_source_issues.is_empty() {
            if self.host_source_warning.take().is_some() {
                info!(node = %self.config.node_name, "every family routed into the tunnel has a host source again");
            }
            return None;
        }
        let message = want
            .host_source_issues
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        if self.host_source_warning.as_ref() != Some(&message) {
            for issue in &want.host_source_issues {
                warn!(
                    node = %issue.node,
                    family = %issue.family,
                    pod_cidrs = ?issue.pod_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "{issue}"
                );
            }
            self.host_source_warning = Some(message.clone());
        }
        Some(message)
    }

    /// The underlay seen from here: the smallest tunnel MTU over the paths to
    /// the peers' endpoints (`None` when no path is known), and the devices
    /// those paths leave through. At most [`MAX_PATH_LOOKUPS`] distinct
    /// endpoints are asked per pass, which covers every underlay device in
    /// practice without a kernel round trip per node of a large cluster.
    async fn underlay(&mut self, want: &Desired) -> (Option<u32>, BTreeSet<String>) {
        let mut best: Option<u32> = None;
        let mut devices = BTreeSet::new();
        let endpoints: BTreeSet<IpAddr> = want
            .state
            .device
            .peers
            .values()
            .filter_map(|peer| peer.endpoint.map(|e| e.ip()))
            .collect();
        for ip in endpoints.into_iter().take(MAX_PATH_LOOKUPS) {
            match self.routing.path_mtu(ip).await {
                Ok((device, underlay)) => {
                    devices.insert(device);
                    let family = Family::of_ip(ip);
                    let Some(mtu) = tunnel_mtu(underlay, family) else {
                        warn!(%ip, underlay, "path MTU too small for a tunnel; keeping the others");
                        continue;
                    };
                    best = Some(best.map_or(mtu, |b| b.min(mtu)));
                }
                Err(err) => debug!(%ip, error = %err, "no path MTU"),
            }
        }
        (best, devices)
    }

    /// TCP MSS cannot be clamped without iptables or nftables, which wireseal
    /// does not touch; the routes in its table carry the tunnel MTU, so pods
    /// learn it through path MTU discovery — unless ICMP is filtered on the
    /// way. When the CNI gave its pods a larger MTU, say so, once per change.
    async fn check_pod_mtu(
        &mut self,
        tunnel: u32,
        underlay_devices: &BTreeSet<String>,
    ) -> Option<String> {
        let mut exclude = underlay_devices.clone();
        exclude.insert(self.config.interface.clone());
        let (link, mtu) = match self.routing.pod_link_mtu(&exclude).await {
            Ok(found) => found?,
            Err(err) => {
                debug!(error = %err, "cannot read the pod links' MTU");
                return None;
            }
        };
        if mtu <= tunnel {
            self.mtu_warning = None;
            return None;
        }
        let message = format!(
            "pod link {link} has MTU {mtu}, above the tunnel MTU {tunnel}: pods rely on path MTU discovery \
             (ICMP fragmentation-needed) across nodes; set the CNI's MTU to at most {tunnel}"
        );
        if self.mtu_warning.as_ref() != Some(&message) {
            warn!(%link, pod_mtu = mtu, tunnel_mtu = tunnel, "{message}");
            self.mtu_warning = Some(message.clone());
        }
        Some(message)
    }

    /// Applies a plan in the order documented in `wireseal_core::plan`,
    /// carrying on past a failed step so one bad peer does not block the rest.
    async fn execute(&mut self, change: &Plan) -> Result<(), anyhow::Error> {
        if change.is_empty() {
            return Ok(());
        }
        let mut failures: Vec<DatapathError> = Vec::new();
        let mut keep = |result: Result<(), DatapathError>| {
            if let Err(err) = result {
                failures.push(err);
            }
        };
        keep(
            self.routing
                .apply(&change.routing, RoutingPhase::RemoveRules)
                .await,
        );
        let interface = &self.config.interface;
        if let Some(mtu) = change.link.set_mtu {
            keep(self.routing.set_mtu(interface, mtu).await);
        }
        // Before the routes that name them as their source.
        if !change.link.add_addresses.is_empty() {
            keep(
                self.routing
                    .add_addresses(interface, &change.link.add_addresses)
                    .await,
            );
        }
        let (upserts, removals) = split_removals(&change.device);
        keep(self.datapath.apply(&upserts, &self.key).await);
        keep(
            self.routing
                .apply(&change.routing, RoutingPhase::Routes)
                .await,
        );
        keep(self.datapath.apply(&removals, &self.key).await);
        // After the routes stopped naming them.
        if !change.link.remove_addresses.is_empty() {
            keep(
                self.routing
                    .remove_addresses(interface, &change.link.remove_addresses)
                    .await,
            );
        }
        // Straight after: the removal took the link's last IPv4 address and
        // Linux dropped its IPv4 routes; until they are back, that traffic
        // takes the CNI's plain routes.
        if !change.routing.restore_routes.is_empty() {
            keep(
                self.routing
                    .apply(&change.routing, RoutingPhase::Restore)
                    .await,
            );
        }
        keep(
            self.routing
                .apply(&change.routing, RoutingPhase::AddRules)
                .await,
        );
        if failures.is_empty() {
            return Ok(());
        }
        let lines: Vec<String> = failures.iter().map(|f| format!("{f}")).collect();
        Err(anyhow::anyhow!(
            "{} step(s) failed: {}",
            failures.len(),
            lines.join("; ")
        ))
    }

    fn report(
        &self,
        view: &ClusterView,
        want: &Desired,
        stats: &BTreeMap<PublicKey, PeerStats>,
        applied: bool,
        warnings: Warnings,
    ) {
        let now = SystemTime::now();
        let peers: Vec<PeerStatus> = want
            .nodes
            .iter()
            .map(|(name, outcome)| {
                let peer_stats = outcome
                    .peer
                    .and_then(|key| stats.get(&key))
                    .copied()
                    .unwrap_or_default();
                PeerStatus::new(name, outcome, want, peer_stats, now)
            })
            .collect();
        let expected = peers.iter().filter(|p| p.public_key.is_some()).count();
        let encrypted = peers.iter().filter(|p| p.encrypted).count();
        let ready = applied && expected == encrypted;
        let own_status = NodeStatus {
            datapath: Some(self.datapath.kind()),
            encryption_ready: ready,
            peers_expected: u32::try_from(expected).unwrap_or(u32::MAX),
            peers_encrypted: u32::try_from(encrypted).unwrap_or(u32::MAX),
            message: (!applied)
                .then(|| "the last reconcile failed; see the agent's log".to_owned()),
        };
        let endpoint = self.own_endpoint(view);
        let own = annotation::encode_own(&self.key.public_key(), endpoint, Some(&own_status));
        let problems = want
            .nodes
            .iter()
            .filter_map(|(name, outcome)| {
                let lines: Vec<String> = outcome
                    .issues
                    .iter()
                    .filter(|issue| {
                        matches!(
                            issue,
                            wireseal_core::PeerIssue::InvalidInput(_)
                                | wireseal_core::PeerIssue::DuplicateKey { .. }
                        )
                    })
                    .map(ToString::to_string)
                    .collect();
                (!lines.is_empty()).then(|| (name.clone(), lines))
            })
            .collect();
        self.outputs.send_replace(Outputs {
            own_annotations: Some(own),
            problems,
        });
        self.status.replace(AgentStatus {
            node: self.config.node_name.clone(),
            datapath: Some(self.datapath.kind()),
            public_key: Some(self.key.public_key()),
            synced: view.synced,
            last_apply_ok: applied,
            tunnel_mtu: want.state.link.mtu,
            mtu_warning: warnings.mtu,
            host_sources: want.host_sources.values().copied().collect(),
            host_source_warning: warnings.host_source,
            peers,
        });
    }

    fn own_endpoint(&self, view: &ClusterView) -> Option<SocketAddr> {
        let port = self.config.listen_port;
        match self.config.endpoint {
            EndpointSetting::SocketAddr(addr) => Some(addr),
            EndpointSetting::Address(ip) => Some(SocketAddr::new(ip, port)),
            EndpointSetting::Auto => view
                .nodes
                .get(&self.config.node_name)
                .and_then(wireseal_core::NodeView::internal_ip)
                .map(|ip| SocketAddr::new(ip, port)),
        }
    }
}

/// What a pass found worth an operator's attention, for the status.
struct Warnings {
    mtu: Option<String>,
    host_source: Option<String>,
}

/// Splits device changes into the part applied before routes change (settings
/// and upserts) and the part after (removals).
fn split_removals(
    plan: &wireseal_core::DevicePlan,
) -> (wireseal_core::DevicePlan, wireseal_core::DevicePlan) {
    let mut upserts = plan.clone();
    let removals = wireseal_core::DevicePlan {
        remove_peers: std::mem::take(&mut upserts.remove_peers),
        remove_allowed_ips: std::mem::take(&mut upserts.remove_allowed_ips),
        ..wireseal_core::DevicePlan::default()
    };
    (upserts, removals)
}

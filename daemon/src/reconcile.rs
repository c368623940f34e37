//! The level-triggered reconcile loop: on every trigger (a Node change, a
//! netlink change, the periodic resync) it observes the node, computes the
//! desired state from the latest Node list, plans the difference and applies it.
//!
//! One task owns the datapath. Nothing is removed before the first complete
//! list of Nodes: on a restart, or while the API server is unreachable, the
//! node keeps what it has.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};
use wireseal_core::ipsec::Epochs;
use wireseal_core::rotation::next_switch;
use wireseal_core::state::{Family, tunnel_mtu};
use wireseal_core::{
    CatchAll, Desired, LinkSpec, MeshConfig, ObservedState, PeerConfig, PublicKey, Strict, desired,
    gate_routes, plan,
};
use wireseal_keymgr::PrivateKey;

use crate::channels::{ClusterView, Outputs};
use crate::config::{Config, MtuSetting};
use crate::datapath::{Datapath, NodeAddresses, NodeSet, Routing, execute};
use crate::ipsec_epoch::EpochState;
use crate::leaks::{self, Leaks};
use crate::lockdown;
use crate::metrics::Metrics;
use crate::report::{PassReport, Reporter, Warnings, pod_link_exclusions};
use crate::rotation::Rotation;
use crate::status::SharedStatus;

/// First re-check while peers await a handshake, doubling up to the maximum.
const HANDSHAKE_POLL: Duration = Duration::from_millis(100);
const HANDSHAKE_POLL_MAX: Duration = Duration::from_secs(5);

/// How long after a switch the userspace datapath still answers handshakes
/// to the previous key: as long as a WireGuard session lives (180 s), so a
/// peer that has not switched yet keeps its session.
const ALTERNATE_GRACE: Duration = Duration::from_secs(180);

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
    /// How long a worse state (fewer peers encrypted, a failure) must hold
    /// before it is written to the Node for every agent to receive.
    pub status_hold: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            resync: Duration::from_secs(30),
            debounce: Duration::from_millis(100),
            retry: Duration::from_secs(2),
            status_hold: Duration::from_secs(30),
        }
    }
}

/// The reconcile loop and everything it owns.
pub struct Reconciler<D, R> {
    config: Config,
    key: PrivateKey,
    datapath: D,
    routing: R,
    nodes: watch::Receiver<Arc<ClusterView>>,
    reporter: Reporter,
    timing: Timing,
    metrics: Metrics,
    /// Addresses that never enter the tunnel besides the nodes' own: the API
    /// server's, as the agent reaches it.
    protected: BTreeSet<IpAddr>,
    /// Strict mode's catch-alls as last kept in the state directory.
    kept: Option<BTreeMap<ipnetwork::IpNetwork, CatchAll>>,
    /// This node's key rotation, when the agent manages one.
    rotation: Option<Rotation>,
    /// When the last pass wants the next one: a switch time, this node's or
    /// a peer's, still ahead.
    switch_wake: Option<tokio::time::Instant>,
    /// The key this node switched from, and until when the datapath still
    /// answers handshakes to it (peers that have not switched yet).
    previous_key: Option<(PrivateKey, tokio::time::Instant)>,
    /// Whether the datapath may hold an alternate key: true at start, so the
    /// first pass removes one a previous run left (a retired key must not
    /// stay answered).
    alternate_set: bool,
    /// The kernel's count of pod packets leaving outside the tunnel.
    leaks: Leaks,
    /// IPsec mode: this node's key epochs and their rekey schedule.
    ipsec_epochs: Option<EpochState>,
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
            reporter: Reporter::new(outputs, status, timing.status_hold),
            timing,
            metrics: Metrics::new(),
            protected: BTreeSet::new(),
            kept: None,
            rotation: None,
            switch_wake: None,
            previous_key: None,
            alternate_set: true,
            leaks: Leaks::disabled("not counted by this datapath"),
            ipsec_epochs: None,
        }
    }

    /// IPsec mode: rekeys this node's inbound SAs as `epochs` schedules.
    #[must_use]
    pub fn with_ipsec_epochs(mut self, epochs: EpochState) -> Self {
        self.ipsec_epochs = Some(epochs);
        self
    }

    /// Rotates this node's key as `rotation` says (announce, then switch).
    #[must_use]
    pub fn with_rotation(mut self, rotation: Rotation) -> Self {
        self.rotation = Some(rotation);
        self
    }

    /// Keeps traffic to these addresses (the API server's) out of the
    /// tunnel, whatever a node claims: the agent must always reach the API
    /// server, or it would never see a hostile Node's deletion.
    #[must_use]
    pub fn with_protected(mut self, addresses: BTreeSet<IpAddr>) -> Self {
        self.protected = addresses;
        self
    }

    /// Keeps the leak counter with every pass.
    #[must_use]
    pub fn with_leaks(mut self, leaks: Leaks) -> Self {
        self.leaks = leaks;
        self
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
            let switch = async {
                match self.switch_wake {
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
                () = switch => {}
            }
            let started = std::time::Instant::now();
            let result = self.pass().await;
            self.metrics.reconcile(result.is_ok(), started.elapsed());
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
    /// The first failure to observe, or every step that failed to apply.
    pub async fn pass(&mut self) -> Result<usize, anyhow::Error> {
        let view = self.nodes.borrow_and_update().clone();
        if !view.synced {
            debug!("waiting for the first complete Node list before changing anything");
            return Ok(0);
        }
        let writes_before = self.routing.writes();
        let now = unix_now();
        let switched = self.rotate(now, &view.own_annotations);
        let public = self.key.public_key();
        let next_key = self.rotation.as_ref().and_then(Rotation::announced);
        let epochs = self.ipsec_step(now, &view.own_annotations);
        self.switch_wake = next_key
            .map(|next| next.switch_at)
            .into_iter()
            .chain(next_switch(view.nodes.values(), now))
            .chain(self.ipsec_epochs.as_ref().and_then(EpochState::next_wake))
            .filter(|at| *at > now)
            .min()
            .map(instant_of);
        // The device first: who holds a key or a pod CIDR there keeps it
        // against a newcomer's claim.
        let link = LinkSpec {
            name: self.config.interface.clone(),
            mtu: self.configured_mtu(FALLBACK_TUNNEL_MTU),
            addresses: BTreeSet::new(),
        };
        self.datapath.ensure_link(&link).await?;
        self.routing.ensure_up(&self.config.interface).await?;
        self.datapath.set_nodes(&NodeSet {
            own: &self.config.node_name,
            own_key: &public,
            epochs: epochs.unwrap_or_default(),
            nodes: &view.nodes,
        });
        let device = self.datapath.observe().await?;
        // Read on every pass: the CNI adds its gateway address with the first
        // pod and may remove or change it at any time. Our link's copy of it
        // comes apart: it stands in only while the CNI has none.
        let addresses = self.routing.local_addresses(&self.config.interface).await?;
        let programmed = device
            .device
            .as_ref()
            .map(|d| d.peers.clone())
            .unwrap_or_default();
        let mut mesh = self.mesh_config(FALLBACK_TUNNEL_MTU, addresses, programmed);
        let mut want = desired(&self.config.node_name, &public, view.nodes.values(), &mesh);
        let host_source = self
            .reporter
            .check_host_sources(&self.config.node_name, &want);
        let (auto_mtu, underlay_devices) = self.underlay(&want).await;
        if let (MtuSetting::Auto, Some(mtu)) = (self.config.mtu, auto_mtu) {
            mesh.mtu = mtu;
            want.state.set_mtu(mtu);
        }
        let exclude = pod_link_exclusions(&self.config.interface, &underlay_devices);
        let pod_link = match self.routing.pod_link_mtu(&exclude).await {
            Ok(found) => found,
            Err(err) => {
                debug!(error = %err, "cannot read the pod links' MTU");
                None
            }
        };
        let mtu = self.reporter.check_pod_mtu(pod_link, mesh.mtu);

        let established: BTreeSet<PublicKey> = device
            .stats
            .iter()
            .filter(|(_, stats)| stats.last_handshake.is_some())
            .map(|(key, _)| *key)
            .collect();
        let routing = self.routing.observe(&self.config.interface).await?;
        let routed = routing.routes.keys().copied().collect();
        let awaiting = gate_routes(&mut want, &established, &routed);
        let observed = ObservedState {
            link: routing.link,
            device: device.device,
            routes: routing.routes,
            catch_alls: routing.catch_alls,
            rules: routing.rules,
        };
        let change = plan(&want.state, &observed);
        if !change.is_empty() {
            let summary = change.summary();
            info!(
                changes = change.len(),
                steps = change.steps().len(),
                peers_upserted = summary.peers_upserted,
                peers_removed = summary.peers_removed,
                routes_written = summary.routes_written,
                routes_removed = summary.routes_removed,
                addresses_added = summary.addresses_added,
                addresses_removed = summary.addresses_removed,
                rules_added = summary.rules_added,
                rules_removed = summary.rules_removed,
                awaiting_handshake = awaiting.len(),
                "applying plan"
            );
        }
        let started = tokio::time::Instant::now();
        let applied = execute(&change, &mut self.datapath, &mut self.routing, &self.key).await;
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
        if applied.is_ok() && self.config.strict.is_some() {
            self.keep_catch_alls(&want.state.catch_alls);
        }
        let mut failures: Vec<String> = match &applied {
            Ok(()) => Vec::new(),
            Err(err) => err.failures.iter().map(ToString::to_string).collect(),
        };
        // Only once the plan's own steps went through: what replaces a
        // stray object must be in place before the stray goes.
        if applied.is_ok()
            && let Err(err) = self.datapath.remove_strays().await
        {
            failures.push(format!("removing stale datapath objects: {err}"));
        }
        // Without it a rotation still works, at the cost of one handshake.
        if applied.is_ok()
            && let Err(err) = self.offer_alternate_key().await
        {
            warn!(error = %err, "cannot give the datapath the rotation's other key");
        }
        let mut handshake = Ok(());
        // After this node switched its key, every session is gone: a new
        // handshake to every peer at once, which reaches the peers that
        // switched to the new key before this node did.
        if applied.is_ok() && (!awaiting.is_empty() || switched) {
            let waiting = want
                .state
                .device
                .peers
                .iter()
                .filter(|(key, _)| switched || awaiting.contains(*key))
                .map(|(key, config)| (*key, config.clone()))
                .collect();
            handshake = self.datapath.request_handshake(&waiting, &self.key).await;
            if let Err(err) = &handshake {
                failures.push(format!("asking for a handshake: {err}"));
            }
        }
        // After the plan: the counter never holds up the datapath, and it
        // reads what this pass left behind.
        let remote = leaks::remote_pod_cidrs(
            &self.config.node_name,
            &view.nodes,
            &self.config.cluster_cidrs,
        );
        let leaks = self.leaks.pass(&remote).await;
        self.reporter.publish(
            &self.config,
            self.datapath.kind(),
            public,
            PassReport {
                view: &view,
                want: &want,
                stats: &device.stats,
                failures,
                warnings: Warnings { mtu, host_source },
                next_key,
                leaks,
                ipsec_epoch: epochs.map(|e| e.current),
                xfrm_errors: epochs.and_then(|_| match crate::xfrm_stat::read() {
                    Ok(counters) => Some(counters),
                    Err(err) => {
                        debug!(error = %err, "no XFRM error counters");
                        None
                    }
                }),
            },
        );
        applied?;
        handshake?;
        Ok(awaiting.len())
    }

    /// This node's rotation step: a switch replaces the key the plan sets on
    /// the datapath in this very pass. A failure is logged and retried on
    /// the next pass; the current key stays meanwhile.
    /// Returns true on a switch.
    fn rotate(&mut self, now: i64, published: &BTreeMap<String, String>) -> bool {
        let Some(rotation) = &mut self.rotation else {
            return false;
        };
        match rotation.step(now, published) {
            Ok(Some(key)) => {
                let previous = std::mem::replace(&mut self.key, key);
                self.previous_key = Some((previous, tokio::time::Instant::now() + ALTERNATE_GRACE));
                true
            }
            Ok(None) => false,
            Err(err) => {
                warn!(error = %err, "key rotation step failed; retrying on the next pass");
                false
            }
        }
    }

    /// Gives the datapath the key whose handshakes it answers besides its
    /// own: the next key while a rotation is under way, the previous one for
    /// [`ALTERNATE_GRACE`] after the switch. Sent on every pass while there is
    /// one (a restarted tunnel has forgotten it), and its removal once.
    async fn offer_alternate_key(&mut self) -> Result<(), crate::datapath::DatapathError> {
        if self
            .previous_key
            .as_ref()
            .is_some_and(|(_, until)| *until <= tokio::time::Instant::now())
        {
            self.previous_key = None;
        }
        let alternate = self
            .rotation
            .as_ref()
            .and_then(Rotation::next_private)
            .or(self.previous_key.as_ref().map(|(key, _)| key));
        if alternate.is_none() && !self.alternate_set {
            return Ok(());
        }
        self.datapath.set_alternate_key(alternate).await?;
        self.alternate_set = alternate.is_some();
        Ok(())
    }

    /// IPsec mode's rekey step (see [`crate::ipsec_epoch`]); a failure to
    /// keep a change is logged and the epochs stay as they were.
    fn ipsec_step(&mut self, now: i64, published: &BTreeMap<String, String>) -> Option<Epochs> {
        let state = self.ipsec_epochs.as_mut()?;
        let published = published
            .get(wireseal_core::annotation::IPSEC_EPOCH)
            .and_then(|value| wireseal_core::annotation::decode_epoch(value).ok());
        let before = state.epochs();
        match state.step(now, published) {
            Ok(epochs) => {
                if epochs.current != before.current {
                    info!(
                        epoch = epochs.current,
                        previous = before.current,
                        "IPsec rekey: new inbound SAs in a new epoch, the old ones kept until \
                         every peer has switched"
                    );
                }
                Some(epochs)
            }
            Err(err) => {
                warn!(error = %err, "cannot keep the IPsec epoch; retrying on the next pass");
                Some(before)
            }
        }
    }

    /// Keeps the catch-alls for strict mode's next start (see
    /// [`crate::lockdown`]), when they changed.
    fn keep_catch_alls(&mut self, catch_alls: &BTreeMap<ipnetwork::IpNetwork, CatchAll>) {
        if self.kept.as_ref() == Some(catch_alls) {
            return;
        }
        match lockdown::save(&self.config.state_dir, catch_alls) {
            Ok(()) => self.kept = Some(catch_alls.clone()),
            Err(err) => warn!(error = %err, "cannot keep the catch-alls for the next start"),
        }
    }

    fn configured_mtu(&self, auto: u32) -> u32 {
        match self.config.mtu {
            MtuSetting::Fixed(fixed) => fixed,
            MtuSetting::Auto => auto,
        }
    }

    fn mesh_config(
        &self,
        mtu: u32,
        addresses: NodeAddresses,
        programmed: BTreeMap<PublicKey, PeerConfig>,
    ) -> MeshConfig {
        MeshConfig {
            interface: self.config.interface.clone(),
            listen_port: self.config.listen_port,
            fwmark: self.config.fwmark,
            route_table: self.config.route_table,
            rule_priority: self.config.rule_priority,
            mtu: self.configured_mtu(mtu),
            persistent_keepalive: self.config.persistent_keepalive,
            cluster_cidrs: self.config.cluster_cidrs.clone(),
            peer_endpoint_cidrs: self.config.peer_endpoint_cidrs.clone(),
            protected: self.protected.clone(),
            strict: self.config.strict.as_ref().map(|strict| Strict {
                catch_all_table: self.config.catch_all_table,
                exclude: strict.exclude.clone(),
            }),
            local_addresses: addresses.elsewhere,
            tunnel_addresses: addresses.tunnel,
            programmed,
            now: unix_now(),
        }
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
}

/// The moment a switch time (seconds since the Unix epoch) comes, on the
/// loop's clock: a little after, so that a pass then sees it as come.
fn instant_of(at: i64) -> tokio::time::Instant {
    let target = std::time::UNIX_EPOCH
        + Duration::from_secs(u64::try_from(at).unwrap_or_default())
        + Duration::from_millis(5);
    let ahead = target
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    tokio::time::Instant::now() + ahead
}

/// Now, in seconds since the Unix epoch (0 before it: a clock that wrong
/// switches every announced key at once, which is what it would see anyway).
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
        })
}

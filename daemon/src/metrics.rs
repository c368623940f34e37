//! Prometheus metrics. Counters and the reconcile histogram are updated where
//! things happen; the gauges that describe the peers are computed from the
//! shared status at scrape time, so a node that left has no series left.
//!
//! Every metric is listed in README.md ("Metrics"), and
//! `deploy/grafana/wireseal.json` may name only these: a test checks it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::leaks::{LeakState, LeakStatus};
use crate::status::{AgentStatus, PeerStatus};
use wireseal_core::coverage::PeerState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct RefusalLabels {
    node: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabel {
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FamilyLabel {
    family: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    version: &'static str,
    datapath: String,
    encryption: String,
    strict: &'static str,
}

/// The reconcile histogram's buckets, seconds: a pass is milliseconds with
/// a few peers and about a second with thousands (bench/results).
const RECONCILE_BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

/// The agent's metrics, cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    per_peer: bool,
    nodes: Gauge,
    watch_errors: Counter,
    relists: Counter,
    refused: Family<RefusalLabels, Counter>,
    /// The label sets of `refused`, so those of nodes that left can go.
    refused_labels: Mutex<BTreeSet<RefusalLabels>>,
    node_writes: Family<ResultLabel, Counter>,
    reconciles: Family<ResultLabel, Counter>,
    reconcile_seconds: Histogram,
    info: Family<InfoLabels, Gauge>,
    peers_expected: Family<FamilyLabel, Gauge>,
    peers_encrypted: Family<FamilyLabel, Gauge>,
    peers_not_peered: Gauge,
    peer_rx: Family<PeerLabel, Gauge>,
    peer_tx: Family<PeerLabel, Gauge>,
    peer_handshake_age: Family<PeerLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    peer_encrypted: Family<PeerLabel, Gauge>,
    tunnel_mtu: Gauge,
    pod_mtu_above_tunnel: Gauge,
    host_source_missing: Gauge,
    last_apply_ok: Gauge,
    leaked_packets: Family<FamilyLabel, Counter>,
    leaked_bytes: Family<FamilyLabel, Counter>,
    /// The kernel's leak counts as last mirrored into the two counters above.
    leaks_seen: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    leak_counter_up: Gauge,
    xfrm_errors: Family<XfrmLabel, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct XfrmLabel {
    counter: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh metrics, with the per-peer series.
    #[must_use]
    pub fn new() -> Self {
        Self::with_per_peer(true)
    }

    /// Fresh metrics; `per_peer` adds a series per remote node to four of
    /// them (N² series across a cluster of N nodes).
    #[must_use]
    pub fn with_per_peer(per_peer: bool) -> Self {
        Self {
            inner: Arc::new(Inner {
                per_peer,
                nodes: Gauge::default(),
                watch_errors: Counter::default(),
                relists: Counter::default(),
                refused: Family::default(),
                refused_labels: Mutex::new(BTreeSet::new()),
                node_writes: Family::default(),
                reconciles: Family::default(),
                reconcile_seconds: Histogram::new(RECONCILE_BUCKETS),
                info: Family::default(),
                peers_expected: Family::default(),
                peers_encrypted: Family::default(),
                peers_not_peered: Gauge::default(),
                peer_rx: Family::default(),
                peer_tx: Family::default(),
                peer_handshake_age: Family::default(),
                peer_encrypted: Family::default(),
                tunnel_mtu: Gauge::default(),
                pod_mtu_above_tunnel: Gauge::default(),
                host_source_missing: Gauge::default(),
                last_apply_ok: Gauge::default(),
                leaked_packets: Family::default(),
                leaked_bytes: Family::default(),
                leaks_seen: Mutex::new(BTreeMap::new()),
                leak_counter_up: Gauge::default(),
                xfrm_errors: Family::default(),
            }),
        }
    }

    /// Number of Nodes seen.
    pub fn set_nodes(&self, count: usize) {
        self.inner.nodes.set(saturate(count));
    }

    /// A Node watch error.
    pub fn watch_error(&self) {
        self.inner.watch_errors.inc();
    }

    /// A complete Node list was read.
    pub fn nodes_relisted(&self) {
        self.inner.relists.inc();
    }

    /// Input of `node` refused: bad input, or a claim out of bounds or
    /// held by another node (`kind`).
    pub fn refused(&self, node: &str, kind: &'static str) {
        let labels = RefusalLabels {
            node: node.to_owned(),
            kind,
        };
        self.inner.refused.get_or_create(&labels).inc();
        self.inner
            .refused_labels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(labels);
    }

    /// A write to this node's Node object (annotations, condition, taint).
    pub fn node_write(&self, ok: bool) {
        self.inner.node_writes.get_or_create(&result(ok)).inc();
    }

    /// A reconcile pass and how long it took.
    pub fn reconcile(&self, ok: bool, took: Duration) {
        self.inner.reconciles.get_or_create(&result(ok)).inc();
        self.inner.reconcile_seconds.observe(took.as_secs_f64());
    }

    /// Renders every metric in the OpenMetrics text format; the gauges that
    /// describe the peers come from `current`, the agent's status now.
    #[must_use]
    pub fn encode(&self, current: &AgentStatus) -> String {
        self.refresh(current, SystemTime::now());
        let mut registry = Registry::with_prefix("wireseal");
        self.register(&mut registry);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }

    /// Every metric family the agent exports, by the name its `# TYPE` line
    /// gives it (counters without `_total`), with its OpenMetrics type.
    /// Read from the encoded registry of a fresh instance in which every
    /// family has a series, so docs and dashboards are checked against what
    /// is really served (README.md's table, `deploy/grafana/wireseal.json`).
    #[must_use]
    pub fn exported_families() -> BTreeMap<String, String> {
        let metrics = Self::new();
        metrics.refused("node-1", "key");
        metrics.node_write(true);
        metrics.reconcile(true, Duration::ZERO);
        let mut key = [0; 32];
        key[0] = 9; // X25519's base point: a valid public key
        let status = AgentStatus {
            peers: vec![PeerStatus {
                node: "node-1".to_owned(),
                public_key: wireseal_core::PublicKey::from_bytes(key).ok(),
                endpoint: None,
                allowed_ips: vec!["10.244.1.0/24".to_owned()],
                last_handshake_unix: Some(1),
                rx_bytes: 1,
                tx_bytes: 1,
                encrypted: true,
                state: PeerState::Encrypted,
                issues: Vec::new(),
                host_sources: Vec::new(),
            }],
            leaks: LeakStatus {
                state: LeakState::Counting,
                ..LeakStatus::default()
            },
            xfrm_errors: Some(BTreeMap::from([("XfrmInError".to_owned(), 0)])),
            ..AgentStatus::default()
        };
        metrics
            .encode(&status)
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|rest| {
                let mut words = rest.split_whitespace();
                Some((words.next()?.to_owned(), words.next()?.to_owned()))
            })
            .collect()
    }

    /// Sets the gauges from the status at `now`, and forgets the series of
    /// nodes that are gone.
    fn refresh(&self, current: &AgentStatus, now: SystemTime) {
        let inner = &self.inner;
        inner.info.clear();
        inner
            .info
            .get_or_create(&InfoLabels {
                version: env!("CARGO_PKG_VERSION"),
                datapath: current
                    .datapath
                    .map_or_else(|| "none".to_owned(), |d| d.to_string()),
                encryption: current.encryption.to_string(),
                strict: if current.strict { "true" } else { "false" },
            })
            .set(1);

        // The kernel's counters, mirrored as they are (it counts since the
        // namespace was made, not since the agent started).
        inner.xfrm_errors.clear();
        for (counter, value) in current.xfrm_errors.iter().flatten() {
            inner
                .xfrm_errors
                .get_or_create(&XfrmLabel {
                    counter: counter.clone(),
                })
                .set(i64::try_from(*value).unwrap_or(i64::MAX));
        }

        inner.peers_expected.clear();
        inner.peers_encrypted.clear();
        for family in ["ipv4", "ipv6"] {
            let in_family: Vec<_> = current
                .peers
                .iter()
                .filter(|p| {
                    p.public_key.is_some() && p.allowed_ips.iter().any(|c| family_of(c) == family)
                })
                .collect();
            let label = FamilyLabel { family };
            inner
                .peers_expected
                .get_or_create(&label)
                .set(saturate(in_family.len()));
            inner
                .peers_encrypted
                .get_or_create(&label)
                .set(saturate(in_family.iter().filter(|p| p.encrypted).count()));
        }
        inner
            .peers_not_peered
            .set(saturate(current.coverage.not_peered));

        inner.peer_rx.clear();
        inner.peer_tx.clear();
        inner.peer_handshake_age.clear();
        inner.peer_encrypted.clear();
        if inner.per_peer {
            let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            for peer in current.peers.iter().filter(|p| p.public_key.is_some()) {
                let label = PeerLabel {
                    peer: peer.node.clone(),
                };
                inner
                    .peer_rx
                    .get_or_create(&label)
                    .set(saturate64(peer.rx_bytes));
                inner
                    .peer_tx
                    .get_or_create(&label)
                    .set(saturate64(peer.tx_bytes));
                inner
                    .peer_encrypted
                    .get_or_create(&label)
                    .set(i64::from(peer.encrypted));
                if let Some(at) = peer.last_handshake_unix {
                    #[allow(
                        clippy::cast_precision_loss,
                        reason = "an age in seconds is far below 2^52"
                    )]
                    let age = now.saturating_sub(at) as f64;
                    inner.peer_handshake_age.get_or_create(&label).set(age);
                }
            }
        }

        // Refusals of nodes that left go: a counter of a node that is back
        // starts again from zero, as Prometheus' rate() expects of a reset.
        let present: BTreeSet<&str> = current.peers.iter().map(|p| p.node.as_str()).collect();
        let mut labels = inner
            .refused_labels
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        labels.retain(|label| {
            let keep = present.contains(label.node.as_str()) || current.peers.is_empty();
            if !keep {
                inner.refused.remove(label);
            }
            keep
        });

        inner.tunnel_mtu.set(i64::from(current.tunnel_mtu));
        inner
            .pod_mtu_above_tunnel
            .set(i64::from(current.mtu_warning.is_some()));
        inner
            .host_source_missing
            .set(i64::from(current.host_source_warning.is_some()));
        inner.last_apply_ok.set(i64::from(current.last_apply_ok));
        self.mirror_leaks(&current.leaks);
    }

    /// Follows the kernel's leak counters. They only grow while the table
    /// lives; a smaller value means it was made anew (at zero), so all of it
    /// is new. The series exist only once the kernel has counted: absent on
    /// a node where the counter is unavailable.
    fn mirror_leaks(&self, leaks: &LeakStatus) {
        let inner = &self.inner;
        let counting = leaks.state == LeakState::Counting;
        inner.leak_counter_up.set(i64::from(counting));
        if !counting {
            return;
        }
        let mut seen = inner
            .leaks_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (family, count) in [("ipv4", leaks.ipv4), ("ipv6", leaks.ipv6)] {
            let label = FamilyLabel { family };
            for (what, now, counter) in [
                ("packets", count.packets, &inner.leaked_packets),
                ("bytes", count.bytes, &inner.leaked_bytes),
            ] {
                let before = seen.insert((what, family), now).unwrap_or(0);
                let new = if now >= before { now - before } else { now };
                counter.get_or_create(&label).inc_by(new);
            }
        }
    }

    fn register(&self, registry: &mut Registry) {
        let inner = &self.inner;
        registry.register(
            "info",
            "1, labelled with the agent's version, datapath, encryption and strict mode",
            inner.info.clone(),
        );
        registry.register("nodes", "Nodes in the cluster", inner.nodes.clone());
        registry.register(
            "peers_expected",
            "Remote nodes that are peers, with pod CIDRs of this family",
            inner.peers_expected.clone(),
        );
        registry.register(
            "peers_encrypted",
            "Of those, peers whose traffic is encrypted now (a handshake with the current key, routed into the tunnel, not broken)",
            inner.peers_encrypted.clone(),
        );
        registry.register(
            "peers_not_peered",
            "Remote nodes that are not peers (no key, bad input, refused claims)",
            inner.peers_not_peered.clone(),
        );
        registry.register(
            "peer_encrypted",
            "1 when this peer's traffic is encrypted now",
            inner.peer_encrypted.clone(),
        );
        registry.register(
            "peer_receive_bytes",
            "Bytes received from this peer through the tunnel, as the datapath counts them",
            inner.peer_rx.clone(),
        );
        registry.register(
            "peer_transmit_bytes",
            "Bytes sent to this peer through the tunnel, as the datapath counts them",
            inner.peer_tx.clone(),
        );
        registry.register_with_unit(
            "peer_last_handshake_age",
            "Time since this peer's last completed handshake",
            prometheus_client::registry::Unit::Seconds,
            inner.peer_handshake_age.clone(),
        );
        registry.register(
            "tunnel_mtu",
            "MTU of the tunnel interface (bytes)",
            inner.tunnel_mtu.clone(),
        );
        registry.register(
            "pod_mtu_above_tunnel",
            "1 when the CNI's pod MTU is above the tunnel MTU (pods then rely on path MTU discovery)",
            inner.pod_mtu_above_tunnel.clone(),
        );
        registry.register(
            "host_source_missing",
            "1 when routes into the tunnel have no local source inside this node's pod CIDRs: \
             traffic from the node itself to pods on other nodes is then dropped by the peers",
            inner.host_source_missing.clone(),
        );
        registry.register(
            "last_apply_ok",
            "1 when the last reconcile pass applied without error",
            inner.last_apply_ok.clone(),
        );
        registry.register(
            "leaked_packets",
            "Packets that left this node for another node's pod CIDR not through the tunnel, \
             counted by the kernel (nftables table inet wireseal); absent where it cannot count",
            inner.leaked_packets.clone(),
        );
        registry.register(
            "leaked_bytes",
            "Bytes of those packets",
            inner.leaked_bytes.clone(),
        );
        registry.register(
            "ipsec_xfrm_errors",
            "IPsec mode: the kernel's XFRM error counters (/proc/net/xfrm_stat) by name: \
             XfrmOutNoStates (sent without an SA: dropped), XfrmInStateProtoError (failed \
             authentication), XfrmInStateSeqError (replays) and the rest; absent otherwise",
            inner.xfrm_errors.clone(),
        );
        registry.register(
            "leak_counter_up",
            "1 when the kernel's leak counter is programmed and was read on the last pass",
            inner.leak_counter_up.clone(),
        );
        registry.register("reconciles", "Reconcile passes", inner.reconciles.clone());
        registry.register_with_unit(
            "reconcile_duration",
            "Time a reconcile pass took",
            prometheus_client::registry::Unit::Seconds,
            inner.reconcile_seconds.clone(),
        );
        registry.register(
            "node_writes",
            "Writes to this node's Node object (annotations and condition)",
            inner.node_writes.clone(),
        );
        registry.register(
            "node_watch_errors",
            "Errors of the Node watch",
            inner.watch_errors.clone(),
        );
        registry.register(
            "node_relists",
            "Complete Node lists read",
            inner.relists.clone(),
        );
        registry.register(
            "refused_peer_input",
            "Inputs of other nodes refused: bad values, and claims out of bounds or held by another node (kind)",
            inner.refused.clone(),
        );
    }
}

fn result(ok: bool) -> ResultLabel {
    ResultLabel {
        result: if ok { "ok" } else { "error" },
    }
}

fn saturate(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn saturate64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn family_of(cidr: &str) -> &'static str {
    if cidr.contains(':') { "ipv6" } else { "ipv4" }
}

#[cfg(test)]
mod tests;

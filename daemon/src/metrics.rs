//! Prometheus metrics. Counters are updated where things happen; gauges that
//! describe the peers are computed from the shared status at scrape time.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::status::SharedStatus;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabel {
    node: String,
}

/// The agent's metrics, cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    nodes: Gauge,
    watch_errors: Counter,
    relists: Counter,
    invalid_input: Family<NodeLabel, Counter>,
    annotation_patches: Family<ResultLabel, Counter>,
    reconciles: Family<ResultLabel, Counter>,
    peers_expected: Gauge,
    peers_encrypted: Gauge,
    host_source_missing: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh metrics.
    #[must_use]
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                nodes: Gauge::default(),
                watch_errors: Counter::default(),
                relists: Counter::default(),
                invalid_input: Family::default(),
                annotation_patches: Family::default(),
                reconciles: Family::default(),
                peers_expected: Gauge::default(),
                peers_encrypted: Gauge::default(),
                host_source_missing: Gauge::default(),
            }),
        }
    }

    /// Number of Nodes seen.
    pub fn set_nodes(&self, count: usize) {
        self.inner
            .nodes
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// A Node watch error.
    pub fn watch_error(&self) {
        self.inner.watch_errors.inc();
    }

    /// A complete Node list was read.
    pub fn nodes_relisted(&self) {
        self.inner.relists.inc();
    }

    /// Invalid input found on `node`.
    pub fn invalid_input(&self, node: &str) {
        self.inner
            .invalid_input
            .get_or_create(&NodeLabel {
                node: node.to_owned(),
            })
            .inc();
    }

    /// A patch of this node's annotations.
    pub fn annotation_patch(&self, ok: bool) {
        self.inner
            .annotation_patches
            .get_or_create(&result(ok))
            .inc();
    }

    /// A reconcile pass.
    pub fn reconcile(&self, ok: bool) {
        self.inner.reconciles.get_or_create(&result(ok)).inc();
    }

    /// Renders every metric in the OpenMetrics text format.
    #[must_use]
    pub fn encode(&self, status: &SharedStatus) -> String {
        let current = status.get();
        self.inner
            .peers_expected
            .set(i64::try_from(current.expected()).unwrap_or(i64::MAX));
        self.inner
            .peers_encrypted
            .set(i64::try_from(current.encrypted()).unwrap_or(i64::MAX));
        self.inner
            .host_source_missing
            .set(i64::from(current.host_source_warning.is_some()));
        let mut registry = Registry::with_prefix("wireseal");
        let inner = &self.inner;
        registry.register("nodes", "Nodes in the cluster", inner.nodes.clone());
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
            "invalid_peer_input",
            "Invalid wireseal inputs found on Nodes",
            inner.invalid_input.clone(),
        );
        registry.register(
            "annotation_patches",
            "Patches of this node's annotations",
            inner.annotation_patches.clone(),
        );
        registry.register("reconciles", "Reconcile passes", inner.reconciles.clone());
        registry.register(
            "peers_expected",
            "Remote nodes that should be peers",
            inner.peers_expected.clone(),
        );
        registry.register(
            "peers_encrypted",
            "Peers with a recent handshake",
            inner.peers_encrypted.clone(),
        );
        registry.register(
            "host_source_missing",
            "1 when routes into the tunnel have no local source inside this node's pod CIDRs: \
             traffic from the node itself to pods on other nodes is then dropped by the peers",
            inner.host_source_missing.clone(),
        );
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

fn result(ok: bool) -> ResultLabel {
    ResultLabel {
        result: if ok { "ok" } else { "error" },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::AgentStatus;

    #[test]
    fn a_missing_host_source_is_a_metric() {
        let metrics = Metrics::new();
        let status = SharedStatus::default();
        assert!(
            metrics
                .encode(&status)
                .contains("\nwireseal_host_source_missing 0\n")
        );
        status.replace(AgentStatus {
            host_source_warning: Some("no address in 10.244.0.0/24".into()),
            ..AgentStatus::default()
        });
        let text = metrics.encode(&status);
        assert!(
            text.contains("\nwireseal_host_source_missing 1\n"),
            "{text}"
        );
        assert!(text.contains("\nwireseal_peers_expected 0\n"), "{text}");
    }
}

//! What the reconcile loop tells the world after each pass: the local status
//! (`wireseal status`, `/status`, the metrics), this node's own annotations
//! and the problems with other nodes' inputs (for the Kubernetes side to
//! publish and raise Events about), and the warnings an operator must see
//! (no host source, a pod MTU above the tunnel's), each logged once per change.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tracing::{info, warn};
use wireseal_core::NextKey;
use wireseal_core::annotation::{self, NodeStatus};
use wireseal_core::coverage::{Observed, PeerState};
use wireseal_core::state::Family;
use wireseal_core::{Coverage, DatapathKind, Desired, Encryption, PeerStats, PublicKey, coverage};

use crate::channels::{ClusterView, EncryptedCondition, Outputs, Problem};
use crate::config::{Config, EndpointSetting};
use crate::leaks::LeakStatus;
use crate::status::{AgentStatus, KeyRotationStatus, PeerStatus, SharedStatus};

/// What a pass found worth an operator's attention.
#[derive(Debug, Default)]
pub struct Warnings {
    /// The CNI's pod MTU is above the tunnel MTU.
    pub mtu: Option<String>,
    /// A family routed into the tunnel has no host source.
    pub host_source: Option<String>,
}

/// The outcome of one pass, as reported.
#[derive(Debug)]
pub struct PassReport<'a> {
    /// The cluster as the pass saw it.
    pub view: &'a ClusterView,
    /// The desired state and the account of every remote node.
    pub want: &'a Desired,
    /// The device's per-peer statistics.
    pub stats: &'a BTreeMap<PublicKey, PeerStats>,
    /// What failed, each naming its step; empty when the pass applied.
    pub failures: Vec<String>,
    /// The pass's warnings.
    pub warnings: Warnings,
    /// This node's rotation under way, announced on its Node.
    pub next_key: Option<NextKey>,
    /// The leak counter after the pass.
    pub leaks: LeakStatus,
    /// IPsec mode: this node's current key epoch, published on its Node.
    pub ipsec_epoch: Option<u32>,
    /// IPsec mode: the kernel's XFRM error counters.
    pub xfrm_errors: Option<BTreeMap<String, u64>>,
}

/// The loop's reporting half, with the warnings of earlier passes so that
/// each is logged when it changes, not on every pass.
#[derive(Debug)]
pub struct Reporter {
    outputs: watch::Sender<Outputs>,
    status: SharedStatus,
    /// The datapath's statistics at the last pass (a broken peer is one
    /// this node keeps sending to without an answer).
    previous_stats: BTreeMap<PublicKey, PeerStats>,
    status_hold: Hold<NodeStatus>,
    condition_hold: Hold<EncryptedCondition>,
    mtu_warning: Option<String>,
    host_sources: BTreeMap<Family, IpAddr>,
    host_source_warning: Option<String>,
}

impl Reporter {
    /// Reports through these channels; what other nodes see changes only
    /// after holding for `hold`.
    #[must_use]
    pub fn new(outputs: watch::Sender<Outputs>, status: SharedStatus, hold: Duration) -> Self {
        Self {
            outputs,
            status,
            previous_stats: BTreeMap::new(),
            status_hold: Hold::new(hold),
            condition_hold: Hold::new(hold),
            mtu_warning: None,
            host_sources: BTreeMap::new(),
            host_source_warning: None,
        }
    }

    /// Host-network traffic to pods on other nodes only passes the peers'
    /// WireGuard with a source inside this node's pod CIDRs. Logs the
    /// sources when they change, and warns once per change when a family
    /// routed into the tunnel has none.
    pub fn check_host_sources(&mut self, node: &str, want: &Desired) -> Option<String> {
        if want.host_sources != self.host_sources {
            if !want.host_sources.is_empty() {
                info!(
                    node,
                    sources = ?want.host_sources.values().collect::<Vec<_>>(),
                    "host-network traffic into the tunnel leaves from this node's pod address"
                );
            }
            self.host_sources.clone_from(&want.host_sources);
        }
        if want.host_source_issues.is_empty() {
            if self.host_source_warning.take().is_some() {
                info!(
                    node,
                    "every family routed into the tunnel has a host source again"
                );
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

    /// TCP MSS cannot be clamped without iptables or nftables, which wireseal
    /// does not touch; the routes in its table carry the tunnel MTU, so pods
    /// learn it through path MTU discovery — unless ICMP is filtered on the
    /// way. When the CNI gave its pods (`pod_link`: name and MTU) a larger MTU
    /// than the `tunnel`'s, say so, once per change.
    pub fn check_pod_mtu(
        &mut self,
        pod_link: Option<(String, u32)>,
        tunnel: u32,
    ) -> Option<String> {
        let (link, mtu) = pod_link?;
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

    /// Publishes the outcome of a pass: the status, this node's annotations
    /// and condition, and the problems with other nodes' inputs.
    pub fn publish(
        &mut self,
        config: &Config,
        datapath: DatapathKind,
        public_key: PublicKey,
        pass: PassReport<'_>,
    ) {
        let PassReport {
            view,
            want,
            stats,
            failures,
            warnings,
            next_key,
            leaks,
            ipsec_epoch,
            xfrm_errors,
        } = pass;
        let applied = failures.is_empty();
        let coverage = coverage(
            Observed {
                nodes: &want.nodes,
                peers: &want.state.device.peers,
                routes: &want.state.routes,
                stats,
                previous: &self.previous_stats,
            },
            SystemTime::now(),
        );
        self.previous_stats.clone_from(stats);
        let peers: Vec<PeerStatus> = want
            .nodes
            .iter()
            .map(|(name, outcome)| {
                let peer_stats = outcome
                    .peer
                    .and_then(|key| stats.get(&key))
                    .copied()
                    .unwrap_or_default();
                let state = coverage
                    .nodes
                    .get(name)
                    .copied()
                    .unwrap_or(PeerState::NotPeered);
                let mut peer = PeerStatus::new(name, outcome, want, peer_stats, state);
                peer.host_sources = view
                    .nodes
                    .get(name)
                    .and_then(|node| node.status.as_ref())
                    .map(|status| status.host_sources.clone())
                    .unwrap_or_default();
                peer
            })
            .collect();
        let own_status = NodeStatus {
            datapath: Some(datapath),
            encryption: Some(config.encryption),
            encryption_ready: applied && coverage.complete(),
            peers_expected: u32::try_from(coverage.expected).unwrap_or(u32::MAX),
            peers_encrypted: u32::try_from(coverage.encrypted).unwrap_or(u32::MAX),
            // A fixed text: a count or the failures themselves would turn
            // every flapping failure into a Node write that every agent
            // receives. The local status names them.
            message: (!applied).then(|| {
                "the last reconcile failed; `wireseal status` on the node names what".to_owned()
            }),
            host_sources: want.host_sources.values().copied().collect(),
        };
        let condition = encrypted_condition(
            view.synced,
            applied,
            &coverage,
            datapath,
            config.encryption,
            config.strict.is_some(),
        );
        // What every agent in the cluster receives: published only once it
        // has held for a while, so a flapping peer is not a Node write (and
        // a watch event on every node) per pass.
        let now = Instant::now();
        let ready = own_status.encryption_ready;
        let status = self.status_hold.offer(own_status, now, ready).clone();
        let ready = condition.status;
        let condition = self.condition_hold.offer(condition, now, ready).clone();
        let endpoint = own_endpoint(config, view);
        let own = annotation::encode_own(
            &public_key,
            next_key.as_ref(),
            endpoint,
            Some(&status),
            ipsec_epoch,
        );
        let programmed = applied || self.outputs.borrow().programmed;
        self.outputs.send_replace(Outputs {
            own_annotations: Some(own),
            own_condition: Some(condition),
            problems: input_problems(want),
            programmed,
        });
        self.status.replace(AgentStatus {
            node: config.node_name.clone(),
            datapath: Some(datapath),
            encryption: config.encryption,
            strict: config.strict.is_some(),
            public_key: Some(public_key),
            key_rotation: next_key.map(|next| KeyRotationStatus {
                next_public_key: next.key,
                switch_at: wireseal_core::rotation::format_switch_at(next.switch_at),
            }),
            synced: view.synced,
            last_apply_ok: applied,
            failures,
            coverage,
            tunnel_mtu: want.state.link.mtu,
            mtu_warning: warnings.mtu,
            host_sources: want.host_sources.values().copied().collect(),
            host_source_warning: warnings.host_source,
            peers,
            leaks,
            xfrm_errors,
        });
    }
}

/// Hysteresis for what every agent in the cluster receives: the first value
/// goes out at once, and so does a change to a good state (`immediate`);
/// any other change goes out only once it has been offered unchanged for
/// `hold`, so a peer that flaps is not a Node write per pass.
#[derive(Debug)]
pub struct Hold<T> {
    hold: Duration,
    published: Option<T>,
    pending: Option<(T, Instant)>,
}

impl<T: Clone + PartialEq> Hold<T> {
    /// Holds changes for `hold`.
    #[must_use]
    pub fn new(hold: Duration) -> Self {
        Self {
            hold,
            published: None,
            pending: None,
        }
    }

    /// Offers the current `value` at `now`; returns what to publish.
    pub fn offer(&mut self, value: T, now: Instant, immediate: bool) -> &T {
        let published = match self.published.take() {
            None => value,
            Some(published) if published == value => {
                self.pending = None;
                published
            }
            Some(_) if immediate => {
                self.pending = None;
                value
            }
            Some(published) => match self.pending.take() {
                Some((pending, since)) if pending == value => {
                    if now.saturating_duration_since(since) >= self.hold {
                        value
                    } else {
                        self.pending = Some((pending, since));
                        published
                    }
                }
                _ => {
                    self.pending = Some((value, now));
                    published
                }
            },
        };
        self.published.insert(published)
    }
}

/// The condition for a pass.
fn encrypted_condition(
    synced: bool,
    applied: bool,
    coverage: &Coverage,
    datapath: DatapathKind,
    encryption: Encryption,
    strict: bool,
) -> EncryptedCondition {
    let reason: &str = if !synced {
        "NotSynced"
    } else if !applied {
        "ApplyFailed"
    } else if coverage.complete() {
        "AllPeersEncrypted"
    } else {
        "PeersNotEncrypted"
    };
    EncryptedCondition {
        status: reason == "AllPeersEncrypted",
        reason: reason.to_owned(),
        message: format!(
            "{}/{} peers encrypted, datapath {datapath}{}{}",
            coverage.encrypted,
            coverage.expected,
            if encryption == Encryption::Ipsec {
                ", ipsec"
            } else {
                ""
            },
            if strict { ", strict" } else { "" }
        ),
    }
}

/// Per remote node, its bad input and refused claims: these get a log line,
/// a metric and an Event (the other issues are states, not refusals).
fn input_problems(want: &Desired) -> BTreeMap<String, Vec<Problem>> {
    want.nodes
        .iter()
        .filter_map(|(name, outcome)| {
            let lines: Vec<Problem> = outcome
                .issues
                .iter()
                .filter_map(|issue| {
                    issue.refusal().map(|kind| Problem {
                        kind,
                        message: issue.to_string(),
                    })
                })
                .collect();
            (!lines.is_empty()).then(|| (name.clone(), lines))
        })
        .collect()
}

/// The endpoint this node publishes: the configured one, else its InternalIP
/// on the listen port.
fn own_endpoint(config: &Config, view: &ClusterView) -> Option<SocketAddr> {
    let port = config.listen_port;
    match config.endpoint {
        EndpointSetting::SocketAddr(addr) => Some(addr),
        EndpointSetting::Address(ip) => Some(SocketAddr::new(ip, port)),
        EndpointSetting::Auto => view
            .nodes
            .get(&config.node_name)
            .and_then(wireseal_core::NodeView::internal_ip)
            .map(|ip| SocketAddr::new(ip, port)),
    }
}

/// The underlay devices the paths to the peers leave through, so the pod
/// MTU check does not mistake them for pod links.
#[must_use]
pub fn pod_link_exclusions(interface: &str, underlay: &BTreeSet<String>) -> BTreeSet<String> {
    let mut exclude = underlay.clone();
    exclude.insert(interface.to_owned());
    exclude
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worse_value_goes_out_only_once_it_held_and_a_good_one_at_once() {
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let mut hold = Hold::new(Duration::from_secs(30));
        assert_eq!(
            *hold.offer("bad", at(0), false),
            "bad",
            "the first value at once"
        );
        assert_eq!(
            *hold.offer("good", at(1), true),
            "good",
            "a good state at once"
        );

        // A flap shorter than the hold is never published.
        assert_eq!(*hold.offer("bad", at(2), false), "good");
        assert_eq!(*hold.offer("bad", at(31), false), "good");
        assert_eq!(*hold.offer("good", at(32), true), "good");
        assert_eq!(
            *hold.offer("bad", at(40), false),
            "good",
            "the flap ended: the hold starts again"
        );
        assert_eq!(*hold.offer("bad", at(69), false), "good");
        assert_eq!(*hold.offer("bad", at(70), false), "bad", "held for 30 s");

        // A worse state that changes while held starts its hold again.
        assert_eq!(*hold.offer("worse", at(71), false), "bad");
        assert_eq!(*hold.offer("worst", at(100), false), "bad");
        assert_eq!(*hold.offer("worst", at(129), false), "bad");
        assert_eq!(*hold.offer("worst", at(130), false), "worst");
    }
}

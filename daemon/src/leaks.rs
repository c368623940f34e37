//! The leak counter's agent side: keeps the kernel's `inet wireseal` table
//! (see [`wireseal_netlink::nftables`]) in line with the other nodes' pod
//! CIDRs on every pass, reads its counters, and says how it went in the
//! status. It never fails a pass: a kernel without `nftables` is warned
//! about once and the counter is reported unavailable; any other failure is
//! reported, logged when it changes, and retried on the next pass.

use std::collections::BTreeMap;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use wireseal_core::NodeView;
use wireseal_netlink::nftables::{LeakCounter, LeakCounts};

/// How far the leak counter got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LeakState {
    /// The kernel counts; the numbers are current.
    Counting,
    /// The kernel has no `nftables` (or the agent may not use it), or the
    /// datapath is the in-memory one of the tests: nothing is counted.
    #[default]
    Unavailable,
    /// Programming or reading the table failed on the last pass; the
    /// numbers are those of the last successful read.
    Error,
}

/// Packets and bytes counted for one family.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeakCount {
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// The leak counter in the local status (`wireseal status --json`, `leaks`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeakStatus {
    /// Whether the numbers below are being counted.
    pub state: LeakState,
    /// IPv4 packets that left for another node's pod CIDR outside the tunnel.
    pub ipv4: LeakCount,
    /// IPv6 likewise.
    pub ipv6: LeakCount,
    /// Why the counter is unavailable or failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl LeakStatus {
    /// Both families' packets.
    #[must_use]
    pub fn packets(&self) -> u64 {
        self.ipv4.packets.saturating_add(self.ipv6.packets)
    }

    /// The one-line summary `wireseal status` prints.
    #[must_use]
    pub fn line(&self) -> String {
        match self.state {
            LeakState::Unavailable => format!(
                "leak counter unavailable ({})",
                self.error.as_deref().unwrap_or("not started")
            ),
            LeakState::Counting | LeakState::Error => {
                let mut line = format!(
                    "{} packets ({} bytes) left for other nodes' pods outside the tunnel \
                     (ipv4 {}, ipv6 {})",
                    self.packets(),
                    self.ipv4.bytes.saturating_add(self.ipv6.bytes),
                    self.ipv4.packets,
                    self.ipv6.packets
                );
                if let Some(error) = &self.error {
                    line.push_str(&format!("; counter failing: {error}"));
                }
                line
            }
        }
    }
}

/// The other nodes' pod CIDRs whose traffic the counter watches: every
/// remote Node's, inside the cluster CIDRs when those are configured (a
/// claim outside them is not pod traffic wireseal carries), none that
/// overlaps this node's own (its own pods' traffic never leaves).
#[must_use]
pub fn remote_pod_cidrs(
    self_name: &str,
    nodes: &BTreeMap<String, NodeView>,
    cluster_cidrs: &[IpNetwork],
) -> Vec<IpNetwork> {
    let own: &[IpNetwork] = nodes.get(self_name).map_or(&[], |n| &n.pod_cidrs);
    let mut out: Vec<IpNetwork> = nodes
        .values()
        .filter(|node| node.name != self_name)
        .flat_map(|node| node.pod_cidrs.iter().copied())
        .filter(|cidr| cluster_cidrs.is_empty() || cluster_cidrs.iter().any(|c| contains(c, cidr)))
        .filter(|cidr| !own.iter().any(|o| contains(o, cidr) || contains(cidr, o)))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

fn contains(outer: &IpNetwork, inner: &IpNetwork) -> bool {
    outer.prefix() <= inner.prefix() && outer.contains(inner.network())
}

/// The counter as the reconcile loop drives it.
#[derive(Debug, Default)]
pub struct Leaks {
    counter: Option<LeakCounter>,
    /// The tunnel interface, to (re)open the counter with.
    tunnel: Option<String>,
    /// The CIDRs the kernel's sets hold, as last written.
    applied: Option<Vec<IpNetwork>>,
    status: LeakStatus,
}

impl Leaks {
    /// No counter: the status says unavailable, with `reason`.
    #[must_use]
    pub fn disabled(reason: &str) -> Self {
        Self {
            status: LeakStatus {
                error: Some(reason.to_owned()),
                ..LeakStatus::default()
            },
            ..Self::default()
        }
    }

    /// A counter for traffic not leaving through `tunnel`; the socket opens
    /// on the first pass.
    #[must_use]
    pub fn for_tunnel(tunnel: &str) -> Self {
        Self {
            tunnel: Some(tunnel.to_owned()),
            ..Self::default()
        }
    }

    /// Brings the table in line with `remote` and reads the counters.
    pub async fn pass(&mut self, remote: &[IpNetwork]) -> LeakStatus {
        let Some(tunnel) = self.tunnel.clone() else {
            return self.status.clone();
        };
        match self.sync(&tunnel, remote).await {
            Ok(counts) => {
                if self.status.state != LeakState::Counting {
                    info!(
                        table = "inet wireseal",
                        cidrs = remote.len(),
                        "leak counter counting"
                    );
                }
                self.status = LeakStatus {
                    state: LeakState::Counting,
                    ipv4: count(&counts, false),
                    ipv6: count(&counts, true),
                    error: None,
                };
            }
            Err(err) if err.unsupported() => {
                warn!(error = %err, "the kernel has no nftables for wireseal's leak counter; it stays unavailable");
                self.tunnel = None;
                self.counter = None;
                self.status = LeakStatus {
                    error: Some(format!("no nftables in this kernel: {err}")),
                    ..LeakStatus::default()
                };
            }
            Err(err) => {
                let error = err.to_string();
                if self.status.error.as_ref() != Some(&error) {
                    warn!(error = %error, "leak counter failing; retrying on the next pass");
                }
                // A fresh socket next time: this one may be what broke.
                self.counter = None;
                self.applied = None;
                self.status.state = LeakState::Error;
                self.status.error = Some(error);
            }
        }
        self.status.clone()
    }

    async fn sync(
        &mut self,
        tunnel: &str,
        remote: &[IpNetwork],
    ) -> Result<LeakCounts, wireseal_netlink::Error> {
        let counter = match &mut self.counter {
            Some(counter) => counter,
            slot @ None => slot.insert(LeakCounter::open(tunnel)?),
        };
        let Some(counts) = counter.read().await? else {
            // Missing, or not as this version makes it (someone flushed the
            // ruleset, or the tunnel was renamed): made anew, at zero.
            counter.create(remote).await?;
            self.applied = Some(remote.to_vec());
            info!(table = "inet wireseal", "leak counter table created");
            return Ok(LeakCounts::default());
        };
        if self.applied.as_deref() != Some(remote) {
            counter.set_remote(remote).await?;
            self.applied = Some(remote.to_vec());
        }
        Ok(counts)
    }
}

fn count(counts: &LeakCounts, v6: bool) -> LeakCount {
    let leaked = if v6 { counts.ipv6 } else { counts.ipv4 };
    LeakCount {
        packets: leaked.packets,
        bytes: leaked.bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cidrs: &[&str]) -> (String, NodeView) {
        let view = NodeView {
            name: name.to_owned(),
            pod_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
            ..NodeView::default()
        };
        (name.to_owned(), view)
    }

    #[test]
    fn remote_cidrs_are_the_other_nodes_inside_the_cluster_and_apart_from_ours() {
        let nodes: BTreeMap<String, NodeView> = [
            node("node-0", &["10.244.0.0/24", "fd00:0:0:0::/64"]),
            node("node-1", &["10.244.1.0/24", "fd00:0:0:1::/64"]),
            node("node-2", &["10.244.2.0/24"]),
            // Claims ours, or reaches out of the cluster: never counted.
            node(
                "hostile",
                &["10.244.0.0/16", "10.244.0.128/25", "192.0.2.0/24"],
            ),
        ]
        .into_iter()
        .collect();
        let cluster: Vec<IpNetwork> = vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00::/48".parse().unwrap(),
        ];
        let got: Vec<String> = remote_pod_cidrs("node-0", &nodes, &cluster)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(got, ["10.244.1.0/24", "10.244.2.0/24", "fd00:0:0:1::/64"]);
        // Without cluster CIDRs, every remote claim apart from ours counts.
        let all = remote_pod_cidrs("node-0", &nodes, &[]);
        assert!(all.contains(&"192.0.2.0/24".parse().unwrap()));
        assert!(
            !all.iter()
                .any(|c| c.contains("10.244.0.1".parse().unwrap()))
        );
    }

    #[test]
    fn the_status_line_says_unavailable_or_counts() {
        let off = Leaks::disabled("memory datapath").status;
        assert_eq!(off.line(), "leak counter unavailable (memory datapath)");
        let counting = LeakStatus {
            state: LeakState::Counting,
            ipv4: LeakCount {
                packets: 3,
                bytes: 252,
            },
            ipv6: LeakCount {
                packets: 1,
                bytes: 104,
            },
            error: None,
        };
        assert_eq!(
            counting.line(),
            "4 packets (356 bytes) left for other nodes' pods outside the tunnel (ipv4 3, ipv6 1)"
        );
        let json = serde_json::to_value(&counting).unwrap();
        assert_eq!(json["state"], "counting");
        assert_eq!(json["ipv4"]["packets"], 3);
    }
}

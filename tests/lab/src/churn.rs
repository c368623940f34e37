//! Node writes at steady state: what every agent in the cluster receives.
//!
//! Every write to a Node is a watch event for every agent, so a write that
//! follows the tunnels' ups and downs (handshakes, idle sessions expiring)
//! costs O(N²) across a cluster. The agents should write their Node only when
//! something others need changes. This module measures it: with the mesh
//! up, pod traffic comes in bursts further apart than a WireGuard session
//! lives (180 s), so idle peers' sessions expire between them, and every
//! write to a Node in the window is counted from the apiserver's access log.

use std::collections::BTreeMap;
use std::fmt;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{Lab, traffic};

/// The Node condition the agents write.
pub const CONDITION: &str = "WiresealEncrypted";

/// A measurement of Node writes.
#[derive(Debug, Clone)]
pub struct WriteReport {
    /// How long writes were counted.
    pub window: Duration,
    /// Pod traffic bursts sent during the window (one ping per node pair).
    pub bursts: usize,
    /// Writes to each Node (every node of the lab is listed).
    pub per_node: BTreeMap<String, usize>,
    /// The agents' persistent keepalive per node, as started (0: none).
    pub keepalive: BTreeMap<String, u16>,
}

impl WriteReport {
    /// All writes in the window.
    #[must_use]
    pub fn total(&self) -> usize {
        self.per_node.values().sum()
    }

    /// Writes per node per hour, extrapolated from the window.
    #[must_use]
    pub fn per_node_per_hour(&self) -> f64 {
        let nodes = self.per_node.len().max(1);
        #[allow(
            clippy::cast_precision_loss,
            reason = "counts of writes and nodes are small"
        )]
        let writes = self.total() as f64 / nodes as f64;
        writes * 3600.0 / self.window.as_secs_f64().max(1.0)
    }
}

impl fmt::Display for WriteReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Node writes in {} s at steady state ({} traffic burst(s), further apart than a session lives):",
            self.window.as_secs(),
            self.bursts
        )?;
        writeln!(f, "| node | keepalive | writes |")?;
        writeln!(f, "|---|---|---|")?;
        for (node, writes) in &self.per_node {
            let keepalive = self.keepalive.get(node).copied().unwrap_or_default();
            writeln!(f, "| {node} | {keepalive} s | {writes} |")?;
        }
        writeln!(
            f,
            "writes per node per hour: {:.2}",
            self.per_node_per_hour()
        )
    }
}

impl Lab {
    /// Successful writes (PATCH, PUT) to each Node (its status included)
    /// in the apiserver's access log.
    #[must_use]
    pub fn node_writes(&self) -> BTreeMap<String, usize> {
        let mut writes: BTreeMap<String, usize> = self
            .network
            .nodes
            .iter()
            .map(|node| (node.name.clone(), 0))
            .collect();
        for entry in self.apiserver().access_log() {
            if !matches!(entry.method.as_str(), "PATCH" | "PUT")
                || !(200..300).contains(&entry.status)
            {
                continue;
            }
            let path = entry.path.split('?').next().unwrap_or_default();
            let Some(rest) = path.strip_prefix("/api/v1/nodes/") else {
                continue;
            };
            let name = rest.split('/').next().unwrap_or_default();
            if let Some(count) = writes.get_mut(name) {
                *count += 1;
            }
        }
        writes
    }

    /// Node `i`'s `WiresealEncrypted` condition on the apiserver: its status,
    /// reason and message.
    #[must_use]
    pub fn condition(&self, i: usize) -> Option<(String, String, String)> {
        let node = self
            .apiserver()
            .state()
            .get_node(&self.network.nodes[i].name)?;
        let condition = node
            .status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == CONDITION)?;
        Some((
            condition.status,
            condition.reason.unwrap_or_default(),
            condition.message.unwrap_or_default(),
        ))
    }

    /// Waits until every node's condition says all its peers are encrypted.
    ///
    /// # Errors
    /// When one does not within `timeout`.
    pub fn wait_conditions_true(&self, timeout: Duration) -> Result<()> {
        let nodes = self.network.nodes.len();
        crate::wait_for(timeout, || {
            (0..nodes).all(|i| {
                self.condition(i)
                    .is_some_and(|(status, ..)| status == "True")
            })
        })
        .with_context(|| {
            let seen: Vec<String> = (0..nodes)
                .map(|i| format!("node-{i}: {:?}", self.condition(i)))
                .collect();
            format!("not every node's {CONDITION} condition became True: {seen:?}")
        })
    }

    /// Sends one ping between pod 0 of every ordered pair of nodes.
    pub fn ping_all_pairs(&self) {
        let nodes = self.network.nodes.len();
        for a in 0..nodes {
            for b in (0..nodes).filter(|b| *b != a) {
                let _ = traffic::ping(&self.network, (a, 0), (b, 0), 1, Duration::from_secs(1));
            }
        }
    }

    /// Counts Node writes for `window` at steady state, with a burst of pod
    /// traffic between every pair of nodes at the start and then every
    /// `burst_every`. The mesh must be up (see [`Lab::wait_encrypted`]);
    /// `keepalive` records what each node's agent was started with;
    /// `observe` is called about every 500 ms in the window.
    ///
    /// # Errors
    /// When an agent or tunnel exits, or a condition does not settle.
    pub fn measure_steady_writes(
        &mut self,
        window: Duration,
        burst_every: Duration,
        keepalive: BTreeMap<String, u16>,
        mut observe: impl FnMut(&Self),
    ) -> Result<WriteReport> {
        if burst_every.is_zero() {
            bail!("bursts must be apart");
        }
        // Settled: every condition written and True, nothing pending.
        self.wait_conditions_true(Duration::from_secs(60))?;
        thread::sleep(Duration::from_secs(2));
        let before = self.node_writes();
        let start = Instant::now();
        let mut bursts = 0;
        let mut next = start;
        while start.elapsed() < window {
            self.check_processes()?;
            if Instant::now() >= next {
                self.ping_all_pairs();
                bursts += 1;
                next += burst_every;
            }
            observe(self);
            thread::sleep(Duration::from_millis(500).min(window.saturating_sub(start.elapsed())));
        }
        let after = self.node_writes();
        let per_node = after
            .into_iter()
            .map(|(node, count)| {
                let earlier = before.get(&node).copied().unwrap_or_default();
                (node, count.saturating_sub(earlier))
            })
            .collect();
        Ok(WriteReport {
            window: start.elapsed(),
            bursts,
            per_node,
            keepalive,
        })
    }
}

//! Scheduled key rotation under traffic: one node's key is rotated
//! (`wireseal keys rotate` in its state directory) while a pod on another
//! node pings a pod on it every 10 ms; what the pods saw is measured from
//! ping's timestamped replies (lost replies, the longest time without one).

use std::fmt;
use std::io::Read as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::Lab;
use crate::capture::canary_hex;

/// What one rotation did to a 10 ms ping.
#[derive(Debug, Clone, Serialize)]
pub struct RotationRun {
    /// Echo requests sent.
    pub sent: u32,
    /// Replies received.
    pub received: u32,
    /// Requests without a reply.
    pub lost: u32,
    /// The longest time between two replies, milliseconds.
    pub max_gap_ms: f64,
    /// The announced switch time.
    pub switch_at: String,
    /// Seconds from `wireseal keys rotate` to every node on the new key.
    pub rotation_secs: f64,
}

impl fmt::Display for RotationRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} sent, {} lost, longest gap {:.1} ms (switch at {}, rotation took {:.1} s)",
            self.sent, self.lost, self.max_gap_ms, self.switch_at, self.rotation_secs
        )
    }
}

/// Rotates node `rotating`'s key while pod 0 of node `from` pings pod 0 of
/// `rotating` every 10 ms, from a second before `wireseal keys rotate` to
/// `settle` after every node uses the new key. The agents should run with
/// a short `--key-rotation-lead`.
///
/// # Errors
/// When the rotation does not complete within `timeout`, or ping fails.
pub fn rotate_under_ping(
    lab: &mut Lab,
    from: usize,
    rotating: usize,
    timeout: Duration,
    settle: Duration,
) -> Result<RotationRun> {
    let old = lab
        .status(rotating)?
        .public_key
        .context("the rotating node has no key")?;
    let ping = TimedPing::start(lab, from, rotating)?;
    std::thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    let output = Command::new(&lab.wireseal)
        .args(["keys", "rotate", "--state-dir"])
        .arg(lab.node_dir(rotating).join("state"))
        .output()
        .context("running wireseal keys rotate")?;
    if !output.status.success() {
        bail!(
            "wireseal keys rotate failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let next = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let name = lab.network.nodes[rotating].name.clone();
    let nodes = lab.network.nodes.len();
    let mut switch_at = String::new();
    loop {
        if switch_at.is_empty()
            && let Some(at) = lab
                .apiserver()
                .state()
                .node_annotation(&name, "wireseal.dev/key-switch-at")
        {
            switch_at = at;
        }
        let own = lab.status(rotating).ok().and_then(|s| s.public_key);
        let followed = (0..nodes).filter(|i| *i != rotating).all(|i| {
            lab.status(i).is_ok_and(|s| {
                s.peers.iter().any(|p| {
                    p.node == name && p.public_key.map(|k| k.to_string()) == Some(next.clone())
                })
            })
        });
        if own.map(|k| k.to_string()) == Some(next.clone()) && followed {
            break;
        }
        if started.elapsed() > timeout {
            bail!(
                "node {name} did not switch from {old} to {next} within {timeout:?}\n{}\n{}",
                lab.logs(rotating),
                lab.logs(from)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let rotation_secs = started.elapsed().as_secs_f64();
    std::thread::sleep(settle);
    let (sent, received, max_gap_ms) = ping.finish()?;
    Ok(RotationRun {
        sent,
        received,
        lost: sent.saturating_sub(received),
        max_gap_ms,
        switch_at,
        rotation_secs,
    })
}

/// The same ping for `duration` without a rotation: the longest gap
/// between replies that the machine's own scheduling gives (milliseconds),
/// to read a rotation's gap against.
///
/// # Errors
/// When ping fails.
pub fn baseline_gap(lab: &Lab, from: usize, to: usize, duration: Duration) -> Result<f64> {
    let ping = TimedPing::start(lab, from, to)?;
    std::thread::sleep(duration);
    Ok(ping.finish()?.2)
}

/// `ping -D` (timestamped replies) every 10 ms with the canary.
struct TimedPing {
    child: Child,
}

impl TimedPing {
    fn start(lab: &Lab, from: usize, to: usize) -> Result<Self> {
        let src = &lab.network.nodes[from].pods[0].ns;
        let dst = lab.network.nodes[to].pods[0].ip;
        let child = src
            .command("ping")
            .args(["-n", "-D", "-W", "1", "-i", "0.010", "-p", &canary_hex()])
            .arg(dst.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting ping (apt-get install iputils-ping)")?;
        Ok(Self { child })
    }

    /// Stops ping (SIGINT: it prints its summary) and reads sent, received
    /// and the longest gap between replies.
    fn finish(mut self) -> Result<(u32, u32, f64)> {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGINT,
            );
        }
        let mut text = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            out.read_to_string(&mut text).context("reading ping")?;
        }
        let _ = self.child.wait();
        parse_timed(&text)
    }
}

impl Drop for TimedPing {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads `[1764770400.123456] 64 bytes from … icmp_seq=N …` lines and the
/// summary: sent, received, and the longest gap between replies. The last
/// request may still be in flight when ping is stopped: it is counted as
/// received unless an earlier one is missing too (see [`lost_before_last`]).
fn parse_timed(text: &str) -> Result<(u32, u32, f64)> {
    let replies: Vec<(f64, u32)> = text
        .lines()
        .filter(|line| line.contains("bytes from"))
        .filter_map(|line| {
            let at = line
                .strip_prefix('[')?
                .split(']')
                .next()?
                .parse::<f64>()
                .ok()?;
            let seq = line
                .split_whitespace()
                .find_map(|word| word.strip_prefix("icmp_seq="))?
                .parse::<u32>()
                .ok()?;
            Some((at, seq))
        })
        .collect();
    let max_gap_ms = replies
        .windows(2)
        .map(|pair| (pair[1].0 - pair[0].0) * 1e3)
        .fold(0.0, f64::max);
    let summary = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .with_context(|| format!("no ping summary in {} bytes of output", text.len()))?;
    let number = |word: &str| -> Option<u32> {
        summary
            .split(',')
            .find(|part| part.contains(word))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let Some(sent) = number("transmitted") else {
        bail!("cannot read ping summary {summary:?}");
    };
    let seqs: Vec<u32> = replies.iter().map(|(_, seq)| *seq).collect();
    Ok((sent, sent - lost_before_last(&seqs, sent), max_gap_ms))
}

/// Requests 1..`sent` (the last one left out: it may be in flight when ping
/// stops) without a reply among `seqs`.
fn lost_before_last(seqs: &[u32], sent: u32) -> u32 {
    let got: std::collections::BTreeSet<u32> = seqs.iter().copied().collect();
    let missing = (1..sent).filter(|seq| !got.contains(seq)).count();
    u32::try_from(missing).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timed_ping_output_gives_counts_and_the_longest_gap() {
        let text = "PING 10.244.1.2 (10.244.1.2) 56(84) bytes of data.\n\
            [1764770400.000000] 64 bytes from 10.244.1.2: icmp_seq=1 ttl=62 time=0.1 ms\n\
            [1764770400.010000] 64 bytes from 10.244.1.2: icmp_seq=2 ttl=62 time=0.1 ms\n\
            [1764770400.050000] 64 bytes from 10.244.1.2: icmp_seq=6 ttl=62 time=0.1 ms\n\
            \n--- 10.244.1.2 ping statistics ---\n\
            7 packets transmitted, 3 received, 57.1429% packet loss, time 60ms\n";
        let (sent, received, gap) = parse_timed(text).unwrap();
        // 3, 4 and 5 lost; 7, the last, may have been in flight.
        assert_eq!((sent, received), (7, 4));
        assert!((gap - 40.0).abs() < 0.01, "{gap}");
    }
}

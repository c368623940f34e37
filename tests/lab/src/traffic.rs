//! Traffic to pods, from pods or from a node itself: pings (optionally
//! carrying the canary), all-pairs connectivity, a continuous pinger that
//! counts losses, a TCP echo exchange carrying the canary, and iperf3.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::capture::{CANARY, canary_hex};
use crate::netns::Netns;
use crate::topology::{Family, Network};

/// A pod, by (node index, pod index).
pub type PodRef = (usize, usize);

/// How many echo requests got answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PingResult {
    /// Requests sent.
    pub sent: u32,
    /// Replies received.
    pub received: u32,
}

/// Pings `to` from `from` `count` times, `interval` apart, with the canary in
/// the payload, over the lab's first family. Losses are reported, not errors.
///
/// # Errors
/// When ping cannot run at all.
pub fn ping(
    network: &Network,
    from: PodRef,
    to: PodRef,
    count: u32,
    interval: Duration,
) -> Result<PingResult> {
    Pinger::start(network, from, to, Some(count), interval)?.wait()
}

/// [`ping`] over `family` (ICMPv6 for IPv6).
///
/// # Errors
/// When ping cannot run at all, or `to` has no address of `family`.
pub fn ping_family(
    network: &Network,
    family: Family,
    from: PodRef,
    to: PodRef,
    count: u32,
    interval: Duration,
) -> Result<PingResult> {
    Pinger::start_family(network, family, from, to, Some(count), interval)?.wait()
}

/// Pod `to`'s address of `family`.
///
/// # Errors
/// When it has none (a family the lab does not have).
pub fn pod_address(network: &Network, family: Family, to: PodRef) -> Result<IpAddr> {
    network.nodes[to.0].pods[to.1]
        .address(family)
        .with_context(|| {
            format!(
                "pod {to:?} has no {} address",
                crate::topology::family_name(family)
            )
        })
}

/// Pings pod `to` from node `from`'s own network namespace (as kubelet, a
/// host-network pod or an API server on that node would send), `count` times,
/// `interval` apart, with the canary in the payload. Losses are reported, not errors.
///
/// # Errors
/// When ping cannot run at all.
pub fn host_ping(
    network: &Network,
    from: usize,
    to: PodRef,
    count: u32,
    interval: Duration,
) -> Result<PingResult> {
    let dst = network.nodes[to.0].pods[to.1].ip;
    Pinger::spawn(ping_command(
        &network.nodes[from].ns,
        dst,
        Some(count),
        interval,
    ))?
    .wait()
}

/// `ping` from namespace `src` to `dst` (IPv4 or IPv6: ping picks by the
/// address), with the canary in every payload.
fn ping_command(src: &Netns, dst: IpAddr, count: Option<u32>, interval: Duration) -> Command {
    let mut command = src.command("ping");
    command.args(["-n", "-q", "-W", "1", "-p", &canary_hex()]);
    command.args(["-i", &format!("{:.3}", interval.as_secs_f64().max(0.002))]);
    if let Some(count) = count {
        command.args(["-c", &count.to_string()]);
    }
    command.arg(dst.to_string());
    command
}

fn parse_ping(text: &str) -> Result<PingResult> {
    // "5 packets transmitted, 5 received, 0% packet loss, time 4005ms"
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .with_context(|| format!("no ping summary in {text:?}"))?;
    let number = |word: &str| -> Option<u32> {
        let before = line.split(word).next()?;
        before
            .trim_end_matches([' ', ','])
            .rsplit([' ', ','])
            .next()?
            .trim()
            .parse()
            .ok()
    };
    match (number("packets transmitted"), number("received")) {
        (Some(sent), Some(received)) => Ok(PingResult { sent, received }),
        _ => bail!("cannot read ping summary {line:?}"),
    }
}

/// Pings every pod on every other node, in every family of the lab, once
/// per pair; returns the pairs (and families) that failed.
///
/// # Errors
/// When ping cannot run.
pub fn all_pairs(network: &Network, count: u32) -> Result<Vec<(PodRef, PodRef, Family)>> {
    let mut failed = Vec::new();
    for family in network.stack.families() {
        for (i, node) in network.nodes.iter().enumerate() {
            for j in 0..node.pods.len() {
                for (k, other) in network.nodes.iter().enumerate().filter(|(k, _)| *k != i) {
                    for l in 0..other.pods.len() {
                        let result = ping_family(
                            network,
                            *family,
                            (i, j),
                            (k, l),
                            count,
                            Duration::from_millis(50),
                        )?;
                        if result.received < result.sent {
                            failed.push(((i, j), (k, l), *family));
                        }
                    }
                }
            }
        }
    }
    Ok(failed)
}

/// A ping running in the background: [`Pinger::wait`] for a fixed count to
/// finish, or [`Pinger::finish`] to interrupt an endless one.
#[derive(Debug)]
pub struct Pinger {
    child: Option<Child>,
}

impl Pinger {
    /// Starts pinging `to` from `from` every `interval` (`count` times, or
    /// until [`Pinger::finish`]), carrying the canary.
    ///
    /// # Errors
    /// When ping cannot start.
    pub fn start(
        network: &Network,
        from: PodRef,
        to: PodRef,
        count: Option<u32>,
        interval: Duration,
    ) -> Result<Self> {
        Self::start_family(network, network.stack.primary(), from, to, count, interval)
    }

    /// [`Pinger::start`] over `family`.
    ///
    /// # Errors
    /// When ping cannot start, or `to` has no address of `family`.
    pub fn start_family(
        network: &Network,
        family: Family,
        from: PodRef,
        to: PodRef,
        count: Option<u32>,
        interval: Duration,
    ) -> Result<Self> {
        let src = &network.nodes[from.0].pods[from.1].ns;
        let dst = pod_address(network, family, to)?;
        Self::spawn(ping_command(src, dst, count, interval))
    }

    fn spawn(mut command: Command) -> Result<Self> {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting ping (apt-get install iputils-ping)")?;
        Ok(Self { child: Some(child) })
    }

    /// Waits for the pings to finish and returns the counts. ping exits 1 when
    /// replies are missing, so its summary, not its status, decides.
    ///
    /// # Errors
    /// When the summary cannot be read.
    pub fn wait(mut self) -> Result<PingResult> {
        let child = self.child.take().context("pinger already finished")?;
        let output = child.wait_with_output().context("waiting for ping")?;
        parse_ping(&String::from_utf8_lossy(&output.stdout))
    }

    /// Stops the ping (SIGINT, so it prints its summary) and returns the counts.
    ///
    /// # Errors
    /// When the summary cannot be read.
    pub fn finish(self) -> Result<PingResult> {
        if let Some(pid) = self.child.as_ref().and_then(|c| i32::try_from(c.id()).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGINT,
            );
        }
        self.wait()
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A TCP echo server on a thread of its own inside a namespace (a pod
/// serving a Service): every connection gets back what it sent, once.
/// Stopped on drop.
#[derive(Debug)]
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    /// Listens on `port` on every address of `ns`.
    ///
    /// # Errors
    /// When the namespace cannot be entered or the port not bound.
    pub fn start(ns: &Netns, port: u16) -> Result<Self> {
        let enter = ns.enter_current_thread_fn();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let listener = enter().map_err(anyhow::Error::from).and_then(|()| {
                let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))?;
                // Polled, so that the stop flag is seen without a connection.
                listener.set_nonblocking(true)?;
                Ok(listener)
            });
            let listener = match listener {
                Ok(listener) => {
                    let _ = ready_tx.send(Ok(()));
                    listener
                }
                Err(err) => {
                    let _ = ready_tx.send(Err(err));
                    return;
                }
            };
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = echo_once(stream);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        ready_rx
            .recv()
            .context("the echo server's thread ended before listening")??;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

fn echo_once(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buffer = [0u8; 256];
    let n = stream.read(&mut buffer)?;
    stream.write_all(&buffer[..n])
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Connects from namespace `from` (a node itself, or a pod) to `dst`, sends
/// the canary and waits for it to come back, each step bounded by `timeout`.
///
/// # Errors
/// Naming the step that failed: entering the namespace, connecting, sending,
/// or receiving the echo.
pub fn tcp_echo(from: &Netns, dst: SocketAddrV4, timeout: Duration) -> Result<()> {
    let enter = from.enter_current_thread_fn();
    let name = from.name().to_owned();
    std::thread::spawn(move || -> Result<()> {
        enter()?;
        let mut stream = TcpStream::connect_timeout(&SocketAddr::V4(dst), timeout)
            .with_context(|| format!("connecting from {name} to {dst}"))?;
        stream.set_read_timeout(Some(timeout))?;
        stream
            .write_all(CANARY)
            .with_context(|| format!("sending to {dst}"))?;
        let mut back = [0u8; CANARY.len()];
        stream
            .read_exact(&mut back)
            .with_context(|| format!("waiting for {dst}'s echo"))?;
        if &back != CANARY {
            bail!("{dst} echoed {back:?}, not the canary");
        }
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the TCP client thread panicked"))?
}

/// TCP throughput from `from` to `to` with iperf3, in Mbit/s (receiver side).
///
/// # Errors
/// When iperf3 is missing or fails.
pub fn iperf(network: &Network, from: PodRef, to: PodRef, seconds: u32) -> Result<f64> {
    let server_pod = &network.nodes[to.0].pods[to.1];
    let mut server = server_pod
        .ns
        .command("iperf3")
        .args(["-s", "-1", "-p", "5201"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 (apt-get install iperf3)")?;
    // The server needs a moment to listen; the client retries its connect.
    let client = &network.nodes[from.0].pods[from.1];
    let mut result = Err(anyhow::anyhow!("iperf3 client never ran"));
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(100));
        match client.ns.exec(
            "iperf3",
            &[
                "-c",
                &server_pod.ip.to_string(),
                "-p",
                "5201",
                "-t",
                &seconds.to_string(),
                "-J",
            ],
        ) {
            Ok(output) => {
                result = parse_iperf(&output.stdout);
                break;
            }
            Err(err) => result = Err(err.into()),
        }
    }
    let _ = server.kill();
    let _ = server.wait();
    result
}

fn parse_iperf(json: &[u8]) -> Result<f64> {
    let value: serde_json::Value =
        serde_json::from_slice(json).context("iperf3 -J output is not JSON")?;
    value["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|bps| bps / 1e6)
        .context("no end.sum_received.bits_per_second in iperf3 output")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ping_summaries() {
        let ok = "--- 10.244.1.10 ping statistics ---\n5 packets transmitted, 5 received, 0% packet loss, time 4005ms\n";
        assert_eq!(
            parse_ping(ok).unwrap(),
            PingResult {
                sent: 5,
                received: 5
            }
        );
        let lossy =
            "3 packets transmitted, 1 received, +2 errors, 66.6667% packet loss, time 2003ms";
        assert_eq!(
            parse_ping(lossy).unwrap(),
            PingResult {
                sent: 3,
                received: 1
            }
        );
        let none = "2 packets transmitted, 0 received, 100% packet loss, time 1001ms";
        assert_eq!(
            parse_ping(none).unwrap(),
            PingResult {
                sent: 2,
                received: 0
            }
        );
        assert!(parse_ping("ping: connect: Network is unreachable").is_err());
    }

    #[test]
    fn reads_iperf_json() {
        let json = br#"{"end":{"sum_received":{"bits_per_second":1.5e9}}}"#;
        assert!((parse_iperf(json).unwrap() - 1500.0).abs() < 1e-6);
        assert!(parse_iperf(b"{}").is_err());
    }
}

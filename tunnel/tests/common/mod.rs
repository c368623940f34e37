//! The datapath tests' own helpers on top of `wireseal-netns`: the processes
//! they start (`wireseal-tunnel`, Debian's `wireguard-go`, tcpdump), `wg`
//! configuration, and reading captures.

#![allow(dead_code, reason = "each test binary uses a different subset")]
// Test-only helpers: a failed step must abort the test with its message.
#![allow(clippy::unwrap_used, clippy::print_stderr, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[allow(unused_imports, reason = "each test binary uses a different subset")]
pub use wireseal_netns::{
    DEADLINE, Netns, Pair, ns_run, ns_try, require, run_ok, unique, wait_until,
};

/// The WireGuard port used inside the namespaces.
pub const PORT: u16 = 51830;

/// A child process, stopped with SIGTERM (then SIGKILL) on drop.
pub struct Proc {
    pub child: Child,
    pub what: String,
}

impl Proc {
    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).ok()?);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.child.wait().ok();
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// Daemon logs go to the test's stderr only with WSTUN_DEBUG set, to keep output readable.
fn daemon_stderr() -> Stdio {
    if std::env::var_os("WSTUN_DEBUG").is_some() {
        Stdio::inherit()
    } else {
        Stdio::null()
    }
}

/// Where `wg` looks for userspace interfaces.
pub fn uapi_socket(iface: &str) -> PathBuf {
    Path::new("/var/run/wireguard").join(format!("{iface}.sock"))
}

/// Starts `wireseal-tunnel` for `iface` in `ns` and waits until `wg` can talk to it.
pub fn start_wireseal(ns: &str, iface: &str) -> Proc {
    start_wireseal_with(ns, iface, &[])
}

/// Same, with extra command-line flags.
pub fn start_wireseal_with(ns: &str, iface: &str, extra: &[&str]) -> Proc {
    let child = Command::new("ip")
        .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_wireseal-tunnel")])
        .args(["--interface", iface])
        .args(extra)
        .env(
            "WIRESEAL_LOG",
            std::env::var("WIRESEAL_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(Stdio::null())
        .stderr(daemon_stderr())
        .spawn()
        .expect("spawning wireseal-tunnel");
    let proc = Proc {
        child,
        what: format!("wireseal-tunnel {iface}"),
    };
    wait_until(&format!("wg show {iface} to answer"), || {
        ns_try(ns, &["wg", "show", iface]).status.success()
    });
    proc
}

/// Starts Debian's `wireguard-go -f` for `iface` in `ns` and waits for its socket.
pub fn start_wireguard_go(ns: &str, iface: &str) -> Proc {
    let child = Command::new("ip")
        .args(["netns", "exec", ns, "wireguard-go", "-f", iface])
        .env("LOG_LEVEL", "error")
        .env("WG_PROCESS_FOREGROUND", "1")
        .stdout(Stdio::null())
        .stderr(daemon_stderr())
        .spawn()
        .expect("spawning wireguard-go");
    let proc = Proc {
        child,
        what: format!("wireguard-go {iface}"),
    };
    wait_until(&format!("wg show {iface} (wireguard-go) to answer"), || {
        ns_try(ns, &["wg", "show", iface]).status.success()
    });
    proc
}

/// A fresh private key file from `wg genkey` and its public key.
pub fn genkey(dir: &Path, name: &str) -> (PathBuf, String) {
    let private = String::from_utf8(run_ok(&["wg", "genkey"]).stdout).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, &private).unwrap();
    let public = Command::new("sh")
        .arg("-c")
        .arg(format!("wg pubkey < {}", path.display()))
        .output()
        .unwrap();
    assert!(public.status.success());
    (
        path,
        String::from_utf8(public.stdout).unwrap().trim().to_owned(),
    )
}

/// 32 for an IPv4 address, 128 for IPv6.
pub fn host_prefix(ip: &str) -> u8 {
    if ip.contains(':') { 128 } else { 32 }
}

/// Generates a key for each side of `pair` and configures each datapath to
/// peer with the other: tunnel addresses `ip_a` / `ip_b`, endpoints on the
/// underlay. Returns the public keys of a and b.
pub fn configure_pair(
    pair: &Pair,
    dir: &Path,
    ia: &str,
    ib: &str,
    ip_a: &str,
    ip_b: &str,
) -> (String, String) {
    let (ka, pa) = genkey(dir, "a.key");
    let (kb, pb) = genkey(dir, "b.key");
    configure(pair.a.name(), ia, &ka, &pb, ip_b, &pair.under_b, ip_a);
    configure(pair.b.name(), ib, &kb, &pa, ip_a, &pair.under_a, ip_b);
    (pa, pb)
}

/// Configures one side with `wg set` and puts `tunnel_ip`/32 (/128) on the interface with a
/// route to the peer's tunnel IP. The datapath never does addresses or routes itself.
#[allow(clippy::too_many_arguments)]
pub fn configure(
    ns: &str,
    iface: &str,
    key: &Path,
    peer_public: &str,
    peer_tunnel_ip: &str,
    peer_endpoint: &str,
    tunnel_ip: &str,
) {
    ns_run(
        ns,
        &[
            "wg",
            "set",
            iface,
            "listen-port",
            &PORT.to_string(),
            "private-key",
            key.to_str().unwrap(),
            "peer",
            peer_public,
            "allowed-ips",
            &format!("{peer_tunnel_ip}/{}", host_prefix(peer_tunnel_ip)),
            "endpoint",
            &format!("{peer_endpoint}:{PORT}"),
        ],
    );
    ns_run(
        ns,
        &[
            "ip",
            "addr",
            "add",
            &format!("{tunnel_ip}/{}", host_prefix(tunnel_ip)),
            "dev",
            iface,
            "nodad",
        ],
    );
    ns_run(ns, &["ip", "link", "set", iface, "mtu", "1420", "up"]);
    ns_run(
        ns,
        &[
            "ip",
            "route",
            "add",
            &format!("{peer_tunnel_ip}/{}", host_prefix(peer_tunnel_ip)),
            "dev",
            iface,
        ],
    );
}

/// Pings (bounded) and asserts success.
pub fn ping(ns: &str, dst: &str, extra: &[&str]) {
    let mut args = vec!["ping", "-c", "3", "-i", "0.2", "-W", "5"];
    args.extend_from_slice(extra);
    args.push(dst);
    let out = ns_try(ns, &args);
    assert!(
        out.status.success(),
        "ping {dst} from {ns} failed:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// (latest handshake as unix seconds, rx bytes, tx bytes) of the only peer.
pub fn peer_stats(ns: &str, iface: &str) -> (u64, u64, u64) {
    let hs = ns_run(ns, &["wg", "show", iface, "latest-handshakes"]);
    let tr = ns_run(ns, &["wg", "show", iface, "transfer"]);
    let field = |text: &str, i: usize| -> u64 {
        text.lines()
            .next()
            .and_then(|l| l.split('\t').nth(i))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("cannot parse `wg show` output {text:?}"))
    };
    (field(&hs, 1), field(&tr, 1), field(&tr, 2))
}

/// Unix time now, in seconds.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A running tcpdump writing a pcap file.
pub struct Capture {
    proc: Proc,
    pub file: PathBuf,
}

impl Capture {
    /// Starts tcpdump on `iface` in `ns` and waits until it is listening.
    pub fn start(ns: &str, iface: &str, file: PathBuf) -> Self {
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "tcpdump",
                "-n",
                "-U",
                "--immediate-mode",
                "-Z",
                "root",
                "-s",
                "0",
                "-i",
                iface,
                "-w",
            ])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning tcpdump");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(DEADLINE)
            .unwrap_or_else(|_| panic!("tcpdump on {iface} did not start"));
        Self {
            proc: Proc {
                child,
                what: format!("tcpdump {iface}"),
            },
            file,
        }
    }

    /// Stops tcpdump and returns the captured packets. Waits (bounded) until the file
    /// stops growing first: packets still in flight would otherwise be lost.
    pub fn finish(mut self) -> Vec<Vec<u8>> {
        let size = || std::fs::metadata(&self.file).map_or(0, |m| m.len());
        let start = Instant::now();
        let mut last = size();
        while start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(150));
            let now = size();
            if now == last && now > 24 {
                break;
            }
            last = now;
        }
        let status = self.proc.stop();
        if std::env::var_os("WSTUN_DEBUG").is_some() {
            let _ = std::fs::copy(
                &self.file,
                format!(
                    "/tmp/wstun-{}",
                    self.file.file_name().unwrap().to_string_lossy()
                ),
            );
            eprintln!("tcpdump exit {status:?}");
        }
        read_pcap(&std::fs::read(&self.file).expect("reading the capture"))
    }
}

/// The packets of a little-endian, microsecond pcap file (what tcpdump writes here).
pub fn read_pcap(bytes: &[u8]) -> Vec<Vec<u8>> {
    assert!(bytes.len() >= 24, "pcap file too short");
    assert_eq!(
        &bytes[..4],
        &[0xd4, 0xc3, 0xb2, 0xa1],
        "unexpected pcap magic"
    );
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let caplen = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        at += 16;
        if at + caplen > bytes.len() {
            break;
        }
        out.push(bytes[at..at + caplen].to_vec());
        at += caplen;
    }
    out
}

/// True when `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

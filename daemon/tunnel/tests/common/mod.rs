//! Network-namespace harness for the datapath tests. Needs root and Debian's tools;
//! fails loudly (never skips) when either is missing.

#![allow(dead_code)]
// each test binary uses a different subset
// Test-only helpers: a failed step must abort the test with its message.
#![allow(clippy::unwrap_used, clippy::print_stderr, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Everything here is bounded by this.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The WireGuard port used inside the namespaces.
pub const PORT: u16 = 51830;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A short id unique within this machine run: pid + counter.
pub fn unique() -> String {
    format!(
        "{}{}",
        std::process::id() % 100_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Panics unless we are root and every tool is installed, naming the Debian package.
pub fn require(tools: &[(&str, &str)]) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests create network namespaces and TUN devices: run them as root"
    );
    for (tool, package) in tools {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        assert!(
            found,
            "`{tool}` is missing: apt-get install -y --no-install-recommends {package}"
        );
    }
}

/// Runs a command and returns its output; panics with stderr when it fails.
pub fn run(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a command inside a namespace; returns stdout.
pub fn ns_run(ns: &str, args: &[&str]) -> String {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(args);
    String::from_utf8_lossy(&run(&full).stdout).into_owned()
}

/// Same, but returns the output whatever the exit status.
pub fn ns_try(ns: &str, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?} in {ns}: {e}"))
}

/// Polls `cond` until it holds or the deadline passes (then panics with `what`).
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < DEADLINE {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {DEADLINE:?} waiting for {what}");
}

/// A network namespace, deleted on drop (also on panic).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: String) -> Self {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(&["ip", "netns", "add", &name]);
        run(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Self { name }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

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

/// Two namespaces joined by a veth pair on 10.250.N.0/24 (a = .1, b = .2).
pub struct Pair {
    pub id: String,
    pub a: Netns,
    pub b: Netns,
    pub veth_a: String,
    pub veth_b: String,
    pub under_a: String,
    pub under_b: String,
}

impl Pair {
    pub fn new() -> Self {
        let id = unique();
        let a = Netns::new(format!("wstun-{id}-a"));
        let b = Netns::new(format!("wstun-{id}-b"));
        let (veth_a, veth_b) = (format!("wsv{id}a"), format!("wsv{id}b"));
        let subnet = 1 + NEXT.fetch_add(1, Ordering::Relaxed) % 250;
        let (under_a, under_b) = (format!("10.250.{subnet}.1"), format!("10.250.{subnet}.2"));
        run(&[
            "ip", "link", "add", &veth_a, "netns", &a.name, "type", "veth", "peer", "name",
            &veth_b, "netns", &b.name,
        ]);
        run(&[
            "ip",
            "-n",
            &a.name,
            "addr",
            "add",
            &format!("{under_a}/24"),
            "dev",
            &veth_a,
        ]);
        run(&[
            "ip",
            "-n",
            &b.name,
            "addr",
            "add",
            &format!("{under_b}/24"),
            "dev",
            &veth_b,
        ]);
        run(&["ip", "-n", &a.name, "link", "set", &veth_a, "up"]);
        run(&["ip", "-n", &b.name, "link", "set", &veth_b, "up"]);
        Self {
            id,
            a,
            b,
            veth_a,
            veth_b,
            under_a,
            under_b,
        }
    }
}

/// A fresh private key file from `wg genkey` and its public key.
pub fn genkey(dir: &Path, name: &str) -> (PathBuf, String) {
    let private = String::from_utf8(run(&["wg", "genkey"]).stdout).unwrap();
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

/// Configures one side with `wg set` and puts `tunnel_ip`/32 (/128) on the interface with a
/// route to the peer's tunnel IP. The datapath never does addresses or routes itself.
#[allow(clippy::too_many_arguments)]
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
    configure(&pair.a.name, ia, &ka, &pb, ip_b, &pair.under_b, ip_a);
    configure(&pair.b.name, ib, &kb, &pa, ip_a, &pair.under_a, ip_b);
    (pa, pb)
}

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

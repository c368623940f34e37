//! The network-namespace harness of the privileged tests.
//!
//! Each test gets its own namespace (`wsnl-<pid>-<n>`), created with
//! `ip netns add` and deleted by a guard on drop, also when the test panics.
//! The code under test runs on a dedicated thread that has entered the
//! namespace with `setns` and builds its own current-thread tokio runtime
//! there, so every socket it opens lives in the namespace; nothing forks.
//! A test that cannot run (not root, no `ip`) fails with a message saying so.
#![allow(dead_code, unreachable_pub)]

use std::fs::File;
use std::future::Future;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nix::sched::{CloneFlags, setns};

/// Upper bound for one test body, including every kernel round trip.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(30);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A network namespace owned by one test.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a fresh, uniquely named namespace with `lo` up.
    ///
    /// Panics (failing the test) when not root or when `ip` is missing.
    pub fn new() -> Self {
        require_privileges();
        let name = format!(
            "wsnl-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        run_ip(&["netns", "add", &name]);
        let netns = Self { name };
        netns.ip(&["link", "set", "lo", "up"]);
        netns
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NAME ARGS…`, fails the test when it fails, returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run_ip(&all)
    }

    /// Adds a veth pair `a`/`b`, both up, with `a` addressed 192.0.2.1/24
    /// and 2001:db8::1/64 (no DAD), and `b` 192.0.2.2/24, 2001:db8::2/64.
    pub fn veth(&self, a: &str, b: &str) {
        self.ip(&["link", "add", a, "type", "veth", "peer", "name", b]);
        self.ip(&["addr", "add", "192.0.2.1/24", "dev", a]);
        self.ip(&["addr", "add", "2001:db8::1/64", "dev", a, "nodad"]);
        self.ip(&["addr", "add", "192.0.2.2/24", "dev", b]);
        self.ip(&["addr", "add", "2001:db8::2/64", "dev", b, "nodad"]);
        self.ip(&["link", "set", a, "up"]);
        self.ip(&["link", "set", b, "up"]);
    }

    /// Adds a veth pair `a`/`b`, both up, without addresses: `a` stands in
    /// for the tunnel link, which carries no address but wireseal's.
    pub fn bare_veth(&self, a: &str, b: &str) {
        self.ip(&["link", "add", a, "type", "veth", "peer", "name", b]);
        self.ip(&["link", "set", a, "up"]);
        self.ip(&["link", "set", b, "up"]);
    }

    /// Runs `body` inside the namespace on a current-thread tokio runtime,
    /// bounded by [`TEST_TIMEOUT`]. A panic in `body` fails the calling test.
    pub fn run<F, Fut, T>(&self, body: F) -> T
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = T>,
        T: Send,
    {
        self.run_for(TEST_TIMEOUT, body)
    }

    /// [`Self::run`] with its own bound, for bodies that are slow by nature
    /// (thousands of peers in an emulated VM).
    pub fn run_for<F, Fut, T>(&self, limit: Duration, body: F) -> T
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = T>,
        T: Send,
    {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            let worker = scope.spawn(move || {
                let file =
                    File::open(&path).unwrap_or_else(|err| panic!("cannot open {path}: {err}"));
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|err| panic!("setns into {path} failed: {err}"));
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                runtime.block_on(async move {
                    tokio::time::timeout(limit, body())
                        .await
                        .expect("test body timed out")
                })
            });
            match worker.join() {
                Ok(value) => value,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Best effort: a failure here must not mask the test's own panic.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Fails the test, with the reason, when it cannot run here.
pub fn require_privileges() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces, netlink writes); run `cargo test` as root"
    );
    let ip = Command::new("ip").arg("-V").output();
    assert!(
        matches!(&ip, Ok(out) if out.status.success()),
        "this test needs the `ip` command from iproute2 on PATH: {ip:?}"
    );
}

fn run_ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("cannot run ip {args:?}: {err}"));
    assert!(
        out.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The line of `output` that starts with `prefix`, if any.
pub fn line_starting<'a>(output: &'a str, prefix: &str) -> Option<&'a str> {
    output
        .lines()
        .find(|line| line.trim_start().starts_with(prefix))
}

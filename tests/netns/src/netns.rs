//! The namespace guard, commands inside it, code run inside it, and veth
//! pairs.

use std::fs::File;
use std::future::Future;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use crate::command::{CmdError, DEADLINE, hint, ip, next, require, run, run_ok, unique};

/// Directory where `ip netns` keeps its namespace handles.
const NETNS_DIR: &str = "/run/netns";

/// Prefix of the namespaces [`Netns::new`] creates for tests.
const TEST_PREFIX: &str = "wsnt";

/// A named network namespace, deleted on drop (also when a test panics).
/// Deleting it also deletes every link inside it.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `name` with its loopback up.
    ///
    /// # Errors
    /// When `ip netns add` fails (not root, name taken).
    pub fn create(name: &str) -> Result<Self, CmdError> {
        ip(&["netns", "add", name])?;
        let ns = Self {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Names the network namespace of process `pid` (a container's) `name`,
    /// with its loopback up. Deleting the name on drop leaves the namespace
    /// to that process.
    ///
    /// # Errors
    /// When `ip netns attach` fails (no such process, name taken).
    pub fn attach(name: &str, pid: u32) -> Result<Self, CmdError> {
        ip(&["netns", "attach", name, &pid.to_string()])?;
        let ns = Self {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A test's own namespace: checks for root and `ip` first ([`require`]),
    /// then creates `wsnt-<pid>-<n>` with its loopback up.
    ///
    /// # Panics
    /// When not root, `ip` is missing or the namespace cannot be created.
    #[must_use]
    #[allow(
        clippy::new_without_default,
        reason = "creating a namespace is an effect on the machine, not a default value"
    )]
    pub fn new() -> Self {
        require(&[]);
        let name = format!("{TEST_PREFIX}-{}", unique());
        // A namespace of a crashed run whose pid came round again.
        let _ = ip(&["netns", "del", &name]);
        Self::create(&name).unwrap_or_else(|err| panic!("{err}"))
    }

    /// The namespace's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NAME args`.
    ///
    /// # Errors
    /// As [`run`].
    pub fn ip(&self, args: &[&str]) -> Result<Output, CmdError> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Runs `ip -n NAME args`; fails the test, with `ip`'s stderr, when it
    /// fails; returns its stdout.
    ///
    /// # Panics
    /// Then.
    pub fn run_ip(&self, args: &[&str]) -> String {
        let output = self.ip(args).unwrap_or_else(|err| panic!("{err}"));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs `program args` inside the namespace to completion.
    ///
    /// # Errors
    /// As [`run`].
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<Output, CmdError> {
        let mut all = vec!["netns", "exec", self.name.as_str(), program];
        all.extend_from_slice(args);
        run("ip", &all).map_err(|err| match err {
            CmdError::Failed {
                stderr,
                status,
                stdout,
                ..
            } if stderr.contains("No such file or directory") => CmdError::Failed {
                command: format!("{program} {} (in {})", args.join(" "), self.name),
                status,
                stderr: format!("{stderr} ({})", hint(program)),
                stdout,
            },
            other => other,
        })
    }

    /// A `Command` that runs `program` inside the namespace (for long-running processes).
    #[must_use]
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", self.name.as_str(), program]);
        command
    }

    /// Sets a sysctl inside the namespace.
    ///
    /// # Errors
    /// As [`run`].
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), CmdError> {
        self.exec("sysctl", &["-qw", &format!("{key}={value}")])
            .map(|_| ())
    }

    /// A closure that moves the calling thread into this namespace, to be run
    /// on a thread created for the purpose.
    pub fn enter_current_thread_fn(
        &self,
    ) -> impl FnOnce() -> Result<(), CmdError> + Send + 'static {
        let name = self.name.clone();
        move || enter(&name)
    }

    /// Moves the calling thread into this namespace. Sockets the thread opens
    /// afterwards live there; other threads are unaffected.
    ///
    /// # Errors
    /// When the namespace handle cannot be opened or `setns` fails.
    pub fn enter_current_thread(&self) -> Result<(), CmdError> {
        enter(&self.name)
    }

    /// Runs `f` on a new thread that has entered the namespace: the sockets
    /// it opens live there.
    ///
    /// # Panics
    /// The thread panics (failing whoever joins it) when it cannot enter.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let enter = self.enter_current_thread_fn();
        std::thread::spawn(move || {
            enter().unwrap_or_else(|err| panic!("{err}"));
            f()
        })
    }

    /// Runs `body` inside the namespace on a current-thread tokio runtime of
    /// its own thread, bounded by [`DEADLINE`]. A panic in `body` fails the
    /// calling test. Processes the body starts inherit the namespace.
    ///
    /// # Panics
    /// When `body` panics or times out, or the namespace cannot be entered.
    pub fn run<F, Fut, T>(&self, body: F) -> T
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = T>,
        T: Send,
    {
        self.run_for(DEADLINE, body)
    }

    /// [`Self::run`] with its own bound, for bodies that are slow by nature
    /// (thousands of peers in an emulated VM).
    ///
    /// # Panics
    /// As [`Self::run`].
    pub fn run_for<F, Fut, T>(&self, limit: Duration, body: F) -> T
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = T>,
        T: Send,
    {
        let enter = self.enter_current_thread_fn();
        std::thread::scope(|scope| {
            let worker = scope.spawn(move || {
                enter().unwrap_or_else(|err| panic!("{err}"));
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

    /// Adds a veth pair `a`/`b`, both up, with `a` addressed 192.0.2.1/24
    /// and 2001:db8::1/64 (no DAD), and `b` 192.0.2.2/24, 2001:db8::2/64.
    ///
    /// # Panics
    /// When `ip` fails.
    pub fn veth(&self, a: &str, b: &str) {
        self.run_ip(&["link", "add", a, "type", "veth", "peer", "name", b]);
        self.run_ip(&["addr", "add", "192.0.2.1/24", "dev", a]);
        self.run_ip(&["addr", "add", "2001:db8::1/64", "dev", a, "nodad"]);
        self.run_ip(&["addr", "add", "192.0.2.2/24", "dev", b]);
        self.run_ip(&["addr", "add", "2001:db8::2/64", "dev", b, "nodad"]);
        self.run_ip(&["link", "set", a, "up"]);
        self.run_ip(&["link", "set", b, "up"]);
    }

    /// Adds a veth pair `a`/`b`, both up, without addresses: `a` stands in
    /// for the tunnel link, which carries no address but wireseal's.
    ///
    /// # Panics
    /// When `ip` fails.
    pub fn bare_veth(&self, a: &str, b: &str) {
        self.run_ip(&["link", "add", a, "type", "veth", "peer", "name", b]);
        self.run_ip(&["link", "set", a, "up"]);
        self.run_ip(&["link", "set", b, "up"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // A failure here must not mask a test's own panic: it is only logged.
        if let Err(err) = ip(&["netns", "del", &self.name]) {
            tracing::warn!(netns = %self.name, error = %err, "could not delete network namespace");
        }
    }
}

fn enter(name: &str) -> Result<(), CmdError> {
    let fail = |source| CmdError::Enter {
        name: name.to_owned(),
        source,
    };
    let file = File::open(PathBuf::from(NETNS_DIR).join(name)).map_err(fail)?;
    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|errno| fail(std::io::Error::from(errno)))
}

/// Names of existing namespaces starting with `prefix`.
#[must_use]
pub fn list_with_prefix(prefix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// Two test namespaces joined by a veth pair on 10.250.N.0/24 (a = .1,
/// b = .2), both ends up.
#[derive(Debug)]
pub struct Pair {
    /// A [`unique`] id, for names derived from this pair (interfaces).
    pub id: String,
    /// The first namespace.
    pub a: Netns,
    /// The second namespace.
    pub b: Netns,
    /// The veth end in `a`.
    pub veth_a: String,
    /// The veth end in `b`.
    pub veth_b: String,
    /// `veth_a`'s address.
    pub under_a: String,
    /// `veth_b`'s address.
    pub under_b: String,
}

impl Pair {
    /// Creates both namespaces and the veth pair between them.
    ///
    /// # Panics
    /// As [`Netns::new`], and when `ip` fails.
    #[must_use]
    #[allow(
        clippy::new_without_default,
        reason = "creating namespaces is an effect on the machine, not a default value"
    )]
    pub fn new() -> Self {
        let id = unique();
        let a = Netns::new();
        let b = Netns::new();
        let (veth_a, veth_b) = (format!("wsv{id}a"), format!("wsv{id}b"));
        let subnet = 1 + next() % 250;
        let (under_a, under_b) = (format!("10.250.{subnet}.1"), format!("10.250.{subnet}.2"));
        let _ = run_ok(&[
            "ip",
            "link",
            "add",
            &veth_a,
            "netns",
            a.name(),
            "type",
            "veth",
            "peer",
            "name",
            &veth_b,
            "netns",
            b.name(),
        ]);
        a.run_ip(&["addr", "add", &format!("{under_a}/24"), "dev", &veth_a]);
        b.run_ip(&["addr", "add", &format!("{under_b}/24"), "dev", &veth_b]);
        a.run_ip(&["link", "set", &veth_a, "up"]);
        b.run_ip(&["link", "set", &veth_b, "up"]);
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

//! Network namespaces and the commands run inside them, through iproute2.
//!
//! Everything the lab creates carries the run's prefix, so `wireseal-lab
//! cleanup` can find what a crashed run left behind.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use thiserror::Error;

/// Directory where `ip netns` keeps its namespace handles.
const NETNS_DIR: &str = "/run/netns";

/// A failed command, with what was run and what it said.
#[derive(Debug, Error)]
pub enum CmdError {
    /// The program could not be started.
    #[error("cannot run {program} ({hint}): {source}")]
    Spawn {
        /// Program name.
        program: String,
        /// Which package provides it.
        hint: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The program ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// Entering a namespace failed.
    #[error("entering network namespace {name}: {source}")]
    Enter {
        /// Namespace name.
        name: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

fn hint(program: &str) -> &'static str {
    match program {
        "ip" => "apt-get install iproute2",
        "tcpdump" => "apt-get install tcpdump",
        "ping" => "apt-get install iputils-ping",
        "iperf3" => "apt-get install iperf3",
        "nft" => "apt-get install nftables",
        "wg" => "apt-get install --no-install-recommends wireguard-tools",
        _ => "see .ci/install",
    }
}

/// Runs a command to completion; fails with its stderr when it exits non-zero.
///
/// # Errors
/// [`CmdError`] when it cannot start or exits non-zero.
pub fn run(program: &str, args: &[&str]) -> Result<Output, CmdError> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| CmdError::Spawn {
            program: program.to_owned(),
            hint: hint(program),
            source,
        })?;
    if !output.status.success() {
        return Err(CmdError::Failed {
            command: format!("{program} {}", args.join(" ")),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(output)
}

/// Runs `ip` with `args`.
///
/// # Errors
/// As [`run`].
pub fn ip(args: &[&str]) -> Result<Output, CmdError> {
    run("ip", args)
}

/// A named network namespace, deleted on drop (also when a test panics).
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

    /// Runs `program args` inside the namespace to completion.
    ///
    /// # Errors
    /// As [`run`].
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<Output, CmdError> {
        let mut all = vec!["netns", "exec", self.name.as_str(), program];
        all.extend_from_slice(args);
        run("ip", &all).map_err(|err| match err {
            CmdError::Failed { stderr, status, .. }
                if stderr.contains("No such file or directory") =>
            {
                CmdError::Failed {
                    command: format!("{program} {} (in {})", args.join(" "), self.name),
                    status,
                    stderr: format!("{stderr} ({})", hint(program)),
                }
            }
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
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace also deletes every link inside it.
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

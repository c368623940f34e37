//! Commands, run to completion: as errors for the lab, as test failures for
//! the tests; the privilege check and the polling every test needs.

use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use thiserror::Error;

/// Upper bound for anything a test waits for: a condition in [`wait_until`],
/// a body in [`crate::Netns::run`].
pub const DEADLINE: Duration = Duration::from_secs(30);

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
    #[error("`{command}` failed ({status}): {stderr}{}", stdout_note(.stdout))]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// Its standard error, trimmed.
        stderr: String,
        /// Its standard output, trimmed (`ping` says why it failed there).
        stdout: String,
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

fn stdout_note(stdout: &str) -> String {
    if stdout.is_empty() {
        String::new()
    } else {
        format!("\n(its output: {stdout})")
    }
}

/// The Debian package that provides `program`, for error messages.
pub(crate) fn hint(program: &str) -> &'static str {
    match program {
        "ip" | "ss" => "apt-get install iproute2",
        "tcpdump" => "apt-get install tcpdump",
        "ping" => "apt-get install iputils-ping",
        "iperf3" => "apt-get install iperf3",
        "nft" => "apt-get install nftables",
        "docker" => "apt-get install docker.io, and start its engine",
        "wg" => "apt-get install --no-install-recommends wireguard-tools",
        "wireguard-go" => "apt-get install wireguard-go",
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
            stdout: String::from_utf8_lossy(&output.stdout).trim().to_owned(),
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

/// Runs `args[0]` with the rest as its arguments; fails the test, quoting
/// the command's output, when it cannot start or exits non-zero.
///
/// # Panics
/// Then, and when `args` is empty.
#[must_use = "a command is run for its output or its effect; bind it to `_` for the effect"]
pub fn run_ok(args: &[&str]) -> Output {
    let (program, rest) = args.split_first().expect("run_ok needs a program");
    run(program, rest).unwrap_or_else(|err| panic!("{err}"))
}

/// Runs `args` inside namespace `ns` (`ip netns exec`); fails the test when
/// it fails; returns its stdout.
///
/// # Panics
/// When the command cannot start or exits non-zero.
pub fn ns_run(ns: &str, args: &[&str]) -> String {
    let mut all = vec!["ip", "netns", "exec", ns];
    all.extend_from_slice(args);
    String::from_utf8_lossy(&run_ok(&all).stdout).into_owned()
}

/// Runs `args` inside namespace `ns` and returns its output whatever the
/// exit status.
///
/// # Panics
/// When `ip` cannot start.
pub fn ns_try(ns: &str, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("cannot run {args:?} in {ns} ({}): {err}", hint("ip")))
}

/// Fails the calling test, with the reason, unless it runs as root and every
/// tool in `tools` (program, Debian package) is on `PATH`; `ip` is always
/// checked.
///
/// Privileged tests are `#[ignore]`d, so a plain `cargo nextest run` lists
/// them as skipped; this check is for when they are asked for anyway
/// (`--run-ignored all`) without root: they fail, never pass unchecked.
///
/// # Panics
/// As said.
pub fn require(tools: &[(&str, &str)]) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces, TUN devices, netlink writes): \
         run it as root with `cargo nextest run --workspace --run-ignored all`"
    );
    for (tool, package) in [("ip", "iproute2")].iter().chain(tools) {
        let found = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
        assert!(
            found,
            "`{tool}` is missing: apt-get install -y --no-install-recommends {package} (or run .ci/install)"
        );
    }
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A short id unique on this machine while this process runs: pid and a
/// counter. Short enough for interface names (15 bytes) with a prefix.
pub fn unique() -> String {
    format!(
        "{}{}",
        std::process::id() % 100_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The next value of the counter behind [`unique`], for callers that need a
/// number (a subnet) that differs between the namespaces of one process.
pub(crate) fn next() -> u32 {
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Polls `cond` every 50 ms until it holds; fails the test, naming `what`,
/// when [`DEADLINE`] passes first.
///
/// # Panics
/// Then.
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

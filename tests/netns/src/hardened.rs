//! Checks that a running process of ours is hardened: not dumpable and no core file.
//! A process can only ask `prctl` about itself, so this reads `/proc` from outside.

use std::os::unix::fs::MetadataExt as _;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// The uid [`unprivileged`] runs commands as when the tests run as root.
pub const NOBODY: u32 = 65534;

/// Makes `command` run as [`NOBODY`] when we are root (as we are otherwise): the
/// owner of `/proc/<pid>` only shows non-dumpability for a process that is not root.
pub fn unprivileged(command: &mut Command) -> &mut Command {
    if nix::unistd::geteuid().is_root() {
        std::os::unix::process::CommandExt::uid(command, NOBODY);
    }
    command
}

/// Panics unless the running process `pid` (started through [`unprivileged`]) is
/// non-dumpable (`/proc/<pid>` belongs to root although it runs as another user)
/// and its core file size limit is 0.
pub fn assert_hardened(pid: u32) {
    let dir = format!("/proc/{pid}");
    let status = std::fs::read_to_string(format!("{dir}/status")).expect("reading its status");
    let uid_line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .expect("a Uid: line");
    let effective: u32 = uid_line
        .split_whitespace()
        .nth(2)
        .and_then(|u| u.parse().ok())
        .expect("an effective uid");
    assert_ne!(
        effective, 0,
        "the process must run unprivileged: {uid_line}"
    );
    let owner = std::fs::metadata(format!("{dir}/status"))
        .expect("stat of its status")
        .uid();
    assert_eq!(
        owner, 0,
        "/proc/{pid} of a dumpable process belongs to its user {effective}"
    );
    let limits = std::fs::read_to_string(format!("{dir}/limits")).expect("reading its limits");
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("a core size line");
    let soft_hard: Vec<&str> = core.split_whitespace().skip(4).take(2).collect();
    assert_eq!(soft_hard, ["0", "0"], "{core}");
}

/// Accepts `child`'s connection on `listener`, failing if it exits first or does not
/// connect within 30 s.
pub fn accept_from(listener: &UnixListener, child: &mut Child) -> UnixStream {
    listener
        .set_nonblocking(true)
        .expect("a non-blocking listener");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match listener.accept() {
            Ok((conn, _)) => return conn,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let exited = child.try_wait().expect("checking the child");
                assert!(exited.is_none(), "it exited before connecting: {exited:?}");
                assert!(Instant::now() < deadline, "it never connected");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

//! The `wireseal-tunnel` process itself: not dumpable, no core file. Checked from
//! outside on a running process: its `--check` waiting for an answer that never
//! comes.

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixListener;
use std::process::{Command, Stdio};

use wireseal_netns::{accept_from, assert_hardened, unprivileged};

#[test]
fn the_tunnel_process_is_not_dumpable_and_writes_no_core() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = tmp.path().join("wsh0.sock");
    let listener = UnixListener::bind(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut child = unprivileged(
        Command::new(env!("CARGO_BIN_EXE_wireseal-tunnel"))
            .args(["--check", "--interface", "wsh0", "--uapi-dir"])
            .arg(tmp.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .spawn()
    .unwrap();
    // Once it connects, it waits for the answer: hardened long before.
    let _conn = accept_from(&listener, &mut child);
    assert_hardened(child.id());
    let _ = child.kill();
    let _ = child.wait();
}

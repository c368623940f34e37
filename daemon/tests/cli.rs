//! The `wireseal` binary's command line, run as a user would.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn wireseal(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wireseal"))
        .args(args)
        .env_remove("NODE_NAME")
        .env_remove("WIRESEAL_NODE_NAME")
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone())
        .unwrap()
        .trim()
        .to_owned()
}

/// `wg pubkey` of a private key, from Debian's wireguard-tools.
fn wg_pubkey(private: &str) -> String {
    let mut child = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("wg from wireguard-tools is required: apt-get install -y --no-install-recommends wireguard-tools");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(private.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

#[test]
fn keys_generate_public_and_show_path() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let state = state.to_str().unwrap();
    let generated = stdout(&wireseal(&["keys", "--state-dir", state, "generate"]));
    let path = stdout(&wireseal(&["keys", "--state-dir", state, "show-path"]));
    assert_eq!(path, format!("{state}/private.key"));
    let private = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        wg_pubkey(&private),
        generated,
        "our public key must be wg's"
    );
    // Generating again keeps the key: the node must never re-key by accident.
    assert_eq!(
        stdout(&wireseal(&["keys", "--state-dir", state, "generate"])),
        generated
    );
    assert_eq!(
        stdout(&wireseal(&["keys", "--state-dir", state, "public"])),
        generated
    );
    // The flag also works after the subcommand.
    assert_eq!(
        stdout(&wireseal(&["keys", "public", "--state-dir", state])),
        generated
    );

    let next = stdout(&wireseal(&[
        "keys",
        "--state-dir",
        state,
        "generate",
        "--next",
    ]));
    assert_ne!(next, generated);
    assert_eq!(
        stdout(&wireseal(&[
            "keys",
            "--state-dir",
            state,
            "public",
            "--next"
        ])),
        next
    );
    assert_eq!(
        stdout(&wireseal(&["keys", "--state-dir", state, "public"])),
        generated
    );
}

#[test]
fn keys_public_without_a_key_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().to_str().unwrap();
    let output = wireseal(&["keys", "--state-dir", state, "public"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("no key at {state}/private.key")),
        "{stderr}"
    );
}

#[test]
fn state_dir_comes_from_the_environment_too() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_wireseal"))
        .args(["keys", "show-path"])
        .env("WIRESEAL_STATE_DIR", dir.path())
        .output()
        .unwrap();
    assert_eq!(
        stdout(&output),
        format!("{}/private.key", dir.path().display())
    );
}

#[test]
fn version_and_help() {
    let version = stdout(&wireseal(&["--version"]));
    assert_eq!(version, format!("wireseal {}", env!("CARGO_PKG_VERSION")));
    let help = stdout(&wireseal(&["agent", "--help"]));
    for flag in [
        "--node-name",
        "--kubeconfig",
        "--datapath",
        "--state-dir",
        "--interface",
        "--listen-port",
        "--mtu",
    ] {
        assert!(help.contains(flag), "agent --help lacks {flag}");
    }
    assert!(
        help.contains("WIRESEAL_LISTEN_PORT"),
        "help shows the environment variables"
    );
}

#[test]
fn agent_rejects_bad_flags_with_a_clear_error() {
    let output = wireseal(&["agent", "--node-name", "n1", "--mtu", "12"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--mtu (WIRESEAL_MTU) = \"12\": must be between 1280 and 65535"),
        "{stderr}"
    );
    let output = wireseal(&["agent"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no node name"), "{stderr}");
}

#[test]
fn agent_with_a_taken_metrics_port_exits_naming_the_port_and_the_flag() {
    let state = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let status_addr = free.local_addr().unwrap().to_string();
    drop(free);
    let output = Command::new(env!("CARGO_BIN_EXE_wireseal"))
        .args(["agent", "--node-name", "n1", "--datapath", "memory"])
        .args(["--status-addr", &status_addr])
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .arg("--state-dir")
        .arg(state.path())
        .env("KUBECONFIG", state.path().join("no-such-kubeconfig"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "--metrics-addr 127.0.0.1:{port}: port {port} is already in use"
        )),
        "{stderr}"
    );
}

#[test]
fn the_wireseal_process_is_not_dumpable_and_writes_no_core() {
    use std::os::unix::fs::PermissionsExt as _;
    let state = tempfile::tempdir().unwrap();
    std::fs::set_permissions(state.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = state.path().join("status.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
    // `wireseal status` connects and waits for an answer that never comes.
    let mut child = wireseal_netns::unprivileged(
        Command::new(env!("CARGO_BIN_EXE_wireseal"))
            .args(["status", "--state-dir"])
            .arg(state.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .spawn()
    .unwrap();
    let _conn = wireseal_netns::accept_from(&listener, &mut child);
    wireseal_netns::assert_hardened(child.id());
    let _ = child.kill();
    let _ = child.wait();
}

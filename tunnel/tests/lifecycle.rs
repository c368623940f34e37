//! The process and its UAPI socket in a network namespace, as root: socket life
//! cycle, bad input, a stalled client, attaching to an existing TUN, a second
//! instance. Root only: ignored unless asked for, and failing (never passing)
//! without root or a tool.

mod common;

use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::*;

const TOOLS: &[(&str, &str)] = &[("ip", "iproute2"), ("wg", "wireguard-tools")];

fn uapi(iface: &str, request: &str) -> String {
    let mut s = UnixStream::connect(uapi_socket(iface)).expect("connecting to the UAPI socket");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("setting a read timeout");
    // The server may answer and close before reading a hostile request to its end,
    // so a failed write is expected there; the answer is what is checked.
    let _ = s.write_all(request.as_bytes());
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut answer = String::new();
    s.read_to_string(&mut answer)
        .expect("reading the UAPI answer");
    answer
}

#[test]
#[ignore = "needs root: TUN devices and network namespaces"]
fn uapi_socket_life_cycle_and_bad_input() {
    require(TOOLS);
    let ns = Netns::new();
    let iface = format!("wst{}u", unique());
    let path = uapi_socket(&iface);
    // A stale socket file left by a crash must not stop the start.
    std::fs::create_dir_all("/var/run/wireguard").unwrap();
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let mut d = start_wireseal(ns.name(), &iface);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    // The liveness probe: every datapath thread is making progress.
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_wireseal-tunnel"))
        .args(["--check", "--interface", &iface])
        .output()
        .expect("running wireseal-tunnel --check");
    assert!(
        check.status.success(),
        "--check failed: {}",
        String::from_utf8_lossy(&check.stderr)
    );

    let einval = "errno=-22\n\n";
    assert_eq!(uapi(&iface, "set=1\nbogus_key=1\n\n"), einval);
    assert_eq!(uapi(&iface, "set=1\nprivate_key=nothex\n\n"), einval);
    assert_eq!(
        uapi(
            &iface,
            &format!(
                "set=1\npublic_key={}\nendpoint=nowhere\n\n",
                "ab".repeat(32)
            )
        ),
        einval
    );
    assert_eq!(
        uapi(
            &iface,
            &format!("set=1\nfwmark={}\n\n", "7".repeat(1 << 20))
        ),
        einval
    );
    assert_eq!(
        uapi(&iface, "set=1\nlisten_port=1"),
        einval,
        "truncated request"
    );
    assert_eq!(uapi(&iface, "what=1\n\n"), "errno=-71\n\n");
    // Still alive and unchanged: no peer was half-added by the bad endpoint request.
    let get = uapi(&iface, "get=1\n\n");
    assert!(
        get.ends_with("errno=0\n\n") && !get.contains("public_key"),
        "{get}"
    );
    let out = ns_try(ns.name(), &["wg", "show", &iface]);
    assert!(out.status.success());

    let status = d.stop().expect("wireseal-tunnel did not exit on SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    assert!(!path.exists(), "socket file left behind after a clean exit");
    let links = ns_run(ns.name(), &["ip", "link", "show"]);
    assert!(
        !links.contains(&iface),
        "TUN should vanish with the process:\n{links}"
    );
}

#[test]
#[ignore = "needs root: TUN devices and network namespaces"]
fn attaches_to_an_existing_tun_and_refuses_a_second_instance() {
    require(TOOLS);
    let ns = Netns::new();
    let iface = format!("wst{}p", unique());
    // A persistent TUN made beforehand (e.g. by an operator or a previous run).
    ns_run(
        ns.name(),
        &["ip", "tuntap", "add", "dev", &iface, "mode", "tun"],
    );
    let mut first = start_wireseal_with(ns.name(), &iface, &["--log-format", "json"]);
    assert!(ns_run(ns.name(), &["ip", "link", "show", &iface]).contains("UP"));

    // A second datapath for the same interface must fail, not steal it.
    let mut second = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.name(),
            env!("CARGO_BIN_EXE_wireseal-tunnel"),
        ])
        .args(["--interface", &iface])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawning a second wireseal-tunnel");
    let mut status = None;
    wait_until("the second instance to exit", || {
        status = second.try_wait().expect("try_wait");
        status.is_some()
    });
    assert!(
        !status.expect("exited").success(),
        "a second instance must fail"
    );
    assert!(
        ns_try(ns.name(), &["wg", "show", &iface]).status.success(),
        "first still serves"
    );

    assert!(first.stop().expect("exit on SIGTERM").success());
    // We attached, we did not create: the persistent device stays.
    assert!(ns_run(ns.name(), &["ip", "link", "show", &iface]).contains(&iface));
}

#[test]
#[ignore = "needs root: TUN devices and network namespaces"]
fn a_stalled_uapi_client_does_not_block_wg_show() {
    require(TOOLS);
    let ns = Netns::new();
    let iface = format!("wst{}s", unique());
    let _d = start_wireseal(ns.name(), &iface);
    // A client that sends half a request and then goes quiet.
    let mut stalled = UnixStream::connect(uapi_socket(&iface)).expect("connect");
    stalled.write_all(b"set=1\nlisten_port=").expect("write");
    let start = std::time::Instant::now();
    let out = ns_try(ns.name(), &["wg", "show", &iface]);
    assert!(
        out.status.success(),
        "wg show failed beside a stalled client"
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "wg show waited {:?} for the stalled client",
        start.elapsed()
    );
    drop(stalled);
}

#[test]
#[ignore = "needs root: TUN devices and network namespaces"]
fn deleting_the_interface_stops_the_datapath_with_an_error() {
    require(TOOLS);
    let ns = Netns::new();
    let iface = format!("wst{}d", unique());
    let mut d = start_wireseal(ns.name(), &iface);
    ns_run(ns.name(), &["ip", "link", "del", &iface]);
    let mut status = None;
    wait_until("wireseal-tunnel to exit after its TUN was deleted", || {
        status = d.child.try_wait().expect("try_wait");
        status.is_some()
    });
    assert!(!status.expect("exited").success(), "must exit non-zero");
    assert!(!uapi_socket(&iface).exists(), "socket file left behind");
}

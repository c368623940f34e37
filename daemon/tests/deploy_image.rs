//! The container image definition (Containerfile at the repository root) and
//! the tunnel container's entry point (deploy/image/tunnel-entrypoint.sh).
//!
//! The Containerfile is not built here (no registry to pull its base images
//! from): these tests check that it builds what the DaemonSet runs, and run
//! the entry point with stand-ins for `ip` and `wireseal-tunnel`. The image
//! that deploy/image/build-offline.sh builds from the same runtime stage is
//! built and run by the lab (tests/lab/tests/pods.rs).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader};
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn containerfile() -> String {
    std::fs::read_to_string(repo().join("Containerfile")).unwrap()
}

/// The instructions of the Containerfile, continuation lines joined, comments dropped.
fn instructions() -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in containerfile().lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

fn version_tuple(version: &str) -> Vec<u32> {
    version
        .split('.')
        .map(|part| part.parse().unwrap())
        .collect()
}

#[test]
fn builder_toolchain_meets_the_workspace_rust_version() {
    let arg = instructions()
        .into_iter()
        .find_map(|i| i.strip_prefix("ARG RUST_VERSION=").map(str::to_owned))
        .expect("ARG RUST_VERSION=… in Containerfile");
    let required = env!("CARGO_PKG_RUST_VERSION");
    assert!(
        version_tuple(&arg) >= version_tuple(required),
        "builder Rust {arg} is older than the workspace's rust-version {required}"
    );
    let froms: Vec<String> = instructions()
        .into_iter()
        .filter(|i| i.starts_with("FROM "))
        .collect();
    assert_eq!(froms.len(), 2, "a builder and a runtime stage: {froms:?}");
    assert!(
        froms[0].contains("/rust:${RUST_VERSION}") && froms[0].ends_with(" AS builder"),
        "{}",
        froms[0]
    );
    // The runtime stage has no compiler; the builder's glibc must not be newer
    // than the runtime's: the same Debian release on both sides.
    let release = |from: &str| {
        ["bookworm", "trixie", "forky"]
            .into_iter()
            .find(|r| from.contains(r))
            .unwrap_or_else(|| panic!("no Debian release named in {from}"))
    };
    assert_eq!(release(&froms[0]), release(&froms[1]));
}

#[test]
fn builds_both_binaries_locked_in_release() {
    let build = instructions()
        .into_iter()
        .find(|i| i.contains("cargo build"))
        .expect("a cargo build step");
    for part in [
        "--release",
        "--locked",
        "-p wireseal ",
        "-p wireseal-tunnel",
    ] {
        assert!(build.contains(part), "{part:?} missing in: {build}");
    }
    // The offline build installs its binaries with the same script.
    assert!(
        build.ends_with("&& deploy/image/install-binaries.sh target/release /out"),
        "{build}"
    );
    let install = std::fs::read_to_string(repo().join("deploy/image/install-binaries.sh")).unwrap();
    assert!(install.contains("for binary in wireseal wireseal-tunnel; do"));
    let offline = std::fs::read_to_string(repo().join("deploy/image/build-offline.sh")).unwrap();
    assert!(
        offline.contains(r#""$repo/deploy/image/install-binaries.sh" "$bin_dir" "$context/bin""#)
    );
    let text = instructions().join("\n");
    assert!(text.contains("COPY --from=builder /out/ /usr/local/bin/"));
    assert!(text.contains(r#"ENTRYPOINT ["/usr/local/bin/wireseal"]"#));
}

#[test]
fn image_labels_carry_the_crate_version() {
    let text = instructions().join("\n");
    assert!(
        text.contains(&format!(
            "org.opencontainers.image.version=\"{}\"",
            env!("CARGO_PKG_VERSION")
        )),
        "the version label must be the workspace version"
    );
    for label in ["title", "source", "licenses", "description"] {
        assert!(
            text.contains(&format!("org.opencontainers.image.{label}=")),
            "{label}"
        );
    }
}

#[test]
fn the_tunnel_entry_point_is_installed_where_the_daemonset_calls_it() {
    let daemonset =
        std::fs::read_to_string(repo().join("deploy/kubernetes/20-daemonset.yaml")).unwrap();
    assert!(daemonset.contains(r#"command: ["wireseal-tunnel-entrypoint"]"#));
    let copy = instructions()
        .into_iter()
        .find(|i| i.contains("tunnel-entrypoint"))
        .expect("the entry point is copied into the image");
    assert_eq!(
        copy,
        "COPY deploy/image/tunnel-entrypoint.sh /usr/local/bin/wireseal-tunnel-entrypoint"
    );
    let mode = std::fs::metadata(entrypoint())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o111,
        0o111,
        "COPY keeps the mode: it must be executable"
    );
}

#[test]
fn build_context_leaves_out_build_output() {
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for needed in ["target", "build", ".git"] {
        assert!(
            patterns.contains(&needed),
            "{needed} not ignored: {patterns:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// The entry point, run with `sh` (dash, as in the image) and stand-ins.

fn entrypoint() -> PathBuf {
    repo().join("deploy/image/tunnel-entrypoint.sh")
}

/// A directory with a fake `ip` and a fake `wireseal-tunnel` that log their
/// calls. `FAKE_IP_ADD_ERROR`, when set, makes `ip link add` fail with it.
struct Fakes {
    dir: tempfile::TempDir,
}

impl Fakes {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, body: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, body).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        write(
            "ip",
            "#!/bin/sh\n\
             echo \"ip $*\" >>\"$FAKE_LOG\"\n\
             if [ \"$1 $2\" = 'link add' ] && [ -n \"${FAKE_IP_ADD_ERROR:-}\" ]; then\n\
               echo \"$FAKE_IP_ADD_ERROR\" >&2; exit 2\n\
             fi\n",
        );
        write(
            "wireseal-tunnel",
            "#!/bin/sh\necho \"tunnel interface=$WIRESEAL_INTERFACE${*:+ $*}\" >>\"$FAKE_LOG\"\n\
             exit \"${FAKE_TUNNEL_EXIT:-0}\"\n",
        );
        Self { dir }
    }

    fn log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn command(&self, env: &[(&str, &str)]) -> Command {
        let mut command = Command::new("sh");
        command
            .arg(entrypoint())
            .env_clear()
            .env(
                "PATH",
                format!(
                    "{}:/usr/sbin:/usr/bin:/sbin:/bin",
                    self.dir.path().display()
                ),
            )
            .env("FAKE_LOG", self.dir.path().join("log"))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    }

    /// Runs the entry point to its end.
    fn run(&self, env: &[(&str, &str)]) -> (ExitStatus, String) {
        let child = self.command(env).spawn().unwrap();
        let output = wait_bounded(child);
        (
            output.status,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

fn wait_bounded(mut child: Child) -> std::process::Output {
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the entry point did not finish in 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

const IFACE: (&str, &str) = ("WIRESEAL_INTERFACE", "wireseal0");

#[test]
fn the_liveness_check_asks_a_running_tunnel_and_passes_an_idle_container() {
    let fakes = Fakes::new();
    let uapi = tempfile::tempdir().unwrap();
    let dir = ("WIRESEAL_UAPI_DIR", uapi.path().to_str().unwrap());
    let check = |env: &[(&str, &str)]| {
        let child = fakes.command(env).arg("--check").spawn().unwrap();
        wait_bounded(child).status
    };
    // Idle (kernel WireGuard): no socket, nothing to ask, and no probe link made.
    assert!(check(&[IFACE, dir]).success());
    assert!(fakes.log().is_empty(), "{:?}", fakes.log());
    let _listener =
        std::os::unix::net::UnixListener::bind(uapi.path().join("wireseal0.sock")).unwrap();
    assert!(check(&[IFACE, dir]).success());
    assert_eq!(fakes.log(), ["tunnel interface=wireseal0 --check"]);
    // The tunnel's answer decides.
    assert!(!check(&[IFACE, dir, ("FAKE_TUNNEL_EXIT", "1")]).success());
}

#[test]
fn userspace_starts_the_tunnel_without_probing() {
    let fakes = Fakes::new();
    let (status, stderr) = fakes.run(&[IFACE, ("WIRESEAL_DATAPATH", "userspace")]);
    assert!(status.success(), "{stderr}");
    assert_eq!(fakes.log(), ["tunnel interface=wireseal0"]);
}

#[test]
fn auto_without_kernel_wireguard_starts_the_tunnel() {
    for error in [
        "Error: Unknown device type.",
        "RTNETLINK answers: Operation not supported",
    ] {
        let fakes = Fakes::new();
        let (status, stderr) = fakes.run(&[IFACE, ("FAKE_IP_ADD_ERROR", error)]);
        assert!(status.success(), "{error}: {stderr}");
        assert_eq!(
            fakes.log(),
            [
                "ip link delete wireseal-probe",
                "ip link add wireseal-probe type wireguard",
                "tunnel interface=wireseal0",
            ],
            "{error}"
        );
        assert!(stderr.contains("the kernel has no WireGuard"), "{stderr}");
    }
}

#[test]
fn auto_with_an_unexpected_error_fails_without_starting_anything() {
    let fakes = Fakes::new();
    let (status, stderr) = fakes.run(&[
        IFACE,
        (
            "FAKE_IP_ADD_ERROR",
            "RTNETLINK answers: Operation not permitted",
        ),
    ]);
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("Operation not permitted"), "{stderr}");
    assert!(!fakes.log().iter().any(|l| l.starts_with("tunnel")));
}

#[test]
fn bad_settings_fail() {
    let fakes = Fakes::new();
    let (status, stderr) = fakes.run(&[IFACE, ("WIRESEAL_DATAPATH", "magic")]);
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("expected auto, kernel or userspace"),
        "{stderr}"
    );
    let (status, stderr) = fakes.run(&[("WIRESEAL_DATAPATH", "userspace")]);
    assert!(!status.success());
    assert!(stderr.contains("WIRESEAL_INTERFACE"), "{stderr}");
    assert!(fakes.log().is_empty(), "{:?}", fakes.log());
}

/// Starts the entry point, waits for its "not started" line, stops it with
/// SIGTERM as the kubelet does, and returns its exit status.
fn idle_then_stop(fakes: &Fakes, env: &[(&str, &str)]) -> ExitStatus {
    let mut child = fakes.command(env).spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.contains("wireseal-tunnel is not started"), "{line}");
    // The trap is set before the line is printed; give the loop a moment to
    // reach `wait`, then stop it.
    std::thread::sleep(Duration::from_millis(200));
    kill(
        Pid::from_raw(i32::try_from(child.id()).unwrap()),
        Signal::SIGTERM,
    )
    .unwrap();
    wait_bounded(child).status
}

#[test]
fn auto_with_kernel_wireguard_idles_and_stops_on_sigterm() {
    let fakes = Fakes::new();
    let status = idle_then_stop(&fakes, &[IFACE]);
    assert!(status.success(), "{status:?}");
    assert_eq!(
        fakes.log(),
        [
            "ip link delete wireseal-probe",
            "ip link add wireseal-probe type wireguard",
            "ip link delete wireseal-probe",
        ],
        "the probe link is removed and no tunnel runs"
    );
}

#[test]
fn kernel_idles_without_probing() {
    let fakes = Fakes::new();
    let status = idle_then_stop(&fakes, &[IFACE, ("WIRESEAL_DATAPATH", "kernel")]);
    assert!(status.success(), "{status:?}");
    assert!(fakes.log().is_empty(), "{:?}", fakes.log());
}

#[test]
fn ipsec_mode_idles_without_probing_even_where_the_kernel_lacks_wireguard() {
    // IPsec mode is the kernel's alone: a userspace tunnel would own the
    // agent's interface name for nothing.
    let fakes = Fakes::new();
    let status = idle_then_stop(
        &fakes,
        &[
            IFACE,
            ("WIRESEAL_ENCRYPTION", "ipsec"),
            ("WIRESEAL_DATAPATH", "auto"),
        ],
    );
    assert!(status.success(), "{status:?}");
    assert!(fakes.log().is_empty(), "{:?}", fakes.log());
    let (status, stderr) = fakes.run(&[IFACE, ("WIRESEAL_ENCRYPTION", "rot13")]);
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("expected wireguard or ipsec"), "{stderr}");
}

/// Every shell script of the image, of its builds and of the Vagrant cluster
/// passes shellcheck, and the Vagrantfile parses (nothing else runs the Vagrant
/// cluster's scripts here).
#[test]
fn scripts_pass_shellcheck_and_the_vagrantfile_parses() {
    let mut scripts = vec![
        entrypoint(),
        repo().join("deploy/image/build-offline.sh"),
        repo().join("deploy/image/install-binaries.sh"),
    ];
    let k3s = repo().join("vagrant/k3s");
    let mut more: Vec<PathBuf> = std::fs::read_dir(&k3s)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sh"))
        .collect();
    more.sort();
    assert!(more.len() >= 6, "{more:?}");
    scripts.extend(more);
    let output = Command::new("shellcheck")
        .args(&scripts)
        .output()
        .expect("shellcheck is required: apt-get install -y --no-install-recommends shellcheck (see .ci/install)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let output = Command::new("ruby")
        .arg("-c")
        .arg(repo().join("vagrant/Vagrantfile"))
        .output()
        .expect(
            "ruby is required: apt-get install -y --no-install-recommends ruby (see .ci/install)",
        );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

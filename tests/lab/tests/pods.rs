//! The image and the DaemonSets' pods, run for real by a container engine:
//! on every lab node, the `agent` and `tunnel` containers of
//! `deploy/kubernetes/20-daemonset.yaml`, from the image that
//! `deploy/image/build-offline.sh` builds (the lab's debug binaries on a
//! Debian base), with what the manifest gives them (read at run time:
//! `wireseal_lab::daemonset`). Also the cleanup DaemonSet's pod.
//!
//! They need root, docker with a running engine, and (once per machine, for
//! the image's Debian base) mmdebstrap and the Debian mirror; they fail, never
//! skip, without them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::PermissionsExt as _;
use std::thread;
use std::time::{Duration, Instant};

use wireseal_lab::capture::CaptureReport;
use wireseal_lab::docker::docker;
use wireseal_lab::image::{self, containerfile_instructions};
use wireseal_lab::pods::ProbeKind;
use wireseal_lab::process::locate;
use wireseal_lab::traffic::{self, Pinger};
use wireseal_lab::{Lab, LabConfig, Runtime};

const UP: Duration = Duration::from_secs(60);
const CONVERGE: Duration = Duration::from_secs(30);

fn lab(nodes: usize, pods: usize, agent_args: &'static [&'static str]) -> Lab {
    Lab::up(LabConfig {
        nodes,
        pods,
        runtime: Runtime::Containers,
        agent_args,
        ..LabConfig::default()
    })
    .expect("the containerised lab needs root, docker, the built binaries and (once) mmdebstrap")
}

/// Canary pings between the first pods of `pairs` while capturing the underlay.
fn capture(lab: &Lab, pairs: &[(usize, usize)]) -> CaptureReport {
    lab.capture_pings(pairs).unwrap()
}

fn text(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

// ---------------------------------------------------------------------------
// The image.

/// The Containerfile's runtime stage (from its last FROM), as instructions.
fn runtime_stage() -> Vec<String> {
    let text = std::fs::read_to_string(image::repo_root().join("Containerfile")).unwrap();
    let all = containerfile_instructions(&text);
    let last_from = all.iter().rposition(|i| i.starts_with("FROM ")).unwrap();
    all[last_from..].to_vec()
}

/// The one instruction of the runtime stage starting with `keyword`, without it.
fn instruction(stage: &[String], keyword: &str) -> String {
    let found: Vec<&String> = stage
        .iter()
        .filter(|i| i.starts_with(&format!("{keyword} ")))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {keyword} in the runtime stage: {found:?}"
    );
    found[0][keyword.len() + 1..].to_owned()
}

/// `key="value" key2="value2"` as a map.
fn labels(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = text.trim();
    while let Some((key, tail)) = rest.split_once("=\"") {
        let (value, tail) = tail.split_once('"').expect("a closing quote");
        out.insert(key.trim().to_owned(), value.to_owned());
        rest = tail.trim();
    }
    assert!(rest.is_empty(), "cannot read LABEL {text}");
    out
}

/// The packages of the runtime stage's `apt-get install`.
fn runtime_packages(stage: &[String]) -> Vec<String> {
    let run = stage
        .iter()
        .find(|i| i.contains("apt-get install"))
        .expect("an apt-get install step");
    let (_, after) = run.split_once("--no-install-recommends").unwrap();
    after
        .split("&&")
        .next()
        .unwrap()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// The lab's image, built (or found up to date) from the binaries the tests run.
fn lab_image() -> String {
    let wireseal = locate("wireseal").unwrap();
    image::ensure(wireseal.parent().unwrap()).unwrap()
}

fn inspect(reference: &str, format: &str) -> String {
    text(&docker(&["image", "inspect", "--format", format, reference]).unwrap())
        .trim()
        .to_owned()
}

/// The offline build carries the Containerfile's runtime stage over
/// instruction by instruction: what it copies as it is, it copies in order.
#[test]
fn the_offline_containerfile_is_the_runtime_stage() {
    let output = std::process::Command::new("bash")
        .arg(image::repo_root().join("deploy/image/build-offline.sh"))
        .arg("--print")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = text(&output);
    let generated = containerfile_instructions(&printed);
    let stage = runtime_stage();
    let kept: Vec<&String> = stage
        .iter()
        .filter(|i| !i.starts_with("FROM ") && !i.contains("--from=") && !i.contains("apt-get"))
        .filter(|i| !i.starts_with("LABEL "))
        .collect();
    let carried: Vec<&String> = generated
        .iter()
        .filter(|i| !i.starts_with("FROM ") && !i.starts_with("COPY bin/"))
        .filter(|i| !i.starts_with("LABEL "))
        .collect();
    assert_eq!(carried, kept);
    assert!(generated[0].starts_with("FROM localhost/wireseal-base:trixie-"));
    assert!(
        generated.contains(&"COPY bin/ /usr/local/bin/".to_owned()),
        "{generated:?}"
    );
    let release = instruction(&stage, "FROM");
    assert!(release.contains("debian:trixie-slim"), "{release}");
    assert!(
        printed.contains(&format!(
            "# packages: {}",
            runtime_packages(&stage).join(" ")
        )),
        "{printed}"
    );
    // The labels, but for the base's name, are the Containerfile's.
    let mut expected = labels(&instruction(&stage, "LABEL"));
    let mut got = labels(&instruction(&generated, "LABEL"));
    assert!(got["org.opencontainers.image.base.name"].starts_with("localhost/wireseal-base:"));
    expected.remove("org.opencontainers.image.base.name");
    got.remove("org.opencontainers.image.base.name");
    assert_eq!(got, expected);
}

/// The built image has the Containerfile's entry point, command, user,
/// environment, labels and runtime packages, runs its binaries, and stays small.
#[test]
#[ignore = "needs root and docker"]
fn the_image_is_the_containerfiles_and_small() {
    let tag = lab_image();
    let stage = runtime_stage();
    let config: serde_json::Value =
        serde_json::from_str(&inspect(&tag, "{{json .Config}}")).unwrap();
    let json = |s: String| serde_json::from_str::<serde_json::Value>(&s).unwrap();
    assert_eq!(
        config["Entrypoint"],
        json(instruction(&stage, "ENTRYPOINT"))
    );
    assert_eq!(config["Cmd"], json(instruction(&stage, "CMD")));
    assert_eq!(config["User"], instruction(&stage, "USER").as_str());
    // Debian's images set PATH; the Containerfile adds its ENV.
    assert_eq!(
        config["Env"],
        serde_json::json!([
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            instruction(&stage, "ENV"),
        ])
    );
    let mut expected = labels(&instruction(&stage, "LABEL"));
    let got: BTreeMap<String, String> = serde_json::from_value(config["Labels"].clone()).unwrap();
    let base = got["org.opencontainers.image.base.name"].clone();
    expected.insert("org.opencontainers.image.base.name".into(), base.clone());
    assert_eq!(got, expected);

    // The runtime packages, the CA bundle without the ca-certificates package
    // (as the Containerfile copies it), the binaries and the tunnel's entry point.
    let packages = runtime_packages(&stage);
    let script = format!(
        "set -e; dpkg-query -W {}; ! dpkg-query -W ca-certificates 2>/dev/null; \
         test -s /etc/ssl/certs/ca-certificates.crt; wireseal --version; wireseal-tunnel --version; \
         test -x \"$(command -v wireseal-tunnel-entrypoint)\"; wg --version",
        packages.join(" ")
    );
    let out = docker(&[
        "run",
        "--rm",
        "--pull",
        "never",
        "--network",
        "none",
        "--entrypoint",
        "sh",
        &tag,
        "-c",
        &script,
    ])
    .unwrap();
    let listed = text(&out);
    for package in &packages {
        assert!(listed.contains(package.as_str()), "{package}: {listed}");
    }
    assert!(
        listed.contains(&format!("wireseal {}", env!("CARGO_PKG_VERSION"))),
        "{listed}"
    );

    // Size: the base is what the build adds to the binaries; the binaries
    // here are the debug ones (deploy/README.md gives the release image's size).
    let size: u64 = inspect(&tag, "{{.Size}}").parse().unwrap();
    let base_size: u64 = inspect(&base, "{{.Size}}").parse().unwrap();
    let binaries = ["wireseal", "wireseal-tunnel"]
        .iter()
        .map(|b| std::fs::metadata(locate(b).unwrap()).unwrap().len())
        .sum::<u64>();
    println!(
        "image {tag}: {} MB: base {base} {} MB, debug binaries {} MB before their line tables are compressed",
        size / 1_000_000,
        base_size / 1_000_000,
        binaries / 1_000_000
    );
    assert!(
        base_size < 100_000_000,
        "the base grew to {} MB: what pulled more in?",
        base_size / 1_000_000
    );
    assert!(
        size < base_size + binaries + 1_000_000,
        "the image holds more than the base and the binaries: {size} bytes"
    );
    // The binaries' line tables are compressed (install-binaries.sh), not gone.
    let inside = docker(&[
        "run",
        "--rm",
        "--pull",
        "never",
        "--network",
        "none",
        "--entrypoint",
        "cat",
        &tag,
        "/usr/local/bin/wireseal",
    ])
    .unwrap()
    .stdout;
    let file = std::env::temp_dir().join(format!("wireseal-lab-image-{}", std::process::id()));
    std::fs::write(&file, &inside).unwrap();
    let sections = std::process::Command::new("readelf")
        .args(["--section-headers", "--wide"])
        .arg(&file)
        .output()
        .expect("readelf (binutils)");
    std::fs::remove_file(&file).unwrap();
    let debug_line = String::from_utf8_lossy(&sections.stdout)
        .lines()
        .find(|l| l.contains(" .debug_line "))
        .map(str::to_owned)
        .expect("line tables in the image's wireseal");
    // Section flags: C = compressed.
    let flags = debug_line
        .split_whitespace()
        .rev()
        .nth(3)
        .unwrap_or_default()
        .to_owned();
    assert!(flags.contains('C'), "{debug_line}");
}

// ---------------------------------------------------------------------------
// The pod.

/// The capability bits of `names` (the ones the manifests name).
fn capability_mask(names: &[String]) -> u64 {
    names
        .iter()
        .map(|name| match name.as_str() {
            "NET_ADMIN" => 1u64 << 12,
            "NET_RAW" => 1 << 13,
            "SYS_ADMIN" => 1 << 21,
            other => panic!("capability {other}: add its bit here"),
        })
        .fold(0, |mask, bit| mask | bit)
}

/// `key:\tvalue` of /proc/1/status in container `name` of node `i`'s pod.
fn pid1_status(lab: &Lab, i: usize, name: &str) -> BTreeMap<String, String> {
    text(&lab.exec(i, name, &["cat", "/proc/1/status"]).unwrap())
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

/// The device cgroup (v1) directory of container `name` of node `i`'s pod.
fn devices_cgroup(lab: &Lab, i: usize, name: &str) -> std::path::PathBuf {
    let pid = lab.container_state(i, name).unwrap().pid;
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let path = cgroups
        .lines()
        .find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _ = parts.next();
            (parts.next()? == "devices").then(|| parts.next()).flatten()
        })
        .unwrap_or_else(|| {
            panic!(
                "container {name} has no device cgroup of cgroup v1 ({cgroups}): \
                 reproducing the runc device problem needs v1's device controller"
            )
        });
    std::path::Path::new("/sys/fs/cgroup/devices").join(path.trim_start_matches('/'))
}

/// Polls a probe until it answers with success, as the kubelet would keep
/// probing; fails after `deadline`.
fn probe_until_success(lab: &Lab, i: usize, kind: ProbeKind, deadline: Duration) -> String {
    let started = Instant::now();
    loop {
        let answer = lab.probe(i, "agent", kind);
        match answer {
            Ok(answer) if answer.success() => return answer.body,
            other => assert!(
                started.elapsed() < deadline,
                "node-{i}'s {kind:?} probe still fails after {deadline:?}: {other:?}\n{}",
                lab.logs(i)
            ),
        }
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[ignore = "needs root, network namespaces and docker"]
fn the_daemonset_pods_encrypt_and_answer_probes_exec_and_wg() {
    let mut lab = lab(3, 2, &[]);
    let ring = [(0, 1), (1, 2), (2, 0)];
    let plain = capture(&lab, &ring);
    assert!(
        plain.canary_frames > 0,
        "without wireseal the canary must be visible, or the check proves nothing: {plain}"
    );

    let started = Instant::now();
    lab.start_wireseal().unwrap();
    // The kubelet restarts an agent whose liveness probe has not answered
    // by then: it must answer well before.
    let liveness = lab.probe_spec("agent", ProbeKind::Liveness).unwrap();
    for i in 0..3 {
        let body = probe_until_success(&lab, i, ProbeKind::Liveness, liveness.deadline());
        assert_eq!(body, "ok\n");
    }
    println!(
        "liveness answered on every node {:.1} s after the pods started (the kubelet's limit: {:?})",
        started.elapsed().as_secs_f64(),
        liveness.deadline()
    );
    lab.wait_encrypted(UP).unwrap();
    // The tunnel container's liveness probe: every datapath thread makes
    // progress (or the container idles, on kernel WireGuard).
    for i in 0..3 {
        lab.exec_probe(i, "tunnel")
            .unwrap_or_else(|e| panic!("node-{i}'s tunnel liveness probe: {e:#}"));
    }
    let readiness = lab.probe_spec("agent", ProbeKind::Readiness).unwrap();
    for i in 0..3 {
        let body = probe_until_success(&lab, i, ProbeKind::Readiness, readiness.deadline());
        assert_eq!(body, "ready: 2/2 peers encrypted\n");
    }

    lab.prove_sealed(&ring).unwrap();

    // As `kubectl exec <pod> -c agent -- …` would.
    let status = text(&lab.exec(0, "agent", &["wireseal", "status"]).unwrap());
    assert!(status.contains("2/2 peers encrypted"), "{status}");
    let wg = text(&lab.exec(0, "agent", &["wg", "show", "wireseal0"]).unwrap());
    assert_eq!(wg.matches("\npeer: ").count(), 2, "{wg}");
    assert!(wg.contains("latest handshake"), "{wg}");
    assert!(wg.contains("listening port: 51830"), "{wg}");
    // The containerPorts the manifest declares (WireGuard's UDP, the metrics'
    // TCP) are the ones bound on the node.
    let ports = &lab
        .agent_template()
        .unwrap()
        .container("agent")
        .unwrap()
        .ports;
    assert_eq!(ports.len(), 2, "{ports:?}");
    for (port, protocol) in ports {
        assert!(
            lab.port_bound(0, *port, protocol).unwrap(),
            "nothing on {protocol} {port}"
        );
    }

    // The tunnel container's entry point chose the userspace datapath, and
    // opened /dev/net/tun: the runc device-cgroup problem is absent here.
    let tunnel_log = lab.container_log(0, "tunnel").unwrap();
    assert!(
        tunnel_log.contains("the kernel has no WireGuard")
            && tunnel_log.contains("wireseal-tunnel running"),
        "{tunnel_log}"
    );
    assert!(!tunnel_log.contains("/dev/net/tun"), "{tunnel_log}");

    // The runc device-cgroup problem, reproduced: with /dev/net/tun taken out
    // of the tunnel container's device cgroup (as runc 1.2.0 to 1.2.3 set it
    // up), a tunnel started there by its entry point says why in one line.
    let cgroup = devices_cgroup(&lab, 0, "tunnel");
    std::fs::write(cgroup.join("devices.deny"), "c 10:200 rwm").unwrap();
    let refused = lab.exec(
        0,
        "tunnel",
        &[
            "env",
            "WIRESEAL_INTERFACE=wsdenied0",
            "wireseal-tunnel-entrypoint",
        ],
    );
    std::fs::write(cgroup.join("devices.allow"), "c 10:200 rwm").unwrap();
    let message = format!(
        "{:#}",
        refused.expect_err("the tunnel started without /dev/net/tun")
    );
    let lines: Vec<&str> = message
        .lines()
        .filter(|l| l.contains("/dev/net/tun"))
        .collect();
    assert_eq!(lines.len(), 1, "{message}");
    assert!(
        lines[0].contains("Error: opening /dev/net/tun: Operation not permitted")
            && lines[0].contains("runc 1.2.0 to 1.2.3"),
        "{message}"
    );
    println!(
        "a tunnel container without /dev/net/tun in its device cgroup logs: {}",
        lines[0].trim()
    );

    // Each container runs exactly with the manifest's security context.
    let template = lab.agent_template().unwrap().clone();
    for spec in &template.containers {
        let status = pid1_status(&lab, 0, &spec.name);
        let expected_caps = format!("{:016x}", capability_mask(&spec.security.cap_add));
        for key in ["CapEff", "CapPrm", "CapBnd"] {
            assert_eq!(status[key], expected_caps, "{} {key}", spec.name);
        }
        assert_eq!(status["CapAmb"], "0000000000000000");
        assert_eq!(
            status["NoNewPrivs"],
            u8::from(spec.security.no_new_privileges).to_string()
        );
        // 2: a seccomp filter, the engine's default profile.
        assert_eq!(
            status["Seccomp"],
            if spec.security.seccomp_runtime_default {
                "2"
            } else {
                "0"
            }
        );
        let uid = spec.security.user.unwrap().to_string();
        assert!(
            status["Uid"].starts_with(&format!("{uid}\t")),
            "{:?}",
            status["Uid"]
        );
        let write = lab.exec(0, &spec.name, &["sh", "-c", "touch /written 2>&1"]);
        assert_eq!(
            write.is_err(),
            spec.security.read_only_root,
            "{}: read-only root {}: {write:?}",
            spec.name,
            spec.security.read_only_root
        );
    }
    // The hostPaths: the key in the node's state directory, 0600, in a 0755
    // directory as the kubelet creates it; the socket in the UAPI directory.
    let host = lab.dir.join("node-0/host");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&host.join("var/lib/wireseal")), 0o755);
    assert_eq!(mode(&host.join("var/lib/wireseal/private.key")), 0o600);
    assert!(host.join("var/run/wireguard/wireseal0.sock").exists());

    let prefix = lab.prefix.clone();
    drop(lab);
    assert_eq!(wireseal_lab::leftovers(&prefix), Vec::<String>::new());
}

#[test]
#[ignore = "needs root, network namespaces and docker"]
fn restarting_the_agent_container_loses_no_packet() {
    let mut lab = lab(2, 1, &[]);
    lab.start_wireseal().unwrap();
    lab.wait_encrypted(UP).unwrap();
    let (mut forward, mut backward) = (None, None);
    let mut restarts = Vec::new();
    let report = lab
        .capture_while(|| {
            let pings = [((0, 0), (1, 0)), ((1, 0), (0, 0))].map(|(from, to)| {
                Pinger::start(&lab.network, from, to, Some(600), Duration::from_millis(10)).unwrap()
            });
            thread::sleep(Duration::from_millis(500));
            restarts.push(timed(|| lab.restart_container(0, "agent").unwrap()));
            thread::sleep(Duration::from_millis(800));
            restarts.push(timed(|| lab.restart_container(1, "agent").unwrap()));
            let [f, b] = pings;
            forward = Some(f.wait().unwrap());
            backward = Some(b.wait().unwrap());
        })
        .unwrap();
    let (forward, backward) = (forward.unwrap(), backward.unwrap());
    println!(
        "agent container restarts under a 10 ms ping: node-0 → node-1 {forward:?}, node-1 → node-0 {backward:?}; {report}"
    );
    // The agent exits on SIGTERM at once (the DaemonSet's grace period is
    // for the tunnel): `docker restart` never waited for the SIGKILL.
    let grace = lab.agent_template().unwrap().grace;
    println!("agent container restarts took {restarts:?} (grace period {grace:?})");
    assert!(restarts.iter().all(|t| *t < grace), "{restarts:?}");
    assert_eq!(forward.sent, 600);
    // (node-0 → node-1, node-1 → node-0): nothing lost either way.
    assert_eq!(
        (forward.received, backward.received),
        (forward.sent, backward.sent)
    );
    assert!(
        report.encrypted(),
        "{report}; plaintext: {:?}",
        report.plaintext
    );
    // The restarted agents adopted the running tunnels and report the mesh.
    lab.wait_encrypted(CONVERGE).unwrap();
    for i in 0..2 {
        let body = probe_until_success(&lab, i, ProbeKind::Readiness, CONVERGE);
        assert_eq!(body, "ready: 1/1 peers encrypted\n");
    }
}

/// How long `action` took.
fn timed(action: impl FnOnce()) -> Duration {
    let started = Instant::now();
    action();
    started.elapsed()
}

/// What one disruption of node-0's pod cost a 10 ms ping from a pod on node-0
/// to one on node-1, and what crossed the underlay meanwhile.
struct Disruption {
    event: &'static str,
    sent: u32,
    received: u32,
    /// Frames with the canary in clear on the underlay.
    canary_frames: usize,
    /// Node-to-node packets that were not WireGuard.
    plaintext: usize,
    /// From the disruption until every agent reported the mesh encrypted again.
    recovered: Duration,
}

impl fmt::Display for Disruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<34} lost {:>4}/{:<5} canary frames in clear {:>4}  plaintext packets {:>4}  mesh back after {:>5.1} s",
            self.event,
            self.sent - self.received,
            self.sent,
            self.canary_frames,
            self.plaintext,
            self.recovered.as_secs_f64()
        )
    }
}

fn disrupt(lab: &mut Lab, event: &'static str, action: impl FnOnce(&mut Lab)) -> Disruption {
    let capture = lab.start_capture().unwrap();
    let interval = Duration::from_millis(10);
    let ping = Pinger::start(&lab.network, (0, 0), (1, 0), None, interval).unwrap();
    thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    action(lab);
    lab.wait_encrypted(CONVERGE).unwrap();
    let recovered = started.elapsed();
    // Pings after the recovery show the path works again.
    thread::sleep(Duration::from_secs(1));
    let pinged = ping.finish().unwrap();
    let report = lab.finish_capture(capture).unwrap();
    Disruption {
        event,
        sent: pinged.sent,
        received: pinged.received,
        canary_frames: report.canary_frames,
        plaintext: report.plaintext_count,
        recovered,
    }
}

/// The leak matrix of the userspace datapath's restarts, measured and printed:
/// a restart of the tunnel container, and a pod replacement (both containers
/// stopped together, then a new pod). `agent_args` go to every agent.
///
/// With `strict` (the agent's fail-closed mode), no canary may cross the
/// underlay in clear.
/// Without it, what crosses is recorded, not judged: pod traffic falls back
/// to the CNI's plain routes until the agent has re-applied (deploy/README.md).
#[allow(clippy::print_stdout, reason = "the matrix is what the test reports")]
fn leak_matrix(agent_args: &'static [&'static str], strict: bool) {
    let mut lab = lab(2, 1, agent_args);
    lab.start_wireseal().unwrap();
    lab.wait_encrypted(UP).unwrap();
    let rows = [
        disrupt(&mut lab, "tunnel container restarted", |lab| {
            lab.restart_container(0, "tunnel").unwrap();
        }),
        disrupt(&mut lab, "pod replaced (both containers)", |lab| {
            lab.replace_pod(0).unwrap();
        }),
    ];
    println!("leak matrix, userspace datapath in containers, agent args {agent_args:?}:");
    for row in &rows {
        println!("  {row}");
    }
    for row in &rows {
        assert!(row.received > 0, "{row}");
        if strict {
            assert_eq!(
                row.canary_frames, 0,
                "strict mode sent pod traffic in clear: {row}"
            );
            assert_eq!(
                row.plaintext, 0,
                "strict mode sent pod traffic in clear: {row}"
            );
        }
    }
    // Recovered: every pair connected, only WireGuard on the wire again.
    lab.prove_sealed(&[(0, 1), (1, 0)]).unwrap();
}

#[test]
#[ignore = "needs root, network namespaces and docker"]
fn tunnel_restart_and_pod_replacement_leak_matrix() {
    leak_matrix(&["--cluster-cidrs", "10.244.0.0/16"], false);
}

#[test]
#[ignore = "needs root, network namespaces and docker"]
fn with_strict_mode_tunnel_restart_and_pod_replacement_leak_nothing() {
    leak_matrix(&["--strict", "--cluster-cidrs", "10.244.0.0/16"], true);
}

/// Deleting the DaemonSet stops both containers of every pod; the cleanup
/// DaemonSet's pod then restores each node. On node-1 the tunnel container
/// is left running (pods orphaned by `kubectl delete --cascade=orphan`):
/// the cleanup stops it through its pid, which it sees thanks to `hostPID`.
#[test]
#[ignore = "needs root, network namespaces and docker"]
fn the_cleanup_pod_restores_every_node() {
    let mut lab = lab(2, 1, &[]);
    let before: Vec<String> = (0..2).map(|i| lab.routing_snapshot(i).unwrap()).collect();
    lab.start_wireseal().unwrap();
    lab.wait_encrypted(UP).unwrap();
    assert!(capture(&lab, &[(0, 1)]).encrypted());

    lab.delete_pod(0).unwrap();
    lab.stop_container(1, "agent").unwrap();
    for i in 0..2 {
        let run = lab.run_cleanup_pod(i).unwrap();
        assert_eq!(run.exit_code, 0, "{}", run.log);
        assert_eq!(
            run.done_log.trim(),
            format!("wireseal cleanup done on node-{i}; delete this DaemonSet")
        );
        println!("node-{i} cleanup:\n{}", run.log.trim());
    }
    // node-1's tunnel was stopped by the cleanup and exited cleanly.
    let state = lab.container_state(1, "tunnel").unwrap();
    assert!(
        !state.running && state.exit_code == 0,
        "{state:?}\n{}",
        lab.logs(1)
    );
    for (i, snapshot) in before.iter().enumerate() {
        assert_eq!(
            &lab.routing_snapshot(i).unwrap(),
            snapshot,
            "node-{i} is not as it was before wireseal"
        );
    }
    let plain = capture(&lab, &[(0, 1), (1, 0)]);
    assert!(
        plain.canary_frames > 0,
        "the CNI's plain path carries the traffic again: {plain}"
    );
    assert_eq!(traffic::all_pairs(&lab.network, 1).unwrap(), vec![]);
}

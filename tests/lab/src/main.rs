//! `wireseal-lab`: a local wireseal cluster in network namespaces.
#![allow(clippy::print_stdout, reason = "the demo's report is its output")]

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use wireseal_lab::topology::Stack;
use wireseal_lab::{Lab, LabConfig, Runtime, traffic};

/// A local multi-node wireseal cluster on this machine (root, network namespaces).
#[derive(Debug, Parser)]
#[command(name = "wireseal-lab", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build a cluster, bring wireseal up, prove encrypted pod traffic, measure it, tear down.
    Demo {
        /// Nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Pods per node.
        #[arg(long, default_value_t = 2)]
        pods: usize,
        /// Seconds of the throughput check.
        #[arg(long, default_value_t = 3)]
        seconds: u32,
        /// Run wireseal as the DaemonSet's pod (its containers, from the image
        /// built by deploy/image/build-offline.sh from these binaries, with the
        /// manifest's settings) instead of as processes. Needs docker.
        #[arg(long)]
        containers: bool,
        /// Address families of the underlay, Nodes and pods (processes only).
        #[arg(long, value_enum, default_value_t = StackArg::V4)]
        stack: StackArg,
    },
    /// Count the Node writes the agents make at steady state (the mesh up,
    /// pod traffic in bursts further apart than a session lives), as writes
    /// per node per hour.
    Writes {
        /// Nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Minutes to count.
        #[arg(long, default_value_t = 20)]
        minutes: u64,
        /// Seconds between pod traffic bursts.
        #[arg(long, default_value_t = 300)]
        burst_every: u64,
        /// Every agent's persistent keepalive, seconds (0: none).
        #[arg(long, default_value_t = 0)]
        keepalive: u16,
    },
    /// Rotate one node's key (`wireseal keys rotate`) again and again while a
    /// pod on another node pings a pod on it every 10 ms; print lost replies
    /// and the longest gap per rotation, and the runs as JSON.
    Rotation {
        /// Rotations.
        #[arg(long, default_value_t = 5)]
        rounds: u32,
        /// Seconds between announcing the next key and switching to it.
        #[arg(long, default_value_t = 6)]
        lead: u64,
        /// Write the runs as JSON here.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// Build the lab's image (deploy/image/build-offline.sh, from the binaries
    /// beside this one) unless it is up to date, as `demo --containers` and
    /// the tests do before they start.
    Image,
    /// Delete namespaces and remove containers left behind by an interrupted lab.
    Cleanup,
}

/// `--stack`.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum StackArg {
    /// IPv4 only.
    V4,
    /// IPv4 and IPv6 (IPv4 first).
    Dual,
    /// IPv6 only.
    V6,
}

impl From<StackArg> for Stack {
    fn from(arg: StackArg) -> Self {
        match arg {
            StackArg::V4 => Self::V4,
            StackArg::Dual => Self::Dual,
            StackArg::V6 => Self::V6,
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WIRESEAL_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo {
            nodes,
            pods,
            seconds,
            containers,
            stack,
        } => demo(
            LabConfig {
                nodes,
                pods,
                runtime: if containers {
                    Runtime::Containers
                } else {
                    Runtime::Processes
                },
                stack: stack.into(),
                ..LabConfig::default()
            },
            seconds,
        ),
        Command::Writes {
            nodes,
            minutes,
            burst_every,
            keepalive,
        } => writes(nodes, minutes, burst_every, keepalive),
        Command::Rotation { rounds, lead, json } => rotation(rounds, lead, json.as_deref()),
        Command::Image => image(),
        Command::Cleanup => wireseal_lab::cleanup_leftovers().map(|(namespaces, containers)| {
            println!("removed {namespaces} namespace(s) and {containers} container(s)");
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            println!("\nFAILED: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn writes(nodes: usize, minutes: u64, burst_every: u64, keepalive: u16) -> Result<()> {
    install_interrupt_cleanup();
    let mut lab = Lab::up(LabConfig {
        nodes,
        pods: 1,
        ..LabConfig::default()
    })?;
    lab.set_agent_args(&["--persistent-keepalive", &keepalive.to_string()]);
    lab.start_wireseal()?;
    lab.wait_encrypted(Duration::from_secs(60))?;
    let keepalives = lab
        .network
        .nodes
        .iter()
        .map(|node| (node.name.clone(), keepalive))
        .collect();
    println!(
        "counting Node writes for {minutes} min, {nodes} nodes, keepalive {keepalive} s, pod traffic every {burst_every} s"
    );
    let report = lab.measure_steady_writes(
        Duration::from_secs(minutes * 60),
        Duration::from_secs(burst_every),
        keepalives,
        |_| {},
    )?;
    print!("{report}");
    Ok(())
}

fn rotation(rounds: u32, lead: u64, json: Option<&std::path::Path>) -> Result<()> {
    install_interrupt_cleanup();
    let mut lab = Lab::up(LabConfig {
        nodes: 2,
        pods: 1,
        ..LabConfig::default()
    })?;
    lab.set_agent_args(&["--key-rotation-lead", &lead.to_string()]);
    lab.start_wireseal()?;
    lab.wait_encrypted(Duration::from_secs(60))?;
    println!(
        "rotating node-1's key {rounds} times under a 10 ms ping from node-0's pod (lead {lead} s)"
    );
    let baseline = wireseal_lab::rotation::baseline_gap(&lab, 0, 1, Duration::from_secs(10))?;
    println!("   without a rotation, 10 s: longest gap {baseline:.1} ms");
    let mut runs = Vec::new();
    for round in 1..=rounds {
        let run = wireseal_lab::rotation::rotate_under_ping(
            &mut lab,
            0,
            1,
            Duration::from_secs(lead * 3 + 30),
            Duration::from_secs(2),
        )?;
        println!("   {round}: {run}");
        runs.push(run);
        lab.wait_encrypted(Duration::from_secs(60))?;
    }
    let lost: u32 = runs.iter().map(|r| r.lost).sum();
    let worst = runs.iter().map(|r| r.max_gap_ms).fold(0.0, f64::max);
    println!("   total: {lost} replies lost in {rounds} rotations; longest gap {worst:.1} ms");
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&runs).context("encoding the runs")?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn image() -> Result<()> {
    let wireseal = wireseal_lab::process::locate("wireseal")?;
    let bin_dir = wireseal.parent().context("wireseal has no directory")?;
    let tag = wireseal_lab::image::ensure(bin_dir)?;
    println!("{tag}");
    Ok(())
}

fn demo(config: LabConfig, seconds: u32) -> Result<()> {
    install_interrupt_cleanup();
    let started = Instant::now();
    println!(
        "== wireseal lab: {} nodes × {} pods, userspace datapath, fake apiserver",
        config.nodes, config.pods
    );
    let mut lab = Lab::up(config)?;
    let networks = match config.stack {
        Stack::V4 => "underlay 198.18.0.0/24, pod CIDRs 10.244.<node>.0/24",
        Stack::Dual => {
            "underlay 198.18.0.0/24 and fd00:198:18::/64, pod CIDRs 10.244.<node>.0/24 and fd00:10:244:<node>::/64"
        }
        Stack::V6 => "underlay fd00:198:18::/64, pod CIDRs fd00:10:244:<node>::/64",
    };
    println!("   network up: {networks}, the CNI's host-gw routes installed");

    println!("\n== 1. without wireseal: the CNI's plain routes");
    let failed = traffic::all_pairs(&lab.network, 1)?;
    println!("   all-pairs pod ping: {} failures", failed.len());
    let plain = capture_canary(&lab)?;
    println!("   on the wire: {plain}");
    println!(
        "   canary visible in clear: {}",
        if plain.canary_frames > 0 {
            "yes (as expected without encryption)"
        } else {
            "no"
        }
    );

    if config.runtime == Runtime::Containers {
        println!(
            "\n== 2. wireseal up: the DaemonSet's pod per node (containers agent + tunnel, image {})",
            lab.image()?
        );
    } else {
        println!("\n== 2. wireseal up: tunnel + agent per node");
    }
    let up = Instant::now();
    lab.start_wireseal()?;
    lab.wait_encrypted(Duration::from_secs(60))?;
    println!(
        "   every node peered with every other, handshakes done, in {:.1} s",
        up.elapsed().as_secs_f64()
    );
    for i in 0..config.nodes {
        println!("\n   $ wireseal status   # on node-{i}");
        for line in lab.status_text(i)?.lines() {
            println!("   {line}");
        }
    }
    lab.wait_conditions_true(Duration::from_secs(30))?;
    println!(
        "\n   $ kubectl get nodes -o custom-columns='NAME:.metadata.name,ENCRYPTED:.status.conditions[?(@.type==\"WiresealEncrypted\")].status,WHY:.status.conditions[?(@.type==\"WiresealEncrypted\")].message'"
    );
    println!("   {:<12} {:<10} WHY", "NAME", "ENCRYPTED");
    for (i, node) in lab.network.nodes.iter().enumerate() {
        let (status, _, message) = lab.condition(i).unwrap_or_default();
        println!("   {:<12} {status:<10} {message}", node.name);
    }

    println!("\n== 3. pod-to-pod connectivity across nodes");
    let failed = traffic::all_pairs(&lab.network, 2)?;
    let pairs = config.nodes
        * config.pods
        * (config.nodes - 1)
        * config.pods
        * config.stack.families().len();
    println!("   {}/{pairs} pod pairs reachable", pairs - failed.len());
    anyhow::ensure!(failed.is_empty(), "pairs without connectivity: {failed:?}");

    println!("\n== 4. encryption on the wire (capture on every underlay port)");
    let sealed = capture_canary(&lab)?;
    println!("   {sealed}");
    anyhow::ensure!(
        plain.canary_frames > 0,
        "the check cannot fail: the canary was not seen even without wireseal"
    );
    anyhow::ensure!(
        sealed.encrypted(),
        "traffic not fully encrypted: {sealed}; plaintext: {:?}",
        sealed.plaintext
    );
    println!("   only WireGuard between nodes, canary never in clear: ENCRYPTED");

    println!("\n== 5. throughput, pod on node-0 → pod on node-1, {seconds} s TCP");
    let mbits = traffic::iperf(&lab.network, (0, 0), (1, 0), seconds)?;
    let build = match lab.tunnel_profile().as_deref() {
        Some("release") => "an optimised (release) build of wireseal-tunnel".to_owned(),
        Some("debug") => "an unoptimised debug build of wireseal-tunnel: a release build \
                          (cargo build --release) moves several times more, see bench/"
            .to_owned(),
        Some(other) => format!("wireseal-tunnel built with the {other} profile"),
        None => "a wireseal-tunnel from outside a cargo target folder".to_owned(),
    };
    println!("   {mbits:.0} Mbit/s through the userspace datapath ({build})");

    println!("\n== summary");
    println!(
        "   nodes {}  pods {}  pairs {pairs}  connectivity ok",
        config.nodes,
        config.nodes * config.pods
    );
    println!(
        "   without wireseal: canary in clear in {} frames",
        plain.canary_frames
    );
    println!(
        "   with wireseal:    {} WireGuard data messages, 0 plaintext packets, canary in 0 frames",
        sealed.wireguard[3]
    );
    println!(
        "   throughput {mbits:.0} Mbit/s ({} build of the tunnel); whole demo {:.1} s",
        lab.tunnel_profile().as_deref().unwrap_or("unknown"),
        started.elapsed().as_secs_f64()
    );
    let prefix = lab.prefix.clone();
    drop(lab);
    let left = wireseal_lab::leftovers(&prefix);
    anyhow::ensure!(left.is_empty(), "teardown left {left:?}");
    println!("   torn down: no namespace, link, process or container left");
    Ok(())
}

/// Sends canary pings from every node's first pod to the next node's while
/// capturing on the underlay.
fn capture_canary(lab: &Lab) -> Result<wireseal_lab::capture::CaptureReport> {
    let nodes = lab.network.nodes.len();
    let ring: Vec<(usize, usize)> = (0..nodes).map(|i| (i, (i + 1) % nodes)).collect();
    lab.capture_pings(&ring).context("capturing canary pings")
}

/// Ctrl-C or SIGTERM: stop this run's processes and delete its namespaces,
/// then exit. A real handler (not a blocked signal mask, which children would
/// inherit) so tcpdump and ping still stop on SIGINT.
fn install_interrupt_cleanup() {
    std::thread::spawn(|| {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async {
            let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            println!("\ninterrupted: tearing the lab down");
            wireseal_lab::emergency_teardown();
            std::process::exit(130);
        });
    });
}

//! `wireseal-lab`: a local wireseal cluster in network namespaces.
#![allow(clippy::print_stdout, reason = "the demo's report is its output")]

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use wireseal_lab::capture::Capture;
use wireseal_lab::topology::APISERVER_IP;
use wireseal_lab::{Lab, LabConfig, WIREGUARD_PORT, traffic};

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
    },
    /// Delete namespaces left behind by an interrupted lab.
    Cleanup,
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
        } => demo(LabConfig { nodes, pods }, seconds),
        Command::Cleanup => {
            wireseal_lab::cleanup_leftovers().map(|n| println!("removed {n} namespace(s)"))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            println!("\nFAILED: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn demo(config: LabConfig, seconds: u32) -> Result<()> {
    install_interrupt_cleanup();
    let started = Instant::now();
    println!(
        "== wireseal lab: {} nodes × {} pods, userspace datapath, fake apiserver",
        config.nodes, config.pods
    );
    let mut lab = Lab::up(config)?;
    println!(
        "   network up: underlay 198.18.0.0/24, pod CIDRs 10.244.<node>.0/24, the CNI's host-gw routes installed"
    );

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

    println!("\n== 2. wireseal up: tunnel + agent per node");
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

    println!("\n== 3. pod-to-pod connectivity across nodes");
    let failed = traffic::all_pairs(&lab.network, 2)?;
    let pairs = config.nodes * config.pods * (config.nodes - 1) * config.pods;
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
    println!("   {mbits:.0} Mbit/s through the userspace datapath");

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
        "   throughput {mbits:.0} Mbit/s; whole demo {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let prefix = lab.prefix.clone();
    drop(lab);
    let left = wireseal_lab::leftovers(&prefix);
    anyhow::ensure!(left.is_empty(), "teardown left {left:?}");
    println!("   torn down: no namespace, link or process left");
    Ok(())
}

/// Sends canary pings from every node's first pod to the next node's while
/// capturing on the underlay.
fn capture_canary(lab: &Lab) -> Result<wireseal_lab::capture::CaptureReport> {
    let file = lab.dir.join(format!(
        "capture-{}.pcap",
        Instant::now().elapsed().as_nanos()
    ));
    let capture = Capture::start(&lab.network.underlay, "any", &file)?;
    let nodes = lab.network.nodes.len();
    for i in 0..nodes {
        traffic::ping(
            &lab.network,
            (i, 0),
            ((i + 1) % nodes, 0),
            3,
            Duration::from_millis(20),
        )?;
    }
    capture
        .finish(APISERVER_IP, WIREGUARD_PORT)
        .context("analysing the capture")
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

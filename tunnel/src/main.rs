//! `wireseal-tunnel`: the userspace WireGuard datapath as its own foreground process.
//!
//! Configuration (key, port, fwmark, peers) arrives only through the UAPI socket, like
//! wireguard-go, so the agent can restart without touching the tunnel and a restart of
//! the tunnel itself only costs the agent one re-apply.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use clap::{Parser, ValueEnum};
use nix::sys::signal::{SigSet, Signal};
use tracing_subscriber::EnvFilter;
use wireseal_tunnel::device::Device;
use wireseal_tunnel::pipeline;
use wireseal_tunnel::tun::Tun;
use wireseal_tunnel::uapi::{self, UapiServer};
use wireseal_tunnel::udp::UdpSlot;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

/// wireseal's userspace WireGuard datapath (configure it with `wg`).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// TUN interface to create or attach to.
    #[arg(long, env = "WIRESEAL_INTERFACE")]
    interface: String,
    /// Directory of the UAPI socket (`wg` looks in /var/run/wireguard).
    #[arg(long, env = "WIRESEAL_UAPI_DIR", default_value = "/var/run/wireguard")]
    uapi_dir: PathBuf,
    /// Datapath threads per direction (TUN→UDP and UDP→TUN). One per direction fills
    /// a 2-core node; more only helps with more cores.
    #[arg(long, env = "WIRESEAL_THREADS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    threads: u16,
    /// Ask the kernel for TSO/checksum offload on the TUN (virtio-net header): far
    /// fewer TUN reads for TCP. Off: one packet per read, as in plain boringtun.
    #[arg(long, env = "WIRESEAL_TUN_OFFLOAD", default_value_t = true, action = clap::ArgAction::Set)]
    tun_offload: bool,
    /// Log format.
    #[arg(long, env = "WIRESEAL_LOG_FORMAT", value_enum, default_value = "human")]
    log_format: LogFormat,
    /// Do not run: ask the running tunnel of --interface whether every datapath
    /// thread makes progress, and exit 0 if so (the container's liveness probe).
    #[arg(long)]
    check: bool,
}

fn init_logging(format: LogFormat) {
    // boringtun warns on every retried handshake initiation, per peer: normal
    // WireGuard behaviour towards a peer that is down, and 55,000 lines a minute
    // with 5,000 such peers. Its errors still show.
    let filter = EnvFilter::try_from_env("WIRESEAL_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,boringtun=error"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> Result<()> {
    // Before anything holds a key: no core dump, no ptrace by the same user.
    wireseal_keymgr::harden_process().context("making the process non-dumpable")?;
    let args = Args::parse();
    if args.check {
        return uapi::check_health(&args.uapi_dir, &args.interface, uapi::CHECK_DEADLINE)
            .map_err(|reason| anyhow::anyhow!("{reason}"));
    }
    init_logging(args.log_format);

    // Block the stop signals before any thread exists, so every thread inherits the
    // mask and only the main thread's sigwait sees them.
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGTERM);
    stop.add(Signal::SIGINT);
    stop.thread_block().context("blocking SIGTERM/SIGINT")?;

    let tun = Arc::new(Tun::open(&args.interface, args.tun_offload)?);
    tun.set_up()
        .with_context(|| format!("setting {} up", args.interface))?;
    let udp = Arc::new(UdpSlot::default());
    let device = Arc::new(Device::new(Box::new(Arc::clone(&udp))));
    device
        .bind_initial(0)
        .context("binding the initial UDP socket")?;
    pipeline::spawn(&device, &udp, &tun, usize::from(args.threads))
        .context("starting datapath threads")?;

    // The socket comes last: once `wg` can reach it, the datapath is running.
    let server = UapiServer::bind(&args.uapi_dir, &args.interface)
        .with_context(|| format!("creating the UAPI socket in {}", args.uapi_dir.display()))?;
    server
        .spawn(Arc::clone(&device))
        .context("starting the UAPI thread")?;
    tracing::info!(
        interface = %args.interface,
        uapi = %server.path().display(),
        threads = args.threads,
        tso = tun.tso(),
        "wireseal-tunnel running"
    );

    let signal = stop.wait().context("waiting for a stop signal")?;
    tracing::info!(signal = ?signal, "stopping");
    // Dropping the server removes the socket file; the TUN goes with the process's fd.
    drop(server);
    match pipeline::fatal_error() {
        Some(reason) => anyhow::bail!("datapath failed: {reason}"),
        None => Ok(()),
    }
}

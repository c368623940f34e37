//! `wireseal`: the per-node agent and its command line.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use tracing_subscriber::EnvFilter;

use wireseal::cli::{Cli, Command, LogFormat};
use wireseal::config::Config;
use wireseal::{agent, cleanup, keys, status_cmd};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, &cli.log);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Keys(args) => keys::run(&args),
        Command::Status(args) => status_cmd::run(&args),
        Command::Cleanup(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?
            .block_on(cleanup::run(&args)),
        Command::Agent(args) => {
            let config = Config::from_args(&args, std::env::var("NODE_NAME").ok())?;
            tracing::info!(node = %config.node_name, interface = %config.interface, "starting");
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(agent::run(config))
        }
    }
}

/// Logs go to stderr so that command output on stdout stays machine-readable.
fn init_logging(format: LogFormat, filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

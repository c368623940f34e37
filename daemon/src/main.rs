//! `wireseal`: the per-node agent and its command line.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use tracing_subscriber::EnvFilter;

use wireseal::cli::{Cli, Command, LogFormat};
use wireseal::config::Config;
use wireseal::{agent, cleanup, keys, status_cmd, verify};

fn main() -> ExitCode {
    // Before any key is read: no core dump, no ptrace by the same user.
    if let Err(err) = wireseal_keymgr::harden_process() {
        #[allow(clippy::print_stderr, reason = "no logger yet")]
        {
            eprintln!("error: making the process non-dumpable: {err}");
        }
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    init_logging(cli.log_format, &cli.log);
    let agent = matches!(cli.command, Command::Agent(_));
    match run(cli.command) {
        Ok(code) => code,
        // The agent's end is a log line like the rest of its logs; a
        // command's is a plain line with the cause chain, for a person.
        Err(err) if agent => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
        Err(err) => {
            #[allow(clippy::print_stderr, reason = "a command's error is its output")]
            {
                // An error can quote a value read from a Node.
                eprintln!(
                    "error: {}",
                    status_cmd::printable_lines(&format!("{err:#}"))
                );
            }
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<ExitCode> {
    let done = |()| ExitCode::SUCCESS;
    match command {
        Command::Verify(args) => verify::run(&args),
        Command::Status(args) => status_cmd::run(&args),
        Command::Keys(args) => keys::run(&args).map(done),
        Command::Cleanup(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?
            .block_on(cleanup::run(&args))
            .map(done),
        Command::Agent(args) => {
            let config = Config::from_args(&args, std::env::var("NODE_NAME").ok())?;
            tracing::info!(node = %config.node_name, interface = %config.interface, "starting");
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(agent::run(config))
                .map(done)
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

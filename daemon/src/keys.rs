//! `wireseal keys`: create and inspect this node's key without starting the agent.
#![allow(
    clippy::print_stdout,
    reason = "printing the public key or path is this command's output"
)]

use anyhow::{Context, Result};
use wireseal_keymgr::KeyStore;

use crate::cli::{KeysArgs, KeysCommand};

/// Runs a `wireseal keys` subcommand.
///
/// # Errors
/// When the key cannot be created or read.
pub fn run(args: &KeysArgs) -> Result<()> {
    let store = KeyStore::new(&args.state.state_dir);
    match args.command {
        KeysCommand::Generate { next: false } => {
            let (key, _) = store.load_or_create().context("creating the node key")?;
            println!("{}", key.public_key());
        }
        KeysCommand::Rotate => {
            if store.load().context("reading the current key")?.is_none() {
                anyhow::bail!(
                    "no key at {}: nothing to rotate (the agent creates it on its first start)",
                    store.path().display()
                );
            }
            let (key, _) = store.create_next().context("creating the next key")?;
            println!("{}", key.public_key());
        }
        KeysCommand::Generate { next: true } => {
            let (key, _) = store.create_next().context("creating the next key")?;
            println!("{}", key.public_key());
        }
        KeysCommand::Public { next } => {
            let key = if next {
                store.load_next()
            } else {
                store.load()
            }
            .context("reading the key")?
            .with_context(|| {
                format!(
                    "no key at {}",
                    if next {
                        store.next_path()
                    } else {
                        store.path()
                    }
                    .display()
                )
            })?;
            println!("{}", key.public_key());
        }
        KeysCommand::ShowPath { next } => {
            println!(
                "{}",
                if next {
                    store.next_path()
                } else {
                    store.path()
                }
                .display()
            );
        }
    }
    Ok(())
}

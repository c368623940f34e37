//! Strict mode before the first pass. After a reboot the kernel holds none of
//! wireseal's routes and rules, and pods may start before the agent has read
//! a single Node: their traffic to other nodes would leave in clear until the
//! first pass. So in strict mode the agent's first act, before it even
//! reaches the API server, is to put back the catch-alls of its last pass
//! (kept in the state directory) with their rules: from then on what no
//! tunnel takes is dropped. On a node that never ran the agent it blocks the
//! cluster CIDRs (`--cluster-cidrs`) whole, this node's own pods included,
//! until the first pass lets them through (a new node carries the not-ready
//! taint, so no pod should be there yet).
//!
//! Only additions: what is in place already stays, and the first pass plans
//! from what it finds, as always.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing::{info, warn};
use wireseal_core::state::Family;
use wireseal_core::{CatchAll, CatchAllKind, RuleSpec, Step};

use crate::config::Config;
use crate::datapath::{DatapathError, Routing};

/// The file in the state directory that keeps the last pass's catch-alls.
pub const FILE: &str = "catch-alls.json";

/// Why the kept catch-alls cannot be used.
#[derive(Debug, Error)]
pub enum LockdownError {
    /// The file exists but cannot be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not what the agent writes.
    #[error("{} is not a list of catch-alls: {reason}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The file cannot be written.
    #[error("writing {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The file's contents: each catch-all as `blackhole CIDR` or `throw CIDR`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Kept {
    catch_alls: Vec<String>,
}

/// Reads the catch-alls kept by the last pass; `Ok(None)` when there are none.
///
/// # Errors
/// When the file exists but is unreadable or malformed.
pub fn load(state_dir: &Path) -> Result<Option<BTreeMap<IpNetwork, CatchAll>>, LockdownError> {
    let path = state_dir.join(FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(LockdownError::Read { path, source }),
    };
    let parse = |reason: String| LockdownError::Parse {
        path: path.clone(),
        reason,
    };
    let kept: Kept = serde_json::from_str(&text).map_err(|err| parse(err.to_string()))?;
    let mut out = BTreeMap::new();
    for line in &kept.catch_alls {
        let (kind, dst) = line
            .split_once(' ')
            .ok_or_else(|| parse(format!("{line:?} is not `kind cidr`")))?;
        let kind = match kind {
            "blackhole" => CatchAllKind::Blackhole,
            "throw" => CatchAllKind::Throw,
            other => return Err(parse(format!("unknown kind {other:?}"))),
        };
        let dst: IpNetwork = dst
            .parse()
            .map_err(|_| parse(format!("{dst:?} is not a CIDR")))?;
        out.insert(dst, CatchAll { dst, kind });
    }
    Ok(Some(out))
}

/// Keeps `catch_alls` for the next start, atomically (a crash leaves the
/// old file or the new one, never half of one).
///
/// # Errors
/// When the file cannot be written.
pub fn save(
    state_dir: &Path,
    catch_alls: &BTreeMap<IpNetwork, CatchAll>,
) -> Result<(), LockdownError> {
    let path = state_dir.join(FILE);
    let kept = Kept {
        catch_alls: catch_alls.values().map(ToString::to_string).collect(),
    };
    let text = serde_json::to_string_pretty(&kept).unwrap_or_default();
    let temporary = state_dir.join(format!(".{FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        std::fs::write(&temporary, text.as_bytes())?;
        std::fs::File::open(&temporary)?.sync_all()?;
        std::fs::rename(&temporary, &path)
    };
    write().map_err(|source| LockdownError::Write {
        path: path.clone(),
        source,
    })
}

/// What to put in place at start: the kept catch-alls, or without them the
/// cluster CIDRs blocked whole; the strict exclusions let through either way.
/// Empty when neither is known (no cluster CIDRs and nothing kept).
#[must_use]
pub fn initial(
    config: &Config,
    kept: Option<BTreeMap<IpNetwork, CatchAll>>,
) -> BTreeMap<IpNetwork, CatchAll> {
    let mut out = kept.unwrap_or_else(|| {
        config
            .cluster_cidrs
            .iter()
            .map(|dst| {
                (
                    *dst,
                    CatchAll {
                        dst: *dst,
                        kind: CatchAllKind::Blackhole,
                    },
                )
            })
            .collect()
    });
    if let Some(strict) = &config.strict {
        for dst in &strict.exclude {
            out.insert(
                *dst,
                CatchAll {
                    dst: *dst,
                    kind: CatchAllKind::Throw,
                },
            );
        }
    }
    out
}

/// Adds `catch_alls` and one catch-all rule per family they cover. Nothing
/// is removed.
///
/// # Errors
/// The first step the kernel refuses (with what went in before it).
pub async fn apply<R: Routing>(
    routing: &mut R,
    config: &Config,
    catch_alls: &BTreeMap<IpNetwork, CatchAll>,
) -> Result<usize, DatapathError> {
    let families: BTreeSet<Family> = catch_alls.keys().map(Family::of).collect();
    let mut steps: Vec<Step> = catch_alls
        .values()
        .copied()
        .map(Step::AddCatchAll)
        .collect();
    steps.extend(families.into_iter().map(|family| {
        Step::AddRule(RuleSpec {
            family,
            priority: config.rule_priority.saturating_add(1),
            table: config.catch_all_table,
            fwmark: config.fwmark,
        })
    }));
    for step in &steps {
        routing.apply(step).await?;
    }
    Ok(steps.len())
}

/// Strict mode's first act: puts the catch-alls in place (see the module's
/// documentation). A failure is logged: the first pass tries again.
pub async fn lock_down<R: Routing>(routing: &mut R, config: &Config) {
    let kept = match load(&config.state_dir) {
        Ok(kept) => kept,
        Err(err) => {
            warn!(error = %err, "ignoring the kept catch-alls; blocking the cluster CIDRs whole");
            None
        }
    };
    let from_file = kept.is_some();
    let catch_alls = initial(config, kept);
    if catch_alls.is_empty() {
        warn!(
            "strict mode without --cluster-cidrs and no catch-alls kept from an earlier pass: \
             pod traffic is not blocked until the first pass"
        );
        return;
    }
    match apply(routing, config, &catch_alls).await {
        Ok(steps) => info!(
            catch_alls = catch_alls.len(),
            steps, from_file, "strict mode: catch-alls in place before the first pass"
        ),
        Err(err) => {
            warn!(error = %err, "putting the catch-alls in place failed; the first pass tries again")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(kind: CatchAllKind, dst: &str) -> (IpNetwork, CatchAll) {
        let dst: IpNetwork = dst.parse().unwrap();
        (dst, CatchAll { dst, kind })
    }

    #[test]
    fn kept_catch_alls_round_trip_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        let kept: BTreeMap<IpNetwork, CatchAll> = [
            all(CatchAllKind::Blackhole, "10.244.0.0/16"),
            all(CatchAllKind::Throw, "10.244.3.0/24"),
            all(CatchAllKind::Blackhole, "fd00:244::/48"),
        ]
        .into();
        save(dir.path(), &kept).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(kept));
        std::fs::write(
            dir.path().join(FILE),
            r#"{"catchAlls": ["route 10.0.0.0/8"]}"#,
        )
        .unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("catch-alls.json is not a list of catch-alls: unknown kind \"route\""),
            "{err}"
        );
    }
}

//! `wireseal cleanup`: removes what wireseal put on this node — its policy
//! rules first, the tunnel table's then the catch-all table's (so traffic
//! falls back to the CNI's routes at once, strict mode's blackholes
//! included), then its routes and catch-alls, then, after the optional drain (`--drain`: peers not yet cleaned up
//! still encrypt to this node, and the datapath keeps delivering that), the
//! datapath (the userspace process, whose TUN link goes with it, or the
//! kernel link). The host source addresses on the link go with the
//! link; the same addresses on the CNI's devices are the CNI's and stay.
//! Last the leak counter's `nftables` table goes (the agent leaves it in
//! place when it stops, so leaks while it is down are counted).
//! The private key stays: a reinstall keeps the node's identity.
#![allow(
    clippy::print_stdout,
    reason = "reporting what was removed is this command's output"
)]

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{Signal, kill};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::unistd::Pid;
use wireseal_netlink::Netlink;
use wireseal_netlink::nftables::{LEAK_TABLE, LeakCounter};
use wireseal_netlink::xfrm::{Xfrm, XfrmError};

use crate::cli::CleanupArgs;
use crate::datapath::ipsec::IF_ID;

/// Runs the cleanup.
///
/// # Errors
/// When netlink cannot be opened or a removal fails.
pub async fn run(args: &CleanupArgs) -> Result<()> {
    let netlink = Netlink::connect().context("opening rtnetlink")?;
    let catch_all_priority = args.rule_priority.saturating_add(1);
    for (priority, table) in [
        (args.rule_priority, args.route_table),
        (catch_all_priority, args.catch_all_table),
    ] {
        let rules = netlink
            .rules(priority, table)
            .await
            .context("reading wireseal's rules")?;
        for rule in &rules.ours {
            netlink
                .delete_rule(rule)
                .await
                .with_context(|| format!("removing rule {rule}"))?;
            println!("removed rule: {rule}");
        }
    }
    let routes = netlink
        .routes(args.route_table)
        .await
        .context("reading wireseal's routes")?;
    remove_all(&netlink, routes.keys(), args.route_table, "route").await?;
    let catch_alls = netlink
        .catch_alls(args.catch_all_table)
        .await
        .context("reading wireseal's catch-alls")?;
    remove_all(
        &netlink,
        catch_alls.keys(),
        args.catch_all_table,
        "catch-all",
    )
    .await?;
    let socket = args.uapi_dir.join(format!("{}.sock", args.interface));
    let link = netlink
        .link(&args.interface)
        .await
        .context("reading the tunnel link")?;
    if args.drain > 0 && (link.is_some() || socket.exists()) {
        println!(
            "draining: the datapath stays up {} s for peers that still encrypt to this node",
            args.drain
        );
        tokio::time::sleep(Duration::from_secs(args.drain)).await;
    }
    if let Some(pid) = stop_userspace(&socket)? {
        println!("stopped the userspace datapath (pid {pid})");
    }
    if netlink
        .link(&args.interface)
        .await
        .context("reading the tunnel link")?
        .is_some()
    {
        netlink
            .delete_link(&args.interface)
            .await
            .with_context(|| format!("removing link {}", args.interface))?;
        println!("removed link {}", args.interface);
    }
    remove_ipsec().await?;
    remove_leak_counter(&args.interface).await?;
    println!("wireseal is off this node; the CNI's own routes carry pod traffic again");
    Ok(())
}

/// Deletes the leak counter's table; a kernel without `nftables` has none.
/// IPsec mode's policies and SAs: those on wireseal's XFRM interface id,
/// whoever else uses IPsec on the node. A kernel without XFRM's netlink
/// has none.
async fn remove_ipsec() -> Result<()> {
    let xfrm = match Xfrm::connect() {
        Ok(xfrm) => xfrm,
        Err(XfrmError::Socket(_)) => return Ok(()),
        Err(err) => return Err(err).context("opening the XFRM netlink socket"),
    };
    let policies = xfrm.policies().await.context("reading the XFRM policies")?;
    let mut removed = 0;
    for policy in policies.iter().filter(|p| p.if_id == Some(IF_ID)) {
        if let Some(dir) = policy.dir {
            xfrm.delete_policy(policy.src, policy.dst, dir, IF_ID)
                .await
                .context("removing an IPsec policy")?;
            removed += 1;
        }
    }
    if removed > 0 {
        println!("removed {removed} IPsec policies");
    }
    let sas = xfrm.sas().await.context("reading the IPsec SAs")?;
    let ours: Vec<_> = sas.iter().filter(|sa| sa.if_id == Some(IF_ID)).collect();
    for sa in &ours {
        xfrm.delete_sa(sa.src, sa.dst, sa.spi)
            .await
            .context("removing an IPsec SA")?;
    }
    if !ours.is_empty() {
        println!("removed {} IPsec SAs", ours.len());
    }
    Ok(())
}

async fn remove_leak_counter(interface: &str) -> Result<()> {
    let removed = match LeakCounter::open(interface) {
        Ok(mut counter) => counter.remove().await,
        Err(err) => Err(err),
    };
    match removed {
        Ok(true) => println!("removed nftables table inet {LEAK_TABLE} (the leak counter)"),
        Ok(false) => {}
        Err(err) if err.unsupported() => {}
        Err(err) => {
            return Err(err).context("removing the leak counter's nftables table inet wireseal");
        }
    }
    Ok(())
}

/// Removes the routes to `dsts` from `table`, and says how many went.
async fn remove_all(
    netlink: &Netlink,
    dsts: impl ExactSizeIterator<Item = &ipnetwork::IpNetwork>,
    table: u32,
    what: &str,
) -> Result<()> {
    let count = dsts.len();
    for dst in dsts {
        netlink
            .delete_route(*dst, table)
            .await
            .with_context(|| format!("removing {what} {dst}"))?;
    }
    if count > 0 {
        println!("removed {count} {what}(s) from table {table}");
    }
    Ok(())
}

/// Asks the process behind the UAPI socket to stop: its pid comes from the
/// socket's peer credentials, so no pid file can be stale.
fn stop_userspace(socket: &Path) -> Result<Option<i32>> {
    let Ok(stream) = UnixStream::connect(socket) else {
        return Ok(None);
    };
    let credentials = getsockopt(&stream, PeerCredentials)
        .with_context(|| format!("reading the peer of {}", socket.display()))?;
    drop(stream);
    let pid = signalable_pid(credentials.pid(), socket)?;
    kill(Pid::from_raw(pid), Signal::SIGTERM).with_context(|| format!("stopping pid {pid}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while socket.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if socket.exists() {
        kill(Pid::from_raw(pid), Signal::SIGKILL).with_context(|| format!("killing pid {pid}"))?;
        let _ = std::fs::remove_file(socket);
    }
    Ok(Some(pid))
}

/// The peer's pid as the kernel reports it to this process. A process outside
/// this PID namespace (the tunnel container, seen from a pod without `hostPID`)
/// is reported as pid 0, and `kill(0, …)` would signal this command's own
/// process group instead: refuse rather than stop the wrong process.
fn signalable_pid(pid: i32, socket: &Path) -> Result<i32> {
    if pid > 0 {
        return Ok(pid);
    }
    anyhow::bail!(
        "a process answers on {} but is outside this PID namespace (peer pid {pid}); \
         stop it first (delete the DaemonSet), or run the cleanup with hostPID",
        socket.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_outside_the_pid_namespace_is_never_signalled() {
        let socket = Path::new("/var/run/wireguard/wireseal0.sock");
        assert_eq!(signalable_pid(4242, socket).unwrap(), 4242);
        for hidden in [0, -1] {
            let err = signalable_pid(hidden, socket).unwrap_err().to_string();
            assert!(err.contains("outside this PID namespace"), "{err}");
            assert!(err.contains("wireseal0.sock"), "{err}");
        }
    }
}

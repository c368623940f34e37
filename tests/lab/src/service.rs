//! A kube-proxy stand-in for one Service: nftables rules in a node's
//! namespace doing what kube-proxy's iptables and nftables modes do for a
//! ClusterIP when `--cluster-cidr` is set (kubeadm and k3s set it):
//!
//! - traffic to the ClusterIP is DNATed to the endpoint pod, in `output` for
//!   the node's own and in `prerouting` for its pods';
//! - traffic to it from a source outside the cluster CIDR is marked
//!   (`KUBE-MARK-MASQ`, 0x4000) and masqueraded in `postrouting`.
//!
//! The node's own connections pick their source for the ClusterIP, before
//! the DNAT: the node's address. Masquerading then takes an address of the
//! *output device*, which for a pod on another node is wireseal's tunnel.

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::Stdio;

use anyhow::{Context, Result, bail};

use crate::netns::Netns;
use crate::topology::APISERVER_IP;

/// The Service's ClusterIP.
pub const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The Service's port.
pub const SERVICE_PORT: u16 = 80;
/// The port the endpoint pod listens on.
pub const TARGET_PORT: u16 = 8080;
/// The Service CIDR, routed where a node's default route would take it.
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
/// kube-proxy's `--cluster-cidr`: every node's pod CIDR.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// kube-proxy's masquerade mark.
const MASQ_MARK: u32 = 0x4000;
/// The nftables table of the stand-in.
const TABLE: &str = "wsl_kube_proxy";

/// The ClusterIP and port clients connect to.
#[must_use]
pub fn cluster_address() -> SocketAddrV4 {
    SocketAddrV4::new(CLUSTER_IP, SERVICE_PORT)
}

/// The ruleset that sends the Service to `endpoint`.
fn ruleset(endpoint: SocketAddrV4) -> String {
    let service = format!("ip daddr {CLUSTER_IP} tcp dport {SERVICE_PORT}");
    let to = format!("dnat to {endpoint}");
    let mark = format!("ip saddr != {CLUSTER_CIDR} meta mark set meta mark | {MASQ_MARK:#x}");
    format!(
        "table ip {TABLE} {{
  chain output {{
    type nat hook output priority -100; policy accept;
    {service} {mark}
    {service} {to}
  }}
  chain prerouting {{
    type nat hook prerouting priority -100; policy accept;
    {service} {mark}
    {service} {to}
  }}
  chain postrouting {{
    type nat hook postrouting priority 100; policy accept;
    meta mark & {MASQ_MARK:#x} == {MASQ_MARK:#x} meta mark set meta mark ^ {MASQ_MARK:#x} masquerade
  }}
}}
"
    )
}

/// Installs the Service on node namespace `node`, sending it to `endpoint`,
/// and routes the Service CIDR to the underlay as a default route would (the
/// lab's nodes have none): the node's own connections to the ClusterIP then
/// pick the node's address as their source, as on a cluster.
///
/// # Errors
/// When `nft` is missing or refuses the rules, or `ip` fails.
pub fn install(node: &Netns, endpoint: SocketAddrV4) -> Result<()> {
    node.ip(&[
        "route",
        "replace",
        SERVICE_CIDR,
        "via",
        &APISERVER_IP.to_string(),
        "dev",
        "eth0",
    ])?;
    let mut nft = node
        .command("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting nft (apt-get install nftables)")?;
    nft.stdin
        .take()
        .context("nft's stdin")?
        .write_all(ruleset(endpoint).as_bytes())
        .context("writing the ruleset to nft")?;
    let output = nft.wait_with_output().context("waiting for nft")?;
    if !output.status.success() {
        bail!(
            "nft refused the kube-proxy stand-in in {}: {}",
            node.name(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_marks_outside_sources_and_dnats_in_both_hooks() {
        let rules = ruleset(SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 10), 8080));
        assert_eq!(rules.matches("dnat to 10.244.1.10:8080").count(), 2);
        assert_eq!(
            rules
                .matches("ip saddr != 10.244.0.0/16 meta mark set meta mark | 0x4000")
                .count(),
            2
        );
        assert!(rules.contains("masquerade"));
    }
}

//! The lab's network: an underlay bridge, N nodes on it, M pods behind each
//! node, and the "existing CNI": host-gw routes between the nodes' pod CIDRs.
//!
//! ```text
//!   pod n0-p0 (10.244.0.10) ─veth─┐                  ┌─veth─ pod n1-p0 (10.244.1.10)
//!   pod n0-p1 (10.244.0.11) ─veth─ node n0 ── br0 ── node n1 ─veth─ pod n1-p1 …
//!                            eth0 198.18.0.10   198.18.0.11 eth0
//!                                   the underlay (198.18.0.0/24, RFC 2544 test range)
//!                                   apiserver 198.18.0.1 on br0
//! ```

use std::net::Ipv4Addr;

use crate::netns::{CmdError, Netns};

/// Address of the fake apiserver on the underlay bridge.
pub const APISERVER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Port of the fake apiserver.
pub const APISERVER_PORT: u16 = 6443;
/// Prefix length of the underlay.
const UNDERLAY_PREFIX: u8 = 24;

/// Underlay address of node `i`.
#[must_use]
pub fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, u8::try_from(10 + i).unwrap_or(u8::MAX))
}

/// Pod CIDR of node `i`, `10.244.i.0/24`.
#[must_use]
pub fn pod_cidr(i: usize) -> String {
    format!("10.244.{i}.0/24")
}

/// Gateway address of node `i`'s pods (on every pod veth's node side, as ptp CNIs do).
#[must_use]
pub fn pod_gateway(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, u8::try_from(i).unwrap_or(u8::MAX), 1)
}

/// Address of pod `j` on node `i`.
#[must_use]
pub fn pod_ip(i: usize, j: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        10,
        244,
        u8::try_from(i).unwrap_or(u8::MAX),
        u8::try_from(10 + j).unwrap_or(u8::MAX),
    )
}

/// One pod: a namespace behind a veth on its node.
#[derive(Debug)]
pub struct Pod {
    /// Its namespace.
    pub ns: Netns,
    /// Its address.
    pub ip: Ipv4Addr,
}

/// One node: a namespace on the underlay with its pods.
#[derive(Debug)]
pub struct LabNode {
    /// Node name (also its Node object's name).
    pub name: String,
    /// Index in the lab.
    pub index: usize,
    /// Its namespace.
    pub ns: Netns,
    /// Its underlay address.
    pub ip: Ipv4Addr,
    /// Its pods.
    pub pods: Vec<Pod>,
}

/// The whole network. Dropping it deletes every namespace.
#[derive(Debug)]
pub struct Network {
    /// Nodes in index order.
    pub nodes: Vec<LabNode>,
    /// The underlay namespace holding the bridge and the apiserver.
    pub underlay: Netns,
}

/// Builds the network for `nodes` × `pods`, with names starting with `prefix`.
///
/// # Errors
/// The first command that fails (not root, iproute2 missing).
pub fn build(prefix: &str, nodes: usize, pods: usize) -> Result<Network, CmdError> {
    let underlay = Netns::create(&format!("{prefix}-ul"))?;
    underlay.ip(&["link", "add", "br0", "type", "bridge"])?;
    underlay.ip(&[
        "addr",
        "add",
        &format!("{APISERVER_IP}/{UNDERLAY_PREFIX}"),
        "dev",
        "br0",
    ])?;
    underlay.ip(&["link", "set", "br0", "up"])?;
    let mut network = Network {
        nodes: Vec::with_capacity(nodes),
        underlay,
    };
    for i in 0..nodes {
        let node = build_node(prefix, &network.underlay, i, pods)?;
        network.nodes.push(node);
    }
    Ok(network)
}

fn build_node(prefix: &str, underlay: &Netns, i: usize, pods: usize) -> Result<LabNode, CmdError> {
    let name = format!("node-{i}");
    let ns = Netns::create(&format!("{prefix}-n{i}"))?;
    let ip = node_ip(i);
    let port = format!("n{i}");
    underlay.ip(&[
        "link",
        "add",
        &port,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        ns.name(),
    ])?;
    underlay.ip(&["link", "set", &port, "master", "br0", "up"])?;
    ns.ip(&[
        "addr",
        "add",
        &format!("{ip}/{UNDERLAY_PREFIX}"),
        "dev",
        "eth0",
    ])?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    ns.sysctl("net.ipv4.ip_forward", "1")?;
    // Loose reverse-path filtering: decrypted packets arrive on the tunnel
    // interface, which a strict check against the main table would reject.
    ns.sysctl("net.ipv4.conf.all.rp_filter", "2")?;
    ns.sysctl("net.ipv4.conf.default.rp_filter", "2")?;
    let mut node = LabNode {
        name,
        index: i,
        ns,
        ip,
        pods: Vec::with_capacity(pods),
    };
    for j in 0..pods {
        let pod = build_pod(prefix, &node, j)?;
        node.pods.push(pod);
    }
    Ok(node)
}

fn build_pod(prefix: &str, node: &LabNode, j: usize) -> Result<Pod, CmdError> {
    let i = node.index;
    let ns = Netns::create(&format!("{prefix}-n{i}-p{j}"))?;
    let ip = pod_ip(i, j);
    let gateway = pod_gateway(i);
    let host_side = format!("p{j}");
    node.ns.ip(&[
        "link",
        "add",
        &host_side,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        ns.name(),
    ])?;
    node.ns
        .ip(&["addr", "add", &format!("{gateway}/32"), "dev", &host_side])?;
    node.ns.ip(&["link", "set", &host_side, "up"])?;
    node.ns
        .ip(&["route", "add", &format!("{ip}/32"), "dev", &host_side])?;
    ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"])?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    ns.ip(&["route", "add", &gateway.to_string(), "dev", "eth0"])?;
    ns.ip(&[
        "route",
        "add",
        "default",
        "via",
        &gateway.to_string(),
        "dev",
        "eth0",
    ])?;
    Ok(Pod { ns, ip })
}

/// Plays the existing CNI (flannel host-gw, kube-router): on every node, each
/// other node's pod CIDR via that node's underlay address in the main table.
/// Pods then reach each other across nodes, in plaintext.
///
/// # Errors
/// The first route that cannot be added.
pub fn install_cni_routes(network: &Network) -> Result<(), CmdError> {
    for node in &network.nodes {
        for other in network.nodes.iter().filter(|o| o.index != node.index) {
            node.ns.ip(&[
                "route",
                "replace",
                &pod_cidr(other.index),
                "via",
                &other.ip.to_string(),
                "dev",
                "eth0",
            ])?;
        }
    }
    Ok(())
}

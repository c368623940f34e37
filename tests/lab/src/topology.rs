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
//!
//! With IPv6 ([`Stack::Dual`], [`Stack::V6`]) every link also carries the
//! IPv6 counterpart, in unique local space: the underlay `fd00:198:18::/64`
//! (apiserver `::1`, node `i` at `::10+i`, hex), node `i`'s pods in
//! `fd00:10:244:i::/64` (gateway `::1`, pod `j` at `::10+j`, hex). An
//! IPv6-only lab has no IPv4 address anywhere but on `lo`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::netns::{CmdError, Netns};

/// Address of the fake apiserver on the underlay bridge.
pub const APISERVER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// IPv6 address of the underlay bridge (the apiserver's in an IPv6-only lab).
pub const APISERVER_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x198, 0x18, 0, 0, 0, 0, 1);
/// Port of the fake apiserver.
pub const APISERVER_PORT: u16 = 6443;
/// Prefix length of the underlay.
const UNDERLAY_PREFIX: u8 = 24;
/// Prefix length of the IPv6 underlay.
const UNDERLAY_PREFIX6: u8 = 64;
/// The cluster's IPv4 pod network (every node's pod CIDR is inside).
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The cluster's IPv6 pod network.
pub const CLUSTER_CIDR6: &str = "fd00:10:244::/48";

/// An address family: wireseal's own.
pub use wireseal_core::state::Family;

/// "IPv4" or "IPv6", for reports.
#[must_use]
pub fn family_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "IPv4",
        Family::V6 => "IPv6",
    }
}

/// The cluster's pod network of `family`.
#[must_use]
pub fn cluster_cidr(family: Family) -> &'static str {
    match family {
        Family::V4 => CLUSTER_CIDR,
        Family::V6 => CLUSTER_CIDR6,
    }
}

/// Which families the lab's underlay, nodes and pods have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stack {
    /// IPv4 only.
    #[default]
    V4,
    /// IPv4 and IPv6 on every link; Nodes list both (IPv4 first).
    Dual,
    /// IPv6 only.
    V6,
}

impl Stack {
    /// The families present, IPv4 first.
    #[must_use]
    pub fn families(self) -> &'static [Family] {
        match self {
            Self::V4 => &[Family::V4],
            Self::Dual => &[Family::V4, Family::V6],
            Self::V6 => &[Family::V6],
        }
    }

    /// Whether `family` is present.
    #[must_use]
    pub fn has(self, family: Family) -> bool {
        self.families().contains(&family)
    }

    /// The first family: the one Nodes list first, the apiserver listens on
    /// and the agents reach each other over (IPv4 unless IPv6-only).
    #[must_use]
    pub fn primary(self) -> Family {
        self.families()[0]
    }

    /// The apiserver's address: on the primary family.
    #[must_use]
    pub fn apiserver_ip(self) -> IpAddr {
        match self.primary() {
            Family::V4 => IpAddr::V4(APISERVER_IP),
            Family::V6 => IpAddr::V6(APISERVER_IP6),
        }
    }

    /// `--cluster-cidrs` for this stack: the pod networks of its families.
    #[must_use]
    pub fn cluster_cidrs(self) -> String {
        let cidrs: Vec<&str> = self.families().iter().map(|f| cluster_cidr(*f)).collect();
        cidrs.join(",")
    }
}

fn index_u16(i: usize) -> u16 {
    u16::try_from(0x10 + i).unwrap_or(u16::MAX)
}

/// IPv6 underlay address of node `i`.
#[must_use]
pub fn node_ip6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x198, 0x18, 0, 0, 0, 0, index_u16(i))
}

/// IPv6 pod CIDR of node `i`, `fd00:10:244:i::/64`.
#[must_use]
pub fn pod_cidr6(i: usize) -> String {
    let network = Ipv6Addr::new(
        0xfd00,
        0x10,
        0x244,
        u16::try_from(i).unwrap_or(u16::MAX),
        0,
        0,
        0,
        0,
    );
    format!("{network}/64")
}

/// IPv6 gateway address of node `i`'s pods.
#[must_use]
pub fn pod_gateway6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(
        0xfd00,
        0x10,
        0x244,
        u16::try_from(i).unwrap_or(u16::MAX),
        0,
        0,
        0,
        1,
    )
}

/// IPv6 address of pod `j` on node `i`.
#[must_use]
pub fn pod_ip6(i: usize, j: usize) -> Ipv6Addr {
    Ipv6Addr::new(
        0xfd00,
        0x10,
        0x244,
        u16::try_from(i).unwrap_or(u16::MAX),
        0,
        0,
        0,
        index_u16(j),
    )
}

/// Node `i`'s pod CIDRs in `stack`, as `spec.podCIDRs` lists them.
#[must_use]
pub fn pod_cidrs(stack: Stack, i: usize) -> Vec<String> {
    stack
        .families()
        .iter()
        .map(|family| match family {
            Family::V4 => pod_cidr(i),
            Family::V6 => pod_cidr6(i),
        })
        .collect()
}

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
    /// Its first address: IPv4, unless the lab is IPv6-only.
    pub ip: IpAddr,
    /// Its IPv6 address, in a lab with IPv6.
    pub ipv6: Option<Ipv6Addr>,
}

impl Pod {
    /// Its address of `family`, if it has one.
    #[must_use]
    pub fn address(&self, family: Family) -> Option<IpAddr> {
        match family {
            Family::V4 => self.ip.is_ipv4().then_some(self.ip),
            Family::V6 => self.ipv6.map(IpAddr::V6),
        }
    }
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
    /// Its first underlay address: IPv4, unless the lab is IPv6-only.
    pub ip: IpAddr,
    /// Its IPv6 underlay address, in a lab with IPv6.
    pub ipv6: Option<Ipv6Addr>,
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
    /// The families of every link.
    pub stack: Stack,
}

impl LabNode {
    /// Its underlay address of `family`, if it has one.
    #[must_use]
    pub fn address(&self, family: Family) -> Option<IpAddr> {
        match family {
            Family::V4 => self.ip.is_ipv4().then_some(self.ip),
            Family::V6 => self.ipv6.map(IpAddr::V6),
        }
    }

    /// Its underlay addresses, primary first.
    #[must_use]
    pub fn addresses(&self) -> Vec<IpAddr> {
        [Family::V4, Family::V6]
            .into_iter()
            .filter_map(|family| self.address(family))
            .collect()
    }
}

/// Builds the network for `nodes` × `pods`, with names starting with `prefix`.
///
/// # Errors
/// The first command that fails (not root, iproute2 missing).
pub fn build(prefix: &str, stack: Stack, nodes: usize, pods: usize) -> Result<Network, CmdError> {
    build_with(prefix, stack, nodes, pods, |_, name| Netns::create(name))
}

/// [`build`], with each node's namespace (named as given, index first) made by
/// `node_namespace`: a container's, for nodes whose pods run in containers.
///
/// # Errors
/// As [`build`], and whatever `node_namespace` fails with.
pub fn build_with(
    prefix: &str,
    stack: Stack,
    nodes: usize,
    pods: usize,
    mut node_namespace: impl FnMut(usize, &str) -> Result<Netns, CmdError>,
) -> Result<Network, CmdError> {
    let underlay = Netns::create(&format!("{prefix}-ul"))?;
    without_dad(&underlay, stack)?;
    underlay.ip(&["link", "add", "br0", "type", "bridge"])?;
    add_addresses(
        &underlay,
        stack,
        "br0",
        (APISERVER_IP, UNDERLAY_PREFIX),
        (APISERVER_IP6, UNDERLAY_PREFIX6),
    )?;
    underlay.ip(&["link", "set", "br0", "up"])?;
    let mut network = Network {
        nodes: Vec::with_capacity(nodes),
        underlay,
        stack,
    };
    for i in 0..nodes {
        let ns = node_namespace(i, &format!("{prefix}-n{i}"))?;
        let node = build_node(prefix, &network.underlay, stack, ns, i, pods)?;
        network.nodes.push(node);
    }
    Ok(network)
}

/// Turns duplicate address detection off in `ns` (for the links made in it
/// from now on) when the lab has IPv6: addresses are usable at once, not a
/// second or two later, and the lab never has duplicates.
fn without_dad(ns: &Netns, stack: Stack) -> Result<(), CmdError> {
    if stack.has(Family::V6) {
        ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
        ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
    }
    Ok(())
}

/// Adds the addresses of `stack`'s families to `dev` in `ns` (IPv6 without
/// duplicate address detection).
fn add_addresses(
    ns: &Netns,
    stack: Stack,
    dev: &str,
    v4: (Ipv4Addr, u8),
    v6: (Ipv6Addr, u8),
) -> Result<(), CmdError> {
    for family in stack.families() {
        match family {
            Family::V4 => ns.ip(&["addr", "add", &format!("{}/{}", v4.0, v4.1), "dev", dev])?,
            Family::V6 => ns.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{}/{}", v6.0, v6.1),
                "dev",
                dev,
                "nodad",
            ])?,
        };
    }
    Ok(())
}

/// The first address of `stack` out of `v4` and `v6`, and the IPv6 one if present.
fn addresses_of(stack: Stack, v4: Ipv4Addr, v6: Ipv6Addr) -> (IpAddr, Option<Ipv6Addr>) {
    let first = match stack.primary() {
        Family::V4 => IpAddr::V4(v4),
        Family::V6 => IpAddr::V6(v6),
    };
    (first, stack.has(Family::V6).then_some(v6))
}

fn build_node(
    prefix: &str,
    underlay: &Netns,
    stack: Stack,
    ns: Netns,
    i: usize,
    pods: usize,
) -> Result<LabNode, CmdError> {
    let name = format!("node-{i}");
    let (ip, ipv6) = addresses_of(stack, node_ip(i), node_ip6(i));
    let port = format!("n{i}");
    without_dad(&ns, stack)?;
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
    add_addresses(
        &ns,
        stack,
        "eth0",
        (node_ip(i), UNDERLAY_PREFIX),
        (node_ip6(i), UNDERLAY_PREFIX6),
    )?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    ns.sysctl("net.ipv4.ip_forward", "1")?;
    if stack.has(Family::V6) {
        ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
    }
    // Loose reverse-path filtering: decrypted packets arrive on the tunnel
    // interface, which a strict check against the main table would reject.
    ns.sysctl("net.ipv4.conf.all.rp_filter", "2")?;
    ns.sysctl("net.ipv4.conf.default.rp_filter", "2")?;
    let mut node = LabNode {
        name,
        index: i,
        ns,
        ip,
        ipv6,
        pods: Vec::with_capacity(pods),
    };
    for j in 0..pods {
        let pod = build_pod(prefix, stack, &node, j)?;
        node.pods.push(pod);
    }
    Ok(node)
}

fn build_pod(prefix: &str, stack: Stack, node: &LabNode, j: usize) -> Result<Pod, CmdError> {
    let i = node.index;
    let ns = Netns::create(&format!("{prefix}-n{i}-p{j}"))?;
    without_dad(&ns, stack)?;
    let (ip, ipv6) = addresses_of(stack, pod_ip(i, j), pod_ip6(i, j));
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
    add_addresses(
        &node.ns,
        stack,
        &host_side,
        (pod_gateway(i), 32),
        (pod_gateway6(i), 128),
    )?;
    node.ns.ip(&["link", "set", &host_side, "up"])?;
    add_addresses(&ns, stack, "eth0", (pod_ip(i, j), 32), (pod_ip6(i, j), 128))?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    for family in stack.families() {
        let (pod, gateway) = match family {
            Family::V4 => (IpAddr::V4(pod_ip(i, j)), IpAddr::V4(pod_gateway(i))),
            Family::V6 => (IpAddr::V6(pod_ip6(i, j)), IpAddr::V6(pod_gateway6(i))),
        };
        node.ns
            .ip(&["route", "add", &pod.to_string(), "dev", &host_side])?;
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
    }
    Ok(Pod { ns, ip, ipv6 })
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
            for family in network.stack.families() {
                let (cidr, via) = match family {
                    Family::V4 => (pod_cidr(other.index), other.address(*family)),
                    Family::V6 => (pod_cidr6(other.index), other.address(*family)),
                };
                let Some(via) = via else { continue };
                node.ns.ip(&[
                    "route",
                    "replace",
                    &cidr,
                    "via",
                    &via.to_string(),
                    "dev",
                    "eth0",
                ])?;
            }
        }
    }
    Ok(())
}

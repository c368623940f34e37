//! What a node may claim, and who keeps a claim two nodes make.
//!
//! A node's annotations are written by that node, which may be compromised.
//! So a pod CIDR claim is bounded ([`Bounds`]): never a default route, a
//! special-purpose range, anything outside the cluster's pod networks, or a
//! range holding a node's address, a peer's endpoint or the API server; such
//! a claim is refused whatever else holds. And when two nodes claim the same
//! key or overlapping CIDRs, the one already programmed keeps it ([`Rank`]):
//! a newcomer's claim never takes anything away from a node that holds it.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::annotation::overlaps;
use crate::node::CidrSource;
use crate::state::Family;

/// Ranges no pod CIDR may touch: what they are for is never pod traffic, and
/// routing them into the tunnel would hand a node the loopback, link-local
/// (the cloud's metadata service), multicast or reserved space of every peer.
/// AWS serves its metadata over IPv6 at a unique local address (Nitro
/// instances, `fd00:ec2::254`), where a pod CIDR in `fd00::/8` could reach.
pub const SPECIAL_PURPOSE: [(&str, &str); 11] = [
    ("0.0.0.0/8", "\"this network\" (0.0.0.0/8)"),
    ("127.0.0.0/8", "loopback (127.0.0.0/8)"),
    ("169.254.0.0/16", "link-local (169.254.0.0/16)"),
    ("224.0.0.0/4", "multicast (224.0.0.0/4)"),
    ("240.0.0.0/4", "reserved (240.0.0.0/4)"),
    ("::/128", "the unspecified address (::/128)"),
    ("::1/128", "loopback (::1/128)"),
    ("::ffff:0:0/96", "IPv4-mapped (::ffff:0:0/96)"),
    ("fe80::/10", "link-local (fe80::/10)"),
    ("ff00::/8", "multicast (ff00::/8)"),
    (
        "fd00:ec2::254/128",
        "the AWS metadata service's IPv6 address (fd00:ec2::254)",
    ),
];

/// Why a pod CIDR is never routed, whichever node claims it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutOfBounds {
    /// A default route: all of a family's traffic.
    DefaultRoute,
    /// It overlaps a special-purpose range.
    SpecialPurpose(&'static str),
    /// It is not inside the cluster's pod networks (`--cluster-cidrs`).
    OutsideClusterCidrs(Vec<IpNetwork>),
    /// It holds an address wireseal must never steer into a tunnel: a node's
    /// address, a peer's endpoint, the API server, an address of this node.
    Contains {
        /// Whose address it is, e.g. "node-2's InternalIP".
        what: String,
        /// The address.
        address: IpAddr,
    },
}

impl fmt::Display for OutOfBounds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DefaultRoute => f.write_str("is a default route"),
            Self::SpecialPurpose(range) => write!(f, "overlaps {range}"),
            Self::OutsideClusterCidrs(cluster) if cluster.is_empty() => {
                f.write_str("is outside the cluster CIDRs (none of its family is configured)")
            }
            Self::OutsideClusterCidrs(cluster) => {
                let list: Vec<String> = cluster.iter().map(ToString::to_string).collect();
                write!(f, "is outside the cluster CIDRs {}", list.join(", "))
            }
            Self::Contains { what, address } => write!(f, "contains {what} {address}"),
        }
    }
}

/// The limits every pod CIDR claim is checked against.
#[derive(Debug, Clone, Default)]
pub struct Bounds {
    special: Vec<(IpNetwork, &'static str)>,
    /// The cluster's pod networks; `None` when not configured (then any
    /// range outside the special ones may be claimed).
    cluster: Option<Vec<IpNetwork>>,
    /// Addresses no claim may contain, with whose they are.
    protected: BTreeMap<IpAddr, String>,
}

impl Bounds {
    /// Bounds with the cluster's pod networks, if configured.
    #[must_use]
    pub fn new(cluster: Option<&[IpNetwork]>) -> Self {
        let special = SPECIAL_PURPOSE
            .iter()
            .filter_map(|(cidr, name)| cidr.parse().ok().map(|net| (net, *name)))
            .collect();
        Self {
            special,
            cluster: cluster.map(<[IpNetwork]>::to_vec),
            protected: BTreeMap::new(),
        }
    }

    /// No claim may contain `address` (`what` says whose it is). The first
    /// description given for an address is kept.
    pub fn protect(&mut self, address: IpAddr, what: impl FnOnce() -> String) {
        self.protected.entry(address).or_insert_with(what);
    }

    /// The addresses no claim may contain.
    pub fn protected(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.protected.keys().copied()
    }

    /// Checks one claim.
    ///
    /// # Errors
    /// Why it is out of bounds.
    pub fn check(&self, cidr: IpNetwork) -> Result<(), OutOfBounds> {
        if cidr.prefix() == 0 {
            return Err(OutOfBounds::DefaultRoute);
        }
        if let Some((_, name)) = self.special.iter().find(|(net, _)| overlaps(*net, cidr)) {
            return Err(OutOfBounds::SpecialPurpose(name));
        }
        if let Some(cluster) = &self.cluster {
            let family: Vec<IpNetwork> = cluster
                .iter()
                .filter(|net| Family::of(net) == Family::of(&cidr))
                .copied()
                .collect();
            let inside = family
                .iter()
                .any(|net| net.prefix() <= cidr.prefix() && net.contains(cidr.network()));
            if !inside {
                return Err(OutOfBounds::OutsideClusterCidrs(family));
            }
        }
        let (first, last) = span(cidr);
        if let Some((address, what)) = self.protected.range(first..=last).next() {
            return Err(OutOfBounds::Contains {
                what: what.clone(),
                address: *address,
            });
        }
        Ok(())
    }
}

/// The first and last address of a network.
#[must_use]
pub fn span(net: IpNetwork) -> (IpAddr, IpAddr) {
    match net {
        IpNetwork::V4(v4) => (IpAddr::V4(v4.network()), IpAddr::V4(v4.broadcast())),
        IpNetwork::V6(v6) => {
            let first = u128::from(v6.network());
            let host_bits = 128 - u32::from(v6.prefix());
            let last = if host_bits >= 128 {
                u128::MAX
            } else {
                first | ((1u128 << host_bits) - 1)
            };
            (IpAddr::V6(first.into()), IpAddr::V6(last.into()))
        }
    }
}

/// How firmly the datapath holds a claim for a node already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hold {
    /// Held, and everything else the datapath has for it agrees with the
    /// node (for a key: its peer's authenticated endpoint is the node's).
    Full,
    /// Held.
    Held,
    /// Not held: a newcomer.
    None,
}

/// How strong a node's hold on a claim is; the smallest rank wins.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rank<'a> {
    /// Whether the datapath holds this claim for the node already: the
    /// incumbent keeps it.
    pub hold: Hold,
    /// `spec.podCIDRs` before the annotation override.
    pub source: CidrSource,
    /// Older nodes first; a node without a creation time last.
    pub created: i64,
    /// Then by name, so the result never depends on input order.
    pub node: &'a str,
}

impl<'a> Rank<'a> {
    /// The rank of a claim by `node`.
    #[must_use]
    pub fn new(node: &'a str, hold: Hold, source: CidrSource, created: Option<i64>) -> Self {
        Self {
            hold,
            source,
            created: created.unwrap_or(i64::MAX),
            node,
        }
    }
}

/// Networks accepted so far, none overlapping another: a new claim is
/// accepted only if it overlaps none of them. CIDRs are nested or disjoint,
/// so of the accepted networks sorted by first address, only the last one
/// starting at or before the claim's last address can overlap it: one
/// ordered-map lookup per claim, not a comparison with every other claim.
#[derive(Debug)]
pub struct Disjoint<T> {
    by_start: BTreeMap<IpAddr, (IpAddr, IpNetwork, T)>,
}

impl<T> Default for Disjoint<T> {
    fn default() -> Self {
        Self {
            by_start: BTreeMap::new(),
        }
    }
}

impl<T: Clone> Disjoint<T> {
    /// The accepted network `net` overlaps, with its owner, if any.
    #[must_use]
    pub fn overlapping(&self, net: IpNetwork) -> Option<(IpNetwork, T)> {
        let (first, last) = span(net);
        // Only a network of the same family can overlap (IPv4 sorts before IPv6).
        let (start, (end, held, owner)) = self.by_start.range(..=last).next_back()?;
        (Family::of_ip(*start) == Family::of(&net) && *end >= first).then(|| (*held, owner.clone()))
    }

    /// Every accepted network with its owner, in address order.
    pub fn iter(&self) -> impl Iterator<Item = (IpNetwork, T)> + '_ {
        self.by_start
            .values()
            .map(|(_, net, owner)| (*net, owner.clone()))
    }

    /// Accepts `net` for `owner`, unless it overlaps an accepted network:
    /// then returns that network and its owner.
    ///
    /// # Errors
    /// The accepted network in the way, with its owner.
    pub fn insert(&mut self, net: IpNetwork, owner: T) -> Result<(), (IpNetwork, T)> {
        if let Some(found) = self.overlapping(net) {
            return Err(found);
        }
        let (first, last) = span(net);
        self.by_start.insert(first, (last, net, owner));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> IpNetwork {
        text.parse().unwrap()
    }

    #[test]
    fn bounds_refuse_default_routes_special_ranges_and_protected_addresses() {
        let mut bounds = Bounds::new(None);
        bounds.protect("192.0.2.11".parse().unwrap(), || {
            "node-1's InternalIP".into()
        });
        bounds.protect("10.96.0.1".parse().unwrap(), || "the API server".into());
        for (claim, expect) in [
            ("0.0.0.0/0", "is a default route"),
            ("::/0", "is a default route"),
            ("169.254.169.254/32", "overlaps link-local (169.254.0.0/16)"),
            ("169.0.0.0/8", "overlaps link-local (169.254.0.0/16)"),
            ("127.0.0.0/16", "overlaps loopback (127.0.0.0/8)"),
            ("0.0.0.0/1", "overlaps \"this network\" (0.0.0.0/8)"),
            ("224.0.0.0/24", "overlaps multicast (224.0.0.0/4)"),
            ("255.255.255.255/32", "overlaps reserved (240.0.0.0/4)"),
            ("::1/128", "overlaps loopback (::1/128)"),
            (
                "::ffff:10.0.0.0/104",
                "overlaps IPv4-mapped (::ffff:0:0/96)",
            ),
            ("fe80::/64", "overlaps link-local (fe80::/10)"),
            ("ff02::/16", "overlaps multicast (ff00::/8)"),
            (
                "fd00:ec2::254/128",
                "overlaps the AWS metadata service's IPv6 address (fd00:ec2::254)",
            ),
            (
                "fd00:ec2::/64",
                "overlaps the AWS metadata service's IPv6 address (fd00:ec2::254)",
            ),
            ("192.0.2.11/32", "contains node-1's InternalIP 192.0.2.11"),
            ("192.0.2.0/24", "contains node-1's InternalIP 192.0.2.11"),
            ("10.96.0.0/12", "contains the API server 10.96.0.1"),
        ] {
            let err = bounds.check(net(claim)).expect_err(claim);
            assert_eq!(err.to_string(), expect, "{claim}");
        }
        for claim in [
            "10.244.1.0/24",
            "fd00:244:1::/64",
            "fd00:ec2:0:1::/64",
            "192.0.2.12/32",
        ] {
            assert_eq!(bounds.check(net(claim)), Ok(()), "{claim}");
        }
    }

    #[test]
    fn with_cluster_cidrs_only_claims_inside_them_pass() {
        let bounds = Bounds::new(Some(&[net("10.244.0.0/16"), net("fd00:244::/48")]));
        assert_eq!(bounds.check(net("10.244.7.0/24")), Ok(()));
        assert_eq!(bounds.check(net("10.244.0.0/16")), Ok(()));
        assert_eq!(bounds.check(net("fd00:244:0:7::/64")), Ok(()));
        assert_eq!(
            bounds.check(net("10.0.0.0/8")).unwrap_err().to_string(),
            "is outside the cluster CIDRs 10.244.0.0/16"
        );
        assert_eq!(
            bounds.check(net("8.8.8.8/32")).unwrap_err().to_string(),
            "is outside the cluster CIDRs 10.244.0.0/16"
        );
        let v4_only = Bounds::new(Some(&[net("10.244.0.0/16")]));
        assert_eq!(
            v4_only.check(net("fd00::/64")).unwrap_err().to_string(),
            "is outside the cluster CIDRs (none of its family is configured)"
        );
    }

    #[test]
    fn disjoint_finds_every_overlap_with_one_lookup() {
        let mut accepted = Disjoint::default();
        accepted.insert(net("10.244.1.0/24"), "b").unwrap();
        accepted.insert(net("10.244.3.0/24"), "c").unwrap();
        accepted.insert(net("fd00:244:1::/64"), "b").unwrap();
        assert_eq!(
            accepted.insert(net("10.0.0.0/8"), "x"),
            Err((net("10.244.3.0/24"), "c"))
        );
        assert_eq!(
            accepted.insert(net("10.244.1.128/25"), "x"),
            Err((net("10.244.1.0/24"), "b"))
        );
        assert_eq!(
            accepted.insert(net("10.244.3.0/24"), "x"),
            Err((net("10.244.3.0/24"), "c"))
        );
        assert_eq!(
            accepted.insert(net("8000::/1"), "x"),
            Err((net("fd00:244:1::/64"), "b"))
        );
        assert_eq!(
            accepted.overlapping(net("::/1")),
            None,
            "IPv6, below fd00::"
        );
        accepted.insert(net("10.244.2.0/24"), "d").unwrap();
        accepted.insert(net("0.0.0.0/32"), "e").unwrap();
        assert_eq!(
            accepted.overlapping(net("10.244.2.7/32")),
            Some((net("10.244.2.0/24"), "d"))
        );
        assert_eq!(accepted.overlapping(net("10.245.0.0/16")), None);
        assert_eq!(accepted.overlapping(net("fd00:245::/48")), None);
    }
}

//! The allowed-IPs table: longest-prefix match from an inner IP address to a peer.
//!
//! WireGuard uses one table for both directions: outgoing packets are routed to the
//! peer whose allowed IPs hold the destination with the longest prefix, and a decrypted
//! packet is only accepted when its source looks up to the peer that sent it
//! (cryptokey routing). A prefix belongs to at most one peer: adding it to another peer
//! moves it, as in the kernel and wireguard-go.
//!
//! The table keeps one ordered map per prefix length and probes the lengths in use from
//! the longest down. That costs O(lengths in use × log n) per lookup, which for the
//! handful of lengths a cluster uses (/32, /24, /64, /128 …) is a few map probes, with
//! no unsafe pointer trie to get wrong.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

/// One address family: prefix length → (masked address bits → owner).
#[derive(Debug, Clone)]
struct Family<V> {
    /// Sorted by prefix length, longest first, so the first hit is the longest match.
    by_len: Vec<(u8, BTreeMap<u128, V>)>,
    /// Address width in bits (32 or 128).
    bits: u8,
}

impl<V: Clone + PartialEq> Family<V> {
    const fn new(bits: u8) -> Self {
        Self {
            by_len: Vec::new(),
            bits,
        }
    }

    fn mask(&self, addr: u128, len: u8) -> u128 {
        if len == 0 {
            return 0;
        }
        let width = u32::from(self.bits);
        // Host bits are the low (width - len) bits of the address.
        let host_bits = width - u32::from(len);
        let all = if width == 128 {
            u128::MAX
        } else {
            (1u128 << width) - 1
        };
        let host_mask = if host_bits == 0 {
            0
        } else {
            (1u128 << host_bits) - 1
        };
        addr & all & !host_mask
    }

    fn insert(&mut self, addr: u128, len: u8, value: V) -> Option<V> {
        let key = self.mask(addr, len);
        let slot = match self.by_len.binary_search_by(|(l, _)| len.cmp(l)) {
            Ok(i) => i,
            Err(i) => {
                self.by_len.insert(i, (len, BTreeMap::new()));
                i
            }
        };
        self.by_len[slot].1.insert(key, value)
    }

    fn remove(&mut self, addr: u128, len: u8) -> Option<V> {
        let key = self.mask(addr, len);
        let slot = self.by_len.binary_search_by(|(l, _)| len.cmp(l)).ok()?;
        let old = self.by_len[slot].1.remove(&key);
        if self.by_len[slot].1.is_empty() {
            self.by_len.remove(slot);
        }
        old
    }

    fn lookup(&self, addr: u128) -> Option<&V> {
        self.by_len
            .iter()
            .find_map(|(len, map)| map.get(&self.mask(addr, *len)))
    }

    fn retain(&mut self, mut keep: impl FnMut(&V) -> bool) {
        for (_, map) in &mut self.by_len {
            map.retain(|_, v| keep(v));
        }
        self.by_len.retain(|(_, map)| !map.is_empty());
    }

    fn len(&self) -> usize {
        self.by_len.iter().map(|(_, map)| map.len()).sum()
    }
}

/// Longest-prefix-match table from IP networks to peers (`V` is the peer's id).
#[derive(Debug, Clone)]
pub struct AllowedIps<V> {
    v4: Family<V>,
    v6: Family<V>,
}

impl<V: Clone + PartialEq> Default for AllowedIps<V> {
    fn default() -> Self {
        Self::new()
    }
}

fn split(net: IpNetwork) -> (bool, u128, u8) {
    match net {
        IpNetwork::V4(n) => (true, u128::from(u32::from(n.ip())), n.prefix()),
        IpNetwork::V6(n) => (false, u128::from(n.ip()), n.prefix()),
    }
}

/// The network with its host bits cleared, as `wg show` prints allowed IPs.
#[must_use]
pub fn canonical(net: IpNetwork) -> IpNetwork {
    match net {
        IpNetwork::V4(n) => {
            let network = n.network();
            Ipv4Network::new(network, n.prefix()).map_or(net, IpNetwork::V4)
        }
        IpNetwork::V6(n) => {
            let network = n.network();
            Ipv6Network::new(network, n.prefix()).map_or(net, IpNetwork::V6)
        }
    }
}

impl<V: Clone + PartialEq> AllowedIps<V> {
    /// An empty table.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            v4: Family::new(32),
            v6: Family::new(128),
        }
    }

    fn family_mut(&mut self, v4: bool) -> &mut Family<V> {
        if v4 { &mut self.v4 } else { &mut self.v6 }
    }

    /// Gives `net` to `value`, taking it from any peer that held it before.
    /// Returns the previous owner.
    pub fn insert(&mut self, net: IpNetwork, value: V) -> Option<V> {
        let (v4, addr, len) = split(net);
        self.family_mut(v4).insert(addr, len, value)
    }

    /// Removes exactly `net` (not the networks inside it). Returns its owner.
    pub fn remove(&mut self, net: IpNetwork) -> Option<V> {
        let (v4, addr, len) = split(net);
        self.family_mut(v4).remove(addr, len)
    }

    /// Removes every network owned by `value` (a peer removed or `replace_allowed_ips`).
    pub fn remove_value(&mut self, value: &V) {
        self.v4.retain(|v| v != value);
        self.v6.retain(|v| v != value);
    }

    /// Removes everything.
    pub fn clear(&mut self) {
        self.v4.by_len.clear();
        self.v6.by_len.clear();
    }

    /// The owner of the longest prefix containing `ip`.
    #[must_use]
    pub fn lookup(&self, ip: IpAddr) -> Option<&V> {
        match ip {
            IpAddr::V4(a) => self.v4.lookup(u128::from(u32::from(a))),
            IpAddr::V6(a) => self.v6.lookup(u128::from(a)),
        }
    }

    /// Number of networks in the table.
    #[must_use]
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// True when the table holds no network.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every (network, owner) pair, IPv4 first, longest prefixes first, then by address.
    #[must_use]
    pub fn entries(&self) -> Vec<(IpNetwork, V)> {
        let mut out = Vec::with_capacity(self.len());
        for (len, map) in &self.v4.by_len {
            for (addr, v) in map {
                #[allow(clippy::cast_possible_truncation)] // IPv4 keys are < 2^32
                let ip = std::net::Ipv4Addr::from(*addr as u32);
                if let Ok(net) = Ipv4Network::new(ip, *len) {
                    out.push((IpNetwork::V4(net), v.clone()));
                }
            }
        }
        for (len, map) in &self.v6.by_len {
            for (addr, v) in map {
                if let Ok(net) = Ipv6Network::new(std::net::Ipv6Addr::from(*addr), *len) {
                    out.push((IpNetwork::V6(net), v.clone()));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn longest_prefix_wins_v4() {
        let mut t = AllowedIps::new();
        t.insert(net("10.0.0.0/8"), 1);
        t.insert(net("10.1.0.0/16"), 2);
        t.insert(net("10.1.2.3/32"), 3);
        t.insert(net("0.0.0.0/0"), 4);
        assert_eq!(t.lookup(ip("10.1.2.3")), Some(&3));
        assert_eq!(t.lookup(ip("10.1.2.4")), Some(&2));
        assert_eq!(t.lookup(ip("10.2.0.1")), Some(&1));
        assert_eq!(t.lookup(ip("192.0.2.1")), Some(&4));
        assert_eq!(t.lookup(ip("::1")), None, "v4 default must not match v6");
    }

    #[test]
    fn longest_prefix_wins_v6() {
        let mut t = AllowedIps::new();
        t.insert(net("fd00::/8"), 1);
        t.insert(net("fd00:1::/64"), 2);
        t.insert(net("fd00:1::5/128"), 3);
        assert_eq!(t.lookup(ip("fd00:1::5")), Some(&3));
        assert_eq!(t.lookup(ip("fd00:1::6")), Some(&2));
        assert_eq!(t.lookup(ip("fd12::1")), Some(&1));
        assert_eq!(t.lookup(ip("fe80::1")), None);
        assert_eq!(t.lookup(ip("10.0.0.1")), None);
        t.insert(net("::/0"), 9);
        assert_eq!(t.lookup(ip("2001:db8::1")), Some(&9));
    }

    #[test]
    fn host_bits_are_masked_and_a_prefix_moves_between_peers() {
        let mut t = AllowedIps::new();
        assert_eq!(t.insert(net("10.1.2.77/24"), 1), None);
        assert_eq!(t.entries(), vec![(net("10.1.2.0/24"), 1)]);
        // The same prefix given to peer 2 moves there, as `wg set ... allowed-ips` does.
        assert_eq!(t.insert(net("10.1.2.0/24"), 2), Some(1));
        assert_eq!(t.lookup(ip("10.1.2.9")), Some(&2));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn remove_and_remove_value() {
        let mut t = AllowedIps::new();
        t.insert(net("10.0.0.0/24"), 1);
        t.insert(net("10.0.1.0/24"), 1);
        t.insert(net("fd00::/64"), 1);
        t.insert(net("10.0.2.0/24"), 2);
        assert_eq!(t.remove(net("10.0.0.0/24")), Some(1));
        assert_eq!(t.remove(net("10.0.0.0/24")), None);
        assert_eq!(t.lookup(ip("10.0.0.1")), None);
        t.remove_value(&1);
        assert_eq!(t.lookup(ip("10.0.1.1")), None);
        assert_eq!(t.lookup(ip("fd00::1")), None);
        assert_eq!(t.lookup(ip("10.0.2.1")), Some(&2));
        assert_eq!(t.entries(), vec![(net("10.0.2.0/24"), 2)]);
        t.clear();
        assert!(t.is_empty());
    }

    #[test]
    fn zero_length_and_full_length_prefixes() {
        let mut t = AllowedIps::new();
        t.insert(net("0.0.0.0/0"), 1);
        t.insert(net("255.255.255.255/32"), 2);
        t.insert(net("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"), 3);
        assert_eq!(t.lookup(ip("255.255.255.255")), Some(&2));
        assert_eq!(t.lookup(ip("255.255.255.254")), Some(&1));
        assert_eq!(
            t.lookup(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")),
            Some(&3)
        );
        assert_eq!(canonical(net("fd00::1:2/64")), net("fd00::/64"));
    }
}

//! IPsec mode: ESP in tunnel mode between node addresses, on the kernel's
//! XFRM, behind an XFRM interface so that routing is WireGuard mode's
//! (routes in wireseal's table into the interface, one rule per family,
//! strict mode's catch-alls unchanged).
//!
//! The plan's device steps are WireGuard's, and this datapath carries them
//! out in XFRM terms. For each peer (node pair):
//! - two SAs, `rfc4106(gcm(aes))` with extended sequence numbers and a
//!   replay window: peer → this node on the SPI this node assigns the peer,
//!   this node → peer on the SPI the peer assigns this node
//!   (`wireseal_core::ipsec`), in the receiver's key epoch, each with its
//!   own key derived from the two nodes' X25519 keys (`wireseal_keymgr::esp`);
//! - per allowed IP (a pod CIDR of the peer): an `out` policy from anywhere
//!   to it through the outbound SA, and `in` and `fwd` policies from it to
//!   anywhere through the inbound SA, all on the interface's `if_id`, so
//!   they see only what the routes send into the interface.
//!
//! No packet is ever sent in clear for want of an SA: a route into the
//! interface whose policy has no SA drops the packet (`XfrmOutNoStates`),
//! and the policies' templates are required, not optional.
//!
//! What the kernel holds is read back on every pass and adopted: an agent
//! restart keeps every SA and its sequence numbers. An outbound SA that has
//! to be installed again (a reboot, an SA deleted by hand) starts past every
//! sequence number it may have sent, from the reservation kept in the state
//! directory ([`seq`]): AES-GCM must never see a nonce twice
//! under one key.
//! SAs and policies on the interface that no peer explains (a departed node,
//! a replaced key) are removed after the plan ran, so a peer whose key
//! changed has its new SAs before its old ones go.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::SystemTime;

use ipnetwork::IpNetwork;
use tracing::info;
use wireseal_core::{
    DatapathKind, DeviceObservation, DevicePlan, LinkSpec, ObservedDevice, PeerConfig, PeerStats,
    PublicKey,
};
use wireseal_keymgr::PrivateKey;
use wireseal_keymgr::esp::derive_esp_key;
use wireseal_netlink::xfrm::{Direction, Policy, PolicyInfo, Sa, SaInfo, Xfrm, new_sa};
use wireseal_netlink::{Error as NetlinkError, Netlink, XFRM_KIND};

use super::{Datapath, DatapathError, NodeSet};
use seq::Reservations;

pub mod seq;
mod spis;

use spis::{PairSpis, SpiBook};

/// The XFRM interface id of wireseal's interface, its SAs and policies:
/// nothing else on the node uses them, and they are how wireseal finds its own.
pub const IF_ID: u32 = 51830;

/// Anti-replay window in packets. ESP over a multi-queue NIC and a
/// multi-core receiver reorders; a window this wide lets that through.
const REPLAY_WINDOW: u32 = 1024;

/// Priority of the policies (lower wins). They match only packets routed
/// into wireseal's interface, so no other policy competes with them.
const POLICY_PRIORITY: u32 = 100;

/// The reqid of every wireseal SA and policy template. A policy finds its
/// SA by the addresses, and the kernel sends on the newest of two SAs that
/// match: so a peer's rekey is one new SA and no policy change, and the
/// inbound policies accept both epochs' SAs while a rekey settles.
const REQID: u32 = IF_ID;

/// One pair as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Installed {
    /// The peer's underlay address (the outbound SA's destination).
    peer_ip: IpAddr,
    /// Whether each SA is there.
    inbound: bool,
    outbound: bool,
    /// Pod CIDRs with their `out` policy through the outbound SA.
    out: BTreeSet<IpNetwork>,
    /// Pod CIDRs with both their `in` and `fwd` policies through the inbound SA.
    inbound_cidrs: BTreeSet<IpNetwork>,
    /// Bytes each way.
    rx_bytes: u64,
    tx_bytes: u64,
    /// The outbound SA's last sequence number.
    oseq: Option<u64>,
}

/// The XFRM datapath of interface `interface`.
pub struct IpsecDatapath {
    netlink: Netlink,
    xfrm: Xfrm,
    interface: String,
    listen_port: u16,
    fwmark: u32,
    /// Where the sequence reservations are kept.
    state_dir: PathBuf,
    /// The outbound SAs' sequence reservations, once this node's key is known.
    reservations: Option<Reservations>,
    /// This node's key and underlay address, from its own Node.
    own: Option<(PublicKey, IpAddr)>,
    /// Each peer's SPIs, for the node set and epochs.
    spis: SpiBook,
    /// Each peer's endpoint port, as the plan states it (ESP has none).
    ports: BTreeMap<PublicKey, u16>,
    /// What the last observation found, by peer.
    installed: BTreeMap<PublicKey, Installed>,
    /// IPsec's stand-in for a WireGuard handshake, which the coverage and
    /// the route gate read: when the pair was first seen with both SAs, or
    /// later, when its inbound SA last counted more bytes (the peer holds the
    /// key: its packets authenticate). With traffic it stays fresh, as a
    /// handshake does; a pair that sends and hears nothing back for 180 s
    /// shows as broken.
    since: BTreeMap<PublicKey, (SystemTime, u64)>,
    /// Every SA on the interface, as last observed.
    sas: Vec<SaInfo>,
    /// What the last observation found on the interface that no pair explains.
    strays: (Vec<SaInfo>, Vec<PolicyInfo>),
    /// Pod CIDRs whose policies this pass wrote: a removal (of a peer whose
    /// key was replaced, of a stray) must not delete them, since a policy is
    /// known by its selector, not by its SA.
    written: BTreeSet<IpNetwork>,
    /// SAs this pass installed, by (destination, SPI): the kernel knows an
    /// ESP SA by those alone, so deleting a stale one of the same pair
    /// would delete the new one.
    written_sas: BTreeSet<(IpAddr, u32)>,
}

impl std::fmt::Debug for IpsecDatapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpsecDatapath")
            .field("interface", &self.interface)
            .field("own", &self.own)
            .field("peers", &self.spis.len())
            .finish_non_exhaustive()
    }
}

fn ipsec_error(what: impl Into<String>) -> DatapathError {
    DatapathError::Ipsec(what.into())
}

/// The network that matches every address of `cidr`'s family.
fn any_of(cidr: IpNetwork) -> IpNetwork {
    match cidr {
        IpNetwork::V4(_) => IpNetwork::new(IpAddr::from([0u8; 4]), 0),
        IpNetwork::V6(_) => IpNetwork::new(IpAddr::from([0u8; 16]), 0),
    }
    .unwrap_or(cidr)
}

impl IpsecDatapath {
    /// An IPsec datapath for `interface` over these connections.
    /// `listen_port` and `fwmark` are reported back as the device's, so the
    /// plan, which is WireGuard's, asks nothing of them.
    #[must_use]
    pub fn new(
        netlink: Netlink,
        xfrm: Xfrm,
        interface: &str,
        listen_port: u16,
        fwmark: u32,
        state_dir: PathBuf,
    ) -> Self {
        Self {
            netlink,
            xfrm,
            interface: interface.to_owned(),
            listen_port,
            fwmark,
            state_dir,
            reservations: None,
            own: None,
            spis: SpiBook::default(),
            ports: BTreeMap::new(),
            installed: BTreeMap::new(),
            since: BTreeMap::new(),
            sas: Vec::new(),
            strays: (Vec::new(), Vec::new()),
            written: BTreeSet::new(),
            written_sas: BTreeSet::new(),
        }
    }

    /// The pair of `key`, with this node's address.
    fn pair(&self, key: &PublicKey) -> Result<(IpAddr, PairSpis), DatapathError> {
        let (_, local) = self
            .own
            .ok_or_else(|| ipsec_error("this node's Node has no key or address yet"))?;
        let spis = self.spis.get(key).ok_or_else(|| {
            ipsec_error(format!(
                "no SPIs for the peer {key}: it is not in the Node list"
            ))
        })?;
        Ok((local, spis))
    }

    /// The reservations of `own`'s SAs, read from the state directory the
    /// first time (and again if this node's key changed).
    fn reservations(&mut self, own: PublicKey) -> Result<&mut Reservations, DatapathError> {
        if self.reservations.as_ref().is_none_or(|r| r.own() != own) {
            let loaded = Reservations::load(&self.state_dir, own)
                .map_err(|err| ipsec_error(err.to_string()))?;
            self.reservations = Some(loaded);
        }
        self.reservations
            .as_mut()
            .ok_or_else(|| ipsec_error("sequence reservations unavailable"))
    }

    /// The policies of one pod CIDR of a pair: out into the SA to the
    /// peer, in and fwd from the SAs from it.
    fn policies(local: IpAddr, peer_ip: IpAddr, cidr: IpNetwork) -> [Policy; 3] {
        let policy = |src, dst, dir, tunnel_src, tunnel_dst| Policy {
            src,
            dst,
            dir,
            tunnel_src,
            tunnel_dst,
            reqid: REQID,
            if_id: IF_ID,
            priority: POLICY_PRIORITY,
        };
        let any = any_of(cidr);
        [
            policy(any, cidr, Direction::Out, local, peer_ip),
            policy(cidr, any, Direction::In, peer_ip, local),
            policy(cidr, any, Direction::Fwd, peer_ip, local),
        ]
    }

    /// Installs whatever of the pair `key` with `config` is missing, and
    /// takes away the pod CIDRs it no longer has.
    async fn upsert(
        &mut self,
        key: &PublicKey,
        config: &PeerConfig,
        private: &PrivateKey,
    ) -> Result<(), DatapathError> {
        let (local, spis) = self.pair(key)?;
        let peer_ip = config
            .endpoint
            .map(|endpoint| endpoint.ip())
            .ok_or_else(|| ipsec_error(format!("no address known for the peer {key}")))?;
        if peer_ip.is_ipv4() != local.is_ipv4() {
            return Err(ipsec_error(format!(
                "the peer {key} is at {peer_ip} and this node at {local}: ESP between nodes \
                 needs both in one address family"
            )));
        }
        let own_key = private.public_key();
        let current = self
            .installed
            .get(key)
            .filter(|pair| pair.peer_ip == peer_ip)
            .cloned();
        let sa = |src, dst, spi| Sa {
            src,
            dst,
            spi,
            reqid: REQID,
            if_id: IF_ID,
            replay_window: REPLAY_WINDOW,
            oseq: 0,
        };
        // Inbound first: the peer may already send on it.
        if !current.as_ref().is_some_and(|pair| pair.inbound) {
            let esp = derive_esp_key(private, key, &own_key, spis.epoch_in, spis.inbound)
                .map_err(|err| ipsec_error(format!("the inbound key from {key}: {err}")))?;
            let inbound = sa(peer_ip, local, spis.inbound);
            self.replace_sa(local, spis.inbound).await?;
            self.xfrm
                .add_sa(new_sa(&inbound, esp.as_bytes(), false)?)
                .await?;
            self.written_sas.insert((local, spis.inbound));
        }
        if !current.as_ref().is_some_and(|pair| pair.outbound) {
            let esp = derive_esp_key(private, &own_key, key, spis.epoch_out, spis.outbound)
                .map_err(|err| ipsec_error(format!("the outbound key to {key}: {err}")))?;
            // Reserved on disk before the kernel may send a single packet.
            let reservations = self.reservations(own_key)?;
            let start = reservations.start(key, spis.outbound);
            if start > seq::MAX_START {
                return Err(ipsec_error(format!(
                    "the SA to {key} (SPI {:#x}) was installed again too often under its \
                     current key: its sequence numbers are reserved up to {start}, beyond what \
                     a fresh receiver can follow; it stays uninstalled (the pair's traffic is \
                     dropped) until that node's next rekey (--ipsec-rekey-interval) gives the \
                     pair a new key",
                    spis.outbound
                )));
            }
            reservations
                .cover(key, spis.outbound, start)
                .map_err(|err| ipsec_error(err.to_string()))?;
            let outbound = Sa {
                oseq: start,
                ..sa(local, peer_ip, spis.outbound)
            };
            self.replace_sa(peer_ip, spis.outbound).await?;
            self.xfrm
                .add_sa(new_sa(&outbound, esp.as_bytes(), false)?)
                .await?;
            self.written_sas.insert((peer_ip, spis.outbound));
        }
        let (out, inbound_cidrs) = current
            .map(|pair| (pair.out, pair.inbound_cidrs))
            .unwrap_or_default();
        for cidr in &config.allowed_ips {
            let [out_policy, in_policy, fwd_policy] = Self::policies(local, peer_ip, *cidr);
            if !inbound_cidrs.contains(cidr) {
                self.xfrm.update_policy(&in_policy).await?;
                self.xfrm.update_policy(&fwd_policy).await?;
            }
            if !out.contains(cidr) {
                self.xfrm.update_policy(&out_policy).await?;
            }
            self.written.insert(*cidr);
        }
        for cidr in out.union(&inbound_cidrs) {
            if !config.allowed_ips.contains(cidr) {
                self.remove_cidr(*cidr).await?;
            }
        }
        Ok(())
    }

    /// Deletes an SA with this destination and SPI from another source (the
    /// peer's or this node's old address): the kernel knows an ESP SA by
    /// (destination, SPI) alone, so it would refuse the new one.
    async fn replace_sa(&self, dst: IpAddr, spi: u32) -> Result<(), DatapathError> {
        for stale in self.sas.iter().filter(|sa| sa.dst == dst && sa.spi == spi) {
            self.xfrm.delete_sa(stale.src, stale.dst, stale.spi).await?;
        }
        Ok(())
    }

    /// Deletes the three policies of a pod CIDR, unless this pass gave them
    /// to a peer.
    async fn remove_cidr(&self, cidr: IpNetwork) -> Result<(), DatapathError> {
        if self.written.contains(&cidr) {
            return Ok(());
        }
        let any = any_of(cidr);
        self.xfrm
            .delete_policy(any, cidr, Direction::Out, IF_ID)
            .await?;
        for dir in [Direction::In, Direction::Fwd] {
            self.xfrm.delete_policy(cidr, any, dir, IF_ID).await?;
        }
        Ok(())
    }

    /// Deletes a pair: its policies, then its SAs.
    async fn remove(&mut self, key: &PublicKey) -> Result<(), DatapathError> {
        let Some(pair) = self.installed.remove(key) else {
            return Ok(());
        };
        for cidr in pair.out.union(&pair.inbound_cidrs) {
            self.remove_cidr(*cidr).await?;
        }
        if let Ok((local, spis)) = self.pair(key) {
            self.xfrm
                .delete_sa(local, pair.peer_ip, spis.outbound)
                .await?;
            self.xfrm
                .delete_sa(pair.peer_ip, local, spis.inbound)
                .await?;
        }
        self.since.remove(key);
        Ok(())
    }
}

impl Datapath for IpsecDatapath {
    fn kind(&self) -> DatapathKind {
        DatapathKind::Kernel
    }

    fn set_nodes(&mut self, set: &NodeSet<'_>) {
        self.own = set
            .nodes
            .get(set.own)
            .and_then(|node| Some((*set.own_key, node.endpoint_or(self.listen_port)?.ip())));
        self.ports = set
            .nodes
            .values()
            .filter_map(|node| Some((node.public_key?, node.endpoint_or(self.listen_port)?.port())))
            .collect();
        self.spis.update(set);
    }

    async fn ensure_link(&mut self, _link: &LinkSpec) -> Result<(), DatapathError> {
        match self.netlink.link(&self.interface).await? {
            Some(link) if link.kind.as_deref() == Some(XFRM_KIND) => Ok(()),
            Some(link) => Err(NetlinkError::WrongLinkKind {
                iface: self.interface.clone(),
                found: link.kind,
                expected: XFRM_KIND,
            }
            .into()),
            None => Ok(self.netlink.create_xfrm(&self.interface, IF_ID).await?),
        }
    }

    async fn observe(&mut self) -> Result<DeviceObservation, DatapathError> {
        let Some((own_key, local)) = self.own else {
            return Ok(DeviceObservation::default());
        };
        let sas: Vec<SaInfo> = self
            .xfrm
            .sas()
            .await?
            .into_iter()
            // SPI 0: a larval state the kernel made while a policy waited
            // for an SA (an ACQUIRE nobody answers); it expires on its own.
            .filter(|sa| sa.if_id == Some(IF_ID) && sa.spi != 0)
            .collect();
        let policies: Vec<PolicyInfo> = self
            .xfrm
            .policies()
            .await?
            .into_iter()
            .filter(|policy| policy.if_id == Some(IF_ID))
            .collect();
        let mut explained_sas = BTreeSet::new();
        let mut explained_policies = BTreeSet::new();
        let mut installed = BTreeMap::new();
        for (key, spis) in self.spis.pairs() {
            let outbound = sas
                .iter()
                .position(|sa| sa.src == local && sa.spi == spis.outbound);
            let inbound = sas
                .iter()
                .position(|sa| sa.dst == local && sa.spi == spis.inbound);
            // The outbound SA says where the peer is; an inbound SA from
            // elsewhere is stale (the peer moved) and is replaced.
            let Some(peer_ip) = outbound
                .map(|at| sas[at].dst)
                .or_else(|| inbound.map(|at| sas[at].src))
            else {
                continue;
            };
            let inbound = inbound.filter(|at| sas[*at].src == peer_ip);
            // The previous epoch's SA from the peer stays while a rekey of
            // this node settles.
            let previous = spis.previous_inbound.and_then(|spi| {
                sas.iter()
                    .position(|sa| sa.src == peer_ip && sa.dst == local && sa.spi == spi)
            });
            explained_sas.extend(outbound);
            explained_sas.extend(inbound);
            explained_sas.extend(previous);
            let mut pair = Installed {
                peer_ip,
                inbound: inbound.is_some(),
                outbound: outbound.is_some(),
                out: BTreeSet::new(),
                inbound_cidrs: BTreeSet::new(),
                rx_bytes: inbound.map_or(0, |at| sas[at].bytes)
                    + previous.map_or(0, |at| sas[at].bytes),
                tx_bytes: outbound.map_or(0, |at| sas[at].bytes),
                oseq: outbound.and_then(|at| sas[at].oseq),
            };
            let mut ins = BTreeSet::new();
            let mut fwds = BTreeSet::new();
            for (at, policy) in policies.iter().enumerate() {
                let template = policy.template;
                let mine = match policy.dir {
                    Some(Direction::Out) => {
                        template == Some((local, peer_ip, REQID)) && pair.out.insert(policy.dst)
                    }
                    Some(Direction::In) => {
                        template == Some((peer_ip, local, REQID)) && ins.insert(policy.src)
                    }
                    Some(Direction::Fwd) => {
                        template == Some((peer_ip, local, REQID)) && fwds.insert(policy.src)
                    }
                    None => false,
                };
                if mine {
                    explained_policies.insert(at);
                }
            }
            pair.inbound_cidrs = ins.intersection(&fwds).copied().collect();
            installed.insert(key, pair);
        }
        self.strays = (
            sas.iter()
                .enumerate()
                .filter(|(at, _)| !explained_sas.contains(at))
                .map(|(_, sa)| sa.clone())
                .collect(),
            policies
                .iter()
                .enumerate()
                .filter(|(at, _)| !explained_policies.contains(at))
                .map(|(_, policy)| policy.clone())
                .collect(),
        );
        let now = SystemTime::now();
        // Kept while the pair is there at all: a rekey replaces one SA and
        // is not a new "handshake".
        self.since.retain(|key, _| installed.contains_key(key));
        let mut peers = BTreeMap::new();
        let mut stats = BTreeMap::new();
        for (key, pair) in &installed {
            let complete = pair.inbound && pair.outbound;
            if complete {
                let entry = self.since.entry(*key).or_insert((now, pair.rx_bytes));
                // A change either way: an old epoch's SA that goes takes
                // its bytes with it.
                if pair.rx_bytes != entry.1 {
                    *entry = (now, pair.rx_bytes);
                }
            }
            stats.insert(
                *key,
                PeerStats {
                    last_handshake: self.since.get(key).map(|(at, _)| *at),
                    rx_bytes: pair.rx_bytes,
                    tx_bytes: pair.tx_bytes,
                },
            );
            // A pair short of an SA is reported without it, so the plan
            // upserts it and the missing SA is installed.
            if complete {
                let port = self.ports.get(key).copied().unwrap_or(self.listen_port);
                peers.insert(
                    *key,
                    PeerConfig {
                        endpoint: Some(SocketAddr::new(pair.peer_ip, port)),
                        allowed_ips: pair
                            .out
                            .intersection(&pair.inbound_cidrs)
                            .copied()
                            .collect(),
                        persistent_keepalive: None,
                    },
                );
            }
        }
        // Each outbound SA's reservation stays ahead of its counter.
        let used: Vec<(PublicKey, u32, u64)> = installed
            .iter()
            .filter_map(|(key, pair)| Some((*key, self.spis.get(key)?.outbound, pair.oseq?)))
            .collect();
        if !used.is_empty() {
            let reservations = self.reservations(own_key)?;
            for (key, spi, oseq) in used {
                reservations
                    .cover(&key, spi, oseq)
                    .map_err(|err| ipsec_error(err.to_string()))?;
            }
        }
        self.installed = installed;
        self.sas = sas;
        self.written.clear();
        self.written_sas.clear();
        let exists = self.netlink.link(&self.interface).await?.is_some();
        Ok(DeviceObservation {
            device: exists.then_some(ObservedDevice {
                public_key: Some(own_key),
                listen_port: self.listen_port,
                fwmark: self.fwmark,
                peers,
            }),
            stats,
        })
    }

    async fn apply(&mut self, plan: &DevicePlan, key: &PrivateKey) -> Result<(), DatapathError> {
        let mut first_error = None;
        for (peer, config) in &plan.upsert_peers {
            // IPsec has no keepalive: the plan's is WireGuard's.
            let config = PeerConfig {
                persistent_keepalive: None,
                ..config.clone()
            };
            if let Err(err) = self.upsert(peer, &config, key).await {
                first_error.get_or_insert(err);
            }
        }
        for peer in &plan.remove_peers {
            if let Err(err) = self.remove(peer).await {
                first_error.get_or_insert(err);
            }
        }
        for cidr in &plan.remove_allowed_ips {
            if let Err(err) = self.remove_cidr(*cidr).await {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn remove_strays(&mut self) -> Result<usize, DatapathError> {
        let (sas, policies) = std::mem::take(&mut self.strays);
        let count = sas.len() + policies.len();
        for policy in &policies {
            let cidr = if policy.dir == Some(Direction::Out) {
                policy.dst
            } else {
                policy.src
            };
            if self.written.contains(&cidr) {
                continue;
            }
            if let Some(dir) = policy.dir {
                self.xfrm
                    .delete_policy(policy.src, policy.dst, dir, IF_ID)
                    .await?;
            }
        }
        for sa in sas
            .iter()
            .filter(|sa| !self.written_sas.contains(&(sa.dst, sa.spi)))
        {
            self.xfrm.delete_sa(sa.src, sa.dst, sa.spi).await?;
        }
        if count > 0 {
            info!(
                sas = sas.len(),
                policies = policies.len(),
                "removed IPsec SAs and policies no peer holds"
            );
        }
        Ok(count)
    }
}

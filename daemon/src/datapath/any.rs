//! Static dispatch over the datapaths and routings the agent can run, and
//! the `--datapath auto` choice.

use std::path::PathBuf;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use tracing::info;
use wireseal_core::{
    DatapathKind, DeviceObservation, DevicePlan, LinkSpec, PeerConfig, PublicKey, Step,
};
use wireseal_keymgr::PrivateKey;
use wireseal_netlink::wireguard::WireGuard;
use wireseal_netlink::{Error as NetlinkError, Netlink, WIREGUARD_KIND};

use super::ipsec::IpsecDatapath;
use super::kernel::KernelDatapath;
use super::memory::MemoryNode;
use super::netlink_routing::NetlinkRouting;
use super::userspace::UserspaceDatapath;
use super::{Datapath, DatapathError, NodeAddresses, NodeSet, Routing, RoutingObservation};
use crate::cli::DatapathChoice;

/// Link kind of the userspace datapath's TUN device.
const TUN_KIND: &str = "tun";

/// One of the datapaths.
#[derive(Debug)]
pub enum AnyDatapath {
    /// Kernel WireGuard.
    Kernel(KernelDatapath),
    /// The userspace process.
    Userspace(UserspaceDatapath),
    /// Kernel IPsec (XFRM/ESP); boxed, it holds the node set's SPIs.
    Ipsec(Box<IpsecDatapath>),
    /// In memory only.
    Memory(MemoryNode),
}

/// One of the routings.
#[derive(Debug)]
pub enum AnyRouting {
    /// The kernel's.
    Netlink(NetlinkRouting),
    /// In memory only.
    Memory(MemoryNode),
}

/// What the userspace datapath needs to be found or started.
#[derive(Debug, Clone)]
pub struct UserspaceSettings {
    /// Directory of the UAPI socket.
    pub uapi_dir: PathBuf,
    /// Binary to start when no process answers.
    pub spawn: Option<PathBuf>,
}

/// The IPsec datapath: an XFRM interface `interface` (created here, so a
/// kernel without XFRM interfaces is told at once, not at the first pass).
/// Never falls back: without IPsec in the kernel the agent stops, and
/// nothing is sent in clear. An existing link of another kind (a node that
/// ran WireGuard mode) is refused: switching needs `wireseal cleanup` first.
///
/// # Errors
/// When the kernel cannot carry IPsec mode, or the interface name is taken.
pub async fn select_ipsec(
    interface: &str,
    listen_port: u16,
    fwmark: u32,
    state_dir: &std::path::Path,
) -> Result<(AnyDatapath, String), DatapathError> {
    let netlink = Netlink::connect()?;
    let xfrm = wireseal_netlink::xfrm::Xfrm::connect()?;
    let existing = netlink.link(interface).await?;
    let reason = match existing.as_ref().map(|l| l.kind.as_deref()) {
        Some(Some(wireseal_netlink::XFRM_KIND)) => {
            format!("adopted the existing XFRM interface {interface}")
        }
        Some(kind) => {
            return Err(DatapathError::Ipsec(format!(
                "{interface} exists as a {} link: this node ran WireGuard mode; run `wireseal \
                 cleanup` (or the cleanup DaemonSet) before switching it to IPsec, as \
                 deploy/README.md describes",
                kind.unwrap_or("kindless")
            )));
        }
        None => {
            netlink
                .create_xfrm(interface, super::ipsec::IF_ID)
                .await
                .map_err(|err| {
                    DatapathError::Ipsec(format!(
                        "cannot create the XFRM interface {interface} ({err}): IPsec mode needs \
                         the kernel's xfrm_interface, esp4/esp6 and gcm; nothing is sent in clear"
                    ))
                })?;
            "created the XFRM interface".into()
        }
    };
    Ok((
        AnyDatapath::Ipsec(Box::new(IpsecDatapath::new(
            netlink,
            xfrm,
            interface,
            listen_port,
            fwmark,
            state_dir.to_path_buf(),
        ))),
        format!("--encryption ipsec: {reason}"),
    ))
}

/// Picks the datapath. `auto` adopts whatever already runs (a `wireguard`
/// link, or the userspace process's TUN), else tries to create a kernel
/// WireGuard link and falls back to userspace when the kernel says it has none.
///
/// # Errors
/// When `kernel` is forced and unavailable, or netlink itself fails.
pub async fn select(
    choice: DatapathChoice,
    interface: &str,
    userspace: &UserspaceSettings,
) -> Result<(AnyDatapath, String), DatapathError> {
    let userspace_datapath =
        || UserspaceDatapath::new(interface, &userspace.uapi_dir, userspace.spawn.clone());
    let kernel = || -> Result<KernelDatapath, DatapathError> {
        let netlink = Netlink::connect()?;
        let wireguard = WireGuard::connect()?;
        Ok(KernelDatapath::new(netlink, wireguard, interface))
    };
    match choice {
        DatapathChoice::Memory => Ok((
            AnyDatapath::Memory(MemoryNode::new()),
            "forced with --datapath memory".into(),
        )),
        DatapathChoice::Userspace => Ok((
            AnyDatapath::Userspace(userspace_datapath()),
            "forced with --datapath userspace".into(),
        )),
        DatapathChoice::Kernel => Ok((
            AnyDatapath::Kernel(kernel()?),
            "forced with --datapath kernel".into(),
        )),
        DatapathChoice::Auto => {
            let netlink = Netlink::connect()?;
            let existing = netlink.link(interface).await?;
            match existing.as_ref().and_then(|l| l.kind.as_deref()) {
                Some(WIREGUARD_KIND) => {
                    return Ok((
                        AnyDatapath::Kernel(kernel()?),
                        format!("adopted the existing wireguard link {interface}"),
                    ));
                }
                Some(TUN_KIND) => {
                    return Ok((
                        AnyDatapath::Userspace(userspace_datapath()),
                        format!("adopted the existing userspace device {interface}"),
                    ));
                }
                _ => {}
            }
            match netlink.create_wireguard(interface).await {
                Ok(()) => Ok((
                    AnyDatapath::Kernel(kernel()?),
                    "the kernel has WireGuard".into(),
                )),
                Err(err @ NetlinkError::WireGuardUnsupported { .. }) => {
                    info!(error = %err, "no kernel WireGuard; using the userspace datapath");
                    Ok((
                        AnyDatapath::Userspace(userspace_datapath()),
                        format!("the kernel has no WireGuard ({err})"),
                    ))
                }
                Err(err) => Err(err.into()),
            }
        }
    }
}

impl Datapath for AnyDatapath {
    fn kind(&self) -> DatapathKind {
        match self {
            Self::Kernel(d) => d.kind(),
            Self::Userspace(d) => d.kind(),
            Self::Ipsec(d) => d.kind(),
            Self::Memory(d) => d.kind(),
        }
    }

    async fn ensure_link(&mut self, link: &LinkSpec) -> Result<(), DatapathError> {
        match self {
            Self::Kernel(d) => d.ensure_link(link).await,
            Self::Userspace(d) => d.ensure_link(link).await,
            Self::Ipsec(d) => d.ensure_link(link).await,
            Self::Memory(d) => d.ensure_link(link).await,
        }
    }

    async fn observe(&mut self) -> Result<DeviceObservation, DatapathError> {
        match self {
            Self::Kernel(d) => d.observe().await,
            Self::Userspace(d) => d.observe().await,
            Self::Ipsec(d) => d.observe().await,
            Self::Memory(d) => Datapath::observe(d).await,
        }
    }

    fn set_nodes(&mut self, nodes: &NodeSet<'_>) {
        if let Self::Ipsec(d) = self {
            d.set_nodes(nodes);
        }
    }

    async fn remove_strays(&mut self) -> Result<usize, DatapathError> {
        match self {
            Self::Ipsec(d) => d.remove_strays().await,
            Self::Kernel(_) | Self::Userspace(_) | Self::Memory(_) => Ok(0),
        }
    }

    async fn request_handshake(
        &mut self,
        peers: &BTreeMap<PublicKey, PeerConfig>,
        key: &PrivateKey,
    ) -> Result<(), DatapathError> {
        match self {
            Self::Kernel(d) => d.request_handshake(peers, key).await,
            Self::Userspace(d) => d.request_handshake(peers, key).await,
            Self::Ipsec(d) => d.request_handshake(peers, key).await,
            Self::Memory(d) => Datapath::request_handshake(d, peers, key).await,
        }
    }

    async fn set_alternate_key(&mut self, key: Option<&PrivateKey>) -> Result<(), DatapathError> {
        match self {
            Self::Userspace(d) => d.set_alternate_key(key).await,
            Self::Kernel(_) | Self::Ipsec(_) | Self::Memory(_) => Ok(()),
        }
    }

    async fn apply(&mut self, plan: &DevicePlan, key: &PrivateKey) -> Result<(), DatapathError> {
        match self {
            Self::Kernel(d) => d.apply(plan, key).await,
            Self::Userspace(d) => d.apply(plan, key).await,
            Self::Ipsec(d) => d.apply(plan, key).await,
            Self::Memory(d) => Datapath::apply(d, plan, key).await,
        }
    }
}

impl Routing for AnyRouting {
    async fn observe(&mut self, interface: &str) -> Result<RoutingObservation, DatapathError> {
        match self {
            Self::Netlink(r) => r.observe(interface).await,
            Self::Memory(r) => Routing::observe(r, interface).await,
        }
    }

    async fn ensure_up(&mut self, interface: &str) -> Result<(), DatapathError> {
        match self {
            Self::Netlink(r) => r.ensure_up(interface).await,
            Self::Memory(r) => r.ensure_up(interface).await,
        }
    }

    async fn apply(&mut self, step: &Step) -> Result<(), DatapathError> {
        match self {
            Self::Netlink(r) => r.apply(step).await,
            Self::Memory(r) => Routing::apply(r, step).await,
        }
    }

    async fn path_mtu(&mut self, dst: IpAddr) -> Result<(String, u32), DatapathError> {
        match self {
            Self::Netlink(r) => r.path_mtu(dst).await,
            Self::Memory(r) => r.path_mtu(dst).await,
        }
    }

    async fn pod_link_mtu(
        &mut self,
        exclude: &BTreeSet<String>,
    ) -> Result<Option<(String, u32)>, DatapathError> {
        match self {
            Self::Netlink(r) => r.pod_link_mtu(exclude).await,
            Self::Memory(r) => r.pod_link_mtu(exclude).await,
        }
    }

    fn writes(&self) -> u64 {
        match self {
            Self::Netlink(r) => r.writes(),
            Self::Memory(r) => r.writes(),
        }
    }

    async fn local_addresses(&mut self, tunnel: &str) -> Result<NodeAddresses, DatapathError> {
        match self {
            Self::Netlink(r) => r.local_addresses(tunnel).await,
            Self::Memory(r) => r.local_addresses(tunnel).await,
        }
    }
}

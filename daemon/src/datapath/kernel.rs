//! Kernel WireGuard: a `wireguard` link configured over generic netlink.

use std::collections::BTreeMap;

use wireseal_core::{DatapathKind, DeviceObservation, DevicePlan, LinkSpec, PeerConfig, PublicKey};
use wireseal_keymgr::PrivateKey;
use wireseal_netlink::wireguard::WireGuard;
use wireseal_netlink::{Error as NetlinkError, Netlink, WIREGUARD_KIND};

use super::{Datapath, DatapathError};

/// Keepalive interval set for a moment to make the kernel start a handshake.
const NUDGE_KEEPALIVE: u16 = 25;

/// The kernel WireGuard device `interface`.
pub struct KernelDatapath {
    netlink: Netlink,
    wireguard: WireGuard,
    interface: String,
}

impl std::fmt::Debug for KernelDatapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelDatapath")
            .field("interface", &self.interface)
            .finish_non_exhaustive()
    }
}

impl KernelDatapath {
    /// A kernel datapath for `interface` over these connections.
    #[must_use]
    pub fn new(netlink: Netlink, wireguard: WireGuard, interface: &str) -> Self {
        Self {
            netlink,
            wireguard,
            interface: interface.to_owned(),
        }
    }
}

impl Datapath for KernelDatapath {
    fn kind(&self) -> DatapathKind {
        DatapathKind::Kernel
    }

    async fn ensure_link(&mut self, _link: &LinkSpec) -> Result<(), DatapathError> {
        match self.netlink.link(&self.interface).await? {
            Some(link) if link.kind.as_deref() == Some(WIREGUARD_KIND) => Ok(()),
            Some(link) => Err(NetlinkError::WrongLinkKind {
                iface: self.interface.clone(),
                found: link.kind,
                expected: WIREGUARD_KIND,
            }
            .into()),
            None => Ok(self.netlink.create_wireguard(&self.interface).await?),
        }
    }

    async fn observe(&mut self) -> Result<DeviceObservation, DatapathError> {
        let device = self.wireguard.get_device(&self.interface).await?;
        Ok(device.to_observation())
    }

    /// Kernel WireGuard sends a keepalive at once when a peer's persistent
    /// keepalive goes from off to on, and a keepalive without a session starts
    /// a handshake. So: switch it on, then back to what the peer should have.
    /// A peer that already has a keepalive sends them anyway.
    async fn request_handshake(
        &mut self,
        peers: &BTreeMap<PublicKey, PeerConfig>,
        key: &PrivateKey,
    ) -> Result<(), DatapathError> {
        let quiet: BTreeMap<PublicKey, PeerConfig> = peers
            .iter()
            .filter(|(_, c)| c.persistent_keepalive.is_none())
            .map(|(k, c)| (*k, c.clone()))
            .collect();
        if quiet.is_empty() {
            return Ok(());
        }
        let nudge = DevicePlan {
            upsert_peers: quiet
                .iter()
                .map(|(k, c)| {
                    (
                        *k,
                        PeerConfig {
                            persistent_keepalive: Some(NUDGE_KEEPALIVE),
                            ..c.clone()
                        },
                    )
                })
                .collect(),
            ..DevicePlan::default()
        };
        let restore = DevicePlan {
            upsert_peers: quiet,
            ..DevicePlan::default()
        };
        self.apply(&nudge, key).await?;
        self.apply(&restore, key).await
    }

    async fn apply(&mut self, plan: &DevicePlan, key: &PrivateKey) -> Result<(), DatapathError> {
        if plan.is_empty() {
            return Ok(());
        }
        Ok(self
            .wireguard
            .set_device(&self.interface, plan, key.as_bytes())
            .await?)
    }
}

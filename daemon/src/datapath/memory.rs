//! A datapath and routing that live in memory: they carry out every step of
//! a plan on the core's model of the node (`ObservedState::apply_step`, the
//! same model the property tests check plans against) and carry no traffic. The agent's
//! Kubernetes tests run many agents on one machine with them, and
//! `--datapath memory` lets an operator watch what wireseal would program
//! without touching the node.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use ipnetwork::IpNetwork;
use tokio::sync::Mutex;
use wireseal_core::{DatapathKind, DeviceObservation, DevicePlan, LinkSpec, ObservedState, Step};
use wireseal_keymgr::PrivateKey;

use super::{Datapath, DatapathError, NodeAddresses, Routing, RoutingObservation};

/// MTU the memory underlay reports for every path.
pub const MEMORY_UNDERLAY_MTU: u32 = 1500;

/// The shared in-memory node: one state for the datapath and routing halves.
#[derive(Debug, Clone, Default)]
pub struct MemoryNode {
    state: Arc<Mutex<ObservedState>>,
    /// The addresses the CNI has put on the node's other interfaces; none
    /// unless a test sets them.
    cni_addresses: Arc<Mutex<BTreeSet<IpAddr>>>,
}

impl MemoryNode {
    /// A node with nothing on it.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of everything on the node.
    pub async fn snapshot(&self) -> ObservedState {
        self.state.lock().await.clone()
    }

    /// Plays the CNI: the addresses on the node's interfaces other than the
    /// tunnel link, as [`Routing::local_addresses`] reports them from now on.
    pub async fn set_cni_addresses(&self, addresses: BTreeSet<IpAddr>) {
        *self.cni_addresses.lock().await = addresses;
    }

    /// Carries out one step on the model.
    async fn apply_step(&self, step: &Step) {
        self.state.lock().await.apply_step(step);
    }
}

impl Datapath for MemoryNode {
    fn kind(&self) -> DatapathKind {
        // Reported as userspace: it is not the kernel's, and the status
        // annotation has no third value for a datapath that carries nothing.
        DatapathKind::Userspace
    }

    async fn ensure_link(&mut self, link: &LinkSpec) -> Result<(), DatapathError> {
        let missing = self.state.lock().await.link.is_none();
        if missing {
            // Created bare, as the real datapaths create theirs: the
            // addresses come with the plan.
            self.apply_step(&Step::CreateLink(LinkSpec {
                addresses: BTreeSet::new(),
                ..link.clone()
            }))
            .await;
        }
        Ok(())
    }

    async fn observe(&mut self) -> Result<DeviceObservation, DatapathError> {
        Ok(DeviceObservation {
            device: self.state.lock().await.device.clone(),
            stats: Default::default(),
        })
    }

    async fn apply(&mut self, plan: &DevicePlan, _key: &PrivateKey) -> Result<(), DatapathError> {
        self.apply_step(&Step::Device(plan.clone())).await;
        Ok(())
    }
}

impl Routing for MemoryNode {
    async fn observe(&mut self, _interface: &str) -> Result<RoutingObservation, DatapathError> {
        let state = self.state.lock().await;
        Ok(RoutingObservation {
            link: state.link.clone(),
            routes: state.routes.clone(),
            catch_alls: state.catch_alls.clone(),
            rules: state.rules.clone(),
        })
    }

    async fn ensure_up(&mut self, _interface: &str) -> Result<(), DatapathError> {
        Ok(())
    }

    async fn apply(&mut self, step: &Step) -> Result<(), DatapathError> {
        if matches!(step, Step::CreateLink(_) | Step::Device(_)) {
            return Err(DatapathError::WrongBackend {
                backend: "memory routing",
                step: step.to_string(),
            });
        }
        self.apply_step(step).await;
        Ok(())
    }

    async fn path_mtu(&mut self, _dst: IpAddr) -> Result<(String, u32), DatapathError> {
        Ok(("memory0".to_owned(), MEMORY_UNDERLAY_MTU))
    }

    async fn pod_link_mtu(
        &mut self,
        _exclude: &BTreeSet<String>,
    ) -> Result<Option<(String, u32)>, DatapathError> {
        Ok(None)
    }

    /// A memory node has no interfaces but its tunnel link, so unless a
    /// test plays the CNI ([`MemoryNode::set_cni_addresses`]) it has no
    /// address inside its pod CIDRs: its routes carry no preferred source and
    /// its status says why. The tunnel link's addresses are its model's.
    async fn local_addresses(&mut self, _tunnel: &str) -> Result<NodeAddresses, DatapathError> {
        let tunnel = self
            .state
            .lock()
            .await
            .link
            .iter()
            .flat_map(|link| link.addresses.iter().map(IpNetwork::ip))
            .collect();
        Ok(NodeAddresses {
            elsewhere: self.cni_addresses.lock().await.clone(),
            tunnel,
        })
    }
}

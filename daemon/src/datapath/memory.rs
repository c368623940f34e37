//! A datapath and routing that live in memory: they model the device, routes
//! and rules exactly as the plan describes them (through
//! `ObservedState::apply`) and carry no traffic. The agent's Kubernetes tests
//! run many agents on one machine with them, and `--datapath memory` lets an
//! operator watch what wireseal would program without touching the node.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::Mutex;
use wireseal_core::{
    DatapathKind, DevicePlan, LinkPlan, LinkSpec, ObservedState, Plan, RoutingPlan,
};
use wireseal_keymgr::PrivateKey;

use super::{
    Datapath, DatapathError, DeviceObservation, Routing, RoutingObservation, RoutingPhase,
};

/// MTU the memory underlay reports for every path.
pub const MEMORY_UNDERLAY_MTU: u32 = 1500;

/// The shared in-memory node: one state for the datapath and routing halves.
#[derive(Debug, Clone, Default)]
pub struct MemoryNode {
    state: Arc<Mutex<ObservedState>>,
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
}

impl Datapath for MemoryNode {
    fn kind(&self) -> DatapathKind {
        // Reported as userspace: it is not the kernel's, and the status
        // annotation has no third value for a datapath that carries nothing.
        DatapathKind::Userspace
    }

    async fn ensure_link(&mut self, link: &LinkSpec) -> Result<(), DatapathError> {
        let mut state = self.state.lock().await;
        if state.link.is_none() {
            state.apply(&Plan {
                link: LinkPlan {
                    create: Some(link.clone()),
                    set_mtu: None,
                },
                ..Plan::default()
            });
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
        self.state.lock().await.apply(&Plan {
            device: plan.clone(),
            ..Plan::default()
        });
        Ok(())
    }
}

impl Routing for MemoryNode {
    async fn observe(
        &mut self,
        _interface: &str,
        _table: u32,
        _priority: u32,
    ) -> Result<RoutingObservation, DatapathError> {
        let state = self.state.lock().await;
        Ok(RoutingObservation {
            link: state.link.clone(),
            routes: state.routes.clone(),
            rules: state.rules.clone(),
        })
    }

    async fn ensure_up(&mut self, _interface: &str) -> Result<(), DatapathError> {
        Ok(())
    }

    async fn set_mtu(&mut self, _interface: &str, mtu: u32) -> Result<(), DatapathError> {
        if let Some(link) = self.state.lock().await.link.as_mut() {
            link.mtu = mtu;
        }
        Ok(())
    }

    async fn apply(
        &mut self,
        plan: &RoutingPlan,
        phase: RoutingPhase,
    ) -> Result<(), DatapathError> {
        let part = match phase {
            RoutingPhase::RemoveRules => RoutingPlan {
                remove_rules: plan.remove_rules.clone(),
                ..RoutingPlan::default()
            },
            RoutingPhase::Routes => RoutingPlan {
                add_routes: plan.add_routes.clone(),
                remove_routes: plan.remove_routes.clone(),
                ..RoutingPlan::default()
            },
            RoutingPhase::AddRules => RoutingPlan {
                add_rules: plan.add_rules.clone(),
                ..RoutingPlan::default()
            },
        };
        let mut state = self.state.lock().await;
        // Routing alone must not conjure a device into the model.
        let device = state.device.take();
        state.apply(&Plan {
            routing: part,
            ..Plan::default()
        });
        state.device = device;
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

    /// A memory node has no interfaces, so no address inside its pod CIDRs:
    /// its routes carry no preferred source and its status says why.
    async fn local_addresses(&mut self) -> Result<BTreeSet<IpAddr>, DatapathError> {
        Ok(BTreeSet::new())
    }
}

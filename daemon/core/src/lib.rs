//! The pure core of wireseal.
//!
//! Everything here is a function of its inputs: the Node view built from
//! Kubernetes Node objects, the `wireseal.dev/` annotation codec with its
//! validation, the desired state of the node's WireGuard device, routes and
//! policy rules, and the plan that turns an observed state into the desired one.
//! No I/O, no clock, no randomness; ordered collections only, so the same inputs
//! always give the same plan.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod annotation;
pub mod desired;
pub mod key;
pub mod node;
pub mod plan;
pub mod state;

pub use annotation::{DatapathKind, NodeInputError, NodeStatus};
pub use desired::{
    Desired, MeshConfig, NoHostSource, NodeOutcome, PeerIssue, desired, gate_routes, host_source,
};
pub use key::{KeyError, PublicKey};
pub use node::NodeView;
pub use plan::{DevicePlan, LinkPlan, Plan, RoutingPlan, plan};
pub use state::{
    DesiredState, DeviceSpec, Family, LinkSpec, ObservedDevice, ObservedState, PeerConfig,
    RouteSpec, RuleSpec, host_address,
};

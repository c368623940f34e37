//! The pure core of wireseal.
//!
//! Everything here is a function of its inputs: the Node view built from the
//! fields of a Node (no Kubernetes types: the agent's adapter fills them), the
//! `wireseal.dev/` annotation codec with its validation, the desired state of
//! the node's WireGuard device, routes and policy rules, the plan that turns
//! an observed state into the desired one as ordered steps (and the model of
//! what each step does), and the encryption coverage. No I/O, no clock (time
//! comes in as an argument), no randomness; ordered collections only, so the
//! same inputs always give the same plan.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod annotation;
pub mod claims;
pub mod coverage;
pub mod desired;
pub mod ipsec;
pub mod key;
pub mod node;
pub mod plan;
pub mod rotation;
pub mod state;

pub use annotation::{DatapathKind, Encryption, NodeInputError, NodeStatus};
pub use coverage::{Coverage, HANDSHAKE_FRESH, coverage};
pub use desired::{
    Desired, MeshConfig, NoHostSource, NodeOutcome, PeerIssue, Strict, desired, gate_routes,
    host_source,
};
pub use key::{KeyError, PublicKey};
pub use node::NodeView;
pub use plan::{
    Changes, DevicePlan, LinkChanges, Plan, PlanSummary, RoutingChanges, Step, changes, plan,
};
pub use rotation::NextKey;
pub use state::{
    CatchAll, CatchAllKind, DesiredState, DeviceObservation, DeviceSpec, Family, LinkSpec,
    ObservedDevice, ObservedState, PeerConfig, PeerStats, RouteSpec, RuleSpec, host_address,
};

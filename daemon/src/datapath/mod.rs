//! The seams between the reconcile loop and the node: the WireGuard device
//! ([`Datapath`], one implementation per datapath) and the tunnel interface's
//! MTU and addresses, routes and rules ([`Routing`], shared by both
//! datapaths), and [`execute`], the one place a plan is carried out.

pub mod any;
pub mod ipsec;
pub mod kernel;
pub mod memory;
pub mod netlink_routing;
pub mod userspace;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;

use thiserror::Error;
use wireseal_core::{
    CatchAll, DatapathKind, DeviceObservation, DevicePlan, LinkSpec, NodeView, PeerConfig, Plan,
    PublicKey, RouteSpec, RuleSpec, Step,
};
use wireseal_keymgr::PrivateKey;
use wireseal_netlink::wireguard::uapi::UapiError;

/// A failure of the datapath or of routing, with what was being done.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DatapathError {
    /// A netlink request failed; the error names the operation and object.
    #[error(transparent)]
    Netlink(#[from] wireseal_netlink::Error),
    /// An XFRM request (IPsec mode) failed; the error names the operation.
    #[error(transparent)]
    Xfrm(#[from] wireseal_netlink::xfrm::XfrmError),
    /// IPsec mode cannot program a peer (no SPI, no address, no key).
    #[error("IPsec: {0}")]
    Ipsec(String),
    /// The userspace datapath's socket could not be used.
    #[error("{what} over {}: {source}", socket.display())]
    UapiIo {
        /// What was being done.
        what: &'static str,
        /// The UAPI socket.
        socket: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The userspace datapath refused a request, or its answer is unusable.
    #[error("{what} over {}: {source}", socket.display())]
    Uapi {
        /// What was being done.
        what: &'static str,
        /// The UAPI socket.
        socket: PathBuf,
        /// What was wrong.
        #[source]
        source: UapiError,
    },
    /// No userspace datapath answers, and none may be started.
    #[error(
        "no wireseal-tunnel process answers at {}; start it (its own container in the \
         DaemonSet) or pass --spawn-tunnel PATH",
        socket.display()
    )]
    NoTunnel {
        /// The UAPI socket.
        socket: PathBuf,
    },
    /// The userspace datapath could not be started.
    #[error("starting {}: {source}", binary.display())]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The started userspace datapath did not open its socket in time.
    #[error("the spawned wireseal-tunnel did not open {} within {seconds} s", socket.display())]
    SpawnTimeout {
        /// The UAPI socket.
        socket: PathBuf,
        /// How long it was given.
        seconds: u64,
    },
    /// A step given to the half of the node that does not carry it out.
    #[error("{backend} cannot carry out this step: {step}")]
    WrongBackend {
        /// The backend.
        backend: &'static str,
        /// The step.
        step: String,
    },
}

/// One step of a plan that failed.
#[derive(Debug, Error)]
#[error("{step}: {error}")]
pub struct StepFailure {
    /// The step.
    pub step: Step,
    /// Why it failed.
    #[source]
    pub error: DatapathError,
}

/// Some steps of a plan failed; every other step was carried out.
#[derive(Debug, Default, Error)]
pub struct ApplyError {
    /// Each failed step, in the plan's order.
    pub failures: Vec<StepFailure>,
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} step(s) failed", self.failures.len())?;
        for (n, failure) in self.failures.iter().enumerate() {
            let sep = if n == 0 { ": " } else { "; " };
            write!(f, "{sep}{failure}")?;
        }
        Ok(())
    }
}

/// Carries out `plan` on this node: every step in the plan's order (see
/// `wireseal_core::plan`), the device's steps by `datapath`, the others by
/// `routing`. A failed step does not stop the rest, so one bad peer or route
/// does not block everything else; the next pass plans again from what it
/// observes and retries what failed.
///
/// # Errors
/// [`ApplyError`] naming every step that failed.
pub async fn execute<D: Datapath, R: Routing>(
    plan: &Plan,
    datapath: &mut D,
    routing: &mut R,
    key: &PrivateKey,
) -> Result<(), ApplyError> {
    let mut failed = ApplyError::default();
    for step in plan.steps() {
        let result = match step {
            Step::CreateLink(link) => datapath.ensure_link(link).await,
            Step::Device(device) => datapath.apply(device, key).await,
            _ => routing.apply(step).await,
        };
        if let Err(error) = result {
            failed.failures.push(StepFailure {
                step: step.clone(),
                error,
            });
        }
    }
    if failed.failures.is_empty() {
        Ok(())
    } else {
        Err(failed)
    }
}

/// The WireGuard device of one datapath.
pub trait Datapath: Send {
    /// Which datapath this is.
    fn kind(&self) -> DatapathKind;

    /// Makes sure the tunnel interface exists (creating the kernel link, or
    /// starting or finding the userspace process). Adopts an existing one.
    fn ensure_link(
        &mut self,
        link: &LinkSpec,
    ) -> impl Future<Output = Result<(), DatapathError>> + Send;

    /// Reads the device back.
    fn observe(&mut self) -> impl Future<Output = Result<DeviceObservation, DatapathError>> + Send;

    /// Hands the datapath every Node before it observes: IPsec mode derives
    /// its SPIs and keys from the whole set. The default ignores them.
    fn set_nodes(&mut self, _nodes: &NodeSet<'_>) {}

    /// After a plan ran: removes what the datapath holds that no peer
    /// explains (IPsec mode: the SAs and policies of a departed node or a
    /// replaced key, kept until their successors were in place). Returns
    /// how many objects went. The default has nothing to remove.
    fn remove_strays(&mut self) -> impl Future<Output = Result<usize, DatapathError>> + Send {
        async { Ok(0) }
    }

    /// Asks for a handshake with these peers (their desired configuration
    /// given), which have none yet. Routes towards a peer wait for its first
    /// handshake, so a datapath that only starts one when it has a packet to
    /// send must be asked. The default does nothing.
    fn request_handshake(
        &mut self,
        _peers: &BTreeMap<PublicKey, PeerConfig>,
        _key: &PrivateKey,
    ) -> impl Future<Output = Result<(), DatapathError>> + Send {
        async { Ok(()) }
    }

    /// Sets (`None`: removes) a second private key whose handshakes the
    /// datapath answers too, so a key rotation's switch costs no handshake
    /// whichever side switches first. Only wireseal's userspace datapath has
    /// one; the default does nothing.
    fn set_alternate_key(
        &mut self,
        _key: Option<&PrivateKey>,
    ) -> impl Future<Output = Result<(), DatapathError>> + Send {
        async { Ok(()) }
    }

    /// Carries out a device step: settings, peer upserts and removals, in
    /// that order. `key` is the private key to set when the plan asks for it.
    fn apply(
        &mut self,
        plan: &DevicePlan,
        key: &PrivateKey,
    ) -> impl Future<Output = Result<(), DatapathError>> + Send;
}

/// The cluster as a datapath that derives its keys from it (IPsec mode)
/// needs it.
#[derive(Debug, Clone, Copy)]
pub struct NodeSet<'a> {
    /// This node's name.
    pub own: &'a str,
    /// This node's key (its Node shows it only once the first pass published it).
    pub own_key: &'a PublicKey,
    /// IPsec mode: this node's key epochs.
    pub epochs: wireseal_core::ipsec::Epochs,
    /// Every Node, by name.
    pub nodes: &'a BTreeMap<String, NodeView>,
}

/// What routing reads back: the tunnel interface and wireseal's table and rules.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RoutingObservation {
    /// The tunnel interface with its addresses (link-local ones left out),
    /// if it exists.
    pub link: Option<LinkSpec>,
    /// Routes in wireseal's table.
    pub routes: BTreeMap<ipnetwork::IpNetwork, RouteSpec>,
    /// Routes in the catch-all table (strict mode).
    pub catch_alls: BTreeMap<ipnetwork::IpNetwork, CatchAll>,
    /// wireseal's rules.
    pub rules: BTreeSet<RuleSpec>,
}

/// The interface MTU and addresses, routes and policy rules, the same for
/// both datapaths.
pub trait Routing: Send {
    /// Reads back the tunnel interface, wireseal's routes, catch-alls and rules.
    fn observe(
        &mut self,
        interface: &str,
    ) -> impl Future<Output = Result<RoutingObservation, DatapathError>> + Send;

    /// Sets the tunnel interface up (the userspace datapath creates it down).
    fn ensure_up(
        &mut self,
        interface: &str,
    ) -> impl Future<Output = Result<(), DatapathError>> + Send;

    /// Carries out one link, address, route or rule step of a plan.
    fn apply(&mut self, step: &Step) -> impl Future<Output = Result<(), DatapathError>> + Send;

    /// The device and MTU of the path the kernel would use to reach `dst`.
    fn path_mtu(
        &mut self,
        dst: IpAddr,
    ) -> impl Future<Output = Result<(String, u32), DatapathError>> + Send;

    /// The pod-facing link (veth or bridge, other than `exclude`) with the
    /// largest MTU: what the CNI gave its pods.
    fn pod_link_mtu(
        &mut self,
        exclude: &BTreeSet<String>,
    ) -> impl Future<Output = Result<Option<(String, u32)>, DatapathError>> + Send;

    /// Write requests sent to the kernel so far (link, routes, rules; reads
    /// not counted), so each pass can log what it cost. The default: none.
    fn writes(&self) -> u64 {
        0
    }

    /// The node's addresses that can be a route's preferred source, read
    /// anew on every call: the CNI adds and removes them (flannel's cni0
    /// appears with the first pod). Those on the tunnel link `tunnel`
    /// (wireseal's copies) apart from the others, as the choice of the host
    /// source treats them apart. Leaves out a source the kernel refused since
    /// the addresses last changed.
    fn local_addresses(
        &mut self,
        tunnel: &str,
    ) -> impl Future<Output = Result<NodeAddresses, DatapathError>> + Send;
}

/// The node's usable addresses, as candidates for the host source.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeAddresses {
    /// On every interface but the tunnel link: the CNI's.
    pub elsewhere: BTreeSet<IpAddr>,
    /// On the tunnel link: wireseal's copies of earlier host sources.
    pub tunnel: BTreeSet<IpAddr>,
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use wireseal_core::{Changes, DeviceObservation, LinkChanges, RoutingChanges};

    use super::*;

    /// Records every call, in order; refuses the routes to `refuse`.
    #[derive(Default)]
    struct Recorder {
        calls: Vec<String>,
        refuse: Option<ipnetwork::IpNetwork>,
    }

    impl Datapath for Recorder {
        fn kind(&self) -> DatapathKind {
            DatapathKind::Userspace
        }
        async fn ensure_link(&mut self, link: &LinkSpec) -> Result<(), DatapathError> {
            self.calls.push(format!("datapath: create {}", link.name));
            Ok(())
        }
        async fn observe(&mut self) -> Result<DeviceObservation, DatapathError> {
            Ok(DeviceObservation::default())
        }
        async fn apply(
            &mut self,
            plan: &DevicePlan,
            _key: &PrivateKey,
        ) -> Result<(), DatapathError> {
            self.calls
                .push(format!("datapath: {}", Step::Device(plan.clone())));
            Ok(())
        }
    }

    impl Routing for Recorder {
        async fn observe(&mut self, _interface: &str) -> Result<RoutingObservation, DatapathError> {
            Ok(RoutingObservation::default())
        }
        async fn ensure_up(&mut self, _interface: &str) -> Result<(), DatapathError> {
            Ok(())
        }
        async fn apply(&mut self, step: &Step) -> Result<(), DatapathError> {
            self.calls.push(format!("routing: {step}"));
            match step {
                Step::ReplaceRoute(route) if Some(route.dst) == self.refuse => {
                    Err(wireseal_netlink::Error::LinkNotFound {
                        iface: route.dev.clone(),
                    }
                    .into())
                }
                _ => Ok(()),
            }
        }
        async fn path_mtu(&mut self, _dst: IpAddr) -> Result<(String, u32), DatapathError> {
            Ok(("eth0".into(), 1500))
        }
        async fn pod_link_mtu(
            &mut self,
            _exclude: &BTreeSet<String>,
        ) -> Result<Option<(String, u32)>, DatapathError> {
            Ok(None)
        }
        async fn local_addresses(&mut self, _tunnel: &str) -> Result<NodeAddresses, DatapathError> {
            Ok(NodeAddresses::default())
        }
    }

    fn key(i: u8) -> PublicKey {
        PrivateKey::from_bytes([i; 32]).unwrap().public_key()
    }

    fn route(dst: &str) -> RouteSpec {
        RouteSpec {
            dst: dst.parse().unwrap(),
            dev: "wireseal0".into(),
            mtu: 1420,
            src: None,
        }
    }

    #[tokio::test]
    async fn steps_go_in_plan_order_to_their_half_and_a_failure_stops_nothing() {
        let endpoint: SocketAddr = "192.0.2.11:51830".parse().unwrap();
        let plan = Changes {
            link: LinkChanges {
                name: "wireseal0".into(),
                set_mtu: Some(1400),
                ..LinkChanges::default()
            },
            device: DevicePlan {
                upsert_peers: [(
                    key(1),
                    PeerConfig {
                        endpoint: Some(endpoint),
                        ..PeerConfig::default()
                    },
                )]
                .into(),
                remove_peers: [key(2)].into(),
                ..DevicePlan::default()
            },
            routing: RoutingChanges {
                add_routes: [
                    (route("10.244.1.0/24").dst, route("10.244.1.0/24")),
                    (route("10.244.3.0/24").dst, route("10.244.3.0/24")),
                ]
                .into(),
                remove_routes: ["10.244.2.0/24".parse().unwrap()].into(),
                ..RoutingChanges::default()
            },
        }
        .into_plan();
        let mut datapath = Recorder::default();
        let mut routing = Recorder {
            refuse: Some(route("10.244.1.0/24").dst),
            ..Recorder::default()
        };
        let private = PrivateKey::from_bytes([9; 32]).unwrap();
        let err = execute(&plan, &mut datapath, &mut routing, &private)
            .await
            .unwrap_err();
        assert_eq!(
            routing.calls,
            [
                "routing: set mtu 1400 on wireseal0",
                "routing: replace route 10.244.1.0/24 dev wireseal0 mtu 1420",
                "routing: replace route 10.244.3.0/24 dev wireseal0 mtu 1420",
                "routing: remove route 10.244.2.0/24",
            ]
        );
        assert_eq!(datapath.calls.len(), 2, "{:?}", datapath.calls);
        assert!(datapath.calls[0].contains("set peers"));
        assert!(datapath.calls[1].contains("remove peers"));
        // The failure names its step and the cause; the steps after it ran.
        assert_eq!(err.failures.len(), 1);
        assert_eq!(
            err.to_string(),
            "1 step(s) failed: replace route 10.244.1.0/24 dev wireseal0 mtu 1420: \
             no link named wireseal0"
        );
        assert!(matches!(
            err.failures[0].error,
            DatapathError::Netlink(wireseal_netlink::Error::LinkNotFound { .. })
        ));
    }
}

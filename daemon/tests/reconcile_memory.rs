//! The reconcile loop's passes on the in-memory datapath, with the test
//! playing the CNI: the host source goes on the tunnel link, follows the
//! CNI's address, and stays no longer than it lies inside the pod CIDRs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use clap::Parser as _;
use ipnetwork::IpNetwork;
use tokio::sync::watch;
use wireseal::channels::{ClusterView, Outputs};
use wireseal::cli::{Cli, Command};
use wireseal::config::Config;
use wireseal::datapath::memory::MemoryNode;
use wireseal::reconcile::{Reconciler, Timing};
use wireseal::status::SharedStatus;
use wireseal_core::NodeView;
use wireseal_keymgr::PrivateKey;

fn config() -> Config {
    let cli = Cli::try_parse_from(["wireseal", "agent", "--node-name", "a"]).unwrap();
    let Command::Agent(agent) = cli.command else {
        panic!("not the agent command")
    };
    Config::from_args(&agent, None).unwrap()
}

/// This node "a" with pod CIDR `cidr`, and a peer "b".
fn view(cidr: &str) -> Arc<ClusterView> {
    let peer = PrivateKey::from_bytes([9; 32]).unwrap().public_key();
    let nodes = [
        NodeView {
            name: "a".into(),
            pod_cidrs: vec![cidr.parse().unwrap()],
            ..NodeView::default()
        },
        NodeView {
            name: "b".into(),
            pod_cidrs: vec!["10.244.1.0/24".parse().unwrap()],
            public_key: Some(peer),
            endpoint: Some("192.0.2.11:51830".parse().unwrap()),
            ..NodeView::default()
        },
    ];
    Arc::new(ClusterView {
        nodes: nodes.into_iter().map(|n| (n.name.clone(), n)).collect(),
        synced: true,
        ..ClusterView::default()
    })
}

fn set<T: std::str::FromStr + Ord>(items: &[&str]) -> BTreeSet<T>
where
    T::Err: std::fmt::Debug,
{
    items.iter().map(|i| i.parse().unwrap()).collect()
}

/// An agent on `node`; the returned sender changes its Node list.
fn agent(
    node: &MemoryNode,
    cidr: &str,
) -> (
    Reconciler<MemoryNode, MemoryNode>,
    watch::Sender<Arc<ClusterView>>,
    SharedStatus,
) {
    let (view_tx, view_rx) = watch::channel(view(cidr));
    let (outputs, _) = watch::channel(Outputs::default());
    let status = SharedStatus::default();
    let reconciler = Reconciler::new(
        config(),
        // The same key on every start, as the key file gives it.
        PrivateKey::from_bytes([7; 32]).unwrap(),
        node.clone(),
        node.clone(),
        view_rx,
        outputs,
        status.clone(),
        Timing::default(),
    );
    (reconciler, view_tx, status)
}

async fn link_addresses(node: &MemoryNode) -> BTreeSet<IpNetwork> {
    node.snapshot().await.link.unwrap().addresses
}

#[tokio::test]
async fn the_host_source_goes_on_the_tunnel_link_and_follows_the_cni() {
    let node = MemoryNode::new();
    node.set_cni_addresses(set(&["192.0.2.10", "10.244.0.1"]))
        .await;
    let (mut reconciler, view_tx, status) = agent(&node, "10.244.0.0/24");
    reconciler.pass().await.unwrap();
    assert_eq!(link_addresses(&node).await, set(&["10.244.0.1/32"]));
    assert_eq!(
        status.get().host_sources,
        vec!["10.244.0.1".parse::<IpAddr>().unwrap()]
    );

    // A restarted agent adopts the link as it is.
    let before = node.snapshot().await;
    let (mut restarted, _view, _) = agent(&node, "10.244.0.0/24");
    restarted.pass().await.unwrap();
    assert_eq!(node.snapshot().await, before);

    // The node gets another pod CIDR and the CNI its gateway in it: the new
    // address comes, the old one (outside the new CIDR) goes.
    node.set_cni_addresses(set(&["192.0.2.10", "10.244.5.1"]))
        .await;
    view_tx.send_replace(view("10.244.5.0/24"));
    reconciler.pass().await.unwrap();
    assert_eq!(link_addresses(&node).await, set(&["10.244.5.1/32"]));

    // The CNI's address goes (a ptp CNI's goes with the node's last pod):
    // the copy stays the source, so host traffic keeps working.
    node.set_cni_addresses(set(&["192.0.2.10"])).await;
    reconciler.pass().await.unwrap();
    assert_eq!(link_addresses(&node).await, set(&["10.244.5.1/32"]));
    assert_eq!(
        status.get().host_sources,
        vec!["10.244.5.1".parse::<IpAddr>().unwrap()]
    );

    // The pod CIDR changes and the CNI has no address in the new one: the
    // copy is outside it and goes, and the status says why host traffic to
    // other nodes' pods is now dropped.
    view_tx.send_replace(view("10.244.6.0/24"));
    reconciler.pass().await.unwrap();
    assert_eq!(link_addresses(&node).await, BTreeSet::new());
    let now = status.get();
    assert!(now.host_sources.is_empty());
    assert!(
        now.host_source_warning.as_deref().is_some_and(
            |w| w.starts_with("node a has no IPv4 address inside its pod CIDRs 10.244.6.0/24")
        ),
        "{now:?}"
    );
}

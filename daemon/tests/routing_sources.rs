//! The agent's routing layer and the routes' preferred source, against a real
//! kernel in a network namespace of each test's own. Needs root: ignored by
//! default, and failing (never passing) when run without it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

use wireseal::datapath::Routing as _;
use wireseal::datapath::netlink_routing::NetlinkRouting;
use wireseal_core::{RouteSpec, Step};
use wireseal_netlink::{Netlink, RoutingIds};
use wireseal_netns::Netns;

const IDS: RoutingIds = RoutingIds {
    table: 51830,
    priority: 90,
    catch_all_table: 51831,
};

fn route(src: Option<&str>) -> RouteSpec {
    RouteSpec {
        dst: "10.244.1.0/24".parse().unwrap(),
        dev: "lo".into(),
        mtu: 1400,
        src: src.map(|s| s.parse().unwrap()),
    }
}

fn adding(route: &RouteSpec) -> Step {
    Step::ReplaceRoute(route.clone())
}

#[test]
#[ignore = "needs root and network namespaces"]
fn a_refused_source_never_leaves_a_destination_without_its_route() {
    Netns::new().run(|| async {
        let netlink = Netlink::connect().unwrap();
        netlink.set_up("lo").await.unwrap();
        let mut routing = NetlinkRouting::new(netlink, IDS, 0x1000_0000);
        let found = routing.local_addresses("wireseal0").await.unwrap();
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(found.elsewhere.contains(&loopback), "{found:?}");

        // A source that is not (any more) an address here: the kernel says
        // EINVAL; the route goes in without it and the pass does not fail.
        routing
            .apply(&adding(&route(Some("10.244.0.9"))))
            .await
            .unwrap();
        let observed = routing.observe("lo").await.unwrap();
        assert_eq!(observed.routes.values().collect::<Vec<_>>(), [&route(None)]);

        // A source that is an address here goes in as it is, replacing.
        routing
            .apply(&adding(&route(Some("127.0.0.1"))))
            .await
            .unwrap();
        let observed = routing.observe("lo").await.unwrap();
        assert_eq!(
            observed.routes.values().collect::<Vec<_>>(),
            [&route(Some("127.0.0.1"))]
        );

        // Any other failure still fails the step, with what was refused.
        let orphan = RouteSpec {
            dev: "nosuchdev0".into(),
            ..route(Some("127.0.0.1"))
        };
        let err = routing.apply(&adding(&orphan)).await.unwrap_err();
        assert!(format!("{err}").contains("nosuchdev0"), "{err}");
        // 10.244.0.9 was never an address here: nothing is held back.
        assert_eq!(routing.local_addresses("wireseal0").await.unwrap(), found);
    });
}

/// The tunnel link's own addresses are wireseal's copies of the CNI's:
/// reported apart from the others, so the copy can stand in for the CNI's
/// address while it is away, and never pass for one of the CNI's.
#[test]
#[ignore = "needs root and network namespaces"]
fn the_tunnel_link_s_own_copy_is_reported_apart() {
    Netns::new().run(|| async {
        let netlink = Netlink::connect().unwrap();
        netlink.set_up("lo").await.unwrap();
        let mut routing = NetlinkRouting::new(netlink, IDS, 0x1000_0000);
        let run = |args: &[&str]| {
            let out = std::process::Command::new("ip")
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success(), "ip {args:?}: {out:?}");
        };
        run(&["tuntap", "add", "dev", "wireseal0", "mode", "tun"]);
        run(&["link", "add", "cni0", "type", "bridge"]);
        run(&["addr", "add", "10.244.0.1/24", "dev", "cni0"]);
        let copy: ipnetwork::IpNetwork = "10.244.0.1/32".parse().unwrap();
        routing
            .apply(&Step::AddAddress {
                link: "wireseal0".into(),
                address: copy,
            })
            .await
            .unwrap();
        let gateway: IpAddr = "10.244.0.1".parse().unwrap();
        let found = routing.local_addresses("wireseal0").await.unwrap();
        assert!(found.elsewhere.contains(&gateway), "{found:?}");
        assert_eq!(found.tunnel, [gateway].into());

        // The CNI's goes; the copy is still reported, as the tunnel's.
        run(&["addr", "del", "10.244.0.1/24", "dev", "cni0"]);
        let found = routing.local_addresses("wireseal0").await.unwrap();
        assert!(!found.elsewhere.contains(&gateway), "{found:?}");
        assert_eq!(found.tunnel, [gateway].into());
        let observed = routing.observe("wireseal0").await.unwrap();
        assert_eq!(observed.link.unwrap().addresses, [copy].into());
        routing
            .apply(&Step::RemoveAddress {
                link: "wireseal0".into(),
                address: copy,
            })
            .await
            .unwrap();
        let observed = routing.observe("wireseal0").await.unwrap();
        assert!(observed.link.unwrap().addresses.is_empty());
        assert!(
            routing
                .local_addresses("wireseal0")
                .await
                .unwrap()
                .tunnel
                .is_empty()
        );
    });
}

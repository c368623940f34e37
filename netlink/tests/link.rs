//! Links, the WireGuard probe and the underlay MTU, in a private namespace.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

use wireseal_core::{DevicePlan, Family};
use wireseal_netlink::{Errno, Error, Netlink, WireGuard};
use wireseal_netns::Netns;

#[test]
#[ignore = "needs root and network namespaces"]
fn find_set_and_delete_links() {
    let ns = Netns::new();
    ns.run_ip(&[
        "link", "add", "wsa0", "type", "veth", "peer", "name", "wsa1",
    ]);
    ns.run(|| async {
        let nl = Netlink::connect().unwrap();
        let link = nl.link("wsa0").await.unwrap().expect("wsa0 exists");
        assert_eq!(link.name, "wsa0");
        assert_eq!(link.kind.as_deref(), Some("veth"));
        assert_eq!(link.mtu, 1500);
        assert!(!link.up);
        assert!(nl.link("nosuch0").await.unwrap().is_none());
        assert!(matches!(
            nl.link("much-too-long-name").await,
            Err(Error::InvalidName { .. })
        ));

        nl.set_mtu("wsa0", 1420).await.unwrap();
        assert!(nl.ensure_up("wsa0").await.unwrap());
        let writes = nl.writes();
        assert!(!nl.ensure_up("wsa0").await.unwrap(), "already up");
        assert_eq!(nl.writes(), writes, "an up link is not written again");
        nl.set_up("wsa0").await.unwrap();
        let link = nl.link("wsa0").await.unwrap().unwrap();
        assert_eq!((link.mtu, link.up), (1420, true));
        let shown = ns.run_ip(&["link", "show", "wsa0"]);
        assert!(
            shown.contains("mtu 1420") && shown.contains("MULTICAST,UP"),
            "{shown}"
        );
        assert_eq!(
            nl.link_by_index(link.index).await.unwrap().unwrap().name,
            "wsa0"
        );

        assert!(matches!(
            nl.set_mtu("nosuch0", 1400).await,
            Err(Error::LinkNotFound { .. })
        ));
        nl.delete_link("wsa0").await.unwrap();
        nl.delete_link("wsa0").await.unwrap();
        assert!(nl.link("wsa0").await.unwrap().is_none());
        assert!(
            !ns.run_ip(&["link", "show"]).contains("wsa1"),
            "deleting a veth deletes its peer"
        );
    });
}

#[test]
#[ignore = "needs root and network namespaces"]
fn creating_a_wireguard_link_here_reports_unsupported() {
    let ns = Netns::new();
    // This host's kernel has no WireGuard: `ip link add x type wireguard`
    // fails with "Unknown device type" (EOPNOTSUPP).
    ns.run(|| async {
        let nl = Netlink::connect().unwrap();
        match nl.create_wireguard("wireseal0").await {
            Err(Error::WireGuardUnsupported { iface, errno }) => {
                assert_eq!(iface, "wireseal0");
                assert_eq!(errno, Errno(libc::EOPNOTSUPP));
            }
            other => panic!("expected WireGuardUnsupported, got {other:?}"),
        }
        assert!(nl.link("wireseal0").await.unwrap().is_none());
    });
}

#[test]
#[ignore = "needs root and network namespaces"]
fn wireguard_genetlink_on_this_host_reports_unsupported() {
    let ns = Netns::new();
    ns.run(|| async {
        let wg = WireGuard::connect().unwrap();
        match wg.get_device("wireseal0").await {
            Err(Error::WireGuardUnsupported { iface, errno }) => {
                assert_eq!(iface, "wireseal0");
                assert_eq!(errno, Errno(libc::ENOENT), "no `wireguard` genl family");
            }
            other => panic!("expected WireGuardUnsupported, got {other:?}"),
        }
        let plan = DevicePlan {
            listen_port: Some(51830),
            ..DevicePlan::default()
        };
        let err = wg
            .set_device("wireseal0", &plan, &[7; 32])
            .await
            .unwrap_err();
        assert!(matches!(err, Error::WireGuardUnsupported { .. }), "{err:?}");
        assert!(
            !format!("{err:?}{err}").contains("7, 7, 7"),
            "key material in the error"
        );
        assert_eq!(wg.writes(), 1);
        // An empty plan sends nothing, so it cannot fail.
        wg.set_device("wireseal0", &DevicePlan::default(), &[7; 32])
            .await
            .unwrap();
        assert_eq!(wg.writes(), 1);
    });
}

#[test]
#[ignore = "needs root and network namespaces"]
fn creating_wireguard_over_another_kind_is_refused_not_adopted() {
    let ns = Netns::new();
    ns.run_ip(&[
        "link",
        "add",
        "wireseal0",
        "type",
        "veth",
        "peer",
        "name",
        "wsb1",
    ]);
    ns.run(|| async {
        let nl = Netlink::connect().unwrap();
        // The kernel finds the name taken (EEXIST) before it looks at the
        // kind, with or without WireGuard; we then find a veth.
        match nl.create_wireguard("wireseal0").await {
            Err(Error::WrongLinkKind {
                iface,
                found,
                expected,
            }) => {
                assert_eq!(
                    (iface.as_str(), found.as_deref(), expected),
                    ("wireseal0", Some("veth"), "wireguard")
                );
            }
            other => panic!("expected WrongLinkKind, got {other:?}"),
        }
    });
}

#[test]
#[ignore = "needs root and network namespaces"]
fn underlay_mtu_follows_route_then_device() {
    let ns = Netns::new();
    ns.veth("wsu0", "wsu1");
    ns.run_ip(&["link", "set", "wsu0", "mtu", "1400"]);
    ns.run_ip(&[
        "route",
        "add",
        "198.51.100.0/24",
        "dev",
        "wsu0",
        "mtu",
        "1300",
    ]);
    ns.run(|| async {
        let nl = Netlink::connect().unwrap();
        let dst: IpAddr = "192.0.2.2".parse().unwrap();
        // The veth peer's address is local in this namespace; a remote on the
        // same subnet goes out of wsu0.
        let remote: IpAddr = "192.0.2.77".parse().unwrap();
        let path = nl.underlay_path(remote, Some(0x1000_0000)).await.unwrap();
        assert_eq!((path.dev.as_str(), path.mtu), ("wsu0", 1400));
        let v6: IpAddr = "2001:db8::77".parse().unwrap();
        assert_eq!(nl.underlay_mtu(v6, None).await.unwrap(), 1400);
        // A route MTU wins over the device MTU.
        let via_route: IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!(nl.underlay_mtu(via_route, None).await.unwrap(), 1300);
        assert_eq!(
            wireseal_core::state::tunnel_mtu(1400, Family::V4),
            Some(1340)
        );

        let nowhere: IpAddr = "203.0.113.9".parse().unwrap();
        assert!(matches!(
            nl.underlay_mtu(nowhere, None).await,
            Err(Error::NoRoute { .. })
        ));
        let none = nl.default_route_path(Family::V4).await;
        assert!(matches!(none, Err(Error::NoRoute { .. })), "{none:?}");
        ns.run_ip(&[
            "route",
            "add",
            "default",
            "via",
            "192.0.2.254",
            "dev",
            "wsu0",
        ]);
        let default = nl.default_route_path(Family::V4).await.unwrap();
        assert_eq!((default.dev.as_str(), default.mtu), ("wsu0", 1400));
        assert_eq!(nl.underlay_mtu(nowhere, None).await.unwrap(), 1400);
        let _ = dst;
    });
}

//! Listing the node's addresses, and adding and deleting the tunnel link's,
//! against a real kernel in a private namespace.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use wireseal_core::{Changes, LinkChanges, RouteSpec, RoutingChanges, Step, host_address};
use wireseal_netlink::{AddressInfo, Error, Netlink, RoutingIds};
use wireseal_netns::Netns;

#[test]
#[ignore = "needs root and network namespaces"]
fn every_address_is_listed_with_its_interface_and_usability() {
    let ns = Netns::new();
    ns.veth("wsa0", "wsa1");
    // A pod gateway as ptp CNIs put it on every pod veth, and as a bridge
    // CNI puts it on its bridge: the same /32 on two devices is listed twice.
    ns.run_ip(&["addr", "add", "10.244.0.1/32", "dev", "wsa0"]);
    ns.run_ip(&["addr", "add", "10.244.0.1/32", "dev", "wsa1"]);
    // An IPv6 address still in duplicate address detection: DAD with 10
    // probes a second apart keeps it tentative for the whole test.
    ns.run_ip(&[
        "link", "add", "wsa2", "type", "veth", "peer", "name", "wsa3",
    ]);
    ns.run(|| async {
        // /proc/sys/net is the namespace's own for a thread inside it.
        std::fs::write("/proc/sys/net/ipv6/conf/wsa2/accept_dad", "1").unwrap();
        std::fs::write("/proc/sys/net/ipv6/conf/wsa2/dad_transmits", "10").unwrap();
    });
    ns.run_ip(&["link", "set", "wsa2", "up"]);
    ns.run_ip(&["link", "set", "wsa3", "up"]);
    ns.run_ip(&["addr", "add", "fd00:244::1/64", "dev", "wsa2"]);

    let (addresses, wsa0, wsa1, wsa2) = ns.run(|| async {
        let nl = Netlink::connect().unwrap();
        let index = |name: &'static str| {
            let nl = &nl;
            async move { nl.link(name).await.unwrap().unwrap().index }
        };
        (
            nl.addresses().await.unwrap(),
            index("wsa0").await,
            index("wsa1").await,
            index("wsa2").await,
        )
    });
    let find = |index: u32, ip: &str| -> AddressInfo {
        let ip: IpAddr = ip.parse().unwrap();
        *addresses
            .iter()
            .find(|a| a.index == index && a.address == ip)
            .unwrap_or_else(|| panic!("{ip} on #{index} missing from {addresses:#?}"))
    };
    let loopback = find(1, "127.0.0.1");
    assert_eq!(loopback.prefix_len, 8);
    assert_eq!(find(wsa0, "192.0.2.1").prefix_len, 24);
    assert_eq!(find(wsa1, "192.0.2.2").prefix_len, 24);
    for index in [wsa0, wsa1] {
        let gateway = find(index, "10.244.0.1");
        assert_eq!(gateway.prefix_len, 32);
        assert!(gateway.usable);
    }
    let v6 = find(wsa0, "2001:db8::1");
    assert_eq!(v6.prefix_len, 64);
    assert!(v6.usable, "added with nodad: usable at once");
    let tentative = find(wsa2, "fd00:244::1");
    assert!(!tentative.usable, "in DAD: {tentative:?}");
    // IPv4 first, then IPv6, each in the kernel's order.
    let first_v6 = addresses.iter().position(|a| a.address.is_ipv6()).unwrap();
    assert!(addresses[..first_v6].iter().all(|a| a.address.is_ipv4()));
    assert!(addresses[first_v6..].iter().all(|a| a.address.is_ipv6()));
}

#[test]
#[ignore = "needs root and network namespaces"]
fn adding_and_deleting_an_address_is_idempotent_and_listed_per_link() {
    let ns = Netns::new();
    // The userspace datapath's link is a TUN device; a persistent one stands in.
    ns.run_ip(&["tuntap", "add", "dev", "wsad0", "mode", "tun"]);
    ns.run_ip(&["link", "set", "wsad0", "up"]);
    ns.veth("wsa0", "wsa1");
    let v4: IpNetwork = "10.244.0.1/32".parse().unwrap();
    let wide: IpNetwork = "10.244.0.1/24".parse().unwrap();
    let v6: IpNetwork = "fd00:244::1/128".parse().unwrap();

    ns.run(|| async {
        let nl = Netlink::connect().unwrap();
        let index = nl.link("wsad0").await.unwrap().unwrap().index;
        for address in [v4, v4, v6, v6] {
            nl.add_address("wsad0", address).await.unwrap();
        }
        assert_eq!(
            nl.writes(),
            4,
            "each add reaches the kernel; EEXIST is success"
        );
        let listed = nl.addresses_of(index).await.unwrap();
        let ours: Vec<(IpAddr, u8, bool)> = listed
            .iter()
            .filter(|a| !wireseal_netlink::is_link_local(a.address))
            .map(|a| (a.address, a.prefix_len, a.usable))
            .collect();
        assert_eq!(
            ours,
            vec![(v4.ip(), 32, true), (v6.ip(), 128, true)],
            "listed once each, IPv6 usable at once (no DAD): {listed:#?}"
        );
        assert!(listed.iter().all(|a| a.index == index));
        let shown = ns.run_ip(&["addr", "show", "dev", "wsad0"]);
        assert!(
            shown.contains("inet 10.244.0.1/32 scope global wsad0"),
            "{shown}"
        );
        assert!(
            shown.contains("inet6 fd00:244::1/128 scope global nodad noprefixroute"),
            "{shown}"
        );
        let v6_routes = ns.run_ip(&["-6", "route", "show", "table", "all", "dev", "wsad0"]);
        assert!(
            v6_routes.lines().all(|l| !l.starts_with("fd00:244::1 ")),
            "no prefix route: {v6_routes}"
        );

        // The same address with another prefix length is another address:
        // adding and deleting each leaves the other alone.
        nl.add_address("wsad0", wide).await.unwrap();
        nl.delete_address("wsad0", v4).await.unwrap();
        nl.delete_address("wsad0", v4).await.unwrap();
        let left: Vec<(IpAddr, u8)> = nl
            .addresses_of(index)
            .await
            .unwrap()
            .iter()
            .filter(|a| a.address.is_ipv4())
            .map(|a| (a.address, a.prefix_len))
            .collect();
        assert_eq!(left, vec![(wide.ip(), 24)]);
        for address in [wide, v6, v6] {
            nl.delete_address("wsad0", address).await.unwrap();
        }
        let left = nl.addresses_of(index).await.unwrap();
        assert!(
            left.iter()
                .all(|a| wireseal_netlink::is_link_local(a.address)),
            "{left:#?}"
        );

        // Deleting from a link that is gone is success (the addresses went
        // with it); adding to it names the link.
        nl.delete_address("wsnone0", v4).await.unwrap();
        let err = nl.add_address("wsnone0", v4).await.unwrap_err();
        assert!(
            matches!(&err, Error::LinkNotFound { iface } if iface == "wsnone0"),
            "{err}"
        );
        // Another link's addresses are not listed as this one's.
        let wsa0 = nl.link("wsa0").await.unwrap().unwrap().index;
        assert!(
            nl.addresses_of(wsa0)
                .await
                .unwrap()
                .iter()
                .any(|a| a.address == "192.0.2.1".parse::<IpAddr>().unwrap())
        );
    });
}

#[test]
#[ignore = "needs root and network namespaces"]
fn observe_reads_the_link_s_own_addresses_and_apply_changes_them_in_order() {
    let ns = Netns::new();
    ns.run_ip(&["tuntap", "add", "dev", "wsad1", "mode", "tun"]);
    ns.run_ip(&["link", "set", "wsad1", "up"]);
    // An address somebody put on our link by hand, and the kernel's
    // link-local one (left alone: not wireseal's).
    ns.run_ip(&["addr", "add", "198.51.100.7/32", "dev", "wsad1"]);
    ns.run_ip(&["addr", "add", "fe80::7/64", "dev", "wsad1", "nodad"]);
    // The CNI's gateway, elsewhere.
    ns.veth("wsa2", "wsa3");
    ns.run_ip(&["addr", "add", "10.244.0.1/24", "dev", "wsa2"]);
    let ids = RoutingIds {
        table: 51830,
        priority: 5210,
        catch_all_table: 51831,
    };
    let route = RouteSpec {
        dst: "10.244.1.0/24".parse().unwrap(),
        dev: "wsad1".into(),
        mtu: 1400,
        src: Some("10.244.0.1".parse().unwrap()),
    };

    ns.run(|| async {
        let nl = Netlink::connect().unwrap();
        let observed = nl.observe_routing("wsad1", ids).await.unwrap();
        let link = observed.state.link.unwrap();
        assert_eq!(
            link.addresses,
            BTreeSet::from(["198.51.100.7/32".parse().unwrap()]),
            "link-local left out"
        );
        // The agent's plan for this link: the source on, the stray off.
        let plan = Changes {
            link: LinkChanges {
                name: "wsad1".into(),
                add_addresses: BTreeSet::from([host_address(route.src.unwrap())]),
                remove_addresses: link.addresses.clone(),
                ..LinkChanges::default()
            },
            routing: RoutingChanges {
                add_routes: [(route.dst, route.clone())].into(),
                ..RoutingChanges::default()
            },
            ..Changes::default()
        }
        .into_plan();
        let failed = common::apply_steps(&nl, ids, &plan).await;
        assert!(failed.is_empty(), "{failed:?}");
        let observed = nl.observe_routing("wsad1", ids).await.unwrap();
        assert_eq!(
            observed.state.link.unwrap().addresses,
            BTreeSet::from(["10.244.0.1/32".parse().unwrap()])
        );
        assert_eq!(observed.state.routes.get(&route.dst), Some(&route));
        let shown = ns.run_ip(&["addr", "show", "dev", "wsad1"]);
        assert!(shown.contains("fe80::7/64"), "{shown}");

        // An address that cannot be added is reported by name.
        let bad = Step::AddAddress {
            link: "wsnone1".into(),
            address: "10.244.0.9/32".parse().unwrap(),
        };
        let err = nl
            .apply_step(ids, &bad, &mut Default::default())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::LinkNotFound { iface } if iface == "wsnone1"),
            "{err:?}"
        );
        assert_eq!(bad.to_string(), "add address 10.244.0.9/32 to wsnone1");
    });
}

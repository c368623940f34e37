//! Listing the node's addresses, against a real kernel in a private namespace.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::IpAddr;

use common::Netns;
use wireseal_netlink::{AddressInfo, Netlink};

#[test]
fn every_address_is_listed_with_its_interface_and_usability() {
    let ns = Netns::new();
    ns.veth("wsa0", "wsa1");
    // A pod gateway as ptp CNIs put it on every pod veth, and as a bridge
    // CNI puts it on its bridge: the same /32 on two devices is listed twice.
    ns.ip(&["addr", "add", "10.244.0.1/32", "dev", "wsa0"]);
    ns.ip(&["addr", "add", "10.244.0.1/32", "dev", "wsa1"]);
    // An IPv6 address still in duplicate address detection: DAD with 10
    // probes a second apart keeps it tentative for the whole test.
    ns.ip(&[
        "link", "add", "wsa2", "type", "veth", "peer", "name", "wsa3",
    ]);
    ns.run(|| async {
        // /proc/sys/net is the namespace's own for a thread inside it.
        std::fs::write("/proc/sys/net/ipv6/conf/wsa2/accept_dad", "1").unwrap();
        std::fs::write("/proc/sys/net/ipv6/conf/wsa2/dad_transmits", "10").unwrap();
    });
    ns.ip(&["link", "set", "wsa2", "up"]);
    ns.ip(&["link", "set", "wsa3", "up"]);
    ns.ip(&["addr", "add", "fd00:244::1/64", "dev", "wsa2"]);

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

//! Change notifications from the kernel, in a private namespace.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use wireseal_core::{Family, RouteSpec, RuleSpec};
use wireseal_netlink::{Change, Monitor, Netlink};
use wireseal_netns::Netns;

const WAIT: Duration = Duration::from_secs(5);

async fn wait_for(monitor: &mut Monitor, want: impl Fn(Change) -> bool) -> Change {
    tokio::time::timeout(WAIT, async {
        loop {
            let change = monitor.next().await.expect("subscription ended");
            if want(change) {
                return change;
            }
        }
    })
    .await
    .expect("no matching change notification")
}

#[test]
#[ignore = "needs root and network namespaces"]
fn external_deletes_are_reported() {
    let ns = Netns::new();
    ns.run_ip(&[
        "link", "add", "wsm0", "type", "veth", "peer", "name", "wsm1",
    ]);
    ns.run_ip(&["link", "set", "wsm0", "up"]);
    ns.run(|| async {
        let nl = Netlink::connect().unwrap();
        let route = RouteSpec {
            dst: "10.244.5.0/24".parse().unwrap(),
            dev: "wsm0".into(),
            mtu: 1400,
            src: None,
        };
        let rule = RuleSpec {
            family: Family::V6,
            priority: 5210,
            table: 51830,
            fwmark: 0x1000_0000,
        };
        nl.replace_route(&route, 51830).await.unwrap();
        nl.add_rule(&rule).await.unwrap();

        let mut monitor = Monitor::subscribe().unwrap();
        ns.run_ip(&["route", "del", "10.244.5.0/24", "table", "51830"]);
        let change = wait_for(&mut monitor, |c| matches!(c, Change::Route { .. })).await;
        assert_eq!(change, Change::Route { table: 51830 });
        // What the agent does on the event: observe, find it missing, put it back.
        let observed = nl.routes(51830).await.unwrap();
        assert!(!observed.contains_key(&route.dst));
        nl.replace_route(&route, 51830).await.unwrap();
        let shown = ns.run_ip(&["route", "show", "table", "51830"]);
        assert!(shown.starts_with("10.244.5.0/24 dev wsm0"), "{shown}");
        // Our own write is reported too; the agent's next pass is then a no-op.
        wait_for(&mut monitor, |c| c == Change::Route { table: 51830 }).await;

        ns.run_ip(&["-6", "rule", "del", "priority", "5210"]);
        wait_for(&mut monitor, |c| c == Change::Rule).await;

        ns.run_ip(&["link", "set", "wsm0", "mtu", "1300"]);
        wait_for(&mut monitor, |c| matches!(c, Change::Link { .. })).await;

        // Addresses coming and going (a CNI's gateway) are reported, with
        // the address, in both families.
        let index = nl.link("wsm0").await.unwrap().unwrap().index;
        for (add, ip) in [
            ("10.244.5.1/32", "10.244.5.1"),
            ("fd00:244:5::1/64", "fd00:244:5::1"),
        ] {
            let ip = ip.parse().unwrap();
            let expected = Change::Address {
                index,
                address: Some(ip),
            };
            ns.run_ip(&["addr", "add", add, "dev", "wsm0", "nodad"]);
            wait_for(&mut monitor, |c| c == expected).await;
            ns.run_ip(&["addr", "del", add, "dev", "wsm0"]);
            wait_for(&mut monitor, |c| c == expected).await;
        }
        // Nothing else queued that we did not cause... except possibly more
        // link events from the same change; draining must not block.
        while monitor.try_next().is_some() {}
    });
}

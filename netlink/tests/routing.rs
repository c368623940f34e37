//! Routes, rules, link MTU and observe, against a real kernel in a private
//! network namespace. Asserted both through our own observe code and through
//! `ip`'s view of the kernel.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::line_starting;
use ipnetwork::IpNetwork;
use wireseal_core::{
    CatchAll, CatchAllKind, Changes, DesiredState, DeviceSpec, Family, LinkChanges, LinkSpec,
    PublicKey, RouteSpec, RoutingChanges, RuleSpec, Step, changes, host_address, plan,
};
use wireseal_netlink::{Errno, Error, Netlink, RoutingIds};
use wireseal_netns::Netns;

const TABLE: u32 = 51830;
const PRIORITY: u32 = 5210;
const MARK: u32 = 0x1000_0000;
const IDS: RoutingIds = RoutingIds {
    table: TABLE,
    priority: PRIORITY,
    catch_all_table: CATCH_ALL_TABLE,
};
const CATCH_ALL_TABLE: u32 = 51831;
const DEV: &str = "wsv0";

fn route(dst: &str, mtu: u32) -> RouteSpec {
    RouteSpec {
        dst: dst.parse().unwrap(),
        dev: DEV.into(),
        mtu,
        src: None,
    }
}

fn sourced(dst: &str, src: &str) -> RouteSpec {
    RouteSpec {
        src: Some(src.parse().unwrap()),
        ..route(dst, 1400)
    }
}

fn rule(family: Family) -> RuleSpec {
    RuleSpec {
        family,
        priority: PRIORITY,
        table: TABLE,
        fwmark: MARK,
    }
}

/// What the agent wants: the link carries the routes' sources, as it does.
fn desired(link_mtu: u32, routes: &[RouteSpec]) -> DesiredState {
    let mut basepoint = [0u8; 32];
    basepoint[0] = 9;
    DesiredState {
        link: LinkSpec {
            name: DEV.into(),
            mtu: link_mtu,
            addresses: routes
                .iter()
                .filter_map(|r| r.src)
                .map(host_address)
                .collect(),
        },
        device: DeviceSpec {
            public_key: PublicKey::from_bytes(basepoint).unwrap(),
            listen_port: 51830,
            fwmark: MARK,
            peers: BTreeMap::new(),
        },
        routes: routes.iter().map(|r| (r.dst, r.clone())).collect(),
        catch_alls: BTreeMap::new(),
        rules: [rule(Family::V4), rule(Family::V6)].into(),
    }
}

fn mtu(mtu: u32) -> LinkChanges {
    LinkChanges {
        name: DEV.into(),
        set_mtu: Some(mtu),
        ..LinkChanges::default()
    }
}

/// One reconcile pass as the agent runs it: observe, plan, apply routing.
/// Returns the number of netlink writes it made.
async fn reconcile(nl: &Netlink, want: &DesiredState) -> u64 {
    let before = nl.writes();
    let observed = nl.observe_routing(DEV, IDS).await.unwrap();
    let plan = plan(want, &observed.state);
    let failed = common::apply_steps(nl, IDS, &plan).await;
    assert!(failed.is_empty(), "{failed:?}");
    nl.writes() - before
}

#[test]
#[ignore = "needs root and network namespaces"]
fn apply_observe_converge_and_idempotence() {
    let ns = Netns::new();
    ns.bare_veth(DEV, "wsv1");
    let v4a = route("10.244.1.0/24", 1340);
    let v4b = route("10.244.2.0/24", 1340);
    let v6 = route("fd00:244:1::/64", 1340);
    let want = desired(1420, &[v4a.clone(), v4b, v6]);

    ns.run(|| async {
        let nl = Netlink::connect().unwrap();

        // First pass: 3 routes + 2 rules + the link MTU.
        assert_eq!(reconcile(&nl, &want).await, 6);
        let observed = nl.observe_routing(DEV, IDS).await.unwrap();
        assert_eq!(observed.state.routes, want.routes);
        assert_eq!(observed.state.rules, want.rules);
        assert_eq!(observed.state.link, Some(want.link.clone()));
        assert!(observed.foreign_rules.is_empty());
        assert!(changes(&want, &observed.state).routing.is_empty());

        // The kernel's view, through iproute2.
        let v4 = ns.run_ip(&["route", "show", "table", "51830"]);
        for dst in ["10.244.1.0/24", "10.244.2.0/24"] {
            let line = line_starting(&v4, dst).unwrap_or_else(|| panic!("{dst} missing:\n{v4}"));
            assert!(
                line.contains("dev wsv0") && line.contains("mtu 1340"),
                "{line}"
            );
        }
        let v6out = ns.run_ip(&["-6", "route", "show", "table", "51830"]);
        let line = line_starting(&v6out, "fd00:244:1::/64").expect(&v6out);
        assert!(
            line.contains("dev wsv0") && line.contains("mtu 1340"),
            "{line}"
        );
        let rules4 = ns.run_ip(&["rule", "show"]);
        let rules6 = ns.run_ip(&["-6", "rule", "show"]);
        for rules in [&rules4, &rules6] {
            let line = line_starting(rules, "5210:").expect(rules);
            assert_eq!(
                line.split_whitespace().collect::<Vec<_>>().join(" "),
                "5210: not from all fwmark 0x10000000/0x10000000 lookup 51830"
            );
        }
        assert!(ns.run_ip(&["link", "show", DEV]).contains("mtu 1420"));

        // Second pass of the same desired state: nothing to write.
        assert_eq!(reconcile(&nl, &want).await, 0);

        // Someone deletes our route and rule: observe sees it, one pass restores it.
        ns.run_ip(&["route", "del", "10.244.1.0/24", "table", "51830"]);
        ns.run_ip(&["rule", "del", "priority", "5210"]);
        let observed = nl.observe_routing(DEV, IDS).await.unwrap();
        assert!(!observed.state.routes.contains_key(&v4a.dst));
        assert!(!observed.state.rules.contains(&rule(Family::V4)));
        assert_eq!(reconcile(&nl, &want).await, 2);
        let v4 = ns.run_ip(&["route", "show", "table", "51830"]);
        assert!(line_starting(&v4, "10.244.1.0/24").is_some(), "{v4}");
        assert!(line_starting(&ns.run_ip(&["rule", "show"]), "5210:").is_some());

        // An MTU change replaces the routes in place: one route per destination.
        let lower = desired(
            1420,
            &[
                route("10.244.1.0/24", 1300),
                route("10.244.2.0/24", 1300),
                route("fd00:244:1::/64", 1300),
            ],
        );
        assert_eq!(reconcile(&nl, &lower).await, 3);
        let v4 = ns.run_ip(&["route", "show", "table", "51830"]);
        assert_eq!(v4.lines().count(), 2, "{v4}");
        assert!(v4.lines().all(|line| line.contains("mtu 1300")), "{v4}");
        let v6out = ns.run_ip(&["-6", "route", "show", "table", "51830"]);
        assert_eq!(v6out.lines().count(), 1, "{v6out}");
        assert!(v6out.contains("mtu 1300"), "{v6out}");

        // A node leaves: its route goes, the others stay.
        let fewer = desired(
            1420,
            &[route("10.244.1.0/24", 1300), route("fd00:244:1::/64", 1300)],
        );
        assert_eq!(reconcile(&nl, &fewer).await, 1);
        let observed = nl.observe_routing(DEV, IDS).await.unwrap();
        assert_eq!(observed.state.routes, fewer.routes);

        // wireseal switched off: rules first, then routes.
        let off = Changes {
            routing: RoutingChanges {
                remove_rules: fewer.rules.clone(),
                remove_routes: fewer.routes.keys().copied().collect(),
                ..RoutingChanges::default()
            },
            ..Changes::default()
        }
        .into_plan();
        let kinds: Vec<bool> = off
            .steps()
            .iter()
            .map(|step| matches!(step, Step::RemoveRule(_)))
            .collect();
        assert_eq!(kinds, [true, true, false, false], "rules go first");
        assert!(common::apply_steps(&nl, IDS, &off).await.is_empty());
        assert_eq!(ns.run_ip(&["route", "show", "table", "51830"]), "");
        assert!(line_starting(&ns.run_ip(&["rule", "show"]), "5210:").is_none());
    });
}

#[test]
#[ignore = "needs root and network namespaces"]
fn primitives_are_idempotent() {
    let ns = Netns::new();
    ns.veth(DEV, "wsv1");
    ns.run(|| async {
        let nl = Netlink::connect().unwrap();
        let r = route("10.244.9.0/24", 1400);
        nl.replace_route(&r, TABLE).await.unwrap();
        nl.replace_route(&r, TABLE).await.unwrap();
        nl.add_rule(&rule(Family::V4)).await.unwrap();
        // The second add reaches the kernel, which answers EEXIST: success.
        nl.add_rule(&rule(Family::V4)).await.unwrap();
        let rules = ns.run_ip(&["rule", "show"]);
        assert_eq!(
            rules.lines().filter(|l| l.starts_with("5210:")).count(),
            1,
            "{rules}"
        );
        assert_eq!(
            ns.run_ip(&["route", "show", "table", "51830"])
                .lines()
                .count(),
            1
        );

        nl.delete_route(r.dst, TABLE).await.unwrap();
        nl.delete_route(r.dst, TABLE).await.unwrap();
        nl.delete_rule(&rule(Family::V4)).await.unwrap();
        nl.delete_rule(&rule(Family::V4)).await.unwrap();
        nl.delete_rule(&rule(Family::V6)).await.unwrap();
        assert_eq!(ns.run_ip(&["route", "show", "table", "51830"]), "");
        assert!(line_starting(&ns.run_ip(&["rule", "show"]), "5210:").is_none());
        assert_eq!(nl.writes(), 9);
    });
}

#[test]
#[ignore = "needs root and network namespaces"]
fn apply_collects_every_failure_and_applies_the_rest() {
    let ns = Netns::new();
    ns.veth(DEV, "wsv1");
    ns.run(|| async {
        let nl = Netlink::connect().unwrap();
        let good = route("10.244.3.0/24", 1400);
        let orphan = RouteSpec {
            dev: "nosuchdev0".into(),
            ..route("10.244.4.0/24", 1400)
        };
        let plan = Changes {
            link: mtu(60),
            routing: RoutingChanges {
                add_routes: [(good.dst, good.clone()), (orphan.dst, orphan.clone())].into(),
                add_rules: [rule(Family::V4)].into(),
                ..RoutingChanges::default()
            },
            ..Changes::default()
        }
        .into_plan();
        // MTU 60 is below the minimum for an Ethernet device (68): EINVAL.
        let failed = common::apply_steps(&nl, IDS, &plan).await;
        assert_eq!(failed.len(), 2, "{failed:?}");
        assert_eq!(
            failed[0].0,
            Step::SetMtu {
                link: DEV.into(),
                mtu: 60
            }
        );
        assert_eq!(failed[0].1.errno(), Some(Errno(libc::EINVAL)));
        assert_eq!(failed[1].0, Step::ReplaceRoute(orphan));
        assert!(matches!(&failed[1].1, Error::LinkNotFound { iface } if iface == "nosuchdev0"));
        let text = format!("{}: {}", failed[0].0, failed[0].1);
        assert!(text.contains("set mtu 60 on wsv0"), "{text}");
        // The good items went in despite the failures.
        let observed = nl.observe_routing(DEV, IDS).await.unwrap();
        assert_eq!(
            observed
                .state
                .routes
                .keys()
                .copied()
                .collect::<Vec<IpNetwork>>(),
            vec![good.dst]
        );
        assert_eq!(observed.state.rules, BTreeSet::from([rule(Family::V4)]));
    });
}

#[test]
#[ignore = "needs root and network namespaces"]
fn foreign_rules_at_our_priority_are_reported_not_taken() {
    let ns = Netns::new();
    ns.run(|| async {
        let nl = Netlink::connect().unwrap();
        ns.run_ip(&[
            "rule",
            "add",
            "fwmark",
            "0x10000000/0x10000000",
            "lookup",
            "51830",
            "priority",
            "5210",
        ]);
        ns.run_ip(&[
            "rule", "add", "not", "fwmark", "0x20", "lookup", "51830", "priority", "5210",
        ]);
        ns.run_ip(&[
            "rule",
            "add",
            "not",
            "fwmark",
            "0x40/0x40",
            "lookup",
            "51830",
            "priority",
            "5210",
        ]);
        ns.run_ip(&[
            "rule",
            "add",
            "iif",
            "lo",
            "not",
            "fwmark",
            "0x80/0x80",
            "lookup",
            "51830",
            "priority",
            "5210",
        ]);
        ns.run_ip(&[
            "rule",
            "add",
            "not",
            "fwmark",
            "0x10000000/0x10000000",
            "lookup",
            "51830",
            "priority",
            "5211",
        ]);
        let rules = nl.rules(PRIORITY, TABLE).await.unwrap();
        // Only the inverted mark/mask rule has wireseal's shape (with another mark).
        assert_eq!(
            rules.ours,
            BTreeSet::from([RuleSpec {
                fwmark: 0x40,
                ..rule(Family::V4)
            }])
        );
        // Mark without `not`, mark without mask, and a rule with an iif
        // selector are someone else's; the rule at another priority is ignored.
        assert_eq!(rules.foreign.len(), 3, "{:?}", rules.foreign);
    });
}

#[test]
#[ignore = "needs root and network namespaces"]
fn routes_through_a_tun_device_as_the_userspace_datapath_uses() {
    let ns = Netns::new();
    // The userspace datapath opens its own TUN; a persistent one stands in.
    ns.run_ip(&["tuntap", "add", "dev", "wireseal0", "mode", "tun"]);
    ns.run(|| async {
        let nl = Netlink::connect().unwrap();
        let link = nl.link("wireseal0").await.unwrap().expect("tun exists");
        assert_eq!(link.kind.as_deref(), Some("tun"));
        nl.set_mtu("wireseal0", 1420).await.unwrap();
        assert!(nl.ensure_up("wireseal0").await.unwrap());
        let routes = [
            RouteSpec {
                dst: "10.244.7.0/24".parse().unwrap(),
                dev: "wireseal0".into(),
                mtu: 1420,
                src: None,
            },
            RouteSpec {
                dst: "fd00:244:7::/64".parse().unwrap(),
                dev: "wireseal0".into(),
                mtu: 1420,
                src: None,
            },
        ];
        let routing = RoutingChanges {
            add_routes: routes.iter().map(|r| (r.dst, r.clone())).collect(),
            add_rules: [rule(Family::V4), rule(Family::V6)].into(),
            ..RoutingChanges::default()
        };
        let plan = Changes {
            routing: routing.clone(),
            ..Changes::default()
        }
        .into_plan();
        assert!(common::apply_steps(&nl, IDS, &plan).await.is_empty());
        let observed = nl.observe_routing("wireseal0", IDS).await.unwrap();
        assert_eq!(observed.state.routes, routing.add_routes);
        assert_eq!(observed.state.link.map(|l| l.mtu), Some(1420));
        let v4 = ns.run_ip(&["route", "show", "table", "51830"]);
        assert!(
            v4.contains("10.244.7.0/24 dev wireseal0") && v4.contains("mtu 1420"),
            "{v4}"
        );
    });
}

#[test]
#[ignore = "needs root and network namespaces"]
fn preferred_sources_round_trip_change_in_place_and_follow_their_address() {
    let ns = Netns::new();
    ns.bare_veth(DEV, "wsv1");
    // The CNI's gateway addresses, on another device than the routes' (as
    // flannel's cni0 is, while the routes go through the tunnel).
    ns.veth("wsgw0", "wsgw1");
    ns.run_ip(&["addr", "add", "10.244.0.1/24", "dev", "wsgw0"]);
    ns.run_ip(&["addr", "add", "10.244.0.2/32", "dev", "wsgw0"]);
    ns.run_ip(&["addr", "add", "fd00:244::1/64", "dev", "wsgw0", "nodad"]);
    let v4 = sourced("10.244.1.0/24", "10.244.0.1");
    let v6 = sourced("fd00:244:1::/64", "fd00:244::1");
    let want = desired(1420, &[v4, v6.clone()]);

    ns.run(|| async {
        let nl = Netlink::connect().unwrap();
        reconcile(&nl, &want).await;
        let observed = nl.observe_routing(DEV, IDS).await.unwrap();
        assert_eq!(observed.state.routes, want.routes, "src is read back");
        assert_eq!(
            observed.state.link,
            Some(want.link.clone()),
            "and the sources are on the link"
        );
        assert_eq!(reconcile(&nl, &want).await, 0, "and the plan converges");
        let shown = ns.run_ip(&["route", "show", "table", "51830"]);
        assert!(
            line_starting(&shown, "10.244.1.0/24").is_some_and(|l| l.contains("src 10.244.0.1")),
            "{shown}"
        );
        let shown6 = ns.run_ip(&["-6", "route", "show", "table", "51830"]);
        assert!(shown6.contains("src fd00:244::1"), "{shown6}");
        // What the kernel then does for the node's own packets.
        let got = ns.run_ip(&["route", "get", "10.244.1.10"]);
        assert!(got.contains("src 10.244.0.1"), "{got}");
        // On the link as host addresses, IPv6 without DAD and without a
        // prefix route: nothing in the main table points at the tunnel.
        let on_link = ns.run_ip(&["addr", "show", "dev", DEV]);
        assert!(
            on_link.contains("inet 10.244.0.1/32 scope global"),
            "{on_link}"
        );
        assert!(
            on_link.contains("inet6 fd00:244::1/128 scope global nodad noprefixroute"),
            "{on_link}"
        );
        for family in ["-4", "-6"] {
            let main = ns.run_ip(&[family, "route", "show", "table", "main", "dev", DEV]);
            assert!(
                !main.contains("10.244.0.1") && !main.contains("fd00:244::1"),
                "{main}"
            );
        }

        // Another source: it is added, the route replaced in place (never
        // a second route), then the old one removed.
        let moved = desired(1420, &[sourced("10.244.1.0/24", "10.244.0.2"), v6.clone()]);
        assert_eq!(reconcile(&nl, &moved).await, 3);
        let shown = ns.run_ip(&["route", "show", "table", "51830"]);
        assert_eq!(shown.lines().count(), 1, "{shown}");
        assert!(shown.contains("src 10.244.0.2"), "{shown}");
        let on_link = ns.run_ip(&["-4", "addr", "show", "dev", DEV]);
        assert!(
            on_link.contains("10.244.0.2/32") && !on_link.contains("10.244.0.1/32"),
            "{on_link}"
        );

        // The CNI's address goes: the copy on the link keeps it the node's,
        // so the route and its source stay valid until the agent's next
        // pass, woken by the address event, sets the one it finds then.
        ns.run_ip(&["addr", "del", "10.244.0.2/32", "dev", "wsgw0"]);
        let observed = nl.observe_routing(DEV, IDS).await.unwrap();
        assert_eq!(observed.state.routes, moved.routes);
        let got = ns.run_ip(&["route", "get", "10.244.1.10"]);
        assert!(got.contains("src 10.244.0.2"), "{got}");
        assert_eq!(reconcile(&nl, &want).await, 3);
        let observed = nl.observe_routing(DEV, IDS).await.unwrap();
        assert_eq!(observed.state.routes, want.routes);
        assert_eq!(observed.state.link, Some(want.link.clone()));

        // A source that is no address of the node at all is refused
        // (EINVAL), naming the route and the source.
        let err = nl
            .replace_route(&sourced("10.244.1.0/24", "10.244.0.9"), TABLE)
            .await
            .unwrap_err();
        assert_eq!(err.errno(), Some(Errno(libc::EINVAL)), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("10.244.1.0/24") && text.contains("src 10.244.0.9"),
            "{text}"
        );

        // No IPv4 source at all: the copy goes, and it is the link's last
        // IPv4 address, so the kernel drops the link's IPv4 routes; the plan
        // writes them again right after (1 removal + 1 route).
        let plain = desired(1420, &[route("10.244.1.0/24", 1400), v6.clone()]);
        assert_eq!(reconcile(&nl, &plain).await, 2);
        let shown = ns.run_ip(&["route", "show", "table", "51830"]);
        assert!(
            line_starting(&shown, "10.244.1.0/24").is_some_and(|l| !l.contains("src")),
            "{shown}"
        );
        let on_link = ns.run_ip(&["-4", "addr", "show", "dev", DEV]);
        assert_eq!(on_link, "", "{on_link}");
        let observed = nl.observe_routing(DEV, IDS).await.unwrap();
        assert_eq!(observed.state.routes, plain.routes);
        assert_eq!(reconcile(&nl, &plain).await, 0);
    });
}

/// The kernel rule the plan's `restore_routes` answers: when a link loses
/// its last IPv4 address, Linux drops every IPv4 route through it, in every
/// table (`fib_disable_ip`); IPv6 routes stay, and so do IPv4 routes while
/// another IPv4 address is left.
#[test]
#[ignore = "needs root and network namespaces"]
fn losing_the_last_ipv4_address_flushes_the_link_s_ipv4_routes() {
    let ns = Netns::new();
    ns.bare_veth(DEV, "wsv1");
    ns.run(|| async {
        let nl = Netlink::connect().unwrap();
        let v4 = route("10.244.1.0/24", 1400);
        let v6 = route("fd00:244:1::/64", 1400);
        let first: IpNetwork = "10.244.0.1/32".parse().unwrap();
        let second: IpNetwork = "10.244.0.2/32".parse().unwrap();
        for address in [first, second] {
            nl.add_address(DEV, address).await.unwrap();
        }
        for r in [&v4, &v6] {
            nl.replace_route(r, TABLE).await.unwrap();
        }
        let routes = || async { nl.routes(TABLE).await.unwrap() };
        nl.delete_address(DEV, second).await.unwrap();
        assert_eq!(routes().await.len(), 2, "another IPv4 address is left");
        nl.delete_address(DEV, first).await.unwrap();
        assert_eq!(
            routes().await.keys().copied().collect::<Vec<_>>(),
            vec![v6.dst],
            "the IPv4 route went with the last IPv4 address"
        );
    });
}

fn catch_all(dst: &str, kind: CatchAllKind) -> (IpNetwork, CatchAll) {
    let dst: IpNetwork = dst.parse().unwrap();
    (dst, CatchAll { dst, kind })
}

fn catch_all_rule(family: Family) -> RuleSpec {
    RuleSpec {
        family,
        priority: PRIORITY + 1,
        table: CATCH_ALL_TABLE,
        fwmark: MARK,
    }
}

/// What `ip route get DST` answers in the namespace: the output device, or
/// the kernel's refusal (a blackhole refuses a local sender with EINVAL).
fn route_get(ns: &Netns, dst: &str) -> String {
    let out = std::process::Command::new("ip")
        .args(["-n", ns.name(), "route", "get", dst])
        .output()
        .unwrap();
    if out.status.success() {
        let text = String::from_utf8_lossy(&out.stdout);
        let dev = text
            .split_whitespace()
            .skip_while(|word| *word != "dev")
            .nth(1)
            .unwrap_or("?");
        format!("dev {dev}")
    } else {
        String::from_utf8_lossy(&out.stderr).trim().to_owned()
    }
}

/// Strict mode's routing, in a real kernel: the tunnel's table first, then
/// the catch-alls'. A peer's pod CIDR goes into the tunnel; a cluster
/// address no tunnel takes is dropped; this node's own pod CIDR falls
/// through to the CNI. And when the tunnel link vanishes (its routes go with
/// it), the peer's traffic is dropped, not sent over the CNI's plain route.
#[test]
#[ignore = "needs root and network namespaces"]
fn strict_catch_alls_drop_what_the_tunnel_does_not_take() {
    let ns = Netns::new();
    ns.bare_veth(DEV, "wsv1");
    // The CNI: a plain route to the whole cluster through its own device.
    ns.veth("wsc0", "wsc1");
    ns.run_ip(&["route", "add", "10.244.0.0/16", "dev", "wsc0"]);
    ns.run_ip(&["-6", "route", "add", "fd00:244::/48", "dev", "wsc0"]);
    let mut want = desired(
        1420,
        &[
            route("10.244.1.0/24", 1420),
            route("fd00:244:0:1::/64", 1420),
        ],
    );
    want.catch_alls = [
        catch_all("10.244.0.0/16", CatchAllKind::Blackhole),
        catch_all("10.244.0.0/24", CatchAllKind::Throw),
        catch_all("fd00:244::/48", CatchAllKind::Blackhole),
    ]
    .into();
    want.rules
        .extend([catch_all_rule(Family::V4), catch_all_rule(Family::V6)]);

    ns.run(|| async {
        let nl = Netlink::connect().unwrap();
        reconcile(&nl, &want).await;
        let observed = nl.observe_routing(DEV, IDS).await.unwrap();
        assert_eq!(observed.state.catch_alls, want.catch_alls);
        assert_eq!(observed.state.rules, want.rules);
        let again = changes(&want, &observed.state);
        assert!(
            again.routing.is_empty() && again.link.is_empty(),
            "{again:#?}"
        );
        let shown = ns.run_ip(&["route", "show", "table", "51831"]);
        assert!(shown.contains("blackhole 10.244.0.0/16"), "{shown}");
        assert!(shown.contains("throw 10.244.0.0/24"), "{shown}");
    });
    for (dst, expect) in [
        ("10.244.1.5", "dev wsv0"),
        ("fd00:244:0:1::5", "dev wsv0"),
        ("10.244.0.5", "dev wsc0"),
        ("10.244.2.5", "RTNETLINK answers: Invalid argument"),
        ("fd00:244:0:2::5", "RTNETLINK answers: Invalid argument"),
        ("192.0.2.7", "dev wsc0"),
    ] {
        assert_eq!(route_get(&ns, dst), expect, "{dst}");
    }
    // The tunnel link goes (a crashed userspace datapath takes its TUN along).
    ns.run_ip(&["link", "del", DEV]);
    for dst in ["10.244.1.5", "fd00:244:0:1::5"] {
        assert_eq!(
            route_get(&ns, dst),
            "RTNETLINK answers: Invalid argument",
            "{dst} must be dropped, not routed in clear"
        );
    }
    // Strict mode off: the plan takes the catch-alls and their rules away,
    // and that same failure sends the traffic over the CNI in clear.
    ns.bare_veth(DEV, "wsv1");
    ns.run(|| async {
        let nl = Netlink::connect().unwrap();
        let mut off = want.clone();
        off.catch_alls.clear();
        off.rules.retain(|rule| rule.table == TABLE);
        reconcile(&nl, &off).await;
        let observed = nl.observe_routing(DEV, IDS).await.unwrap();
        assert!(observed.state.catch_alls.is_empty());
    });
    assert_eq!(route_get(&ns, "10.244.1.5"), "dev wsv0");
    ns.run_ip(&["link", "del", DEV]);
    assert_eq!(route_get(&ns, "10.244.1.5"), "dev wsc0");
}

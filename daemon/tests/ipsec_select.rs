//! IPsec mode's start, against a real kernel in a network namespace: it
//! never falls back (no userspace IPsec, so never plaintext for want of a
//! module) and never takes over the other mode's interface. Needs root:
//! ignored by default, and failing (never passing) when run without it.
//! SAs and their traffic need ESP, which the build machines' kernel lacks:
//! `vagrant/vmlab.sh` runs IPsec mode on three VMs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use wireseal::datapath::DatapathError;
use wireseal::datapath::any::{AnyDatapath, select_ipsec};
use wireseal_netlink::{Netlink, XFRM_KIND};
use wireseal_netns::Netns;

const IFACE: &str = "wsx0";

#[test]
#[ignore = "needs root and network namespaces"]
fn ipsec_mode_starts_on_an_xfrm_interface_or_stops_naming_what_the_kernel_lacks() {
    Netns::new().run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let netlink = Netlink::connect().unwrap();
        match select_ipsec(IFACE, 51830, 0x1000_0000, dir.path()).await {
            Ok((datapath, reason)) => {
                assert!(matches!(datapath, AnyDatapath::Ipsec(_)));
                assert!(reason.contains("--encryption ipsec"), "{reason}");
                let link = netlink.link(IFACE).await.unwrap().unwrap();
                assert_eq!(link.kind.as_deref(), Some(XFRM_KIND));
                // Started again, it adopts the interface.
                let (_, again) = select_ipsec(IFACE, 51830, 0x1000_0000, dir.path())
                    .await
                    .unwrap();
                assert!(again.contains("adopted"), "{again}");
            }
            // This project's build machines: XFRM but no XFRM interfaces.
            Err(DatapathError::Ipsec(message)) => {
                assert!(message.contains("xfrm_interface"), "{message}");
                assert!(message.contains("nothing is sent in clear"), "{message}");
                assert!(
                    netlink.link(IFACE).await.unwrap().is_none(),
                    "no other kind of link stands in for it"
                );
            }
            Err(other) => panic!("neither started nor refused clearly: {other}"),
        }
    });
}

#[test]
#[ignore = "needs root and network namespaces"]
fn ipsec_mode_refuses_an_interface_of_the_other_mode_and_says_how_to_switch() {
    let ns = Netns::new();
    // What a WireGuard-mode node leaves (a userspace TUN, or kernel WireGuard
    // where the kernel has it): any link of another kind under the name.
    ns.run_ip(&["link", "add", IFACE, "type", "bridge"]);
    ns.run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let err = select_ipsec(IFACE, 51830, 0x1000_0000, dir.path())
            .await
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains("exists as a bridge link"), "{err}");
        assert!(err.contains("wireseal cleanup"), "{err}");
        let netlink = Netlink::connect().unwrap();
        let link = netlink.link(IFACE).await.unwrap().unwrap();
        assert_eq!(link.kind.as_deref(), Some("bridge"), "left as it was");
    });
}

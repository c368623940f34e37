//! The XFRM connection against the kernel in a private namespace: policies
//! installed, listed back exactly and deleted (idempotently). This host's
//! kernel has XFRM but no ESP, so SAs are checked in the VM lab.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use wireseal_netlink::xfrm::{AEAD_KEY_LEN, Direction, Policy, Sa, Xfrm, XfrmError, new_sa};
use wireseal_netns::Netns;

fn cidr(text: &str) -> IpNetwork {
    text.parse().unwrap()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[test]
#[ignore = "needs root and network namespaces"]
fn policies_are_installed_listed_and_deleted() {
    let ns = Netns::new();
    ns.run(|| async {
        let xfrm = Xfrm::connect().unwrap();
        assert!(xfrm.policies().await.unwrap().is_empty());
        let out = Policy {
            src: cidr("10.244.0.0/24"),
            dst: cidr("10.244.1.0/24"),
            dir: Direction::Out,
            tunnel_src: ip("198.18.0.1"),
            tunnel_dst: ip("198.18.0.2"),
            reqid: 3,
            if_id: 0x51830,
            priority: 10,
        };
        let fwd = Policy {
            src: cidr("fd10:244:1::/64"),
            dst: cidr("fd10:244::/64"),
            dir: Direction::Fwd,
            tunnel_src: ip("fd00::2"),
            tunnel_dst: ip("fd00::1"),
            ..out
        };
        for policy in [&out, &fwd] {
            xfrm.add_policy(policy).await.unwrap();
            // Installing it again is not an error.
            xfrm.add_policy(policy).await.unwrap();
        }
        let mut listed = xfrm.policies().await.unwrap();
        listed.sort_by_key(|p| p.src.is_ipv6());
        assert_eq!(listed.len(), 2, "{listed:?}");
        for (policy, read) in [&out, &fwd].iter().zip(&listed) {
            assert_eq!(read.src, policy.src);
            assert_eq!(read.dst, policy.dst);
            assert_eq!(read.dir, Some(policy.dir));
            assert_eq!(read.priority, 10);
            assert_eq!(read.if_id, Some(0x51830));
            assert_eq!(
                read.template,
                Some((policy.tunnel_src, policy.tunnel_dst, 3))
            );
        }
        // What iproute2 shows is the same.
        let shown = ns.run_ip(&["xfrm", "policy", "list"]);
        assert!(
            shown.contains("src 10.244.0.0/24 dst 10.244.1.0/24"),
            "{shown}"
        );
        assert!(shown.contains("dir fwd priority 10"), "{shown}");

        for policy in [&out, &fwd] {
            xfrm.delete_policy(policy.src, policy.dst, policy.dir, policy.if_id)
                .await
                .unwrap();
            // Deleting it again is not an error.
            xfrm.delete_policy(policy.src, policy.dst, policy.dir, policy.if_id)
                .await
                .unwrap();
        }
        assert!(xfrm.policies().await.unwrap().is_empty());
        assert!(xfrm.sas().await.unwrap().is_empty());
        // Deleting an SA that is not there is done, too.
        xfrm.delete_sa(ip("198.18.0.1"), ip("198.18.0.2"), 0x1000)
            .await
            .unwrap();
    });
}

#[test]
#[ignore = "needs root and network namespaces"]
fn a_kernel_without_esp_refuses_an_sa_with_a_clear_error() {
    let ns = Netns::new();
    // The VM lab's kernels have ESP; this host's does not, and the agent
    // must say so rather than carry on: a refused SA is an error naming it.
    let has_esp =
        std::fs::read_to_string("/proc/crypto").is_ok_and(|c| c.contains("rfc4106(gcm(aes))"));
    ns.run(|| async move {
        let xfrm = Xfrm::connect().unwrap();
        let sa = Sa {
            src: ip("198.18.0.1"),
            dst: ip("198.18.0.2"),
            spi: 0x1000,
            reqid: 1,
            if_id: 0x51830,
            replay_window: 128,
            oseq: 0,
        };
        let result = xfrm
            .add_sa(new_sa(&sa, &[7; AEAD_KEY_LEN], false).unwrap())
            .await;
        if has_esp {
            result.unwrap();
            let sas = xfrm.sas().await.unwrap();
            assert_eq!(sas.len(), 1);
            assert_eq!(sas[0].spi, 0x1000);
        } else {
            let err = result.unwrap_err();
            assert!(matches!(err, XfrmError::Kernel { .. }), "{err}");
            assert!(
                err.to_string().starts_with("installing an ESP SA: "),
                "{err}"
            );
        }
    });
}

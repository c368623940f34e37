//! The agent's Kubernetes behaviour, end to end: several real `wireseal agent`
//! processes (one per simulated node, in-memory datapath) against the fake
//! apiserver, exactly as they would run against a cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Taint;
use support::{Cluster, KEY_ANNOTATION, eventually, expected_peers};

const CONVERGE: Duration = Duration::from_secs(20);

fn path_of(entry: &wireseal_fake_apiserver::AccessLogEntry) -> &str {
    entry.path.split('?').next().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_publish_keys_and_peer_with_every_other_node() {
    let cluster = Cluster::start().await;
    for (i, name) in ["node-a", "node-b", "node-c"].iter().enumerate() {
        cluster.add_node(name, u8::try_from(i).unwrap());
    }
    let agents: Vec<_> = ["node-a", "node-b", "node-c"]
        .iter()
        .map(|n| cluster.spawn_agent(n))
        .collect();
    let all: Vec<&_> = agents.iter().collect();

    for agent in &agents {
        let key = eventually("agent reports its key", CONVERGE, &all, || {
            agent.public_key()
        })
        .await;
        eventually(
            "public key published on the agent's own Node",
            CONVERGE,
            &all,
            || (cluster.annotation(&agent.name, KEY_ANNOTATION)? == key).then_some(()),
        )
        .await;
        // The key on the Node is the one in the agent's 0600 key file.
        let file = std::fs::read_to_string(agent.state_dir.join("private.key")).unwrap();
        assert!(
            !cluster
                .annotation(&agent.name, KEY_ANNOTATION)
                .unwrap()
                .contains(file.trim())
        );
    }
    for agent in &agents {
        eventually(
            "each agent's peers are exactly the other nodes",
            CONVERGE,
            &all,
            || {
                let want = expected_peers(agent, &all)?;
                (agent.peers()? == want).then_some(())
            },
        )
        .await;
    }
    let a = &agents[0];
    assert_eq!(
        cluster
            .annotation("node-a", "wireseal.dev/endpoint")
            .unwrap(),
        "192.0.2.10:51830"
    );
    let status = eventually("status annotation", CONVERGE, &all, || {
        let raw = cluster.annotation("node-a", "wireseal.dev/status")?;
        let status = wireseal_core::annotation::decode_status(&raw).ok()?;
        (status.peers_expected == 2).then_some(status)
    })
    .await;
    assert_eq!(
        status.datapath,
        Some(wireseal_core::DatapathKind::Userspace)
    );
    // A memory node has no interfaces, so no address inside its pod CIDR: its
    // status says host-network traffic to other nodes' pods would be dropped.
    let warning = a
        .status()
        .and_then(|s| s.host_source_warning)
        .expect("a host source warning");
    assert!(
        warning.starts_with("node node-a has no IPv4 address inside its pod CIDRs"),
        "{warning}"
    );
    let b = a
        .status()
        .unwrap()
        .peers
        .into_iter()
        .find(|p| p.node == "node-b")
        .unwrap();
    assert_eq!(b.endpoint.unwrap().to_string(), "192.0.2.11:51830");
    assert_eq!(b.allowed_ips, vec!["10.244.1.0/24".to_owned()]);

    // Publishing is done once: the agents are not patching their Nodes in a loop.
    let patches = |log: &[wireseal_fake_apiserver::AccessLogEntry]| {
        log.iter()
            .filter(|e| e.method == "PATCH" && path_of(e).ends_with("/status"))
            .count()
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = patches(&cluster.server.access_log());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = patches(&cluster.server.access_log());
    assert_eq!(
        before, after,
        "steady state must not write to the API server"
    );
    // Only the verbs the ClusterRole in deploy/ grants were used.
    for entry in cluster.server.access_log() {
        let path = path_of(&entry);
        let allowed = match entry.method.as_str() {
            "GET" => path.starts_with("/api/v1/nodes"),
            "PATCH" => {
                path.starts_with("/api/v1/nodes/") && path.ends_with("/status")
                    // The not-ready taint's removal, on the Node itself.
                    || path == "/api/v1/nodes/node-a"
                    || path == "/api/v1/nodes/node-b"
                    || path.starts_with("/apis/events.k8s.io/v1/namespaces/")
            }
            "POST" => path.starts_with("/apis/events.k8s.io/v1/namespaces/"),
            _ => false,
        };
        assert!(
            allowed,
            "request outside the RBAC in deploy/: {} {}",
            entry.method, entry.path
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_add_rekey_and_delete_change_the_mesh() {
    let cluster = Cluster::start().await;
    cluster.add_node("node-a", 0);
    cluster.add_node("node-b", 1);
    let a = cluster.spawn_agent("node-a");
    let mut b = cluster.spawn_agent("node-b");
    eventually("a and b peer", CONVERGE, &[&a, &b], || {
        (a.peers()?.len() == 1 && b.peers()?.len() == 1).then_some(())
    })
    .await;

    // A node joins.
    cluster.add_node("node-c", 2);
    let c = cluster.spawn_agent("node-c");
    for agent in [&a, &b, &c] {
        let all = [&a, &b, &c];
        eventually("node-c joins every mesh", CONVERGE, &all, || {
            (agent.peers()? == expected_peers(agent, &all)?).then_some(())
        })
        .await;
    }

    // node-b is re-keyed: a new key file, a restarted agent.
    let old_b = b.public_key().unwrap();
    b.stop();
    std::fs::remove_file(b.state_dir.join("private.key")).unwrap();
    b.start();
    let all = [&a, &b, &c];
    let new_b = eventually("node-b has a new key", CONVERGE, &all, || {
        b.public_key().filter(|k| *k != old_b)
    })
    .await;
    for agent in [&a, &c] {
        eventually("the others follow node-b's new key", CONVERGE, &all, || {
            (agent.peers()?.get("node-b")? == &new_b).then_some(())
        })
        .await;
    }

    // node-c leaves.
    drop(c);
    cluster.server.state().delete_node("node-c").unwrap();
    for agent in [&a, &b] {
        eventually("node-c is gone from the mesh", CONVERGE, &[&a, &b], || {
            (!agent.peers()?.contains_key("node-c") && agent.peers()?.len() == 1).then_some(())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_annotation_yields_an_event_and_leaves_the_rest() {
    let cluster = Cluster::start().await;
    cluster.add_node("node-a", 0);
    cluster.add_node("node-b", 1);
    // No agent runs on node-bad; someone wrote garbage into its key.
    cluster.add_node_with("node-bad", 2, &[(KEY_ANNOTATION, "not a key at all!")]);
    let a = cluster.spawn_agent("node-a");
    let b = cluster.spawn_agent("node-b");
    let all = [&a, &b];
    for agent in all {
        eventually(
            "good nodes peer, the bad one is left out",
            CONVERGE,
            &all,
            || (agent.peers()? == expected_peers(agent, &all)?).then_some(()),
        )
        .await;
    }
    let bad = a
        .status()
        .unwrap()
        .peers
        .into_iter()
        .find(|p| p.node == "node-bad")
        .unwrap();
    assert_eq!(bad.public_key, None);
    assert!(
        bad.issues
            .iter()
            .any(
                |i| i.contains("wireseal.dev/public-key") && i.contains("only printable ASCII")
                    || i.contains("not a usable WireGuard public key")
            ),
        "{:?}",
        bad.issues
    );

    let event = eventually("an Event on node-bad", CONVERGE, &all, || {
        cluster
            .server
            .state()
            .events()
            .into_iter()
            .find(|e| e.involved_object.name.as_deref() == Some("node-bad"))
    })
    .await;
    assert_eq!(event.reason.as_deref(), Some("InvalidWiresealInput"));
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert!(
        event
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("node \"node-bad\""),
        "{event:?}"
    );
    // One Event from one agent, not one per agent.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let count = cluster
        .server
        .state()
        .events()
        .iter()
        .filter(|e| e.involved_object.name.as_deref() == Some("node-bad"))
        .count();
    assert_eq!(count, 1);
    assert!(
        a.log_text().contains("refused wireseal input on node")
            || b.log_text().contains("refused wireseal input on node")
    );

    // Fixing the annotation brings node-bad into the mesh.
    let good_key = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";
    cluster.set_annotation("node-bad", KEY_ANNOTATION, Some(good_key));
    eventually("the fixed node becomes a peer", CONVERGE, &all, || {
        (a.peers()?.get("node-bad")? == good_key).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_faults_converge_with_nothing_lost() {
    let cluster = Cluster::start().await;
    cluster.add_node("node-a", 0);
    cluster.add_node("node-b", 1);
    let a = cluster.spawn_agent("node-a");
    let b = cluster.spawn_agent("node-b");
    let all = [&a, &b];
    eventually("mesh up", CONVERGE, &all, || {
        (a.peers()?.len() == 1 && b.peers()?.len() == 1).then_some(())
    })
    .await;
    let faults = cluster.server.faults();
    let key_of = |i: u8| {
        let public = x25519_dalek::x25519([i; 32], x25519_dalek::X25519_BASEPOINT_BYTES);
        wireseal_core::PublicKey::from_bytes(public)
            .unwrap()
            .to_string()
    };
    let both_see = |name: &'static str, key: String| {
        let (a, b) = (&a, &b);
        move || (a.peers()?.get(name)? == &key && b.peers()?.get(name)? == &key).then_some(())
    };

    // Outage: the server refuses connections. Nothing is torn down meanwhile.
    faults.refuse_connections();
    faults.wait_listening(false).await;
    // Open streams are dropped asynchronously; the outage has begun once none is left.
    let deadline = std::time::Instant::now() + CONVERGE;
    while faults.open_watches() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "watch streams survive the outage"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.add_node_with("node-c", 2, &[(KEY_ANNOTATION, &key_of(3))]);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        a.peers().unwrap().len(),
        1,
        "the last good state is kept during an outage"
    );
    assert_eq!(b.peers().unwrap().len(), 1);
    faults.accept_connections();
    faults.wait_listening(true).await;
    eventually(
        "after the outage, the change made meanwhile arrives",
        CONVERGE,
        &all,
        both_see("node-c", key_of(3)),
    )
    .await;

    // Dropped watch streams.
    faults.drop_watches();
    cluster.add_node_with("node-d", 3, &[(KEY_ANNOTATION, &key_of(4))]);
    eventually(
        "after dropped watches",
        CONVERGE,
        &all,
        both_see("node-d", key_of(4)),
    )
    .await;

    // 410 Gone inside the stream: the next watches of both agents get one
    // (their open streams are dropped to make them re-watch), so both relist.
    let lists = |cluster: &Cluster| {
        cluster
            .server
            .access_log()
            .iter()
            .filter(|e| {
                e.method == "GET" && path_of(e) == "/api/v1/nodes" && !e.path.contains("watch=true")
            })
            .count()
    };
    let before = lists(&cluster);
    faults.expire_next_watches(2);
    faults.drop_watches();
    cluster.set_annotation("node-c", KEY_ANNOTATION, Some(&key_of(5)));
    eventually(
        "after an in-stream 410",
        CONVERGE,
        &all,
        both_see("node-c", key_of(5)),
    )
    .await;
    eventually("both agents relisted after the 410", CONVERGE, &all, || {
        (lists(&cluster) >= before + 2).then_some(())
    })
    .await;

    // 500s on the next requests.
    faults.fail_next(6, 500);
    cluster.set_annotation("node-d", KEY_ANNOTATION, Some(&key_of(6)));
    eventually("after 500s", CONVERGE, &all, both_see("node-d", key_of(6))).await;

    // 409 on the agents' own writes: someone removed node-a's key annotation and
    // the first re-publications conflict; node-a's agent retries until it sticks.
    faults.fail_next(3, 409);
    cluster.set_annotation("node-a", KEY_ANNOTATION, None);
    let key_a = a.public_key().unwrap();
    eventually(
        "node-a re-publishes its key after conflicts",
        CONVERGE,
        &all,
        || (cluster.annotation("node-a", KEY_ANNOTATION)? == key_a).then_some(()),
    )
    .await;

    // Through all of it, nothing was lost: both agents end with every peer.
    eventually(
        "both agents peer with all three others",
        CONVERGE,
        &all,
        || {
            (a.peers()?.len() == 3 && b.peers()?.get("node-a")? == &key_a && b.peers()?.len() == 3)
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_not_ready_taint_goes_once_the_datapath_is_programmed_and_no_other() {
    let cluster = Cluster::start().await;
    cluster.add_node("node-a", 0);
    cluster.add_node("node-b", 1);
    // The kubelet registered node-a with the taint (and an operator cordoned it).
    cluster
        .server
        .state()
        .modify_node("node-a", |n| {
            n.spec.get_or_insert_with(Default::default).taints = Some(vec![
                Taint {
                    key: "node.kubernetes.io/unschedulable".into(),
                    effect: "NoSchedule".into(),
                    ..Taint::default()
                },
                Taint {
                    key: "wireseal.dev/agent-not-ready".into(),
                    effect: "NoSchedule".into(),
                    ..Taint::default()
                },
            ]);
        })
        .unwrap();
    let a = cluster.spawn_agent("node-a");
    let taints = |cluster: &Cluster| -> Vec<String> {
        cluster
            .server
            .state()
            .get_node("node-a")
            .and_then(|n| n.spec)
            .and_then(|s| s.taints)
            .unwrap_or_default()
            .into_iter()
            .map(|t| t.key)
            .collect()
    };
    eventually("the not-ready taint is gone", CONVERGE, &[&a], || {
        (taints(&cluster) == ["node.kubernetes.io/unschedulable"]).then_some(())
    })
    .await;
    assert!(a.status().is_some_and(|s| s.last_apply_ok));
    assert!(a.log_text().contains("removed the not-ready taint"));
}

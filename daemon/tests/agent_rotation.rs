//! Scheduled key rotation, end to end: real `wireseal agent` processes
//! (in-memory datapath) against the fake apiserver. The next key is
//! announced on the Node with a switch time; the rotating node and its peers
//! switch at that time; an agent restarted mid-rotation resumes it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;
use std::time::Duration;

use support::{Cluster, KEY_ANNOTATION, eventually, expected_peers};
use wireseal_core::rotation::decode_switch_at;

const CONVERGE: Duration = Duration::from_secs(20);
const NEXT_KEY: &str = "wireseal.dev/next-public-key";
const SWITCH_AT: &str = "wireseal.dev/key-switch-at";

fn unix_now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_is_announced_then_switched_everywhere_and_survives_a_restart() {
    let cluster = Cluster::start().await;
    let mut agents = cluster
        .full_mesh(&["node-a", "node-b", "node-c"], CONVERGE)
        .await;
    let c = agents.pop().unwrap();
    let mut b = agents.pop().unwrap();
    let a = agents.pop().unwrap();
    let all = [&a, &b, &c];
    let old = b.public_key().unwrap();

    // `wireseal keys rotate` on node-b: the next key, beside the current one.
    let output = Command::new(env!("CARGO_BIN_EXE_wireseal"))
        .args(["keys", "rotate", "--state-dir"])
        .arg(&b.state_dir)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let next = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert_ne!(next, old);
    assert!(b.state_dir.join("private.key.next").exists());

    let (announced_at, switch_at) =
        eventually("the next key announced on node-b", CONVERGE, &all, || {
            (cluster.annotation("node-b", NEXT_KEY)? == next)
                .then(|| cluster.annotation("node-b", SWITCH_AT))
                .flatten()
                .map(|at| (unix_now(), at))
        })
        .await;
    let switch_secs = decode_switch_at(&switch_at).unwrap();
    let rotation = eventually("wireseal status shows the rotation", CONVERGE, &all, || {
        b.status()?.key_rotation
    })
    .await;
    assert_eq!(rotation.next_public_key.to_string(), next);
    assert_eq!(rotation.switch_at, switch_at);
    assert_eq!(cluster.annotation("node-b", KEY_ANNOTATION).unwrap(), old);
    if announced_at < switch_secs {
        // Before the switch time, everyone still uses the current key.
        assert_eq!(a.peers().unwrap()["node-b"], old);
        assert_eq!(b.public_key().unwrap(), old);
    }

    // node-b restarts mid-rotation: the same key and time, from its disk.
    b.stop();
    b.start();
    let all = [&a, &b, &c];
    eventually("node-b back", CONVERGE, &all, || b.status()).await;
    assert_eq!(cluster.annotation("node-b", NEXT_KEY).unwrap(), next);
    assert_eq!(cluster.annotation("node-b", SWITCH_AT).unwrap(), switch_at);

    for agent in all {
        eventually("every node uses node-b's next key", CONVERGE, &all, || {
            (agent.peers()? == expected_peers(agent, &all)?
                && expected_peers(agent, &all)?
                    .get("node-b")
                    .is_none_or(|key| *key == next)
                && b.public_key()? == next)
                .then_some(())
        })
        .await;
    }
    assert!(
        unix_now() >= switch_secs,
        "nobody switched before the announced time"
    );
    eventually("node-b publishes the new key alone", CONVERGE, &all, || {
        (cluster.annotation("node-b", KEY_ANNOTATION)? == next
            && cluster.annotation("node-b", NEXT_KEY).is_none()
            && cluster.annotation("node-b", SWITCH_AT).is_none())
        .then_some(())
    })
    .await;
    assert!(!b.state_dir.join("private.key.next").exists());
    assert!(!b.state_dir.join("key-switch-at").exists());
    let logs = b.log_text();
    assert!(logs.contains("key rotation under way") && logs.contains("switched to the next key"));
    let key_file = std::fs::read_to_string(b.state_dir.join("private.key")).unwrap();
    assert!(
        !logs.contains(key_file.trim()),
        "the private key is never logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_rotation_annotations_are_refused_with_events_and_crash_nothing() {
    let cluster = Cluster::start().await;
    let mut agents = cluster.full_mesh(&["node-a", "node-b"], CONVERGE).await;
    let b = agents.pop().unwrap();
    let a = agents.pop().unwrap();
    let all = [&a, &b];
    let a_key = a.public_key().unwrap();
    // No agent runs on node-evil: its annotations are whatever was written.
    cluster.add_node_with(
        "node-evil",
        2,
        &[
            (
                KEY_ANNOTATION,
                "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=",
            ),
            // node-a's key as its next key, switching at once.
            (NEXT_KEY, &a_key),
            (SWITCH_AT, "2000-01-01T00:00:00Z"),
        ],
    );
    let event = eventually("a key refusal Event on node-evil", CONVERGE, &all, || {
        cluster.server.state().events().into_iter().find(|e| {
            e.involved_object.name.as_deref() == Some("node-evil")
                && e.message
                    .as_deref()
                    .unwrap_or_default()
                    .contains("key refused")
        })
    })
    .await;
    assert_eq!(event.reason.as_deref(), Some("WiresealClaimRefused"));
    assert_eq!(
        b.peers().unwrap()["node-a"],
        a_key,
        "node-a keeps its key at node-b"
    );

    // A switch time that is not a time, and one years ahead.
    for (at, why) in [
        ("tomorrow", "is not a time"),
        ("2999-01-01T00:00:00Z", "days ahead"),
    ] {
        cluster.set_annotation("node-evil", SWITCH_AT, Some(at));
        eventually(why, CONVERGE, &all, || {
            let evil = b
                .status()?
                .peers
                .into_iter()
                .find(|p| p.node == "node-evil")?;
            evil.issues.iter().any(|i| i.contains(why)).then_some(())
        })
        .await;
    }
    assert_eq!(b.peers().unwrap()["node-a"], a_key);
    assert!(
        a.status().is_some() && b.status().is_some(),
        "both agents run"
    );
}

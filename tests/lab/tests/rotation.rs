//! Scheduled key rotation in the network-namespace lab (userspace datapath):
//! node-1's key is rotated while a pod on node-0 pings a pod on node-1 every
//! 10 ms. The switch happens at the announced time on every node, nothing
//! crosses the underlay in clear meanwhile, the pods stay encrypted after it,
//! and the ping loses at most a few replies: a bound of one handshake (`wireseal-lab rotation` measures it; the
//! numbers are in bench/results/). Needs root; fails (never skips) without.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::Duration;

use wireseal_lab::rotation::rotate_under_ping;
use wireseal_lab::{Lab, LabConfig};

const UP: Duration = Duration::from_secs(60);

#[test]
#[ignore = "needs root (network namespaces, TUN devices)"]
fn a_key_rotates_under_traffic_and_the_pods_stay_encrypted() {
    let mut lab = Lab::up(LabConfig {
        nodes: 3,
        pods: 1,
        ..LabConfig::default()
    })
    .expect("the lab needs root, iproute2 and the built binaries");
    lab.set_agent_args(&["--key-rotation-lead", "6"]);
    lab.start_wireseal().unwrap();
    lab.wait_encrypted(UP).unwrap();
    let old = lab.status(1).unwrap().public_key.unwrap();

    // The whole underlay is captured across the rotation: a peer's routes
    // stay in the tunnel while its new key awaits its handshake, so nothing
    // may cross in clear, strict mode or not.
    let capture = lab.start_capture().unwrap();
    let run = rotate_under_ping(
        &mut lab,
        0,
        1,
        Duration::from_secs(40),
        Duration::from_secs(1),
    )
    .unwrap();
    println!("rotation under a 10 ms ping: {run}");
    let during = lab.finish_capture(capture).unwrap();
    assert_eq!(
        during.canary_frames, 0,
        "in clear during the rotation: {during}"
    );
    assert!(during.encrypted(), "{during}");
    let new = lab.status(1).unwrap().public_key.unwrap();
    assert_ne!(new, old);
    assert!(!run.switch_at.is_empty(), "the switch time was announced");
    assert!(run.received > 0);
    // Bounded by one handshake: a handful of 10 ms pings at most, never
    // the seconds of a handshake retry.
    assert!(run.lost <= 20, "{run}\n{}\n{}", lab.logs(0), lab.logs(1));

    // Encrypted after the switch: every peer of every node handshaken
    // with the current keys, and not one canary in clear on the underlay.
    lab.wait_encrypted(UP).unwrap();
    let report = lab.prove_sealed(&[(0, 1), (1, 0), (2, 1)]).unwrap();
    assert_eq!(report.canary_frames, 0, "{report}");
    let node0 = lab.status(0).unwrap();
    let peer = node0.peers.iter().find(|p| p.node == "node-1").unwrap();
    assert_eq!(peer.public_key, Some(new));
}

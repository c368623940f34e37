//! A `WG_CMD_GET_DEVICE` dump (raw netlink bytes) through the agent's
//! kernel-WireGuard decoder: no panic, every observed peer with its stats.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wireseal_netlink::fuzzing::wireguard_replies;

fuzz_target!(|data: &[u8]| {
    let (device, observation) = wireguard_replies(data);
    let _ = format!("{device:?} {observation:?}");
    if let Some(observed) = &observation.device {
        assert!(observed.peers.len() <= device.peers.len());
        for key in observed.peers.keys() {
            assert!(observation.stats.contains_key(key));
        }
    }
});

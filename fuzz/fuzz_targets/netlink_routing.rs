//! Route and address dumps (raw rtnetlink bytes) through the agent's route
//! and address decoders: no panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wireseal_netlink::fuzzing::routing_replies;

fuzz_target!(|data: &[u8]| {
    let replies = routing_replies(data);
    let _ = format!("{replies:?}");
});

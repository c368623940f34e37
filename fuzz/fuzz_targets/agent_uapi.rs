//! Arbitrary answers from whatever listens on the UAPI socket, through the
//! agent's decoders: no panic, and no error or decoded value ever carries the
//! private key the answer held.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wireseal_netlink::wireguard::uapi::{decode_get, decode_set_answer};

fuzz_target!(|data: &[u8]| {
    let Ok(answer) = std::str::from_utf8(data) else {
        return;
    };
    let secrets: Vec<&str> = answer
        .lines()
        .filter_map(|line| line.strip_prefix("private_key="))
        .filter(|value| value.len() == 64)
        .collect();
    let shown = match decode_get(answer) {
        Ok(observation) => format!("{observation:?}"),
        Err(err) => format!("{err} {err:?}"),
    };
    let set = match decode_set_answer(answer) {
        Ok(()) => String::new(),
        Err(err) => format!("{err} {err:?}"),
    };
    for secret in secrets {
        assert!(!shown.contains(secret), "the private key leaked: {shown}");
        assert!(!set.contains(secret), "the private key leaked: {set}");
    }
});

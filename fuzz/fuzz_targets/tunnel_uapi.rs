//! Arbitrary bytes on the tunnel's UAPI socket, through the same connection
//! handler the socket runs (framing, parser, apply, `get` answer): no panic,
//! every answer ends in `errno=`, and whatever state a conversation leaves,
//! the agent's decoder reads the tunnel's `get` answer without error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wireseal_fuzz::NoNet;
use wireseal_netlink::wireguard::uapi::decode_get;
use wireseal_tunnel::device::Device;
use wireseal_tunnel::uapi::handle_connection;

fn talk(device: &Device, input: &[u8]) -> String {
    let mut out = Vec::new();
    handle_connection(device, input, &mut out).expect("writing to a Vec cannot fail");
    String::from_utf8(out).expect("answers are UTF-8")
}

fuzz_target!(|data: &[u8]| {
    let device = Device::new(Box::new(NoNet));
    let answer = talk(&device, data);
    if !answer.is_empty() {
        assert!(answer.ends_with("\n\n"), "unterminated answer {answer:?}");
        let last = answer.trim_end().lines().last().unwrap_or_default();
        assert!(
            last.starts_with("errno="),
            "answer without errno: {answer:?}"
        );
    }
    let state = talk(&device, b"get=1\n\n");
    if let Err(err) = decode_get(&state) {
        panic!("the agent cannot read the tunnel's answer ({err}): {state:?}");
    }
});

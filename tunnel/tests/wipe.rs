//! The private key never stays behind in freed memory: a request that sets it and
//! a `get` that returns it, through the real connection handler, under an
//! allocator that searches every freed (or reallocated) block for the key.

use std::io;
use std::net::SocketAddr;

use wireseal_tunnel::device::{Device, Network};
use wireseal_tunnel::uapi::handle_connection;
use zeroize::Zeroizing;

#[global_allocator]
static ALLOC: wireseal_netns::WipeCheck = wireseal_netns::WipeCheck;

struct NoNet;

impl Network for NoNet {
    fn bind(&self, port: u16, _: u32) -> io::Result<u16> {
        Ok(if port == 0 { 40000 } else { port })
    }
    fn set_fwmark(&self, _: u32) -> io::Result<()> {
        Ok(())
    }
    fn send_to(&self, _: &[u8], _: SocketAddr) {}
}

const KEY: &str = "a8b9d3a1c4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e4f";

#[test]
fn no_copy_of_the_private_key_is_left_in_freed_memory() {
    let device = Device::new(Box::new(NoNet));
    // Enough peers that the get answer grows well past any first allocation.
    let mut request = Zeroizing::new(String::with_capacity(1 << 20));
    request.push_str("set=1\nprivate_key=");
    request.push_str(KEY);
    request.push('\n');
    for i in 0..300u32 {
        let mut peer = [0u8; 32];
        peer[..4].copy_from_slice(&i.to_be_bytes());
        peer[31] = 0x40;
        let hex: String = peer.iter().map(|b| format!("{b:02x}")).collect();
        request.push_str(&format!(
            "public_key={hex}\nallowed_ip=10.{}.{}.0/24\n",
            i / 256,
            i % 256
        ));
    }
    request.push_str("\nget=1\n\n");
    let mut answer = Zeroizing::new(Vec::with_capacity(1 << 20));
    wireseal_netns::arm(KEY.as_bytes());
    handle_connection(&device, request.as_bytes(), &mut *answer).unwrap();
    let leaks = wireseal_netns::disarm();
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("errno=0\n\nprivate_key="),
        "{}",
        &text[..40]
    );
    assert!(text.contains(KEY), "the get answer carries the key");
    assert_eq!(leaks, 0, "freed blocks that still held the private key");
}

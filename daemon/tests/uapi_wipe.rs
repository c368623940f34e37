//! The agent's UAPI client keeps no copy of the private key in freed memory: a
//! `set` that carries it and a `get` answer that returns it, against a stand-in
//! tunnel, under an allocator that searches every freed (or reallocated) block
//! for the key's hex.
#![allow(clippy::unwrap_used)]

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixListener;

use wireseal::datapath::Datapath as _;
use wireseal::datapath::userspace::UserspaceDatapath;
use wireseal_core::DevicePlan;
use wireseal_keymgr::PrivateKey;
use zeroize::Zeroizing;

#[global_allocator]
static ALLOC: wireseal_netns::WipeCheck = wireseal_netns::WipeCheck;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn the_uapi_client_leaves_no_copy_of_the_private_key() {
    let tmp = tempfile::tempdir().unwrap();
    let key = PrivateKey::generate().unwrap();
    let key_hex = Zeroizing::new(hex(key.as_bytes()));
    // A get answer large enough that the client's buffer grows many times.
    let mut answer = Zeroizing::new(String::with_capacity(1 << 20));
    answer.push_str("private_key=");
    answer.push_str(&key_hex);
    answer.push_str("\nlisten_port=51830\n");
    for i in 0..2000u32 {
        let mut peer = [0u8; 32];
        peer[..4].copy_from_slice(&i.to_be_bytes());
        peer[31] = 0x40;
        answer.push_str(&format!(
            "public_key={}\nallowed_ip=10.{}.{}.0/24\n",
            hex(&peer),
            i / 256,
            i % 256
        ));
    }
    answer.push_str("errno=0\n\n");
    let listener = UnixListener::bind(tmp.path().join("wsw0.sock")).unwrap();
    let server = std::thread::spawn(move || {
        let mut requests = Vec::new();
        for reply in [&b"errno=0\n\n"[..], answer.as_bytes()] {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = Zeroizing::new(Vec::with_capacity(4096));
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\n\n") {
                assert_eq!(stream.read(&mut byte).unwrap(), 1);
                request.push(byte[0]);
            }
            requests.push(request);
            stream.write_all(reply).unwrap();
        }
        requests
    });
    let mut datapath = UserspaceDatapath::new("wsw0", tmp.path(), None);
    let plan = DevicePlan {
        set_private_key: Some(key.public_key()),
        listen_port: Some(51830),
        ..DevicePlan::default()
    };
    wireseal_netns::arm(key_hex.as_bytes());
    datapath.apply(&plan, &key).await.unwrap();
    let observed = datapath.observe().await.unwrap();
    let leaks = wireseal_netns::disarm();
    let requests = server.join().unwrap();
    assert!(
        String::from_utf8_lossy(&requests[0]).contains(key_hex.as_str()),
        "the set carried the key"
    );
    let device = observed.device.unwrap();
    assert_eq!(device.public_key, Some(key.public_key()));
    assert_eq!(device.peers.len(), 2000);
    assert_eq!(leaks, 0, "freed blocks that still held the private key");
}

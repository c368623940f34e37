//! Table tests of the UAPI parser, serializer and connection handling.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::sync::{Arc, Mutex};

use super::*;
use crate::device::{Device, Network};

const PRIV: &str = "a8b9d3a1c4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e4f";
const PEER: &str = "e0b1b9d26d0f7a2f0c2c2b0b68b85b3d2cd44f0b0a4b9c1f3e5a6c7d8e9f0a1b";
const PEER2: &str = "5a4b3c2d1e0f00112233445566778899aabbccddeeff00112233445566778899";

/// A network that records what it was asked to do; port 7 is "in use".
#[derive(Default)]
pub(crate) struct FakeNet {
    pub calls: Mutex<Vec<String>>,
}

impl Network for Arc<FakeNet> {
    fn bind(&self, port: u16, fwmark: u32) -> io::Result<u16> {
        if port == 7 {
            return Err(io::Error::from(io::ErrorKind::AddrInUse));
        }
        self.calls
            .lock()
            .unwrap()
            .push(format!("bind {port} {fwmark}"));
        Ok(if port == 0 { 40000 } else { port })
    }
    fn set_fwmark(&self, fwmark: u32) -> io::Result<()> {
        self.calls.lock().unwrap().push(format!("mark {fwmark}"));
        Ok(())
    }
    fn send_to(&self, _: &[u8], dst: SocketAddr) {
        self.calls.lock().unwrap().push(format!("send {dst}"));
    }
}

fn device() -> (Device, Arc<FakeNet>) {
    let net = Arc::new(FakeNet::default());
    (Device::new(Box::new(Arc::clone(&net))), net)
}

fn talk(device: &Device, input: &str) -> String {
    let mut out = Vec::new();
    handle_connection(device, input.as_bytes(), &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn parse(text: &str) -> Result<Request, UapiError> {
    parse_request(text.lines())
}

#[test]
fn good_requests_parse() {
    assert_eq!(parse("get=1"), Ok(Request::Get));
    let Ok(Request::Set(req)) = parse(&format!(
        "set=1\nprivate_key={PRIV}\nlisten_port=51830\nfwmark=0x10\nreplace_peers=true\n\
         public_key={PEER}\nupdate_only=true\npreshared_key={PRIV}\nendpoint=[fd00::1]:51820\n\
         persistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=10.1.2.3/24\n\
         allowed_ip=fd00::/64\nprotocol_version=1\npublic_key={PEER2}\nremove=true"
    )) else {
        panic!("set must parse");
    };
    assert_eq!(req.listen_port, Some(51830));
    assert_eq!(req.fwmark, Some(16));
    assert!(req.replace_peers);
    assert_eq!(req.peers.len(), 2);
    let p = &req.peers[0];
    assert!(p.update_only && p.replace_allowed_ips && !p.remove);
    assert_eq!(p.endpoint, Some("[fd00::1]:51820".parse().unwrap()));
    assert_eq!(p.persistent_keepalive, Some(25));
    assert_eq!(
        p.allowed_ips,
        vec!["10.1.2.0/24".parse().unwrap(), "fd00::/64".parse().unwrap()]
    );
    assert!(req.peers[1].remove);
    // All-zero keys mean "remove".
    let Ok(Request::Set(req)) = parse(&format!("set=1\nprivate_key={}", "0".repeat(64))) else {
        panic!()
    };
    assert_eq!(req.private_key, Some(None));
}

#[test]
fn bad_requests_are_refused_with_einval_or_eproto() {
    let long = format!("set=1\nfwmark={}", "9".repeat(MAX_LINE + 10));
    let cases: Vec<(String, i32)> = vec![
        ("".into(), -libc::EPROTO),
        ("hello".into(), -libc::EPROTO),
        ("get=2".into(), -libc::EPROTO),
        ("get=1\nlisten_port=1".into(), -libc::EINVAL),
        ("set=1\nbogus=1".into(), -libc::EINVAL),
        ("set=1\nno equals sign".into(), -libc::EINVAL),
        ("set=1\nprivate_key=zz".into(), -libc::EINVAL),
        (
            format!("set=1\nprivate_key={}x", &PRIV[..63]),
            -libc::EINVAL,
        ),
        ("set=1\nlisten_port=65536".into(), -libc::EINVAL),
        ("set=1\nlisten_port=-1".into(), -libc::EINVAL),
        ("set=1\nfwmark=0x1ffffffff".into(), -libc::EINVAL),
        ("set=1\nreplace_peers=false".into(), -libc::EINVAL),
        (
            format!("set=1\npublic_key={}", "0".repeat(64)),
            -libc::EINVAL,
        ),
        (
            format!("set=1\npublic_key={PEER}\nendpoint=10.0.0.1"),
            -libc::EINVAL,
        ),
        (
            format!("set=1\npublic_key={PEER}\nendpoint=host:1"),
            -libc::EINVAL,
        ),
        (
            format!("set=1\npublic_key={PEER}\nendpoint=10.0.0.1:0"),
            -libc::EINVAL,
        ),
        (
            format!("set=1\npublic_key={PEER}\nallowed_ip=10.0.0.0/33"),
            -libc::EINVAL,
        ),
        (
            format!("set=1\npublic_key={PEER}\nallowed_ip=10.0.0.1"),
            -libc::EINVAL,
        ),
        (
            format!("set=1\npublic_key={PEER}\nallowed_ip=fd00::/129"),
            -libc::EINVAL,
        ),
        (
            format!("set=1\npublic_key={PEER}\nprotocol_version=2"),
            -libc::EINVAL,
        ),
        (
            format!("set=1\npublic_key={PEER}\nlisten_port=1"),
            -libc::EINVAL,
        ),
        (
            format!("set=1\npublic_key={PEER}\npersistent_keepalive_interval=70000"),
            -libc::EINVAL,
        ),
        (long, -libc::EINVAL),
    ];
    for (text, errno) in cases {
        let got = parse(&text).map(|_| ()).map_err(|e| e.errno());
        assert_eq!(got, Err(errno), "input {:?}", &text[..text.len().min(80)]);
    }
}

#[test]
fn errors_never_echo_keys() {
    let err = parse(&format!("set=1\nprivate_key={}Q", &PRIV[..63])).unwrap_err();
    assert!(!err.to_string().contains(&PRIV[..20]), "{err}");
}

#[test]
fn set_then_get_roundtrip() {
    let (dev, net) = device();
    let answer = talk(
        &dev,
        &format!(
            "set=1\nprivate_key={PRIV}\nlisten_port=51830\nfwmark=7\npublic_key={PEER}\n\
             endpoint=192.0.2.1:51820\nallowed_ip=10.9.0.0/16\nallowed_ip=10.8.0.1/32\n\n"
        ),
    );
    assert_eq!(answer, "errno=0\n\n");
    // Bound once, and a handshake started at once towards the new peer's endpoint.
    assert_eq!(
        *net.calls.lock().unwrap(),
        vec![
            "bind 51830 7".to_string(),
            "send 192.0.2.1:51820".to_string()
        ]
    );
    let get = talk(&dev, "get=1\n\n");
    assert!(
        get.starts_with(&format!(
            "private_key={PRIV}\nlisten_port=51830\nfwmark=7\n"
        )),
        "{get}"
    );
    assert!(
        get.contains(&format!(
            "public_key={PEER}\nprotocol_version=1\nendpoint=192.0.2.1:51820\n"
        )),
        "{get}"
    );
    assert!(get.contains("last_handshake_time_sec=0\nlast_handshake_time_nsec=0\n"));
    assert!(get.contains("tx_bytes=148\nrx_bytes=0\npersistent_keepalive_interval=0\n"));
    assert!(
        get.contains("allowed_ip=10.8.0.1/32\nallowed_ip=10.9.0.0/16\n"),
        "{get}"
    );
    assert!(get.ends_with("errno=0\n\n"));

    // replace_allowed_ips, then removal of the peer, then a second request on the
    // same connection.
    let answer = talk(
        &dev,
        &format!(
            "set=1\npublic_key={PEER}\nreplace_allowed_ips=true\nallowed_ip=10.7.0.0/24\n\n\
             get=1\n\n"
        ),
    );
    assert!(answer.starts_with("errno=0\n\n"));
    assert!(
        answer.contains("allowed_ip=10.7.0.0/24\nerrno=0\n\n"),
        "{answer}"
    );
    assert!(!answer.contains("10.9.0.0"));
    let answer = talk(
        &dev,
        &format!("set=1\npublic_key={PEER}\nremove=true\n\nget=1\n\n"),
    );
    assert!(!answer.contains("public_key"), "{answer}");
}

#[test]
fn a_bad_request_changes_nothing() {
    let (dev, net) = device();
    let answer = talk(
        &dev,
        &format!(
            "set=1\nlisten_port=1234\npublic_key={PEER}\nallowed_ip=10.0.0.0/8\nallowed_ip=garbage\n\n"
        ),
    );
    assert_eq!(answer, format!("errno={}\n\n", -libc::EINVAL));
    assert!(net.calls.lock().unwrap().is_empty(), "nothing bound");
    assert_eq!(talk(&dev, "get=1\n\n"), "errno=0\n\n");
    // A port in use is refused and leaves the rest of the request unapplied.
    let answer = talk(
        &dev,
        &format!("set=1\nlisten_port=7\npublic_key={PEER}\n\n"),
    );
    assert_eq!(answer, format!("errno={}\n\n", -libc::EADDRINUSE));
    assert_eq!(talk(&dev, "get=1\n\n"), "errno=0\n\n");
}

#[test]
fn update_only_and_replace_peers() {
    let (dev, _) = device();
    talk(
        &dev,
        &format!("set=1\npublic_key={PEER}\nupdate_only=true\nallowed_ip=10.0.0.0/8\n\n"),
    );
    assert_eq!(
        talk(&dev, "get=1\n\n"),
        "errno=0\n\n",
        "update_only never creates"
    );
    talk(
        &dev,
        &format!("set=1\npublic_key={PEER}\npublic_key={PEER2}\n\n"),
    );
    let get = talk(&dev, "get=1\n\n");
    assert_eq!(get.matches("public_key=").count(), 2);
    talk(
        &dev,
        &format!("set=1\nreplace_peers=true\npublic_key={PEER2}\n\n"),
    );
    let get = talk(&dev, "get=1\n\n");
    assert!(get.contains(PEER2) && !get.contains(PEER), "{get}");
}

#[test]
fn framing_errors_answer_and_close() {
    let (dev, _) = device();
    let huge = format!("set=1\nfwmark={}\n\n", "1".repeat(100_000));
    assert_eq!(talk(&dev, &huge), format!("errno={}\n\n", -libc::EINVAL));
    // Truncated: no terminating blank line.
    assert_eq!(
        talk(&dev, "set=1\nfwmark=1"),
        format!("errno={}\n\n", -libc::EINVAL)
    );
    assert_eq!(
        talk(&dev, "set=1\nfwmark=1\n"),
        format!("errno={}\n\n", -libc::EINVAL)
    );
    // Binary garbage.
    let mut out = Vec::new();
    handle_connection(&dev, &b"\xff\xfe\x00garbage\n\n"[..], &mut out).unwrap();
    assert!(String::from_utf8(out).unwrap().starts_with("errno=-"));
    // An empty connection gets no answer at all.
    assert_eq!(talk(&dev, ""), "");
}

#[test]
fn the_socket_directory_is_made_private_even_when_it_exists() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wireguard");
    // A hostPath the node created world-readable.
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Even with a permissive umask the socket is created 0600.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    let server = UapiServer::bind(&dir, "wst0");
    nix::sys::stat::umask(old);
    let server = server.unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "directory");
    assert_eq!(mode(server.path()), 0o600, "socket");
}

#[test]
fn a_symlinked_socket_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("elsewhere");
    std::fs::create_dir(&target).unwrap();
    let link = tmp.path().join("wireguard");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let err = UapiServer::bind(&link, "wst0")
        .err()
        .expect("a symlink is refused");
    assert!(err.to_string().contains("not a directory"), "{err}");
}

#[test]
fn only_root_or_our_own_user_may_talk() {
    assert!(peer_allowed(0, 1000));
    assert!(peer_allowed(1000, 1000));
    assert!(!peer_allowed(65534, 1000));
    assert!(!peer_allowed(65534, 0));
}

#[test]
fn requests_beyond_the_shared_byte_budget_are_refused() {
    let (dev, net) = device();
    // Room for about one peer section of another connection's request.
    let budget = serve::Budget::new(4 * 1024);
    let request = format!("set=1\nlisten_port=1234\n{}\n", "fwmark=1\n".repeat(200));
    let mut out = Vec::new();
    serve::serve_connection(&dev, request.as_bytes(), &mut out, &budget).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!("errno={}\n\n", -libc::EIO)
    );
    assert!(net.calls.lock().unwrap().is_empty(), "nothing applied");
    // What the refused request held is given back: a small one fits again.
    let mut out = Vec::new();
    serve::serve_connection(&dev, &b"set=1\nfwmark=3\n\n"[..], &mut out, &budget).unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), "errno=0\n\n");
}

#[test]
fn a_client_that_trickles_bytes_is_cut_off_at_the_request_deadline() {
    use std::io::{Read as _, Write as _};
    let (dev, _) = device();
    let (client, server) = std::os::unix::net::UnixStream::pair().unwrap();
    let serving = std::thread::spawn(move || {
        let (reader, writer) =
            serve::Timed::pair(server, std::time::Duration::from_millis(300)).unwrap();
        serve::serve_connection(&dev, reader, writer, &serve::Budget::new(MAX_BUFFERED))
    });
    // One byte every 50 ms: each read is quick, the request never ends. A read
    // timeout alone would wait forever.
    let mut writer = client.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        let _ = writer.write_all(b"set=1\nfwmark=");
        while writer.write_all(b"1").is_ok() {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    });
    serving.join().unwrap().unwrap();
    // The server closed with the trickler's latest bytes unread, so after the
    // answer the kernel may end the stream with a reset instead of an EOF.
    let mut answer = Vec::new();
    let mut reader = client;
    let mut chunk = [0u8; 64];
    loop {
        match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(err) => panic!("reading the answer: {err}"),
        }
    }
    assert_eq!(
        String::from_utf8(answer).unwrap(),
        format!("errno={}\n\n", -libc::EIO)
    );
    drop(reader);
    trickle.join().unwrap();
}

#[test]
fn health_names_a_stuck_datapath_thread() {
    let (dev, _) = device();
    assert_eq!(talk(&dev, "health=1\n\n"), "errno=0\n\n");
    let beat = dev.health().register("udp-rx-0");
    assert_eq!(talk(&dev, "health=1\n\n"), "errno=0\n\n");
    beat.stop();
    assert_eq!(
        talk(&dev, "health=1\n\n"),
        format!("stale_thread=udp-rx-0\nerrno={}\n\n", -libc::EIO)
    );
}

/// Runs `f` with effective uid `uid` (nextest runs each test in its own process, so
/// the process-wide switch touches no other test).
pub(crate) fn as_user<T>(uid: u32, f: impl FnOnce() -> T) -> T {
    use nix::unistd::{Uid, seteuid};
    seteuid(Uid::from_raw(uid)).expect("seteuid (needs root)");
    let out = f();
    seteuid(Uid::from_raw(0)).expect("seteuid back to root");
    out
}

#[test]
#[ignore = "needs root: connects as another user"]
fn the_socket_answers_only_root_or_its_own_user() {
    use std::io::{Read as _, Write as _};
    use std::os::unix::net::UnixStream;
    let tmp = tempfile::tempdir().unwrap();
    let (dev, _) = device();
    let server = UapiServer::bind(tmp.path(), "wst0").unwrap();
    server.spawn(Arc::new(dev)).unwrap();
    // File modes out of the way (as a careless chmod of a hostPath would leave them),
    // so only the credential check stands between this user and the key.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(server.path(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let ask = |stream: std::io::Result<UnixStream>| {
        let mut stream = stream.expect("connecting");
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        // Refused, the write may already fail; the answer is what counts.
        let _ = stream.write_all(b"get=1\n\n");
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    };
    let nobody = as_user(65534, || UnixStream::connect(server.path()));
    assert_eq!(ask(nobody), "", "another user gets nothing");
    let root = ask(UnixStream::connect(server.path()));
    assert!(root.ends_with("errno=0\n\n"), "{root:?}");
}

#[test]
#[ignore = "needs root: listens as another user"]
fn the_check_trusts_only_a_root_or_own_listener() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let path = socket_path(tmp.path(), "wst0");
    let _listener = as_user(65534, || {
        std::os::unix::net::UnixListener::bind(&path).unwrap()
    });
    let err = check_health(tmp.path(), "wst0", CHECK_DEADLINE).unwrap_err();
    assert!(err.contains("served by uid 65534"), "{err}");
}

#[test]
fn the_check_fails_while_a_datapath_thread_is_stuck() {
    let tmp = tempfile::tempdir().unwrap();
    let (dev, _) = device();
    let dev = Arc::new(dev);
    let beat = dev.health().register("tun-rx-0");
    let server = UapiServer::bind(tmp.path(), "wst0").unwrap();
    server.spawn(Arc::clone(&dev)).unwrap();
    check_health(tmp.path(), "wst0", CHECK_DEADLINE).unwrap();
    beat.stop();
    let err = check_health(tmp.path(), "wst0", CHECK_DEADLINE).unwrap_err();
    assert_eq!(err, "datapath threads without progress: tun-rx-0");
    let err = check_health(tmp.path(), "nothing", CHECK_DEADLINE).unwrap_err();
    assert!(err.contains("connecting to"), "{err}");
}

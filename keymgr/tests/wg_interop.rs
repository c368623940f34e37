//! Interoperability with the real `wg` from wireguard-tools, in both directions.
//!
//! These tests fail, rather than skip, when `wg` is missing: a silent pass would
//! hide exactly the incompatibility they exist to catch.

// Test helpers are not #[test] fns, so clippy.toml's allow-unwrap-in-tests does
// not reach them; a panic is the right failure in a test binary.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::Write as _;
use std::process::{Command, Stdio};

use wireseal_keymgr::{KeyOrigin, KeyStore, PrivateKey, is_clamped};

const KEYS_PER_DIRECTION: usize = 8;

const WG_REQUIRED: &str = "wg from wireguard-tools is required: \
     apt-get install -y --no-install-recommends wireguard-tools";

/// Runs `wg <arg>` with `input` on stdin and returns its stdout without the
/// trailing newline.
fn wg(arg: &str, input: &str) -> String {
    let mut child = Command::new("wg")
        .arg(arg)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("{WG_REQUIRED} (running `wg {arg}` failed: {err})"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "wg {arg} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    text.strip_suffix('\n')
        .unwrap_or_else(|| panic!("wg {arg} output lacks its newline"))
        .to_owned()
}

#[test]
fn keys_from_wg_genkey_load_and_match_wg_pubkey() {
    for _ in 0..KEYS_PER_DIRECTION {
        let secret = wg("genkey", "");
        let key = PrivateKey::from_base64(&secret).unwrap();
        assert_eq!(key.to_base64().as_str(), secret, "round trip is exact");
        assert!(is_clamped(key.as_bytes()), "wg genkey clamps its keys");
        assert_eq!(
            key.public_key().to_base64(),
            wg("pubkey", &format!("{secret}\n"))
        );
    }
}

#[test]
fn our_generated_keys_give_our_public_key_in_wg_pubkey() {
    for _ in 0..KEYS_PER_DIRECTION {
        let key = PrivateKey::generate().unwrap();
        assert!(is_clamped(key.as_bytes()));
        let public = wg("pubkey", &format!("{}\n", key.to_base64().as_str()));
        assert_eq!(public, key.public_key().to_base64());
    }
}

#[test]
fn unclamped_keys_derive_the_same_public_key_as_wg() {
    // wg clamps on use, and so does X25519; a hand-made unclamped key must not
    // make the two disagree.
    for bytes in [[0xffu8; 32], [0x01; 32], [0x80; 32]] {
        let key = PrivateKey::from_bytes(bytes).unwrap();
        assert!(!is_clamped(key.as_bytes()));
        let public = wg("pubkey", &format!("{}\n", key.to_base64().as_str()));
        assert_eq!(public, key.public_key().to_base64());
    }
}

#[test]
fn key_files_are_interchangeable_with_wg() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");

    // A file we write is valid input to `wg pubkey` as it stands.
    let store = KeyStore::new(&dir);
    let (key, origin) = store.load_or_create().unwrap();
    assert_eq!(origin, KeyOrigin::Created);
    let file = fs::read_to_string(store.path()).unwrap();
    assert_eq!(wg("pubkey", &file), key.public_key().to_base64());

    // `wg genkey > private.key` is a valid way to provision a node.
    let provisioned = tmp.path().join("provisioned");
    fs::create_dir(&provisioned).unwrap();
    let secret = wg("genkey", "");
    let path = provisioned.join("private.key");
    let mut out = fs::File::options()
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    writeln!(out, "{secret}").unwrap();
    fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    fs::set_permissions(
        &provisioned,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let loaded = KeyStore::new(&provisioned).load().unwrap().unwrap();
    assert_eq!(
        loaded.public_key().to_base64(),
        wg("pubkey", &format!("{secret}\n"))
    );
}

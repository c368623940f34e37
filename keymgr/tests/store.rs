//! KeyStore behaviour on a real filesystem: persistence, refusals, rotation.

// Test helpers are not #[test] fns, so clippy.toml's allow-unwrap-in-tests does
// not reach them; a panic is the right failure in a test binary.
#![allow(clippy::unwrap_used)]

use std::fs::{self, File};
use std::os::unix::fs::{PermissionsExt as _, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use wireseal_keymgr::{KeyOrigin, KeyStore, KeyStoreError, PrivateKey};

fn state_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wireseal");
    (tmp, dir)
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// The files in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// A store whose current key file holds `content` with mode 0600.
fn store_with_current(content: &[u8]) -> (tempfile::TempDir, KeyStore) {
    let (tmp, dir) = state_dir();
    fs::create_dir(&dir).unwrap();
    set_mode(&dir, 0o700);
    let store = KeyStore::new(&dir);
    fs::write(store.path(), content).unwrap();
    set_mode(store.path(), 0o600);
    (tmp, store)
}

#[test]
fn load_or_create_creates_once_then_loads_the_same_key() {
    let (_tmp, dir) = state_dir();
    let store = KeyStore::new(&dir);
    assert!(store.load().unwrap().is_none(), "no directory yet");

    let (created, origin) = store.load_or_create().unwrap();
    assert_eq!(origin, KeyOrigin::Created);
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(store.path()), 0o600);
    let content = fs::read_to_string(store.path()).unwrap();
    assert_eq!(content, format!("{}\n", created.to_base64().as_str()));

    let (loaded, origin) = store.load_or_create().unwrap();
    assert_eq!(origin, KeyOrigin::Loaded);
    assert_eq!(loaded.as_bytes(), created.as_bytes());
    assert_eq!(
        store.load().unwrap().unwrap().public_key(),
        created.public_key()
    );
    assert_eq!(listing(&dir), ["private.key"], "no temporary files remain");
}

#[test]
fn accepts_wg_style_file_with_surrounding_whitespace() {
    let key = PrivateKey::generate().unwrap();
    let (_tmp, store) =
        store_with_current(format!("  {}\r\n\n", key.to_base64().as_str()).as_bytes());
    assert_eq!(store.load().unwrap().unwrap().as_bytes(), key.as_bytes());
}

#[test]
fn refuses_key_files_readable_by_group_or_others() {
    let key = PrivateKey::generate().unwrap();
    let content = format!("{}\n", key.to_base64().as_str());
    for bad in [0o644, 0o640, 0o604, 0o660, 0o610, 0o601] {
        let (_tmp, store) = store_with_current(content.as_bytes());
        set_mode(store.path(), bad);
        let err = store.load().unwrap_err();
        assert!(
            matches!(err, KeyStoreError::InsecureMode { mode, .. } if mode == bad),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains(&store.path().display().to_string()),
            "{message}"
        );
        assert!(message.contains(&format!("mode {bad:04o}")), "{message}");
        assert!(message.contains("chmod 600"), "{message}");
        // Refused, not replaced.
        assert!(store.load_or_create().is_err());
        assert_eq!(fs::read_to_string(store.path()).unwrap(), content);
    }
    let (_tmp, store) = store_with_current(content.as_bytes());
    set_mode(store.path(), 0o400);
    assert!(store.load().unwrap().is_some(), "0400 is fine");
}

#[test]
fn refuses_symlinks_even_to_a_valid_key() {
    let key = PrivateKey::generate().unwrap();
    let (tmp, store) = store_with_current(b"");
    fs::remove_file(store.path()).unwrap();
    let target = tmp.path().join("elsewhere.key");
    fs::write(&target, format!("{}\n", key.to_base64().as_str())).unwrap();
    set_mode(&target, 0o600);
    symlink(&target, store.path()).unwrap();
    let err = store.load().unwrap_err();
    assert!(matches!(err, KeyStoreError::Symlink { .. }), "{err:?}");
    assert!(err.to_string().contains("symlink"));

    // A dangling symlink is not "missing": creating through it would write
    // wherever it points.
    fs::remove_file(&target).unwrap();
    let err = store.load_or_create().unwrap_err();
    assert!(matches!(err, KeyStoreError::Symlink { .. }), "{err:?}");
    assert!(!target.exists());
}

#[test]
fn refuses_directories_and_fifos() {
    let (_tmp, store) = store_with_current(b"");
    fs::remove_file(store.path()).unwrap();
    fs::create_dir(store.path()).unwrap();
    set_mode(store.path(), 0o700);
    let err = store.load_or_create().unwrap_err();
    assert!(
        matches!(err, KeyStoreError::NotRegularFile { .. }),
        "{err:?}"
    );

    let (_tmp, store) = store_with_current(b"");
    fs::remove_file(store.path()).unwrap();
    let status = Command::new("mkfifo")
        .args(["-m", "600"])
        .arg(store.path())
        .status()
        .expect("mkfifo (coreutils) is needed for this test");
    assert!(status.success());
    // Must not block waiting for a writer.
    let err = store.load().unwrap_err();
    assert!(
        matches!(err, KeyStoreError::NotRegularFile { .. }),
        "{err:?}"
    );
}

#[test]
fn refuses_a_state_directory_writable_by_others() {
    for bad in [0o777, 0o775, 0o1777, 0o720] {
        let (_tmp, dir) = state_dir();
        fs::create_dir(&dir).unwrap();
        set_mode(&dir, bad);
        let err = KeyStore::new(&dir).load_or_create().unwrap_err();
        assert!(
            matches!(err, KeyStoreError::InsecureDir { mode, .. } if mode == bad),
            "{err:?}"
        );
        assert!(listing(&dir).is_empty());
    }
}

#[test]
#[ignore = "needs root: chowns a file to another user"]
fn refuses_a_key_file_owned_by_another_user() {
    let key = PrivateKey::generate().unwrap();
    let (_tmp, store) = store_with_current(format!("{}\n", key.to_base64().as_str()).as_bytes());
    // chown needs root; the test fails loudly rather than passing without
    // checking anything.
    std::os::unix::fs::chown(store.path(), Some(65534), None)
        .expect("this test needs root to chown a file to another user");
    let err = store.load().unwrap_err();
    assert!(
        matches!(err, KeyStoreError::WrongOwner { owner: 65534, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("uid 65534"));
}

#[test]
fn malformed_files_are_errors_that_name_the_file_but_not_the_content() {
    let real = PrivateKey::generate().unwrap();
    let real_b64 = real.to_base64().to_string();
    let mut damaged = real_b64.clone();
    damaged.replace_range(10..11, "*");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", b"".to_vec()),
        ("whitespace only", b" \n\t\n".to_vec()),
        ("damaged base64", format!("{damaged}\n").into_bytes()),
        ("truncated", format!("{}\n", &real_b64[..40]).into_bytes()),
        ("two keys", format!("{real_b64}\n{real_b64}\n").into_bytes()),
        ("unpadded", format!("{}\n", &real_b64[..43]).into_bytes()),
        ("not utf-8", b"\xff\xfe\x00garbage\n".to_vec()),
        (
            "all zero",
            b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n".to_vec(),
        ),
        (
            "config file",
            format!("PrivateKey = {real_b64}\n").into_bytes(),
        ),
    ];
    for (what, content) in cases {
        let (_tmp, store) = store_with_current(&content);
        let err = store.load().unwrap_err();
        assert!(
            matches!(
                err,
                KeyStoreError::Malformed { .. } | KeyStoreError::Empty { .. }
            ),
            "{what}: {err:?}"
        );
        let shown = format!("{err} {err:?}");
        assert!(
            shown.contains(&store.path().display().to_string()),
            "{what}: {shown}"
        );
        assert!(!shown.contains(&real_b64[..10]), "{what} leaks: {shown}");
        // Never regenerated over: the node would silently get a new identity.
        assert!(store.load_or_create().is_err(), "{what}");
        assert_eq!(fs::read(store.path()).unwrap(), content, "{what}");
    }
}

#[test]
fn huge_files_are_refused_unread() {
    for len in [1025, 1 << 20] {
        let (_tmp, store) = store_with_current(&vec![b'A'; len]);
        let err = store.load().unwrap_err();
        assert!(
            matches!(err, KeyStoreError::TooLarge { limit: 1024, .. }),
            "{err:?}"
        );
        assert!(store.load_or_create().is_err());
    }
    // A valid key padded with whitespace up to the limit is still a key.
    let key = PrivateKey::generate().unwrap();
    let mut content = format!("{}\n", key.to_base64().as_str()).into_bytes();
    content.resize(1024, b'\n');
    let (_tmp, store) = store_with_current(&content);
    assert!(store.load().unwrap().is_some());
}

#[test]
fn stale_temporary_files_are_removed_and_fresh_ones_kept() {
    let (_tmp, dir) = state_dir();
    fs::create_dir(&dir).unwrap();
    set_mode(&dir, 0o700);
    let stale = dir.join(".wireseal-key.tmp-1-00000000deadbeef");
    let fresh = dir.join(".wireseal-key.tmp-2-00000000cafef00d");
    for path in [&stale, &fresh] {
        File::create(path).unwrap();
    }
    File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    KeyStore::new(&dir).load_or_create().unwrap();
    assert!(!stale.exists());
    assert!(
        fresh.exists(),
        "a write in progress elsewhere is left alone"
    );
}

#[test]
fn concurrent_creators_agree_on_one_key() {
    let (_tmp, dir) = state_dir();
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let store = KeyStore::new(&dir);
            std::thread::spawn(move || store.load_or_create().unwrap())
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let on_disk = KeyStore::new(&dir).load().unwrap().unwrap();
    for (key, _) in &results {
        assert_eq!(key.public_key(), on_disk.public_key());
    }
    let created = results
        .iter()
        .filter(|(_, origin)| *origin == KeyOrigin::Created)
        .count();
    assert_eq!(created, 1);
    assert_eq!(listing(&dir), ["private.key"]);
}

#[test]
fn rotation_creates_promotes_and_discards_without_touching_current_early() {
    let (_tmp, dir) = state_dir();
    let store = KeyStore::new(&dir);
    assert!(store.load_next().unwrap().is_none());
    let (current, _) = store.load_or_create().unwrap();
    let current_before = fs::read(store.path()).unwrap();

    let (next, origin) = store.create_next().unwrap();
    assert_eq!(origin, KeyOrigin::Created);
    assert_ne!(next.public_key(), current.public_key());
    assert_eq!(mode(store.next_path()), 0o600);
    assert_eq!(fs::read(store.path()).unwrap(), current_before);

    let (again, origin) = store.create_next().unwrap();
    assert_eq!(origin, KeyOrigin::Loaded, "create_next is idempotent");
    assert_eq!(again.as_bytes(), next.as_bytes());
    assert_eq!(
        store.load_next().unwrap().unwrap().public_key(),
        next.public_key()
    );
    assert_eq!(
        store.load().unwrap().unwrap().public_key(),
        current.public_key()
    );
    assert_eq!(listing(&dir), ["private.key", "private.key.next"]);

    let promoted = store.promote_next().unwrap();
    assert_eq!(promoted.public_key(), next.public_key());
    assert_eq!(
        store.load().unwrap().unwrap().public_key(),
        next.public_key()
    );
    assert!(store.load_next().unwrap().is_none());
    assert_eq!(mode(store.path()), 0o600);
    assert_eq!(listing(&dir), ["private.key"]);
    assert!(matches!(
        store.promote_next(),
        Err(KeyStoreError::NoNextKey { .. })
    ));

    let (abandoned, _) = store.create_next().unwrap();
    assert!(store.discard_next().unwrap());
    assert!(!store.discard_next().unwrap());
    assert!(store.load_next().unwrap().is_none());
    let (fresh, origin) = store.create_next().unwrap();
    assert_eq!(origin, KeyOrigin::Created);
    assert_ne!(fresh.public_key(), abandoned.public_key());
    assert_eq!(
        store.load().unwrap().unwrap().public_key(),
        next.public_key()
    );
}

#[test]
fn a_bad_next_key_is_neither_replaced_nor_promoted() {
    let (_tmp, dir) = state_dir();
    let store = KeyStore::new(&dir);
    let (current, _) = store.load_or_create().unwrap();

    fs::write(store.next_path(), b"not a key\n").unwrap();
    set_mode(store.next_path(), 0o600);
    assert!(matches!(
        store.create_next(),
        Err(KeyStoreError::Malformed { .. })
    ));
    assert!(matches!(
        store.promote_next(),
        Err(KeyStoreError::Malformed { .. })
    ));
    assert_eq!(fs::read(store.next_path()).unwrap(), b"not a key\n");

    let (next, _) = {
        store.discard_next().unwrap();
        store.create_next().unwrap()
    };
    set_mode(store.next_path(), 0o644);
    assert!(matches!(
        store.promote_next(),
        Err(KeyStoreError::InsecureMode { .. })
    ));
    assert_eq!(
        store.load().unwrap().unwrap().public_key(),
        current.public_key()
    );
    set_mode(store.next_path(), 0o600);
    assert_eq!(
        store.promote_next().unwrap().public_key(),
        next.public_key()
    );
}

//! The key store's log lines carry the path and the public key's fingerprint,
//! and never the secret.

// Test helpers are not #[test] fns, so clippy.toml's allow-unwrap-in-tests does
// not reach them; a panic is the right failure in a test binary.
#![allow(clippy::unwrap_used)]

use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};
use wireseal_keymgr::KeyStore;

/// Collects every event's fields as text; a hand-written subscriber avoids a
/// tracing-subscriber dev-dependency for one test.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<String>>);

struct Fields<'a>(&'a mut String);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        write!(self.0, "{}={value:?} ", field.name()).unwrap();
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut text = self.0.lock().unwrap();
        event.record(&mut Fields(&mut text));
        text.push('\n');
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[test]
fn lifecycle_logs_name_path_and_fingerprint_but_never_the_secret() {
    let tmp = tempfile::tempdir().unwrap();
    let store = KeyStore::new(tmp.path().join("state"));
    let capture = Capture::default();

    let (current, next, promoted) = tracing::subscriber::with_default(capture.clone(), || {
        let (current, _) = store.load_or_create().unwrap();
        store.load_or_create().unwrap();
        let (next, _) = store.create_next().unwrap();
        let promoted = store.promote_next().unwrap();
        store.create_next().unwrap();
        store.discard_next().unwrap();
        (current, next, promoted)
    });
    let logs = capture.0.lock().unwrap().clone();

    for wanted in [
        "created private key",
        "loaded private key",
        "created next private key",
        "promoted next private key to current",
        "discarded next private key",
    ] {
        assert!(logs.contains(wanted), "missing {wanted:?} in:\n{logs}");
    }
    assert!(logs.contains(&store.path().display().to_string()));
    assert!(logs.contains(&current.public_key().fingerprint()));
    assert!(logs.contains(&promoted.public_key().fingerprint()));
    for key in [&current, &next] {
        let b64 = key.to_base64();
        let hex: String = key.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert!(!logs.contains(&b64[..12]), "secret in logs:\n{logs}");
        assert!(!logs.contains(&hex[..16]), "secret in logs:\n{logs}");
    }
}

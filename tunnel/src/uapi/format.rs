//! The `get=1` answer.

use std::fmt::{self, Write as _};
use std::time::UNIX_EPOCH;

use zeroize::Zeroizing;

use crate::device::State;
use crate::key::encode_hex;

/// Text that holds keys (a `get` answer). It grows by copying into a bigger buffer
/// and wiping the old one, where a `String` would reallocate and leave the old
/// bytes (the private key) in freed memory; it is wiped when dropped.
#[derive(Default)]
pub struct SecretText(Zeroizing<String>);

impl SecretText {
    fn room(&mut self, more: usize) {
        let need = self.0.len() + more;
        if need > self.0.capacity() {
            let mut bigger = Zeroizing::new(String::with_capacity(need.max(2 * self.0.capacity())));
            bigger.push_str(&self.0);
            // The old buffer is wiped as it drops.
            self.0 = bigger;
        }
    }

    /// Appends `text`.
    pub fn push_str(&mut self, text: &str) {
        self.room(text.len());
        self.0.push_str(text);
    }

    fn push_key(&mut self, key: &[u8; crate::key::KEY_LEN]) {
        self.room(2 * key.len());
        encode_hex(key, &mut self.0);
    }

    /// The text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Write for SecretText {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        self.push_str(text);
        Ok(())
    }
}

/// Writes the `get` answer for `state` (without the final `errno=0` and blank line),
/// in the order wireguard-go uses: interface keys, then one section per peer.
pub fn format_get(state: &State, out: &mut SecretText) {
    if let Some(mut private) = state.private_key_bytes() {
        out.push_str("private_key=");
        out.push_key(&private);
        out.push_str("\n");
        private.fill(0);
    }
    if state.listen_port != 0 {
        let _ = writeln!(out, "listen_port={}", state.listen_port);
    }
    if state.fwmark != 0 {
        let _ = writeln!(out, "fwmark={}", state.fwmark);
    }
    let allowed = state.allowed_ips_by_peer();
    for peer in state.peers() {
        out.push_str("public_key=");
        out.push_key(peer.public_key.as_bytes());
        out.push_str("\n");
        let mut inner = peer.lock();
        inner.refresh_handshake_time();
        if let Some(psk) = &inner.preshared_key {
            out.push_str("preshared_key=");
            out.push_key(&psk.0);
            out.push_str("\n");
        }
        out.push_str("protocol_version=1\n");
        if let Some(endpoint) = inner.endpoint {
            let _ = writeln!(out, "endpoint={endpoint}");
        }
        let since_epoch = inner
            .last_handshake
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "last_handshake_time_sec={}\nlast_handshake_time_nsec={}",
            since_epoch.as_secs(),
            since_epoch.subsec_nanos()
        );
        let _ = writeln!(
            out,
            "tx_bytes={}\nrx_bytes={}\npersistent_keepalive_interval={}",
            peer.tx_bytes.load(std::sync::atomic::Ordering::Relaxed),
            peer.rx_bytes.load(std::sync::atomic::Ordering::Relaxed),
            inner.keepalive
        );
        drop(inner);
        for net in allowed.get(&peer.index).into_iter().flatten() {
            let _ = writeln!(out, "allowed_ip={net}");
        }
    }
}

//! The `get=1` answer.

use std::fmt::Write as _;
use std::time::UNIX_EPOCH;

use crate::device::State;
use crate::key::encode_hex;

/// Writes the `get` answer for `state` (without the final `errno=0` and blank line),
/// in the order wireguard-go uses: interface keys, then one section per peer.
pub fn format_get(state: &State, out: &mut String) {
    if let Some(mut private) = state.private_key_bytes() {
        out.push_str("private_key=");
        encode_hex(&private, out);
        out.push('\n');
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
        encode_hex(&peer.public_key.0, out);
        out.push('\n');
        let mut inner = peer.lock();
        inner.refresh_handshake_time();
        if let Some(psk) = &inner.preshared_key {
            out.push_str("preshared_key=");
            encode_hex(&psk.0, out);
            out.push('\n');
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

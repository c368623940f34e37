//! One peer: its boringtun session state behind a mutex held only per packet.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use boringtun::noise::Tunn;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::x25519;

use crate::key::{Key, Secret};

/// A configured peer.
pub struct Peer {
    /// The peer's static public key.
    pub public_key: Key,
    /// Our 24-bit session index for this peer: boringtun puts it in the top 24 bits of
    /// every receiver index it hands out, which is how an incoming packet finds its peer.
    pub index: u32,
    /// Bytes of authenticated datagrams received from this peer (on-wire size).
    pub rx_bytes: AtomicU64,
    /// Bytes of datagrams sent to this peer (on-wire size).
    pub tx_bytes: AtomicU64,
    inner: Mutex<PeerInner>,
}

/// The mutable part of a peer. Locked for one encapsulate/decapsulate at a time.
pub struct PeerInner {
    /// None while the device has no private key: no handshake is possible then.
    pub tunn: Option<Tunn>,
    /// Where to send; updated from authenticated packets (roaming).
    pub endpoint: Option<SocketAddr>,
    /// The preshared key, kept to rebuild the session state when the private key changes.
    pub preshared_key: Option<Secret>,
    /// Persistent keepalive in seconds, 0 = off.
    pub keepalive: u16,
    /// Wall-clock time of the last completed handshake, kept after the session expires
    /// so `wg show` keeps showing it.
    pub last_handshake: Option<SystemTime>,
    /// A handshake was started when the peer was configured and no packet has been
    /// sent since: the first real packet re-sends the initiation at once.
    pub unanswered_init: bool,
}

impl Peer {
    pub(crate) fn new(public_key: Key, index: u32) -> Self {
        Self {
            public_key,
            index,
            rx_bytes: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
            inner: Mutex::new(PeerInner {
                tunn: None,
                endpoint: None,
                preshared_key: None,
                keepalive: 0,
                last_handshake: None,
                unanswered_init: false,
            }),
        }
    }

    /// Locks the mutable state. A panic while holding it cannot leave the protocol
    /// state worse than a lost packet, so a poisoned lock is simply taken over.
    pub fn lock(&self) -> MutexGuard<'_, PeerInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn add_rx(&self, n: usize) {
        self.rx_bytes.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn add_tx(&self, n: usize) {
        self.tx_bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// What is needed to build a session for a peer.
pub(crate) struct SessionKeys<'a> {
    pub private: &'a x25519::StaticSecret,
    pub rate_limiter: &'a Arc<RateLimiter>,
}

impl PeerInner {
    /// (Re)creates the boringtun state. Used when a peer gets its first private key or
    /// when its preshared key or keepalive changes: boringtun fixes both at creation.
    /// The current session is lost; the next packet starts a new handshake.
    pub(crate) fn rebuild(&mut self, public_key: &Key, index: u32, keys: &SessionKeys<'_>) {
        self.tunn = Some(Tunn::new(
            keys.private.clone(),
            x25519::PublicKey::from(public_key.0),
            self.preshared_key.as_ref().map(|k| k.0),
            (self.keepalive > 0).then_some(self.keepalive),
            index,
            Some(Arc::clone(keys.rate_limiter)),
        ));
    }

    /// Refreshes the cached wall-clock time of the last handshake from boringtun's
    /// monotonic "time since", which disappears when the session expires.
    pub(crate) fn refresh_handshake_time(&mut self) {
        let since = self.tunn.as_ref().and_then(Tunn::time_since_last_handshake);
        if let Some(since) = since {
            let at = SystemTime::now()
                .checked_sub(since)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            // Rounding noise of a few ms between calls must not make it jitter.
            let moved = self.last_handshake.is_none_or(|old| {
                at.duration_since(old)
                    .or_else(|e| Ok::<_, ()>(e.duration()))
                    .is_ok_and(|d| d > Duration::from_millis(500))
            });
            if moved {
                self.last_handshake = Some(at);
            }
        }
    }
}

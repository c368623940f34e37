//! One peer: its boringtun session state behind a mutex held only per packet.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use boringtun::noise::Tunn;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::x25519;

use crate::key::{PublicKey, Secret};

/// A configured peer.
pub struct Peer {
    /// The peer's static public key.
    pub public_key: PublicKey,
    /// Our 24-bit session index for this peer: boringtun puts it in the top 24 bits of
    /// every receiver index it hands out, which is how an incoming packet finds its peer.
    pub index: u32,
    /// A second index, for the session state under the device's alternate key
    /// (a key rotation): an incoming packet's index says which state it is for.
    pub alt_index: u32,
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
    /// The index `tunn` hands out ([`Peer::index`] or [`Peer::alt_index`]).
    pub tunn_index: u32,
    /// The session state under the device's alternate private key, during a
    /// key rotation: made when the peer starts a handshake to that key, and
    /// the former `tunn` once the keys are swapped, so sessions of either key
    /// keep working across the switch.
    pub alt: Option<Tunn>,
    /// The index `alt` hands out.
    pub alt_tunn_index: u32,
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
    pub(crate) fn new(public_key: PublicKey, index: u32, alt_index: u32) -> Self {
        Self {
            public_key,
            index,
            alt_index,
            rx_bytes: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
            inner: Mutex::new(PeerInner {
                tunn: None,
                tunn_index: index,
                alt: None,
                alt_tunn_index: alt_index,
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
    pub(crate) fn rebuild(&mut self, public_key: &PublicKey, keys: &SessionKeys<'_>) {
        self.tunn = Some(self.session_state(public_key, self.tunn_index, keys));
        self.alt = None;
    }

    /// Makes the state under the alternate key, for a handshake to it.
    pub(crate) fn build_alt(&mut self, public_key: &PublicKey, keys: &SessionKeys<'_>) {
        self.alt = Some(self.session_state(public_key, self.alt_tunn_index, keys));
    }

    fn session_state(&self, public_key: &PublicKey, index: u32, keys: &SessionKeys<'_>) -> Tunn {
        Tunn::new(
            keys.private.clone(),
            x25519::PublicKey::from(*public_key.as_bytes()),
            self.preshared_key.as_ref().map(|k| k.0),
            (self.keepalive > 0).then_some(self.keepalive),
            index,
            Some(Arc::clone(keys.rate_limiter)),
        )
    }

    /// The device's private and alternate keys were swapped (the switch of a
    /// key rotation): so are the two states, with their sessions.
    pub(crate) fn swap_states(&mut self) {
        std::mem::swap(&mut self.tunn, &mut self.alt);
        std::mem::swap(&mut self.tunn_index, &mut self.alt_tunn_index);
    }

    /// True when a packet with this receiver index is for the state under
    /// the alternate key.
    pub(crate) fn is_alt_index(&self, receiver_index: u32) -> bool {
        receiver_index >> 8 == self.alt_tunn_index
    }

    /// The main state, or the one under the alternate key.
    pub(crate) fn state(&mut self, alt: bool) -> Option<&mut Tunn> {
        if alt {
            self.alt.as_mut()
        } else {
            self.tunn.as_mut()
        }
    }

    /// The state to send with: of the two, the one whose session was
    /// established last (during a rotation the peer may have moved to either
    /// key), else the main one, which starts a handshake.
    pub(crate) fn sending_state(&mut self) -> Option<&mut Tunn> {
        let main = self.tunn.as_ref().and_then(Tunn::time_since_last_handshake);
        let alt = self.alt.as_ref().and_then(Tunn::time_since_last_handshake);
        match (main, alt) {
            (None, Some(_)) => self.alt.as_mut(),
            (Some(main), Some(alt)) if alt < main => self.alt.as_mut(),
            _ => self.tunn.as_mut(),
        }
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

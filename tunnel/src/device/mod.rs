//! The WireGuard device: configuration state and its changes through the UAPI.
//!
//! One `RwLock<State>` holds the configuration. The packet paths take it for reading
//! once per batch; a UAPI `set` takes it for writing, so a change is atomic with
//! respect to every packet. Each peer has its own mutex, held for one
//! encapsulate/decapsulate only.

mod datapath;
mod peer;

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::x25519;

pub use datapath::{MAX_DATAGRAM, Sink, canonical_addr};
use peer::SessionKeys;
pub use peer::{Peer, PeerInner};

use crate::allowed_ips::AllowedIps;
use crate::health::Health;
use crate::key::{PublicKey, Secret};
use crate::uapi::{PeerChange, SetRequest, UapiError};

/// Handshakes per second across all peers before cookies are demanded. Each handshake
/// message is counted twice (our pre-check and boringtun's own), so this is 2 × the
/// effective 100/s that boringtun's device uses.
const HANDSHAKE_RATE_LIMIT: u64 = 200;

/// What the device needs from the UDP side when the configuration changes.
pub trait Network: Send + Sync {
    /// Binds (or rebinds) the UDP socket to `port` (0 = any free port) with `fwmark`
    /// (0 = none) and returns the bound port. On error the old socket stays.
    ///
    /// # Errors
    /// The bind error (e.g. `EADDRINUSE`).
    fn bind(&self, port: u16, fwmark: u32) -> io::Result<u16>;
    /// Sets `SO_MARK` on the current socket (0 clears it).
    ///
    /// # Errors
    /// The setsockopt error.
    fn set_fwmark(&self, fwmark: u32) -> io::Result<()>;
    /// Sends one datagram (handshakes started by a config change).
    fn send_to(&self, datagram: &[u8], dst: SocketAddr);
}

/// Drop and event counters, readable without locks (for tests and metrics).
#[derive(Debug, Default)]
pub struct Counters {
    /// Decrypted packets dropped because their inner source is not in the peer's allowed IPs.
    pub source_check_drops: AtomicU64,
    /// Packets from the TUN with no peer for their destination.
    pub no_route_drops: AtomicU64,
    /// Datagrams that failed to parse, authenticate or decrypt.
    pub invalid_datagrams: AtomicU64,
    /// Endpoint changes learnt from authenticated packets.
    pub roams: AtomicU64,
}

/// The configuration: keys, port, mark, peers and the allowed-IPs table.
pub struct State {
    pub(crate) private: Option<(x25519::StaticSecret, x25519::PublicKey)>,
    pub(crate) rate_limiter: Option<Arc<RateLimiter>>,
    /// A second private key whose handshakes are answered too, with its own
    /// limiter (MAC1 is keyed by the responder's public key): the next key
    /// before a rotation's switch, the previous one after it.
    pub(crate) alternate: Option<Alternate>,
    /// The bound UDP port (the real one when 0 was asked for).
    pub listen_port: u16,
    /// `SO_MARK` of the UDP socket, 0 = none.
    pub fwmark: u32,
    pub(crate) peers: BTreeMap<PublicKey, Arc<Peer>>,
    pub(crate) by_index: HashMap<u32, Arc<Peer>>,
    pub(crate) allowed: AllowedIps<u32>,
    next_index: u32,
    counters: Arc<Counters>,
}

impl State {
    /// The peers in public-key order.
    pub fn peers(&self) -> impl Iterator<Item = &Arc<Peer>> {
        self.peers.values()
    }

    /// The peer with this public key.
    #[must_use]
    pub fn peer(&self, key: &PublicKey) -> Option<&Arc<Peer>> {
        self.peers.get(key)
    }

    /// Allowed IPs grouped by peer index, in table order.
    #[must_use]
    pub fn allowed_ips_by_peer(&self) -> BTreeMap<u32, Vec<ipnetwork::IpNetwork>> {
        let mut out: BTreeMap<u32, Vec<_>> = BTreeMap::new();
        for (net, idx) in self.allowed.entries() {
            out.entry(idx).or_default().push(net);
        }
        out
    }

    /// The private key, for the UAPI `get` answer only.
    pub(crate) fn private_key_bytes(&self) -> Option<[u8; 32]> {
        self.private.as_ref().map(|(s, _)| s.to_bytes())
    }

    /// The drop and event counters.
    #[must_use]
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    fn alloc_index(&mut self) -> u32 {
        // 24-bit indices (boringtun shifts them left by 8); skip 0 and ones in use.
        loop {
            self.next_index = (self.next_index + 1) & 0x00ff_ffff;
            if self.next_index != 0 && !self.by_index.contains_key(&self.next_index) {
                return self.next_index;
            }
        }
    }

    fn remove_peer(&mut self, key: &PublicKey) {
        if let Some(peer) = self.peers.remove(key) {
            self.by_index.remove(&peer.index);
            self.by_index.remove(&peer.alt_index);
            self.allowed.remove_value(&peer.index);
            tracing::info!(peer = %peer.public_key.fingerprint(), "peer removed");
        }
    }
}

/// A WireGuard device without its I/O threads.
pub struct Device {
    state: RwLock<State>,
    net: Box<dyn Network>,
    counters: Arc<Counters>,
    health: Health,
}

impl Device {
    /// A device with no key, no peers and no socket yet.
    pub fn new(net: Box<dyn Network>) -> Self {
        let counters = Arc::new(Counters::default());
        // Random start so indices differ between restarts; not a secret, just unique.
        #[allow(clippy::cast_possible_truncation)]
        let next_index = RandomState::new().hash_one(std::process::id()) as u32;
        Self {
            state: RwLock::new(State {
                private: None,
                rate_limiter: None,
                alternate: None,
                listen_port: 0,
                fwmark: 0,
                peers: BTreeMap::new(),
                by_index: HashMap::new(),
                allowed: AllowedIps::new(),
                next_index,
                counters: Arc::clone(&counters),
            }),
            net,
            counters,
            health: Health::default(),
        }
    }

    /// Read access for the packet paths and `get`.
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        // A panic under the lock leaves a consistent map (every change below is done
        // before the guard drops or not at all), so poison is not fatal.
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The datapath threads' progress stamps.
    #[must_use]
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Counters shared with the state.
    #[must_use]
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Binds the initial socket (port 0 = any), as wireguard-go does when it comes up.
    ///
    /// # Errors
    /// The bind error.
    pub fn bind_initial(&self, port: u16) -> io::Result<()> {
        let mut st = self.write();
        st.listen_port = self.net.bind(port, st.fwmark)?;
        Ok(())
    }

    /// Applies a parsed `set` request. Steps that can fail on the outside world (bind,
    /// setsockopt) run first, so a failure leaves the configuration unchanged.
    ///
    /// # Errors
    /// [`UapiError::PortInUse`] or [`UapiError::Io`].
    pub fn apply(&self, req: SetRequest) -> Result<(), UapiError> {
        let mut st = self.write();
        let new_mark = req.fwmark.unwrap_or(st.fwmark);
        if let Some(port) = req.listen_port
            && (port != st.listen_port || port == 0)
        {
            st.listen_port = self
                .net
                .bind(port, new_mark)
                .map_err(UapiError::from_bind)?;
            st.fwmark = new_mark;
            tracing::info!(port = st.listen_port, "listening");
        }
        if new_mark != st.fwmark {
            self.net
                .set_fwmark(new_mark)
                .map_err(|e| UapiError::Io(format!("setting fwmark: {e}")))?;
            st.fwmark = new_mark;
            tracing::info!(fwmark = new_mark, "fwmark set");
        }
        if let Some(private) = req.private_key {
            set_private_key(&mut st, private, self.net.as_ref());
        }
        if let Some(alternate) = req.alternate_private_key {
            set_alternate_key(&mut st, alternate);
        }
        if req.replace_peers {
            // Peers named again in this request keep their sessions (no traffic gap
            // when an agent re-applies its whole config); the rest go.
            let keep: Vec<PublicKey> = req
                .peers
                .iter()
                .filter(|p| !p.remove)
                .map(|p| p.public_key)
                .collect();
            let gone: Vec<PublicKey> = st
                .peers
                .keys()
                .filter(|k| !keep.contains(k))
                .copied()
                .collect();
            for key in gone {
                st.remove_peer(&key);
            }
        }
        for change in req.peers {
            self.apply_peer(&mut st, change, req.replace_peers);
        }
        Ok(())
    }

    fn apply_peer(&self, st: &mut State, change: PeerChange, replacing: bool) {
        let key = change.public_key;
        if change.remove {
            st.remove_peer(&key);
            return;
        }
        if st.private.as_ref().map(|(_, p)| p.to_bytes()) == Some(*key.as_bytes()) {
            // The kernel and wireguard-go silently refuse a peer with our own key.
            tracing::warn!("ignoring a peer with the interface's own public key");
            return;
        }
        let existed = st.peers.contains_key(&key);
        if change.update_only && !existed {
            return;
        }
        let peer = if let Some(peer) = st.peers.get(&key) {
            Arc::clone(peer)
        } else {
            let index = st.alloc_index();
            let alt_index = st.alloc_index();
            let peer = Arc::new(Peer::new(key, index, alt_index));
            st.peers.insert(key, Arc::clone(&peer));
            st.by_index.insert(index, Arc::clone(&peer));
            st.by_index.insert(alt_index, Arc::clone(&peer));
            tracing::info!(peer = %key.fingerprint(), index, "peer added");
            peer
        };
        let mut inner = peer.lock();
        let mut rebuild = inner.tunn.is_none();
        // `replace_peers` describes the whole peer; what it leaves out is reset, as if
        // the peer had been created anew (the endpoint stays: it may have roamed).
        let psk = change
            .preshared_key
            .or_else(|| replacing.then_some(None))
            .unwrap_or_else(|| inner.preshared_key.clone());
        if psk != inner.preshared_key {
            inner.preshared_key = psk;
            rebuild = true;
        }
        let keepalive = change
            .persistent_keepalive
            .or_else(|| replacing.then_some(0))
            .unwrap_or(inner.keepalive);
        if keepalive != inner.keepalive {
            inner.keepalive = keepalive;
            rebuild = true;
        }
        if let Some(endpoint) = change.endpoint {
            inner.endpoint = Some(endpoint);
        }
        if rebuild && let (Some((private, _)), Some(rl)) = (&st.private, &st.rate_limiter) {
            let keys = SessionKeys {
                private,
                rate_limiter: rl,
            };
            inner.rebuild(&key, &keys);
            initiate(self.net.as_ref(), &peer, &mut inner);
        }
        drop(inner);
        if change.replace_allowed_ips {
            st.allowed.remove_value(&peer.index);
        }
        for net in change.allowed_ips {
            st.allowed.insert(net, peer.index);
        }
    }
}

/// Starts a handshake right away whenever a session was (re)built: the peer
/// learns our new session at once instead of sending into a dead one until its
/// own timers give up (~15 s). This is what makes a restart of this process
/// cheap, brings keepalive-only tunnels up without traffic, and, after a change
/// of our private key (a key rotation), reaches peers that switched to our new
/// key before us.
fn initiate(net: &dyn Network, peer: &Peer, inner: &mut PeerInner) {
    let Some(endpoint) = inner.endpoint else {
        return;
    };
    let mut buf = [0u8; 256];
    if let Some(tunn) = inner.tunn.as_mut()
        && let boringtun::noise::TunnResult::WriteToNetwork(pkt) =
            tunn.format_handshake_initiation(&mut buf, false)
    {
        net.send_to(pkt, endpoint);
        peer.add_tx(pkt.len());
        inner.unanswered_init = true;
    }
}

/// A private key with its public key and the limiter that checks MAC1 of
/// handshakes addressed to it.
pub(crate) struct Alternate {
    pub(crate) private: x25519::StaticSecret,
    pub(crate) public: x25519::PublicKey,
    pub(crate) rate_limiter: Arc<RateLimiter>,
}

fn set_private_key(st: &mut State, private: Option<Secret>, net: &dyn Network) {
    let same = match (&st.private, &private) {
        (Some((old, _)), Some(new)) => old.to_bytes() == new.0,
        (None, None) => true,
        _ => false,
    };
    if same {
        return;
    }
    let to_alternate = matches!((&st.alternate, &private),
        (Some(alt), Some(new)) if alt.private.to_bytes() == new.0);
    if to_alternate {
        swap_to_alternate(st, net);
        return;
    }
    match private {
        None => {
            st.private = None;
            st.rate_limiter = None;
            for peer in st.peers.values() {
                let mut inner = peer.lock();
                inner.tunn = None;
                inner.alt = None;
            }
            tracing::info!("private key removed");
        }
        Some(secret) => {
            let private = x25519::StaticSecret::from(secret.0);
            let public = x25519::PublicKey::from(&private);
            let rl = Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT));
            // A peer whose key is now our own would be a loop; drop it like the kernel.
            if let Ok(own) = PublicKey::from_bytes(public.to_bytes()) {
                st.remove_peer(&own);
            }
            {
                let keys = SessionKeys {
                    private: &private,
                    rate_limiter: &rl,
                };
                for peer in st.peers.values() {
                    let mut inner = peer.lock();
                    inner.rebuild(&peer.public_key, &keys);
                    initiate(net, peer, &mut inner);
                }
            }
            st.private = Some((private, public));
            st.rate_limiter = Some(rl);
            tracing::info!("private key set");
        }
    }
}

/// The switch of a key rotation: the alternate key becomes the private key
/// and the private key the alternate, each peer's two session states with
/// them. Sessions under either key keep working: a peer that switched to our
/// new key first has one with it already, one that has not yet keeps the old.
fn swap_to_alternate(st: &mut State, net: &dyn Network) {
    let Some(alternate) = st.alternate.take() else {
        return;
    };
    if let Some((private, public)) = st.private.take() {
        st.alternate = st.rate_limiter.take().map(|rate_limiter| Alternate {
            private,
            public,
            rate_limiter,
        });
    }
    if let Ok(own) = PublicKey::from_bytes(alternate.public.to_bytes()) {
        st.remove_peer(&own);
    }
    let keys = SessionKeys {
        private: &alternate.private,
        rate_limiter: &alternate.rate_limiter,
    };
    for peer in st.peers.values() {
        let mut inner = peer.lock();
        inner.swap_states();
        if inner.tunn.is_none() {
            let old = inner.alt.take();
            inner.rebuild(&peer.public_key, &keys);
            inner.alt = old;
            initiate(net, peer, &mut inner);
        }
    }
    st.rate_limiter = Some(alternate.rate_limiter);
    st.private = Some((alternate.private, alternate.public));
    tracing::info!("private key set: switched to the alternate key");
}

/// Sets or removes the alternate key. Removing it ends the sessions made
/// under it; a new one replaces them.
fn set_alternate_key(st: &mut State, alternate: Option<Secret>) {
    let same = match (&st.alternate, &alternate) {
        (Some(old), Some(new)) => old.private.to_bytes() == new.0,
        (None, None) => true,
        _ => false,
    };
    if same {
        return;
    }
    for peer in st.peers.values() {
        peer.lock().alt = None;
    }
    st.alternate = alternate.map(|secret| {
        let private = x25519::StaticSecret::from(secret.0);
        let public = x25519::PublicKey::from(&private);
        Alternate {
            rate_limiter: Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT)),
            private,
            public,
        }
    });
    tracing::info!(set = st.alternate.is_some(), "alternate private key");
}

/// A counter bump that reads as what it is.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests;

//! The per-packet protocol work, free of I/O: the I/O threads hand in buffers and a
//! [`Sink`], which makes the whole path testable with two devices wired in memory.

use std::net::{IpAddr, SocketAddr};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};

use boringtun::noise::rate_limiter::RateLimiter;

use super::peer::SessionKeys;
use super::{Peer, State, bump};
use crate::key::PublicKey;

/// Largest datagram or IP packet handled; buffers are this large so nothing is cut.
pub const MAX_DATAGRAM: usize = 65_535 + 64;

/// Where processed packets go.
pub trait Sink {
    /// A decrypted IP packet for the TUN device.
    fn to_tunnel(&mut self, packet: &[u8]);
    /// A datagram for the UDP socket.
    fn to_network(&mut self, datagram: &[u8], dst: SocketAddr);
}

/// The v4-mapped form a dual-stack socket reports, back to plain IPv4, so endpoints
/// print and compare as users wrote them.
#[must_use]
pub fn canonical_addr(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

impl State {
    /// Encrypts one IP packet read from the TUN device into `out`. Returns the length
    /// and destination of the datagram to send, or None when the packet is dropped
    /// (no peer for its destination, no endpoint, no key) or queued behind a
    /// handshake already in flight.
    pub fn encapsulate(&self, packet: &[u8], out: &mut [u8]) -> Option<(usize, SocketAddr)> {
        let Some(peer) = Tunn::dst_address(packet)
            .and_then(|dst| self.allowed.lookup(dst))
            .and_then(|idx| self.by_index.get(idx))
        else {
            bump(&self.counters.no_route_drops);
            return None;
        };
        let mut inner = peer.lock();
        let inner = &mut *inner;
        let endpoint = inner.endpoint?;
        let unanswered_init = inner.unanswered_init;
        let tunn = inner.sending_state()?;
        let len = match tunn.encapsulate(packet, out) {
            TunnResult::WriteToNetwork(datagram) => datagram.len(),
            TunnResult::Done if unanswered_init => {
                // Queued behind the handshake we started unasked when the peer was
                // configured; that one may have gone to a peer not ready yet. Real
                // traffic is waiting now, so try again at once rather than after
                // boringtun's 5 s retry timer.
                match tunn.format_handshake_initiation(out, true) {
                    TunnResult::WriteToNetwork(init) => init.len(),
                    _ => return None,
                }
            }
            TunnResult::Err(e) => {
                tracing::debug!(peer = %peer.public_key.fingerprint(), error = ?e, "encapsulate failed");
                return None;
            }
            _ => return None,
        };
        inner.unanswered_init = false;
        peer.add_tx(len);
        Some((len, endpoint))
    }

    /// Finds the peer a datagram belongs to, before any session state is touched.
    /// `to_alternate`: the datagram passed MAC1 of the alternate key.
    fn peer_for(&self, packet: &Packet<'_>, to_alternate: bool) -> Option<&std::sync::Arc<Peer>> {
        let index = match packet {
            Packet::HandshakeInit(init) => {
                // Only an initiation names its sender, inside the encrypted static key.
                let half = if to_alternate {
                    let alternate = self.alternate.as_ref()?;
                    parse_handshake_anon(&alternate.private, &alternate.public, init).ok()?
                } else {
                    let (private, public) = self.private.as_ref()?;
                    parse_handshake_anon(private, public, init).ok()?
                };
                return self
                    .peers
                    .get(&PublicKey::from_bytes(half.peer_static_public).ok()?);
            }
            Packet::HandshakeResponse(p) => p.receiver_idx,
            Packet::PacketCookieReply(p) => p.receiver_idx,
            Packet::PacketData(p) => p.receiver_idx,
        };
        self.by_index.get(&(index >> 8))
    }

    /// Checks MAC1 (and, under load, the cookie) with the private key's
    /// limiter, then with the alternate key's: a handshake addressed to the
    /// other key of a rotation fails the first. Returns the packet and whether
    /// it is for the alternate key; `None` when it was answered (a cookie) or
    /// refused.
    fn verify<'a>(
        &self,
        rate_limiter: &RateLimiter,
        src: SocketAddr,
        datagram: &'a [u8],
        scratch: &mut [u8],
        sink: &mut impl Sink,
    ) -> Option<(Packet<'a>, bool)> {
        match rate_limiter.verify_packet(Some(src.ip()), datagram, scratch) {
            Ok(packet) => return Some((packet, false)),
            Err(TunnResult::WriteToNetwork(cookie)) => {
                sink.to_network(cookie, src);
                return None;
            }
            Err(_) => {}
        }
        let Some(alternate) = &self.alternate else {
            bump(&self.counters.invalid_datagrams);
            return None;
        };
        match alternate
            .rate_limiter
            .verify_packet(Some(src.ip()), datagram, scratch)
        {
            Ok(packet) => Some((packet, true)),
            Err(TunnResult::WriteToNetwork(cookie)) => {
                sink.to_network(cookie, src);
                None
            }
            Err(_) => {
                bump(&self.counters.invalid_datagrams);
                None
            }
        }
    }

    /// Processes one datagram from `src`: handshakes, cookies, keepalives and data.
    /// `scratch` must be [`MAX_DATAGRAM`] long.
    pub fn decapsulate(
        &self,
        src: SocketAddr,
        datagram: &[u8],
        scratch: &mut [u8],
        sink: &mut impl Sink,
    ) {
        let src = canonical_addr(src);
        let Some(rate_limiter) = &self.rate_limiter else {
            return; // No private key: nothing can be authenticated.
        };
        // MAC1 and the under-load cookie check come before any Diffie-Hellman, so a
        // flood of initiations costs a hash each, not a scalar multiplication.
        let Some((packet, to_alternate)) = self.verify(rate_limiter, src, datagram, scratch, sink)
        else {
            return;
        };
        let roams = !matches!(packet, Packet::PacketCookieReply(_));
        let Some(peer) = self.peer_for(&packet, to_alternate) else {
            bump(&self.counters.invalid_datagrams);
            return;
        };
        let mut inner = peer.lock();
        let alt = match &packet {
            Packet::HandshakeInit(_) => to_alternate,
            Packet::HandshakeResponse(p) => inner.is_alt_index(p.receiver_idx),
            Packet::PacketCookieReply(p) => inner.is_alt_index(p.receiver_idx),
            Packet::PacketData(p) => inner.is_alt_index(p.receiver_idx),
        };
        if alt
            && inner.alt.is_none()
            && let Some(alternate) = &self.alternate
        {
            let keys = SessionKeys {
                private: &alternate.private,
                rate_limiter: &alternate.rate_limiter,
            };
            inner.build_alt(&peer.public_key, &keys);
        }
        let Some(tunn) = inner.state(alt) else {
            return;
        };
        let result = tunn.decapsulate(Some(src.ip()), datagram, scratch);
        let authenticated = !matches!(result, TunnResult::Err(_));
        let mut flush = false;
        match result {
            TunnResult::Done => {}
            TunnResult::Err(e) => {
                bump(&self.counters.invalid_datagrams);
                if !matches!(e, WireGuardError::DuplicateCounter) {
                    tracing::debug!(peer = %peer.public_key.fingerprint(), error = ?e, "datagram rejected");
                }
            }
            TunnResult::WriteToNetwork(reply) => {
                peer.add_tx(reply.len());
                sink.to_network(reply, src);
                flush = true;
            }
            TunnResult::WriteToTunnelV4(inner_packet, inner_src) => {
                self.deliver(peer, IpAddr::V4(inner_src), inner_packet, sink);
            }
            TunnResult::WriteToTunnelV6(inner_packet, inner_src) => {
                self.deliver(peer, IpAddr::V6(inner_src), inner_packet, sink);
            }
        }
        if !authenticated {
            return;
        }
        peer.add_rx(datagram.len());
        if roams && inner.endpoint != Some(src) {
            // Roaming: the peer proved its identity from this address, so answer there.
            tracing::debug!(peer = %peer.public_key.fingerprint(), endpoint = %src, "endpoint updated");
            inner.endpoint = Some(src);
            bump(&self.counters.roams);
        }
        if flush {
            // A completed handshake releases the packets boringtun queued behind it.
            while let Some(tunn) = inner.state(alt) {
                match tunn.decapsulate(None, &[], scratch) {
                    TunnResult::WriteToNetwork(queued) => {
                        peer.add_tx(queued.len());
                        sink.to_network(queued, src);
                    }
                    _ => break,
                }
            }
        }
    }

    /// Cryptokey routing on receive: the inner source must be one of the sender's
    /// allowed IPs, or anyone holding a peer's key could spoof any address.
    fn deliver(&self, peer: &Peer, inner_src: IpAddr, packet: &[u8], sink: &mut impl Sink) {
        if self.allowed.lookup(inner_src) == Some(&peer.index) {
            sink.to_tunnel(packet);
        } else {
            bump(&self.counters.source_check_drops);
            tracing::trace!(peer = %peer.public_key.fingerprint(), source = %inner_src, "source not allowed for peer, dropped");
        }
    }

    /// Runs boringtun's timers for every peer: handshake retries, rekeying, keepalives,
    /// session expiry. Called every [`TIMER_TICK`](crate::TIMER_TICK).
    pub fn tick_timers(&self, scratch: &mut [u8], sink: &mut impl Sink) {
        if let Some(rl) = &self.rate_limiter {
            // The shared limiter's counter is reset here, not by each peer's Tunn.
            rl.reset_count();
        }
        for peer in self.peers.values() {
            let mut inner = peer.lock();
            let endpoint = inner.endpoint;
            if inner.tunn.is_none() {
                continue;
            }
            for alt in [false, true] {
                let Some(tunn) = inner.state(alt) else {
                    continue;
                };
                match tunn.update_timers(scratch) {
                    TunnResult::WriteToNetwork(datagram) => {
                        if let Some(endpoint) = endpoint {
                            peer.add_tx(datagram.len());
                            sink.to_network(datagram, endpoint);
                        }
                    }
                    TunnResult::Err(WireGuardError::ConnectionExpired) | TunnResult::Done => {}
                    TunnResult::Err(e) => {
                        tracing::debug!(peer = %peer.public_key.fingerprint(), error = ?e, "timer error");
                    }
                    _ => {}
                }
            }
            inner.refresh_handshake_time();
        }
    }
}

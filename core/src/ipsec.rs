//! IPsec mode's public half: the SPI of each node pair's ESP security
//! association, per direction and key epoch.
//!
//! The receiver looks an inbound SA up by (its own address, SPI), so every
//! SPI a node receives on must be unique among its peers. SPIs are derived
//! from *public* data only (both public keys, the receiver's epoch), so the
//! sender and the receiver compute the same value without exchanging a word,
//! and so every node can compute every other node's inbound assignment,
//! collisions included. The secret half, the keys, is derived in keymgr.
//!
//! - A candidate SPI is the first 4 bytes of SHA-256 over a label, the
//!   receiver's and the sender's keys, the epoch and an attempt counter.
//! - Its top bit is the epoch's parity, so the SAs of a receiver's current
//!   and previous epoch (both installed while a rekey settles) never collide,
//!   without either assignment depending on the other.
//! - Values below 256 (reserved by RFC 4303) are skipped as collisions are.
//! - Collisions within one receiver's epoch (likely somewhere in a cluster
//!   of thousands of nodes, about n²/2³² per receiver) are resolved by
//!   seniority: senders ordered by their Node's creation time, then name,
//!   each taking the first attempt no earlier sender holds. A newcomer never
//!   moves an existing pair's SPI, as with the sticky ownership of claims.
//!
//! Both ends agree as long as they see the same set of senders for the
//! receiver; while their views of the Node list differ, a colliding pair's
//! SPIs may disagree and its packets are dropped (never sent in clear) until
//! the views converge.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};

use crate::PublicKey;

/// Smallest SPI used: RFC 4303 reserves 1–255, and 0 means "no SA".
pub const SPI_MIN: u32 = 0x100;

/// Domain separation for the SPI hash.
const SPI_LABEL: &[u8] = b"wireseal esp spi v1";

/// The SPI candidate number `attempt` for the SA from `sender` to
/// `receiver` in the receiver's `epoch`.
#[must_use]
pub fn candidate_spi(receiver: &PublicKey, sender: &PublicKey, epoch: u32, attempt: u32) -> u32 {
    let mut hash = Sha256::new();
    hash.update(SPI_LABEL);
    hash.update(receiver.as_bytes());
    hash.update(sender.as_bytes());
    hash.update(epoch.to_be_bytes());
    hash.update(attempt.to_be_bytes());
    let digest = hash.finalize();
    let raw = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    (raw & 0x7fff_ffff) | ((epoch & 1) << 31)
}

/// One node that sends to the receiver, as every node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sender<'a> {
    /// Node name (the tie-break).
    pub name: &'a str,
    /// Its public key.
    pub key: &'a PublicKey,
    /// Its Node's `creationTimestamp` (seconds); unknown counts as newest.
    pub created: Option<i64>,
}

/// The inbound SPI of every sender of `receiver` in its `epoch`, by sender
/// name. Senders carrying the receiver's own key are left out (they are
/// refused as peers anyway).
#[must_use]
pub fn inbound_spis<'a>(
    receiver: &PublicKey,
    epoch: u32,
    senders: &[Sender<'a>],
) -> BTreeMap<&'a str, u32> {
    assign(receiver, senders, |sender, attempt| {
        candidate_spi(receiver, sender.key, epoch, attempt)
    })
}

/// A receiver's epochs: the one its new SAs are in, and the one before it
/// while its SAs are still kept (a rekey settling).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Epochs {
    /// The current epoch.
    pub current: u32,
    /// The previous epoch, while its inbound SAs are kept.
    pub previous: Option<u32>,
}

/// The SPI every sender in `nodes` uses towards `receiver` in `epoch`, by
/// the sender's key: [`inbound_spis`] keyed by key rather than name.
#[must_use]
pub fn inbound_by_key(
    receiver: &PublicKey,
    epoch: u32,
    nodes: &[Sender<'_>],
) -> BTreeMap<PublicKey, u32> {
    let by_name = inbound_spis(receiver, epoch, nodes);
    nodes
        .iter()
        .filter_map(|node| Some((*node.key, *by_name.get(node.name)?)))
        .collect()
}

/// The SPI `sender` (one of `nodes`, by name) uses towards `receiver` in
/// the receiver's `epoch`: the receiver's assignment for it, which depends
/// on every sender of the receiver, so O(n) hashes.
#[must_use]
pub fn outbound_spi(
    sender: &str,
    receiver: &PublicKey,
    epoch: u32,
    nodes: &[Sender<'_>],
) -> Option<u32> {
    inbound_spis(receiver, epoch, nodes).get(sender).copied()
}

/// The assignment itself, over any candidate function (tests force
/// collisions through it).
fn assign<'a>(
    receiver: &PublicKey,
    senders: &[Sender<'a>],
    candidate: impl Fn(&Sender<'a>, u32) -> u32,
) -> BTreeMap<&'a str, u32> {
    let mut ordered: Vec<&Sender<'a>> = senders.iter().filter(|s| s.key != receiver).collect();
    ordered.sort_by_key(|s| (s.created.unwrap_or(i64::MAX), s.name));
    let mut taken = BTreeSet::new();
    let mut out = BTreeMap::new();
    for sender in ordered {
        // Each attempt is a fresh 31-bit hash: a free one comes within a
        // few attempts even at 10,000 senders.
        let Some(spi) = (0..u32::MAX)
            .map(|attempt| candidate(sender, attempt))
            .find(|spi| *spi >= SPI_MIN && !taken.contains(spi))
        else {
            continue;
        };
        taken.insert(spi);
        out.insert(sender.name, spi);
    }
    out
}

#[cfg(test)]
mod tests;

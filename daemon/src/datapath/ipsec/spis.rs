//! This node's SPIs with each peer, kept between passes: an inbound SPI
//! depends on every sender of this node, an outbound one on every sender of
//! the peer, so a full computation is O(n²) hashes. Only what changed is
//! computed again: everything when the node set changes (a join, a leave, a
//! new key), this node's inbound SPIs when its epochs change, one peer's
//! outbound SPI when that peer's epoch changes (its rekey).

use std::collections::BTreeMap;

use wireseal_core::PublicKey;
use wireseal_core::ipsec::{Epochs, Sender, inbound_by_key, outbound_spi};

use super::NodeSet;

/// This node's SPIs with one peer, and the epochs they are in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PairSpis {
    /// The SA from the peer, in this node's current epoch.
    pub inbound: u32,
    /// The SA from the peer in this node's previous epoch, while kept.
    pub previous_inbound: Option<u32>,
    /// The SA to the peer, in the peer's published epoch.
    pub outbound: u32,
    /// This node's current epoch.
    pub epoch_in: u32,
    /// The peer's epoch.
    pub epoch_out: u32,
}

/// The node set the SPIs were computed for: names, keys and creation times.
type Roster = Vec<(String, PublicKey, Option<i64>)>;

/// The SPIs of every pair of this node.
#[derive(Debug, Default)]
pub(super) struct SpiBook {
    own: Option<(String, PublicKey)>,
    roster: Roster,
    epochs: Epochs,
    inbound: BTreeMap<PublicKey, u32>,
    previous: BTreeMap<PublicKey, u32>,
    /// By peer: the peer's epoch and this node's SPI towards it.
    outbound: BTreeMap<PublicKey, (u32, u32)>,
}

fn senders(roster: &Roster) -> Vec<Sender<'_>> {
    roster
        .iter()
        .map(|(name, key, created)| Sender {
            name,
            key,
            created: *created,
        })
        .collect()
}

impl SpiBook {
    /// Brings the book up to date with `set`.
    pub(super) fn update(&mut self, set: &NodeSet<'_>) {
        // This node with the key it holds: its Node shows it only once the
        // first pass has published it.
        let roster: Roster = set
            .nodes
            .values()
            .filter_map(|node| {
                let key = if node.name == set.own {
                    *set.own_key
                } else {
                    node.public_key?
                };
                Some((node.name.clone(), key, node.created))
            })
            .collect();
        let own = (set.own.to_owned(), *set.own_key);
        let set_changed = roster != self.roster || self.own.as_ref() != Some(&own);
        if set_changed {
            self.roster = roster;
            self.own = Some(own);
            self.outbound.clear();
        }
        let wanted: Vec<(PublicKey, u32)> = set
            .nodes
            .values()
            .filter(|node| node.name != set.own)
            .filter_map(|node| Some((node.public_key?, node.ipsec_epoch.unwrap_or(0))))
            .collect();
        let stale: Vec<(PublicKey, u32)> = wanted
            .iter()
            .filter(|(key, epoch)| self.outbound.get(key).is_none_or(|(at, _)| at != epoch))
            .copied()
            .collect();
        if !set_changed && set.epochs == self.epochs && stale.is_empty() {
            return;
        }
        let senders = senders(&self.roster);
        if set_changed || set.epochs != self.epochs {
            self.epochs = set.epochs;
            self.inbound = inbound_by_key(set.own_key, set.epochs.current, &senders);
            self.previous = set
                .epochs
                .previous
                .map(|previous| inbound_by_key(set.own_key, previous, &senders))
                .unwrap_or_default();
        }
        for (key, epoch) in stale {
            if let Some(spi) = outbound_spi(set.own, &key, epoch, &senders) {
                self.outbound.insert(key, (epoch, spi));
            }
        }
        let keys: std::collections::BTreeSet<PublicKey> =
            wanted.iter().map(|(key, _)| *key).collect();
        self.outbound.retain(|key, _| keys.contains(key));
    }

    /// The SPIs with `peer`, when it is a known node.
    pub(super) fn get(&self, peer: &PublicKey) -> Option<PairSpis> {
        let inbound = *self.inbound.get(peer)?;
        let (epoch_out, outbound) = *self.outbound.get(peer)?;
        Some(PairSpis {
            inbound,
            previous_inbound: self.previous.get(peer).copied(),
            outbound,
            epoch_in: self.epochs.current,
            epoch_out,
        })
    }

    /// Every peer with its SPIs.
    pub(super) fn pairs(&self) -> impl Iterator<Item = (PublicKey, PairSpis)> + '_ {
        self.outbound
            .keys()
            .filter_map(|key| Some((*key, self.get(key)?)))
    }

    /// How many peers have SPIs.
    pub(super) fn len(&self) -> usize {
        self.outbound.len()
    }
}

#[cfg(test)]
mod tests {
    use wireseal_core::NodeView;

    use super::*;
    use crate::test_key as key;

    fn nodes(epochs: &[u32]) -> BTreeMap<String, NodeView> {
        epochs
            .iter()
            .enumerate()
            .map(|(i, epoch)| {
                let i = u8::try_from(i).unwrap();
                let name = format!("node-{i}");
                let view = NodeView {
                    name: name.clone(),
                    created: Some(i64::from(i)),
                    public_key: Some(key(i + 1)),
                    ipsec_epoch: Some(*epoch),
                    ..NodeView::default()
                };
                (name, view)
            })
            .collect()
    }

    fn book_of(own: u8, all: &BTreeMap<String, NodeView>, epochs: Epochs) -> SpiBook {
        let mut book = SpiBook::default();
        book.update(&NodeSet {
            own: &format!("node-{own}"),
            own_key: &key(own + 1),
            epochs,
            nodes: all,
        });
        book
    }

    #[test]
    fn both_ends_agree_and_follow_each_others_epochs() {
        let all = nodes(&[0, 3, 0, 0]);
        let a = book_of(0, &all, Epochs::default());
        let b = book_of(
            1,
            &all,
            Epochs {
                current: 3,
                previous: Some(2),
            },
        );
        assert_eq!(a.len(), 3);
        let (ab, ba) = (a.get(&key(2)).unwrap(), b.get(&key(1)).unwrap());
        assert_eq!(
            ab.outbound, ba.inbound,
            "node-0 sends on what node-1 receives on"
        );
        assert_eq!(ba.outbound, ab.inbound);
        assert_eq!((ab.epoch_out, ba.epoch_in), (3, 3));
        assert!(ba.previous_inbound.is_some() && ba.previous_inbound != Some(ba.inbound));
        assert_eq!(ab.previous_inbound, None);
    }

    #[test]
    fn a_peers_rekey_moves_only_its_own_outbound_spi() {
        let mut all = nodes(&[0, 0, 0]);
        let mut book = book_of(0, &all, Epochs::default());
        let before: BTreeMap<PublicKey, PairSpis> = book.pairs().collect();
        all.get_mut("node-2").unwrap().ipsec_epoch = Some(1);
        book.update(&NodeSet {
            own: "node-0",
            own_key: &key(1),
            epochs: Epochs::default(),
            nodes: &all,
        });
        let after: BTreeMap<PublicKey, PairSpis> = book.pairs().collect();
        assert_eq!(after[&key(2)], before[&key(2)], "node-1 unchanged");
        assert_ne!(after[&key(3)].outbound, before[&key(3)].outbound);
        assert_eq!(after[&key(3)].inbound, before[&key(3)].inbound);
        assert_eq!(after[&key(3)].epoch_out, 1);
        // A node that leaves takes its SPIs with it.
        all.remove("node-2");
        book.update(&NodeSet {
            own: "node-0",
            own_key: &key(1),
            epochs: Epochs::default(),
            nodes: &all,
        });
        assert_eq!(book.len(), 1);
        assert!(book.get(&key(3)).is_none());
    }
}

use super::*;

fn key(byte: u8) -> PublicKey {
    PublicKey::from_bytes([byte; 32]).unwrap()
}

#[test]
fn candidates_match_the_published_vectors() {
    // Computed independently by keymgr/tests/vectors/esp.py (Python's
    // hashlib), which keymgr/tests/esp_vectors.rs also runs on random keys.
    assert_eq!(candidate_spi(&key(1), &key(2), 0, 0), 0x64c7_ebdb);
    assert_eq!(candidate_spi(&key(2), &key(1), 0, 0), 0x3155_c2df);
    assert_eq!(candidate_spi(&key(1), &key(2), 1, 0), 0x81d6_d278);
    assert_eq!(candidate_spi(&key(1), &key(2), 0, 1), 0x46b3_b216);
}

#[test]
fn the_top_bit_is_the_epochs_parity_so_consecutive_epochs_never_collide() {
    for epoch in 0..64 {
        for sender in 2..20 {
            let spi = candidate_spi(&key(1), &key(sender), epoch, 0);
            assert_eq!(spi >> 31, epoch & 1, "epoch {epoch}");
        }
    }
}

#[test]
fn both_ends_compute_the_same_assignment_whatever_order_they_list_nodes_in() {
    let keys: Vec<PublicKey> = (2..40).map(key).collect();
    let names: Vec<String> = (2..40).map(|i| format!("node-{i}")).collect();
    let senders: Vec<Sender<'_>> = keys
        .iter()
        .zip(&names)
        .enumerate()
        .map(|(i, (key, name))| Sender {
            name,
            key,
            created: Some(i64::try_from(i % 5).unwrap()),
        })
        .collect();
    let mut reversed = senders.clone();
    reversed.reverse();
    let a = inbound_spis(&key(1), 7, &senders);
    let b = inbound_spis(&key(1), 7, &reversed);
    assert_eq!(a, b);
    assert_eq!(a.len(), senders.len());
    let unique: BTreeSet<u32> = a.values().copied().collect();
    assert_eq!(unique.len(), a.len());
    assert!(a.values().all(|spi| *spi >= SPI_MIN));
}

#[test]
fn a_collision_goes_to_the_newer_node_and_never_moves_the_older_pair() {
    let (old, new) = (key(2), key(3));
    let senders = [
        Sender {
            name: "zz-old",
            key: &old,
            created: Some(100),
        },
        Sender {
            name: "aa-new",
            key: &new,
            created: Some(200),
        },
    ];
    // Both want 0x1000 first; the newcomer sorts first by name, but the
    // older Node keeps it.
    let colliding = |sender: &Sender<'_>, attempt: u32| {
        if attempt == 0 {
            0x1000
        } else {
            0x2000 + u32::from(sender.key.as_bytes()[0])
        }
    };
    let got = assign(&key(1), &senders, colliding);
    assert_eq!(got["zz-old"], 0x1000);
    assert_eq!(got["aa-new"], 0x2003);
    // Without the newcomer the older pair's SPI is the same.
    let alone = assign(&key(1), &senders[..1], colliding);
    assert_eq!(alone["zz-old"], 0x1000);
}

#[test]
fn reserved_values_are_skipped_and_the_receivers_own_key_is_left_out() {
    let (own, other) = (key(1), key(2));
    let senders = [
        Sender {
            name: "copycat",
            key: &own,
            created: Some(1),
        },
        Sender {
            name: "node-2",
            key: &other,
            created: Some(2),
        },
    ];
    let got = assign(
        &own,
        &senders,
        |_, attempt| if attempt == 0 { 5 } else { 0x300 },
    );
    assert_eq!(got.len(), 1);
    assert_eq!(got["node-2"], 0x300);
}

#[test]
fn each_end_sends_on_the_spi_the_other_receives_on_in_the_receivers_epoch() {
    let keys: Vec<PublicKey> = (1..12).map(key).collect();
    let names: Vec<String> = (1..12).map(|i| format!("node-{i}")).collect();
    let nodes: Vec<Sender<'_>> = keys
        .iter()
        .zip(&names)
        .map(|(key, name)| Sender {
            name,
            key,
            created: Some(0),
        })
        .collect();
    for (epoch_a, epoch_b) in [(0, 0), (3, 0), (3, 4)] {
        let (a, b) = (0, 5);
        let into_a = inbound_by_key(&keys[a], epoch_a, &nodes);
        assert_eq!(into_a.len(), keys.len() - 1);
        assert!(!into_a.contains_key(&keys[a]));
        let unique: BTreeSet<u32> = into_a.values().copied().collect();
        assert_eq!(unique.len(), into_a.len(), "a receiver's SPIs are unique");
        assert_eq!(
            outbound_spi(&names[b], &keys[a], epoch_a, &nodes),
            Some(into_a[&keys[b]])
        );
        let into_b = inbound_by_key(&keys[b], epoch_b, &nodes);
        assert_eq!(
            outbound_spi(&names[a], &keys[b], epoch_b, &nodes),
            Some(into_b[&keys[a]])
        );
    }
    // A new epoch gives every sender a new SPI, never one of the old epoch's.
    let old = inbound_by_key(&keys[0], 6, &nodes);
    let new = inbound_by_key(&keys[0], 7, &nodes);
    for spi in new.values() {
        assert!(!old.values().any(|o| o == spi));
    }
    assert_eq!(outbound_spi("nobody", &keys[0], 0, &nodes), None);
}

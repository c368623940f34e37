//! wireseal's IPsec derivations (SPIs in wireseal-core, ESP keys here)
//! against an independent implementation in Python (`cryptography` and
//! `hashlib`, keymgr/tests/vectors/esp.py), on random keys: both ends of
//! every pair get the same SPI and key, and Python agrees byte for byte.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use wireseal_core::ipsec::candidate_spi;
use wireseal_keymgr::PrivateKey;
use wireseal_keymgr::esp::derive_esp_key;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn python_derives_the_same_spis_and_keys() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/esp.py");
    let mut cases = Vec::new();
    let mut input = String::new();
    for i in 0..64u32 {
        let own = PrivateKey::generate().unwrap();
        let other = PrivateKey::generate().unwrap();
        let sender_is_own = i % 2 == 0;
        let (epoch, attempt) = (i * 7919, i % 3);
        input.push_str(
            &json!({
                "own": hex(own.as_bytes()),
                "other": hex(other.public_key().as_bytes()),
                "sender_is_own": sender_is_own,
                "epoch": epoch,
                "attempt": attempt,
            })
            .to_string(),
        );
        input.push('\n');
        cases.push((own, other, sender_is_own, epoch, attempt));
    }
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 (with python3-cryptography, see .ci/install)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{script} failed: is python3-cryptography installed (.ci/install)?"
    );
    let answers: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(answers.len(), cases.len());
    for ((own, other, sender_is_own, epoch, attempt), answer) in cases.iter().zip(&answers) {
        let (mine, theirs) = (own.public_key(), other.public_key());
        let (sender, receiver) = if *sender_is_own {
            (mine, theirs)
        } else {
            (theirs, mine)
        };
        assert_eq!(answer["own_public"], hex(mine.as_bytes()));
        let spi = candidate_spi(&receiver, &sender, *epoch, *attempt);
        assert_eq!(answer["spi"], spi);
        let here = derive_esp_key(own, &sender, &receiver, *epoch, spi).unwrap();
        let there = derive_esp_key(other, &sender, &receiver, *epoch, spi).unwrap();
        assert_eq!(answer["key"], hex(here.as_bytes()));
        assert_eq!(here.as_bytes(), there.as_bytes());
    }
}

//! 32-byte keys as the UAPI carries them (lowercase hex).
//!
//! Public keys are plain values; secrets (private and preshared keys) zeroize on drop
//! and never print: their `Debug` is redacted so no log line or error can leak them.

use std::fmt;

use boringtun::x25519;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Length of a Curve25519 key or a preshared key.
pub const KEY_LEN: usize = 32;

fn decode_hex(text: &str) -> Result<[u8; KEY_LEN], String> {
    // The error names the problem, never the value: a private key can be in `text`.
    if text.len() != 2 * KEY_LEN {
        return Err(format!(
            "key must be {} hex digits, got {} characters",
            2 * KEY_LEN,
            text.len()
        ));
    }
    let mut out = [0u8; KEY_LEN];
    for (slot, pair) in out.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        let hi = hex_val(pair[0]).ok_or("key is not hex")?;
        let lo = hex_val(pair[1]).ok_or("key is not hex")?;
        *slot = (hi << 4) | lo;
    }
    Ok(out)
}

const fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Lowercase hex, as `wg` expects in a `get` answer.
pub(crate) fn encode_hex(bytes: &[u8; KEY_LEN], out: &mut String) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
}

/// A peer's public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(pub [u8; KEY_LEN]);

impl Key {
    /// Parses 64 hex digits and rejects keys no handshake can ever succeed with
    /// (all-zero and other small-order points: every shared secret with them is zero).
    ///
    /// # Errors
    /// A message naming what is wrong (never the key).
    pub fn from_hex(text: &str) -> Result<Self, String> {
        let bytes = decode_hex(text)?;
        // X25519 with any scalar maps exactly the small-order points to zero, so one
        // multiplication with a fixed scalar is the whole check.
        let probe = x25519::StaticSecret::from([0x42; KEY_LEN]);
        if !probe
            .diffie_hellman(&x25519::PublicKey::from(bytes))
            .was_contributory()
        {
            return Err("public key is a low-order point".into());
        }
        Ok(Self(bytes))
    }

    /// A short, stable prefix of the base64 form for log fields (as `wg` prints keys).
    #[must_use]
    pub fn fingerprint(&self) -> String {
        use base64::Engine as _;
        let mut text = base64::engine::general_purpose::STANDARD.encode(self.0);
        text.truncate(8);
        text
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.fingerprint())
    }
}

/// A private or preshared key. Zeroized on drop, redacted in `Debug`.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct Secret(pub(crate) [u8; KEY_LEN]);

impl Secret {
    /// Parses 64 hex digits.
    ///
    /// # Errors
    /// A message naming what is wrong (never the value).
    pub fn from_hex(text: &str) -> Result<Self, String> {
        decode_hex(text).map(Self)
    }

    /// The all-zero value, which the UAPI uses to mean "remove".
    #[must_use]
    pub fn is_zero(&self) -> bool {
        self.0 == [0; KEY_LEN]
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_roundtrip_and_rejections() {
        let text = "e0b1b9d26d0f7a2f0c2c2b0b68b85b3d2cd44f0b0a4b9c1f3e5a6c7d8e9f0a1b";
        let key = Key::from_hex(text).unwrap();
        let mut out = String::new();
        encode_hex(&key.0, &mut out);
        assert_eq!(out, text);
        assert!(Key::from_hex(&text.to_uppercase()).is_ok());
        assert!(Key::from_hex(&text[..62]).is_err());
        assert!(Key::from_hex(&format!("{}zz", &text[..62])).is_err());
        assert!(Key::from_hex(&"0".repeat(64)).is_err(), "zero key");
        let err = Secret::from_hex(&format!("{}g", &text[..63])).unwrap_err();
        assert!(!err.contains(&text[..10]), "errors never echo key material");
        assert_eq!(
            format!("{:?}", Secret::from_hex(text).unwrap()),
            "Secret(<redacted>)"
        );
    }
}

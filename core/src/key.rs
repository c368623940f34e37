//! WireGuard public keys as they travel through annotations and plans.
//!
//! Only public keys live here. The private key is `wireseal_keymgr::PrivateKey`, a
//! different type, so that no code path can print, publish or plan with a secret.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use thiserror::Error;

/// Length of a Curve25519 key in bytes.
pub const KEY_LEN: usize = 32;

/// Length of a key in standard base64 (with one `=` of padding), as `wg` prints it.
pub const KEY_BASE64_LEN: usize = 44;

/// A validated X25519 public key.
///
/// Validation rejects what would make WireGuard fail silently or unsafely: a
/// wrong length, the all-zero key and the small-order points of Curve25519 (a
/// handshake with such a key yields an all-zero shared secret, which WireGuard
/// refuses, so a peer with it can never come up).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey([u8; KEY_LEN]);

/// Why a string or byte slice is not a usable public key.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    /// Not standard base64 (RFC 4648 alphabet, padded). The offending input is
    /// not quoted: this parser also reads private keys.
    #[error("is not valid standard base64")]
    Base64,
    /// Decoded to the wrong number of bytes.
    #[error("decodes to {0} bytes, a WireGuard key has 32")]
    Length(usize),
    /// All 32 bytes are zero: the "no key" marker of `wg`, never a real key.
    #[error("is the all-zero key")]
    AllZero,
    /// A Curve25519 point of small order: every shared secret with it is zero.
    #[error("is a low-order Curve25519 point, no handshake can succeed with it")]
    LowOrder,
    /// Not 64 hex digits (the UAPI's form). The input is not quoted: the same
    /// parser reads private keys.
    #[error("is not 64 hex digits")]
    Hex,
}

impl PublicKey {
    /// Builds a key from raw bytes, rejecting the all-zero and low-order points.
    ///
    /// # Errors
    /// [`KeyError::AllZero`] or [`KeyError::LowOrder`].
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Result<Self, KeyError> {
        if bytes == [0; KEY_LEN] {
            return Err(KeyError::AllZero);
        }
        if is_low_order(&bytes) {
            return Err(KeyError::LowOrder);
        }
        Ok(Self(bytes))
    }

    /// Parses the standard base64 form that `wg pubkey` prints.
    ///
    /// # Errors
    /// Any [`KeyError`].
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let bytes = decode_key_bytes(text)?;
        Self::from_bytes(bytes)
    }

    /// Parses the 64 lowercase or uppercase hex digits of WireGuard's UAPI.
    ///
    /// # Errors
    /// [`KeyError::Hex`], [`KeyError::AllZero`] or [`KeyError::LowOrder`].
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        Self::from_bytes(decode_hex_key_bytes(text)?)
    }

    /// The lowercase hex form of WireGuard's UAPI.
    #[must_use]
    pub fn to_hex(&self) -> String {
        let mut out = String::with_capacity(2 * KEY_LEN);
        push_hex(&self.0, &mut out);
        out
    }

    /// The raw key bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The standard base64 form, as `wg` prints it.
    #[must_use]
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// A short, stable prefix of the base64 form for log fields.
    #[must_use]
    pub fn fingerprint(&self) -> String {
        let mut text = self.to_base64();
        text.truncate(8);
        text
    }
}

/// Decodes 32 key bytes from standard base64, with length checks that name the
/// problem. Shared with the private-key parser in keymgr, which must accept
/// exactly what `wg genkey` prints.
///
/// # Errors
/// [`KeyError::Base64`] or [`KeyError::Length`].
pub fn decode_key_bytes(text: &str) -> Result<[u8; KEY_LEN], KeyError> {
    // Checking the length first keeps a hostile megabyte value from being decoded.
    if text.len() != KEY_BASE64_LEN {
        if text.len() > 4 * KEY_BASE64_LEN {
            return Err(KeyError::Length(text.len() / 4 * 3));
        }
        return Err(match STANDARD.decode(text) {
            Ok(bytes) => KeyError::Length(bytes.len()),
            Err(_) => KeyError::Base64,
        });
    }
    // Decoding into a fixed stack buffer leaves no heap copy of a private key
    // behind, and the error carries none of the input.
    let mut bytes = [0u8; KEY_LEN];
    match STANDARD.decode_slice(text, &mut bytes) {
        Ok(KEY_LEN) => Ok(bytes),
        Ok(len) => Err(KeyError::Length(len)),
        Err(base64::DecodeSliceError::OutputSliceTooSmall) => Err(KeyError::Length(KEY_LEN + 1)),
        Err(base64::DecodeSliceError::DecodeError(_)) => Err(KeyError::Base64),
    }
}

/// Decodes 32 key bytes from 64 hex digits (either case), as the UAPI carries
/// them. Shared with the userspace datapath's private-key parser.
///
/// # Errors
/// [`KeyError::Hex`]; the error carries nothing of the input.
pub fn decode_hex_key_bytes(text: &str) -> Result<[u8; KEY_LEN], KeyError> {
    if text.len() != 2 * KEY_LEN {
        return Err(KeyError::Hex);
    }
    let mut out = [0u8; KEY_LEN];
    for (slot, pair) in out.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        let (Some(hi), Some(lo)) = (hex_value(pair[0]), hex_value(pair[1])) else {
            return Err(KeyError::Hex);
        };
        *slot = (hi << 4) | lo;
    }
    Ok(out)
}

const fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Appends the lowercase hex form of `bytes`, as `wg` expects in a `get` answer.
pub fn push_hex(bytes: &[u8; KEY_LEN], out: &mut String) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
}

/// The u-coordinates of the small-order points of Curve25519, little-endian:
/// 0, 1, the two points of order 8, and p − 1, p, p + 1 (the non-canonical
/// encodings that reduce to the others). Compared with the top bit cleared,
/// since X25519 ignores it. The tests check every entry against X25519 itself.
const LOW_ORDER_POINTS: [[u8; KEY_LEN]; 7] = [
    [0; 32],
    {
        let mut k = [0; 32];
        k[0] = 1;
        k
    },
    [
        0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4,
        0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49,
        0xb8, 0x00,
    ],
    [
        0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83, 0xef,
        0x5b, 0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f,
        0x11, 0x57,
    ],
    {
        let mut k = [0xff; 32];
        k[0] = 0xec;
        k[31] = 0x7f;
        k
    },
    {
        let mut k = [0xff; 32];
        k[0] = 0xed;
        k[31] = 0x7f;
        k
    },
    {
        let mut k = [0xff; 32];
        k[0] = 0xee;
        k[31] = 0x7f;
        k
    },
];

/// True when `point` has small order on Curve25519. A table lookup rather
/// than a scalar multiplication: keys are validated on every read of a
/// device with thousands of peers.
fn is_low_order(point: &[u8; KEY_LEN]) -> bool {
    let mut masked = *point;
    masked[31] &= 0x7f;
    LOW_ORDER_POINTS.contains(&masked)
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::from_base64(text)
    }
}

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_base64())
    }
}

impl<'de> serde::Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::from_base64(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// X25519 with any clamped scalar multiplies by a multiple of the cofactor,
    /// so it maps exactly the small-order points to zero: the oracle the table
    /// is checked against.
    fn x25519_says_low_order(point: [u8; 32]) -> bool {
        x25519_dalek::x25519([0x42; 32], point) == [0; 32]
    }

    #[test]
    fn rejects_every_low_order_point() {
        for point in &LOW_ORDER_POINTS[1..] {
            assert!(
                x25519_says_low_order(*point),
                "{point:02x?} is not low order"
            );
            assert_eq!(
                PublicKey::from_bytes(*point),
                Err(KeyError::LowOrder),
                "{point:02x?}"
            );
            let mut high = *point;
            high[31] |= 0x80;
            assert!(x25519_says_low_order(high));
            assert_eq!(
                PublicKey::from_bytes(high),
                Err(KeyError::LowOrder),
                "top bit set"
            );
        }
        assert_eq!(PublicKey::from_bytes([0; 32]), Err(KeyError::AllZero));
    }

    #[test]
    fn the_table_agrees_with_x25519_on_many_points() {
        // Real public keys and arbitrary byte strings: never low order.
        for i in 0..=255u8 {
            let public = x25519_dalek::x25519([i; 32], x25519_dalek::X25519_BASEPOINT_BYTES);
            assert!(!is_low_order(&public));
            let arbitrary = [i.wrapping_mul(37).wrapping_add(11); 32];
            assert_eq!(
                is_low_order(&arbitrary),
                x25519_says_low_order(arbitrary),
                "{arbitrary:02x?}"
            );
        }
    }

    #[test]
    fn accepts_a_real_key_and_round_trips() {
        // Public key of the RFC 7748 test vector Alice.
        let text = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";
        let key: PublicKey = text.parse().unwrap();
        assert_eq!(key.to_string(), text);
        assert_eq!(key.fingerprint(), "hSDwCYkw");
        assert_eq!(format!("{key:?}"), format!("PublicKey({text})"));
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(serde_json::from_str::<PublicKey>(&json).unwrap(), key);
    }

    #[test]
    fn hex_round_trips_and_refuses_what_base64_refuses() {
        let key: PublicKey = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
            .parse()
            .unwrap();
        let hex = key.to_hex();
        assert_eq!(hex.len(), 64);
        assert_eq!(PublicKey::from_hex(&hex), Ok(key));
        assert_eq!(PublicKey::from_hex(&hex.to_uppercase()), Ok(key));
        assert_eq!(PublicKey::from_hex(&hex[..62]), Err(KeyError::Hex));
        assert_eq!(
            PublicKey::from_hex(&format!("{}zz", &hex[..62])),
            Err(KeyError::Hex)
        );
        assert_eq!(PublicKey::from_hex(&"0".repeat(64)), Err(KeyError::AllZero));
        let mut low = String::new();
        push_hex(&LOW_ORDER_POINTS[2], &mut low);
        assert_eq!(PublicKey::from_hex(&low), Err(KeyError::LowOrder));
        let err = KeyError::Hex.to_string();
        assert!(!err.contains(&hex[..10]), "errors never echo key material");
    }

    #[test]
    fn names_length_and_alphabet_problems() {
        assert_eq!(PublicKey::from_base64("AAAA"), Err(KeyError::Length(3)));
        assert!(matches!(
            PublicKey::from_base64("hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTm!="),
            Err(KeyError::Base64)
        ));
        let huge = "A".repeat(1 << 20);
        assert!(matches!(
            PublicKey::from_base64(&huge),
            Err(KeyError::Length(_))
        ));
    }
}

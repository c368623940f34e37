//! Keys as the UAPI carries them (lowercase hex). Public keys are the core's
//! [`PublicKey`], validated the same way as in annotations and plans (no
//! all-zero or low-order key ever reaches a peer table); secrets (private and
//! preshared keys) zeroize on drop and never print: their `Debug` is redacted
//! so no log line or error can leak them.

use std::fmt;

pub use wireseal_core::key::{KEY_LEN, KeyError, PublicKey};
use wireseal_core::key::{decode_hex_key_bytes, push_hex};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Lowercase hex, as `wg` expects in a `get` answer.
pub(crate) fn encode_hex(bytes: &[u8; KEY_LEN], out: &mut String) {
    push_hex(bytes, out);
}

/// A private or preshared key. Zeroized on drop, redacted in `Debug`.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct Secret(pub(crate) [u8; KEY_LEN]);

impl Secret {
    /// Parses 64 hex digits.
    ///
    /// # Errors
    /// [`KeyError::Hex`], which names the problem, never the value.
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        decode_hex_key_bytes(text).map(Self)
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
    fn secrets_parse_hex_and_never_print() {
        let text = "e0b1b9d26d0f7a2f0c2c2b0b68b85b3d2cd44f0b0a4b9c1f3e5a6c7d8e9f0a1b";
        let secret = Secret::from_hex(text).unwrap();
        let mut out = String::new();
        encode_hex(&secret.0, &mut out);
        assert_eq!(out, text);
        let err = Secret::from_hex(&format!("{}g", &text[..63])).unwrap_err();
        assert!(
            !err.to_string().contains(&text[..10]),
            "errors never echo key material"
        );
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
        assert!(Secret::from_hex(&"0".repeat(64)).unwrap().is_zero());
    }
}

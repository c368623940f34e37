//! The node's X25519 private key, kept out of every printable or serialisable form.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use thiserror::Error;
use wireseal_core::PublicKey;
use wireseal_core::key::{KEY_BASE64_LEN, KEY_LEN, KeyError, decode_key_bytes};
use zeroize::Zeroizing;

/// Why a string or byte array is not a usable private key.
///
/// No variant carries any part of the rejected input: the input may be a real
/// secret that is only slightly damaged.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PrivateKeyError {
    /// Not standard base64 (RFC 4648 alphabet, padded to 44 characters).
    #[error("is not standard base64 as printed by `wg genkey`")]
    Base64,
    /// Decoded to the wrong number of bytes.
    #[error("decodes to {0} bytes, a WireGuard key has 32")]
    Length(usize),
    /// All 32 bytes are zero, which WireGuard treats as "no private key".
    #[error("is the all-zero key, which WireGuard treats as no key at all")]
    AllZero,
    /// The derived public key is not usable (it cannot happen for a clamped
    /// scalar in practice, but the check is what keeps `public_key()` total).
    #[error("derives an unusable public key: {0}")]
    PublicKey(KeyError),
}

/// A WireGuard (X25519) private key.
///
/// The bytes live in a [`Zeroizing`] buffer, wiped on drop. There is deliberately
/// no `Display`, `Clone`, `PartialEq` or serde support, and `Debug` prints
/// `PrivateKey(<redacted>)`, so the secret cannot reach a log line, an error or
/// an annotation by accident. The public key is derived once on construction,
/// which both validates the key and makes [`PrivateKey::public_key`] infallible.
pub struct PrivateKey {
    secret: Zeroizing<[u8; KEY_LEN]>,
    public: PublicKey,
}

impl PrivateKey {
    /// Generates a new key from the operating system's RNG, clamped exactly as
    /// `wg genkey` clamps it.
    ///
    /// # Errors
    /// The OS RNG failed (`getrandom`), which on Linux means it is not
    /// initialised and no key should be made.
    pub fn generate() -> Result<Self, getrandom::Error> {
        loop {
            let mut secret = Zeroizing::new([0u8; KEY_LEN]);
            getrandom::fill(secret.as_mut())?;
            clamp(&mut secret);
            // A clamped random scalar yields an unusable public key with
            // probability ~2^-252; drawing again is the honest response.
            if let Ok(key) = Self::from_secret(secret) {
                return Ok(key);
            }
        }
    }

    /// Builds a key from raw bytes, as they come from `wg genkey | base64 -d`.
    ///
    /// The bytes are kept as given, not clamped: X25519 clamps on use, and keeping
    /// them lets a key read from a file round-trip byte for byte.
    ///
    /// # Errors
    /// [`PrivateKeyError::AllZero`] or [`PrivateKeyError::PublicKey`].
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Result<Self, PrivateKeyError> {
        Self::from_secret(Zeroizing::new(bytes))
    }

    /// Parses exactly what `wg genkey` prints, without the trailing newline:
    /// 44 characters of standard, padded base64.
    ///
    /// # Errors
    /// Any [`PrivateKeyError`]; none of them includes the input.
    pub fn from_base64(text: &str) -> Result<Self, PrivateKeyError> {
        let bytes = Zeroizing::new(decode_key_bytes(text).map_err(|err| match err {
            // The base64 crate's message quotes the offending symbol, which is a
            // character of the secret.
            KeyError::Base64 | KeyError::Hex => PrivateKeyError::Base64,
            KeyError::Length(len) => PrivateKeyError::Length(len),
            KeyError::AllZero | KeyError::LowOrder => PrivateKeyError::PublicKey(err),
        })?);
        Self::from_secret(bytes)
    }

    fn from_secret(secret: Zeroizing<[u8; KEY_LEN]>) -> Result<Self, PrivateKeyError> {
        if *secret == [0u8; KEY_LEN] {
            return Err(PrivateKeyError::AllZero);
        }
        // StaticSecret copies the bytes and, with the `zeroize` feature, wipes its
        // copy when dropped at the end of this function.
        let scalar = x25519_dalek::StaticSecret::from(*secret);
        let public = x25519_dalek::PublicKey::from(&scalar);
        let public =
            PublicKey::from_bytes(public.to_bytes()).map_err(PrivateKeyError::PublicKey)?;
        Ok(Self { secret, public })
    }

    /// The public key (X25519 of the base point), identical to what `wg pubkey`
    /// prints for this key.
    #[must_use]
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// The standard base64 form, as `wg genkey` prints it (without newline), in
    /// a buffer that is wiped when dropped.
    #[must_use]
    pub fn to_base64(&self) -> Zeroizing<String> {
        // Reserving the exact length up front means encoding never reallocates,
        // which would leave an unwiped copy of the secret in the freed buffer.
        let mut text = Zeroizing::new(String::with_capacity(KEY_BASE64_LEN));
        STANDARD.encode_string(self.secret.as_ref(), &mut text);
        text
    }

    /// The raw 32 secret bytes, for handing to the datapath (kernel WireGuard or
    /// the userspace device). Copies made from this are the caller's to wipe.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.secret
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

/// Applies Curve25519 clamping the way `wg genkey` does (`curve25519_clamp_secret`).
pub(crate) fn clamp(bytes: &mut [u8; KEY_LEN]) {
    bytes[0] &= 0b1111_1000;
    bytes[31] &= 0b0111_1111;
    bytes[31] |= 0b0100_0000;
}

/// True when `bytes` is already clamped, as every key from `wg genkey` is.
#[must_use]
pub fn is_clamped(bytes: &[u8; KEY_LEN]) -> bool {
    let mut clamped = Zeroizing::new(*bytes);
    clamp(&mut clamped);
    *clamped == *bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7748 section 6.1, Alice.
    const ALICE_SECRET_HEX: &str =
        "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
    const ALICE_PUBLIC_B64: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn alice() -> PrivateKey {
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&ALICE_SECRET_HEX[2 * i..2 * i + 2], 16).unwrap();
        }
        PrivateKey::from_bytes(bytes).unwrap()
    }

    #[test]
    fn rfc7748_vector_gives_the_expected_public_key() {
        let key = alice();
        assert_eq!(key.public_key().to_base64(), ALICE_PUBLIC_B64);
        assert_eq!(hex(key.as_bytes()), ALICE_SECRET_HEX);
    }

    #[test]
    fn base64_round_trip_keeps_every_byte() {
        let key = PrivateKey::generate().unwrap();
        let text = key.to_base64();
        assert_eq!(text.len(), KEY_BASE64_LEN);
        let again = PrivateKey::from_base64(&text).unwrap();
        assert_eq!(again.as_bytes(), key.as_bytes());
        assert_eq!(again.public_key(), key.public_key());
    }

    #[test]
    fn generated_keys_are_clamped_and_distinct() {
        let a = PrivateKey::generate().unwrap();
        let b = PrivateKey::generate().unwrap();
        assert!(is_clamped(a.as_bytes()));
        assert!(is_clamped(b.as_bytes()));
        assert_ne!(a.as_bytes(), b.as_bytes());
    }

    #[test]
    fn clamp_sets_and_clears_the_documented_bits() {
        let mut bytes = [0xffu8; 32];
        clamp(&mut bytes);
        assert_eq!(bytes[0], 0xf8);
        assert_eq!(bytes[31], 0x7f);
        let mut bytes = [0u8; 32];
        clamp(&mut bytes);
        assert_eq!(bytes[31], 0x40);
        assert!(!is_clamped(&[0xff; 32]));
    }

    #[test]
    fn debug_and_errors_never_show_the_secret() {
        let key = alice();
        let b64 = key.to_base64();
        let secret_hex = hex(key.as_bytes());
        let debug = format!("{key:?} {key:#?}");
        assert_eq!(format!("{key:?}"), "PrivateKey(<redacted>)");
        assert!(!debug.contains(b64.as_str()) && !debug.contains(&secret_hex));

        // A damaged copy of the secret: the last symbol is not canonical, and the
        // base64 crate would quote it in its own message.
        let mut damaged = b64.to_string();
        damaged.replace_range(42..43, "!");
        let errors = [
            PrivateKeyError::from_base64_err(&damaged),
            PrivateKeyError::from_base64_err(&b64[..40]),
            PrivateKeyError::from_base64_err(&format!("{}x", &b64[..43])),
        ];
        for err in errors {
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains(&b64[..8]), "{shown}");
            assert!(!shown.contains(&secret_hex[..8]), "{shown}");
        }
    }

    #[test]
    fn rejects_malformed_text_with_a_named_reason() {
        assert_eq!(
            PrivateKeyError::from_base64_err(""),
            PrivateKeyError::Length(0)
        );
        assert_eq!(
            PrivateKeyError::from_base64_err("AAAA"),
            PrivateKeyError::Length(3)
        );
        assert_eq!(
            PrivateKeyError::from_base64_err(&"A".repeat(44)),
            PrivateKeyError::Length(33)
        );
        assert_eq!(
            PrivateKeyError::from_base64_err(&format!("{}!", "A".repeat(43))),
            PrivateKeyError::Base64
        );
        assert_eq!(
            PrivateKeyError::from_base64_err("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            PrivateKeyError::AllZero
        );
        // wg genkey prints a newline; stripping it is the file loader's job.
        let text = format!("{}\n", alice().to_base64().as_str());
        assert_eq!(
            PrivateKeyError::from_base64_err(&text),
            PrivateKeyError::Base64
        );
    }

    impl PrivateKeyError {
        fn from_base64_err(text: &str) -> Self {
            match PrivateKey::from_base64(text) {
                Ok(_) => panic!("accepted a malformed key"),
                Err(err) => err,
            }
        }
    }
}

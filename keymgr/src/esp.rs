//! IPsec mode's secret half: the ESP key of each node pair's security
//! association, derived from the two nodes' X25519 keys, so no shared secret
//! is distributed (no cluster-wide pre-shared key in a Secret, nothing in an
//! annotation) and a compromised node exposes only its own pairs.
//!
//! For the SA from `sender` to `receiver` with SPI `spi` in the receiver's
//! key `epoch`:
//!
//! ```text
//! shared = X25519(own private key, other node's public key)   (the same at both ends)
//! prk    = HKDF-Extract(salt = "wireseal esp v1", ikm = shared)          (SHA-256)
//! okm    = HKDF-Expand(prk, info = "wireseal esp v1 sa" ‖ sender ‖ receiver
//!                                  ‖ epoch (u32 BE) ‖ spi (u32 BE), 36 bytes)
//! ```
//!
//! `okm` is the key material of `rfc4106(gcm(aes))` with a 128-bit ICV: a
//! 256-bit AES key followed by the 4-byte salt of the GCM nonce. Naming both
//! public keys in order gives each direction its own key; the epoch and SPI
//! give every rekey a fresh one. Only the ESP cipher (AES-256-GCM) is a
//! NIST-approved algorithm here: X25519 is not an approved key agreement
//! under SP 800-56A, so this chain as a whole is not FIPS-validated key
//! establishment.

use std::fmt;

use hkdf::Hkdf;
use sha2::Sha256;
use thiserror::Error;
use wireseal_core::PublicKey;
use zeroize::Zeroizing;

use crate::PrivateKey;

/// Bytes of an `rfc4106(gcm(aes))` key: AES-256 key and GCM salt.
pub const ESP_KEY_LEN: usize = 36;

const EXTRACT_SALT: &[u8] = b"wireseal esp v1";
const EXPAND_LABEL: &[u8] = b"wireseal esp v1 sa";

/// Why no key could be derived. Carries public keys only.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EspKeyError {
    /// This node's key is neither end of the SA.
    #[error("this node's key {own} is neither the sender {sender} nor the receiver {receiver}")]
    NotAnEnd {
        /// This node's public key.
        own: PublicKey,
        /// The SA's sender.
        sender: PublicKey,
        /// The SA's receiver.
        receiver: PublicKey,
    },
    /// The other node's public key is of small order: the shared secret
    /// would be all zeros, known to anyone.
    #[error("the public key {0} yields no shared secret (a small-order point)")]
    NonContributory(PublicKey),
    /// HKDF refused the output length: cannot happen for [`ESP_KEY_LEN`]
    /// bytes, and stays an error rather than a panic if that changes.
    #[error("HKDF-SHA256 cannot expand to {ESP_KEY_LEN} bytes")]
    OutputLength,
}

/// One SA's key material, wiped on drop and never printed.
pub struct EspKey(Zeroizing<[u8; ESP_KEY_LEN]>);

impl EspKey {
    /// The bytes as the kernel takes them (`XFRMA_ALG_AEAD`'s key).
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; ESP_KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for EspKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EspKey(<redacted>)")
    }
}

/// The key of the SA from `sender` to `receiver` (`own` is one of them).
///
/// # Errors
/// [`EspKeyError::NotAnEnd`], or [`EspKeyError::NonContributory`] for a
/// hostile or broken peer key.
pub fn derive_esp_key(
    own: &PrivateKey,
    sender: &PublicKey,
    receiver: &PublicKey,
    epoch: u32,
    spi: u32,
) -> Result<EspKey, EspKeyError> {
    let mine = own.public_key();
    let other = if mine == *sender {
        receiver
    } else if mine == *receiver {
        sender
    } else {
        return Err(EspKeyError::NotAnEnd {
            own: mine,
            sender: *sender,
            receiver: *receiver,
        });
    };
    let secret = x25519_dalek::StaticSecret::from(*own.as_bytes());
    let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(*other.as_bytes()));
    if !shared.was_contributory() {
        return Err(EspKeyError::NonContributory(*other));
    }
    let hkdf = Hkdf::<Sha256>::new(Some(EXTRACT_SALT), shared.as_bytes());
    let mut info = Vec::with_capacity(EXPAND_LABEL.len() + 2 * 32 + 8);
    info.extend_from_slice(EXPAND_LABEL);
    info.extend_from_slice(sender.as_bytes());
    info.extend_from_slice(receiver.as_bytes());
    info.extend_from_slice(&epoch.to_be_bytes());
    info.extend_from_slice(&spi.to_be_bytes());
    let mut okm = Zeroizing::new([0u8; ESP_KEY_LEN]);
    hkdf.expand(&info, okm.as_mut())
        .map_err(|_| EspKeyError::OutputLength)?;
    Ok(EspKey(okm))
}

#[cfg(test)]
mod tests;

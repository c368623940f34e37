//! wireseal's node private key: generation, persistence and rotation.
//!
//! # On-disk format
//!
//! A state directory (by default `/var/lib/wireseal`, created with mode 0700)
//! holds up to two files:
//!
//! - `private.key`: the current key;
//! - `private.key.next`: the next key while a make-before-break rotation is in
//!   progress.
//!
//! Each file holds exactly what `wg genkey` prints: the 32 key bytes as 44
//! characters of standard padded base64, followed by a newline. Leading and
//! trailing whitespace is ignored on read, so `wg genkey > private.key` (with a
//! suitable umask or a `chmod 600`) is a valid way to provision a key.
//! While a key is being written, a temporary file named
//! `.wireseal-key.tmp-<pid>-<random>` exists beside it; one older than a minute
//! is a leftover from a crash and is removed on the next create.
//!
//! ```no_run
//! use wireseal_keymgr::KeyStore;
//!
//! # fn main() -> Result<(), wireseal_keymgr::KeyStoreError> {
//! let store = KeyStore::new("/var/lib/wireseal");
//! let (key, _origin) = store.load_or_create()?;
//! let annotation_value = key.public_key().to_base64();
//! # let _ = annotation_value;
//! # Ok(())
//! # }
//! ```
//!
//! # Guarantees
//!
//! - **Never printed.** [`PrivateKey`] has no `Display`, `Clone` or serde
//!   support; its `Debug` is `PrivateKey(<redacted>)`; no error carries file
//!   content or key text; log lines carry only the path and the public key's
//!   fingerprint. Key bytes and their base64 are wiped from memory on drop.
//! - **Atomic, durable writes.** A new key is written to a 0600 temporary file in
//!   the same directory, synced, hard-linked into place (which fails rather than
//!   overwrite an existing key) and the directory is synced. Promotion renames
//!   the next key over the current one and syncs the directory, so after a crash
//!   exactly one of the two keys is current.
//! - **Refuses unsafe files.** A key file that is a symlink, not a regular file,
//!   accessible by group or others (any bit of 0o077), owned by a user other than
//!   the state directory's owner, larger than 1 KiB, empty or malformed is an
//!   error naming the file and the problem. So is a state directory writable by
//!   group or others.
//! - **Never re-keys silently.** An existing key that cannot be used is an error,
//!   never a reason to generate a new one: a new key would cut the node off from
//!   every peer that still has the old one.
//! - **Compatible with `wg`.** Generated keys are clamped exactly as by
//!   `wg genkey`, and [`PrivateKey::public_key`] equals `wg pubkey`; tests check
//!   both directions against Debian's wireguard-tools.

mod error;
pub mod esp;
mod file;
mod private_key;
mod process;
mod store;

pub use error::KeyStoreError;
pub use private_key::{PrivateKey, PrivateKeyError, is_clamped};
pub use process::harden_process;
pub use store::{KEY_FILE, KeyOrigin, KeyStore, NEXT_KEY_FILE};

//! The wireseal agent: configuration, the Kubernetes adapter, the reconcile loop
//! and the command line. The binary `wireseal` is a thin shell over this crate.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod agent;
pub mod channels;
pub mod cleanup;
pub mod cli;
pub mod config;
pub mod datapath;
pub mod http;
pub mod ipsec_epoch;
pub mod k8s;
pub mod keys;
pub mod leaks;
pub mod lockdown;
pub mod metrics;
pub mod reconcile;
pub mod report;
pub mod rotation;
pub mod state_file;
pub mod status;
pub mod status_cmd;
pub mod verify;
pub mod xfrm_stat;

/// A public key for unit tests: the one of the private key of 32 `byte`s.
#[cfg(test)]
pub(crate) fn test_key(byte: u8) -> wireseal_core::PublicKey {
    wireseal_keymgr::PrivateKey::from_bytes([byte; 32])
        .unwrap()
        .public_key()
}

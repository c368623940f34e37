//! The wireseal agent: configuration, the Kubernetes adapter, the reconcile loop
//! and the command line. The binary `wireseal` is a thin shell over this crate.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod cli;
pub mod config;
pub mod keys;

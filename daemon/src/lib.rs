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
pub mod k8s;
pub mod keys;
pub mod leaks;
pub mod lockdown;
pub mod metrics;
pub mod reconcile;
pub mod report;
pub mod rotation;
pub mod status;
pub mod status_cmd;
pub mod verify;

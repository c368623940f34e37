//! Network namespaces for wireseal's privileged tests and for the lab.
//!
//! Every namespace is a [`Netns`], deleted when it is dropped, also when a
//! test panics. Nothing forks: code that must live in a namespace runs on a
//! thread of its own that entered it with `setns` ([`Netns::run`],
//! [`Netns::spawn`]), and commands run inside it through `ip -n` or
//! `ip netns exec`.
//!
//! Two kinds of caller, two flavours of the same operations:
//!
//! - the lab's binary (`wireseal-lab demo`) reports failures as errors:
//!   [`Netns::create`], [`Netns::ip`], [`Netns::exec`], [`run`] and [`ip`]
//!   return a [`CmdError`] naming the command and quoting its stderr (and,
//!   for a program that is missing, the Debian package to install);
//! - tests fail at once with the reason instead: [`Netns::new`] (a uniquely
//!   named namespace, after [`require`] has checked for root), [`Netns::run_ip`],
//!   [`run_ok`], [`ns_run`], [`Netns::run`] (async code, bounded by
//!   [`DEADLINE`]) and [`wait_until`].
//!
//! The tests that use it are privileged: they carry
//! `#[ignore = "needs root and network namespaces"]`, and [`require`] fails
//! them loudly when they are run without root anyway.
//!
//! A dev-dependency of the crates with privileged tests, and a dependency of
//! `wireseal-lab` (itself a test tool); no library depends on it.

mod command;
mod hardened;
mod netns;
mod wipe;

pub use hardened::{NOBODY, accept_from, assert_hardened, unprivileged};
pub use wipe::{WipeCheck, arm, disarm};

pub use command::{
    CmdError, DEADLINE, ip, ns_run, ns_try, require, run, run_ok, unique, wait_until,
};
pub use netns::{Netns, Pair, list_with_prefix};

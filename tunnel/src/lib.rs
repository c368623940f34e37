//! wireseal's userspace WireGuard datapath.
//!
//! boringtun's `noise` core does the protocol; this crate does the rest: the TUN
//! device, a batched UDP socket, peers and cryptokey routing, timers, and the standard
//! WireGuard UAPI so `wg` can configure and inspect it. It runs as its own process
//! (`wireseal-tunnel`) so an agent restart never touches the tunnel; the agent
//! re-applies its configuration through the UAPI socket.

pub mod allowed_ips;
pub mod device;
pub mod gro;
pub mod health;
pub mod key;
pub mod offload;
pub mod pipeline;
pub mod tun;
pub mod uapi;
pub mod udp;

use std::time::Duration;

/// How often boringtun's timers run. Its timers have one-second resolution internally;
/// a quarter second keeps handshake retries and keepalives close to their deadlines.
pub const TIMER_TICK: Duration = Duration::from_millis(250);

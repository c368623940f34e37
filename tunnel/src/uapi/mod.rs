//! The standard WireGuard UAPI (the cross-platform `get=1`/`set=1` text protocol on a
//! unix socket), so `wg show`, `wg showconf` and `wg set` work unchanged.

mod check;
mod format;
mod parse;
mod serve;

#[cfg(test)]
mod tests;

use std::io;

use thiserror::Error;

pub use check::{CHECK_DEADLINE, check_health};
pub use format::{SecretText, format_get};
pub use parse::{MAX_LINE, MAX_LINES, MAX_REQUEST, PeerChange, Request, SetRequest, parse_request};
pub use serve::{
    Conn, MAX_BUFFERED, REQUEST_DEADLINE, UapiServer, handle_connection, peer_allowed, socket_path,
};

/// Why a UAPI request failed. Messages never contain key material.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UapiError {
    /// Malformed line, unknown key or bad value.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Not a `get=1`/`set=1` conversation.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The listen port is taken.
    #[error("listen port in use: {0}")]
    PortInUse(String),
    /// Another I/O failure while applying.
    #[error("i/o error: {0}")]
    Io(String),
}

impl UapiError {
    /// The `errno=` value of the answer. Negative, as wireguard-go sends it: `wg` turns
    /// `errno=-22` into "Invalid argument" (it negates the number it reads).
    #[must_use]
    pub const fn errno(&self) -> i32 {
        -match self {
            Self::Invalid(_) => libc::EINVAL,
            Self::Protocol(_) => libc::EPROTO,
            Self::PortInUse(_) => libc::EADDRINUSE,
            Self::Io(_) => libc::EIO,
        }
    }

    pub(crate) fn from_bind(err: io::Error) -> Self {
        if err.kind() == io::ErrorKind::AddrInUse {
            Self::PortInUse(err.to_string())
        } else {
            Self::Io(format!("binding the UDP socket: {err}"))
        }
    }
}

//! The client side of `health=1`: `wireseal-tunnel --check`, the liveness probe.

use std::io::{self, Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use super::{peer_allowed, socket_path};

/// How long the check waits for the whole answer; a tunnel whose UAPI thread or
/// device lock is stuck fails it.
pub const CHECK_DEADLINE: Duration = Duration::from_secs(3);

/// Largest health answer read (a few thread names).
const MAX_ANSWER: u64 = 4096;

/// Asks the tunnel serving `dir/IFACE.sock` whether its datapath makes progress,
/// within `deadline`. The listener must be root or our own user.
///
/// # Errors
/// A message naming the socket and what failed: no tunnel, a listener of another
/// user, no answer in time, or the stale threads the tunnel names.
pub fn check_health(dir: &Path, iface: &str, deadline: Duration) -> Result<(), String> {
    let path = socket_path(dir, iface);
    let at = |what: &str, e: io::Error| format!("{what} {}: {e}", path.display());
    let until = Instant::now() + deadline;
    let mut stream = UnixStream::connect(&path).map_err(|e| at("connecting to", e))?;
    let cred = getsockopt(&stream, PeerCredentials)
        .map_err(|e| at("reading the peer credentials of", e.into()))?;
    let own = nix::unistd::geteuid().as_raw();
    if !peer_allowed(cred.uid(), own) {
        return Err(format!(
            "{} is served by uid {}, neither root nor us",
            path.display(),
            cred.uid()
        ));
    }
    let left = || {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(io::Error::new(io::ErrorKind::TimedOut, "no answer in time"))
        } else {
            Ok(left)
        }
    };
    let mut answer = Vec::new();
    let io = (|| {
        stream.set_write_timeout(Some(left()?))?;
        stream.write_all(b"health=1\n\n")?;
        let mut chunk = [0u8; 512];
        let mut limited = (&stream).take(MAX_ANSWER);
        while !answer.ends_with(b"\n\n") {
            stream.set_read_timeout(Some(left()?))?;
            let n = limited.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&chunk[..n]);
        }
        Ok(())
    })();
    io.map_err(|e| at("asking", e))?;
    let text = String::from_utf8_lossy(&answer);
    if text.lines().any(|l| l == "errno=0") {
        return Ok(());
    }
    let stale: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("stale_thread="))
        .collect();
    if stale.is_empty() {
        Err(format!("{} answered {:?}", path.display(), text.trim()))
    } else {
        Err(format!(
            "datapath threads without progress: {}",
            stale.join(", ")
        ))
    }
}

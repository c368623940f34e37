//! The UAPI unix socket: `/var/run/wireguard/IFACE.sock`, where `wg` looks for it.

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use super::{MAX_LINE, MAX_LINES, MAX_REQUEST, Request, UapiError, format_get, parse_request};
use zeroize::Zeroize as _;

use crate::device::Device;

/// A client that stops talking mid-request must not hold the (single) UAPI thread.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where `wg` looks for the socket of `iface`.
#[must_use]
pub fn socket_path(dir: &Path, iface: &str) -> PathBuf {
    dir.join(format!("{iface}.sock"))
}

/// The listening socket; the file is removed when this is dropped.
pub struct UapiServer {
    path: PathBuf,
    listener: UnixListener,
}

impl UapiServer {
    /// Creates `dir` (0700) if needed and listens on `dir/IFACE.sock` (0600). A stale
    /// socket file from a crashed run is removed; a live one (another process answers
    /// on it) is an error, so two datapaths never fight over one interface.
    ///
    /// # Errors
    /// I/O errors, or `AddrInUse` when another process serves the socket.
    pub fn bind(dir: &Path, iface: &str) -> io::Result<Self> {
        if !dir.exists() {
            fs::create_dir_all(dir)?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        }
        let path = socket_path(dir, iface);
        if path.exists() {
            if UnixStream::connect(&path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is served by another process", path.display()),
                ));
            }
            fs::remove_file(&path)?;
        }
        let listener = UnixListener::bind(&path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
        Ok(Self { path, listener })
    }

    /// The socket's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves requests on a background thread, one connection at a time (`wg` opens
    /// one short connection per command).
    ///
    /// # Errors
    /// When the thread cannot be spawned or the listener cannot be cloned.
    pub fn spawn(&self, device: Arc<Device>) -> io::Result<thread::JoinHandle<()>> {
        let listener = self.listener.try_clone()?;
        thread::Builder::new().name("uapi".into()).spawn(move || {
            let active = Arc::new(AtomicUsize::new(0));
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => serve_one(&device, stream, &active),
                    Err(e) => tracing::warn!(error = %e, "uapi: accept failed"),
                }
            }
        })
    }
}

/// Connections served at once. A client that stalls (up to [`CLIENT_TIMEOUT`]) must
/// not block `wg show`, but a flood of connections must not become a flood of threads.
const MAX_CONCURRENT: usize = 8;

fn serve_one(device: &Arc<Device>, stream: UnixStream, active: &Arc<AtomicUsize>) {
    let _ = stream.set_read_timeout(Some(CLIENT_TIMEOUT));
    let _ = stream.set_write_timeout(Some(CLIENT_TIMEOUT));
    let reader = match stream.try_clone() {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "uapi: cloning a connection failed");
            return;
        }
    };
    let run = |device: &Device| {
        if let Err(e) = handle_connection(device, reader, stream) {
            tracing::debug!(error = %e, "uapi: connection ended with an error");
        }
    };
    if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONCURRENT {
        // Over the limit: serve it on the accept thread, which pushes back on clients.
        run(device);
        active.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    let (device, counter) = (Arc::clone(device), Arc::clone(active));
    let spawned = thread::Builder::new()
        .name("uapi-conn".into())
        .spawn(move || {
            run(&device);
            counter.fetch_sub(1, Ordering::AcqRel);
        });
    if let Err(e) = spawned {
        // The connection went down with the closure; only the count needs undoing.
        active.fetch_sub(1, Ordering::AcqRel);
        tracing::warn!(error = %e, "uapi: cannot spawn a connection thread");
    }
}

impl Drop for UapiServer {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Reads one line of at most [`MAX_LINE`] bytes. `Ok(None)` at a clean end of stream.
fn read_line(reader: &mut impl BufRead, buf: &mut Vec<u8>) -> Result<Option<()>, UapiError> {
    buf.clear();
    let limit = u64::try_from(MAX_LINE + 1).unwrap_or(u64::MAX);
    let n = reader
        .take(limit)
        .read_until(b'\n', buf)
        .map_err(|e| UapiError::Io(e.to_string()))?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        // Either longer than MAX_LINE or the stream ended mid-line (truncated).
        return Err(UapiError::Invalid(if n > MAX_LINE {
            "line too long".into()
        } else {
            "truncated line".into()
        }));
    }
    buf.pop();
    Ok(Some(()))
}

/// Serves requests on one connection until the client closes it. Each request is
/// lines ending with an empty line; each answer ends with `errno=N` and an empty line.
/// After a framing error (a line too long, a truncated request) the connection is
/// answered and closed, since the stream can no longer be split into requests.
///
/// # Errors
/// I/O errors on the stream.
pub fn handle_connection(
    device: &Device,
    reader: impl Read,
    mut writer: impl Write,
) -> io::Result<()> {
    let mut reader = BufReader::new(reader);
    let mut line = Vec::with_capacity(128);
    loop {
        let mut lines: Vec<String> = Vec::new();
        let mut total = 0usize;
        let framing = loop {
            match read_line(&mut reader, &mut line) {
                Ok(None) if lines.is_empty() => return Ok(()),
                Ok(None) => break Some(UapiError::Invalid("request truncated".into())),
                Ok(Some(())) if line.is_empty() => break None,
                Ok(Some(())) => {
                    total += line.len() + 1;
                    if total > MAX_REQUEST || lines.len() >= MAX_LINES {
                        break Some(UapiError::Invalid("request too large".into()));
                    }
                    match String::from_utf8(std::mem::take(&mut line)) {
                        Ok(text) => lines.push(text),
                        Err(_) => break Some(UapiError::Invalid("line is not UTF-8".into())),
                    }
                }
                Err(e) => break Some(e),
            }
        };
        if let Some(err) = framing {
            lines.zeroize();
            line.zeroize();
            tracing::warn!(error = %err, "uapi: bad request");
            write!(writer, "errno={}\n\n", err.errno())?;
            writer.flush()?;
            return Ok(());
        }
        let mut answer = respond(device, &lines);
        // Requests and `get` answers can carry the private key: wipe them.
        lines.zeroize();
        let written = writer.write_all(answer.as_bytes());
        answer.zeroize();
        written?;
        writer.flush()?;
    }
}

fn respond(device: &Device, lines: &[String]) -> String {
    let mut out = String::new();
    let result = parse_request(lines.iter().map(String::as_str)).and_then(|req| match req {
        Request::Get => {
            format_get(&device.read(), &mut out);
            Ok(())
        }
        Request::Set(set) => device.apply(set),
    });
    match result {
        Ok(()) => out.push_str("errno=0\n\n"),
        Err(err) => {
            tracing::warn!(error = %err, "uapi: request refused");
            out.clear();
            out.push_str(&format!("errno={}\n\n", err.errno()));
        }
    }
    out
}

//! The UAPI unix socket: `/var/run/wireguard/IFACE.sock`, where `wg` looks for it.
//!
//! Whoever can talk to this socket can read the private key and reroute every peer,
//! so the socket is guarded three ways: it is created 0600 (under a umask, so it is
//! never reachable in between), its directory is made 0700 and root's (or ours) even
//! when it already existed (a hostPath), and each connection's `SO_PEERCRED` must
//! name root or our own user. A hostile local client can still only hold the socket
//! for one request deadline and a bounded share of memory.

use std::cell::Cell;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::sys::stat::{Mode, umask};
use zeroize::{Zeroize as _, Zeroizing};

use super::format::SecretText;
use super::{MAX_LINE, MAX_LINES, MAX_REQUEST, Request, UapiError, format_get, parse_request};
use crate::device::Device;
use crate::health::STALE_AFTER;

/// Time a client has for one request: from the start of reading it to the end of
/// writing its answer. Per request, not per read, so a client that trickles one byte
/// at a time cannot hold a connection thread for longer.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

/// Request bytes held at once across all connections (each line is charged its
/// length plus [`LINE_OVERHEAD`]). Room for one largest request and the agent's
/// usual few MiB; beyond it a request is refused, so eight slow or huge clients
/// cannot make the tunnel allocate 8 × [`MAX_REQUEST`].
pub const MAX_BUFFERED: usize = 128 << 20;

/// What one stored line costs beyond its text (its `String` and the allocator's share).
const LINE_OVERHEAD: usize = 48;

/// Connections served at once. A client that stalls (up to [`REQUEST_DEADLINE`]) must
/// not block `wg show`, but a flood of connections must not become a flood of threads.
const MAX_CONCURRENT: usize = 8;

/// Bytes read from the socket at a time (the buffer is wiped when the connection ends).
const READ_CHUNK: usize = 8192;

/// Where `wg` looks for the socket of `iface`.
#[must_use]
pub fn socket_path(dir: &Path, iface: &str) -> PathBuf {
    dir.join(format!("{iface}.sock"))
}

/// Whether a peer with `uid` may use the socket of a process running as `own`: root,
/// or the same user (`wg` run by whoever runs the tunnel).
#[must_use]
pub const fn peer_allowed(uid: u32, own: u32) -> bool {
    uid == 0 || uid == own
}

/// The listening socket; the file is removed when this is dropped.
pub struct UapiServer {
    path: PathBuf,
    listener: UnixListener,
}

/// Makes `dir` a 0700 directory of ours, creating it if needed. An existing one (a
/// hostPath the node may have made with 0755) is tightened, not trusted: a symlink,
/// a non-directory or another user's directory is refused.
fn private_dir(dir: &Path) -> io::Result<()> {
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        Err(e) => return Err(e),
        Ok(meta) if !meta.is_dir() => {
            return Err(io::Error::other(format!(
                "{} is not a directory (a symlink or a file)",
                dir.display()
            )));
        }
        Ok(meta) if !peer_allowed(meta.uid(), nix::unistd::geteuid().as_raw()) => {
            return Err(io::Error::other(format!(
                "{} belongs to uid {}, neither root nor us",
                dir.display(),
                meta.uid()
            )));
        }
        Ok(_) => {}
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

impl UapiServer {
    /// Makes `dir` 0700 (creating it if needed) and listens on `dir/IFACE.sock`,
    /// created 0600. A stale socket file from a crashed run is removed; a live one
    /// (another process answers on it) is an error, so two datapaths never fight
    /// over one interface.
    ///
    /// # Errors
    /// I/O errors, or `AddrInUse` when another process serves the socket.
    pub fn bind(dir: &Path, iface: &str) -> io::Result<Self> {
        private_dir(dir)?;
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
        // bind() creates the file with the umask applied: with 0177 it is 0600 from
        // the start, where a chmod afterwards would leave a window. The umask is
        // process-wide; the tunnel creates no other files, and it is restored at once.
        let old = umask(Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(&path);
        umask(old);
        Ok(Self {
            path,
            listener: bound?,
        })
    }

    /// The socket's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves requests on a background thread, one thread per connection up to
    /// [`MAX_CONCURRENT`] (`wg` opens one short connection per command).
    ///
    /// # Errors
    /// When the thread cannot be spawned or the listener cannot be cloned.
    pub fn spawn(&self, device: Arc<Device>) -> io::Result<thread::JoinHandle<()>> {
        let listener = self.listener.try_clone()?;
        let own = nix::unistd::geteuid().as_raw();
        thread::Builder::new().name("uapi".into()).spawn(move || {
            let active = Arc::new(AtomicUsize::new(0));
            let budget = Arc::new(Budget::new(MAX_BUFFERED));
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => match getsockopt(&stream, PeerCredentials) {
                        Ok(cred) if peer_allowed(cred.uid(), own) => {
                            serve_one(&device, stream, &active, &budget);
                        }
                        Ok(cred) => tracing::warn!(
                            uid = cred.uid(),
                            pid = cred.pid(),
                            "uapi: refused a client that is neither root nor our user"
                        ),
                        Err(e) => tracing::warn!(error = %e, "uapi: no peer credentials"),
                    },
                    Err(e) => tracing::warn!(error = %e, "uapi: accept failed"),
                }
            }
        })
    }
}

fn serve_one(
    device: &Arc<Device>,
    stream: UnixStream,
    active: &Arc<AtomicUsize>,
    budget: &Arc<Budget>,
) {
    let run = move |device: &Device, budget: &Budget| {
        let Some((reader, writer)) = Timed::pair(stream, REQUEST_DEADLINE) else {
            return;
        };
        if let Err(e) = serve_connection(device, reader, writer, budget) {
            tracing::debug!(error = %e, "uapi: connection ended with an error");
        }
    };
    if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONCURRENT {
        // Over the limit: serve it on the accept thread, which pushes back on clients.
        run(device, budget);
        active.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    let (device, counter, budget) = (Arc::clone(device), Arc::clone(active), Arc::clone(budget));
    let spawned = thread::Builder::new()
        .name("uapi-conn".into())
        .spawn(move || {
            run(&device, &budget);
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

/// The read side of a connection: [`Conn::start_request`] restarts the deadline.
pub trait Conn: Read {
    /// Called before each request is read.
    fn start_request(&mut self) {}
}

impl Conn for &[u8] {}

/// One end of a socket whose reads and writes share the current request's deadline.
pub(crate) struct Timed {
    stream: UnixStream,
    until: Rc<Cell<Instant>>,
    deadline: Duration,
}

impl Timed {
    pub(crate) fn pair(stream: UnixStream, deadline: Duration) -> Option<(Self, Self)> {
        let writer = match stream.try_clone() {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "uapi: cloning a connection failed");
                return None;
            }
        };
        let until = Rc::new(Cell::new(Instant::now() + deadline));
        Some((
            Self {
                stream,
                until: Rc::clone(&until),
                deadline,
            },
            Self {
                stream: writer,
                until,
                deadline,
            },
        ))
    }

    /// Time left, or `TimedOut` when the deadline has passed.
    fn left(&self) -> io::Result<Duration> {
        let left = self.until.get().saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the request deadline passed",
            ))
        } else {
            Ok(left)
        }
    }
}

impl Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.set_read_timeout(Some(self.left()?))?;
        self.stream.read(buf)
    }
}

impl Write for Timed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.set_write_timeout(Some(self.left()?))?;
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

impl Conn for Timed {
    fn start_request(&mut self) {
        self.until.set(Instant::now() + self.deadline);
    }
}

/// Bytes of requests that may be held at once, shared by all connections.
#[derive(Debug)]
pub(crate) struct Budget {
    free: AtomicUsize,
}

impl Budget {
    pub(crate) const fn new(bytes: usize) -> Self {
        Self {
            free: AtomicUsize::new(bytes),
        }
    }

    fn take(&self, n: usize) -> bool {
        self.free
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |free| {
                free.checked_sub(n)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.free.fetch_add(n, Ordering::AcqRel);
    }
}

/// What one connection holds of the budget; given back when dropped.
struct Held<'a> {
    budget: &'a Budget,
    bytes: usize,
}

impl Held<'_> {
    fn take(&mut self, n: usize) -> bool {
        let ok = self.budget.take(n);
        if ok {
            self.bytes += n;
        }
        ok
    }

    fn release(&mut self) {
        self.budget.give(std::mem::take(&mut self.bytes));
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

/// Splits a stream into lines through one fixed buffer. Requests carry private keys:
/// the buffer and the line never reallocate (which would leave copies behind) and are
/// wiped when the connection ends.
struct Lines<R> {
    inner: R,
    buf: Zeroizing<Vec<u8>>,
    start: usize,
    end: usize,
}

impl<R: Conn> Lines<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            buf: Zeroizing::new(vec![0; READ_CHUNK]),
            start: 0,
            end: 0,
        }
    }

    /// Reads one line of at most [`MAX_LINE`] bytes into `line` (whose capacity is
    /// at least that). `Ok(None)` at a clean end of stream.
    fn read_line(&mut self, line: &mut Vec<u8>) -> Result<Option<()>, UapiError> {
        line.clear();
        loop {
            if self.start == self.end {
                let n = loop {
                    match self.inner.read(&mut self.buf[..]) {
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        other => break other.map_err(|e| UapiError::Io(e.to_string()))?,
                    }
                };
                if n == 0 {
                    return if line.is_empty() {
                        Ok(None)
                    } else {
                        Err(UapiError::Invalid("truncated line".into()))
                    };
                }
                (self.start, self.end) = (0, n);
            }
            let avail = &self.buf[self.start..self.end];
            let (take, done) = match avail.iter().position(|&b| b == b'\n') {
                Some(i) => (i, true),
                None => (avail.len(), false),
            };
            if line.len() + take > MAX_LINE {
                return Err(UapiError::Invalid("line too long".into()));
            }
            line.extend_from_slice(&avail[..take]);
            self.start += take + usize::from(done);
            if done {
                return Ok(Some(()));
            }
        }
    }
}

/// Serves requests on one connection until the client closes it, with a budget of
/// its own. See [`serve_connection`].
///
/// # Errors
/// I/O errors on the stream.
pub fn handle_connection(device: &Device, reader: impl Conn, writer: impl Write) -> io::Result<()> {
    serve_connection(device, reader, writer, &Budget::new(MAX_BUFFERED))
}

/// Serves requests on one connection until the client closes it. Each request is
/// lines ending with an empty line; each answer ends with `errno=N` and an empty line.
/// After a framing error (a line too long, a truncated request, the shared byte
/// budget exhausted) the connection is answered and closed, since the stream can no
/// longer be split into requests.
pub(crate) fn serve_connection(
    device: &Device,
    reader: impl Conn,
    mut writer: impl Write,
    budget: &Budget,
) -> io::Result<()> {
    let mut reader = Lines::new(reader);
    let mut line = Zeroizing::new(Vec::with_capacity(MAX_LINE));
    let mut held = Held { budget, bytes: 0 };
    loop {
        reader.inner.start_request();
        let mut lines: Vec<String> = Vec::new();
        let mut total = 0usize;
        let framing = loop {
            match reader.read_line(&mut line) {
                Ok(None) if lines.is_empty() => return Ok(()),
                Ok(None) => break Some(UapiError::Invalid("request truncated".into())),
                Ok(Some(())) if line.is_empty() => break None,
                Ok(Some(())) => {
                    total += line.len() + 1;
                    if total > MAX_REQUEST || lines.len() >= MAX_LINES {
                        break Some(UapiError::Invalid("request too large".into()));
                    }
                    if !held.take(line.len() + LINE_OVERHEAD) {
                        break Some(UapiError::Io(
                            "too many request bytes held by all connections".into(),
                        ));
                    }
                    // An exact-size copy: the String never grows.
                    match std::str::from_utf8(&line) {
                        Ok(text) => lines.push(text.to_owned()),
                        Err(_) => break Some(UapiError::Invalid("line is not UTF-8".into())),
                    }
                }
                Err(e) => break Some(e),
            }
        };
        if let Some(err) = framing {
            lines.zeroize();
            tracing::warn!(error = %err, "uapi: bad request");
            // The answer gets a deadline of its own (the request's may be what passed).
            reader.inner.start_request();
            write!(writer, "errno={}\n\n", err.errno())?;
            writer.flush()?;
            return Ok(());
        }
        // Wiped when dropped: a `get` answer carries the private key.
        let answer = respond(device, &lines);
        // Requests can carry the private key too.
        lines.zeroize();
        held.release();
        writer.write_all(answer.as_str().as_bytes())?;
        writer.flush()?;
    }
}

fn respond(device: &Device, lines: &[String]) -> SecretText {
    let mut out = SecretText::default();
    let result = parse_request(lines.iter().map(String::as_str)).and_then(|req| match req {
        Request::Get => {
            format_get(&device.read(), &mut out);
            Ok(())
        }
        Request::Set(set) => device.apply(set),
        Request::Health => match device.health().stale(STALE_AFTER).as_slice() {
            [] => Ok(()),
            stale => {
                for name in stale {
                    let _ = writeln!(out, "stale_thread={name}");
                }
                let _ = write!(out, "errno={}\n\n", -libc::EIO);
                Err(UapiError::Io(format!(
                    "no progress in {} s: {}",
                    STALE_AFTER.as_secs(),
                    stale.join(", ")
                )))
            }
        },
    });
    match result {
        Ok(()) => out.push_str("errno=0\n\n"),
        Err(UapiError::Io(reason)) if out.as_str().ends_with("\n\n") => {
            tracing::error!(reason = %reason, "uapi: datapath unhealthy");
        }
        Err(err) => {
            tracing::warn!(error = %err, "uapi: request refused");
            out = SecretText::default();
            let _ = write!(out, "errno={}\n\n", err.errno());
        }
    }
    out
}

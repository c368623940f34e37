//! The agent's local HTTP endpoints, three listeners for three audiences:
//!
//! - `--status-addr` (TCP, 127.0.0.1:9830): `/healthz` and `/readyz`, the kubelet's probes;
//! - `--metrics-addr` (TCP, 0.0.0.0:9831 or off): `/metrics`, for Prometheus;
//! - `STATE_DIR/status.sock` (unix, 0600, root only): `/status`, the full peer
//!   listing (`wireseal status`, `wireseal verify`). It names every node, its key,
//!   endpoint and traffic: nothing for a process that merely shares the network.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use nix::sys::stat::{Mode, umask};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::status::SharedStatus;

/// The status socket's file name in the state directory.
pub const STATUS_SOCKET: &str = "status.sock";

/// The status socket of the agent whose state directory is `state_dir`.
#[must_use]
pub fn status_socket(state_dir: &Path) -> PathBuf {
    state_dir.join(STATUS_SOCKET)
}

/// What a listener answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/healthz`, `/readyz`.
    Probes,
    /// `/metrics`.
    Metrics,
    /// `/status` (the unix socket).
    Status,
}

/// Binds a TCP listener; a taken port is an error naming the flag, the port and
/// what to do, so the agent exits with one clear line instead of a bare EADDRINUSE.
///
/// # Errors
/// When the address cannot be bound.
pub async fn bind_tcp(addr: SocketAddr, flag: &str, env: &str) -> Result<TcpListener> {
    match TcpListener::bind(addr).await {
        Ok(listener) => Ok(listener),
        Err(err) if err.kind() == io::ErrorKind::AddrInUse => bail!(
            "{flag} {addr}: port {} is already in use by another process on this node; \
             stop it or choose another address with {flag} / {env}",
            addr.port()
        ),
        Err(err) => Err(err).with_context(|| format!("binding {flag} {addr}")),
    }
}

/// Binds the root-only status socket in `state_dir`: created under umask 0177,
/// so it is 0600 from the start (no window before a chmod). A stale file from a
/// crashed agent is replaced; a live one (another agent answers) is an error.
///
/// # Errors
/// When the socket cannot be created.
pub fn bind_status_socket(state_dir: &Path) -> Result<UnixListener> {
    let path = status_socket(state_dir);
    if std::os::unix::net::UnixStream::connect(&path).is_ok() {
        bail!(
            "{} is served by another process (a second agent on this node?)",
            path.display()
        );
    }
    match std::fs::remove_file(&path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => {
            return Err(err).with_context(|| format!("removing the stale {}", path.display()));
        }
        _ => {}
    }
    // The umask is process-wide; restored at once. Files the agent creates meanwhile
    // (its key) set their own modes, which a stricter umask can only narrow.
    let old = umask(Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(&path);
    umask(old);
    bound.with_context(|| format!("creating the status socket {}", path.display()))
}

/// The agent's three listeners, bound.
#[derive(Debug)]
pub struct Listeners {
    probes: TcpListener,
    metrics: Option<TcpListener>,
    status: UnixListener,
}

impl Listeners {
    /// Binds `--status-addr`, `--metrics-addr` (unless off) and the status socket.
    ///
    /// # Errors
    /// A taken port (naming it and its flag), or a socket that cannot be created.
    pub async fn bind(config: &crate::config::Config) -> Result<Self> {
        let probes = bind_tcp(config.status_addr, "--status-addr", "WIRESEAL_STATUS_ADDR").await?;
        let metrics = match config.metrics_addr {
            Some(addr) => Some(bind_tcp(addr, "--metrics-addr", "WIRESEAL_METRICS_ADDR").await?),
            None => None,
        };
        let status = bind_status_socket(&config.state_dir)?;
        Ok(Self {
            probes,
            metrics,
            status,
        })
    }

    /// Serves all three until `shutdown`.
    pub fn serve(self, status: &SharedStatus, metrics: &Metrics, shutdown: &watch::Receiver<bool>) {
        tokio::spawn(serve_tcp(
            self.probes,
            Endpoint::Probes,
            status.clone(),
            metrics.clone(),
            shutdown.clone(),
        ));
        if let Some(listener) = self.metrics {
            tokio::spawn(serve_tcp(
                listener,
                Endpoint::Metrics,
                status.clone(),
                metrics.clone(),
                shutdown.clone(),
            ));
        }
        tokio::spawn(serve_status_socket(
            self.status,
            status.clone(),
            metrics.clone(),
            shutdown.clone(),
        ));
    }
}

/// Serves `listener` (TCP) with the routes of `endpoint` until `shutdown`.
pub fn serve_tcp(
    listener: TcpListener,
    endpoint: Endpoint,
    status: SharedStatus,
    metrics: Metrics,
    shutdown: watch::Receiver<bool>,
) -> impl Future<Output = ()> {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, ?endpoint, "HTTP endpoint listening");
    }
    async move {
        accept_until(shutdown, listener, |stream| {
            serve_connection(stream, endpoint, status.clone(), metrics.clone())
        })
        .await;
    }
}

/// A listener of either kind.
trait Accept {
    type Stream;
    fn accept_one(&self) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

impl Accept for TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept_one(&self) -> io::Result<Self::Stream> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

impl Accept for UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn accept_one(&self) -> io::Result<Self::Stream> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

/// Accepts connections until `shutdown`, handing each to `handle`.
async fn accept_until<L: Accept>(
    mut shutdown: watch::Receiver<bool>,
    listener: L,
    mut handle: impl FnMut(L::Stream),
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept_one() => accepted,
        };
        if let Ok(stream) = accepted {
            handle(stream);
        }
    }
}

/// Serves `/status` on the unix socket until `shutdown`, to root or the agent's
/// own user only (`SO_PEERCRED`, on top of the file's 0600).
pub fn serve_status_socket(
    listener: UnixListener,
    status: SharedStatus,
    metrics: Metrics,
    shutdown: watch::Receiver<bool>,
) -> impl Future<Output = ()> {
    let own = nix::unistd::geteuid().as_raw();
    async move {
        accept_until(shutdown, listener, |stream| match stream.peer_cred() {
            Ok(cred) if cred.uid() == 0 || cred.uid() == own => {
                serve_connection(stream, Endpoint::Status, status.clone(), metrics.clone());
            }
            Ok(cred) => warn!(
                uid = cred.uid(),
                "status socket: refused a client that is neither root nor our user"
            ),
            Err(err) => warn!(error = %err, "status socket: no peer credentials"),
        })
        .await;
    }
}

fn serve_connection<IO>(io: IO, endpoint: Endpoint, status: SharedStatus, metrics: Metrics)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let service = service_fn(move |req| {
            let (status, metrics) = (status.clone(), metrics.clone());
            async move { Ok::<_, Infallible>(route(endpoint, &req, &status, &metrics)) }
        });
        if let Err(err) = http1::Builder::new()
            .serve_connection(TokioIo::new(io), service)
            .await
        {
            debug!(error = %err, "HTTP connection ended with an error");
        }
    });
}

fn route(
    endpoint: Endpoint,
    req: &Request<Incoming>,
    status: &SharedStatus,
    metrics: &Metrics,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        );
    }
    match (endpoint, req.uri().path()) {
        (Endpoint::Probes, "/healthz") => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        (Endpoint::Probes, "/readyz") => {
            let current = status.get();
            if current.ready() {
                reply(
                    StatusCode::OK,
                    "text/plain",
                    format!("ready: {}\n", current.coverage_line()),
                )
            } else if !current.synced {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready: Node list not read yet\n".into(),
                )
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready: the last reconcile failed\n".into(),
                )
            }
        }
        (Endpoint::Metrics, "/metrics") => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(&status.get()),
        ),
        (Endpoint::Status, "/status") => match serde_json::to_string_pretty(&status.get()) {
            Ok(json) => reply(StatusCode::OK, "application/json", json),
            Err(err) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("{err}\n"),
            ),
        },
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

fn reply(code: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = code;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    /// Serves `/status` of a fresh agent on `listener`.
    fn serve_fresh(listener: UnixListener) -> watch::Sender<bool> {
        let (stop, shutdown) = watch::channel(false);
        tokio::spawn(serve_status_socket(
            listener,
            SharedStatus::default(),
            Metrics::new(),
            shutdown,
        ));
        stop
    }

    /// `wireseal status`'s read of the socket in `dir`.
    async fn fetch(dir: &Path) -> Result<crate::status::AgentStatus> {
        let dir = dir.to_owned();
        tokio::task::spawn_blocking(move || crate::status_cmd::fetch(&dir))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn the_status_socket_is_0600_from_the_start_and_serves_only_status() {
        let tmp = tempfile::tempdir().unwrap();
        // A stale socket file of a crashed agent.
        drop(std::os::unix::net::UnixListener::bind(status_socket(tmp.path())).unwrap());
        // Even under a permissive umask.
        let old = umask(Mode::empty());
        let listener = bind_status_socket(tmp.path());
        umask(old);
        let listener = listener.unwrap();
        let mode = std::fs::metadata(status_socket(tmp.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        let _stop = serve_fresh(listener);
        assert!(!fetch(tmp.path()).await.unwrap().synced);
        // A second agent must not take over a live socket.
        let err = bind_status_socket(tmp.path()).unwrap_err();
        assert!(format!("{err:#}").contains("another process"), "{err:#}");
    }

    #[tokio::test]
    async fn a_taken_port_names_the_port_and_the_flag() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let err = bind_tcp(addr, "--metrics-addr", "WIRESEAL_METRICS_ADDR")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("port {} is already in use", addr.port())),
            "{err}"
        );
        assert!(
            err.contains("--metrics-addr") && err.contains("WIRESEAL_METRICS_ADDR"),
            "{err}"
        );
    }

    #[tokio::test]
    #[ignore = "needs root: connects as another user"]
    async fn the_status_socket_answers_only_root_or_our_user() {
        use nix::unistd::{Uid, seteuid};
        let tmp = tempfile::tempdir().unwrap();
        let listener = bind_status_socket(tmp.path()).unwrap();
        // Modes out of the way: only the credential check is left.
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(
            status_socket(tmp.path()),
            std::fs::Permissions::from_mode(0o666),
        )
        .unwrap();
        let _stop = serve_fresh(listener);
        let dir = tmp.path().to_owned();
        let as_nobody = tokio::task::spawn_blocking(move || {
            // nextest gives this test its own process: the euid switch touches nothing else.
            seteuid(Uid::from_raw(65534)).unwrap();
            let fetched = crate::status_cmd::fetch(&dir);
            seteuid(Uid::from_raw(0)).unwrap();
            fetched
        })
        .await
        .unwrap();
        assert!(as_nobody.is_err(), "nobody read the peer listing");
        fetch(tmp.path()).await.unwrap();
    }
}

//! The agent's local HTTP endpoint: `/healthz`, `/readyz`, `/metrics` and
//! `/status` (the JSON `wireseal status` reads).

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info};

use crate::metrics::Metrics;
use crate::status::SharedStatus;

/// Binds `addr` and returns the bound address and the serving future.
///
/// # Errors
/// When the address cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    status: SharedStatus,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(SocketAddr, impl Future<Output = ()>)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the status endpoint --status-addr {addr}"))?;
    let bound = listener
        .local_addr()
        .context("reading the status endpoint's address")?;
    info!(addr = %bound, "status endpoint listening (/healthz /readyz /metrics /status)");
    let serving = async move {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.changed() => return,
                accepted = listener.accept() => accepted,
            };
            let Ok((stream, _)) = accepted else { continue };
            let (status, metrics) = (status.clone(), metrics.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let (status, metrics) = (status.clone(), metrics.clone());
                    async move { Ok::<_, Infallible>(route(&req, &status, &metrics)) }
                });
                if let Err(err) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    debug!(error = %err, "status connection ended with an error");
                }
            });
        }
    };
    Ok((bound, serving))
}

fn route(
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
    match req.uri().path() {
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
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
        "/metrics" => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(status),
        ),
        "/status" => match serde_json::to_string_pretty(&status.get()) {
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

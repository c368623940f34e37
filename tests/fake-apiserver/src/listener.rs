//! Accept loops. The API listener can be closed and re-opened on the same
//! port at run time (fault injection: an apiserver outage); the optional
//! admin listener stays open so the outage can be ended.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::server::{Shared, handle};

/// Serves one connection until it ends, the outage `epoch` changes (the
/// connection is dropped, as a dead server's would be) or the server shuts down.
fn serve(stream: TcpStream, shared: Arc<Shared>, mut epoch: Option<watch::Receiver<u64>>) {
    let mut shutdown = shared.shutdown.clone();
    tokio::spawn(async move {
        let svc_shared = shared.clone();
        let conn = http1::Builder::new().serve_connection(
            TokioIo::new(stream),
            service_fn(move |req| handle(req, svc_shared.clone())),
        );
        let killed = async {
            match epoch.as_mut() {
                Some(e) => {
                    let _ = e.changed().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            r = conn => if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with an error");
            },
            () = killed => tracing::debug!("connection dropped by an outage"),
            _ = shutdown.changed() => {}
        }
    });
}

/// Re-binds the API port after an outage; retried briefly because the old
/// socket may take a moment to go.
async fn rebind(addr: SocketAddr) -> Option<TcpListener> {
    for _ in 0..50 {
        match TcpListener::bind(addr).await {
            Ok(l) => return Some(l),
            Err(e) => {
                tracing::warn!(%addr, error = %e, "cannot re-bind yet");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    None
}

pub(crate) async fn api_loop(listener: TcpListener, addr: SocketAddr, shared: Arc<Shared>) {
    let mut listener = Some(listener);
    let mut accepting = shared.faults.accepting_rx();
    let mut shutdown = shared.shutdown.clone();
    let (epoch_tx, _) = watch::channel(0u64);
    loop {
        match &listener {
            Some(l) => tokio::select! {
                _ = shutdown.changed() => return,
                r = accepting.changed() => {
                    if r.is_err() {
                        return;
                    }
                    if !*accepting.borrow_and_update() {
                        listener = None;
                        epoch_tx.send_modify(|e| *e += 1);
                        shared.faults.set_listening(false);
                        tracing::info!(%addr, "outage: listener closed, connections dropped");
                    }
                }
                acc = l.accept() => match acc {
                    Ok((stream, _)) => serve(stream, shared.clone(), Some(epoch_tx.subscribe())),
                    Err(e) => {
                        // E.g. EMFILE: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            },
            None => tokio::select! {
                _ = shutdown.changed() => return,
                r = accepting.changed() => {
                    if r.is_err() {
                        return;
                    }
                    if *accepting.borrow_and_update() {
                        listener = rebind(addr).await;
                        match listener {
                            Some(_) => {
                                shared.faults.set_listening(true);
                                tracing::info!(%addr, "outage over: listening again");
                            }
                            None => tracing::error!(%addr, "cannot listen again after the outage"),
                        }
                    }
                }
            },
        }
    }
}

pub(crate) async fn admin_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            acc = listener.accept() => match acc {
                Ok((stream, _)) => serve(stream, shared.clone(), None),
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

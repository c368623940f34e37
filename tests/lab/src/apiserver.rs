//! The fake apiserver, run inside the underlay namespace so that agents in the
//! node namespaces reach it over the underlay, as they would reach a real one.

use std::thread::JoinHandle;

use anyhow::{Context, Result, anyhow};
use tokio::sync::oneshot;
use wireseal_fake_apiserver::{Config, FakeApiServer, Handle};

use crate::netns::Netns;

/// A running fake apiserver; stopped on drop.
#[derive(Debug)]
pub struct ApiServer {
    handle: Option<Handle>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Starts the server with `config` (its listen address included) inside `ns`.
    ///
    /// # Errors
    /// When the namespace cannot be entered, the address bound, or a tokens or
    /// policy file is bad.
    pub fn start_in(ns: &Netns, config: Config) -> Result<Self> {
        let addr = config.listen;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let name = ns.name().to_owned();
        let enter = ns.enter_current_thread_fn();
        let thread = std::thread::Builder::new()
            .name(format!("apiserver-{name}"))
            .spawn(move || {
                // Threads inherit the namespace of the thread that creates them,
                // so the runtime's workers and every socket live in the underlay.
                if let Err(err) = enter() {
                    let _ = ready_tx.send(Err(anyhow!(err)));
                    return;
                }
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        let _ = ready_tx.send(Err(anyhow!(err)));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let started = FakeApiServer::start_with(config)
                        .await
                        .map_err(|e| anyhow!(e));
                    let ok = started.is_ok();
                    let _ = ready_tx.send(started);
                    if ok {
                        let _ = stop_rx.await;
                    }
                });
            })
            .context("starting the apiserver thread")?;
        let handle = ready_rx
            .recv()
            .context("the apiserver thread ended before starting")?
            .with_context(|| format!("starting the fake apiserver on {addr} in {name}"))?;
        Ok(Self {
            handle: Some(handle),
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The server's handle: state, faults, access log.
    ///
    /// # Panics
    /// Never: the handle is only taken on drop.
    #[must_use]
    #[allow(
        clippy::expect_used,
        reason = "the handle exists from start until drop"
    )]
    pub fn handle(&self) -> &Handle {
        self.handle
            .as_ref()
            .expect("apiserver handle present until drop")
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        drop(self.handle.take());
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

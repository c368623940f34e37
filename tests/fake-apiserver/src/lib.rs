//! A stateful fake Kubernetes API server for wireseal's tests and local demo.
//!
//! Plain HTTP on loopback; Nodes (with the `status` subresource), Events
//! (core/v1 and events.k8s.io/v1) and an always-empty Pod list, with real
//! resourceVersion semantics, watches (bookmarks, timeouts, in-stream 410),
//! the four patch types, label/field selectors, discovery and the Table view
//! kubectl needs, run-time fault injection, and optionally bearer-token
//! authentication ([`auth`]) and ValidatingAdmissionPolicies ([`admission`]).
//! See README.md for what a fake cannot prove.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let server = wireseal_fake_apiserver::FakeApiServer::start_local().await?;
//! server.write_kubeconfig(std::path::Path::new("/tmp/kubeconfig"))?;
//! server.faults().fail_next(2, 500);
//! # Ok(()) }
//! ```

mod admin;
pub mod admission;
pub mod auth;
pub mod discovery;
mod error;
pub mod events;
mod faults;
mod listener;
pub mod patch;
mod resources;
pub mod selectors;
mod server;
mod store;
mod view;
mod watch;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch as signal;
use tokio::task::JoinHandle;

pub use admission::Policies;
pub use auth::{Tokens, UserInfo};
pub use error::{ApiError, ServerError};
pub use faults::{FailRule, Faults};
pub use server::AccessLogEntry;
pub use store::{Change, ChangeType, Kind, State};

use server::{AccessLog, Shared};

/// How to run the server.
#[derive(Debug, Clone)]
pub struct Config {
    /// The API listener (port 0 picks a free port).
    pub listen: SocketAddr,
    /// An optional second listener serving the same API and `/__fake/`
    /// endpoints that an outage (`refuse`) does not close, so a script can
    /// end the outage it started.
    pub admin_listen: Option<SocketAddr>,
    /// How many changes the watch history keeps (older versions get 410).
    pub history_limit: usize,
    /// How often watch streams that allow bookmarks get one.
    pub bookmark_interval: Duration,
    /// A tokens file ([`auth`]): every API request must carry one of its
    /// bearer tokens (401 otherwise), and admission sees that token's user.
    /// None: no authentication, every request is `system:anonymous`.
    pub tokens_file: Option<PathBuf>,
    /// Files of ValidatingAdmissionPolicies and bindings ([`admission`]),
    /// enforced on every create, update, patch and delete. Empty: everything
    /// is admitted.
    pub admission_policies: Vec<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_listen: None,
            history_limit: 1000,
            bookmark_interval: Duration::from_secs(1),
            tokens_file: None,
            admission_policies: Vec::new(),
        }
    }
}

/// The entry point.
#[derive(Debug)]
pub struct FakeApiServer;

impl FakeApiServer {
    /// Starts on `addr` with default settings.
    ///
    /// # Errors
    /// [`ServerError::Bind`] if the address cannot be bound.
    pub async fn start(addr: SocketAddr) -> Result<Handle, ServerError> {
        Self::start_with(Config {
            listen: addr,
            ..Config::default()
        })
        .await
    }

    /// Starts on `127.0.0.1:0` (what tests want).
    ///
    /// # Errors
    /// [`ServerError::Bind`] if no loopback port can be bound.
    pub async fn start_local() -> Result<Handle, ServerError> {
        Self::start_with(Config::default()).await
    }

    /// Starts with a full configuration. Must be called within a Tokio runtime;
    /// the server runs on that runtime until the [`Handle`] is dropped.
    ///
    /// # Errors
    /// [`ServerError::Bind`] if a listener cannot be bound,
    /// [`ServerError::ConfigFile`] for a bad tokens or policy file.
    pub async fn start_with(config: Config) -> Result<Handle, ServerError> {
        let tokens = config
            .tokens_file
            .as_deref()
            .map(Tokens::load)
            .transpose()?;
        let policies = Policies::load(&config.admission_policies)?;
        let state = State::new(config.history_limit);
        let faults = Faults::new(state.clone());
        let log = AccessLog::default();
        let (shutdown_tx, shutdown_rx) = signal::channel(false);
        let shared = Arc::new(Shared {
            state: state.clone(),
            faults: faults.clone(),
            log: log.clone(),
            bookmark_interval: config.bookmark_interval,
            shutdown: shutdown_rx,
            tokens,
            policies,
        });
        let api = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServerError::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = api.local_addr().map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
        let mut tasks = vec![tokio::spawn(listener::api_loop(api, addr, shared.clone()))];
        let mut admin_addr = None;
        if let Some(a) = config.admin_listen {
            let l = tokio::net::TcpListener::bind(a)
                .await
                .map_err(|source| ServerError::Bind { addr: a, source })?;
            admin_addr = Some(
                l.local_addr()
                    .map_err(|source| ServerError::Bind { addr: a, source })?,
            );
            tasks.push(tokio::spawn(listener::admin_loop(l, shared.clone())));
        }
        tracing::info!(%addr, admin = ?admin_addr, "fake apiserver listening");
        Ok(Handle {
            addr,
            admin_addr,
            state,
            faults,
            log,
            _shutdown: shutdown_tx,
            tasks,
        })
    }
}

/// A running server; dropping it stops the server and ends every connection.
#[derive(Debug)]
pub struct Handle {
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    state: State,
    faults: Faults,
    log: AccessLog,
    /// Dropping the sender is the shutdown signal for every task.
    _shutdown: signal::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Handle {
    /// The bound API address.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound admin address, if one was asked for.
    #[must_use]
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// `http://127.0.0.1:PORT`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig pointing at this server (empty user, no TLS).
    #[must_use]
    pub fn kubeconfig(&self) -> String {
        kubeconfig_for(&self.url())
    }

    /// A kubeconfig pointing at this server whose user sends `token` (a
    /// token of the tokens file) as its bearer token.
    #[must_use]
    pub fn kubeconfig_with_token(&self, token: &str) -> String {
        kubeconfig_for_user(&self.url(), Some(token))
    }

    /// Writes [`Handle::kubeconfig`] to `path`.
    ///
    /// # Errors
    /// [`ServerError::Write`] if the file cannot be written.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<(), ServerError> {
        write_file(path, &self.kubeconfig())
    }

    /// Writes [`Handle::kubeconfig_with_token`] to `path`.
    ///
    /// # Errors
    /// [`ServerError::Write`] if the file cannot be written.
    pub fn write_kubeconfig_with_token(&self, path: &Path, token: &str) -> Result<(), ServerError> {
        write_file(path, &self.kubeconfig_with_token(token))
    }

    /// The object store, to seed, inspect and change objects directly.
    #[must_use]
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Fault injection.
    #[must_use]
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Every request answered so far, oldest first (admin requests included).
    #[must_use]
    pub fn access_log(&self) -> Vec<AccessLogEntry> {
        self.log.entries()
    }

    /// Forgets the access log.
    pub fn clear_access_log(&self) {
        self.log.clear();
    }

    /// Loads Nodes from YAML or JSON text (see [`parse_nodes`]).
    ///
    /// # Errors
    /// [`ServerError::NodesFile`] for bad text, [`ServerError::Seed`] for a rejected Node.
    pub fn load_nodes(&self, text: &str, origin: &Path) -> Result<usize, ServerError> {
        let nodes = parse_nodes(text).map_err(|message| ServerError::NodesFile {
            path: origin.to_owned(),
            message,
        })?;
        let n = nodes.len();
        for node in nodes {
            self.state.create(Kind::Node, node)?;
        }
        Ok(n)
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn write_file(path: &Path, text: &str) -> Result<(), ServerError> {
    std::fs::write(path, text).map_err(|source| ServerError::Write {
        path: path.to_owned(),
        source,
    })
}

/// A kubeconfig for a plain-HTTP server URL.
#[must_use]
pub fn kubeconfig_for(url: &str) -> String {
    kubeconfig_for_user(url, None)
}

/// A kubeconfig for a plain-HTTP server URL whose user sends `token`, if any.
#[must_use]
pub fn kubeconfig_for_user(url: &str, token: Option<&str>) -> String {
    // JSON strings are YAML strings: any token stays one scalar.
    let user = token.map_or_else(
        || "{}".to_owned(),
        |t| format!("{{token: {}}}", Value::String(t.to_owned())),
    );
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: {url}
contexts:
- name: fake
  context:
    cluster: fake
    user: fake
current-context: fake
users:
- name: fake
  user: {user}
"
    )
}

/// Parses Nodes from YAML or JSON: a single Node, a `List`/`NodeList`, or a
/// multi-document YAML stream of either.
///
/// # Errors
/// A message naming the problem (bad syntax, an object that is not a Node).
pub fn parse_nodes(text: &str) -> Result<Vec<Value>, String> {
    use serde::Deserialize;
    let mut nodes = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let v = Value::deserialize(doc).map_err(|e| format!("document {}: {e}", i + 1))?;
        if v.is_null() {
            continue;
        }
        let items = match v.get("items") {
            Some(Value::Array(items)) => items.clone(),
            Some(_) => return Err(format!("document {}: items is not a list", i + 1)),
            None => vec![v],
        };
        for item in items {
            let kind = item.get("kind").and_then(Value::as_str).unwrap_or("Node");
            if kind != "Node" {
                return Err(format!(
                    "document {}: expected kind Node, got {kind}",
                    i + 1
                ));
            }
            if item
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                return Err(format!("document {}: a Node without metadata.name", i + 1));
            }
            nodes.push(item);
        }
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_file_forms() {
        let single = "kind: Node\napiVersion: v1\nmetadata:\n  name: a\n";
        assert_eq!(parse_nodes(single).unwrap().len(), 1);
        let multi = "metadata: {name: a}\n---\nmetadata: {name: b}\n---\n";
        assert_eq!(parse_nodes(multi).unwrap().len(), 2);
        let list = r#"{"kind":"NodeList","apiVersion":"v1","items":[{"metadata":{"name":"a"}},{"metadata":{"name":"b"}}]}"#;
        assert_eq!(parse_nodes(list).unwrap().len(), 2);
        assert!(parse_nodes("kind: Pod\nmetadata: {name: p}\n").is_err());
        assert!(parse_nodes("metadata: {}\n").is_err());
        assert!(parse_nodes("{nope").is_err());
    }
}

//! Request handling: access log, faults, the query string and routing.
//! The verbs on resources are in `resources.rs`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::Value;

use crate::admission::Policies;
use crate::auth::{Tokens, UserInfo};
use crate::discovery;
use crate::error::ApiError;
use crate::faults::Faults;
use crate::store::{Kind, State};

/// The response body type: a whole JSON document or a watch stream.
pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

const ACCESS_LOG_CAP: usize = 100_000;

/// One answered request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogEntry {
    /// HTTP method, e.g. `PATCH`.
    pub method: String,
    /// Path and query string as sent, e.g. `/api/v1/nodes?&limit=500`.
    pub path: String,
    /// HTTP status code of the answer (200 for a watch stream).
    pub status: u16,
}

/// The requests answered so far (the most recent 100 000).
#[derive(Debug, Clone, Default)]
pub(crate) struct AccessLog(Arc<Mutex<VecDeque<AccessLogEntry>>>);

impl AccessLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<AccessLogEntry>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
    fn record(&self, e: AccessLogEntry) {
        let mut g = self.lock();
        if g.len() >= ACCESS_LOG_CAP {
            g.pop_front();
        }
        g.push_back(e);
    }
    pub(crate) fn entries(&self) -> Vec<AccessLogEntry> {
        self.lock().iter().cloned().collect()
    }
    pub(crate) fn clear(&self) {
        self.lock().clear();
    }
}

/// Everything a request handler needs.
pub(crate) struct Shared {
    pub(crate) state: State,
    pub(crate) faults: Faults,
    pub(crate) log: AccessLog,
    pub(crate) bookmark_interval: Duration,
    pub(crate) shutdown: tokio::sync::watch::Receiver<bool>,
    /// Authentication, when a tokens file is given.
    pub(crate) tokens: Option<Tokens>,
    /// Admission on every write (empty: none).
    pub(crate) policies: Policies,
}

pub(crate) fn json_response(code: u16, body: &Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())).boxed_unsync());
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

pub(crate) fn error_response(e: &ApiError) -> Response<Body> {
    let mut resp = json_response(e.code(), &e.to_status());
    if e.code() == 429 {
        resp.headers_mut()
            .insert(RETRY_AFTER, http::HeaderValue::from_static("1"));
    }
    resp
}

/// The hyper service function.
pub(crate) async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    let path = req.uri().path().to_owned();
    let resp = if path == "/__fake" || path.starts_with("/__fake/") {
        crate::admin::handle(&req, &shared)
    } else {
        shared.faults.wait_unpaused().await;
        match shared.faults.take_failure(method.as_str(), &path) {
            Some(e) => error_response(&e),
            None => api(req, &shared)
                .await
                .unwrap_or_else(|e| error_response(&e)),
        }
    };
    let status = resp.status().as_u16();
    tracing::debug!(method = %method, path = %path_and_query, status, "request");
    shared.log.record(AccessLogEntry {
        method: method.to_string(),
        path: path_and_query,
        status,
    });
    Ok(resp)
}

/// A parsed query string. Tolerates kube-rs's `?&watch=true…` (an empty pair).
#[derive(Debug, Default)]
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    pub(crate) fn parse(q: Option<&str>) -> Self {
        Self(
            q.unwrap_or_default()
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect(),
        )
    }
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    pub(crate) fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }
}

/// Form-style decoding: `+` is a space (Go's `url.Values.Encode`), `%XX` a byte.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// Which API group a resource path is under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Group {
    Core,
    EventsV1,
}

/// The resource a request is about.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) kind: Kind,
    pub(crate) group: Group,
    pub(crate) namespace: Option<String>,
    pub(crate) name: Option<String>,
    /// The `status` subresource of a Node.
    pub(crate) status: bool,
}

fn parse_target(group: Group, rest: &[&str]) -> Result<Target, ApiError> {
    let (namespace, rest) = match rest {
        ["namespaces", ns, tail @ ..] if !tail.is_empty() => (Some((*ns).to_owned()), tail),
        _ => (None, rest),
    };
    let (resource, name, sub) = match rest {
        [r] => (*r, None, None),
        [r, n] => (*r, Some((*n).to_owned()), None),
        [r, n, s] => (*r, Some((*n).to_owned()), Some(*s)),
        _ => return Err(ApiError::UnknownPath),
    };
    let kind = match (group, resource) {
        (Group::Core, "nodes") => Kind::Node,
        (Group::Core | Group::EventsV1, "events") => Kind::Event,
        (Group::Core, "pods") => Kind::Pod,
        _ => return Err(ApiError::UnknownPath),
    };
    let scope_ok = if kind.namespaced() {
        namespace.is_some() || name.is_none()
    } else {
        namespace.is_none()
    };
    if !scope_ok {
        return Err(ApiError::UnknownPath);
    }
    let status = match sub {
        None => false,
        Some("status") if kind == Kind::Node => true,
        Some(_) => return Err(ApiError::UnknownPath),
    };
    Ok(Target {
        kind,
        group,
        namespace,
        name,
        status,
    })
}

fn get_only(method: &Method, body: Value) -> Result<Response<Body>, ApiError> {
    if method == Method::GET {
        Ok(json_response(200, &body))
    } else {
        Err(ApiError::MethodNotAllowed)
    }
}

async fn api(req: Request<Incoming>, shared: &Shared) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().to_owned();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let method = req.method().clone();
    // Authentication comes first on a real server too, discovery included.
    let user = match &shared.tokens {
        Some(tokens) => tokens.authenticate(
            req.headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
        )?,
        None => UserInfo::anonymous(),
    };
    match segs.as_slice() {
        ["version"] => get_only(&method, discovery::version()),
        ["api"] => get_only(&method, discovery::api_versions()),
        ["api", "v1"] => get_only(&method, discovery::core_v1_resources()),
        ["apis"] => get_only(&method, discovery::api_group_list()),
        ["apis", "events.k8s.io"] => get_only(&method, discovery::events_api_group()),
        ["apis", "events.k8s.io", "v1"] => get_only(&method, discovery::events_v1_resources()),
        ["api", "v1", rest @ ..] => {
            let target = parse_target(Group::Core, rest)?;
            crate::resources::handle(req, shared, target, &user).await
        }
        ["apis", "events.k8s.io", "v1", rest @ ..] => {
            let target = parse_target(Group::EventsV1, rest)?;
            crate::resources::handle(req, shared, target, &user).await
        }
        _ => Err(ApiError::UnknownPath),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_tolerates_kube_rs_shape() {
        let q = Query::parse(Some(
            "&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion=102",
        ));
        assert!(q.flag("watch"));
        assert_eq!(q.get("timeoutSeconds"), Some("290"));
        assert_eq!(q.get("resourceVersion"), Some("102"));
        let q = Query::parse(Some("labelSelector=role%3Dedge%2Czone+in+%28a%29&x"));
        assert_eq!(q.get("labelSelector"), Some("role=edge,zone in (a)"));
        assert_eq!(q.get("x"), Some(""));
        assert_eq!(Query::parse(Some("a=%zz%4")).get("a"), Some("%zz%4"));
    }

    #[test]
    fn targets() {
        let t = parse_target(Group::Core, &["nodes", "a", "status"]).unwrap();
        assert!(t.status && t.kind == Kind::Node);
        assert!(parse_target(Group::Core, &["namespaces", "x", "nodes"]).is_err());
        assert!(parse_target(Group::Core, &["events", "a"]).is_err());
        assert!(parse_target(Group::Core, &["events"]).is_ok());
        assert!(parse_target(Group::Core, &["namespaces", "default", "events", "e"]).is_ok());
        assert!(parse_target(Group::EventsV1, &["nodes"]).is_err());
        assert!(parse_target(Group::Core, &["nodes", "a", "proxy"]).is_err());
        assert!(parse_target(Group::Core, &["namespaces", "default"]).is_err());
        assert!(parse_target(Group::Core, &["leases"]).is_err());
    }
}

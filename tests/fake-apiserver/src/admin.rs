//! The `/__fake/` admin endpoints: fault injection and inspection for other
//! processes (curl, shell scripts, the e2e harness). They are never subject
//! to faults themselves. See the crate README for the list.

use std::time::Duration;

use http::{Method, Request, Response};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::faults::FailRule;
use crate::server::{Body, Query, Shared, error_response, json_response};

/// How long `refuse` waits before closing the listener, so that its own
/// answer still reaches the caller over the connection about to be dropped.
const REFUSE_DELAY: Duration = Duration::from_millis(100);

pub(crate) fn handle(req: &Request<Incoming>, shared: &Shared) -> Response<Body> {
    match admin(req, shared) {
        Ok(v) => json_response(200, &v),
        Err(e) => error_response(&e),
    }
}

fn num<T: std::str::FromStr>(q: &Query, key: &str) -> Result<Option<T>, ApiError> {
    q.get(key)
        .map(|v| {
            v.parse::<T>()
                .map_err(|_| ApiError::BadRequest(format!("bad value for {key}: {v:?}")))
        })
        .transpose()
}

fn duration(q: &Query) -> Result<Option<Duration>, ApiError> {
    if let Some(ms) = num::<u64>(q, "millis")? {
        return Ok(Some(Duration::from_millis(ms)));
    }
    Ok(num::<f64>(q, "seconds")?
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64))
}

fn status(shared: &Shared) -> Value {
    json!({
        "resourceVersion": shared.state.resource_version().to_string(),
        "compactionFloor": shared.state.compaction_floor().to_string(),
        "openWatches": shared.faults.open_watches(),
        "listening": shared.faults.is_listening(),
        "pendingFailures": shared.faults.pending_failures().iter().map(|r| json!({
            "code": r.code, "remaining": r.remaining, "method": r.method, "path": r.path_prefix
        })).collect::<Vec<_>>(),
    })
}

fn admin(req: &Request<Incoming>, shared: &Shared) -> Result<Value, ApiError> {
    let q = Query::parse(req.uri().query());
    let op = req
        .uri()
        .path()
        .trim_start_matches("/__fake")
        .trim_matches('/');
    let faults = &shared.faults;
    let method = req.method();
    match (method, op) {
        (&Method::GET, "status") => return Ok(status(shared)),
        (&Method::GET, "log") => {
            let entries = shared.log.entries();
            return Ok(json!(
                entries
                    .iter()
                    .map(|e| json!({"method": e.method, "path": e.path, "status": e.status}))
                    .collect::<Vec<_>>()
            ));
        }
        (&Method::DELETE, "log") => shared.log.clear(),
        (&Method::POST, "drop-watches") => faults.drop_watches(),
        (&Method::POST, "fail") => {
            let code = num::<u16>(&q, "code")?.unwrap_or(500);
            if !(400..=599).contains(&code) {
                return Err(ApiError::BadRequest(format!(
                    "code must be 400..=599, not {code}"
                )));
            }
            faults.fail_next_matching(FailRule {
                code,
                remaining: num::<u32>(&q, "count")?.unwrap_or(1),
                method: q
                    .get("method")
                    .filter(|m| !m.is_empty())
                    .map(str::to_ascii_uppercase),
                path_prefix: q.get("path").filter(|p| !p.is_empty()).map(str::to_owned),
            });
        }
        (&Method::POST, "expire-next-watch") => {
            faults.expire_next_watches(num::<u32>(&q, "count")?.unwrap_or(1))
        }
        (&Method::POST, "expire-watches") => faults.expire_watches(),
        (&Method::POST, "compact") => shared.state.compact(),
        (&Method::POST, "pause") => {
            let d = duration(&q)?
                .ok_or_else(|| ApiError::BadRequest("pause needs seconds= or millis=".into()))?;
            faults.pause(d);
        }
        (&Method::POST, "unpause") => faults.unpause(),
        (&Method::POST, "refuse") => {
            let d = duration(&q)?;
            let faults = faults.clone();
            tokio::spawn(async move {
                tokio::time::sleep(REFUSE_DELAY).await;
                faults.refuse_connections();
                if let Some(d) = d {
                    tokio::time::sleep(d).await;
                    faults.accept_connections();
                }
            });
        }
        (&Method::POST, "accept") => faults.accept_connections(),
        (&Method::POST, "reset") => faults.reset(),
        (
            _,
            "status" | "log" | "drop-watches" | "fail" | "expire-next-watch" | "expire-watches"
            | "compact" | "pause" | "unpause" | "refuse" | "accept" | "reset",
        ) => return Err(ApiError::MethodNotAllowed),
        _ => return Err(ApiError::UnknownPath),
    }
    Ok(json!({"ok": true, "status": status(shared)}))
}

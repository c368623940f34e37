//! The verbs on resources (list, watch, get, create, update, patch, delete)
//! and what each endpoint may change.

use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::admission::{Operation, Request as AdmissionRequest};
use crate::auth::UserInfo;
use crate::discovery;
use crate::error::ApiError;
use crate::events::{CORE_EVENT_FIELDS, v1_field_to_core, v1_to_core};
use crate::patch::{PatchKind, apply_patch};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::server::{Body, Group, Query, Shared, Target, json_response};
use crate::store::Kind;
use crate::view::{Filter, View};
use crate::watch::{self, WatchRequest};

/// Largest request body accepted (the real apiserver's limit is 3 MiB).
const MAX_BODY: usize = 3 * 1024 * 1024;
/// Server-side watch timeout when the client gives none (the real server
/// picks 30–60 minutes).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

fn header(req: &Request<Incoming>, name: http::header::HeaderName) -> &str {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::TooLarge),
        Err(e) => Err(ApiError::BadRequest(format!(
            "cannot read request body: {e}"
        ))),
    }
}

/// Decodes a POST/PUT body (JSON, or YAML if the client says so).
fn decode_object(content_type: &str, body: &[u8]) -> Result<Value, ApiError> {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let v: Value = match media.as_str() {
        "" | "application/json" | "*/*" => serde_json::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("error decoding JSON body: {e}")))?,
        "application/yaml" | "application/x-yaml" | "text/yaml" => serde_yaml::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("error decoding YAML body: {e}")))?,
        _ => {
            return Err(ApiError::UnsupportedMediaType(
                "application/json, application/yaml".into(),
            ));
        }
    };
    if v.is_object() {
        Ok(v)
    } else {
        Err(ApiError::BadRequest(
            "the request body must be a JSON object".into(),
        ))
    }
}

fn view_for(target: &Target, accept: &str) -> View {
    match (target.kind, target.group) {
        (Kind::Node, _) if discovery::wants_table(accept) => View::NodeTable,
        (Kind::Event, Group::EventsV1) => View::EventsV1,
        (k, _) => View::Plain(k),
    }
}

/// A request body, in its API's form, turned into the stored form.
fn to_stored(target: &Target, obj: Value) -> Result<Value, ApiError> {
    let expected_api = if target.group == Group::EventsV1 {
        "events.k8s.io/v1"
    } else {
        "v1"
    };
    let kind_ok = obj
        .get("kind")
        .and_then(Value::as_str)
        .is_none_or(|k| k == target.kind.kind_name());
    let api_ok = obj
        .get("apiVersion")
        .and_then(Value::as_str)
        .is_none_or(|a| a == expected_api);
    if !kind_ok || !api_ok {
        return Err(ApiError::BadRequest(format!(
            "the body is not a {expected_api} {} (kind {:?}, apiVersion {:?})",
            target.kind.kind_name(),
            obj.get("kind"),
            obj.get("apiVersion")
        )));
    }
    Ok(if target.group == Group::EventsV1 {
        v1_to_core(&obj)
    } else {
        obj
    })
}

/// What a write through this endpoint may change, as the real strategies
/// decide: a Node's status subresource resets `spec` (annotations and
/// status stick), the main resource resets `status`.
fn apply_strategy(target: &Target, current: &Value, new: &mut Value) {
    if target.kind != Kind::Node {
        return;
    }
    let keep = if target.status { "spec" } else { "status" };
    match current.get(keep) {
        Some(v) => new[keep] = v.clone(),
        None => {
            if let Some(m) = new.as_object_mut() {
                m.remove(keep);
            }
        }
    }
}

/// Runs the ValidatingAdmissionPolicies on one write: `new` as it would be
/// stored (after the patch and the strategy), `old` as it is stored (both
/// canonical; admission sees them in the form of the API the request used).
fn admit(
    shared: &Shared,
    target: &Target,
    user: &UserInfo,
    view: View,
    new: Option<&Value>,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    if shared.policies.is_empty() {
        return Ok(());
    }
    let operation = match (new, old) {
        (Some(_), Some(_)) => Operation::Update,
        (Some(_), None) => Operation::Create,
        (None, _) => Operation::Delete,
    };
    let object = new.map(|o| view.render(o));
    let old = old.map(|o| view.render(o));
    let (object, old) = (object.as_ref(), old.as_ref());
    let name = object
        .or(old)
        .and_then(|o| o.pointer("/metadata/name"))
        .and_then(Value::as_str)
        .or(target.name.as_deref())
        .unwrap_or_default();
    let request = AdmissionRequest {
        operation,
        group: match target.group {
            Group::Core => "",
            Group::EventsV1 => "events.k8s.io",
        },
        version: "v1",
        kind: target.kind.kind_name(),
        resource: target.kind.plural(),
        subresource: if target.status { "status" } else { "" },
        name,
        namespace: target.namespace.as_deref().unwrap_or_default(),
        user,
        object,
        old_object: old,
    };
    shared.policies.validate(&request).map_err(|denial| {
        tracing::info!(
            policy = %denial.policy,
            user = %user.username,
            name,
            message = %denial.message,
            "admission denied"
        );
        denial.to_api_error(&request)
    })
}

fn build_filter(target: &Target, q: &Query) -> Result<Filter, ApiError> {
    let labels = LabelSelector::parse(q.get("labelSelector").unwrap_or_default())?;
    let mut fields = FieldSelector::parse(q.get("fieldSelector").unwrap_or_default())?;
    match (target.kind, target.group) {
        (Kind::Node, _) => {
            fields.check_fields(&["metadata.name", "metadata.namespace", "spec.unschedulable"])?
        }
        (Kind::Event, Group::Core) => fields.check_fields(CORE_EVENT_FIELDS)?,
        (Kind::Event, Group::EventsV1) => {
            for r in &mut fields.reqs {
                r.field = v1_field_to_core(&r.field)?;
            }
        }
        // Pods are always empty; any selector selects nothing anyway.
        (Kind::Pod, _) => {}
    }
    if target.kind == Kind::Event {
        // The `source` field label means the reporting component.
        for r in &mut fields.reqs {
            if r.field == "source" {
                r.field = "source.component".into();
            }
        }
    }
    Ok(Filter {
        kind: target.kind,
        namespace: target.namespace.clone(),
        labels,
        fields,
    })
}

fn parse_rv(q: &Query) -> Result<Option<u64>, ApiError> {
    match q.get("resourceVersion") {
        None | Some("" | "0") => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| ApiError::BadRequest(format!("invalid resource version {v:?}"))),
    }
}

pub(crate) async fn handle(
    req: Request<Incoming>,
    shared: &Shared,
    target: Target,
    user: &UserInfo,
) -> Result<Response<Body>, ApiError> {
    let q = Query::parse(req.uri().query());
    let view = view_for(&target, header(&req, ACCEPT));
    // Writes always answer with the object, never a Table.
    let write_view = if view == View::NodeTable {
        View::Plain(Kind::Node)
    } else {
        view
    };
    let ns = target.namespace.clone().unwrap_or_default();
    let method = req.method().clone();
    let read_only = target.kind == Kind::Pod;
    // Better an honest refusal than a "dry run" that persists.
    if method != Method::GET && q.get("dryRun").is_some_and(|d| !d.is_empty()) {
        return Err(ApiError::BadRequest(
            "dryRun is not supported by the fake apiserver".into(),
        ));
    }
    match (&method, target.name.clone()) {
        (&Method::GET, None) => {
            let filter = build_filter(&target, &q)?;
            if q.flag("watch") {
                let timeout = match q.get("timeoutSeconds") {
                    None | Some("") => DEFAULT_WATCH_TIMEOUT,
                    Some(t) => Duration::from_secs(t.parse().map_err(|_| {
                        ApiError::BadRequest(format!("invalid timeoutSeconds {t:?}"))
                    })?),
                };
                let wr = WatchRequest {
                    filter,
                    view,
                    from: parse_rv(&q)?,
                    timeout,
                    bookmarks: q.flag("allowWatchBookmarks"),
                    bookmark_interval: shared.bookmark_interval,
                };
                let body = watch::start(wr, &shared.state, &shared.faults, shared.shutdown.clone());
                let mut resp = Response::new(body);
                resp.headers_mut().insert(
                    CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                return Ok(resp);
            }
            parse_rv(&q)?;
            let (items, rv) = shared.state.list(target.kind, target.namespace.as_deref());
            let items: Vec<Value> = items.into_iter().filter(|o| filter.matches(o)).collect();
            Ok(json_response(200, &view.render_list(&items, rv)))
        }
        (&Method::GET, Some(name)) => {
            let obj =
                shared
                    .state
                    .get(target.kind, &ns, &name)
                    .ok_or_else(|| ApiError::NotFound {
                        resource: target.kind.plural().into(),
                        name: name.clone(),
                    })?;
            Ok(json_response(200, &view.render(&obj)))
        }
        (&Method::POST, None) if !read_only => {
            let content_type = header(&req, CONTENT_TYPE).to_owned();
            let body = read_body(req).await?;
            let mut obj = to_stored(&target, decode_object(&content_type, &body)?)?;
            if target.kind.namespaced() {
                let body_ns = obj
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if !body_ns.is_empty() && body_ns != ns {
                    return Err(ApiError::BadRequest(
                        "the namespace of the provided object does not match the namespace sent on the request".into(),
                    ));
                }
                if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.insert("namespace".into(), json!(ns));
                }
            }
            admit(shared, &target, user, write_view, Some(&obj), None)?;
            let created = shared.state.create(target.kind, obj)?;
            Ok(json_response(201, &write_view.render(&created)))
        }
        (&Method::PUT, Some(name)) if !read_only => {
            let content_type = header(&req, CONTENT_TYPE).to_owned();
            let body = read_body(req).await?;
            let new = to_stored(&target, decode_object(&content_type, &body)?)?;
            let updated = shared
                .state
                .update_with(target.kind, &ns, &name, |current| {
                    let mut new = new;
                    apply_strategy(&target, current, &mut new);
                    admit(shared, &target, user, write_view, Some(&new), Some(current))?;
                    Ok(new)
                })?;
            Ok(json_response(200, &write_view.render(&updated)))
        }
        (&Method::PATCH, Some(name)) if !read_only => {
            let kind = PatchKind::from_content_type(header(&req, CONTENT_TYPE))?;
            if kind == PatchKind::Apply && q.get("fieldManager").is_none_or(str::is_empty) {
                return Err(ApiError::Invalid(
                    "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"
                        .into(),
                ));
            }
            let body = read_body(req).await?;
            let result = shared
                .state
                .update_with(target.kind, &ns, &name, |current| {
                    let patched = apply_patch(kind, &write_view.render(current), &body)?;
                    let mut new = to_stored(&target, patched)?;
                    apply_strategy(&target, current, &mut new);
                    admit(shared, &target, user, write_view, Some(&new), Some(current))?;
                    Ok(new)
                });
            let updated = match result {
                // Server-side apply creates what does not exist yet.
                Err(ApiError::NotFound { .. }) if kind == PatchKind::Apply && !target.status => {
                    let mut obj = apply_patch(kind, &json!({"metadata": {"name": name}}), &body)?;
                    obj["metadata"]["name"] = json!(name);
                    if target.kind.namespaced() {
                        obj["metadata"]["namespace"] = json!(ns);
                    }
                    let obj = to_stored(&target, obj)?;
                    admit(shared, &target, user, write_view, Some(&obj), None)?;
                    let created = shared.state.create(target.kind, obj)?;
                    return Ok(json_response(201, &write_view.render(&created)));
                }
                other => other?,
            };
            Ok(json_response(200, &write_view.render(&updated)))
        }
        (&Method::DELETE, Some(name)) if !read_only && !target.status => {
            let body = read_body(req).await?;
            let opts: Value = if body.iter().all(u8::is_ascii_whitespace) {
                Value::Null
            } else {
                serde_json::from_slice(&body).map_err(|e| {
                    ApiError::BadRequest(format!("error decoding DeleteOptions: {e}"))
                })?
            };
            let pre = |f: &str| {
                opts.pointer(&format!("/preconditions/{f}"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            };
            let deleted = shared.state.delete_with(
                target.kind,
                &ns,
                &name,
                pre("uid").as_deref(),
                pre("resourceVersion").as_deref(),
                |current| admit(shared, &target, user, write_view, None, Some(current)),
            )?;
            Ok(json_response(200, &write_view.render(&deleted)))
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

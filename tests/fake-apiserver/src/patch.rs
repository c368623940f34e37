//! The PATCH content types.
//!
//! * `application/merge-patch+json`: RFC 7386.
//! * `application/strategic-merge-patch+json`: a merge patch, except for the
//!   Node lists that carry a merge key (`status.conditions` and
//!   `status.addresses`, by `type`, as the real Node schema says): their
//!   elements are merged one by one, so a patch of one condition leaves the
//!   others. Other lists are replaced whole, as their schema says; `$patch`
//!   directives are not modelled.
//! * `application/json-patch+json`: RFC 6902 (`add`, `remove`, `replace`, `move`,
//!   `copy`, `test`); a failing op (e.g. `remove` of a missing path) is 422, as
//!   the real server answers.
//! * `application/apply-patch+yaml` (server-side apply): the body (YAML or JSON)
//!   is merged like a merge patch; field ownership is not tracked.

use serde_json::{Map, Value};

use crate::error::ApiError;

/// Which kind of patch a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// RFC 7386.
    Merge,
    /// Strategic merge (RFC 7386 with the Node's keyed lists merged by key).
    Strategic,
    /// RFC 6902.
    Json,
    /// Server-side apply (approximated as RFC 7386, needs `fieldManager`).
    Apply,
}

/// The media types listed in a 415 answer.
pub const PATCH_MEDIA_TYPES: &str = "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml";

impl PatchKind {
    /// Picks the patch kind from a `Content-Type` header value.
    ///
    /// # Errors
    /// [`ApiError::UnsupportedMediaType`] (415) for anything else.
    pub fn from_content_type(content_type: &str) -> Result<Self, ApiError> {
        let media = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match media.as_str() {
            "application/merge-patch+json" => Ok(Self::Merge),
            "application/strategic-merge-patch+json" => Ok(Self::Strategic),
            "application/json-patch+json" => Ok(Self::Json),
            "application/apply-patch+yaml" => Ok(Self::Apply),
            _ => Err(ApiError::UnsupportedMediaType(PATCH_MEDIA_TYPES.to_owned())),
        }
    }
}

/// Applies `body` of kind `kind` to `target`, returning the patched object.
///
/// # Errors
/// 400 for an unparsable body, 422 for a JSON patch whose operations fail.
pub fn apply_patch(kind: PatchKind, target: &Value, body: &[u8]) -> Result<Value, ApiError> {
    match kind {
        PatchKind::Merge | PatchKind::Strategic => {
            let patch: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::BadRequest(format!("error decoding patch: {e}")))?;
            if !patch.is_object() {
                return Err(ApiError::BadRequest(
                    "a merge patch must be a JSON object".into(),
                ));
            }
            Ok(if kind == PatchKind::Strategic {
                strategic_merge(target, &patch, &mut Vec::new())
            } else {
                merge_patch(target, &patch)
            })
        }
        PatchKind::Apply => {
            // YAML is a superset of JSON, so one parser covers both bodies.
            let patch: Value = serde_yaml::from_slice(body)
                .map_err(|e| ApiError::BadRequest(format!("error decoding YAML: {e}")))?;
            if !patch.is_object() {
                return Err(ApiError::BadRequest(
                    "an apply patch must be an object".into(),
                ));
            }
            Ok(merge_patch(target, &patch))
        }
        PatchKind::Json => {
            let ops: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::BadRequest(format!("error decoding patch: {e}")))?;
            json_patch(target, &ops)
        }
    }
}

/// RFC 7386 JSON merge patch: objects merge recursively, `null` deletes,
/// anything else (arrays included) replaces.
#[must_use]
pub fn merge_patch(target: &Value, patch: &Value) -> Value {
    let Value::Object(patch_map) = patch else {
        return patch.clone();
    };
    let mut out = match target {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    for (k, v) in patch_map {
        if v.is_null() {
            out.remove(k);
        } else {
            let merged = merge_patch(out.get(k).unwrap_or(&Value::Null), v);
            out.insert(k.clone(), merged);
        }
    }
    Value::Object(out)
}

/// The Node lists merged by key in a strategic merge patch: (path, key).
const MERGE_KEYS: [(&[&str], &str); 2] = [
    (&["status", "conditions"], "type"),
    (&["status", "addresses"], "type"),
];

/// A strategic merge patch of a Node: RFC 7386, except that the lists of
/// [`MERGE_KEYS`] merge element by element on their key.
fn strategic_merge<'a>(target: &Value, patch: &'a Value, path: &mut Vec<&'a str>) -> Value {
    if let (Value::Array(have), Value::Array(want)) = (target, patch)
        && let Some((_, key)) = MERGE_KEYS.iter().find(|(at, _)| {
            at.len() == path.len() && at.iter().zip(path.iter()).all(|(a, b)| a == b)
        })
    {
        let mut out = have.clone();
        for element in want {
            match out
                .iter_mut()
                .find(|e| e.get(key).is_some() && e.get(key) == element.get(key))
            {
                Some(existing) => *existing = merge_patch(existing, element),
                None => out.push(element.clone()),
            }
        }
        return Value::Array(out);
    }
    let Value::Object(patch_map) = patch else {
        return patch.clone();
    };
    let mut out = match target {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    for (k, v) in patch_map {
        if v.is_null() {
            out.remove(k);
        } else {
            path.push(k);
            let merged = strategic_merge(out.get(k).unwrap_or(&Value::Null), v, path);
            path.pop();
            out.insert(k.clone(), merged);
        }
    }
    Value::Object(out)
}

fn invalid(msg: String) -> ApiError {
    ApiError::Invalid(msg)
}

/// Splits an RFC 6901 pointer into unescaped tokens.
fn tokens(path: &str) -> Result<Vec<String>, ApiError> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(invalid(format!(
            "invalid JSON pointer {path:?}: must start with '/'"
        )));
    };
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn array_index(tok: &str, len: usize, allow_end: bool) -> Result<usize, ApiError> {
    if tok == "-" && allow_end {
        return Ok(len);
    }
    if tok.is_empty()
        || (tok.len() > 1 && tok.starts_with('0'))
        || !tok.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(invalid(format!("invalid array index {tok:?}")));
    }
    let i: usize = tok
        .parse()
        .map_err(|_| invalid(format!("invalid array index {tok:?}")))?;
    let max = if allow_end {
        len
    } else {
        len.saturating_sub(1)
    };
    if i > max || (!allow_end && len == 0) {
        return Err(invalid(format!("array index {i} out of bounds")));
    }
    Ok(i)
}

/// Walks to the parent container of `toks`'s last token.
fn parent_mut<'a>(
    doc: &'a mut Value,
    toks: &[String],
    path: &str,
) -> Result<&'a mut Value, ApiError> {
    let mut cur = doc;
    for t in &toks[..toks.len().saturating_sub(1)] {
        cur = match cur {
            Value::Object(m) => m.get_mut(t),
            Value::Array(a) => {
                let i = array_index(t, a.len(), false)?;
                a.get_mut(i)
            }
            _ => None,
        }
        .ok_or_else(|| invalid(format!("doc is missing path: {path:?}")))?;
    }
    Ok(cur)
}

fn get<'a>(doc: &'a Value, path: &str) -> Result<&'a Value, ApiError> {
    let mut cur = doc;
    for t in tokens(path)? {
        cur = match cur {
            Value::Object(m) => m.get(&t),
            Value::Array(a) => a.get(array_index(&t, a.len(), false)?),
            _ => None,
        }
        .ok_or_else(|| invalid(format!("doc is missing path: {path:?}")))?;
    }
    Ok(cur)
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), ApiError> {
    let toks = tokens(path)?;
    let Some(last) = toks.last() else {
        *doc = value;
        return Ok(());
    };
    match parent_mut(doc, &toks, path)? {
        Value::Object(m) => {
            m.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(a) => {
            let i = array_index(last, a.len(), true)?;
            a.insert(i, value);
            Ok(())
        }
        _ => Err(invalid(format!("doc is missing path: {path:?}"))),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, ApiError> {
    let toks = tokens(path)?;
    let Some(last) = toks.last() else {
        return Err(invalid("cannot remove the whole document".into()));
    };
    let missing = || {
        invalid(format!(
            "unable to remove nonexistent key: {last}: missing value"
        ))
    };
    match parent_mut(doc, &toks, path)? {
        Value::Object(m) => m.remove(last).ok_or_else(missing),
        Value::Array(a) => {
            let i = array_index(last, a.len(), false)?;
            Ok(a.remove(i))
        }
        _ => Err(missing()),
    }
}

/// RFC 6902 JSON patch; the document is left untouched on any failure.
///
/// # Errors
/// 400 if `ops` is not an array of operations, 422 if an operation fails.
pub fn json_patch(target: &Value, ops: &Value) -> Result<Value, ApiError> {
    let Value::Array(ops) = ops else {
        return Err(ApiError::BadRequest(
            "a JSON patch must be an array of operations".into(),
        ));
    };
    let mut doc = target.clone();
    for op in ops {
        let name = op.get("op").and_then(Value::as_str).unwrap_or_default();
        let path = op.get("path").and_then(Value::as_str).ok_or_else(|| {
            ApiError::BadRequest(format!("JSON patch operation without \"path\": {op}"))
        })?;
        let value = || {
            op.get("value").cloned().ok_or_else(|| {
                ApiError::BadRequest(format!("JSON patch {name:?} without \"value\": {op}"))
            })
        };
        let from = || {
            op.get("from").and_then(Value::as_str).ok_or_else(|| {
                ApiError::BadRequest(format!("JSON patch {name:?} without \"from\": {op}"))
            })
        };
        match name {
            "add" => add(&mut doc, path, value()?)?,
            "remove" => {
                remove(&mut doc, path)?;
            }
            "replace" => {
                // Replace requires the target to exist (unlike add).
                get(&doc, path)?;
                let v = value()?;
                remove(&mut doc, path).ok();
                add(&mut doc, path, v)?;
            }
            "move" => {
                let from = from()?;
                if path.starts_with(&format!("{from}/")) {
                    return Err(invalid(format!(
                        "cannot move {from:?} into its own child {path:?}"
                    )));
                }
                let v = remove(&mut doc, from)?;
                add(&mut doc, path, v)?;
            }
            "copy" => {
                let v = get(&doc, from()?)?.clone();
                add(&mut doc, path, v)?;
            }
            "test" => {
                let expected = value()?;
                let actual = get(&doc, path)?;
                if *actual != expected {
                    return Err(invalid(format!("testing value {path} failed: test failed")));
                }
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unexpected JSON patch operation {other:?}"
                )));
            }
        }
    }
    Ok(doc)
}

#[cfg(test)]
mod tests;

//! Events: one stored object, two APIs.
//!
//! The real apiserver stores an Event once and converts between core/v1
//! (`involvedObject`, `message`, …) and events.k8s.io/v1 (`regarding`, `note`,
//! …). The fake keeps the core/v1 form and renames fields on the way in and
//! out, so an Event written by kube-rs's `Recorder` (events.k8s.io/v1) shows
//! up in the core/v1 list that `kubectl describe` reads.

use serde_json::{Map, Value, json};

use crate::error::ApiError;

/// (core/v1 name, events.k8s.io/v1 name) of the renamed fields.
const RENAMES: &[(&str, &str)] = &[
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
    ("reportingComponent", "reportingController"),
];

fn rename(obj: &Value, to_v1: bool) -> Value {
    let Some(map) = obj.as_object() else {
        return obj.clone();
    };
    let mut out = Map::new();
    for (k, v) in map {
        let renamed = RENAMES.iter().find_map(|(core, v1)| {
            if to_v1 && k == core {
                Some(*v1)
            } else if !to_v1 && k == v1 {
                Some(*core)
            } else {
                None
            }
        });
        out.insert(renamed.unwrap_or(k).to_owned(), v.clone());
    }
    Value::Object(out)
}

/// Stored (core/v1) form → events.k8s.io/v1 form.
#[must_use]
pub fn core_to_v1(core: &Value) -> Value {
    let mut v1 = rename(core, true);
    v1["apiVersion"] = json!("events.k8s.io/v1");
    v1["kind"] = json!("Event");
    v1
}

/// events.k8s.io/v1 form → stored (core/v1) form.
#[must_use]
pub fn v1_to_core(v1: &Value) -> Value {
    let mut core = rename(v1, false);
    core["apiVersion"] = json!("v1");
    core["kind"] = json!("Event");
    core
}

/// Field selector paths the core/v1 events API accepts.
pub const CORE_EVENT_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

/// Maps an events.k8s.io/v1 field label onto the stored core/v1 path.
///
/// # Errors
/// 400 for a label the real server does not support.
pub fn v1_field_to_core(field: &str) -> Result<String, ApiError> {
    let mapped = if let Some(rest) = field.strip_prefix("regarding.") {
        format!("involvedObject.{rest}")
    } else {
        match field {
            "reportingController" => "reportingComponent".to_owned(),
            "deprecatedSource" => "source".to_owned(),
            other => other.to_owned(),
        }
    };
    if CORE_EVENT_FIELDS.contains(&mapped.as_str()) {
        Ok(mapped)
    } else {
        Err(ApiError::BadRequest(format!(
            "field label not supported: {field}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_everything() {
        let v1 = json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "node-a.1", "namespace": "default"},
            "regarding": {"kind": "Node", "name": "node-a", "uid": "u"},
            "note": "hello", "reason": "KeyPublished", "action": "Publish", "type": "Normal",
            "reportingController": "wireseal", "reportingInstance": "node-a",
            "eventTime": "2026-01-01T00:00:00.000000Z", "series": {"count": 2, "lastObservedTime": "2026-01-01T00:00:01.000000Z"}
        });
        let core = v1_to_core(&v1);
        assert_eq!(core["involvedObject"]["name"], "node-a");
        assert_eq!(core["message"], "hello");
        assert_eq!(core["reportingComponent"], "wireseal");
        assert_eq!(core["apiVersion"], "v1");
        assert_eq!(core["series"]["count"], 2);
        assert!(core.get("regarding").is_none());
        assert_eq!(core_to_v1(&core), v1);
    }

    #[test]
    fn v1_field_labels() {
        assert_eq!(
            v1_field_to_core("regarding.name").unwrap(),
            "involvedObject.name"
        );
        assert_eq!(
            v1_field_to_core("reportingController").unwrap(),
            "reportingComponent"
        );
        assert_eq!(v1_field_to_core("note").unwrap_err().code(), 400);
    }
}

//! How stored objects are shown to a request: which API's shape (core/v1 or
//! events.k8s.io/v1), plain objects or a kubectl Table, and which objects a
//! request's namespace and selectors let through.

use serde_json::{Value, json};

use crate::discovery::node_table;
use crate::events::core_to_v1;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::store::Kind;

/// The representation a request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum View {
    /// The stored object (core/v1).
    Plain(Kind),
    /// An Event in events.k8s.io/v1 form.
    EventsV1,
    /// Nodes as a `meta.k8s.io/v1` Table (kubectl get).
    NodeTable,
}

impl View {
    /// One object.
    pub(crate) fn render(self, obj: &Value) -> Value {
        match self {
            Self::Plain(_) => obj.clone(),
            Self::EventsV1 => core_to_v1(obj),
            Self::NodeTable => node_table(std::slice::from_ref(obj), None),
        }
    }

    /// A list, carrying the resourceVersion it was read at (kube-rs's watcher
    /// needs it to start watching).
    pub(crate) fn render_list(self, items: &[Value], rv: u64) -> Value {
        let (kind, api_version, items): (String, &str, Vec<Value>) = match self {
            Self::NodeTable => return node_table(items, Some(rv)),
            Self::Plain(k) => (format!("{}List", k.kind_name()), "v1", items.to_vec()),
            Self::EventsV1 => (
                "EventList".into(),
                "events.k8s.io/v1",
                items.iter().map(core_to_v1).collect(),
            ),
        };
        json!({
            "kind": kind,
            "apiVersion": api_version,
            "metadata": {"resourceVersion": rv.to_string()},
            "items": items
        })
    }

    /// What a BOOKMARK's object looks like: just type meta and the version.
    pub(crate) fn bookmark(self, rv: u64) -> Value {
        let (kind, api_version) = match self {
            Self::Plain(k) => (k.kind_name(), "v1"),
            Self::EventsV1 => ("Event", "events.k8s.io/v1"),
            Self::NodeTable => ("Node", "v1"),
        };
        json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": rv.to_string()}})
    }
}

/// Which objects a list or watch request selects.
#[derive(Debug, Clone)]
pub(crate) struct Filter {
    pub(crate) kind: Kind,
    pub(crate) namespace: Option<String>,
    pub(crate) labels: LabelSelector,
    /// Field paths already mapped onto the stored (core/v1) form.
    pub(crate) fields: FieldSelector,
}

impl Filter {
    pub(crate) fn matches(&self, obj: &Value) -> bool {
        let ns_ok = self.namespace.as_deref().is_none_or(|ns| {
            obj.pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or_default()
                == ns
        });
        ns_ok && self.labels.matches_object(obj) && self.fields.matches_object(obj)
    }
}

//! The object store: one cluster-wide resourceVersion, a bounded history of
//! changes for watches, and a compaction floor.
//!
//! Objects are kept as JSON (`serde_json::Value`) in their canonical form
//! (Nodes as `v1/Node`, Events as `v1/Event`), so fields a typed struct does not
//! know survive round trips, as they would in etcd. Every write happens under
//! one mutex and is broadcast to watchers while still holding it, so watchers
//! see changes in resourceVersion order with no gap between their replay of
//! the history and the live feed.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use k8s_openapi::api::core::v1::{Event as CoreEvent, Node};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::error::ApiError;

/// The resources the fake stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// core/v1 Node (cluster-scoped).
    Node,
    /// core/v1 Event, also served as events.k8s.io/v1 Event (namespaced).
    Event,
    /// core/v1 Pod: always empty, read-only (only `kubectl describe node` asks).
    Pod,
}

impl Kind {
    /// Plural resource name.
    #[must_use]
    pub fn plural(self) -> &'static str {
        match self {
            Self::Node => "nodes",
            Self::Event => "events",
            Self::Pod => "pods",
        }
    }

    /// The `kind` of one object.
    #[must_use]
    pub fn kind_name(self) -> &'static str {
        match self {
            Self::Node => "Node",
            Self::Event => "Event",
            Self::Pod => "Pod",
        }
    }

    /// Whether objects live in a namespace.
    #[must_use]
    pub fn namespaced(self) -> bool {
        !matches!(self, Self::Node)
    }
}

/// The type of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeType {
    /// Created.
    Added,
    /// Updated.
    Modified,
    /// Deleted.
    Deleted,
}

/// One committed write, as kept in the history and sent to watchers.
#[derive(Debug, Clone)]
pub struct Change {
    /// The resourceVersion the write produced.
    pub rv: u64,
    /// Which resource.
    pub kind: Kind,
    /// What happened.
    pub ty: ChangeType,
    /// The object after the write (for a delete: its last state, at `rv`).
    pub object: Arc<Value>,
    /// The object before the write (for selector transitions in watches).
    pub old: Option<Arc<Value>>,
}

/// Where a watch starts.
pub(crate) enum WatchStart {
    /// The requested version is older than the compaction floor.
    Expired { requested: u64, floor: u64 },
    /// Events to send first, then the live feed.
    Ready {
        initial: Vec<Arc<Change>>,
        rx: broadcast::Receiver<Arc<Change>>,
        rv: u64,
    },
}

type Key = (Kind, String, String);

struct Inner {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Arc<Change>>,
    /// A watch from a version below this one cannot be served (410).
    floor: u64,
    history_limit: usize,
    uid_counter: u64,
}

/// The shared store; cheap to clone. Tests use it through
/// [`crate::Handle::state`] to seed, inspect and change objects as if another
/// client did (writes bump the resourceVersion and notify watchers).
#[derive(Clone)]
pub struct State {
    inner: Arc<Mutex<Inner>>,
    tx: broadcast::Sender<Arc<Change>>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("resource_version", &self.resource_version())
            .finish_non_exhaustive()
    }
}

/// The first resourceVersion handed out; any value works, a non-trivial one
/// catches clients that assume versions start at 0 or 1.
const INITIAL_RV: u64 = 100;

/// `metadata.creationTimestamp` format: RFC 3339, whole seconds, UTC.
pub(crate) fn now_rfc3339() -> String {
    // jiff's clock needs its `std` feature, which k8s-openapi does not enable.
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    k8s_openapi::jiff::Timestamp::from_second(secs)
        .unwrap_or_default()
        .to_string()
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

impl State {
    /// An empty store keeping the last `history_limit` changes for watches.
    #[must_use]
    pub fn new(history_limit: usize) -> Self {
        // Room for bursts (e.g. a benchmark creating thousands of Nodes) before a
        // slow watcher lags and is sent a 410.
        let (tx, _) = broadcast::channel(16_384);
        Self {
            inner: Arc::new(Mutex::new(Inner {
                rv: INITIAL_RV,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                floor: INITIAL_RV,
                history_limit: history_limit.max(1),
                uid_counter: 0,
            })),
            tx,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied write
        // (writes are built fully before being inserted), so poisoning is ignored.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The current cluster-wide resourceVersion.
    #[must_use]
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// The compaction floor: watches from a version below it get 410.
    #[must_use]
    pub fn compaction_floor(&self) -> u64 {
        self.lock().floor
    }

    /// Forgets the whole history, as an etcd compaction would: any watch
    /// from a version older than the current one now gets 410 Expired.
    pub fn compact(&self) {
        let mut g = self.lock();
        g.floor = g.rv;
        g.history.clear();
    }

    fn commit(
        &self,
        g: &mut Inner,
        kind: Kind,
        ty: ChangeType,
        key: Key,
        object: Value,
        old: Option<Value>,
    ) {
        let object = Arc::new(object);
        match ty {
            ChangeType::Deleted => {
                g.objects.remove(&key);
            }
            ChangeType::Added | ChangeType::Modified => {
                g.objects.insert(key, (*object).clone());
            }
        }
        let change = Arc::new(Change {
            rv: g.rv,
            kind,
            ty,
            object,
            old: old.map(Arc::new),
        });
        g.history.push_back(change.clone());
        while g.history.len() > g.history_limit {
            if let Some(dropped) = g.history.pop_front() {
                // Replaying from `dropped.rv` or later is still complete.
                g.floor = g.floor.max(dropped.rv);
            }
        }
        // No receiver is not an error: nobody is watching.
        let _ = self.tx.send(change);
    }

    fn key_of(kind: Kind, obj: &Value) -> Key {
        let ns = if kind.namespaced() {
            meta_str(obj, "namespace").unwrap_or_default()
        } else {
            ""
        };
        (
            kind,
            ns.to_owned(),
            meta_str(obj, "name").unwrap_or_default().to_owned(),
        )
    }

    /// Lists objects of a kind (in one namespace, or all), with the current version.
    pub(crate) fn list(&self, kind: Kind, namespace: Option<&str>) -> (Vec<Value>, u64) {
        let g = self.lock();
        let items = g
            .objects
            .iter()
            .filter(|((k, ns, _), _)| *k == kind && namespace.is_none_or(|n| n == ns))
            .map(|(_, v)| v.clone())
            .collect();
        (items, g.rv)
    }

    /// One object, by namespace ("" for cluster-scoped) and name.
    pub(crate) fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        self.lock()
            .objects
            .get(&(kind, namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Creates an object (canonical form): sets uid, creationTimestamp,
    /// generation and resourceVersion; 409 AlreadyExists for a taken name.
    ///
    /// # Errors
    /// 422 without a name, 409 for a duplicate.
    pub fn create(&self, kind: Kind, mut obj: Value) -> Result<Value, ApiError> {
        let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
            return Err(ApiError::Invalid(format!(
                "{} is invalid: metadata: Required value",
                kind.kind_name()
            )));
        };
        let mut g = self.lock();
        if meta
            .get("name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            // generateName is how clients ask for a server-chosen name.
            match meta.get("generateName").and_then(Value::as_str) {
                Some(prefix) if !prefix.is_empty() => {
                    let name = format!("{prefix}{:05x}", (g.uid_counter + 1) * 7919 % 0xfffff);
                    meta.insert("name".into(), json!(name));
                }
                _ => {
                    return Err(ApiError::Invalid(format!(
                        "{} is invalid: metadata.name: Required value: name or generateName is required",
                        kind.kind_name()
                    )));
                }
            }
        }
        if !kind.namespaced() {
            meta.remove("namespace");
        }
        let key = Self::key_of(kind, &obj);
        if g.objects.contains_key(&key) {
            return Err(ApiError::AlreadyExists {
                resource: kind.plural().into(),
                name: key.2,
            });
        }
        g.rv += 1;
        g.uid_counter += 1;
        let rv = g.rv;
        let uid = format!("6a1c0000-0000-4000-8000-{:012x}", g.uid_counter);
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("uid".into(), json!(uid));
            meta.insert("resourceVersion".into(), json!(rv.to_string()));
            meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
            meta.insert("generation".into(), json!(1));
            meta.remove("managedFields");
            meta.remove("deletionTimestamp");
        }
        set_type_meta(kind, &mut obj);
        self.commit(&mut g, kind, ChangeType::Added, key, obj.clone(), None);
        Ok(obj)
    }

    /// Read-modify-write of one object under the store lock.
    ///
    /// `f` gets the stored object and returns the new one. If the new object
    /// carries a `metadata.resourceVersion` that is not the stored one, the
    /// write is refused with 409 Conflict (optimistic concurrency); without
    /// one the write is unconditional, as Nodes allow. Identity fields (uid,
    /// creationTimestamp, name, namespace) are kept from the stored object;
    /// generation is bumped when `spec` changes.
    ///
    /// # Errors
    /// 404 if missing, 409 on a stale version, whatever `f` returns.
    pub(crate) fn update_with(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        f: impl FnOnce(&Value) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        let mut g = self.lock();
        let key = (kind, namespace.to_owned(), name.to_owned());
        let Some(current) = g.objects.get(&key).cloned() else {
            return Err(ApiError::NotFound {
                resource: kind.plural().into(),
                name: name.into(),
            });
        };
        let mut new = f(&current)?;
        if !new.get("metadata").is_some_and(Value::is_object) {
            return Err(ApiError::Invalid(format!(
                "{} is invalid: metadata: Required value",
                kind.kind_name()
            )));
        }
        if let Some(n) = meta_str(&new, "name")
            && n != name
        {
            return Err(ApiError::BadRequest(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        let current_rv = meta_str(&current, "resourceVersion").unwrap_or_default();
        // Null or "" means "no precondition", as on the real server.
        if let Some(rv) = new.pointer("/metadata/resourceVersion")
            && !rv.is_null()
            && rv.as_str() != Some("")
            && rv.as_str() != Some(current_rv)
        {
            return Err(ApiError::Conflict {
                resource: kind.plural().into(),
                name: name.into(),
            });
        }
        g.rv += 1;
        let rv = g.rv;
        let generation = current
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let spec_changed = current.get("spec") != new.get("spec");
        if let Some(meta) = new.get_mut("metadata").and_then(Value::as_object_mut) {
            for field in ["uid", "creationTimestamp", "name", "namespace"] {
                match current.get("metadata").and_then(|m| m.get(field)) {
                    Some(v) => meta.insert(field.into(), v.clone()),
                    None => meta.remove(field),
                };
            }
            meta.insert("resourceVersion".into(), json!(rv.to_string()));
            meta.insert(
                "generation".into(),
                json!(if spec_changed {
                    generation + 1
                } else {
                    generation
                }),
            );
            meta.remove("managedFields");
        }
        set_type_meta(kind, &mut new);
        self.commit(
            &mut g,
            kind,
            ChangeType::Modified,
            key,
            new.clone(),
            Some(current),
        );
        Ok(new)
    }

    /// Deletes an object; `precondition_uid`/`precondition_rv` give 409 on
    /// mismatch, and `check` (admission) decides on the stored object under
    /// the same lock.
    ///
    /// # Errors
    /// 404 if missing, 409 on a failed precondition, whatever `check` returns.
    pub(crate) fn delete_with(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        precondition_uid: Option<&str>,
        precondition_rv: Option<&str>,
        check: impl FnOnce(&Value) -> Result<(), ApiError>,
    ) -> Result<Value, ApiError> {
        let mut g = self.lock();
        let key = (kind, namespace.to_owned(), name.to_owned());
        let Some(current) = g.objects.get(&key).cloned() else {
            return Err(ApiError::NotFound {
                resource: kind.plural().into(),
                name: name.into(),
            });
        };
        let conflict = precondition_uid.is_some_and(|u| Some(u) != meta_str(&current, "uid"))
            || precondition_rv.is_some_and(|r| Some(r) != meta_str(&current, "resourceVersion"));
        if conflict {
            return Err(ApiError::Conflict {
                resource: kind.plural().into(),
                name: name.into(),
            });
        }
        check(&current)?;
        g.rv += 1;
        let mut last = current.clone();
        if let Some(meta) = last.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), json!(g.rv.to_string()));
        }
        self.commit(
            &mut g,
            kind,
            ChangeType::Deleted,
            key,
            last.clone(),
            Some(current),
        );
        Ok(last)
    }

    /// Subscribes a watch from `from` (`None` = "" or "0": current state as
    /// synthetic ADDED events first).
    pub(crate) fn watch_from(&self, kind: Kind, from: Option<u64>) -> WatchStart {
        let g = self.lock();
        // Subscribing under the lock means no write can slip between the
        // replayed part and the live part.
        let rx = self.tx.subscribe();
        let initial = match from {
            None => g
                .objects
                .iter()
                .filter(|((k, _, _), _)| *k == kind)
                .map(|(_, v)| {
                    Arc::new(Change {
                        rv: g.rv,
                        kind,
                        ty: ChangeType::Added,
                        object: Arc::new(v.clone()),
                        old: None,
                    })
                })
                .collect(),
            Some(n) if n < g.floor => {
                return WatchStart::Expired {
                    requested: n,
                    floor: g.floor,
                };
            }
            Some(n) => g.history.iter().filter(|c| c.rv > n).cloned().collect(),
        };
        WatchStart::Ready {
            initial,
            rx,
            rv: from.unwrap_or(g.rv),
        }
    }

    // ----- typed conveniences for tests -----

    /// Creates a Node as if another client had POSTed it.
    ///
    /// # Errors
    /// As [`State::create`].
    pub fn create_node(&self, node: &Node) -> Result<Node, ApiError> {
        from_value(self.create(Kind::Node, to_value(node)?)?)
    }

    /// The stored Node, if any.
    #[must_use]
    pub fn get_node(&self, name: &str) -> Option<Node> {
        self.get(Kind::Node, "", name)
            .and_then(|v| serde_json::from_value(v).ok())
    }

    /// One annotation of the stored Node, if both exist.
    #[must_use]
    pub fn node_annotation(&self, name: &str, key: &str) -> Option<String> {
        self.get(Kind::Node, "", name)?
            .pointer("/metadata/annotations")?
            .get(key)?
            .as_str()
            .map(str::to_owned)
    }

    /// All Nodes, by name.
    #[must_use]
    pub fn nodes(&self) -> Vec<Node> {
        self.list(Kind::Node, None)
            .0
            .into_iter()
            .filter_map(|v| serde_json::from_value(v).ok())
            .collect()
    }

    /// Replaces a Node (409 if it carries a stale resourceVersion; unconditional without one).
    ///
    /// # Errors
    /// 404 if missing, 409 on a stale version.
    pub fn update_node(&self, node: &Node) -> Result<Node, ApiError> {
        let name = node.metadata.name.clone().unwrap_or_default();
        let new = to_value(node)?;
        from_value(self.update_with(Kind::Node, "", &name, move |_| Ok(new))?)
    }

    /// Changes a Node in place, unconditionally (read-modify-write under the lock).
    ///
    /// # Errors
    /// 404 if missing.
    pub fn modify_node(&self, name: &str, f: impl FnOnce(&mut Node)) -> Result<Node, ApiError> {
        from_value(self.update_with(Kind::Node, "", name, |cur| {
            let mut node: Node = from_value(cur.clone())?;
            f(&mut node);
            node.metadata.resource_version = None;
            to_value(&node)
        })?)
    }

    /// Deletes a Node.
    ///
    /// # Errors
    /// 404 if missing.
    pub fn delete_node(&self, name: &str) -> Result<Node, ApiError> {
        from_value(self.delete_with(Kind::Node, "", name, None, None, |_| Ok(()))?)
    }

    /// Every stored Event, in core/v1 form (whichever API created it).
    #[must_use]
    pub fn events(&self) -> Vec<CoreEvent> {
        self.list(Kind::Event, None)
            .0
            .into_iter()
            .filter_map(|v| serde_json::from_value(v).ok())
            .collect()
    }
}

fn set_type_meta(kind: Kind, obj: &mut Value) {
    if let Some(m) = obj.as_object_mut() {
        m.insert("kind".into(), json!(kind.kind_name()));
        m.insert("apiVersion".into(), json!("v1"));
    }
}

fn to_value<T: serde::Serialize>(t: &T) -> Result<Value, ApiError> {
    serde_json::to_value(t).map_err(|e| ApiError::Internal(format!("cannot serialize: {e}")))
}

fn from_value<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, ApiError> {
    serde_json::from_value(v)
        .map_err(|e| ApiError::Internal(format!("stored object does not decode: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> Value {
        json!({"metadata": {"name": name}, "spec": {"podCIDR": "10.0.0.0/24"}})
    }

    #[test]
    fn create_sets_metadata_and_bumps_version() {
        let s = State::new(10);
        let rv0 = s.resource_version();
        let n = s.create(Kind::Node, node("a")).unwrap();
        assert_eq!(n["metadata"]["resourceVersion"], (rv0 + 1).to_string());
        assert_eq!(n["metadata"]["generation"], 1);
        assert!(n["metadata"]["uid"].as_str().is_some());
        assert!(
            n["metadata"]["creationTimestamp"]
                .as_str()
                .unwrap()
                .ends_with('Z')
        );
        assert_eq!(n["kind"], "Node");
        assert_eq!(s.create(Kind::Node, node("a")).unwrap_err().code(), 409);
        assert_eq!(
            s.create(Kind::Node, json!({"metadata": {}}))
                .unwrap_err()
                .code(),
            422
        );
    }

    #[test]
    fn stale_update_conflicts() {
        let s = State::new(10);
        let n = s.create(Kind::Node, node("a")).unwrap();
        let mut stale = n.clone();
        stale["metadata"]["resourceVersion"] = json!("1");
        assert_eq!(
            s.update_with(Kind::Node, "", "a", |_| Ok(stale))
                .unwrap_err()
                .code(),
            409
        );
        let mut unconditional = n.clone();
        unconditional["metadata"]["resourceVersion"] = json!("");
        s.update_with(Kind::Node, "", "a", |_| Ok(unconditional))
            .unwrap();
        let mut fresh = n;
        fresh["metadata"]["resourceVersion"] = json!(s.resource_version().to_string());
        let fresh = s.update_with(Kind::Node, "", "a", |_| Ok(fresh)).unwrap();
        assert_ne!(fresh["metadata"]["resourceVersion"], "1");
    }

    #[test]
    fn history_is_bounded_and_raises_the_floor() {
        let s = State::new(3);
        let start = s.resource_version();
        for i in 0..5 {
            s.create(Kind::Node, node(&format!("n{i}"))).unwrap();
        }
        assert!(matches!(
            s.watch_from(Kind::Node, Some(start)),
            WatchStart::Expired { .. }
        ));
        let WatchStart::Ready { initial, .. } = s.watch_from(Kind::Node, Some(start + 2)) else {
            panic!("expected a replay");
        };
        assert_eq!(initial.len(), 3);
        s.compact();
        assert!(matches!(
            s.watch_from(Kind::Node, Some(start + 4)),
            WatchStart::Expired { .. }
        ));
        assert!(matches!(
            s.watch_from(Kind::Node, Some(start + 5)),
            WatchStart::Ready { .. }
        ));
    }
}

//! kube-rs client against the fake: CRUD, optimistic concurrency, patches,
//! the status subresource, selectors, raw watches, Events and error bodies.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{bounded, client_for, node, two_nodes};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Event as CoreEvent, Node};
use k8s_openapi::api::events::v1::Event as EventsV1;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};
use wireseal_fake_apiserver::FakeApiServer;

fn api_err(e: kube::Error) -> Box<kube::core::Status> {
    match e {
        kube::Error::Api(s) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn names(list: &[Node]) -> Vec<String> {
    list.iter().map(ResourceExt::name_any).collect()
}

#[tokio::test]
async fn list_get_and_missing() {
    bounded(async {
        let (h, c) = two_nodes().await;
        let nodes: Api<Node> = Api::all(c);
        let list = nodes.list(&ListParams::default()).await.unwrap();
        assert_eq!(names(&list.items), ["node-a", "node-b"]);
        assert_eq!(
            list.metadata.resource_version,
            Some(h.state().resource_version().to_string())
        );

        let a = nodes.get("node-a").await.unwrap();
        assert_eq!(a.spec.unwrap().pod_cidrs.unwrap(), ["10.244.0.0/24"]);
        assert_eq!(
            a.status.unwrap().addresses.unwrap()[0].address,
            "192.0.2.10"
        );
        assert!(a.metadata.uid.is_some());
        assert!(a.metadata.creation_timestamp.is_some());
        assert_eq!(a.metadata.generation, Some(1));

        let missing = api_err(nodes.get("nope").await.unwrap_err());
        assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));
        assert!(nodes.get_opt("nope").await.unwrap().is_none());
        // kube-rs's own query-string shape reached the fake and was understood.
        assert!(
            h.access_log()
                .iter()
                .any(|e| e.path == "/api/v1/nodes?" || e.path.starts_with("/api/v1/nodes?&"))
        );
    })
    .await;
}

#[tokio::test]
async fn create_duplicate_replace_delete() {
    bounded(async {
        let (h, c) = two_nodes().await;
        let nodes: Api<Node> = Api::all(c);
        let created = nodes
            .create(&PostParams::default(), &node("node-c", 2, &[]))
            .await
            .unwrap();
        assert_eq!(
            created.resource_version(),
            Some(h.state().resource_version().to_string())
        );
        let dup = api_err(
            nodes
                .create(&PostParams::default(), &node("node-c", 2, &[]))
                .await
                .unwrap_err(),
        );
        assert_eq!((dup.code, dup.reason.as_str()), (409, "AlreadyExists"));

        // Replace with a stale resourceVersion: 409 Conflict; with the fresh one: ok.
        let mut fresh = nodes.get("node-c").await.unwrap();
        fresh.labels_mut().insert("x".into(), "1".into());
        let mut stale = fresh.clone();
        stale.metadata.resource_version = Some("101".into());
        let conflict = api_err(
            nodes
                .replace("node-c", &PostParams::default(), &stale)
                .await
                .unwrap_err(),
        );
        assert_eq!((conflict.code, conflict.reason.as_str()), (409, "Conflict"));
        let replaced = nodes
            .replace("node-c", &PostParams::default(), &fresh)
            .await
            .unwrap();
        assert_eq!(replaced.labels()["x"], "1");
        assert_ne!(replaced.resource_version(), fresh.resource_version());
        // The version we just used is now stale too.
        let again = api_err(
            nodes
                .replace("node-c", &PostParams::default(), &fresh)
                .await
                .unwrap_err(),
        );
        assert_eq!(again.code, 409);

        nodes
            .delete("node-c", &DeleteParams::default())
            .await
            .unwrap();
        assert_eq!(api_err(nodes.get("node-c").await.unwrap_err()).code, 404);
        assert_eq!(
            api_err(
                nodes
                    .delete("node-c", &DeleteParams::default())
                    .await
                    .unwrap_err()
            )
            .code,
            404
        );
        assert_eq!(
            names(&nodes.list(&ListParams::default()).await.unwrap().items),
            ["node-a", "node-b"]
        );
        assert!(h.state().get_node("node-c").is_none());
    })
    .await;
}

fn annotation(n: &Node, key: &str) -> Option<String> {
    n.annotations().get(key).cloned()
}

#[tokio::test]
async fn patch_types() {
    bounded(async {
        let (h, c) = two_nodes().await;
        let nodes: Api<Node> = Api::all(c.clone());
        let pp = PatchParams::default();
        let key = "wireseal.dev/public-key";

        let n = nodes.patch("node-a", &pp, &Patch::Merge(json!({"metadata": {"annotations": {key: "m"}}}))).await.unwrap();
        assert_eq!(annotation(&n, key).as_deref(), Some("m"));

        let n = nodes
            .patch("node-a", &pp, &Patch::Strategic(json!({"metadata": {"annotations": {key: "s", "other": "o"}}})))
            .await
            .unwrap();
        assert_eq!(annotation(&n, key).as_deref(), Some("s"));
        assert_eq!(annotation(&n, "other").as_deref(), Some("o"));

        // JSON patch: `test` guards the write; `~1` escapes the slash in the key.
        let ops: json_patch_ops::Ops = serde_json::from_value(json!([
            {"op": "test", "path": "/metadata/annotations/wireseal.dev~1public-key", "value": "s"},
            {"op": "replace", "path": "/metadata/annotations/wireseal.dev~1public-key", "value": "j"},
            {"op": "remove", "path": "/metadata/annotations/other"}
        ]))
        .unwrap();
        let n = nodes.patch("node-a", &pp, &Patch::Json::<()>(ops.0)).await.unwrap();
        assert_eq!(annotation(&n, key).as_deref(), Some("j"));
        assert_eq!(annotation(&n, "other"), None);

        // `remove` of a missing path fails like the real server: 422.
        let ops: json_patch_ops::Ops =
            serde_json::from_value(json!([{"op": "remove", "path": "/metadata/annotations/other"}])).unwrap();
        let e = api_err(nodes.patch("node-a", &pp, &Patch::Json::<()>(ops.0)).await.unwrap_err());
        assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
        // A failed `test` leaves the object untouched.
        let ops: json_patch_ops::Ops = serde_json::from_value(json!([
            {"op": "replace", "path": "/metadata/annotations/wireseal.dev~1public-key", "value": "no"},
            {"op": "test", "path": "/metadata/annotations/wireseal.dev~1public-key", "value": "yes"}
        ]))
        .unwrap();
        assert_eq!(api_err(nodes.patch("node-a", &pp, &Patch::Json::<()>(ops.0)).await.unwrap_err()).code, 422);
        assert_eq!(annotation(&h.state().get_node("node-a").unwrap(), key).as_deref(), Some("j"));

        // Server-side apply (approximated as a merge), and apply creating an object.
        let apply = PatchParams::apply("wireseal").force();
        let body = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a", "annotations": {key: "a"}}});
        let n = nodes.patch("node-a", &apply, &Patch::Apply(&body)).await.unwrap();
        assert_eq!(annotation(&n, key).as_deref(), Some("a"));
        assert_eq!(n.labels()["role"], "edge");
        let body = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-new"}});
        nodes.patch("node-new", &apply, &Patch::Apply(&body)).await.unwrap();
        assert!(h.state().get_node("node-new").is_some());
        assert!(h.access_log().iter().any(|e| e.method == "PATCH" && e.path.contains("fieldManager=wireseal")));

        // Apply without a fieldManager: kube-rs refuses client-side, so send it raw.
        let req = http::Request::patch("/api/v1/nodes/node-a")
            .header("Content-Type", "application/apply-patch+yaml")
            .body(b"metadata:\n  labels:\n    a: b\n".to_vec())
            .unwrap();
        let e = api_err(c.request::<Value>(req).await.unwrap_err());
        assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
        assert!(e.message.contains("fieldManager"), "{}", e.message);
    })
    .await;
}

/// Tiny wrapper so the tests can write JSON patches as JSON.
mod json_patch_ops {
    #[derive(serde::Deserialize)]
    pub(crate) struct Ops(pub(crate) json_patch::Patch);
}

#[tokio::test]
async fn stale_merge_patch_conflicts() {
    bounded(async {
        let (h, c) = two_nodes().await;
        let nodes: Api<Node> = Api::all(c);
        let before = h.state().resource_version();
        let stale = json!({"metadata": {"resourceVersion": "101", "annotations": {"k": "v"}}});
        let e = api_err(
            nodes
                .patch("node-b", &PatchParams::default(), &Patch::Merge(&stale))
                .await
                .unwrap_err(),
        );
        assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
        assert_eq!(
            h.state().resource_version(),
            before,
            "a refused write must not bump the version"
        );
        let current = nodes
            .get("node-b")
            .await
            .unwrap()
            .resource_version()
            .unwrap();
        let fresh = json!({"metadata": {"resourceVersion": current, "annotations": {"k": "v"}}});
        let n = nodes
            .patch("node-b", &PatchParams::default(), &Patch::Merge(&fresh))
            .await
            .unwrap();
        assert_eq!(annotation(&n, "k").as_deref(), Some("v"));
    })
    .await;
}

#[tokio::test]
async fn status_subresource_keeps_annotations_and_resets_spec() {
    bounded(async {
        let (h, c) = two_nodes().await;
        let nodes: Api<Node> = Api::all(c);
        let patch = json!({
            "metadata": {"annotations": {"wireseal.dev/public-key": "via-status"}},
            "spec": {"podCIDR": "10.99.0.0/24", "unschedulable": true},
            "status": {"addresses": [{"type": "InternalIP", "address": "198.51.100.1"}]}
        });
        let n = nodes
            .patch_status("node-b", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        assert_eq!(
            annotation(&n, "wireseal.dev/public-key").as_deref(),
            Some("via-status")
        );
        let spec = n.spec.clone().unwrap();
        assert_eq!(
            spec.pod_cidr.as_deref(),
            Some("10.244.1.0/24"),
            "spec must be reset on a status write"
        );
        assert_eq!(spec.unschedulable, None);
        assert_eq!(
            n.status.clone().unwrap().addresses.unwrap()[0].address,
            "198.51.100.1"
        );
        assert!(
            h.access_log()
                .iter()
                .any(|e| e.method == "PATCH" && e.path.starts_with("/api/v1/nodes/node-b/status"))
        );

        // And the main resource ignores status, as the real nodeStrategy does.
        let patch = json!({"status": {"addresses": []}, "spec": {"unschedulable": true}});
        let n = nodes
            .patch("node-b", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        assert_eq!(n.status.unwrap().addresses.unwrap().len(), 1);
        assert_eq!(n.spec.unwrap().unschedulable, Some(true));
        assert_eq!(
            n.metadata.generation,
            Some(2),
            "a spec change bumps generation"
        );

        let status = nodes.get_status("node-b").await.unwrap();
        assert_eq!(status.name_any(), "node-b");
        assert_eq!(
            api_err(nodes.get_status("nope").await.unwrap_err()).code,
            404
        );
    })
    .await;
}

#[tokio::test]
async fn label_and_field_selectors_on_list() {
    bounded(async {
        let (h, c) = two_nodes().await;
        h.state()
            .create_node(&node("node-c", 2, &[("role", "edge"), ("gpu", "yes")]))
            .unwrap();
        let nodes: Api<Node> = Api::all(c);
        let sel = |s: &'static str| {
            let nodes = nodes.clone();
            async move {
                names(
                    &nodes
                        .list(&ListParams::default().labels(s))
                        .await
                        .unwrap()
                        .items,
                )
            }
        };
        assert_eq!(sel("role=edge").await, ["node-a", "node-c"]);
        assert_eq!(sel("role==core").await, ["node-b"]);
        assert_eq!(sel("role!=edge").await, ["node-b"]);
        assert_eq!(sel("role in (core,edge),gpu").await, ["node-c"]);
        assert_eq!(sel("role notin (edge)").await, ["node-b"]);
        assert_eq!(sel("!gpu").await, ["node-a", "node-b"]);
        let fields = |s: &'static str| {
            let nodes = nodes.clone();
            async move {
                names(
                    &nodes
                        .list(&ListParams::default().fields(s))
                        .await
                        .unwrap()
                        .items,
                )
            }
        };
        assert_eq!(fields("metadata.name=node-b").await, ["node-b"]);
        assert_eq!(fields("metadata.name==node-b").await, ["node-b"]);
        assert_eq!(fields("metadata.name!=node-b").await, ["node-a", "node-c"]);
        let bad = api_err(
            nodes
                .list(&ListParams::default().labels("role in edge"))
                .await
                .unwrap_err(),
        );
        assert_eq!((bad.code, bad.reason.as_str()), (400, "BadRequest"));
        let bad = api_err(
            nodes
                .list(&ListParams::default().fields("spec.podCIDR=x"))
                .await
                .unwrap_err(),
        );
        assert_eq!(bad.code, 400);
    })
    .await;
}

async fn next_event(
    s: &mut (impl futures::Stream<Item = kube::Result<WatchEvent<Node>>> + Unpin),
) -> (String, String) {
    loop {
        match s.try_next().await.unwrap().expect("watch ended early") {
            WatchEvent::Added(n) => return ("ADDED".into(), n.name_any()),
            WatchEvent::Modified(n) => return ("MODIFIED".into(), n.name_any()),
            WatchEvent::Deleted(n) => return ("DELETED".into(), n.name_any()),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("watch error {e:?}"),
        }
    }
}

#[tokio::test]
async fn selectors_on_watch() {
    bounded(async {
        let (h, c) = two_nodes().await;
        let nodes: Api<Node> = Api::all(c);
        let wp = WatchParams::default().labels("role=edge").timeout(20);
        let mut s = nodes.watch(&wp, "0").await.unwrap().boxed();
        // RV "0": the current matching objects first, as synthetic ADDED.
        assert_eq!(next_event(&mut s).await, ("ADDED".into(), "node-a".into()));
        // node-b moves into the selection: ADDED; node-a moves out: DELETED.
        h.state()
            .modify_node("node-b", |n| {
                n.labels_mut().insert("role".into(), "edge".into());
            })
            .unwrap();
        assert_eq!(next_event(&mut s).await, ("ADDED".into(), "node-b".into()));
        h.state()
            .modify_node("node-a", |n| {
                n.labels_mut().insert("role".into(), "core".into());
            })
            .unwrap();
        assert_eq!(
            next_event(&mut s).await,
            ("DELETED".into(), "node-a".into())
        );
        h.state()
            .modify_node("node-b", |n| {
                n.annotations_mut().insert("k".into(), "v".into());
            })
            .unwrap();
        assert_eq!(
            next_event(&mut s).await,
            ("MODIFIED".into(), "node-b".into())
        );

        // Field selector, from a resourceVersion: history replay, only node-b.
        let rv = h.state().resource_version();
        h.state()
            .modify_node("node-a", |n| n.labels_mut().clear())
            .unwrap();
        h.state().delete_node("node-b").unwrap();
        let wp = WatchParams::default()
            .fields("metadata.name=node-b")
            .timeout(20);
        let mut s = nodes.watch(&wp, &rv.to_string()).await.unwrap().boxed();
        assert_eq!(
            next_event(&mut s).await,
            ("DELETED".into(), "node-b".into())
        );
    })
    .await;
}

#[tokio::test]
async fn watch_bookmarks_and_server_timeout() {
    bounded(async {
        let (h, c) = two_nodes().await;
        let nodes: Api<Node> = Api::all(c);
        let rv = h.state().resource_version().to_string();
        let wp = WatchParams::default().timeout(2);
        let started = tokio::time::Instant::now();
        let events: Vec<_> = nodes
            .watch(&wp, &rv)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(1900) && elapsed < Duration::from_secs(10),
            "{elapsed:?}"
        );
        let bookmarks: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                WatchEvent::Bookmark(b) => Some(b.metadata.resource_version.clone()),
                _ => None,
            })
            .collect();
        assert!(
            !bookmarks.is_empty(),
            "expected a bookmark within 2 s: {events:?}"
        );
        assert!(bookmarks.iter().all(|b| *b == rv));
    })
    .await;
}

#[tokio::test]
async fn recorder_events_show_in_both_apis() {
    bounded(async {
        let (h, c) = two_nodes().await;
        let node = Api::<Node>::all(c.clone()).get("node-a").await.unwrap();
        let reference = node.object_ref(&());
        let recorder =
            Recorder::new(c.clone(), Reporter { controller: "wireseal".into(), instance: Some("node-a".into()) });
        let ev = Event {
            type_: EventType::Warning,
            reason: "BadPeerAnnotation".into(),
            note: Some("peer node-b: public key is not base64".into()),
            action: "Reconcile".into(),
            secondary: None,
        };
        recorder.publish(&ev, &reference).await.unwrap();
        // The same event again is a series: kube-rs patches it.
        recorder.publish(&ev, &reference).await.unwrap();

        let v1: Api<EventsV1> = Api::namespaced(c.clone(), "default");
        let list = v1.list(&ListParams::default()).await.unwrap();
        assert_eq!(list.items.len(), 1);
        let e = &list.items[0];
        assert_eq!(e.note.as_deref(), Some("peer node-b: public key is not base64"));
        assert_eq!(e.regarding.as_ref().unwrap().name.as_deref(), Some("node-a"));
        assert_eq!(e.series.as_ref().map(|s| s.count), Some(2));
        assert_eq!(e.reporting_controller.as_deref(), Some("wireseal"));

        // Through core/v1, with the field selector `kubectl describe node` uses.
        let core: Api<CoreEvent> = Api::all(c.clone());
        let sel = format!(
            "involvedObject.name=node-a,involvedObject.namespace=,involvedObject.kind=Node,involvedObject.uid={}",
            node.uid().unwrap()
        );
        let list = core.list(&ListParams::default().fields(&sel)).await.unwrap();
        assert_eq!(list.items.len(), 1);
        assert_eq!(list.items[0].message.as_deref(), Some("peer node-b: public key is not base64"));
        assert_eq!(list.items[0].type_.as_deref(), Some("Warning"));
        assert_eq!(list.items[0].reporting_component.as_deref(), Some("wireseal"));
        let none = core.list(&ListParams::default().fields("involvedObject.name=node-b")).await.unwrap();
        assert!(none.items.is_empty());
        assert_eq!(h.state().events().len(), 1);
        assert!(h.access_log().iter().any(|e| e.method == "POST" && e.path.starts_with("/apis/events.k8s.io/v1/namespaces/default/events")));
    })
    .await;
}

async fn raw(
    c: &Client,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> Box<kube::core::Status> {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("Content-Type", content_type)
        .body(body.as_bytes().to_vec())
        .unwrap();
    api_err(c.request::<Value>(req).await.unwrap_err())
}

#[tokio::test]
async fn malformed_requests_get_status_errors() {
    bounded(async {
        let (_h, c) = two_nodes().await;
        let json = "application/json";
        let merge = "application/merge-patch+json";
        let cases = [
            (
                raw(&c, "GET", "/api/v1/widgets", json, "").await,
                404,
                "NotFound",
            ),
            (
                raw(
                    &c,
                    "GET",
                    "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/node-a",
                    json,
                    "",
                )
                .await,
                404,
                "NotFound",
            ),
            (
                raw(&c, "PUT", "/api/v1/nodes", json, "{}").await,
                405,
                "MethodNotAllowed",
            ),
            (
                raw(&c, "POST", "/api/v1/pods", json, "{}").await,
                405,
                "MethodNotAllowed",
            ),
            (
                raw(&c, "POST", "/api/v1/nodes", json, "{not json").await,
                400,
                "BadRequest",
            ),
            (
                raw(
                    &c,
                    "POST",
                    "/api/v1/nodes",
                    json,
                    r#"{"kind":"Pod","metadata":{"name":"x"}}"#,
                )
                .await,
                400,
                "BadRequest",
            ),
            (
                raw(&c, "POST", "/api/v1/nodes", json, r#"{"metadata":{}}"#).await,
                422,
                "Invalid",
            ),
            (
                raw(&c, "PATCH", "/api/v1/nodes/node-a", "text/plain", "{}").await,
                415,
                "UnsupportedMediaType",
            ),
            (
                raw(&c, "PATCH", "/api/v1/nodes/node-a", merge, "[1]").await,
                400,
                "BadRequest",
            ),
            (
                raw(&c, "PATCH", "/api/v1/nodes/nope", merge, "{}").await,
                404,
                "NotFound",
            ),
            (
                raw(
                    &c,
                    "GET",
                    "/api/v1/nodes?watch=true&resourceVersion=abc",
                    json,
                    "",
                )
                .await,
                400,
                "BadRequest",
            ),
            (
                raw(
                    &c,
                    "PUT",
                    "/api/v1/nodes/node-a",
                    json,
                    r#"{"metadata":{"name":"node-b"}}"#,
                )
                .await,
                400,
                "BadRequest",
            ),
            (
                raw(
                    &c,
                    "POST",
                    "/api/v1/nodes?dryRun=All",
                    json,
                    r#"{"metadata":{"name":"x"}}"#,
                )
                .await,
                400,
                "BadRequest",
            ),
        ];
        for (status, code, reason) in cases {
            assert_eq!(
                (status.code, status.reason.as_str()),
                (code, reason),
                "{status:?}"
            );
        }
        // The server is still fine.
        Api::<Node>::all(c).get("node-a").await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn discovery_and_pods() {
    bounded(async {
        let h = FakeApiServer::start_local().await.unwrap();
        let c = client_for(&h).await;
        let v = c.apiserver_version().await.unwrap();
        assert_eq!(v.major, "1");
        let groups = c.list_api_groups().await.unwrap();
        assert!(groups.groups.iter().any(|g| g.name == "events.k8s.io"));
        let core = c.list_core_api_resources("v1").await.unwrap();
        assert!(
            core.resources
                .iter()
                .any(|r| r.name == "nodes" && !r.namespaced)
        );
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::all(c);
        let list = pods
            .list(&ListParams::default().fields("spec.nodeName=node-a"))
            .await
            .unwrap();
        assert!(list.items.is_empty());
        assert!(list.metadata.resource_version.is_some());
    })
    .await;
}

#[tokio::test]
async fn core_events_crud_in_any_namespace() {
    bounded(async {
        let (_h, c) = two_nodes().await;
        let core: Api<CoreEvent> = Api::namespaced(c.clone(), "kube-system");
        let ev: CoreEvent = serde_json::from_value(json!({
            "metadata": {"name": "node-b.1"},
            "involvedObject": {"kind": "Node", "name": "node-b"},
            "reason": "Legacy", "message": "old-style event", "type": "Normal", "count": 1,
            "source": {"component": "kubelet"}
        }))
        .unwrap();
        let created = core.create(&PostParams::default(), &ev).await.unwrap();
        assert_eq!(created.metadata.namespace.as_deref(), Some("kube-system"));
        let patched = core
            .patch(
                "node-b.1",
                &PatchParams::default(),
                &Patch::Merge(json!({"count": 2})),
            )
            .await
            .unwrap();
        assert_eq!(patched.count, Some(2));
        assert_eq!(
            core.get("node-b.1").await.unwrap().message.as_deref(),
            Some("old-style event")
        );
        // The same object through events.k8s.io/v1.
        let v1: Api<EventsV1> = Api::namespaced(c.clone(), "kube-system");
        let got = v1.get("node-b.1").await.unwrap();
        assert_eq!(got.note.as_deref(), Some("old-style event"));
        assert_eq!(got.deprecated_count, Some(2));
        let regarding = v1
            .list(&ListParams::default().fields("regarding.name=node-b"))
            .await
            .unwrap();
        assert_eq!(regarding.items.len(), 1);
        // Namespaces are separate; the cluster-wide list sees everything.
        assert!(
            Api::<CoreEvent>::namespaced(c.clone(), "default")
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .is_empty()
        );
        assert_eq!(
            Api::<CoreEvent>::all(c)
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .len(),
            1
        );
        core.delete("node-b.1", &DeleteParams::default())
            .await
            .unwrap();
        assert_eq!(api_err(core.get("node-b.1").await.unwrap_err()).code, 404);
    })
    .await;
}

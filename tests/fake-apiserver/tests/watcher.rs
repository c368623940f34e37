//! kube-rs's watcher + reflector against the fake, through every fault the
//! agent must survive: server-side watch timeouts, dropped streams, in-stream
//! 410 (relist), 500s, and a full outage with the port closed.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{bounded, count, eventually, is_node_list, is_node_watch, node, two_nodes};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use wireseal_fake_apiserver::Handle;

const CONVERGE: Duration = Duration::from_secs(20);

/// A reflector store fed by a watcher (as the agent runs it), plus the
/// watcher's errors as text.
struct Reflector {
    store: Store<Node>,
    errors: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Reflector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn start_reflector(c: Client, cfg: watcher::Config) -> Reflector {
    let (store, writer) = reflector::store();
    let errors = Arc::new(Mutex::new(Vec::new()));
    let errs = errors.clone();
    let stream = reflector::reflector(writer, watcher(Api::<Node>::all(c), cfg).default_backoff());
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            if let Err(e) = ev {
                errs.lock().unwrap().push(e.to_string());
            }
        }
    });
    Reflector {
        store,
        errors,
        task,
    }
}

fn annotation_in_store(r: &Reflector, name: &str, key: &str) -> Option<String> {
    r.store
        .state()
        .iter()
        .find(|n| n.name_any() == name)
        .and_then(|n| n.annotations().get(key).cloned())
}

fn store_names(r: &Reflector) -> Vec<String> {
    let mut v: Vec<String> = r.store.state().iter().map(|n| n.name_any()).collect();
    v.sort();
    v
}

fn set_annotation(h: &Handle, name: &str, value: &str) {
    h.state()
        .modify_node(name, |n| {
            n.annotations_mut()
                .insert("wireseal.dev/public-key".into(), value.into());
        })
        .unwrap();
}

async fn converges(h: &Handle, r: &Reflector, name: &str, value: &str) {
    set_annotation(h, name, value);
    eventually(&format!("store sees {name}={value}"), CONVERGE, || {
        annotation_in_store(r, name, "wireseal.dev/public-key").as_deref() == Some(value)
    })
    .await;
}

async fn ready(r: &Reflector, n: usize) {
    eventually("store ready", CONVERGE, || r.store.state().len() == n).await;
}

#[tokio::test]
async fn reflector_follows_changes_and_survives_watch_timeouts() {
    bounded(async {
        let (h, c) = two_nodes().await;
        let r = start_reflector(c, watcher::Config::default().timeout(2));
        ready(&r, 2).await;
        assert_eq!(store_names(&r), ["node-a", "node-b"]);

        h.state().create_node(&node("node-c", 2, &[])).unwrap();
        eventually("ADDED node-c", CONVERGE, || store_names(&r).len() == 3).await;
        converges(&h, &r, "node-a", "k1").await;
        h.state().delete_node("node-b").unwrap();
        eventually("DELETED node-b", CONVERGE, || store_names(&r) == ["node-a", "node-c"]).await;

        // The server ends each watch after 2 s; the watcher re-watches from
        // its last version, without relisting.
        eventually("a re-watch after the server-side timeout", CONVERGE, || count(&h, is_node_watch) >= 2).await;
        converges(&h, &r, "node-c", "after-timeout").await;
        assert_eq!(count(&h, is_node_list), 1, "a timeout must not cause a relist: {:?}", h.access_log());
        let watches: Vec<_> = h.access_log().into_iter().filter(is_node_watch).collect();
        assert!(watches.iter().all(|w| w.path.contains("timeoutSeconds=2") && w.path.contains("resourceVersion=")));
        assert!(r.errors.lock().unwrap().is_empty(), "{:?}", r.errors.lock().unwrap());
    })
    .await;
}

#[tokio::test]
async fn reflector_survives_dropped_streams() {
    bounded(async {
        let (h, c) = two_nodes().await;
        let r = start_reflector(c, watcher::Config::default());
        ready(&r, 2).await;
        eventually("watch open", CONVERGE, || h.faults().open_watches() == 1).await;
        h.faults().drop_watches();
        eventually("re-watch after drop", CONVERGE, || {
            count(&h, is_node_watch) >= 2
        })
        .await;
        converges(&h, &r, "node-b", "after-drop").await;
        assert_eq!(count(&h, is_node_list), 1);
    })
    .await;
}

#[tokio::test]
async fn in_stream_410_forces_a_relist() {
    bounded(async {
        let (h, c) = two_nodes().await;
        let r = start_reflector(c, watcher::Config::default());
        ready(&r, 2).await;
        eventually("watch open", CONVERGE, || h.faults().open_watches() == 1).await;

        // Compaction + ERROR 410 on the open stream: the watcher must relist.
        h.faults().expire_watches();
        eventually("relist after 410", CONVERGE, || {
            count(&h, is_node_list) >= 2
        })
        .await;
        converges(&h, &r, "node-a", "after-410").await;
        assert!(
            r.errors
                .lock()
                .unwrap()
                .iter()
                .any(|e| e.contains("too old resource version")),
            "{:?}",
            r.errors.lock().unwrap()
        );

        // A forced 410 on the next watch (whatever version it asks for).
        eventually("watch open again", CONVERGE, || {
            h.faults().open_watches() == 1
        })
        .await;
        h.faults().expire_next_watches(1);
        h.faults().drop_watches();
        eventually("second relist", CONVERGE, || count(&h, is_node_list) >= 3).await;
        // Changes made while the store was being rebuilt are not lost.
        h.state().delete_node("node-b").unwrap();
        eventually("delete seen after relist", CONVERGE, || {
            store_names(&r) == ["node-a"]
        })
        .await;
        converges(&h, &r, "node-a", "after-second-410").await;
    })
    .await;
}

#[tokio::test]
async fn watch_from_compacted_version_gets_in_stream_410() {
    bounded(async {
        let (h, c) = two_nodes().await;
        let old = h.state().resource_version();
        h.state()
            .modify_node("node-a", |n| n.labels_mut().clear())
            .unwrap();
        h.state().compact();
        let nodes: Api<Node> = Api::all(c);
        let wp = kube::api::WatchParams::default().timeout(5);
        // The request itself succeeds (HTTP 200); the 410 is the first event.
        let mut s = nodes.watch(&wp, &old.to_string()).await.unwrap().boxed();
        match s.next().await.unwrap().unwrap() {
            kube::api::WatchEvent::Error(e) => {
                assert_eq!((e.code, e.reason.as_str()), (410, "Expired"));
            }
            other => panic!("expected an in-stream 410, got {other:?}"),
        }
        assert!(
            h.access_log()
                .iter()
                .any(|e| is_node_watch(e) && e.status == 200)
        );
    })
    .await;
}

#[tokio::test]
async fn reflector_survives_500s() {
    bounded(async {
        let (h, c) = two_nodes().await;
        let r = start_reflector(c, watcher::Config::default());
        ready(&r, 2).await;
        eventually("watch open", CONVERGE, || h.faults().open_watches() == 1).await;
        h.faults().fail_next(3, 500);
        h.faults().expire_watches();
        eventually("three injected 500s answered", CONVERGE, || {
            count(&h, |e| e.status == 500) == 3
        })
        .await;
        converges(&h, &r, "node-b", "after-500").await;
        assert!(h.faults().pending_failures().is_empty());
        assert!(
            r.errors
                .lock()
                .unwrap()
                .iter()
                .any(|e| e.contains("500") || e.contains("injected"))
        );
    })
    .await;
}

#[tokio::test]
async fn reflector_survives_an_outage() {
    bounded(async {
        let (h, c) = two_nodes().await;
        let addr = h.addr();
        let r = start_reflector(c, watcher::Config::default());
        ready(&r, 2).await;
        eventually("watch open", CONVERGE, || h.faults().open_watches() == 1).await;

        h.faults().refuse_connections();
        h.faults().wait_listening(false).await;
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "the port must refuse connections"
        );
        eventually("open watches dropped", CONVERGE, || {
            h.faults().open_watches() == 0
        })
        .await;
        // Changes made while the server is unreachable…
        set_annotation(&h, "node-a", "during-outage");
        h.state().create_node(&node("node-c", 2, &[])).unwrap();
        let requests_before = h.access_log().len();
        // …the outage lasts a few seconds (a fault duration, not a readiness wait).
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(
            h.access_log().len(),
            requests_before,
            "nothing can reach a closed port"
        );

        h.faults().accept_connections();
        h.faults().wait_listening(true).await;
        assert_eq!(h.addr(), addr);
        eventually(
            "store converges after the outage",
            Duration::from_secs(40),
            || {
                store_names(&r).len() == 3
                    && annotation_in_store(&r, "node-a", "wireseal.dev/public-key").as_deref()
                        == Some("during-outage")
            },
        )
        .await;
        converges(&h, &r, "node-b", "after-outage").await;
        assert!(
            !r.errors.lock().unwrap().is_empty(),
            "the outage should have been visible to the watcher"
        );
    })
    .await;
}

#[tokio::test]
async fn pause_holds_requests() {
    bounded(async {
        let (h, c) = two_nodes().await;
        let nodes: Api<Node> = Api::all(c);
        h.faults().pause(Duration::from_millis(800));
        let started = tokio::time::Instant::now();
        nodes.get("node-a").await.unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(700),
            "{:?}",
            started.elapsed()
        );
        h.faults().pause(Duration::from_secs(30));
        let get = tokio::spawn(async move { nodes.get("node-a").await.map(|n| n.name_any()) });
        // Asserting a hang needs a wait: the request must still be held.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!get.is_finished(), "a paused server must not answer");
        h.faults().unpause();
        assert_eq!(get.await.unwrap().unwrap(), "node-a");
    })
    .await;
}

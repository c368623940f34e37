//! Fault injection as a client sees it: injected status codes, matching
//! rules, and the admin listener that outlives an outage.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{bounded, client_for, node};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use wireseal_fake_apiserver::{Config, FailRule, FakeApiServer};

fn code(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn injected_codes_follow_their_rules() {
    bounded(async {
        let h = FakeApiServer::start_local().await.unwrap();
        h.state().create_node(&node("node-a", 0, &[])).unwrap();
        let nodes: Api<Node> = Api::all(client_for(&h).await);
        let patch = Patch::Merge(json!({"metadata": {"annotations": {"k": "v"}}}));
        let pp = PatchParams::default();
        let patch_statuses = || -> Vec<u16> {
            h.access_log()
                .iter()
                .filter(|e| e.method == "PATCH")
                .map(|e| e.status)
                .collect()
        };
        h.faults().fail_next_matching(FailRule {
            code: 409,
            remaining: 1,
            method: Some("PATCH".into()),
            path_prefix: Some("/api/v1/nodes/node-a".into()),
        });
        // A GET does not match a PATCH rule.
        nodes.get("node-a").await.unwrap();
        assert_eq!(
            code(nodes.patch("node-a", &pp, &patch).await.unwrap_err()),
            (409, "Conflict".into())
        );
        assert_eq!(patch_statuses(), [409]);

        // kube-rs retries a 429 by itself (its default retry policy honours
        // Retry-After), so the call succeeds after one refused attempt.
        h.faults().fail_next_matching(FailRule {
            code: 429,
            remaining: 1,
            method: None,
            path_prefix: None,
        });
        nodes.patch("node-a", &pp, &patch).await.unwrap();
        assert_eq!(patch_statuses(), [409, 429, 200]);
        assert!(h.faults().pending_failures().is_empty());
        assert_eq!(
            h.state()
                .get_node("node-a")
                .unwrap()
                .metadata
                .annotations
                .unwrap()["k"],
            "v"
        );

        // A 500 is not retried: the caller sees it.
        h.faults().fail_next(1, 500);
        assert_eq!(
            code(nodes.get("node-a").await.unwrap_err()),
            (500, "InternalError".into())
        );
        nodes.get("node-a").await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn admin_listener_ends_an_outage() {
    bounded(async {
        let h = FakeApiServer::start_with(Config {
            admin_listen: Some("127.0.0.1:0".parse().unwrap()),
            ..Config::default()
        })
        .await
        .unwrap();
        let admin = kube::Client::try_from(kube::Config::new(
            format!("http://{}", h.admin_addr().unwrap())
                .parse()
                .unwrap(),
        ))
        .unwrap();
        let post = |path: &str| {
            http::Request::post(path.to_owned())
                .body(Vec::new())
                .unwrap()
        };
        let _: Value = admin.request(post("/__fake/refuse")).await.unwrap();
        h.faults().wait_listening(false).await;
        assert!(tokio::net::TcpStream::connect(h.addr()).await.is_err());
        let status: Value = admin
            .request(
                http::Request::get("/__fake/status")
                    .body(Vec::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(status["listening"], false);
        let _: Value = admin.request(post("/__fake/accept")).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), h.faults().wait_listening(true))
            .await
            .unwrap();
        let nodes: Api<Node> = Api::all(client_for(&h).await);
        assert!(nodes.get_opt("nope").await.unwrap().is_none());
        // Bad admin parameters are Status errors too.
        let e = admin
            .request::<Value>(post("/__fake/fail?code=200"))
            .await
            .unwrap_err();
        assert_eq!(code(e).0, 400);
        let e = admin
            .request::<Value>(http::Request::get("/__fake/fail").body(Vec::new()).unwrap())
            .await
            .unwrap_err();
        assert_eq!(code(e).0, 405);
    })
    .await;
}

#[tokio::test]
async fn dropping_the_handle_stops_the_server() {
    bounded(async {
        let h = FakeApiServer::start_local().await.unwrap();
        let addr = h.addr();
        tokio::net::TcpStream::connect(addr).await.unwrap();
        drop(h);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "still accepting after the handle was dropped"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

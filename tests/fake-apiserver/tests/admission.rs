//! Authentication by bearer token and ValidatingAdmissionPolicies, through
//! kube-rs: who a token is, and a denial the way the real server answers it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::{ADMISSION_POLICY as POLICY, TOKENS, bounded, node};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::json;
use wireseal_fake_apiserver::{Config, FakeApiServer, Handle};

async fn server(dir: &Path) -> Handle {
    let tokens = dir.join("tokens.yaml");
    let policy = dir.join("policy.yaml");
    std::fs::write(&tokens, TOKENS).unwrap();
    std::fs::write(&policy, POLICY).unwrap();
    let h = FakeApiServer::start_with(Config {
        tokens_file: Some(tokens),
        admission_policies: vec![policy],
        ..Config::default()
    })
    .await
    .unwrap();
    for (i, name) in ["node-a", "node-b"].iter().enumerate() {
        h.state()
            .create_node(&node(name, u8::try_from(i).unwrap(), &[]))
            .unwrap();
    }
    h
}

async fn client(h: &Handle, token: Option<&str>) -> kube::Client {
    let text = token.map_or_else(|| h.kubeconfig(), |t| h.kubeconfig_with_token(t));
    let kc = Kubeconfig::from_yaml(&text).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    kube::Client::try_from(cfg).unwrap()
}

fn status_of(err: kube::Error) -> (u16, String, String) {
    match err {
        kube::Error::Api(s) => (s.code, s.reason, s.message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn annotate(key: &str) -> serde_json::Value {
    json!({"metadata": {"annotations": {key: "v"}}})
}

#[tokio::test]
async fn a_token_is_its_user_and_a_policy_denies_as_the_real_server() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let h = server(dir.path()).await;
        let agent: Api<Node> = Api::all(client(&h, Some("agent-a")).await);
        let pp = PatchParams::default();

        // Its own Node: admitted, through the status subresource and the Node.
        agent
            .patch_status("node-a", &pp, &Patch::Merge(&annotate("example.com/a")))
            .await
            .unwrap();
        agent
            .patch("node-a", &pp, &Patch::Merge(&annotate("example.com/b")))
            .await
            .unwrap();

        // Another Node: 403 Forbidden with the policy's message.
        let err = agent
            .patch_status("node-b", &pp, &Patch::Merge(&annotate("example.com/a")))
            .await
            .unwrap_err();
        assert_eq!(
            status_of(err),
            (
                403,
                "Forbidden".to_owned(),
                "nodes \"node-b\" is forbidden: ValidatingAdmissionPolicy 'own-node' with binding \
                 'own-node-binding' denied request: only its own Node, not node-b"
                    .to_owned()
            )
        );
        assert!(h.state().get_node("node-b").unwrap().metadata.annotations.is_none_or(|a| a.is_empty()));
        // The policy sees the patched object: a patch adding a label it
        // refuses is denied, one without is not. No reason: 422 Invalid.
        let err = agent
            .patch("node-a", &pp, &Patch::Merge(&json!({"metadata": {"labels": {"bad": "1"}}})))
            .await
            .unwrap_err();
        let (code, reason, message) = status_of(err);
        assert_eq!((code, reason.as_str()), (422, "Invalid"));
        assert!(message.ends_with("denied request: failed expression: !has(object.metadata.labels) || !('bad' in object.metadata.labels)"), "{message}");
        // PUT and DELETE go through admission too.
        let mut b = h.state().get_node("node-b").unwrap();
        b.metadata.resource_version = None;
        assert_eq!(status_of(agent.replace("node-b", &PostParams::default(), &b).await.unwrap_err()).0, 403);
        let err = agent.delete("node-a", &DeleteParams::default()).await.unwrap_err();
        assert!(status_of(err).2.ends_with("agents do not delete Nodes"));
        assert!(h.state().get_node("node-a").is_some());

        // Someone the policy does not match: admitted.
        let admin: Api<Node> = Api::all(client(&h, Some("admin")).await);
        admin
            .patch_status("node-b", &pp, &Patch::Merge(&annotate("example.com/a")))
            .await
            .unwrap();
        admin.delete("node-b", &DeleteParams::default()).await.unwrap();

        // No token, or an unknown one: 401.
        for token in [None, Some("guess")] {
            let api: Api<Node> = Api::all(client(&h, token).await);
            let (code, reason, _) = status_of(api.list(&Default::default()).await.unwrap_err());
            assert_eq!((code, reason.as_str()), (401, "Unauthorized"), "{token:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn a_bad_policy_or_tokens_file_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        POLICY.replace("request.operation != 'DELETE'", "request.operation !="),
    )
    .unwrap();
    let err = FakeApiServer::start_with(Config {
        admission_policies: vec![bad.clone()],
        ..Config::default()
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("bad.yaml"), "{err}");
    std::fs::write(&bad, "- token: t\n").unwrap();
    let err = FakeApiServer::start_with(Config {
        tokens_file: Some(bad),
        ..Config::default()
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("bad.yaml"), "{err}");
}

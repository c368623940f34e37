//! Every PATCH content type against its RFC's examples and the answers the real
//! server gives (422 for a failing op, 400 for a malformed patch).

use super::*;
use serde_json::json;

#[test]
fn merge_patch_rfc7386_examples() {
    // The test vectors of RFC 7386 appendix A (a selection).
    let cases = [
        (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
        (
            json!({"a": "b"}),
            json!({"b": "c"}),
            json!({"a": "b", "b": "c"}),
        ),
        (json!({"a": "b"}), json!({"a": null}), json!({})),
        (
            json!({"a": "b", "b": "c"}),
            json!({"a": null}),
            json!({"b": "c"}),
        ),
        (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
        (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
        (
            json!({"a": {"b": "c"}}),
            json!({"a": {"b": "d", "c": null}}),
            json!({"a": {"b": "d"}}),
        ),
        (
            json!({"a": [{"b": "c"}]}),
            json!({"a": [1]}),
            json!({"a": [1]}),
        ),
        (
            json!({"e": null}),
            json!({"a": 1}),
            json!({"e": null, "a": 1}),
        ),
        (
            json!([1, 2]),
            json!({"a": "b", "c": null}),
            json!({"a": "b"}),
        ),
        (
            json!({}),
            json!({"a": {"bb": {"ccc": null}}}),
            json!({"a": {"bb": {}}}),
        ),
    ];
    for (target, patch, want) in cases {
        assert_eq!(merge_patch(&target, &patch), want, "{target} + {patch}");
    }
}

#[test]
fn merge_patch_annotation_add_and_delete() {
    let node = json!({"metadata": {"name": "n", "annotations": {"a": "1", "b": "2"}}});
    let out = merge_patch(
        &node,
        &json!({"metadata": {"annotations": {"a": null, "c": "3"}}}),
    );
    assert_eq!(out["metadata"]["annotations"], json!({"b": "2", "c": "3"}));
    assert_eq!(out["metadata"]["name"], "n");
}

#[test]
fn json_patch_basic_ops() {
    let doc = json!({"metadata": {"annotations": {"a/b": "1"}}, "list": [1, 2]});
    let ops = json!([
        {"op": "test", "path": "/metadata/annotations/a~1b", "value": "1"},
        {"op": "replace", "path": "/metadata/annotations/a~1b", "value": "2"},
        {"op": "add", "path": "/metadata/labels", "value": {"x": "y"}},
        {"op": "add", "path": "/list/-", "value": 3},
        {"op": "add", "path": "/list/0", "value": 0},
        {"op": "remove", "path": "/list/1"},
        {"op": "copy", "from": "/metadata/labels/x", "path": "/copied"},
        {"op": "move", "from": "/copied", "path": "/moved"},
    ]);
    let out = json_patch(&doc, &ops).unwrap();
    assert_eq!(
        out,
        json!({"metadata": {"annotations": {"a/b": "2"}, "labels": {"x": "y"}}, "list": [0, 2, 3], "moved": "y"})
    );
}

#[test]
fn json_patch_failures_are_422_and_atomic() {
    let doc = json!({"metadata": {"annotations": {"a": "1"}}});
    let cases = [
        json!([{"op": "remove", "path": "/metadata/annotations/missing"}]),
        json!([{"op": "remove", "path": "/metadata/labels/x"}]),
        json!([{"op": "test", "path": "/metadata/annotations/a", "value": "2"}]),
        json!([{"op": "test", "path": "/nope", "value": "2"}]),
        json!([{"op": "replace", "path": "/metadata/missing", "value": 1}]),
        json!([{"op": "add", "path": "/a/b/c", "value": 1}]),
        json!([{"op": "add", "path": "/metadata/annotations/a", "value": "x"},
               {"op": "remove", "path": "/x"}]),
    ];
    for ops in cases {
        let e = json_patch(&doc, &ops).unwrap_err();
        assert_eq!(e.code(), 422, "{ops}: {e}");
    }
}

#[test]
fn json_patch_malformed_is_400() {
    let doc = json!({});
    assert_eq!(
        json_patch(&doc, &json!({"op": "add"})).unwrap_err().code(),
        400
    );
    assert_eq!(
        json_patch(&doc, &json!([{"op": "add", "value": 1}]))
            .unwrap_err()
            .code(),
        400
    );
    assert_eq!(
        json_patch(&doc, &json!([{"op": "frob", "path": "/a"}]))
            .unwrap_err()
            .code(),
        400
    );
    assert_eq!(
        json_patch(&doc, &json!([{"op": "add", "path": "/a"}]))
            .unwrap_err()
            .code(),
        400
    );
}

#[test]
fn array_index_edge_cases() {
    let doc = json!({"l": [1]});
    assert_eq!(
        json_patch(&doc, &json!([{"op": "add", "path": "/l/01", "value": 0}]))
            .unwrap_err()
            .code(),
        422
    );
    assert_eq!(
        json_patch(&doc, &json!([{"op": "add", "path": "/l/2", "value": 0}]))
            .unwrap_err()
            .code(),
        422
    );
    assert_eq!(
        json_patch(&doc, &json!([{"op": "remove", "path": "/l/1"}]))
            .unwrap_err()
            .code(),
        422
    );
    assert_eq!(
        json_patch(&doc, &json!([{"op": "add", "path": "/l/1", "value": 2}])).unwrap()["l"],
        json!([1, 2])
    );
}

#[test]
fn content_types() {
    assert_eq!(
        PatchKind::from_content_type("application/merge-patch+json").unwrap(),
        PatchKind::Merge
    );
    assert_eq!(
        PatchKind::from_content_type("application/strategic-merge-patch+json; charset=utf-8")
            .unwrap(),
        PatchKind::Strategic
    );
    assert_eq!(
        PatchKind::from_content_type("application/apply-patch+yaml").unwrap(),
        PatchKind::Apply
    );
    assert_eq!(
        PatchKind::from_content_type("text/plain")
            .unwrap_err()
            .code(),
        415
    );
}

#[test]
fn apply_accepts_yaml_and_json() {
    let node = json!({"metadata": {"name": "n"}});
    let y = apply_patch(PatchKind::Apply, &node, b"metadata:\n  labels:\n    a: b\n").unwrap();
    assert_eq!(y["metadata"]["labels"]["a"], "b");
    let j = apply_patch(
        PatchKind::Apply,
        &node,
        br#"{"metadata":{"labels":{"a":"c"}}}"#,
    )
    .unwrap();
    assert_eq!(j["metadata"]["labels"]["a"], "c");
    assert_eq!(
        apply_patch(PatchKind::Merge, &node, b"{nope")
            .unwrap_err()
            .code(),
        400
    );
}

#[test]
fn a_strategic_patch_merges_node_conditions_by_type_and_replaces_other_lists() {
    let node = json!({
        "spec": {"taints": [{"key": "a", "effect": "NoSchedule"}]},
        "status": {"conditions": [
            {"type": "Ready", "status": "True"},
            {"type": "WiresealEncrypted", "status": "False", "reason": "Old"}
        ]}
    });
    let patch = json!({
        "spec": {"taints": [{"key": "b", "effect": "NoSchedule"}]},
        "status": {"conditions": [
            {"type": "WiresealEncrypted", "status": "True", "reason": "AllPeersEncrypted"},
            {"type": "NetworkUnavailable", "status": "False"}
        ]}
    });
    let out = apply_patch(PatchKind::Strategic, &node, patch.to_string().as_bytes()).unwrap();
    assert_eq!(
        out["status"]["conditions"],
        json!([
            {"type": "Ready", "status": "True"},
            {"type": "WiresealEncrypted", "status": "True", "reason": "AllPeersEncrypted"},
            {"type": "NetworkUnavailable", "status": "False"}
        ])
    );
    assert_eq!(
        out["spec"]["taints"],
        json!([{"key": "b", "effect": "NoSchedule"}])
    );
    // A merge patch still replaces the list whole.
    let merged = apply_patch(PatchKind::Merge, &node, patch.to_string().as_bytes()).unwrap();
    assert_eq!(merged["status"]["conditions"].as_array().unwrap().len(), 2);
}

//! Discovery documents and the `meta.k8s.io/v1` Table view of Nodes: what
//! kubectl needs before and while it prints anything.

use serde_json::{Value, json};

use crate::store::now_rfc3339;

/// The version the fake claims; kubectl's dispatcher picks its client minor from it.
pub const MINOR: &str = "32";

/// `GET /version`.
#[must_use]
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": MINOR,
        "gitVersion": format!("v1.{MINOR}.0-wireseal-fake"),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.23.0",
        "compiler": "gc",
        "platform": "linux/amd64"
    })
}

/// `GET /api`: a plain `APIVersions` makes kubectl fall back from aggregated
/// discovery to the legacy per-group documents below.
#[must_use]
pub fn api_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]
    })
}

fn events_group() -> Value {
    json!({
        "name": "events.k8s.io",
        "versions": [{"groupVersion": "events.k8s.io/v1", "version": "v1"}],
        "preferredVersion": {"groupVersion": "events.k8s.io/v1", "version": "v1"}
    })
}

/// `GET /apis`.
#[must_use]
pub fn api_group_list() -> Value {
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [events_group()]})
}

/// `GET /apis/events.k8s.io`.
#[must_use]
pub fn events_api_group() -> Value {
    let mut g = events_group();
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    g
}

const RW: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];

/// `GET /api/v1`.
#[must_use]
pub fn core_v1_resources() -> Value {
    json!({
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            {"name": "nodes", "singularName": "node", "namespaced": false, "kind": "Node",
             "verbs": RW, "shortNames": ["no"]},
            {"name": "nodes/status", "singularName": "", "namespaced": false, "kind": "Node",
             "verbs": ["get", "patch", "update"]},
            {"name": "events", "singularName": "event", "namespaced": true, "kind": "Event",
             "verbs": RW, "shortNames": ["ev"]},
            {"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod",
             "verbs": ["get", "list", "watch"], "shortNames": ["po"], "categories": ["all"]}
        ]
    })
}

/// `GET /apis/events.k8s.io/v1`.
#[must_use]
pub fn events_v1_resources() -> Value {
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": "events.k8s.io/v1",
        "resources": [
            {"name": "events", "singularName": "event", "namespaced": true, "kind": "Event",
             "verbs": RW, "shortNames": ["ev"]}
        ]
    })
}

/// Whether an `Accept` header asks for the Table view.
#[must_use]
pub fn wants_table(accept: &str) -> bool {
    // kubectl sends `application/json;as=Table;v=v1;g=meta.k8s.io,application/json;…`;
    // the first acceptable media type wins, and we can always serve Table.
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.split(';').any(|p| p.trim() == "as=Table"))
}

fn column(name: &str, ty: &str, format: &str, priority: u8, description: &str) -> Value {
    json!({"name": name, "type": ty, "format": format, "description": description, "priority": priority})
}

/// The columns `kubectl get nodes` (and `-o wide`) print.
fn node_columns() -> Value {
    json!([
        column(
            "Name",
            "string",
            "name",
            0,
            "Name must be unique within a namespace."
        ),
        column("Status", "string", "", 0, "The status of the node"),
        column("Roles", "string", "", 0, "The roles of the node"),
        column(
            "Age",
            "string",
            "",
            0,
            "CreationTimestamp is a timestamp representing the server time when this object was created."
        ),
        column(
            "Version",
            "string",
            "",
            0,
            "Kubelet Version reported by the node."
        ),
        column(
            "Internal-IP",
            "string",
            "",
            1,
            "List of internal IPs in the node."
        ),
        column(
            "External-IP",
            "string",
            "",
            1,
            "List of external IPs in the node."
        ),
        column(
            "OS-Image",
            "string",
            "",
            1,
            "OS image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy))."
        ),
        column(
            "Kernel-Version",
            "string",
            "",
            1,
            "Kernel version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64)."
        ),
        column(
            "Container-Runtime",
            "string",
            "",
            1,
            "Container runtime version reported by the node through runtime remote API (e.g. containerd://1.4.2)."
        ),
    ])
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

fn none_if_empty(s: String) -> String {
    if s.is_empty() { "<none>".to_owned() } else { s }
}

/// "5s", "3m", "2h", "4d" as kubectl's HumanDuration (coarsely).
fn age(created: &str) -> String {
    let (Ok(created), Ok(now)) = (
        created.parse::<k8s_openapi::jiff::Timestamp>(),
        now_rfc3339().parse::<k8s_openapi::jiff::Timestamp>(),
    ) else {
        return "<unknown>".to_owned();
    };
    let secs = (now.as_second() - created.as_second()).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 3600 * 3 => format!("{}m", s / 60),
        s if s < 86400 * 2 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn node_status(node: &Value) -> String {
    let ready = node
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
        })
        .map(|c| str_at(c, "/status").to_owned());
    let mut s = match ready.as_deref() {
        Some("True") => "Ready".to_owned(),
        Some("False") => "NotReady".to_owned(),
        _ => "Unknown".to_owned(),
    };
    if node.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        s.push_str(",SchedulingDisabled");
    }
    s
}

fn node_roles(node: &Value) -> String {
    let mut roles: Vec<String> = node
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|labels| {
            labels
                .iter()
                .filter_map(|(k, v)| {
                    if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
                        (!role.is_empty()).then(|| role.to_owned())
                    } else if k == "kubernetes.io/role" {
                        v.as_str().filter(|r| !r.is_empty()).map(str::to_owned)
                    } else {
                        None
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    roles.sort();
    roles.dedup();
    none_if_empty(roles.join(","))
}

fn addresses(node: &Value, ty: &str) -> String {
    let addrs: Vec<&str> = node
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter(|x| x.get("type").and_then(Value::as_str) == Some(ty))
                .filter_map(|x| x.get("address").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    none_if_empty(addrs.join(","))
}

fn node_row(node: &Value) -> Value {
    json!({
        "cells": [
            str_at(node, "/metadata/name"),
            node_status(node),
            node_roles(node),
            age(str_at(node, "/metadata/creationTimestamp")),
            str_at(node, "/status/nodeInfo/kubeletVersion"),
            addresses(node, "InternalIP"),
            addresses(node, "ExternalIP"),
            none_if_empty(str_at(node, "/status/nodeInfo/osImage").to_owned()),
            none_if_empty(str_at(node, "/status/nodeInfo/kernelVersion").to_owned()),
            none_if_empty(str_at(node, "/status/nodeInfo/containerRuntimeVersion").to_owned()),
        ],
        // kubectl uses the embedded metadata for --show-labels, -L and sorting.
        "object": {
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": node.get("metadata").cloned().unwrap_or_else(|| json!({}))
        }
    })
}

/// A `meta.k8s.io/v1` Table of Nodes.
#[must_use]
pub fn node_table(nodes: &[Value], resource_version: Option<u64>) -> Value {
    let mut meta = json!({});
    if let Some(rv) = resource_version {
        meta["resourceVersion"] = json!(rv.to_string());
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": node_columns(),
        "rows": nodes.iter().map(node_row).collect::<Vec<_>>()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_accept_detection() {
        assert!(wants_table(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
        ));
        assert!(!wants_table("application/json"));
        assert!(!wants_table(""));
    }

    #[test]
    fn node_row_cells() {
        let node = json!({
            "metadata": {"name": "n1", "creationTimestamp": now_rfc3339(),
                         "labels": {"node-role.kubernetes.io/control-plane": "", "kubernetes.io/role": "edge"}},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                       "addresses": [{"type": "InternalIP", "address": "192.0.2.1"}],
                       "nodeInfo": {"kubeletVersion": "v1.32.0"}}
        });
        let t = node_table(&[node], Some(7));
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "n1");
        assert_eq!(cells[1], "Ready,SchedulingDisabled");
        assert_eq!(cells[2], "control-plane,edge");
        assert!(cells[3].as_str().unwrap().ends_with('s'));
        assert_eq!(cells[4], "v1.32.0");
        assert_eq!(cells[5], "192.0.2.1");
        assert_eq!(cells[6], "<none>");
        assert_eq!(t["metadata"]["resourceVersion"], "7");
    }
}

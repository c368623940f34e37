//! deploy/grafana/wireseal.json names only metrics the agent exports: every
//! PromQL expression of every panel (and of the dashboard's variables) is
//! lexed, and each series name it selects must be one the agent's metrics
//! registry serves (`Metrics::exported_families`, with `_total` for
//! counters and `_bucket`/`_sum`/`_count` for the histogram).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use serde_json::Value;
use wireseal::metrics::Metrics;

/// PromQL's functions and aggregations this checker knows; an unknown name
/// called like a function fails the test rather than pass as a metric.
const FUNCTIONS: &[&str] = &[
    "abs",
    "absent",
    "absent_over_time",
    "avg",
    "avg_over_time",
    "bottomk",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "count",
    "count_over_time",
    "count_values",
    "delta",
    "deriv",
    "exp",
    "floor",
    "group",
    "histogram_quantile",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "last_over_time",
    "ln",
    "log10",
    "log2",
    "max",
    "max_over_time",
    "min",
    "min_over_time",
    "predict_linear",
    "quantile",
    "rate",
    "resets",
    "round",
    "scalar",
    "sort",
    "sort_desc",
    "sqrt",
    "stddev",
    "stdvar",
    "sum",
    "sum_over_time",
    "time",
    "timestamp",
    "topk",
    "vector",
];
/// Keywords; those in the first group are followed by a list of labels.
const LABEL_LIST_KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "atan2"];

/// The series names `expr` selects.
fn metric_names(expr: &str) -> Result<Vec<String>, String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    // Skips from an opening bracket to its match (label matchers, ranges, label lists).
    let skip = |i: &mut usize, open: char, close: char| -> Result<(), String> {
        let mut depth = 0;
        let mut quote: Option<char> = None;
        while *i < chars.len() {
            let c = chars[*i];
            match quote {
                Some(_) if c == '\\' => *i += 1,
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if c == '"' || c == '\'' || c == '`' => quote = Some(c),
                None if c == open => depth += 1,
                None if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        *i += 1;
                        return Ok(());
                    }
                }
                None => {}
            }
            *i += 1;
        }
        Err(format!("unclosed {open} in {expr}"))
    };
    let next_non_space = |from: usize| chars[from..].iter().copied().find(|c| !c.is_whitespace());
    let mut expect_label_list = false;
    while i < chars.len() {
        let c = chars[i];
        if c == '{' {
            skip(&mut i, '{', '}')?;
        } else if c == '[' {
            skip(&mut i, '[', ']')?;
        } else if c == '"' || c == '\'' || c == '`' {
            let end = chars[i + 1..]
                .iter()
                .position(|d| *d == c)
                .ok_or_else(|| format!("unclosed string in {expr}"))?;
            i += end + 2;
        } else if c == '(' && expect_label_list {
            skip(&mut i, '(', ')')?;
            expect_label_list = false;
        } else if c.is_ascii_digit()
            || (c == '.' && i + 1 < chars.len() && chars[i + 1].is_ascii_digit())
        {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if LABEL_LIST_KEYWORDS.contains(&word.as_str()) {
                expect_label_list = true;
            } else if KEYWORDS.contains(&word.as_str()) {
            } else if FUNCTIONS.contains(&word.as_str()) {
                let next = next_non_space(i);
                let aggregation_clause = chars[i..].iter().collect::<String>();
                let clause = aggregation_clause.trim_start();
                if next != Some('(') && !clause.starts_with("by") && !clause.starts_with("without")
                {
                    return Err(format!("{word} is not called in {expr}"));
                }
            } else if next_non_space(i) == Some('(') {
                return Err(format!("unknown function {word} in {expr}"));
            } else {
                names.push(word);
            }
        } else {
            i += 1;
        }
    }
    if names.is_empty() {
        return Err(format!("no metric in {expr}"));
    }
    Ok(names)
}

/// Every series name the agent serves.
fn exported_series() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (family, kind) in Metrics::exported_families() {
        match kind.as_str() {
            "counter" => {
                out.insert(format!("{family}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    out.insert(format!("{family}{suffix}"));
                }
            }
            _ => {
                out.insert(family);
            }
        }
    }
    out
}

/// Every PromQL expression of the dashboard: panel targets (rows' nested
/// panels too) and query variables (`label_values(metric, label)`: its metric).
fn expressions(dashboard: &Value) -> Vec<String> {
    fn panels(list: &Value, out: &mut Vec<String>) {
        for panel in list.as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                out.push(
                    target["expr"]
                        .as_str()
                        .expect("every target has expr")
                        .to_owned(),
                );
            }
            panels(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    panels(&dashboard["panels"], &mut out);
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if variable["type"] != "query" {
            continue;
        }
        let query = variable["query"]["query"]
            .as_str()
            .or_else(|| variable["query"].as_str())
            .unwrap();
        let args = query
            .strip_prefix("label_values(")
            .and_then(|rest| rest.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable query {query}: only label_values(…) is checked"));
        out.push(args.split(',').next().unwrap().trim().to_owned());
    }
    out
}

#[test]
fn every_dashboard_query_names_metrics_the_agent_exports() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/wireseal.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .expect("deploy/grafana/wireseal.json is JSON");
    let exported = exported_series();
    let exprs = expressions(&dashboard);
    assert!(exprs.len() >= 20, "{exprs:?}");
    let mut used = BTreeSet::new();
    for expr in &exprs {
        for name in metric_names(expr).unwrap() {
            assert!(
                exported.contains(&name),
                "{name} (in {expr}) is not exported; the agent serves {exported:?}"
            );
            used.insert(name);
        }
    }
    // What the dashboard is for: coverage, leaks, peers, the loop, Node writes.
    for wanted in [
        "wireseal_peers_expected",
        "wireseal_peers_encrypted",
        "wireseal_leaked_packets_total",
        "wireseal_leaked_bytes_total",
        "wireseal_peer_transmit_bytes",
        "wireseal_peer_receive_bytes",
        "wireseal_peer_last_handshake_age_seconds",
        "wireseal_reconcile_duration_seconds_bucket",
        "wireseal_node_writes_total",
    ] {
        assert!(
            used.contains(wanted),
            "the dashboard does not show {wanted}"
        );
    }
}

#[test]
fn the_checker_finds_metric_names_and_refuses_what_is_not_served() {
    let names = metric_names(
        "histogram_quantile(0.99, sum by (le, node_name) (rate(wireseal_reconcile_duration_seconds_bucket{node_name=~\"$node\",x=\"a{b}\"}[$__rate_interval]))) / on (node_name) group_left (peer) wireseal_tunnel_mtu offset 5m",
    )
    .unwrap();
    assert_eq!(
        names,
        [
            "wireseal_reconcile_duration_seconds_bucket",
            "wireseal_tunnel_mtu"
        ]
    );
    let exported = exported_series();
    // A histogram's family name is not a series; neither is a counter without _total.
    for wrong in [
        "wireseal_reconcile_duration_seconds",
        "wireseal_leaked_packets",
        "wireseal_nope",
    ] {
        assert!(!exported.contains(wrong), "{wrong}");
    }
    assert!(exported.contains("wireseal_leaked_packets_total"));
    assert!(
        metric_names("sum(rat(wireseal_nodes[5m]))").is_err(),
        "a typo'd function"
    );
    assert!(metric_names("vector(1)").is_err(), "no metric at all");
}

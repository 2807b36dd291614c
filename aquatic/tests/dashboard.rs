//! The Grafana dashboard in deploy/grafana/ queries only what the tracker
//! exposes: every metric name in its queries is one a running binary
//! serves at /metrics, and every label it filters or groups by is one of
//! that metric's labels (with the value it filters on, for `=`).

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    time::Duration,
};

use common::{base_config, eventually, metrics_client::metrics_text, Tracker};

/// Labels Prometheus adds when it scrapes: not the tracker's.
const SCRAPE_LABELS: &[&str] = &["instance", "job"];

/// Every string under a key named `expr`, `query` or `definition`.
fn queries(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => queries(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// A label matcher of a selector: `(label, operator, value)`.
type Matcher = (String, String, String);

/// The metric names in a query, and for each `name{...}` selector its
/// matchers.
fn selectors(query: &str) -> Vec<(String, Vec<Matcher>)> {
    let mut out = Vec::new();
    let mut rest = query;
    while let Some(start) = rest.find("aquatic_") {
        let tail = &rest[start..];
        let end = tail.find(|c: char| !is_name_char(c)).unwrap_or(tail.len());
        let name = tail[..end].to_owned();
        let mut matchers = Vec::new();
        let after = &tail[end..];
        if let Some(inner) = after.strip_prefix('{') {
            let close = inner.find('}').expect("closed selector");
            for matcher in inner[..close].split(',') {
                let op_at = matcher.find(['=', '!']).expect("a matcher");
                let label = matcher[..op_at].trim().to_owned();
                let op_end = op_at + matcher[op_at..].find('"').expect("a quoted value");
                let op = matcher[op_at..op_end].to_owned();
                let value = matcher[op_end..].trim().trim_matches('"').to_owned();
                matchers.push((label, op, value));
            }
        }
        out.push((name, matchers));
        rest = &tail[end..];
    }
    out
}

/// The labels of `by (...)` clauses in a query.
fn grouped_labels(query: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = query;
    while let Some(at) = rest.find("by (") {
        let inner = &rest[at + 4..];
        let close = inner.find(')').expect("closed by");
        out.extend(inner[..close].split(',').map(|l| l.trim().to_owned()));
        rest = &inner[close..];
    }
    out
}

/// Exposed samples: metric name -> label -> values seen.
fn exposed(text: &str) -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let mut out: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || !line.starts_with("aquatic_") {
            continue;
        }
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..end].to_owned()).or_default();
        if let Some(inner) = line[end..].strip_prefix('{') {
            let close = inner.find('}').expect("closed labels");
            for pair in inner[..close].split(',') {
                if let Some((k, v)) = pair.split_once('=') {
                    labels
                        .entry(k.to_owned())
                        .or_default()
                        .insert(v.trim_matches('"').to_owned());
                }
            }
        }
    }
    out
}

#[test]
fn every_metric_the_dashboard_queries_is_exposed() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/aquatic.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("JSON");
    let mut exprs = Vec::new();
    queries(&dashboard, &mut exprs);
    assert!(exprs.len() >= 15, "the dashboard's queries: {exprs:?}");

    let config = format!(
        "{}[metrics]\nenabled = true\naddress = \"127.0.0.1:0\"\n",
        base_config()
    );
    let tracker = Tracker::start("dashboard", &config);
    let metrics = tracker.metrics.expect("metrics");
    // Both executors have published (every family is there from the first
    // snapshot, at zero).
    let text = eventually(Duration::from_secs(10), || {
        let text = metrics_text(metrics);
        (text.contains("executor=\"0\"") && text.contains("executor=\"1\"")).then_some(text)
    })
    .expect("both executors publish");
    let exposed = exposed(&text);

    let mut checked = BTreeSet::new();
    for expr in &exprs {
        let found = selectors(expr);
        assert!(
            !found.is_empty(),
            "a query without an aquatic metric: {expr}"
        );
        for (name, matchers) in &found {
            let labels = exposed
                .get(name)
                .unwrap_or_else(|| panic!("{name} (in {expr}) is not exposed"));
            for (label, op, value) in matchers {
                if SCRAPE_LABELS.contains(&label.as_str()) {
                    continue;
                }
                let values = labels
                    .get(label)
                    .unwrap_or_else(|| panic!("{name} has no label {label} (in {expr})"));
                if op == "=" {
                    assert!(
                        values.contains(value),
                        "{name}{{{label}=\"{value}\"}} is never exposed"
                    );
                }
            }
            checked.insert(name.clone());
        }
        for label in grouped_labels(expr) {
            if SCRAPE_LABELS.contains(&label.as_str()) {
                continue;
            }
            assert!(
                found
                    .iter()
                    .any(|(name, _)| exposed[name].contains_key(&label)),
                "grouping by {label}, which none of its metrics has: {expr}"
            );
        }
    }
    // The dashboard covers the tracker's main families.
    for family in [
        "aquatic_requests_total",
        "aquatic_errors_total",
        "aquatic_refusals_total",
        "aquatic_torrents",
        "aquatic_peers",
    ] {
        assert!(
            checked.contains(family),
            "the dashboard does not show {family}"
        );
    }
}

#[test]
fn the_parser_sees_names_and_matchers() {
    let q = r#"sum by (protocol, kind) (rate(aquatic_errors_total{instance=~"$instance",protocol!="mesh"}[5m])) + aquatic_peers"#;
    let found = selectors(q);
    assert_eq!(found.len(), 2);
    assert_eq!(found[0].0, "aquatic_errors_total");
    assert_eq!(
        found[0].1[1],
        ("protocol".to_owned(), "!=".to_owned(), "mesh".to_owned())
    );
    assert_eq!(found[1], ("aquatic_peers".to_owned(), Vec::new()));
    assert_eq!(grouped_labels(q), ["protocol", "kind"]);
}

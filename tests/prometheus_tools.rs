//! The monitoring files in `conf/`, checked with the real Prometheus tools: `promtool` checks
//! and unit-tests the alert rules, the Grafana dashboard may only query metrics keygate
//! exports, and a real `prometheus` scrapes a metrics page and runs every dashboard query.
//!
//! CI installs `promtool` and `prometheus` (scripts/install-deps.sh, Debian's `prometheus`
//! package). A machine without them fails these tests: they never skip.

use keygate_test_support::prometheus::{Prometheus, scrape_with_real_prometheus};
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::Duration;

/// Every metric keygate exports (histograms by their base name).
const METRICS: &[&str] = &[
    "keygate_requests_total",
    "keygate_request_duration_seconds",
    "keygate_decision_duration_seconds",
    "keygate_upstream_responses_total",
    "keygate_auth_failures_total",
    "keygate_rate_limited_total",
    "keygate_snapshot_version",
    "keygate_snapshot_age_seconds",
    "keygate_snapshot_keys",
    "keygate_snapshot_workspaces",
    "keygate_snapshot_skipped_entries",
    "keygate_snapshot_reloads_total",
    "keygate_sync_errors_total",
    "keygate_ready",
    "keygate_build_info",
    "keygate_limiter_active_subjects",
    "keygate_usage_tracked_keys",
    "keygate_sync_responses_total",
    "keygate_workspace_requests_total",
    "keygate_tls_certificate_expiry_timestamp_seconds",
    "keygate_tls_certificate_reloads_total",
    "keygate_tls_handshake_failures_total",
];

/// What the dashboard must show.
const DASHBOARD_MUST_USE: &[&str] = &[
    "keygate_requests_total",
    "keygate_request_duration_seconds",
    "keygate_decision_duration_seconds",
    "keygate_rate_limited_total",
    "keygate_auth_failures_total",
    "keygate_upstream_responses_total",
    "keygate_snapshot_age_seconds",
    "keygate_snapshot_version",
    "keygate_snapshot_keys",
    "keygate_snapshot_workspaces",
    "keygate_ready",
];

const ALERTS: &[&str] = &[
    "KeygateNoSnapshot",
    "KeygateSnapshotStale",
    "KeygateSyncFailing",
    "Keygate5xxSurge",
    "Keygate429Surge",
    "KeygateAuthFailureSurge",
    "KeygateTlsCertificateExpiresSoon",
];

fn conf(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("conf")
        .join(name)
}

fn read(name: &str) -> String {
    std::fs::read_to_string(conf(name)).unwrap_or_else(|e| panic!("read conf/{name}: {e}"))
}

/// Runs `promtool` with `args`; panics (never skips) when it is not installed.
fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `promtool` ({e}); install it with scripts/install-deps.sh \
                 (Debian package `prometheus`)"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The `keygate_…` metric names `text` mentions, `_bucket`/`_sum`/`_count` removed.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(i) = text[from..].find("keygate_").map(|i| from + i) {
        from = i + "keygate_".len();
        // A name starts here only if nothing name-like comes before it.
        if i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_') {
            continue;
        }
        let end = text[from..]
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .map_or(text.len(), |n| from + n);
        let name = &text[i..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        names.insert(base.to_string());
        from = end;
    }
    names
}

fn unknown_metrics(text: &str) -> Vec<String> {
    metric_names(text)
        .into_iter()
        .filter(|n| !METRICS.contains(&n.as_str()))
        .collect()
}

#[test]
fn alert_rules_pass_promtool() {
    let (ok, out) = promtool(&["check", "rules", "conf/prometheus-alerts.yaml"]);
    assert!(ok, "promtool check rules failed:\n{out}");
    assert!(out.contains("SUCCESS"), "{out}");

    // The unit tests: alerts fire on failing synthetic series and not on healthy ones.
    let (ok, out) = promtool(&["test", "rules", "conf/prometheus-alerts.test.yaml"]);
    assert!(ok, "promtool test rules failed:\n{out}");
    assert!(out.contains("SUCCESS"), "{out}");
    let tests = read("prometheus-alerts.test.yaml");
    for alert in ["KeygateNoSnapshot", "Keygate5xxSurge"] {
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "no promtool unit test for {alert}"
        );
    }
    assert!(
        tests.contains("exp_alerts: []"),
        "no test that an alert stays silent"
    );

    // Every alert has a severity and tells the operator what to check.
    let rules = read("prometheus-alerts.yaml");
    let blocks: Vec<&str> = rules.split("- alert: ").skip(1).collect();
    for alert in ALERTS {
        assert!(
            blocks.iter().any(|b| b.starts_with(&format!("{alert}\n"))),
            "alert {alert} missing"
        );
    }
    for block in &blocks {
        let name = block.lines().next().unwrap_or_default();
        for field in ["severity:", "summary:", "description:", "by (job, instance"] {
            assert!(block.contains(field), "alert {name} lacks `{field}`");
        }
    }
    let unknown = unknown_metrics(&rules);
    assert!(
        unknown.is_empty(),
        "alert rules name unknown metrics: {unknown:?}"
    );
}

/// Every string in a JSON document, with the key it sits under.
fn strings<'a>(value: &'a Value, key: &'a str, out: &mut Vec<(&'a str, &'a str)>) {
    match value {
        Value::String(s) => out.push((key, s)),
        Value::Array(items) => items.iter().for_each(|v| strings(v, key, out)),
        Value::Object(map) => map.iter().for_each(|(k, v)| strings(v, k, out)),
        _ => {}
    }
}

fn dashboard() -> Value {
    serde_json::from_str(&read("grafana-dashboard.json"))
        .unwrap_or_else(|e| panic!("conf/grafana-dashboard.json is not valid JSON: {e}"))
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in list.as_array().into_iter().flatten() {
            out.push(panel);
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// Every query expression in the dashboard's panels.
fn dashboard_exprs(dashboard: &Value) -> Vec<String> {
    panels(dashboard)
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .map(|t| {
            t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("a target without expr: {t}"))
                .to_string()
        })
        .collect()
}

#[test]
fn grafana_dashboard_is_valid_json_and_uses_real_metrics() {
    let dashboard = dashboard();
    assert!(
        dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion: {}",
        dashboard["schemaVersion"]
    );
    assert!(dashboard["title"].is_string() && dashboard["uid"].is_string());

    // The data source is chosen on the dashboard: a `datasource` variable every query uses.
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list");
    assert!(
        variables.iter().any(|v| v["type"] == "datasource"
            && v["name"] == "datasource"
            && v["query"] == "prometheus"),
        "no Prometheus `datasource` variable"
    );

    let panels = panels(&dashboard);
    let mut ids = BTreeSet::new();
    for panel in &panels {
        let title = &panel["title"];
        assert!(
            ids.insert(panel["id"].as_u64().expect("numeric panel id")),
            "duplicate id: {title}"
        );
        for key in ["x", "y", "w", "h"] {
            assert!(panel["gridPos"][key].is_u64(), "{title}: gridPos.{key}");
        }
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no queries");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
            assert!(
                target["expr"]
                    .as_str()
                    .is_some_and(|e| e.contains("keygate_")),
                "{title}: {target}"
            );
        }
    }

    // Each expression may only name metrics keygate exports ...
    let exprs = dashboard_exprs(&dashboard);
    let mut used = BTreeSet::new();
    for expr in &exprs {
        let unknown = unknown_metrics(expr);
        assert!(unknown.is_empty(), "unknown metrics {unknown:?} in {expr}");
        used.extend(metric_names(expr));
    }
    // ... and so may variable queries, descriptions and every other string in the file.
    let mut all = Vec::new();
    strings(&dashboard, "", &mut all);
    for (key, text) in all {
        let unknown = unknown_metrics(text);
        assert!(
            unknown.is_empty(),
            "unknown metrics {unknown:?} in {key}: {text}"
        );
    }
    let missing: Vec<_> = DASHBOARD_MUST_USE
        .iter()
        .filter(|m| !used.contains(**m))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard does not show {missing:?}"
    );
}

/// A metrics page in keygate's format, every metric present once.
const SAMPLE_METRICS: &str = r#"# HELP keygate_build_info Always 1; the version label says which build.
# TYPE keygate_build_info gauge
keygate_build_info{version="test"} 1
# TYPE keygate_requests_total counter
keygate_requests_total{outcome="allowed",route="products-read"} 10
keygate_requests_total{outcome="upstream_error",route="products-read"} 1
keygate_requests_total{outcome="unavailable",route="products-read"} 0
keygate_requests_total{outcome="not_found",route=""} 2
# TYPE keygate_request_duration_seconds histogram
keygate_request_duration_seconds_bucket{le="0.001"} 5
keygate_request_duration_seconds_bucket{le="0.01"} 12
keygate_request_duration_seconds_bucket{le="+Inf"} 13
keygate_request_duration_seconds_sum 0.05
keygate_request_duration_seconds_count 13
# TYPE keygate_decision_duration_seconds histogram
keygate_decision_duration_seconds_bucket{le="0.000001"} 0
keygate_decision_duration_seconds_bucket{le="0.00001"} 12
keygate_decision_duration_seconds_bucket{le="0.01"} 13
keygate_decision_duration_seconds_bucket{le="+Inf"} 13
keygate_decision_duration_seconds_sum 0.0001
keygate_decision_duration_seconds_count 13
# TYPE keygate_upstream_responses_total counter
keygate_upstream_responses_total{class="2xx"} 10
# TYPE keygate_auth_failures_total counter
keygate_auth_failures_total{reason="unknown"} 1
# TYPE keygate_rate_limited_total counter
keygate_rate_limited_total{limit="burst",workspace_type="live"} 1
# TYPE keygate_snapshot_version gauge
keygate_snapshot_version 3
# TYPE keygate_snapshot_age_seconds gauge
keygate_snapshot_age_seconds 0.25
# TYPE keygate_snapshot_keys gauge
keygate_snapshot_keys 4
# TYPE keygate_snapshot_workspaces gauge
keygate_snapshot_workspaces 2
# TYPE keygate_snapshot_skipped_entries gauge
keygate_snapshot_skipped_entries 0
# TYPE keygate_snapshot_reloads_total counter
keygate_snapshot_reloads_total{result="accepted",source="file"} 1
# TYPE keygate_sync_errors_total counter
keygate_sync_errors_total{source="file"} 0
# TYPE keygate_ready gauge
keygate_ready 1
# TYPE keygate_limiter_active_subjects gauge
keygate_limiter_active_subjects 1
# TYPE keygate_workspace_requests_total counter
keygate_workspace_requests_total{outcome="allowed",workspace="ws_demo"} 10
"#;

/// A std-only HTTP server answering every request with `body` as a Prometheus text page. It
/// lives until the test process exits.
fn serve_metrics(body: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                // Read the request head (a scrape has no body), then answer and close.
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes());
            });
        }
    });
    addr
}

#[test]
fn scrape_helper_queries_a_real_prometheus() {
    let addr = serve_metrics("keygate_build_info{version=\"test\"} 1\n");
    let result = scrape_with_real_prometheus(addr, "keygate_build_info");
    let series = result.as_array().expect("a result vector");
    assert_eq!(series.len(), 1, "{result}");
    let metric = &series[0]["metric"];
    assert_eq!(metric["__name__"], "keygate_build_info", "{result}");
    assert_eq!(metric["version"], "test", "{result}");
    assert_eq!(metric["job"], "keygate", "{result}");
    assert_eq!(metric["instance"], addr.to_string(), "{result}");
    assert_eq!(series[0]["value"][1], "1", "{result}");
}

/// Every dashboard query is valid PromQL and finds data on a page with every metric.
#[test]
fn dashboard_queries_run_in_real_prometheus() {
    let addr = serve_metrics(SAMPLE_METRICS);
    let prometheus = Prometheus::start(addr);
    // rate() needs two scrapes within its range.
    prometheus.query_until_nonempty("count_over_time(keygate_ready[1m]) >= 2");
    for expr in dashboard_exprs(&dashboard()) {
        let query = expr
            .replace("$__rate_interval", "1m")
            .replace("$job", ".*")
            .replace("$instance", ".*");
        assert!(!query.contains('$'), "unsubstituted variable in {expr}");
        prometheus.query_until_nonempty(&query);
    }
}

//! keygate's Prometheus metrics: one registry, every series declared here.
//!
//! Labels are bounded (outcome, route name, reason, status class); a raw key, hash or workspace
//! id never becomes a label, except in the opt-in, capped per-workspace counter. The counters the
//! request path touches are resolved to plain atomics at start, so counting takes no lock.

use crate::auth::AuthFailure;
use crate::limits::{LimitName, SubjectKind};
use crate::restrictions::RestrictionKind;
use crate::sync::{SnapshotStore, Source};
use dashmap::DashMap;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};
use std::time::{SystemTime, UNIX_EPOCH};

/// What became of a request, as counted and logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    Unauthorized,
    Forbidden,
    RateLimited,
    NotFound,
    BadRequest,
    Unavailable,
    UpstreamError,
}

impl Outcome {
    pub const ALL: [Outcome; 8] = [
        Outcome::Allowed,
        Outcome::Unauthorized,
        Outcome::Forbidden,
        Outcome::RateLimited,
        Outcome::NotFound,
        Outcome::BadRequest,
        Outcome::Unavailable,
        Outcome::UpstreamError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Unauthorized => "unauthorized",
            Outcome::Forbidden => "forbidden",
            Outcome::RateLimited => "rate_limited",
            Outcome::NotFound => "not_found",
            Outcome::BadRequest => "bad_request",
            Outcome::Unavailable => "unavailable",
            Outcome::UpstreamError => "upstream_error",
        }
    }
}

/// Reasons an authentication fails, including a missing credential.
const AUTH_REASONS: [&str; 9] = [
    "missing",
    "malformed",
    "unknown",
    "revoked",
    "expired",
    "wrong_environment",
    "invalid_token",
    "unknown_signing_key",
    "misplaced",
];

fn auth_reason_index(f: Option<AuthFailure>) -> usize {
    match f {
        None => 0,
        Some(AuthFailure::Malformed) => 1,
        Some(AuthFailure::Unknown) => 2,
        Some(AuthFailure::Revoked) => 3,
        Some(AuthFailure::Expired) => 4,
        Some(AuthFailure::WrongEnvironment) => 5,
        Some(AuthFailure::InvalidToken) => 6,
        Some(AuthFailure::UnknownSigningKey) => 7,
        Some(AuthFailure::Misplaced) => 8,
    }
}

/// The label the per-workspace counter uses once its cap is reached.
/// Parentheses are outside the workspace-id alphabet, so no real workspace can collide with it.
pub const OTHER_WORKSPACES: &str = "(other)";

pub struct Metrics {
    registry: Registry,
    /// `[route index + 1][outcome]`; index 0 is "no route".
    requests: Vec<[IntCounter; 8]>,
    pub request_duration: Histogram,
    pub decision_duration: Histogram,
    upstream_responses: [IntCounter; 5],
    auth_failures: [IntCounter; 9],
    /// By [`RestrictionKind`], in its order.
    key_restricted: [IntCounter; 3],
    pub shield_refusals: IntCounter,
    /// `[limit][subject type]`.
    rate_limited: [[IntCounter; 3]; 2],
    /// By [`SubjectKind`], in its order.
    concurrency_limited: [IntCounter; 3],
    pub snapshot_version: IntGauge,
    snapshot_age: Gauge,
    pub snapshot_keys: IntGauge,
    pub snapshot_workspaces: IntGauge,
    pub snapshot_skipped: IntGauge,
    reloads: IntCounterVec,
    sync_errors: IntCounterVec,
    sync_responses: IntCounterVec,
    pub ready: IntGauge,
    pub limiter_active: IntGauge,
    pub usage_tracked_keys: IntGauge,
    pub connections: ConnectionMetrics,
    per_workspace: Option<PerWorkspace>,
}

/// What the client-connection bounds (`src/connections.rs`) count.
#[derive(Clone)]
pub struct ConnectionMetrics {
    pub open: IntGauge,
    pub refused: IntCounter,
    pub head_timeouts: IntCounter,
    pub head_too_large: IntCounter,
    pub idle_closed_under_pressure: IntCounter,
    /// On a `listen.proxy_protocol` listener: connections closed for a missing, malformed or
    /// late PROXY header.
    pub proxy_header_refused: IntCounter,
}

struct PerWorkspace {
    counter: IntCounterVec,
    cap: usize,
    seen: DashMap<Box<str>, (), foldhash::fast::RandomState>,
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("valid metric");
    registry
        .register(Box::new(h.clone()))
        .expect("unique metric");
    h
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Metrics {
    /// `routes` are the configured route names in table order; `per_workspace_cap` turns on the
    /// per-workspace counter with at most that many workspaces.
    pub fn new(routes: &[&str], per_workspace_cap: Option<usize>) -> Metrics {
        let r = Registry::new();
        let requests_vec = counter_vec(
            &r,
            "keygate_requests_total",
            "Requests by outcome and route (route is empty when no route matched).",
            &["outcome", "route"],
        );
        let requests = std::iter::once("")
            .chain(routes.iter().copied())
            .map(|route| Outcome::ALL.map(|o| requests_vec.with_label_values(&[o.as_str(), route])))
            .collect();
        let upstream_vec = counter_vec(
            &r,
            "keygate_upstream_responses_total",
            "Responses from the upstream by status class.",
            &["class"],
        );
        let auth_vec = counter_vec(
            &r,
            "keygate_auth_failures_total",
            "Refused credentials by reason.",
            &["reason"],
        );
        let restricted_vec = counter_vec(
            &r,
            "keygate_key_restricted_total",
            "Requests refused by a key's restrictions, by the restriction that failed.",
            &["restriction"],
        );
        let concurrency_vec = counter_vec(
            &r,
            "keygate_concurrency_limited_total",
            "Requests refused (429 concurrency_limited) at their cap on requests in flight, by workspace type.",
            &["workspace_type"],
        );
        let limited_vec = counter_vec(
            &r,
            "keygate_rate_limited_total",
            "Requests refused over a rate limit, by limit and workspace type.",
            &["limit", "workspace_type"],
        );
        let build = IntGaugeVec::new(
            Opts::new(
                "keygate_build_info",
                "Always 1; the version label says which build.",
            ),
            &["version"],
        )
        .expect("valid metric");
        r.register(Box::new(build.clone())).expect("unique metric");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let snapshot_age = Gauge::new(
            "keygate_snapshot_age_seconds",
            "Seconds since the snapshot in force was last confirmed current by its source.",
        )
        .expect("valid metric");
        r.register(Box::new(snapshot_age.clone()))
            .expect("unique metric");
        let per_workspace = per_workspace_cap.map(|cap| PerWorkspace {
            counter: counter_vec(
                &r,
                "keygate_workspace_requests_total",
                "Requests by workspace and outcome (opt-in; workspaces past the cap count as (other)).",
                &["workspace", "outcome"],
            ),
            cap,
            seen: DashMap::default(),
        });
        let m = Metrics {
            requests,
            request_duration: histogram(
                &r,
                "keygate_request_duration_seconds",
                "Time from the request header to the end of the response, upstream included.",
                prometheus::exponential_buckets(0.0001, 2.5, 14).expect("valid buckets"),
            ),
            decision_duration: histogram(
                &r,
                "keygate_decision_duration_seconds",
                "Time keygate adds before the upstream: path, route, key, scopes, limits.",
                prometheus::exponential_buckets(0.000_001, 2.0, 14).expect("valid buckets"),
            ),
            upstream_responses: ["1xx", "2xx", "3xx", "4xx", "5xx"]
                .map(|c| upstream_vec.with_label_values(&[c])),
            auth_failures: AUTH_REASONS.map(|reason| auth_vec.with_label_values(&[reason])),
            shield_refusals: counter(
                &r,
                "keygate_shield_refusals_total",
                "Requests refused (429 too_many_failures) because their address is shielded.",
            ),
            key_restricted: RestrictionKind::ALL
                .map(|k| restricted_vec.with_label_values(&[k.as_str()])),
            rate_limited: [LimitName::Burst, LimitName::Sustained].map(|l| {
                SubjectKind::ALL.map(|t| limited_vec.with_label_values(&[l.as_str(), t.as_str()]))
            }),
            concurrency_limited: SubjectKind::ALL
                .map(|t| concurrency_vec.with_label_values(&[t.as_str()])),
            snapshot_version: gauge(
                &r,
                "keygate_snapshot_version",
                "Version of the snapshot in force.",
            ),
            snapshot_age,
            snapshot_keys: gauge(
                &r,
                "keygate_snapshot_keys",
                "Keys in the snapshot in force.",
            ),
            snapshot_workspaces: gauge(
                &r,
                "keygate_snapshot_workspaces",
                "Workspaces in the snapshot in force.",
            ),
            snapshot_skipped: gauge(
                &r,
                "keygate_snapshot_skipped_entries",
                "Entries skipped as malformed when the snapshot in force was loaded.",
            ),
            reloads: counter_vec(
                &r,
                "keygate_snapshot_reloads_total",
                "Snapshot loads by source and result (accepted or rejected).",
                &["source", "result"],
            ),
            sync_errors: counter_vec(
                &r,
                "keygate_sync_errors_total",
                "Times a snapshot source could not be read.",
                &["source"],
            ),
            sync_responses: counter_vec(
                &r,
                "keygate_sync_responses_total",
                "Control-plane answers by request kind (full, delta) and status (200, 304, 410, other).",
                &["kind", "status"],
            ),
            ready: gauge(
                &r,
                "keygate_ready",
                "1 when keygate has a snapshot to decide on, else 0.",
            ),
            limiter_active: gauge(
                &r,
                "keygate_limiter_active_subjects",
                "Workspaces and internal keys with rate-limit state in memory.",
            ),
            usage_tracked_keys: gauge(
                &r,
                "keygate_usage_tracked_keys",
                "Keys whose usage (requests, last use) is being tracked.",
            ),
            connections: {
                let heads = counter_vec(
                    &r,
                    "keygate_request_heads_refused_total",
                    "Client connections closed while sending a request head, by reason \
                     (timeout: listen.request_head_timeout passed; too_large: over \
                     listen.max_request_head_bytes).",
                    &["reason"],
                );
                let closed = IntCounter::new(
                    "keygate_idle_connections_closed_total",
                    "Idle keep-alive client connections closed early because open connections \
                     were above 90% of listen.max_connections.",
                )
                .expect("valid metric");
                r.register(Box::new(closed.clone())).expect("unique metric");
                let refused = IntCounter::new(
                    "keygate_client_connections_refused_total",
                    "Client connections closed on arrival because listen.max_connections were open.",
                )
                .expect("valid metric");
                r.register(Box::new(refused.clone()))
                    .expect("unique metric");
                let proxy_header_refused = IntCounter::new(
                    "keygate_proxy_protocol_refused_total",
                    "Client connections closed on a listen.proxy_protocol listener for a missing, \
                     malformed or late PROXY protocol header.",
                )
                .expect("valid metric");
                r.register(Box::new(proxy_header_refused.clone()))
                    .expect("unique metric");
                ConnectionMetrics {
                    open: gauge(
                        &r,
                        "keygate_client_connections",
                        "Client connections open on the proxy listeners.",
                    ),
                    refused,
                    head_timeouts: heads.with_label_values(&["timeout"]),
                    head_too_large: heads.with_label_values(&["too_large"]),
                    idle_closed_under_pressure: closed,
                    proxy_header_refused,
                }
            },
            per_workspace,
            registry: r,
        };
        // Series that start at their first event are invisible to `increase()` in alerts:
        // create every one the sources can touch at 0.
        for source in Source::ALL {
            for result in ["accepted", "rejected"] {
                m.reloads.with_label_values(&[source.as_str(), result]);
            }
            m.sync_errors.with_label_values(&[source.as_str()]);
        }
        m
    }

    /// `route` is the route's index in the table, `None` when no route matched.
    pub fn request(&self, outcome: Outcome, route: Option<usize>, workspace: Option<&str>) {
        let row = route.map_or(0, |i| i + 1);
        if let Some(counters) = self.requests.get(row) {
            counters[outcome as usize].inc();
        }
        if let (Some(pw), Some(ws)) = (&self.per_workspace, workspace) {
            let label = if pw.seen.contains_key(ws) {
                ws
            } else if pw.seen.len() < pw.cap {
                pw.seen.insert(Box::from(ws), ());
                ws
            } else {
                OTHER_WORKSPACES
            };
            pw.counter
                .with_label_values(&[label, outcome.as_str()])
                .inc();
        }
    }

    pub fn upstream_status(&self, status: u16) {
        if let Some(c) = self
            .upstream_responses
            .get(usize::from(status / 100).wrapping_sub(1))
        {
            c.inc();
        }
    }

    /// `None`: the credential was missing.
    pub fn auth_failure(&self, failure: Option<AuthFailure>) {
        self.auth_failures[auth_reason_index(failure)].inc();
    }

    pub fn key_restricted(&self, kind: RestrictionKind) {
        self.key_restricted[kind as usize].inc();
    }

    pub fn concurrency_limited(&self, subject: SubjectKind) {
        self.concurrency_limited[subject as usize].inc();
    }

    pub fn rate_limited(&self, limit: LimitName, subject: SubjectKind) {
        self.rate_limited[limit as usize][subject as usize].inc();
    }

    pub fn reload(&self, source: Source, accepted: bool) {
        let result = if accepted { "accepted" } else { "rejected" };
        self.reloads
            .with_label_values(&[source.as_str(), result])
            .inc();
    }

    pub fn sync_error(&self, source: Source) {
        self.sync_errors.with_label_values(&[source.as_str()]).inc();
    }

    /// A control-plane answer; `delta` when the request asked for changes since a version.
    pub fn sync_response(&self, delta: bool, status: u16) {
        let kind = if delta { "delta" } else { "full" };
        let status = match status {
            200 => "200",
            304 => "304",
            410 => "410",
            _ => "other",
        };
        self.sync_responses.with_label_values(&[kind, status]).inc();
    }

    /// The registry, for parts that register metrics of their own (the fleet-wide limits).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of every metric; the snapshot's age is read off `store`.
    pub fn render(&self, store: &SnapshotStore) -> Vec<u8> {
        self.snapshot_age
            .set(store.age().map_or(0.0, |age| age.as_secs_f64()));
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: &Metrics) -> String {
        String::from_utf8(m.render(&SnapshotStore::default())).unwrap()
    }

    #[test]
    fn counters_land_on_their_labels() {
        let m = Metrics::new(&["a", "b"], None);
        m.request(Outcome::Allowed, Some(1), Some("ws"));
        m.request(Outcome::NotFound, None, None);
        m.upstream_status(503);
        m.auth_failure(Some(AuthFailure::Revoked));
        m.auth_failure(None);
        m.rate_limited(LimitName::Sustained, SubjectKind::Sandbox);
        let t = text(&m);
        for line in [
            r#"keygate_requests_total{outcome="allowed",route="b"} 1"#,
            r#"keygate_requests_total{outcome="not_found",route=""} 1"#,
            r#"keygate_upstream_responses_total{class="5xx"} 1"#,
            r#"keygate_auth_failures_total{reason="revoked"} 1"#,
            r#"keygate_auth_failures_total{reason="missing"} 1"#,
            r#"keygate_rate_limited_total{limit="sustained",workspace_type="sandbox"} 1"#,
            r#"keygate_build_info{version=""#,
        ] {
            assert!(t.contains(line), "{line} missing from\n{t}");
        }
        assert!(!t.contains("keygate_workspace_requests_total"));
    }

    #[test]
    fn per_workspace_series_stop_at_the_cap() {
        let m = Metrics::new(&[], Some(2));
        for ws in ["w1", "w2", "w3", "w4", "w1"] {
            m.request(Outcome::Allowed, None, Some(ws));
        }
        let t = text(&m);
        assert!(
            t.contains(r#"keygate_workspace_requests_total{outcome="allowed",workspace="w1"} 2"#),
            "{t}"
        );
        assert!(
            t.contains(
                r#"keygate_workspace_requests_total{outcome="allowed",workspace="(other)"} 2"#
            ),
            "{t}"
        );
        assert!(!t.contains("w3"));
    }
}

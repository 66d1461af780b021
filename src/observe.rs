//! What is recorded about each request: its outcome and reason, the metrics, key usage, and the
//! access-log line. Filled in as the request moves through the proxy, emitted once at the end.

use crate::access_log::{self, Line};
use crate::config::AccessLogConfig;
use crate::gate::Rejection;
use crate::metrics::{Metrics, Outcome, unix_ms};
use crate::snapshot::{KeyEntry, Workspace};
use crate::usage::UsageTracker;
use std::sync::Arc;
use std::time::Instant;

/// Longest path written to the access log; the rest is cut (it is the client's input).
const MAX_LOGGED_PATH: usize = 512;

/// Per-request facts gathered along the way.
pub struct RequestRecord {
    pub started: Instant,
    pub outcome: Outcome,
    pub reason: Option<&'static str>,
    pub route: Option<usize>,
    pub key: Option<Arc<KeyEntry>>,
    /// The workspace the request acted for (or, if refused, the key's own).
    pub workspace: Option<Arc<Workspace>>,
    pub upstream_status: Option<u16>,
}

impl Default for RequestRecord {
    fn default() -> Self {
        RequestRecord {
            started: Instant::now(),
            outcome: Outcome::Allowed,
            reason: None,
            route: None,
            key: None,
            workspace: None,
            upstream_status: None,
        }
    }
}

impl RequestRecord {
    fn workspace_id(&self) -> Option<&str> {
        self.workspace.as_ref().map(|w| &*w.id)
    }
}

/// The outcome and reason of a refusal (see [`Rejection::refusal`]), and the finer metrics it
/// bumps.
pub fn classify(r: &Rejection, metrics: &Metrics) -> (Outcome, &'static str) {
    match r {
        Rejection::MissingCredentials => metrics.auth_failure(None),
        Rejection::InvalidCredentials(f) => metrics.auth_failure(Some(*f)),
        Rejection::RateLimited {
            limit,
            subject_type,
            ..
        } => metrics.rate_limited(*limit, *subject_type),
        Rejection::KeyRestricted(kind) => metrics.key_restricted(*kind),
        Rejection::TooManyFailures { .. } => metrics.shield_refusals.inc(),
        Rejection::ConcurrencyLimited { subject_type, .. } => {
            metrics.concurrency_limited(*subject_type)
        }
        _ => {}
    }
    let refusal = r.refusal();
    (refusal.outcome, refusal.reason)
}

/// The end of a request: metrics, usage, and (sampled) the access-log line.
pub struct Finish<'a> {
    pub metrics: &'a Metrics,
    pub usage: Option<&'a UsageTracker>,
    pub access_log: Option<&'a AccessLogConfig>,
    pub route_name: Option<&'a str>,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub client: Option<std::net::SocketAddr>,
    /// The client behind a trusted proxy, when it is not the peer.
    pub client_ip: Option<std::net::IpAddr>,
}

impl Finish<'_> {
    pub fn record(self, r: &RequestRecord) {
        let elapsed = r.started.elapsed();
        self.metrics.request(r.outcome, r.route, r.workspace_id());
        self.metrics.request_duration.observe(elapsed.as_secs_f64());
        // Usage is reported per API key; a token's entry is its client, not a key.
        if let (Some(usage), Some(key)) = (self.usage, &r.key)
            && key.auth_type() == crate::snapshot::AuthType::ApiKey
        {
            usage.record(key.id(), unix_ms());
        }
        let Some(log) = self.access_log else { return };
        if log.sample_ratio < 1.0 && rand::random::<f64>() >= log.sample_ratio {
            return;
        }
        let path = match self.path.char_indices().nth(MAX_LOGGED_PATH) {
            Some((cut, _)) => &self.path[..cut],
            None => self.path,
        };
        access_log::emit(&Line {
            level: log.level.as_str(),
            method: self.method,
            path,
            route: self.route_name,
            status: self.status,
            outcome: r.outcome.as_str(),
            reason: r.reason,
            workspace_id: r.workspace_id(),
            key_id: r.key.as_ref().map(|k| k.id()),
            auth_type: r.key.as_ref().map(|k| k.auth_type().as_str()),
            client: self.client,
            client_ip: self.client_ip,
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            upstream_status: r.upstream_status,
        });
    }
}

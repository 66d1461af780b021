//! The admin listener: `/metrics`, `/healthz`, `/readyz` and `/status`, on its own address
//! (loopback by default), apart from client traffic.

use crate::limits::Limiter;
use crate::metrics::Metrics;
use crate::sync::{SnapshotStore, Source};
use crate::usage::UsageTracker;
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;
use std::sync::Arc;

pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub store: Arc<SnapshotStore>,
    /// Past this age the snapshot is not fresh enough to serve: not ready.
    pub max_staleness: Option<std::time::Duration>,
    pub config_path: String,
    /// SHA-256 of the config file's bytes, to tell which config a process runs.
    pub config_checksum: String,
    pub limiter: Option<Arc<Limiter>>,
    pub usage: Option<Arc<UsageTracker>>,
}

fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(body)
        .unwrap_or_default()
}

fn json_response(status: StatusCode, value: serde_json::Value) -> Response<Vec<u8>> {
    let mut body = value.to_string().into_bytes();
    body.push(b'\n');
    respond(status, "application/json", body)
}

impl Admin {
    fn ready(&self) -> bool {
        self.store.load().is_some() && self.store.fresh(self.max_staleness)
    }

    fn refresh_gauges(&self) {
        self.metrics.ready.set(i64::from(self.ready()));
        if let Some(l) = &self.limiter {
            self.metrics.limiter_active.set(l.active() as i64);
        }
        if let Some(u) = &self.usage {
            self.metrics.usage_tracked_keys.set(u.tracked() as i64);
        }
    }

    fn status(&self) -> serde_json::Value {
        let snapshot = self.store.load_full().map(|s| {
            json!({
                "version": s.version(),
                "source": self.store.source().map(Source::as_str),
                "age_seconds": self.store.age().map(|age| age.as_secs_f64()),
                "keys": s.key_count(),
                "workspaces": s.workspace_count(),
                "signing_keys": s.signing_key_count(),
                "clients": s.client_count(),
                "skipped_entries": s.skipped_count(),
            })
        });
        json!({
            "keygate_version": env!("CARGO_PKG_VERSION"),
            "ready": self.ready(),
            "snapshot": snapshot,
            "config": { "path": self.config_path, "sha256": self.config_checksum },
            "limiter": self.limiter.as_ref().map(|l| json!({
                "active_subjects": l.active(),
                // Where the limits are held: this host, or the fleet through Redis (and whether
                // Redis answers; while it does not, `on_outage` decides).
                "scope": if l.fleet().is_some() { "fleet" } else { "host" },
                "fleet": l.fleet().map(|f| json!({
                    "backend": "redis",
                    "state": if f.is_up() { "connected" } else { "degraded" },
                    "on_outage": f.config.on_outage.as_str(),
                    "local_share": f.config.local_share,
                })),
            })),
            "usage": self.usage.as_ref().map(|u| u.report()),
        })
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        if req.method != http::Method::GET && req.method != http::Method::HEAD {
            return json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"error": "Method Not Allowed", "message": "the admin endpoints answer GET"}),
            );
        }
        match req.uri.path() {
            "/metrics" => {
                self.refresh_gauges();
                respond(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    self.metrics.render(&self.store),
                )
            }
            "/healthz" => json_response(StatusCode::OK, json!({"status": "ok"})),
            "/readyz" => {
                if self.ready() {
                    json_response(StatusCode::OK, json!({"ready": true}))
                } else {
                    json_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        json!({"ready": false, "reason": if self.store.load().is_some() {
                            "the snapshot is older than snapshot.max_staleness"
                        } else {
                            "no snapshot loaded yet"
                        }}),
                    )
                }
            }
            "/status" => json_response(StatusCode::OK, self.status()),
            _ => json_response(
                StatusCode::NOT_FOUND,
                json!({"error": "Not Found", "message": "admin endpoints: /metrics /healthz /readyz /status"}),
            ),
        }
    }
}

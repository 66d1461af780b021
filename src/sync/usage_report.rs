//! Reporting per-key usage to the control plane: `POST /v1/usage` with the requests counted since
//! the last report, on an interval and once more at shutdown. A report that fails is kept and
//! sent with the next one, so counts are not lost to a control-plane outage.

use super::control_plane::http_client;
use crate::config::ControlPlaneConfig;
use crate::usage::UsageTracker;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::Duration;

pub struct UsageReporter {
    cfg: ControlPlaneConfig,
    client: reqwest::Client,
    usage: Arc<UsageTracker>,
    every: Duration,
}

impl UsageReporter {
    pub fn new(
        cfg: ControlPlaneConfig,
        usage: Arc<UsageTracker>,
        every: Duration,
    ) -> anyhow::Result<Self> {
        Ok(UsageReporter {
            client: http_client(&cfg)?,
            cfg,
            usage,
            every,
        })
    }

    pub async fn report(&self) {
        let batch = self.usage.take_unflushed();
        if batch.is_empty() {
            return;
        }
        let sent = self
            .client
            .post(format!("{}/v1/usage", self.cfg.url))
            .bearer_auth(self.cfg.token.expose())
            .timeout(self.cfg.timeout)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(serde_json::json!({ "usage": batch }).to_string())
            .send()
            .await;
        let failure = match sent {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => format!("HTTP {}", r.status().as_u16()),
            Err(e) => e.to_string(),
        };
        self.usage.restore(&batch);
        tracing::warn!(
            keys = batch.len(),
            "could not report key usage to the control plane ({failure}); it goes with the next report"
        );
    }
}

#[async_trait]
impl BackgroundService for UsageReporter {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(self.every);
        tick.tick().await;
        loop {
            // No report on shutdown here: Pingora cancels its runtimes' tasks after the grace
            // period, which could cut a report off after its counts were taken. The last report
            // runs in `main`, after the server has stopped (see `UsageReporter::final_report`).
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => self.report().await,
            }
        }
    }
}

impl UsageReporter {
    /// The report at exit, once the server has stopped: the last counts of a stopping process
    /// are the ones most easily lost.
    pub fn final_report(&self) {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(self.report()),
            Err(e) => tracing::warn!("no runtime for the last usage report: {e}"),
        }
    }
}

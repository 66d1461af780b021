//! The control-plane source: pull the snapshot, then long-poll for changes as deltas.
//!
//! One loop per process, in a Pingora background service. Each round asks for what changed since
//! the version in force (`?since=V&wait=30s` when watching): the control plane answers at once
//! when something changed — which is how a revocation reaches every keygate within a second —
//! or with 304 when the wait ends. A 410 (the version is too old for a delta) leads to a full
//! fetch. Any failure keeps the snapshot in force and retries with exponential backoff and
//! jitter; a snapshot that goes backwards, fails its signature or does not parse is rejected
//! and counted.

use super::{SnapshotStore, Source, cache::CacheWriter, install};
use crate::config::ControlPlaneConfig;
use crate::metrics::Metrics;
use crate::snapshot::{self, Format};
use async_trait::async_trait;
use keygate_protocol::signature::{SIGNATURE_HEADER, SignatureError, Verifier};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub const SOURCE: Source = Source::ControlPlane;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("the control plane refused the token (HTTP {0}); check snapshot.control_plane.token_*")]
    Unauthorized(u16),
    #[error("unexpected HTTP {0} from the control plane")]
    Status(u16),
    #[error("rejected: {0}")]
    Rejected(String),
}

/// What one round brought.
#[derive(Debug, PartialEq, Eq)]
enum Round {
    Changed,
    Unchanged,
    /// The delta base is gone (410): fetch the whole snapshot next.
    NeedFull,
}

pub struct ControlPlaneSource {
    cfg: ControlPlaneConfig,
    client: reqwest::Client,
    store: Arc<SnapshotStore>,
    metrics: Arc<Metrics>,
    verifier: Option<Verifier>,
    cache: Option<Arc<CacheWriter>>,
    need_full: AtomicBool,
}

impl ControlPlaneSource {
    pub fn new(
        cfg: ControlPlaneConfig,
        store: Arc<SnapshotStore>,
        metrics: Arc<Metrics>,
        cache: Option<Arc<CacheWriter>>,
    ) -> anyhow::Result<Self> {
        let verifier = cfg.public_key.clone();
        Ok(ControlPlaneSource {
            client: http_client(&cfg)?,
            cfg,
            store,
            metrics,
            verifier,
            cache,
            need_full: AtomicBool::new(true),
        })
    }

    /// One request to the control plane, applied.
    async fn round(&self) -> Result<Round, SyncError> {
        let current = self.store.load_full();
        let delta_from = match &current {
            Some(s) if !self.need_full.load(Ordering::Relaxed) => Some(s.version()),
            _ => None,
        };
        let watch = self.cfg.watch && delta_from.is_some();
        let mut url = format!("{}/v1/snapshot", self.cfg.url);
        if let Some(v) = delta_from {
            url.push_str(&format!("?since={v}"));
            if watch {
                url.push_str(&format!("&wait={}ms", self.cfg.wait.as_millis()));
            }
        }
        let mut req = self
            .client
            .get(&url)
            .bearer_auth(self.cfg.token.expose())
            .timeout(self.cfg.timeout + if watch { self.cfg.wait } else { Duration::ZERO });
        if let (Some(s), None) = (&current, delta_from) {
            req = req.header(http::header::IF_NONE_MATCH, format!("\"{}\"", s.version()));
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        self.metrics.sync_response(delta_from.is_some(), status);
        match status {
            200 => {}
            304 => {
                self.store.confirm();
                return Ok(Round::Unchanged);
            }
            410 => {
                self.need_full.store(true, Ordering::Relaxed);
                return Ok(Round::NeedFull);
            }
            401 | 403 => return Err(SyncError::Unauthorized(status)),
            _ => return Err(SyncError::Status(status)),
        }
        let signature = resp
            .headers()
            .get(SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp.bytes().await?;
        self.verify(&body, signature.as_deref())
            .map_err(|e| self.reject(e))?;
        let next = match (delta_from, &current) {
            (Some(_), Some(cur)) => {
                let delta = snapshot::parse_delta(&body, "control plane delta")
                    .map_err(|e| self.reject(e.to_string()))?;
                cur.apply(&delta).map_err(|e| self.reject(e.to_string()))?
            }
            _ => snapshot::parse(&body, Format::Json, "control plane snapshot")
                .map_err(|e| self.reject(e.to_string()))?,
        };
        if let Some(cur) = &current {
            if next.version() < cur.version() {
                return Err(self.reject(format!(
                    "version {} is older than the version in force ({}): a rollback",
                    next.version(),
                    cur.version()
                )));
            }
            if next.version() == cur.version() {
                self.need_full.store(false, Ordering::Relaxed);
                self.store.confirm();
                return Ok(Round::Unchanged);
            }
        }
        self.need_full.store(false, Ordering::Relaxed);
        let next = Arc::new(next);
        install(&self.store, &self.metrics, next.clone(), SOURCE);
        if let Some(cache) = &self.cache {
            cache.save(next);
        }
        Ok(Round::Changed)
    }

    fn verify(&self, body: &[u8], signature: Option<&str>) -> Result<(), String> {
        let Some(key) = &self.verifier else {
            return Ok(());
        };
        key.verify(body, signature).map_err(|e| match e {
            SignatureError::Missing => {
                "no signature, and snapshot.control_plane.public_key is set".to_string()
            }
            e => e.to_string(),
        })
    }

    fn reject(&self, why: impl Into<String>) -> SyncError {
        self.metrics.reload(SOURCE, false);
        SyncError::Rejected(why.into())
    }
}

/// The HTTP client for the control plane: its timeouts, and its private CA when configured.
pub fn http_client(cfg: &ControlPlaneConfig) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(cfg.timeout)
        .user_agent(concat!("keygate/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = &cfg.ca_file {
        let pem = std::fs::read(ca).map_err(|e| {
            anyhow::anyhow!("snapshot.control_plane.ca_file: {}: {e}", ca.display())
        })?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)? {
            builder = builder.add_root_certificate(cert);
        }
    }
    Ok(builder.build()?)
}

/// Exponential backoff with equal jitter: the ceiling is 0.25 s doubling with each failure up
/// to 30 s, and each pause is drawn uniformly from its upper half (half fixed, half random):
/// 0.125–0.25 s after the first failure, 15–30 s once at the cap.
struct Backoff(u32);

impl Backoff {
    fn next(&mut self) -> Duration {
        let ceiling = Duration::from_millis(250) * 2u32.saturating_pow(self.0.min(7));
        self.0 += 1;
        ceiling
            .min(Duration::from_secs(30))
            .mul_f64(0.5 + rand::random::<f64>() / 2.0)
    }
}

#[async_trait]
impl BackgroundService for ControlPlaneSource {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut backoff = Backoff(0);
        loop {
            let round = tokio::select! {
                _ = shutdown.changed() => return,
                r = self.round() => r,
            };
            let pause = match round {
                Ok(Round::NeedFull) => continue,
                Ok(Round::Changed | Round::Unchanged) => {
                    backoff = Backoff(0);
                    if self.cfg.watch {
                        continue;
                    }
                    self.cfg.poll_interval
                }
                Err(e) => {
                    if !matches!(e, SyncError::Rejected(_)) {
                        self.metrics.sync_error(SOURCE);
                    }
                    let serving = self.store.load().as_ref().map(|s| s.version());
                    tracing::warn!(
                        serving_version = serving,
                        "control-plane sync: {e}; keeping the snapshot in force"
                    );
                    backoff.next()
                }
            };
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ceiling of the pause after `failures` earlier failures: 0.25 s doubling, at most 30 s.
    fn ceiling(failures: u32) -> Duration {
        const DOUBLING_MS: [u64; 7] = [250, 500, 1_000, 2_000, 4_000, 8_000, 16_000];
        DOUBLING_MS
            .get(failures as usize)
            .map_or(Duration::from_secs(30), |&ms| Duration::from_millis(ms))
    }

    /// `n` pauses, each drawn from a fresh backoff that has seen `failures` failures.
    fn pauses(failures: u32, n: usize) -> Vec<Duration> {
        (0..n).map(|_| Backoff(failures).next()).collect()
    }

    #[test]
    fn each_pause_lies_in_the_upper_half_of_its_ceiling() {
        for failures in 0..12 {
            let c = ceiling(failures);
            for p in pauses(failures, 1_000) {
                assert!(c / 2 <= p && p <= c, "after {failures} failures: {p:?}");
            }
        }
    }

    #[test]
    fn the_first_pause_is_never_below_the_floor_of_125ms() {
        for p in pauses(0, 10_000) {
            assert!(Duration::from_millis(125) <= p, "{p:?}");
            assert!(p <= Duration::from_millis(250), "{p:?}");
        }
    }

    #[test]
    fn no_pause_exceeds_30s_however_many_failures() {
        for failures in [7, 8, 31, 32, 1_000, u32::MAX - 1] {
            for p in pauses(failures, 1_000) {
                let (floor, cap) = (Duration::from_secs(15), Duration::from_secs(30));
                assert!(floor <= p && p <= cap, "after {failures} failures: {p:?}");
            }
        }
        let mut backoff = Backoff(0);
        for _ in 0..100 {
            assert!(backoff.next() <= Duration::from_secs(30));
        }
    }

    #[test]
    fn successive_failures_walk_up_the_ceilings() {
        let mut backoff = Backoff(0);
        for failures in 0..12 {
            let (p, c) = (backoff.next(), ceiling(failures));
            assert!(c / 2 <= p && p <= c, "pause {failures}: {p:?}");
        }
    }

    #[test]
    fn pauses_grow_with_failures_until_the_cap() {
        // Until the cap the ranges abut ([c/2, c] then [c, 2c]): every pause after one more
        // failure is at least as long as any pause before it.
        for failures in 0..6 {
            let longest = pauses(failures, 1_000).into_iter().max().unwrap();
            let shortest = pauses(failures + 1, 1_000).into_iter().min().unwrap();
            assert!(
                longest <= shortest,
                "{failures}: {longest:?} > {shortest:?}"
            );
        }
    }

    #[test]
    fn the_jitter_spreads_pauses_over_the_whole_upper_half() {
        // Uniform on [c/2, c]: over 4,000 draws the extremes come within 2% of the bounds, the
        // mean is 3c/4 and a quarter of the draws fall in [c/2, 5c/8). The margins are more than
        // six standard deviations wide.
        const N: usize = 4_000;
        for failures in [0, 3, 7] {
            let c = ceiling(failures).as_secs_f64();
            let shares: Vec<f64> = pauses(failures, N)
                .iter()
                .map(|p| p.as_secs_f64() / c)
                .collect();
            let min = shares.iter().copied().fold(f64::INFINITY, f64::min);
            let max = shares.iter().copied().fold(0.0, f64::max);
            let mean = shares.iter().sum::<f64>() / N as f64;
            let low_quarter = shares.iter().filter(|&&s| s < 0.625).count() as f64 / N as f64;
            assert!(min < 0.52, "{failures}: min {min}");
            assert!(max > 0.98, "{failures}: max {max}");
            assert!((mean - 0.75).abs() < 0.015, "{failures}: mean {mean}");
            assert!(
                (low_quarter - 0.25).abs() < 0.05,
                "{failures}: {low_quarter}"
            );
        }
    }
}

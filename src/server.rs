//! Assembling the Pingora server from a validated config: snapshot source, proxy, listeners,
//! admin endpoints and housekeeping.

use crate::admin::Admin;
use crate::config::{Config, SourceConfig};
use crate::connections::Bounded;
use crate::gate::{Gate, RateLimits};
use crate::limits::fleet::FleetMetrics;
use crate::limits::{Clock, Fleet, Limiter, MonotonicClock};
use crate::metrics::Metrics;
use crate::proxy::{Forwarding, Keygate, Observers};
use crate::shield::{Shield, ShieldMetrics};
use crate::sync::cache::CacheWriter;
use crate::sync::control_plane::ControlPlaneSource;
use crate::sync::usage_report::UsageReporter;
use crate::sync::{self, SnapshotStore, Source, file::FileSource};
use crate::usage::UsageTracker;
use async_trait::async_trait;
use pingora::server::configuration::Opt;
use pingora::server::{ExecutionPhase, Server, ShutdownWatch};
use pingora::services::background::{BackgroundService, background_service};
use pingora::services::listening::Service;
use std::sync::Arc;
use std::time::Duration;

/// A server ready to `run`, and what must happen after it stops.
pub struct Built {
    pub server: Server,
    /// Reports the last usage to the control plane; call after the server has stopped.
    pub usage_reporter: Option<Arc<UsageReporter>>,
    /// What a graceful stop waits for before it exits.
    pub drain: Drain,
}

/// A graceful stop (SIGTERM) exits as soon as no client connection is open, rather than
/// sleeping out the whole grace period ([`crate::shutdown`]).
pub struct Drain {
    pub open_connections: crate::connections::OpenConnections,
    /// `server.grace_period_seconds`: past it, Pingora's own stop carries on.
    pub grace_period: Duration,
    /// Pingora's phases: the drain waits for its stop to start (taken by the first drain).
    pub phases: std::sync::Mutex<Option<tokio::sync::broadcast::Receiver<ExecutionPhase>>>,
}

/// Builds a server ready to `run`. The keys file is loaded here, so a broken one stops the start
/// with its error instead of a proxy that refuses everything.
pub fn build(config: Config, opt: Opt) -> anyhow::Result<Built> {
    let Config {
        path,
        checksum,
        listen,
        tls,
        keepalive_timeout,
        connection_limits,
        upstream,
        server: server_conf,
        snapshot,
        routes,
        unmatched,
        limits,
        fleet,
        observability,
        access_log,
        log_level: _,
        client_address,
        shield,
        tokens,
    } = config;

    let route_names: Vec<&str> = routes.routes().iter().map(|r| r.name()).collect();
    let metrics = Arc::new(Metrics::new(
        &route_names,
        observability.per_workspace_metrics,
    ));
    // Before anything is started: a pair that no longer loads stops the start with its reason.
    let tls = match tls {
        None => None,
        Some(config) => {
            let tls_metrics = crate::tls::TlsMetrics::register(metrics.registry());
            let (certificates, watch) = crate::tls::start(&config, tls_metrics)?;
            Some((config.addresses, certificates, watch))
        }
    };
    let store = SnapshotStore::new();
    let mut server = Server::new_with_opt_and_conf(opt, server_conf);
    let max_staleness = snapshot.max_staleness;
    let mut control_plane = None;
    match snapshot.source {
        SourceConfig::File {
            path,
            watch_interval,
        } => {
            let source = FileSource::new(path, watch_interval, store.clone(), metrics.clone());
            source.load_initial()?;
            server.add_service(background_service("keys file", source));
        }
        SourceConfig::ControlPlane(cp) => {
            control_plane = Some(cp.clone());
            let cache = snapshot.cache_file.map(CacheWriter::new);
            if let Some(cache) = &cache {
                serve_from_cache(cache, &store, &metrics);
            }
            let source = ControlPlaneSource::new(cp, store.clone(), metrics.clone(), cache)?;
            server.add_service(background_service("control-plane sync", source));
        }
    }

    let limits = limits.map(|config| {
        let clock: Arc<dyn Clock> = Arc::new(MonotonicClock::new());
        let limiter = match fleet {
            None => Limiter::new(clock),
            Some(fleet_config) => {
                let metrics = FleetMetrics::register(metrics.registry());
                let (fleet, worker) = Fleet::new(fleet_config, clock.clone(), metrics);
                server.add_service(background_service("fleet-wide limits", worker));
                Limiter::with_fleet(clock, fleet)
            }
        };
        let limiter = Arc::new(limiter);
        server.add_service(background_service(
            "idle limit eviction",
            Eviction {
                limiter: limiter.clone(),
                store: store.clone(),
            },
        ));
        RateLimits::new(limiter, config)
    });
    let limiter = limits.as_ref().map(|l| l.limiter.clone());
    let usage = observability
        .usage_max_keys
        .map(|max| Arc::new(UsageTracker::new(max)));
    let mut usage_reporter = None;
    if let (Some(cp), Some(usage)) = (&control_plane, &usage) {
        let reporter = Arc::new(UsageReporter::new(
            cp.clone(),
            usage.clone(),
            observability.usage_flush_interval,
        )?);
        usage_reporter = Some(reporter.clone());
        server.add_service(background_service("usage report", Reporting(reporter)));
    }

    if let Some(addr) = observability.admin {
        let admin = Admin {
            metrics: metrics.clone(),
            store: store.clone(),
            max_staleness,
            config_path: path.display().to_string(),
            config_checksum: checksum,
            limiter,
            usage: usage.clone(),
        };
        let mut service = Service::new("keygate admin".to_string(), admin);
        service.add_tcp(&addr.to_string());
        // Scrapes and probes are rare: one thread, whatever `server.threads` says.
        service.threads = Some(1);
        server.add_service(service);
    }

    let shield = shield.map(|config| {
        let metrics = ShieldMetrics::register(metrics.registry());
        Arc::new(Shield::new(config, Some(metrics)))
    });
    let tokens = tokens.map(|t| Arc::new(crate::tokens::TokenVerifier::new(&t)));
    let gate = Gate::new(routes, unmatched, limits)
        .with_shield(shield)
        .with_tokens(tokens);
    let connection_metrics = metrics.connections.clone();
    let proxy_header_refused = connection_metrics.proxy_header_refused.clone();
    let observers = Observers {
        metrics,
        usage,
        access_log,
    };
    let keygate = Keygate::new(
        store.clone(),
        gate,
        Forwarding {
            upstream,
            client_address,
        },
        keepalive_timeout,
        max_staleness,
        observers,
    );
    let mut proxy = pingora::proxy::http_proxy(&server.configuration, keygate);
    // HTTP/1 connections idle out through each response's keep-alive; an HTTP/2 connection
    // (TLS listeners) with no stream open is closed after the same time.
    let mut options = pingora::apps::HttpServerOptions::default();
    options.h2_idle_timeout = Some(keepalive_timeout);
    proxy.server_options = Some(options);
    let bounded = Bounded::new(proxy, connection_limits, connection_metrics);
    let open_connections = bounded.open_connections();
    let mut proxy = Service::new("keygate".to_string(), bounded);
    for addr in &listen {
        proxy.add_tcp(&addr.to_string());
    }
    if let Some((addresses, certificates, watch)) = tls {
        for addr in &addresses {
            proxy.add_tls_with_settings(
                &addr.to_string(),
                None,
                crate::tls::settings(&certificates)?,
            );
        }
        if connection_limits.proxy_protocol {
            proxy
                .endpoints()
                .set_pre_tls_callback(Arc::new(crate::proxy_protocol::BeforeTls {
                    timeout: connection_limits.head_timeout,
                    refused: proxy_header_refused,
                }));
        }
        server.add_service(background_service("TLS certificate watch", watch));
    }
    server.add_service(proxy);
    if let Some(notifier) = crate::notify::Notifier::from_env() {
        let readiness = crate::notify::Readiness {
            notifier,
            store: store.clone(),
            watchdog: crate::notify::watchdog_interval(),
            probe: if connection_limits.proxy_protocol {
                Vec::new()
            } else {
                listen.clone()
            },
        };
        server.add_service(background_service("systemd notifications", readiness));
    }
    // Only now, with the snapshot loaded: with `run -u` this is where the listening sockets of
    // the running keygate are taken over, and from then on requests arrive here.
    server.bootstrap();
    let phases = std::sync::Mutex::new(Some(server.watch_execution_phase()));
    let grace_period = Duration::from_secs(server.configuration.grace_period_seconds.unwrap_or(0));
    Ok(Built {
        server,
        usage_reporter,
        drain: Drain {
            open_connections,
            grace_period,
            phases,
        },
    })
}

/// The usage reporter as a background service; `main` keeps its own handle for the last report.
struct Reporting(Arc<UsageReporter>);

#[async_trait]
impl BackgroundService for Reporting {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.0.start(shutdown).await
    }
}

/// Until the control plane answers, serve the last snapshot it gave (fail closed without one).
/// A corrupt cache is reported and ignored.
fn serve_from_cache(cache: &CacheWriter, store: &SnapshotStore, metrics: &Metrics) {
    match cache.load() {
        Ok(snapshot) => {
            let written_ms = std::fs::metadata(cache.path())
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_millis() as u64);
            sync::install(store, metrics, snapshot, Source::DiskCache);
            // Its age is the file's: it was last confirmed when it was written.
            store.confirm_at(written_ms);
        }
        Err(crate::snapshot::SnapshotError::Read { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            tracing::info!(path = %cache.path().display(), "no snapshot cache yet");
        }
        Err(e) => {
            metrics.reload(Source::DiskCache, false);
            tracing::warn!("ignoring the snapshot cache: {e}");
        }
    }
}

/// Drops limiter state of workspaces idle for a whole window, so memory follows the active ones:
/// from the limiter, then from the caches of the snapshot's workspaces.
struct Eviction {
    limiter: Arc<Limiter>,
    store: Arc<SnapshotStore>,
}

#[async_trait]
impl BackgroundService for Eviction {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {
                    let evicted = self.limiter.evict_idle();
                    let forgotten = self.store.load_full().map_or(0, |snapshot| {
                        snapshot
                            .workspaces()
                            .filter(|w| w.limiter_state.forget_if_evicted())
                            .count()
                    });
                    tracing::debug!(
                        evicted,
                        forgotten,
                        active = self.limiter.active(),
                        "limiter state evicted"
                    );
                }
            }
        }
    }
}

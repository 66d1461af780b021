//! Assembling the Pingora server from a validated config: snapshot source, proxy, listeners,
//! admin endpoints and housekeeping.

use crate::admin::Admin;
use crate::config::Config;
use crate::gate::{Gate, RateLimits};
use crate::limits::{Limiter, MonotonicClock};
use crate::metrics::Metrics;
use crate::proxy::{Keygate, Observers};
use crate::sync::{self, file::FileSource};
use crate::usage::UsageTracker;
use async_trait::async_trait;
use pingora::server::configuration::Opt;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{BackgroundService, background_service};
use pingora::services::listening::Service;
use std::sync::Arc;
use std::time::Duration;

/// Builds a server ready to `run`. The keys file is loaded here, so a broken one stops the start
/// with its error instead of a proxy that refuses everything.
pub fn build(config: Config, opt: Opt) -> anyhow::Result<Server> {
    let Config {
        path,
        checksum,
        listen,
        keepalive_timeout,
        upstream,
        server: server_conf,
        snapshot,
        routes,
        unmatched,
        limits,
        observability,
        access_log,
        log_level: _,
    } = config;

    let route_names: Vec<&str> = routes.routes().iter().map(|r| r.name()).collect();
    let metrics = Arc::new(Metrics::new(
        &route_names,
        observability.per_workspace_metrics,
    ));
    let store = sync::new_store();
    let source = FileSource::new(
        snapshot.file,
        snapshot.watch_interval,
        store.clone(),
        metrics.clone(),
    );
    source.load_initial()?;

    let mut server = Server::new_with_opt_and_conf(opt, server_conf);
    server.bootstrap();
    server.add_service(background_service("keys file", source));

    let limits = limits.map(|config| {
        let limiter = Arc::new(Limiter::new(Arc::new(MonotonicClock::new())));
        server.add_service(background_service(
            "idle limit eviction",
            Eviction(limiter.clone()),
        ));
        RateLimits { limiter, config }
    });
    let limiter = limits.as_ref().map(|l| l.limiter.clone());
    let usage = observability
        .usage_max_keys
        .map(|max| Arc::new(UsageTracker::new(max)));

    if let Some(addr) = observability.admin {
        let admin = Admin {
            metrics: metrics.clone(),
            store: store.clone(),
            source: "file",
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

    let gate = Gate::new(routes, unmatched, limits);
    let observers = Observers {
        metrics,
        usage,
        access_log,
    };
    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        Keygate::new(store, gate, upstream, keepalive_timeout, observers),
        "keygate",
    );
    for addr in &listen {
        proxy.add_tcp(&addr.to_string());
    }
    server.add_service(proxy);
    Ok(server)
}

/// Drops limiter state of workspaces idle for a whole window, so memory follows the active ones.
struct Eviction(Arc<Limiter>);

#[async_trait]
impl BackgroundService for Eviction {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {
                    let evicted = self.0.evict_idle();
                    tracing::debug!(evicted, active = self.0.active(), "limiter state evicted");
                }
            }
        }
    }
}

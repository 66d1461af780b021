//! Assembling the Pingora server from a validated config: snapshot source, proxy, listeners.

use crate::config::Config;
use crate::gate::{Gate, RateLimits};
use crate::limits::{Limiter, MonotonicClock};
use crate::proxy::Keygate;
use crate::sync::{self, file::FileSource};
use async_trait::async_trait;
use pingora::server::Server;
use pingora::server::ShutdownWatch;
use pingora::server::configuration::Opt;
use pingora::services::background::{BackgroundService, background_service};
use std::sync::Arc;
use std::time::Duration;

/// Builds a server ready to `run`. The keys file is loaded here, so a broken one stops the start
/// with its error instead of a proxy that refuses everything.
pub fn build(config: Config, opt: Opt) -> anyhow::Result<Server> {
    let Config {
        path: _,
        listen,
        keepalive_timeout,
        upstream,
        server: server_conf,
        snapshot,
        routes,
        unmatched,
        limits,
        log_level: _,
    } = config;

    let store = sync::new_store();
    let source = FileSource::new(snapshot.file, snapshot.watch_interval, store.clone());
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
    let gate = Gate::new(routes, unmatched, limits);
    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        Keygate::new(store, gate, upstream, keepalive_timeout),
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

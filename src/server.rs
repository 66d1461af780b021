//! Assembling the Pingora server from a validated config: snapshot source, proxy, listeners.

use crate::config::Config;
use crate::gate::Gate;
use crate::proxy::Keygate;
use crate::sync::{self, file::FileSource};
use pingora::server::Server;
use pingora::server::configuration::Opt;
use pingora::services::background::background_service;

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
        log_level: _,
    } = config;

    let store = sync::new_store();
    let source = FileSource::new(snapshot.file, snapshot.watch_interval, store.clone());
    source.load_initial()?;

    let mut server = Server::new_with_opt_and_conf(opt, server_conf);
    server.bootstrap();
    server.add_service(background_service("keys file", source));

    let gate = Gate::new(routes, unmatched);
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

//! A bare Pingora proxy with keygate's settings and none of its work: the baseline that
//! `scripts/bench-load.sh` compares keygate against.
//!
//! It reads a keygate config file with keygate's own loader and takes from it exactly what
//! `keygate run` gives Pingora — the server settings (`server.threads`, `work_stealing`,
//! `listener_tasks_per_fd`, the upstream keep-alive pool, retries, grace periods), the upstream
//! address and its peer timeouts (`connect`, `read`, `write`, `idle`), and the client keep-alive
//! (`listen.keepalive_timeout`, set per request with `Session::set_keepalive` as keygate does).
//! Everything else is left out: no snapshot, no authentication, no route or limit, no header
//! rewriting, no metrics, no access log, no admin listener. Every request goes to the upstream.
//!
//! With `--tls-listen`, it also serves HTTPS as keygate's `listen.tls` does, from the same
//! certificate pair and with the same settings (TLS 1.2/1.3, ALPN h2 then http/1.1).
//!
//! Run: `cargo run --release --example bare_proxy -- -c conf/keygate.yaml --listen 127.0.0.1:8081`

use async_trait::async_trait;
use clap::Parser;
use keygate::config::{Config, UpstreamConfig};
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::Opt;
use std::net::SocketAddr;
use std::path::PathBuf;

/// As keygate's binary (src/main.rs): the same allocator, so that the baseline differs only in
/// the work keygate does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "A plain Pingora proxy with keygate's server, upstream and keep-alive settings")]
struct Args {
    /// The keygate config to take the settings from.
    #[arg(short, long, default_value = "conf/keygate.yaml")]
    config: PathBuf,
    /// Where to listen, instead of the config's `listen.addresses` (so that keygate can run on
    /// the same config at the same time).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// An HTTPS listener with the config's `listen.tls` certificate pair, instead of its
    /// `listen.tls.addresses`.
    #[arg(long)]
    tls_listen: Option<SocketAddr>,
}

struct BareProxy {
    upstream: UpstreamConfig,
    client_keepalive_secs: u64,
}

#[async_trait]
impl ProxyHttp for BareProxy {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        // As keygate: Pingora keeps idle client connections open forever unless told otherwise.
        session.set_keepalive(Some(self.client_keepalive_secs));
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(self.upstream.peer()))
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = Config::load(&args.config)?;
    let listen = match args.listen {
        Some(addr) => vec![addr],
        None => config.listen.clone(),
    };
    eprintln!(
        "bare proxy: listening on {listen:?}, upstream {}, {} threads",
        config.upstream.address, config.server.threads
    );
    // As `keygate run` without `-d` or `-u`.
    let mut server = Server::new_with_opt_and_conf(Opt::default(), config.server);
    server.bootstrap();
    let proxy = BareProxy {
        upstream: config.upstream,
        // As keygate's `Keygate::new`.
        client_keepalive_secs: config.keepalive_timeout.as_secs().max(1),
    };
    let mut service =
        pingora::proxy::http_proxy_service_with_name(&server.configuration, proxy, "bare proxy");
    for addr in &listen {
        service.add_tcp(&addr.to_string());
    }
    if let Some(addr) = args.tls_listen {
        let tls = config
            .tls
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("--tls-listen needs listen.tls in the config"))?;
        let metrics = keygate::tls::TlsMetrics::register(&prometheus::Registry::new());
        let (certificates, _watch) = keygate::tls::start(tls, metrics)?;
        service.add_tls_with_settings(
            &addr.to_string(),
            None,
            keygate::tls::settings(&certificates)?,
        );
    }
    server.add_service(service);
    server.run_forever()
}

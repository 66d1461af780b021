//! The reference control plane (`keygate-control-plane`): a small, real server that holds
//! workspaces and API keys in SQLite and serves them to keygate over the sync protocol.
//!
//! It is the reference for the protocol and the fixture keygate's own tests sync against, and
//! it is meant to be run: state survives restarts, writes are transactional and safe under
//! concurrent use, and a revocation reaches every long-polling keygate in well under a second.
//! See `docs/control-plane.md` and `docs/control-plane.openapi.yaml`.
//!
//! - [`store`]: SQLite (WAL) — the rows, the global version, the change log deltas come from.
//! - [`service`]: the Pingora `ServeHttp` app — routing, tokens, long-polls, caching.
//! - [`api`]: request bodies, validation, and the JSON written out.
//! - [`clients`]: OAuth clients and the keys access tokens are signed with; [`oauth`]: the
//!   token endpoint and their admin API.
//! - [`client_tokens`]: `POST /v1/client-tokens`, short-lived browser tokens minted for an API
//!   key.
//! - The optional Ed25519 signature of snapshot and delta bodies is `keygate_protocol::signature`.

pub mod api;
pub mod client_tokens;
pub mod clients;
pub mod oauth;
pub mod service;
pub mod store;
pub mod templates;

use async_trait::async_trait;
use keygate_protocol::signature::Signer;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{BackgroundService, background_service};
use pingora::services::listening::Service;
use service::{ControlPlane, TokenDigest};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use store::Store;
use tokio::sync::watch;

pub use store::DEFAULT_HISTORY;

/// The bearer token of the key-management API.
pub const ADMIN_TOKEN_ENV: &str = "KEYGATE_CP_ADMIN_TOKEN";
/// The bearer token keygate syncs with (and reports usage with).
pub const SYNC_TOKEN_ENV: &str = "KEYGATE_CP_SYNC_TOKEN";
/// Optional: the base64 of a 32-byte Ed25519 seed; snapshot and delta bodies are then signed.
pub const SIGNING_KEY_ENV: &str = "KEYGATE_CP_SIGNING_KEY";

/// Shortest token accepted.
const MIN_TOKEN_LEN: usize = 16;

/// Everything the control plane runs with.
pub struct Settings {
    pub db: PathBuf,
    pub listen: SocketAddr,
    pub admin_token: String,
    pub sync_token: String,
    pub signer: Option<Signer>,
    /// Versions of change log kept for deltas.
    pub history: u64,
    pub threads: usize,
    /// What `"template"` in a new key or client may name.
    pub templates: templates::ScopeTemplates,
    /// The claims and lifetime of the access tokens `POST /oauth/token` mints.
    pub tokens: oauth::TokenSettings,
}

impl Settings {
    /// Settings with the tokens and the signing key read from the environment.
    pub fn from_env(
        db: PathBuf,
        listen: SocketAddr,
        history: u64,
        threads: usize,
    ) -> anyhow::Result<Settings> {
        let admin_token = token_from_env(ADMIN_TOKEN_ENV)?;
        let sync_token = token_from_env(SYNC_TOKEN_ENV)?;
        anyhow::ensure!(
            admin_token != sync_token,
            "{ADMIN_TOKEN_ENV} and {SYNC_TOKEN_ENV} must differ: a keygate host must not be able to manage keys"
        );
        anyhow::ensure!(history >= 1, "--history must be at least 1");
        anyhow::ensure!(
            (1..=256).contains(&threads),
            "--threads must be between 1 and 256"
        );
        Ok(Settings {
            db,
            listen,
            admin_token,
            sync_token,
            signer: signer_from_env()?,
            history,
            threads,
            templates: templates::ScopeTemplates::default(),
            tokens: oauth::TokenSettings::default(),
        })
    }
}

fn token_from_env(name: &str) -> anyhow::Result<String> {
    let token = std::env::var(name).map_err(|_| {
        anyhow::anyhow!(
            "{name} is not set; it holds a bearer token (at least {MIN_TOKEN_LEN} characters)"
        )
    })?;
    anyhow::ensure!(
        token.len() >= MIN_TOKEN_LEN,
        "{name} must be at least {MIN_TOKEN_LEN} characters"
    );
    anyhow::ensure!(
        token.bytes().all(|b| b.is_ascii_graphic()),
        "{name} may hold only printable ASCII without spaces"
    );
    Ok(token)
}

/// The signer from [`SIGNING_KEY_ENV`], when set.
pub fn signer_from_env() -> anyhow::Result<Option<Signer>> {
    match std::env::var(SIGNING_KEY_ENV) {
        Ok(seed) => Signer::from_base64(&seed)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("{SIGNING_KEY_ENV}: {e}")),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(e) => Err(anyhow::anyhow!("{SIGNING_KEY_ENV}: {e}")),
    }
}

/// `keygate-control-plane --print-public-key`: the base64 public key for keygate's config.
pub fn public_key_from_env() -> anyhow::Result<String> {
    signer_from_env()?
        .map(|s| s.public_key_base64())
        .ok_or_else(|| anyhow::anyhow!("{SIGNING_KEY_ENV} is not set"))
}

/// Answers held long-polls (304) as soon as a graceful stop begins, so that stopping does not
/// wait for them.
struct ReleaseLongPolls(watch::Sender<bool>);

#[async_trait]
impl BackgroundService for ReleaseLongPolls {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let _ = shutdown.wait_for(|stop| *stop).await;
        self.0.send_replace(true);
    }
}

/// Opens the database and assembles the Pingora server, ready to run.
pub fn build(settings: Settings) -> anyhow::Result<Server> {
    settings.tokens.check()?;
    let store = Arc::new(Store::open(&settings.db, settings.history)?);
    // Tokens can be minted from the first request on.
    store
        .ensure_signing_key()
        .map_err(|e| anyhow::anyhow!("creating the first signing key: {}", e.message()))?;
    // Bind once here for a clear error (Pingora binds again when it starts).
    std::net::TcpListener::bind(settings.listen)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", settings.listen))?;

    let conf = ServerConf {
        threads: settings.threads,
        // Held long-polls are released at once on SIGTERM; in-flight writes take milliseconds.
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(2),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();

    let (release, released) = watch::channel(false);
    server.add_service(background_service(
        "release long-polls",
        ReleaseLongPolls(release),
    ));
    tracing::info!(
        db = %settings.db.display(),
        listen = %settings.listen,
        version = store.current_version(),
        signing = settings.signer.is_some(),
        "keygate control plane starting"
    );
    let app = ControlPlane::new(
        store,
        TokenDigest::of(&settings.admin_token),
        TokenDigest::of(&settings.sync_token),
        settings.signer,
        settings.templates,
        settings.tokens,
        released,
    );
    let mut service = Service::new("keygate control plane".to_string(), app);
    service.add_tcp(&settings.listen.to_string());
    server.add_service(service);
    Ok(server)
}

/// Runs the control plane until SIGTERM (graceful) or SIGINT.
pub fn run(settings: Settings) -> anyhow::Result<()> {
    build(settings)?.run_forever()
}

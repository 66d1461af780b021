//! `keygate-control-plane`: the reference control plane, or with `--print-public-key` the key
//! keygate verifies its signatures with.

use clap::Parser;
use keygate_control_plane as control_plane;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Run the reference control plane: workspaces and API keys in SQLite, served to keygate over
/// the sync protocol. Tokens come from KEYGATE_CP_ADMIN_TOKEN and KEYGATE_CP_SYNC_TOKEN;
/// KEYGATE_CP_SIGNING_KEY (optional) signs what keygate pulls.
#[derive(Debug, Parser)]
#[command(name = "keygate-control-plane", version)]
struct Args {
    /// The SQLite database file; created when missing.
    #[arg(long, required_unless_present = "print_public_key")]
    db: Option<PathBuf>,
    /// The address to serve on, e.g. 127.0.0.1:7070.
    #[arg(long, required_unless_present = "print_public_key")]
    listen: Option<SocketAddr>,
    /// Versions of change history kept: `?since=V` deltas work for V this close to the current
    /// version; older ones get 410 and keygate fetches the full snapshot.
    #[arg(long, default_value_t = control_plane::DEFAULT_HISTORY)]
    history: u64,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// A JSON object of scope-template name to scopes, adding to (or redefining) the built-in
    /// read-only, full-access, booking-management and product-catalog.
    #[arg(long, value_name = "FILE")]
    scope_templates: Option<PathBuf>,
    /// The `iss` of the tokens it mints, by POST /oauth/token and POST /v1/client-tokens
    /// (keygate's tokens.issuer).
    #[arg(long, default_value = "keygate-control-plane")]
    token_issuer: String,
    /// The `aud` of the tokens it mints (keygate's tokens.audience).
    #[arg(long, default_value = "keygate")]
    token_audience: String,
    /// How long an access token lives: 1m to 24h.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    token_lifetime: std::time::Duration,
    /// Print the base64 Ed25519 public key of KEYGATE_CP_SIGNING_KEY, for keygate's config,
    /// and exit.
    #[arg(long, conflicts_with_all = ["db", "listen"])]
    print_public_key: bool,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    if args.print_public_key {
        println!("{}", control_plane::public_key_from_env()?);
        return Ok(());
    }
    let (Some(db), Some(listen)) = (args.db, args.listen) else {
        anyhow::bail!("--db and --listen are required");
    };
    let _log_guard = keygate::logging::init("info", None);
    let mut settings = control_plane::Settings::from_env(db, listen, args.history, args.threads)?;
    settings.tokens = control_plane::oauth::TokenSettings {
        issuer: args.token_issuer,
        audience: args.token_audience,
        lifetime: args.token_lifetime,
    };
    if let Some(file) = &args.scope_templates {
        settings.templates = control_plane::templates::ScopeTemplates::load(file)?;
    }
    control_plane::run(settings)
}

//! The command line: `run`, `check`, and the `keys` helpers.

use crate::config::{Config, SourceConfig};
use crate::scopes::KeyScopes;
use crate::secret::{self, Env, KeyHash};
use crate::snapshot::{self, KeyDoc, KeyStatus};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::io::Read;
use std::path::PathBuf;

pub const DEFAULT_CONFIG: &str = "conf/keygate.yaml";

#[derive(Debug, Parser)]
#[command(
    name = "keygate",
    version,
    about = "API-key gateway sidecar built on Pingora"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy.
    Run(RunArgs),
    /// Validate a config file and the keys file it points to, then exit.
    Check {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Make and hash API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[arg(short, long, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Run in the background.
    #[arg(short, long)]
    pub daemon: bool,
    /// Take over the listening sockets of a running keygate (graceful upgrade).
    #[arg(short, long)]
    pub upgrade: bool,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Print a new secret once, and the keys-file entry (with its hash) to add.
    New(NewKey),
    /// Print the SHA-256 hash of a secret read from standard input.
    Hash,
}

#[derive(Debug, Args)]
pub struct NewKey {
    /// The workspace the key belongs to.
    #[arg(
        long,
        required_unless_present = "internal",
        conflicts_with = "internal"
    )]
    pub workspace: Option<String>,
    /// A platform-internal key that names its workspace per request in x-workspace-id.
    #[arg(long)]
    pub internal: bool,
    #[arg(long, value_enum)]
    pub env: EnvArg,
    /// Comma-separated scopes, e.g. products:read,orders:*. Omitted: no scopes (the key opens
    /// only routes with `scopes: []`); `*` grants everything.
    #[arg(long, value_delimiter = ',')]
    pub scopes: Vec<String>,
    #[arg(long, default_value = "")]
    pub name: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum EnvArg {
    Live,
    Test,
}

/// `keygate check`: prints a summary and returns the process exit code. Skipped entries fail
/// the check: the server would start, but without them.
pub fn check(config_path: &std::path::Path) -> i32 {
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let path = match &config.snapshot.source {
        SourceConfig::File { path, .. } => path.clone(),
        SourceConfig::ControlPlane(cp) => {
            println!(
                "{}: ok: {} routes; snapshot from the control plane at {} (not contacted by check)",
                config_path.display(),
                config.routes.routes().len(),
                cp.url
            );
            return 0;
        }
    };
    let snap = match snapshot::load_file(&path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    println!(
        "{}: ok: {} routes; snapshot {} version {}: {} keys, {} workspaces, {} signing keys, {} clients",
        config_path.display(),
        config.routes.routes().len(),
        path.display(),
        snap.version(),
        snap.key_count(),
        snap.workspace_count(),
        snap.signing_key_count(),
        snap.client_count(),
    );
    if snap.skipped_count() == 0 {
        return 0;
    }
    for s in snap.skipped() {
        eprintln!("error: {}: skipped {s}", path.display());
    }
    eprintln!("error: {} entries would be skipped", snap.skipped_count());
    1
}

/// `keygate keys new`: the secret goes to stdout once; keygate keeps only its hash.
pub fn new_key(args: NewKey) -> anyhow::Result<()> {
    let env = match args.env {
        EnvArg::Live => Env::Live,
        EnvArg::Test => Env::Test,
    };
    KeyScopes::parse(Some(&args.scopes))?;
    let secret = secret::generate(env);
    let doc = KeyDoc {
        id: secret::generate_key_id(),
        name: args.name,
        hash: KeyHash::of(&secret).to_hex(),
        workspace: args.workspace,
        internal: args.internal,
        scopes: Some(Some(args.scopes)),
        status: KeyStatus::Active,
        expires_at: None,
        restrictions: None,
    };
    let entry = serde_yaml::to_string(&[doc])?;
    println!("secret (shown once; keygate stores only its hash):\n  {secret}\n");
    println!("add this entry under `keys:` in the keys file:\n{entry}");
    Ok(())
}

/// `keygate keys hash`: one secret on stdin, trailing newline ignored.
pub fn hash_key() -> anyhow::Result<()> {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input)?;
    let secret = input.trim_end_matches(['\r', '\n']);
    anyhow::ensure!(!secret.is_empty(), "no secret on standard input");
    if secret::parse_token(secret).is_none() {
        eprintln!(
            "warning: this is not shaped like a keygate secret (sk_live_kg_/sk_test_kg_ with a valid checksum, or sk_live_/sk_test_ and 32-128 letters or digits); requests with it will be refused"
        );
    }
    println!("{}", KeyHash::of(secret).to_hex());
    Ok(())
}

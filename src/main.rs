//! keygate's entry point: parse the command line, set up logging, and hand over.

use clap::Parser;
use keygate::cli::{self, Cli, Command, KeysCommand};
use keygate::config::Config;
use pingora::server::configuration::Opt;
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Check { config } => cli::check(&config),
        Command::Keys(KeysCommand::New(args)) => report(cli::new_key(args)),
        Command::Keys(KeysCommand::Hash) => report(cli::hash_key()),
        Command::Run(args) => report(run(args)),
    };
    std::process::exit(code);
}

fn report(result: anyhow::Result<()>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

fn run(args: cli::RunArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    // RUST_LOG, when set, wins over the config's level.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{},pingora=warn", config.log_level)));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let opt = Opt {
        upgrade: args.upgrade,
        daemon: args.daemon,
        ..Opt::default()
    };
    let server = keygate::server::build(config, opt)?;
    tracing::info!(config = %args.config.display(), "keygate starting");
    server.run_forever()
}

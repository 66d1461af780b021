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

/// `RUST_LOG`, when set, wins over the config's level — except that Pingora's own targets stay at
/// `info` or quieter: at `debug` and `trace` they print whole request headers, `Authorization`
/// included, and keygate's logs must never hold a key.
fn init_logging(level: &str) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    let wanted = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},pingora=warn")));
    let no_header_dumps = Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target("pingora", LevelFilter::INFO);
    let output = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    tracing_subscriber::registry()
        .with(wanted)
        .with(no_header_dumps)
        .with(output)
        .init();
}

fn run(args: cli::RunArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    init_logging(&config.log_level);
    let opt = Opt {
        upgrade: args.upgrade,
        daemon: args.daemon,
        ..Opt::default()
    };
    let server = keygate::server::build(config, opt)?;
    tracing::info!(config = %args.config.display(), "keygate starting");
    server.run_forever()
}

//! keygate's entry point: parse the command line, set up logging, and hand over.

use clap::Parser;
use keygate::cli::{self, Cli, Command, KeysCommand};
use keygate::config::{AccessLogConfig, Config};
use keygate::observe::ACCESS_TARGET;
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
        Command::ControlPlane(args) => report(control_plane(args)),
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

/// Two streams. Application logs go to stderr as text: `RUST_LOG`, when set, wins over the
/// config's level — except that Pingora's own targets stay at `info` or quieter, since at `debug`
/// and `trace` they print whole request headers, `Authorization` included. Access-log lines go
/// to stdout as JSON, at the access log's own level, whatever `RUST_LOG` says.
fn init_logging(level: &str, access_log: Option<&AccessLogConfig>) {
    use tracing_subscriber::filter::{FilterExt, LevelFilter, Targets, filter_fn};
    use tracing_subscriber::prelude::*;
    let wanted = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},pingora=warn")));
    let no_header_dumps = Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target("pingora", LevelFilter::INFO);
    let not_access = filter_fn(|meta| meta.target() != ACCESS_TARGET);
    let app = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(wanted.and(no_header_dumps).and(not_access));
    let access = access_log.map(|a| {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stdout)
            .with_filter(Targets::new().with_target(ACCESS_TARGET, a.level))
    });
    tracing_subscriber::registry().with(app).with(access).init();
}

fn run(args: cli::RunArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    init_logging(&config.log_level, config.access_log.as_ref());
    let opt = Opt {
        upgrade: args.upgrade,
        daemon: args.daemon,
        ..Opt::default()
    };
    let built = keygate::server::build(config, opt)?;
    tracing::info!(config = %args.config.display(), "keygate starting");
    // `run` returns once a shutdown has finished (SIGTERM, SIGQUIT); SIGINT exits at once.
    built.server.run(pingora::server::RunArgs::default());
    if let Some(reporter) = built.usage_reporter {
        reporter.final_report();
    }
    tracing::info!("keygate stopped");
    Ok(())
}

/// `keygate control-plane`: the reference control plane, or with `--print-public-key` the key
/// keygate verifies its signatures with.
fn control_plane(args: cli::ControlPlaneArgs) -> anyhow::Result<()> {
    use keygate::control_plane;
    if args.print_public_key {
        println!("{}", control_plane::public_key_from_env()?);
        return Ok(());
    }
    let (Some(db), Some(listen)) = (args.db, args.listen) else {
        anyhow::bail!("--db and --listen are required");
    };
    init_logging("info", None);
    let settings = control_plane::Settings::from_env(db, listen, args.history, args.threads)?;
    control_plane::run(settings)
}

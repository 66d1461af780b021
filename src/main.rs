//! keygate's entry point: parse the command line, set up logging, and hand over.

use clap::Parser;
use keygate::cli::{self, Cli, Command, KeysCommand};
use keygate::config::Config;
use keygate::logging::LogGuard;
use keygate::shutdown::Signals;
use keygate::sync::usage_report::UsageReporter;
use keygate::upgrade::Upgrade;
use pingora::server::configuration::Opt;
use std::sync::Arc;

/// See Cargo.toml: Pingora allocates on every request, and mimalloc does so in far fewer
/// instructions than glibc's malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    keygate::upgrade::hold_early_reloads();
    let config = Config::load(&args.config)?;
    // Held until the server has stopped: flushing it writes out the queued access-log lines.
    let log_guard = Arc::new(keygate::logging::init(
        &config.log_level,
        config.access_log.as_ref(),
    ));
    let opt = Opt {
        upgrade: args.upgrade,
        daemon: args.daemon,
        ..Opt::default()
    };
    // Resolved now: after a package upgrade the path names the new binary, which SIGHUP runs.
    let upgrade = Upgrade::for_this_process(&args.config, &config.server.upgrade_sock)
        .map_err(|e| tracing::warn!("SIGHUP will not reload: cannot find this binary ({e})"))
        .ok();
    let built = keygate::server::build(config, opt)?;
    tracing::info!(config = %args.config.display(), "keygate starting");
    // Run once, by whichever stop path gets there first.
    let last_steps = {
        let reporter = built.usage_reporter.clone();
        let log_guard = log_guard.clone();
        let once = Arc::new(std::sync::Once::new());
        move || once.call_once(|| finish(reporter.as_deref(), &log_guard))
    };
    // `run` returns once a graceful stop has finished (SIGTERM past its grace period, SIGQUIT);
    // on SIGINT, and on SIGTERM once no connection is open, the signal watch runs the last steps
    // itself and exits.
    built.server.run(pingora::server::RunArgs {
        shutdown_signal: Box::new(Signals::new(
            Box::new(last_steps.clone()),
            Some(built.drain),
            upgrade,
        )),
    });
    last_steps();
    Ok(())
}

/// What every stop ends with, once nothing is served any more.
fn finish(usage_reporter: Option<&UsageReporter>, log_guard: &LogGuard) {
    if let Some(reporter) = usage_reporter {
        reporter.final_report();
    }
    tracing::info!("keygate stopped");
    log_guard.flush();
}

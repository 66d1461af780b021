//! Reload and upgrade on SIGHUP, without a failed request: a new keygate process (the binary now
//! on disk, with the config now on disk) takes over the listening sockets through Pingora's
//! socket hand-over, and this one drains.
//!
//! The steps, from this process's side:
//! 1. The config file is loaded and validated as at start; if it is refused, nothing changes
//!    and the reason goes to the log. (The keys file is the new process's to load: if it cannot,
//!    it exits, and that too changes nothing.)
//! 2. `keygate run -u -c CONFIG` is started. It loads its snapshot first and only then listens on
//!    `server.upgrade_sock` for the sockets: it never takes a request it cannot decide.
//! 3. Once that socket appears (or the new process exits: then nothing changes), Pingora's
//!    graceful upgrade runs: the sockets are sent, both processes accept for 5 s, then this one
//!    stops accepting and closes each connection after its current response. From the moment
//!    the hand-over starts, every response this process sends says `Connection: close`, so that
//!    clients move their kept-alive connections to the new process while this one still answers
//!    them, instead of meeting a close between two requests.
//!
//! What is lost: the local limiter's counts and the usage counts not yet reported start afresh
//! in the new process (a workspace may get up to one more window's worth of requests on this
//! host during a reload), as after a restart. Fleet-wide counts are Redis's and carry on; a
//! lease the old process does not return is charged in full at its expiry.

use crate::config::Config;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long the new process may take to load its config and snapshot before the reload is given
/// up (a 1,000,000-key snapshot loads in about 3 s).
const TAKEOVER_DEADLINE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(10);

/// Set once this process is handing its sockets over, or stopping: responses then close their
/// connection (see the module's comment).
static DRAINING: AtomicBool = AtomicBool::new(false);

/// Whether this process is on its way out (reload, upgrade or stop).
pub fn draining() -> bool {
    DRAINING.load(Ordering::Relaxed)
}

pub fn start_draining() {
    DRAINING.store(true, Ordering::Relaxed);
}

/// Set by a SIGHUP that came before the signal watch runs (see [`hold_early_reloads`]).
static EARLY_RELOAD: std::sync::OnceLock<std::sync::Arc<AtomicBool>> = std::sync::OnceLock::new();

/// Keeps a SIGHUP from killing this process before its signal watch runs, and remembers it.
///
/// SIGHUP's default action ends a process. A reload names the new process the service's main
/// one as soon as it waits for the sockets, so a second `systemctl reload` right after the first
/// sends SIGHUP to a process still loading: without this, it would die, and the old one, its
/// sockets already promised, would stop serving as well. Call first thing.
pub fn hold_early_reloads() {
    let flag = EARLY_RELOAD.get_or_init(Default::default);
    if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGHUP, flag.clone()) {
        tracing::warn!("cannot hold SIGHUP while starting ({e}); a reload then would stop keygate");
    }
}

/// Whether a SIGHUP came before the signal watch ran (and forgets it).
pub fn early_reload_requested() -> bool {
    EARLY_RELOAD
        .get()
        .is_some_and(|flag| flag.swap(false, Ordering::Relaxed))
}

/// What a reload starts the new process with.
#[derive(Debug, Clone)]
pub struct Upgrade {
    /// The binary's path as this process was started (not `/proc/self/exe`): after a package
    /// upgrade it names the new binary.
    pub exe: PathBuf,
    pub config: PathBuf,
    /// `server.upgrade_sock` of the running config: where the new process waits for the sockets.
    pub upgrade_sock: PathBuf,
}

impl Upgrade {
    /// For this process: its binary's path, resolved now, before any upgrade replaces the file.
    pub fn for_this_process(config: &Path, upgrade_sock: &str) -> std::io::Result<Upgrade> {
        Ok(Upgrade {
            exe: std::env::current_exe()?,
            // The new process may start in another directory than this one did.
            config: std::path::absolute(config)?,
            upgrade_sock: PathBuf::from(upgrade_sock),
        })
    }

    /// Steps 1 and 2: checks the config, starts the new process and waits until it is ready to
    /// take the sockets. `Err` says why nothing changed.
    pub fn start_successor(&self) -> Result<Child, String> {
        let config = Config::load(&self.config)
            .map_err(|e| format!("the config is refused, keeping the running one: {e:#}"))?;
        if config.server.upgrade_sock != self.upgrade_sock.to_string_lossy() {
            return Err(format!(
                "server.upgrade_sock changed ({} to {}): the new process would wait for the \
                 sockets where this one does not send them; restart instead",
                self.upgrade_sock.display(),
                config.server.upgrade_sock
            ));
        }
        // Its appearance is the new process's signal that it is ready: a stale one must go.
        match std::fs::remove_file(&self.upgrade_sock) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(format!(
                    "cannot remove the stale {}: {e}",
                    self.upgrade_sock.display()
                ));
            }
        }
        let mut child = Command::new(&self.exe)
            .args(["run", "--upgrade", "-c"])
            .arg(&self.config)
            // The watchdog follows the main process: the new one becomes it (`MAINPID=`).
            .env_remove("WATCHDOG_PID")
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.exe.display()))?;
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "the new process exited before taking over ({status}); see its log above"
                ));
            }
            if self.upgrade_sock.exists() {
                return Ok(child);
            }
            if started.elapsed() > TAKEOVER_DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "the new process was not ready to take over within {TAKEOVER_DEADLINE:?}"
                ));
            }
            std::thread::sleep(POLL);
        }
    }
}

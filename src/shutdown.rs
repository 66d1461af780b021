//! What each signal does. SIGHUP reloads: a new keygate process with the config and binary now
//! on disk takes over the listening sockets ([`crate::upgrade`]), and this one drains and exits
//! as after SIGTERM. SIGQUIT (the hand-over alone, for a new process an operator started with
//! `run -u`) goes to Pingora unchanged. SIGINT, the
//! "stop now" signal, keygate finishes itself: it runs the same last steps as every other stop
//! (the final usage report, writing out queued access-log lines) and exits, without waiting for
//! in-flight requests.
//!
//! SIGTERM (graceful stop) goes to Pingora, which stops accepting and closes each kept-alive
//! connection after its current response, then sleeps out its whole grace period whatever is
//! left (5 s measured on an idle keygate). So keygate also watches the client connections it
//! counts ([`crate::connections`]): once none is open it runs the last steps and exits, and a
//! drained keygate stops in about [`SETTLE`] instead of the grace period. If connections are
//! still open when the grace period ends, Pingora's own stop carries on as before.
//!
//! Why not Pingora's own fast shutdown: it tears down each service's runtimes while their accept
//! loops still run. With `work_stealing: false` a service runs one single-threaded runtime per
//! thread, and a listener made on one of them may be polled by another; once the first is torn
//! down, the second gets "A Tokio 1.x context was found, but it is being shutdown" from every
//! `accept`, at once and for ever, and never gets to its own shutdown. The process spun at 100% CPU
//! and did not exit in about 1 run in 10 with two threads.

use crate::server::Drain;
use crate::upgrade::{self, Upgrade};
use async_trait::async_trait;
use pingora::server::{ExecutionPhase, ShutdownSignal, ShutdownSignalWatch};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::signal::unix::{SignalKind, signal};

/// How long after Pingora starts its stop the drain starts watching: time for its listeners to
/// stop, so that no connection is accepted after keygate has seen none open.
pub const SETTLE: Duration = Duration::from_millis(100);
/// How often the drain looks at the open connections.
const POLL: Duration = Duration::from_millis(10);

/// The last steps of a stop, run once.
pub type Finish = Box<dyn FnOnce() + Send>;

/// The [`ShutdownSignalWatch`] keygate runs Pingora with.
pub struct Signals {
    finish: Arc<Mutex<Option<Finish>>>,
    drain: Option<Drain>,
    /// What SIGHUP starts; `None`: SIGHUP is ignored, with a warning.
    upgrade: Option<Upgrade>,
}

impl Signals {
    /// `finish` runs on SIGINT, or once drained after SIGTERM or a reload, right before the
    /// process exits.
    pub fn new(finish: Finish, drain: Option<Drain>, upgrade: Option<Upgrade>) -> Self {
        Self {
            finish: Arc::new(Mutex::new(Some(finish))),
            drain,
            upgrade,
        }
    }

    fn exit_now(&self) -> ! {
        exit_with(&self.finish)
    }

    /// After SIGTERM or a hand-over: exits once no client connection is open, if that happens
    /// within the grace period of Pingora's stop. On a plain thread: Pingora's stop may block the
    /// runtime this watch runs on.
    fn drain_then_exit(&self) {
        upgrade::start_draining();
        let Some(drain) = &self.drain else { return };
        let (open, grace) = (drain.open_connections.clone(), drain.grace_period);
        let phases = drain
            .phases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let finish = self.finish.clone();
        let spawned = std::thread::Builder::new()
            .name("keygate-drain".into())
            .spawn(move || {
                // After a hand-over both processes accept for a while: only once Pingora has
                // stopped this one's listeners does "no connection open" mean "done".
                if let Some(mut phases) = phases {
                    use tokio::sync::broadcast::error::RecvError;
                    loop {
                        match phases.blocking_recv() {
                            Ok(ExecutionPhase::ShutdownStarted) | Err(RecvError::Closed) => break,
                            Ok(_) | Err(RecvError::Lagged(_)) => {}
                        }
                    }
                }
                let started = Instant::now();
                std::thread::sleep(SETTLE);
                while started.elapsed() < grace + SETTLE {
                    if open.count() == 0 {
                        tracing::info!(
                            after_ms = started.elapsed().as_millis() as u64,
                            "no client connection open: exiting"
                        );
                        exit_with(&finish);
                    }
                    std::thread::sleep(POLL);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot watch the drain ({e}); the stop takes the whole grace period");
        }
    }
}

/// Runs the last steps (once, whoever calls first) and exits.
fn exit_with(finish: &Mutex<Option<Finish>>) -> ! {
    {
        let finish = finish.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(finish) = finish {
            // On a plain thread: `finish` may start a runtime of its own, which tokio refuses
            // inside the one this watch runs on.
            if std::thread::spawn(finish).join().is_err() {
                tracing::error!("the last steps before exit failed");
            }
        }
    }
    std::process::exit(0)
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut quit), Ok(mut terminate), Ok(mut interrupt), Ok(mut hangup)) = (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            // Only fails if the process may not handle signals at all; wait for nothing rather
            // than stop a running proxy.
            tracing::error!("cannot watch for stop signals; stop keygate with SIGKILL");
            return std::future::pending().await;
        };
        // A reload asked for while this process was still starting (see
        // `upgrade::hold_early_reloads`) is carried out first.
        let mut reload_asked = upgrade::early_reload_requested();
        loop {
            if std::mem::take(&mut reload_asked) && self.reload().await {
                self.drain_then_exit();
                return ShutdownSignal::GracefulUpgrade;
            }
            tokio::select! {
                _ = quit.recv() => {
                    self.drain_then_exit();
                    return ShutdownSignal::GracefulUpgrade;
                }
                _ = terminate.recv() => {
                    crate::notify::notify("STOPPING=1");
                    self.drain_then_exit();
                    return ShutdownSignal::GracefulTerminate;
                }
                _ = interrupt.recv() => {
                    tracing::info!("SIGINT received, exiting now");
                    self.exit_now()
                }
                _ = hangup.recv() => reload_asked = true,
            }
        }
    }
}

impl Signals {
    /// SIGHUP: starts the new process; `true` once it waits for the sockets. On `false` this
    /// process serves on, unchanged, and the log says why.
    async fn reload(&self) -> bool {
        let Some(upgrade) = self.upgrade.clone() else {
            tracing::warn!("SIGHUP received, but this keygate cannot reload; restart it instead");
            return false;
        };
        tracing::info!(config = %upgrade.config.display(), binary = %upgrade.exe.display(),
            "SIGHUP received: reloading");
        crate::notify::notify("RELOADING=1");
        // It polls for the new process for up to a minute: off the runtime.
        let started = tokio::task::spawn_blocking(move || upgrade.start_successor())
            .await
            .map_err(|e| e.to_string())
            .and_then(|started| started);
        match started {
            Ok(child) => {
                tracing::info!(
                    pid = child.id(),
                    "the new keygate is taking over the sockets"
                );
                // Said by this process, the main one, so that the unit can keep
                // `NotifyAccess=main`: from now on systemd hears the new process (its READY=1
                // comes after the hand-over, so after this).
                crate::notify::notify(&format!("MAINPID={}", child.id()));
                true
            }
            Err(why) => {
                tracing::error!("reload failed: {why}");
                crate::notify::notify("READY=1\nSTATUS=reload failed; serving the previous config");
                false
            }
        }
    }
}

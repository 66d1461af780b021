//! What each stop signal does. SIGQUIT (graceful upgrade) goes to Pingora unchanged. SIGINT, the
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
use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::signal::unix::{SignalKind, signal};

/// How long after SIGTERM the drain starts watching: time for Pingora to stop its listeners, so
/// that no connection is accepted after keygate has seen none open.
pub const SETTLE: Duration = Duration::from_millis(100);
/// How often the drain looks at the open connections.
const POLL: Duration = Duration::from_millis(10);

/// The last steps of a stop, run once.
pub type Finish = Box<dyn FnOnce() + Send>;

/// The [`ShutdownSignalWatch`] keygate runs Pingora with.
pub struct Signals {
    finish: Arc<Mutex<Option<Finish>>>,
    drain: Option<Drain>,
}

impl Signals {
    /// `finish` runs on SIGINT, or once drained after SIGTERM, right before the process exits.
    pub fn new(finish: Finish, drain: Option<Drain>) -> Self {
        Self {
            finish: Arc::new(Mutex::new(Some(finish))),
            drain,
        }
    }

    fn exit_now(&self) -> ! {
        exit_with(&self.finish)
    }

    /// After SIGTERM: exits once no client connection is open, if that happens within the grace
    /// period. On a plain thread: Pingora's stop may block the runtime this watch runs on.
    fn drain_then_exit(&self) {
        crate::notify::notify("STOPPING=1");
        let Some(drain) = &self.drain else { return };
        let (open, grace) = (drain.open_connections.clone(), drain.grace_period);
        let finish = self.finish.clone();
        let started = Instant::now();
        let spawned = std::thread::Builder::new()
            .name("keygate-drain".into())
            .spawn(move || {
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
        let (Ok(mut quit), Ok(mut terminate), Ok(mut interrupt)) = (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            // Only fails if the process may not handle signals at all; wait for nothing rather
            // than stop a running proxy.
            tracing::error!("cannot watch for stop signals; stop keygate with SIGKILL");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = quit.recv() => ShutdownSignal::GracefulUpgrade,
            _ = terminate.recv() => {
                self.drain_then_exit();
                ShutdownSignal::GracefulTerminate
            }
            _ = interrupt.recv() => {
                tracing::info!("SIGINT received, exiting now");
                self.exit_now()
            }
        }
    }
}

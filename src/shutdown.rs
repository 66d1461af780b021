//! What each stop signal does. SIGTERM (graceful stop) and SIGQUIT (graceful upgrade) go to
//! Pingora unchanged. SIGINT, the "stop now" signal, keygate finishes itself: it runs the same
//! last steps as every other stop (the final usage report, writing out queued access-log lines)
//! and exits, without waiting for in-flight requests.
//!
//! Why not Pingora's own fast shutdown: it tears down each service's runtimes while their accept
//! loops still run. With `work_stealing: false` a service runs one single-threaded runtime per
//! thread, and a listener made on one of them may be polled by another; once the first is torn
//! down, the second gets "A Tokio 1.x context was found, but it is being shutdown" from every
//! `accept`, at once and for ever, and never gets to its own shutdown. The process spun at 100% CPU
//! and did not exit in about 1 run in 10 with two threads.

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use std::sync::Mutex;
use tokio::signal::unix::{SignalKind, signal};

/// The last steps of a stop, run once.
pub type Finish = Box<dyn FnOnce() + Send>;

/// The [`ShutdownSignalWatch`] keygate runs Pingora with.
pub struct Signals {
    finish: Mutex<Option<Finish>>,
}

impl Signals {
    /// `finish` runs on SIGINT, right before the process exits.
    pub fn new(finish: Finish) -> Self {
        Self {
            finish: Mutex::new(Some(finish)),
        }
    }

    fn exit_now(&self) -> ! {
        let finish = self.finish.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(finish) = finish {
            // On a plain thread: `finish` may start a runtime of its own, which tokio refuses
            // inside the one this watch runs on.
            if std::thread::spawn(finish).join().is_err() {
                tracing::error!("the last steps before exit failed");
            }
        }
        std::process::exit(0)
    }
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
            _ = terminate.recv() => ShutdownSignal::GracefulTerminate,
            _ = interrupt.recv() => {
                tracing::info!("SIGINT received, exiting now");
                self.exit_now()
            }
        }
    }
}

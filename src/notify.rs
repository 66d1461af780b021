//! systemd's service notifications (sd_notify(3)), for `Type=notify` units: `READY=1` once a
//! snapshot is loaded (so `systemctl start` returns when keygate can decide requests, and units
//! ordered after it start then), `WATCHDOG=1` at half the unit's `WatchdogSec=`, and
//! `STOPPING=1` on SIGTERM. Without `NOTIFY_SOCKET` in the environment (not under systemd, or
//! `Type=simple`), nothing is sent.
//!
//! The protocol is one datagram of `KEY=value` lines to the socket `NOTIFY_SOCKET` names (a path,
//! or with a leading `@` an abstract name): a few lines of std, not a dependency.

use crate::sync::SnapshotStore;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::time::Duration;

/// Where systemd listens for this service's notifications.
pub struct Notifier {
    socket: UnixDatagram,
    to: SocketAddr,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`; `None` when it is unset or unusable.
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let path = path.to_str()?;
        let to = match path.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name.as_bytes()).ok()?
            }
            None => SocketAddr::from_pathname(path).ok()?,
        };
        let socket = UnixDatagram::unbound().ok()?;
        Some(Notifier { socket, to })
    }

    /// Sends `state` (`READY=1`, …); a failure is logged, never fatal.
    pub fn send(&self, state: &str) {
        if let Err(e) = self.socket.send_to_addr(state.as_bytes(), &self.to) {
            tracing::warn!("cannot notify systemd ({state:?}): {e}");
        }
    }
}

/// `WATCHDOG_USEC`, when it is meant for this process (`WATCHDOG_PID` unset or ours).
pub fn watchdog_interval() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID")
        && pid.to_str()?.parse::<u32>().ok()? != std::process::id()
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Sends `state` if keygate runs under a notifying service manager.
pub fn notify(state: &str) {
    if let Some(n) = Notifier::from_env() {
        n.send(state);
    }
}

/// The background service that says when keygate is ready and keeps the watchdog fed.
pub struct Readiness {
    pub notifier: Notifier,
    pub store: Arc<SnapshotStore>,
    pub watchdog: Option<Duration>,
    /// The proxy listeners, connected to before `READY=1`: Pingora binds them as its services
    /// start, alongside this one. Empty on PROXY-protocol listeners, where a probe would be
    /// counted as a refused connection.
    pub probe: Vec<std::net::SocketAddr>,
}

impl Readiness {
    fn listening(&self) -> bool {
        self.probe.iter().all(|addr| {
            let mut addr = *addr;
            if addr.ip().is_unspecified() {
                addr.set_ip(match addr {
                    std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                    std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                });
            }
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
        })
    }
}

/// How often readiness is looked for before the first snapshot.
const READY_POLL: Duration = Duration::from_millis(20);

#[async_trait]
impl BackgroundService for Readiness {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let version = loop {
            if let Some(snapshot) = self.store.load_full()
                && self.listening()
            {
                break snapshot.version();
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(READY_POLL) => {}
            }
        };
        // `MAINPID`: after a reload the new process is the service's main process.
        self.notifier.send(&format!(
            "MAINPID={}\nREADY=1\nSTATUS=serving snapshot version {version}",
            std::process::id()
        ));
        let Some(watchdog) = self.watchdog else {
            return;
        };
        // At half the watchdog's interval, as sd_watchdog_enabled(3) advises.
        let mut interval = tokio::time::interval(watchdog / 2);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = interval.tick() => self.notifier.send("WATCHDOG=1"),
            }
        }
    }
}

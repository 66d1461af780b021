//! A real Prometheus server, started for one test, scraping one metrics endpoint every second:
//! the end-to-end check that what keygate exports is what Prometheus ingests and queries.
//!
//! Needs the `prometheus` binary on `PATH` (`scripts/install-deps.sh` installs Debian's
//! `prometheus` package). Without it the calling test fails; it does not skip. Talks to
//! Prometheus with this crate's raw HTTP/1.1 client: no HTTP client crate.
//!
//! Prometheus cannot bind port 0 and report its port: it is started on a [`free_port`], and
//! on another one should that be taken first.

use crate::http::{Connection, Request, free_port};
use serde_json::Value;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// How long to wait for Prometheus to start, and then for a query to return something.
pub const WAIT: Duration = Duration::from_secs(30);

const POLL: Duration = Duration::from_millis(200);
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts Prometheus scraping `http://{metrics_addr}/metrics` every second (job `keygate`),
/// polls the instant query `query` until its result vector is non-empty (at most [`WAIT`]), and
/// returns that `data.result` array. Panics, with Prometheus's target status and log, if the
/// result stays empty. Prometheus is stopped and its files removed before this returns.
pub fn scrape_with_real_prometheus(metrics_addr: SocketAddr, query: &str) -> Value {
    let prometheus = Prometheus::start(metrics_addr);
    prometheus.query_until_nonempty(query)
}

/// A running `prometheus` child process with its own config and storage in a temporary
/// directory. Dropping it kills the process and removes the directory.
pub struct Prometheus {
    child: Child,
    dir: PathBuf,
    /// Where its HTTP API listens.
    pub addr: SocketAddr,
}

impl Prometheus {
    /// Starts Prometheus on a free loopback port and waits until it reports itself ready.
    pub fn start(metrics_addr: SocketAddr) -> Prometheus {
        let mut dir = fresh_dir();
        let config = dir.join("prometheus.yml");
        fs::write(
            &config,
            [
                "global:",
                "  scrape_interval: 1s",
                "  scrape_timeout: 1s",
                "  evaluation_interval: 1s",
                "scrape_configs:",
                "  - job_name: keygate",
                "    metrics_path: /metrics",
                "    static_configs:",
                &format!("      - targets: [\"{metrics_addr}\"]\n"),
            ]
            .join("\n"),
        )
        .expect("write prometheus.yml");
        // The port is free when chosen but could be taken before Prometheus binds it: retry.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let log = fs::File::create(dir.join("prometheus.log")).expect("create prometheus.log");
            let child = Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| {
                    let _ = fs::remove_dir_all(&dir);
                    panic!(
                        "cannot run `prometheus` ({e}); install it with scripts/install-deps.sh \
                         (Debian package `prometheus`)"
                    )
                });
            let mut prometheus = Prometheus { child, dir, addr };
            match prometheus.wait_ready() {
                Ok(()) => return prometheus,
                Err(e) if attempt < 3 && e.contains("address already in use") => {
                    // Dropping would delete the directory that holds the config: take it back.
                    dir = std::mem::take(&mut prometheus.dir);
                    let _ = prometheus.child.kill();
                    let _ = prometheus.child.wait();
                    let _ = fs::remove_dir_all(dir.join("data"));
                }
                Err(e) => panic!("prometheus did not start: {e}"),
            }
        }
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll prometheus") {
                return Err(format!("it exited ({status}); its log:\n{}", self.log()));
            }
            if let Ok((200, _)) = http_get(self.addr, "/-/ready") {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "not ready after {WAIT:?}; its log:\n{}",
                    self.log()
                ));
            }
            thread::sleep(POLL);
        }
    }

    /// One instant query: the whole JSON answer (`status`, `data`, or `error`).
    pub fn query(&self, query: &str) -> Result<Value, String> {
        let target = format!("/api/v1/query?query={}", url_encode(query));
        let (status, body) = http_get(self.addr, &target)?;
        serde_json::from_str(&body).map_err(|e| format!("HTTP {status}, not JSON ({e}): {body}"))
    }

    /// Polls `query` until its result vector is non-empty and returns that `data.result` array;
    /// panics after [`WAIT`] with the last answer, the scrape target's state and the log.
    pub fn query_until_nonempty(&self, query: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let answer = self.query(query);
            if let Ok(json) = &answer {
                if json["status"] == "error" {
                    panic!("Prometheus rejected the query {query:?}: {json}");
                }
                let result = &json["data"]["result"];
                if result.as_array().is_some_and(|r| !r.is_empty()) {
                    return result.clone();
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "query {query:?} still empty after {WAIT:?}\nlast answer: {answer:?}\n\
                     scrape targets: {}\nprometheus log:\n{}",
                    self.targets(),
                    self.log()
                );
            }
            thread::sleep(POLL);
        }
    }

    /// The scrape targets' health and last error, for failure messages.
    pub fn targets(&self) -> String {
        match http_get(self.addr, "/api/v1/targets") {
            Ok((_, body)) => match serde_json::from_str::<Value>(&body) {
                Ok(json) => json["data"]["activeTargets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| {
                        format!(
                            "{} health={} lastError={:?}",
                            t["scrapeUrl"], t["health"], t["lastError"]
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
                Err(_) => body,
            },
            Err(e) => e,
        }
    }

    /// Prometheus's own log (its standard error) so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.dir.as_os_str().is_empty() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A new empty directory under the system temporary directory, unique to this process and call.
fn fresh_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("keygate-prometheus-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create a temporary directory");
    dir
}

/// Percent-encodes everything but RFC 3986's unreserved characters, for a query-string value.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `GET target` over a fresh connection (`Connection: close`): the status and the body, with
/// chunked transfer-encoding undone.
pub fn http_get(addr: SocketAddr, target: &str) -> Result<(u16, String), String> {
    let host = addr.to_string();
    let request = Request::get(target)
        .header("Host", &host)
        .header("Accept", "application/json")
        .header("Connection", "close");
    let response = Connection::open_with_timeout(addr, IO_TIMEOUT)
        .and_then(|mut c| c.send(&request))
        .map_err(|e| format!("GET http://{addr}{target}: {e}"))?;
    Ok((response.status, response.text()))
}

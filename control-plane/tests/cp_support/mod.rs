//! Helpers for `tests/control_plane.rs`: the real `keygate-control-plane` binary on a temporary
//! SQLite database, and a tiny HTTP/1.1 client over std `TcpStream`.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_keygate-control-plane");
pub const ADMIN_TOKEN: &str = "cp-test-admin-token-0123456789";
pub const SYNC_TOKEN: &str = "cp-test-sync-token-0123456789";

/// A response, read to the end of the connection.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {:?}",
                self.status,
                self.text()
            )
        })
    }
}

/// One request on its own connection (`Connection: close`). Every response but a 304 must carry
/// a `Content-Length` equal to its body's length: checked here, for every test.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(90)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: cp.test\r\nConnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    if let Some(b) = body {
        bytes.extend_from_slice(b);
    }
    s.write_all(&bytes)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    Ok(parse(&raw))
}

fn parse(raw: &[u8]) -> Resp {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {:?}", String::from_utf8_lossy(raw)));
    let head = std::str::from_utf8(&raw[..end]).expect("headers are not UTF-8");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let body = raw[end + 4..].to_vec();
    let resp = Resp {
        status,
        headers,
        body,
    };
    if status == 304 {
        assert!(resp.body.is_empty(), "a 304 with a body");
    } else {
        let len: usize = resp
            .header("content-length")
            .unwrap_or_else(|| panic!("status {status} without Content-Length: {resp:?}"))
            .parse()
            .unwrap();
        assert_eq!(len, resp.body.len(), "Content-Length differs from the body");
    }
    resp
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What a control plane is started with.
#[derive(Clone, Default)]
pub struct Options {
    pub signing_key: Option<String>,
    pub history: Option<u64>,
}

/// A running `keygate-control-plane`; killed when dropped.
pub struct Cp {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub db: PathBuf,
    log: PathBuf,
    options: Options,
}

impl Cp {
    pub fn start() -> Cp {
        Cp::start_with(Options::default())
    }

    pub fn start_with(options: Options) -> Cp {
        let dir = tempfile::tempdir().unwrap();
        let mut cp = Cp {
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            db: dir.path().join("cp.sqlite"),
            log: dir.path().join("cp.log"),
            dir,
            options,
        };
        // A free port can be taken by another test between the probe and the bind: retry.
        for _ in 0..5 {
            cp.addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            if cp.spawn() {
                return cp;
            }
        }
        panic!("the control plane did not start:\n{}", cp.log());
    }

    /// Starts the process on `self.addr` and `self.db`; false when it exited instead.
    fn spawn(&mut self) -> bool {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("--db")
            .arg(&self.db)
            .arg("--listen")
            .arg(self.addr.to_string())
            .env("KEYGATE_CP_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("KEYGATE_CP_SYNC_TOKEN", SYNC_TOKEN)
            .env_remove("KEYGATE_CP_SIGNING_KEY")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(h) = self.options.history {
            cmd.arg("--history").arg(h.to_string());
        }
        if let Some(k) = &self.options.signing_key {
            cmd.env("KEYGATE_CP_SIGNING_KEY", k);
        }
        let mut child = cmd.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                return false;
            }
            if let Ok(r) = request(self.addr, "GET", "/healthz", &[], None) {
                if r.status == 200 {
                    self.child = Some(child);
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// SIGTERM, then wait for the process to exit.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(15);
        while child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "the control plane did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same address and database.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill first");
        assert!(
            self.spawn(),
            "the control plane did not restart:\n{}",
            self.log()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Resp {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        let body = body.map(|b| b.to_string());
        request(
            self.addr,
            method,
            path,
            &headers,
            body.as_deref().map(str::as_bytes),
        )
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        self.call(method, path, Some(ADMIN_TOKEN), body.as_ref())
    }

    /// A sync-token GET with extra headers.
    pub fn sync_get(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        let auth = format!("Bearer {SYNC_TOKEN}");
        let mut all = vec![("Authorization", auth.as_str())];
        all.extend_from_slice(headers);
        request(self.addr, "GET", path, &all, None).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// The full snapshot as JSON (200 expected).
    pub fn snapshot(&self) -> Value {
        let r = self.sync_get("/v1/snapshot", &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }

    pub fn version(&self) -> u64 {
        self.snapshot()["version"].as_u64().unwrap()
    }

    /// Creates a workspace; returns the version that holds it.
    pub fn create_workspace(&self, id: &str, kind: &str) -> u64 {
        let r = self.admin(
            "POST",
            "/v1/workspaces",
            Some(serde_json::json!({"id": id, "type": kind})),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        r.json()["version"].as_u64().unwrap()
    }

    /// Creates a key from `body`; returns `(version, data)` (data holds `id` and `secret`).
    pub fn create_key(&self, body: Value) -> (u64, Value) {
        let r = self.admin("POST", "/v1/api-keys", Some(body));
        assert_eq!(r.status, 201, "{}", r.text());
        let v = r.json();
        (v["version"].as_u64().unwrap(), v["data"].clone())
    }
}

impl Drop for Cp {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("control plane log:\n{}", self.log());
        }
    }
}

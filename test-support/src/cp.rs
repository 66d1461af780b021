//! The reference control plane as a test fixture: the real `keygate-control-plane` binary on a
//! temporary SQLite database, driven through its HTTP API.
//!
//! This crate does not depend on the control plane (which would pull SQLite into the sidecar's
//! tests): the binary's path is given. The control plane's own tests pass
//! `env!("CARGO_BIN_EXE_keygate-control-plane")`; keygate's tests find it next to the `keygate`
//! binary with [`sibling_binary`].
//!
//! The control plane cannot bind port 0 and report its port, so the fixture picks one with
//! [`free_port`] and, should another process take it first, starts again on another (unless the
//! port was given).

use crate::http::{self, Response, free_port};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `KEYGATE_CP_ADMIN_TOKEN` of every fixture.
pub const ADMIN_TOKEN: &str = "cp-test-admin-token-0123456789";
/// `KEYGATE_CP_SYNC_TOKEN` of every fixture: what keygate presents.
pub const SYNC_TOKEN: &str = "cp-test-sync-token-0123456789";

/// How long a start (or restart) may take before the fixture gives up on it.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// Starts on a port the fixture chose, each on another port when the previous was taken.
const START_ATTEMPTS: usize = 5;

/// `keygate-control-plane` in the directory of `binary` (the target directory of the same
/// `cargo test`, whose default members include the control plane).
///
/// # Panics
/// When it is not there.
pub fn sibling_binary(binary: impl AsRef<Path>) -> PathBuf {
    let path = binary.as_ref().with_file_name("keygate-control-plane");
    assert!(
        path.exists(),
        "{} is missing: run the tests from the workspace root with `cargo test --release`, which builds it",
        path.display()
    );
    path
}

/// How to start a [`ControlPlane`]: [`ControlPlane::builder`], then [`Builder::start`].
#[derive(Clone, Debug)]
pub struct Builder {
    binary: PathBuf,
    port: Option<u16>,
    signing_key: Option<String>,
    history: Option<u64>,
    log_filter: Option<String>,
    scope_templates: Option<PathBuf>,
    token_issuer: Option<String>,
    token_audience: Option<String>,
    token_lifetime: Option<String>,
}

impl Builder {
    /// Listen on this port of 127.0.0.1 (one chosen earlier, e.g. already in a keygate config)
    /// instead of a free one. Then only one start is tried.
    pub fn port(mut self, port: u16) -> Builder {
        self.port = Some(port);
        self
    }

    /// `KEYGATE_CP_SIGNING_KEY`: a base64 Ed25519 seed. Unset by default.
    pub fn signing_key(mut self, seed: impl Into<String>) -> Builder {
        self.signing_key = Some(seed.into());
        self
    }

    /// `--history`: versions of change history kept.
    pub fn history(mut self, versions: u64) -> Builder {
        self.history = Some(versions);
        self
    }

    /// `--scope-templates`: a JSON file of scope templates.
    pub fn scope_templates(mut self, file: impl Into<PathBuf>) -> Builder {
        self.scope_templates = Some(file.into());
        self
    }

    /// `--token-issuer`: the `iss` of the access tokens it mints.
    pub fn token_issuer(mut self, issuer: impl Into<String>) -> Builder {
        self.token_issuer = Some(issuer.into());
        self
    }

    /// `--token-audience`: the `aud` of the access tokens it mints.
    pub fn token_audience(mut self, audience: impl Into<String>) -> Builder {
        self.token_audience = Some(audience.into());
        self
    }

    /// `--token-lifetime` (`"10m"`): how long its access tokens live.
    pub fn token_lifetime(mut self, lifetime: impl Into<String>) -> Builder {
        self.token_lifetime = Some(lifetime.into());
        self
    }

    /// `RUST_LOG` for the process; unset by default (the control plane logs at `info`).
    pub fn log_filter(mut self, filter: impl Into<String>) -> Builder {
        self.log_filter = Some(filter.into());
        self
    }

    /// Starts the control plane on a fresh database and waits until `/healthz` answers 200.
    ///
    /// # Panics
    /// When it does not start, with its log.
    pub fn start(self) -> ControlPlane {
        let dir = tempfile::tempdir().expect("a temporary directory for the control plane");
        let mut cp = ControlPlane {
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], self.port.unwrap_or(0))),
            db: dir.path().join("cp.sqlite"),
            log: dir.path().join("cp.log"),
            dir,
            options: self,
        };
        let attempts = if cp.options.port.is_some() {
            1
        } else {
            START_ATTEMPTS
        };
        for _ in 0..attempts {
            if cp.options.port.is_none() {
                cp.addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            }
            if cp.spawn() {
                return cp;
            }
        }
        panic!(
            "the control plane did not start on {}:\n{}",
            cp.addr,
            cp.log()
        );
    }
}

/// A running `keygate-control-plane` with its own temporary directory (database and log);
/// killed when dropped, its log printed if the test is failing.
pub struct ControlPlane {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// The SQLite file (its `-wal` and `-shm` files beside it).
    pub db: PathBuf,
    log: PathBuf,
    dir: tempfile::TempDir,
    options: Builder,
}

impl ControlPlane {
    /// A control plane run from `binary`, with default options.
    pub fn builder(binary: impl Into<PathBuf>) -> Builder {
        Builder {
            binary: binary.into(),
            port: None,
            signing_key: None,
            history: None,
            log_filter: None,
            scope_templates: None,
            token_issuer: None,
            token_audience: None,
            token_lifetime: None,
        }
    }

    /// `ControlPlane::builder(binary).start()`.
    pub fn start(binary: impl Into<PathBuf>) -> ControlPlane {
        Self::builder(binary).start()
    }

    /// Starts the process on `self.addr` and `self.db`; false when it exited or did not
    /// become healthy in time.
    fn spawn(&mut self) -> bool {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the control plane's log");
        let mut cmd = Command::new(&self.options.binary);
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
        if let Some(file) = &self.options.scope_templates {
            cmd.arg("--scope-templates").arg(file);
        }
        for (flag, value) in [
            ("--token-issuer", &self.options.token_issuer),
            ("--token-audience", &self.options.token_audience),
            ("--token-lifetime", &self.options.token_lifetime),
        ] {
            if let Some(v) = value {
                cmd.arg(flag).arg(v);
            }
        }
        if let Some(h) = self.options.history {
            cmd.arg("--history").arg(h.to_string());
        }
        if let Some(k) = &self.options.signing_key {
            cmd.env("KEYGATE_CP_SIGNING_KEY", k);
        }
        if let Some(f) = &self.options.log_filter {
            cmd.env("RUST_LOG", f);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e}",
                self.options.binary.as_path().display()
            )
        });
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if child.try_wait().expect("poll the control plane").is_some() {
                return false;
            }
            if let Ok(r) = http::try_request(self.addr, "GET", "/healthz", &[], None)
                && r.status == 200
            {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// SIGTERM, then waits (up to 15 s) for the process to exit.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success());
        let deadline = Instant::now() + START_TIMEOUT;
        while child.try_wait().expect("poll the control plane").is_none() {
            assert!(
                Instant::now() < deadline,
                "the control plane did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no chance to flush anything, or to end its connections.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same address and database (after [`stop`](Self::stop) or
    /// [`kill`](Self::kill)).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill first");
        assert!(
            self.spawn(),
            "the control plane did not restart:\n{}",
            self.log()
        );
    }

    /// Its log (standard error) so far, across restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its temporary directory (database and log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Any request, on its own connection. Every response but a 304 must carry a
    /// `Content-Length` equal to its body's length, and no `Transfer-Encoding`: checked here,
    /// for every test.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Response {
        let mut all = headers.to_vec();
        if body.is_some() {
            all.push(("Content-Type", "application/json"));
        }
        let r = http::request(self.addr, method, path, &all, body);
        if r.status == 304 {
            assert!(r.body.is_empty(), "a 304 with a body");
        } else {
            assert_eq!(
                r.header("transfer-encoding"),
                None,
                "{method} {path}: {r:?}"
            );
            let len: usize = r
                .header("content-length")
                .unwrap_or_else(|| panic!("status {} without Content-Length: {r:?}", r.status))
                .parse()
                .expect("a numeric Content-Length");
            assert_eq!(len, r.body.len(), "Content-Length differs from the body");
        }
        r
    }

    /// A request with `token` as its bearer token (none: no `Authorization`) and `body` as
    /// its JSON body.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Response {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        let body = body.map(Value::to_string);
        self.request(method, path, &headers, body.as_deref().map(str::as_bytes))
    }

    /// A request to the admin API (admin token).
    pub fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Response {
        self.call(method, path, Some(ADMIN_TOKEN), body.as_ref())
    }

    /// A GET on the sync API (sync token) with extra headers.
    pub fn sync_get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        let auth = format!("Bearer {SYNC_TOKEN}");
        let mut all = vec![("Authorization", auth.as_str())];
        all.extend_from_slice(headers);
        self.request("GET", path, &all, None)
    }

    /// The full snapshot as JSON (200 expected).
    pub fn snapshot(&self) -> Value {
        let r = self.sync_get("/v1/snapshot", &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }

    /// The current version.
    pub fn version(&self) -> u64 {
        self.snapshot()["version"]
            .as_u64()
            .expect("a numeric version")
    }

    /// Creates a workspace (201 expected); returns the version that holds it.
    pub fn create_workspace(&self, id: &str, kind: &str) -> u64 {
        let r = self.admin(
            "POST",
            "/v1/workspaces",
            Some(json!({"id": id, "type": kind})),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        r.json()["version"].as_u64().expect("a numeric version")
    }

    /// Creates a key from `body` (201 expected); returns `(version, data)` (data holds `id` and
    /// `secret`).
    pub fn create_key(&self, body: Value) -> (u64, Value) {
        let r = self.admin("POST", "/v1/api-keys", Some(body));
        assert_eq!(r.status, 201, "{}", r.text());
        let v = r.json();
        (
            v["version"].as_u64().expect("a numeric version"),
            v["data"].clone(),
        )
    }

    /// Creates a key named `test` in `workspace` for environment `env` with `scopes`; returns
    /// `(id, secret)`.
    pub fn create_key_in(&self, workspace: &str, env: &str, scopes: &[&str]) -> (String, String) {
        let (_, data) = self.create_key(
            json!({"name": "test", "workspace": workspace, "environment": env, "scopes": scopes}),
        );
        let field = |name: &str| {
            data[name]
                .as_str()
                .unwrap_or_else(|| panic!("no {name} in {data}"))
                .to_owned()
        };
        (field("id"), field("secret"))
    }

    /// Revokes a key (200 expected).
    pub fn revoke(&self, id: &str) {
        let r = self.admin("DELETE", &format!("/v1/api-keys/{id}"), None);
        assert_eq!(r.status, 200, "{}", r.text());
    }

    /// `GET /v1/api-keys` (200 expected): `{"data": [...]}`.
    pub fn list_keys(&self) -> Value {
        let r = self.admin("GET", "/v1/api-keys", None);
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("control plane log:\n{}", self.log());
        }
    }
}

//! The reference control plane as a test fixture: the real `keygate-control-plane` binary on a
//! temporary SQLite database, driven through its HTTP API.
#![allow(dead_code)]

use super::http::{self, Request, Response};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const SYNC_TOKEN: &str = "cp-sync-token-for-tests-0123456789";
pub const ADMIN_TOKEN: &str = "cp-admin-token-for-tests-0123456789";

/// The `keygate-control-plane` binary: a sibling of `keygate` in the target directory, built by
/// the same `cargo test` (the workspace's default members include the control plane).
pub fn binary() -> PathBuf {
    let path = Path::new(super::BIN).with_file_name("keygate-control-plane");
    assert!(
        path.exists(),
        "{} is missing: run the tests from the workspace root with `cargo test --release`, which builds it",
        path.display()
    );
    path
}

pub struct ControlPlane {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub db: PathBuf,
    log: PathBuf,
    signing_key: Option<String>,
}

impl ControlPlane {
    /// A control plane with a fresh database in `dir`.
    pub fn start(dir: &Path) -> ControlPlane {
        Self::start_with(dir, None, None)
    }

    /// `port`: reuse an address (restarts); `signing_key`: base64 Ed25519 seed.
    pub fn start_with(dir: &Path, port: Option<u16>, signing_key: Option<&str>) -> ControlPlane {
        let mut cp = ControlPlane {
            child: None,
            addr: format!("127.0.0.1:{}", port.unwrap_or_else(http::free_port))
                .parse()
                .unwrap(),
            db: dir.join("cp.sqlite"),
            log: dir.join("cp.log"),
            signing_key: signing_key.map(str::to_owned),
        };
        cp.resume();
        cp
    }

    /// (Re)starts the process on the same address and database.
    pub fn resume(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(binary());
        cmd.arg("--db")
            .arg(&self.db)
            .args(["--listen", &self.addr.to_string()])
            .env("KEYGATE_CP_SYNC_TOKEN", SYNC_TOKEN)
            .env("KEYGATE_CP_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(k) = &self.signing_key {
            cmd.env("KEYGATE_CP_SIGNING_KEY", k);
        }
        self.child = Some(cmd.spawn().unwrap());
        assert!(
            http::wait_for_port(self.addr, Duration::from_secs(10)),
            "control plane did not start:\n{}",
            self.log()
        );
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Response {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        let text = body.map(|b| b.to_string());
        let mut req = Request::new(method, path).header("Authorization", &auth);
        if let Some(t) = &text {
            req = req
                .header("Content-Type", "application/json")
                .body(t.as_bytes());
        }
        http::send(self.addr, &req).expect("control plane request failed")
    }

    pub fn create_workspace(&self, id: &str, kind: &str) {
        let r = self.admin(
            "POST",
            "/v1/workspaces",
            Some(json!({"id": id, "type": kind})),
        );
        assert_eq!(r.status, 201, "{}", r.text());
    }

    /// Creates a key; returns `(id, secret)`.
    pub fn create_key(&self, workspace: &str, env: &str, scopes: &[&str]) -> (String, String) {
        let r = self.admin(
            "POST",
            "/v1/api-keys",
            Some(json!({"name": "test", "workspace": workspace, "environment": env, "scopes": scopes})),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        let data = &r.json()["data"];
        (
            data["id"].as_str().unwrap().to_owned(),
            data["secret"].as_str().unwrap().to_owned(),
        )
    }

    pub fn revoke(&self, id: &str) {
        let r = self.admin("DELETE", &format!("/v1/api-keys/{id}"), None);
        assert_eq!(r.status, 200, "{}", r.text());
    }

    pub fn list_keys(&self) -> Value {
        let r = self.admin("GET", "/v1/api-keys", None);
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }

    /// The `snapshot:` section of a keygate config pointing here (token from KEYGATE_CP_TOKEN).
    pub fn keygate_snapshot_section(&self, extra: &str) -> String {
        format!(
            "snapshot:\n  control_plane:\n    url: {}\n    token_env: KEYGATE_CP_TOKEN\n{extra}",
            self.url()
        )
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("control plane log:\n{}", self.log());
        }
    }
}

//! Shared helpers for the integration tests: start the real keygate binary in front of a real
//! upstream, with config and keys files in a temporary directory. The HTTP client, the echo
//! upstream, the control-plane fixture and the metrics matcher are the workspace's one harness,
//! `keygate-test-support` (its `http` and `cp` modules re-exported here).
#![allow(dead_code)]

pub use keygate_test_support::{cp, http};

use self::http::{Echo, Response};
use keygate::secret::KeyHash;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_keygate");

/// The reference control plane built beside `keygate`, logging at `info` (`RUST_LOG`); start it
/// with `.start()`.
pub fn control_plane() -> cp::Builder {
    cp::ControlPlane::builder(cp::sibling_binary(BIN)).log_filter("info")
}

/// A secret of the right shape, made unique by `tag` (letters and digits only).
pub fn secret(env: &str, tag: &str) -> String {
    format!("sk_{env}_{tag:0>32}")
}

pub fn bearer(secret: &str) -> String {
    format!("Bearer {secret}")
}

/// Builds a keys file entry by entry.
#[derive(Clone)]
pub struct Keys {
    version: u64,
    workspaces: String,
    keys: String,
}

impl Keys {
    pub fn new(version: u64) -> Keys {
        Keys {
            version,
            workspaces: String::new(),
            keys: String::new(),
        }
    }

    pub fn workspace(mut self, id: &str, kind: &str) -> Keys {
        writeln!(self.workspaces, "  - {{ id: {id}, type: {kind} }}").unwrap();
        self
    }

    /// A workspace entry written as given (for limits and other optional fields).
    pub fn workspace_raw(mut self, yaml: &str) -> Keys {
        self.workspaces.push_str(yaml);
        self
    }

    /// A key for `workspace` (`None`: internal). `scopes: None` leaves the field out (legacy);
    /// `extra` is appended verbatim as more YAML fields.
    pub fn key(
        mut self,
        id: &str,
        secret: &str,
        workspace: Option<&str>,
        scopes: Option<&[&str]>,
        extra: &str,
    ) -> Keys {
        let hash = KeyHash::of(secret).to_hex();
        write!(self.keys, "  - id: {id}\n    hash: {hash}\n").unwrap();
        match workspace {
            Some(w) => writeln!(self.keys, "    workspace: {w}").unwrap(),
            None => writeln!(self.keys, "    internal: true").unwrap(),
        }
        if let Some(scopes) = scopes {
            let quoted: Vec<String> = scopes.iter().map(|s| format!("{s:?}")).collect();
            writeln!(self.keys, "    scopes: [{}]", quoted.join(", ")).unwrap();
        }
        for line in extra.lines().filter(|l| !l.trim().is_empty()) {
            writeln!(self.keys, "    {}", line.trim()).unwrap();
        }
        self
    }

    /// Appends raw YAML lines to the `keys:` list (for malformed entries).
    pub fn raw_key(mut self, yaml: &str) -> Keys {
        self.keys.push_str(yaml);
        self
    }

    pub fn yaml(&self) -> String {
        format!(
            "version: {}\nworkspaces:\n{}keys:\n{}",
            self.version, self.workspaces, self.keys
        )
    }
}

/// The route table most tests use.
pub const ROUTES: &str = r#"
routes:
  - name: health
    methods: [GET]
    path: /health
    auth: none
  - name: whoami
    path: /v1/me
    scopes: []
  - name: products-read
    methods: [GET, HEAD]
    path: /v1/products/**
    scopes: [products:read]
  - name: products-write
    methods: [POST, PUT, PATCH, DELETE]
    path: /v1/products/**
    scopes: [products:write]
  - name: geo
    methods: [GET]
    path: /v1/data/geo/**
    scopes: [data:geo:read]
"#;

/// A running keygate process; killed on drop.
pub struct Keygate {
    child: Child,
    pub addr: SocketAddr,
    /// The admin listener: /metrics, /healthz, /readyz, /status.
    pub admin: SocketAddr,
    dir: tempfile::TempDir,
    pub keys_path: PathBuf,
    log_path: PathBuf,
    access_path: PathBuf,
}

pub struct Setup<'a> {
    pub upstream: SocketAddr,
    pub keys: &'a Keys,
    /// YAML appended to the config after the upstream and snapshot sections.
    pub extra: &'a str,
    pub upstream_extra: &'a str,
    /// `RUST_LOG` for the keygate process.
    pub log_filter: &'a str,
    /// The `limits:` section. Off by default: most tests send bursts that are not about limits.
    pub limits: &'a str,
    /// More top-level YAML (metrics, access_log, usage sections).
    pub more: &'a str,
    /// Replaces the `snapshot:` section (default: the keys file, watched every 50 ms).
    pub snapshot: Option<String>,
    /// Environment for the keygate process (e.g. the control-plane token).
    pub env: Vec<(&'a str, String)>,
    /// A fixed listen port instead of a free one (for restarts on the same address).
    pub port: Option<u16>,
    /// More `listen:` fields, each line indented by two spaces.
    pub listen_extra: &'a str,
}

impl<'a> Setup<'a> {
    pub fn new(upstream: &Echo, keys: &'a Keys) -> Setup<'a> {
        Setup {
            upstream: upstream.addr,
            keys,
            extra: ROUTES,
            upstream_extra: "",
            log_filter: "info",
            limits: "limits:\n  enabled: false\n",
            more: "",
            snapshot: None,
            env: Vec::new(),
            port: None,
            listen_extra: "",
        }
    }
}

impl Keygate {
    pub fn start(setup: Setup) -> Keygate {
        // A port freed by `free_port` can be taken by someone else before keygate binds it:
        // try a few.
        for _ in 0..3 {
            if let Some(k) = Keygate::try_start(&setup) {
                return k;
            }
        }
        panic!("keygate did not start listening; see the log above");
    }

    fn try_start(setup: &Setup) -> Option<Keygate> {
        let dir = tempfile::tempdir().unwrap();
        let port = setup.port.unwrap_or_else(http::free_port);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", http::free_port()).parse().unwrap();
        let keys_path = dir.path().join("keys.yaml");
        std::fs::write(&keys_path, setup.keys.yaml()).unwrap();
        let config = format!(
            "listen:\n  addresses: [\"{addr}\"]\n{}\
             upstream:\n  address: \"{}\"\n  read_timeout: 2s\n{}\
             server:\n  threads: 2\n  grace_period_seconds: 0\n  graceful_shutdown_timeout_seconds: 1\n\
             {}\
             admin:\n  address: \"{admin}\"\n{}{}{}",
            setup.listen_extra,
            setup.upstream,
            setup.upstream_extra,
            setup
                .snapshot
                .as_deref()
                .unwrap_or("snapshot:\n  file: keys.yaml\n  watch_interval: 50ms\n"),
            setup.extra,
            setup.limits,
            setup.more
        );
        let config_path = dir.path().join("keygate.yaml");
        std::fs::write(&config_path, config).unwrap();
        let log_path = dir.path().join("keygate.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let access_path = dir.path().join("access.log");
        let access = std::fs::File::create(&access_path).unwrap();
        let child = Command::new(BIN)
            .args(["run", "-c"])
            .arg(&config_path)
            .env("RUST_LOG", setup.log_filter)
            .envs(setup.env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(access)
            .stderr(log)
            .spawn()
            .unwrap();
        let mut k = Keygate {
            child,
            addr,
            admin,
            dir,
            keys_path,
            log_path,
            access_path,
        };
        if http::wait_for_port(addr, Duration::from_secs(10))
            && http::wait_for_port(admin, Duration::from_secs(5))
        {
            return Some(k);
        }
        eprintln!("keygate log:\n{}", k.log());
        let _ = k.child.kill();
        None
    }

    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        http::get(self.addr, path, headers)
    }

    pub fn get_with_key(&self, path: &str, secret: &str) -> Response {
        self.get(path, &[("Authorization", &bearer(secret))])
    }

    pub fn send(&self, req: &http::Request) -> Response {
        http::send(self.addr, req).expect("request to keygate failed")
    }

    /// Replaces the keys file the way careful tools do: write a new file, rename it into place.
    pub fn replace_keys(&self, yaml: &str) {
        let tmp = self.dir.path().join("keys.yaml.tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, &self.keys_path).unwrap();
    }

    /// Overwrites the keys file in place, the way an editor without safe-write does.
    pub fn overwrite_keys(&self, yaml: &str) {
        std::fs::write(&self.keys_path, yaml).unwrap();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The access log (keygate's stdout): one JSON object per line.
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.access_path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    pub fn access_log_text(&self) -> String {
        std::fs::read_to_string(&self.access_path).unwrap_or_default()
    }

    /// GET on the admin listener.
    pub fn admin_get(&self, path: &str) -> Response {
        http::get(self.admin, path, &[])
    }

    /// The /metrics text, without comments.
    pub fn metrics(&self) -> String {
        let r = self.admin_get("/metrics");
        assert_eq!(r.status, 200);
        r.text()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// One sample's value, by its exact series text (`name{labels}`).
    pub fn metric(&self, series: &str) -> Option<f64> {
        self.metrics().lines().find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().unwrap())
        })
    }

    /// Waits until `n` requests have been fully recorded (metrics and access log are written
    /// just after each response, on the thread that served it).
    pub fn settle(&self, n: u64) {
        let done = within(Duration::from_secs(5), || {
            self.metric("keygate_request_duration_seconds_count") == Some(n as f64)
        });
        assert!(
            done.is_some(),
            "{n} requests not recorded:\n{}",
            self.metrics()
        );
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// SIGTERM, as systemd stops a service; waits up to 10 s for the process to exit.
    pub fn terminate(&mut self) -> bool {
        self.stop_with("-TERM")
    }

    /// SIGINT: stop at once, without a grace period (see `src/shutdown.rs`); waits up to 10 s
    /// for the process to exit.
    pub fn interrupt(&mut self) -> bool {
        self.stop_with("-INT")
    }

    fn stop_with(&mut self, signal: &str) -> bool {
        let _ = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status();
        within(Duration::from_secs(10), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        })
        .is_some()
    }

    /// The keygate process's resident memory, in KiB (Linux).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Keygate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("keygate log:\n{}", self.log());
        }
    }
}

/// Polls `f` until it returns true or `limit` passes; returns the time it took.
pub fn within(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// The headers the upstream saw, from the echo body: `(name as received, value)`.
pub fn upstream_headers(r: &Response) -> Vec<(String, String)> {
    let body = r.json();
    body["headers"]
        .as_array()
        .unwrap_or_else(|| panic!("not an echo response: {}", r.text()))
        .iter()
        .map(|h| {
            (
                h[0].as_str().unwrap().to_owned(),
                h[1].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The value of one header the upstream saw (name compared without case).
pub fn upstream_header(r: &Response, name: &str) -> Option<String> {
    upstream_headers(r)
        .into_iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

//! Shared helpers for the integration tests: start the real keygate binary in front of a real
//! upstream, with config and keys files in a temporary directory. The HTTP client, the echo
//! upstream, the control-plane fixture and the metrics matcher are the workspace's one harness,
//! `keygate-test-support` (its `http` and `cp` modules re-exported here).
#![allow(dead_code)]

pub use keygate_test_support::{cp, http};

use self::http::{Echo, Response};
// Each test file uses a different part of the config schema.
#[allow(unused_imports)]
pub use keygate::config::file::*;
#[allow(unused_imports)]
pub use keygate::config::{Unmatched, UsageMode};
use keygate::secret::KeyHash;
pub use keygate_protocol::wire::{
    ClientDoc, KeyDoc, KeyStatus, LimitsDoc, RestrictionsDoc, SigningAlgorithm, SigningKeyDoc,
    SnapshotDoc, WorkspaceDoc, WorkspaceKind,
};
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

/// Builds a keys file entry by entry, from the wire schema's own types.
#[derive(Clone)]
pub struct Keys {
    doc: SnapshotDoc,
    /// Entries written as given, after the typed ones: the malformed ones a test needs.
    raw_keys: Vec<serde_yaml::Value>,
}

impl Keys {
    pub fn new(version: u64) -> Keys {
        Keys {
            doc: SnapshotDoc {
                version,
                workspaces: Vec::new(),
                keys: Vec::new(),
                signing_keys: Vec::new(),
                clients: Vec::new(),
            },
            raw_keys: Vec::new(),
        }
    }

    pub fn workspace(self, id: &str, kind: WorkspaceKind) -> Keys {
        self.workspace_with_limits(id, kind, None)
    }

    /// A workspace whose limits override the configured ones.
    pub fn workspace_with_limits(
        mut self,
        id: &str,
        kind: WorkspaceKind,
        limits: Option<LimitsDoc>,
    ) -> Keys {
        self.doc.workspaces.push(WorkspaceDoc {
            id: id.into(),
            kind,
            limits,
        });
        self
    }

    /// An active key for `workspace` (`None`: internal). `scopes: None` leaves the field out
    /// (a legacy key).
    pub fn key(
        mut self,
        id: &str,
        secret: &str,
        workspace: Option<&str>,
        scopes: Option<&[&str]>,
    ) -> Keys {
        self.doc.keys.push(KeyDoc {
            id: id.into(),
            name: String::new(),
            hash: KeyHash::of(secret).to_hex(),
            workspace: workspace.map(str::to_owned),
            internal: workspace.is_none(),
            scopes: scopes.map(|s| Some(s.iter().map(|s| s.to_string()).collect())),
            status: KeyStatus::Active,
            expires_at: None,
            restrictions: None,
        });
        self
    }

    /// Marks the last key revoked.
    pub fn revoked(mut self) -> Keys {
        self.last_key().status = KeyStatus::Revoked;
        self
    }

    /// Restricts the last key: addresses or blocks, referrer patterns, route names.
    pub fn restricted(mut self, ips: &[&str], referrers: &[&str], endpoints: &[&str]) -> Keys {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect();
        self.last_key().restrictions = Some(RestrictionsDoc {
            ips: v(ips),
            referrers: v(referrers),
            endpoints: v(endpoints),
        });
        self
    }

    /// Gives the last key an expiry (RFC 3339).
    pub fn expires_at(mut self, at: &str) -> Keys {
        self.last_key().expires_at = Some(at.into());
        self
    }

    /// A public key access tokens may be signed with (base64url, as `TokenSigner::public_key`).
    pub fn signing_key(mut self, kid: &str, public_key: &str) -> Keys {
        self.doc.signing_keys.push(SigningKeyDoc {
            kid: kid.into(),
            alg: SigningAlgorithm::EdDSA,
            public_key: public_key.into(),
        });
        self
    }

    /// An OAuth client of `workspace`.
    pub fn client(mut self, id: &str, workspace: &str, status: KeyStatus) -> Keys {
        self.doc.clients.push(ClientDoc {
            id: id.into(),
            workspace: workspace.into(),
            status,
            expires_at: None,
        });
        self
    }

    fn last_key(&mut self) -> &mut KeyDoc {
        self.doc.keys.last_mut().expect("no key to change")
    }

    /// Appends key entries written as YAML list items (`- id: …`), for malformed entries
    /// the typed schema cannot express.
    pub fn raw_key(mut self, yaml: &str) -> Keys {
        let entries: Vec<serde_yaml::Value> = serde_yaml::from_str(yaml).expect("not a YAML list");
        self.raw_keys.extend(entries);
        self
    }

    pub fn yaml(&self) -> String {
        let mut doc = serde_yaml::to_value(&self.doc).unwrap();
        doc["keys"]
            .as_sequence_mut()
            .unwrap()
            .extend(self.raw_keys.iter().cloned());
        serde_yaml::to_string(&doc).unwrap()
    }
}

/// A route that needs a key holding `scopes` (`&[]`: any valid key); `methods` empty: any.
pub fn route(name: &str, methods: &[&str], path: &str, scopes: &[&str]) -> RouteFile {
    RouteFile {
        name: name.into(),
        methods: (!methods.is_empty()).then(|| methods.iter().map(|m| m.to_string()).collect()),
        path: path.into(),
        scopes: Some(scopes.iter().map(|s| s.to_string()).collect()),
        auth: None,
        browser: None,
    }
}

/// A route that also takes a browser client token from the URL or the WebSocket subprotocols.
pub fn browser_route(name: &str, methods: &[&str], path: &str, scopes: &[&str]) -> RouteFile {
    RouteFile {
        browser: Some(true),
        ..route(name, methods, path, scopes)
    }
}

/// Accepts tokens from `issuer` for the audience `keygate`, and adds the browser route `live`
/// (`GET /v1/live/**`, `products:read`), which also takes a client token from the URL.
pub fn accept_client_tokens(c: &mut ConfigFile, issuer: &str) {
    c.routes.push(browser_route(
        "live",
        &["GET"],
        "/v1/live/**",
        &["products:read"],
    ));
    c.tokens = Some(TokensFile {
        issuer: issuer.into(),
        audience: "keygate".into(),
        leeway: None,
        cache_entries: None,
    });
}

/// An Ed25519 token signer whose seed is 32 bytes of `seed`.
pub fn token_signer(kid: &str, seed: u8) -> keygate_protocol::tokens::TokenSigner {
    use base64::Engine as _;
    let seed = base64::engine::general_purpose::STANDARD.encode([seed; 32]);
    keygate_protocol::tokens::TokenSigner::new(kid, &seed).unwrap()
}

/// A route anyone may call, without a key.
pub fn public_route(name: &str, methods: &[&str], path: &str) -> RouteFile {
    RouteFile {
        scopes: None,
        auth: Some(AuthMode::None),
        ..route(name, methods, path, &[])
    }
}

/// The route table most tests use.
pub fn routes() -> Vec<RouteFile> {
    vec![
        public_route("health", &["GET"], "/health"),
        route("whoami", &[], "/v1/me", &[]),
        route(
            "products-read",
            &["GET", "HEAD"],
            "/v1/products/**",
            &["products:read"],
        ),
        route(
            "products-write",
            &["POST", "PUT", "PATCH", "DELETE"],
            "/v1/products/**",
            &["products:write"],
        ),
        route("geo", &["GET"], "/v1/data/geo/**", &["data:geo:read"]),
    ]
}

/// A burst and sustained limit, either of which may be left to its default.
pub fn policy(
    burst_per_second: Option<u32>,
    sustained_per_minute: Option<u32>,
) -> Option<PolicyFile> {
    Some(PolicyFile {
        burst_per_second,
        sustained_per_minute,
        concurrent_requests: None,
    })
}

/// A `snapshot:` section syncing from `cp`, with the token in `KEYGATE_CP_TOKEN`.
pub fn from_control_plane(url: String) -> SnapshotFile {
    SnapshotFile {
        control_plane: Some(ControlPlaneFile {
            url,
            token_env: Some("KEYGATE_CP_TOKEN".into()),
            ..ControlPlaneFile::default()
        }),
        ..SnapshotFile::default()
    }
}

/// The config every test starts from: keygate in front of `upstream`, keys from `keys.yaml`
/// (checked every 50 ms), the usual routes, limits off (most tests send bursts that are not
/// about limits), the failed-authentication shield off (many send bad keys from one address),
/// two threads and no shutdown grace. The listen and admin addresses are filled
/// in when keygate starts.
pub fn base_config(upstream: SocketAddr) -> ConfigFile {
    ConfigFile {
        upstream: UpstreamFile {
            address: upstream.to_string(),
            read_timeout: Some(Duration::from_secs(2)),
            ..UpstreamFile::default()
        },
        server: ServerFile {
            threads: Some(2),
            grace_period_seconds: Some(0),
            graceful_shutdown_timeout_seconds: Some(1),
            ..ServerFile::default()
        },
        snapshot: SnapshotFile {
            file: Some("keys.yaml".into()),
            watch_interval: Some(Duration::from_millis(50)),
            ..SnapshotFile::default()
        },
        routes: routes(),
        limits: LimitsFile {
            enabled: Some(false),
            ..LimitsFile::default()
        },
        shield: ShieldFile {
            enabled: Some(false),
            ..ShieldFile::default()
        },
        ..ConfigFile::default()
    }
}

/// Adds a TLS listener on a free port to `config`, serving `cert` and `key` (the files read
/// again every 100 ms); returns its address. `Keygate::start` waits for it too.
#[allow(dead_code)]
pub fn tls_listener(config: &mut ConfigFile, cert: &Path, key: &Path) -> SocketAddr {
    let addr: SocketAddr = format!("127.0.0.1:{}", http::free_port()).parse().unwrap();
    config.listen.tls = Some(TlsFile {
        addresses: vec![addr.to_string()],
        cert_file: cert.display().to_string(),
        key_file: key.display().to_string(),
        watch_interval: Some(Duration::from_millis(100)),
    });
    addr
}

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
    /// The config file, typed; `listen.addresses` and `admin.address` are set at start.
    pub config: ConfigFile,
    pub keys: &'a Keys,
    /// `RUST_LOG` for the keygate process.
    pub log_filter: &'a str,
    /// Environment for the keygate process (e.g. the control-plane token).
    pub env: Vec<(&'a str, String)>,
    /// A fixed listen port instead of a free one (for restarts on the same address).
    pub port: Option<u16>,
    /// Another keygate binary than this build's (for upgrades: a copy whose file is replaced).
    pub binary: Option<PathBuf>,
}

impl<'a> Setup<'a> {
    pub fn new(upstream: &Echo, keys: &'a Keys) -> Setup<'a> {
        Setup {
            config: base_config(upstream.addr),
            keys,
            log_filter: "info",
            env: Vec::new(),
            port: None,
            binary: None,
        }
    }

    /// Changes the config: `Setup::new(&up, &keys).config(|c| c.metrics.per_workspace = Some(true))`.
    pub fn config(mut self, change: impl FnOnce(&mut ConfigFile)) -> Setup<'a> {
        change(&mut self.config);
        self
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
        let mut config = setup.config.clone();
        config.listen.addresses = vec![addr.to_string()];
        config.admin.address = Some(admin.to_string());
        let config = serde_yaml::to_string(&config).unwrap();
        let config_path = dir.path().join("keygate.yaml");
        std::fs::write(&config_path, config).unwrap();
        let log_path = dir.path().join("keygate.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let access_path = dir.path().join("access.log");
        let access = std::fs::File::create(&access_path).unwrap();
        let child = Command::new(setup.binary.as_deref().unwrap_or(Path::new(BIN)))
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
        let tls: Vec<SocketAddr> = setup
            .config
            .listen
            .tls
            .iter()
            .flat_map(|t| t.addresses.iter().map(|a| a.parse().unwrap()))
            .collect();
        if http::wait_for_port(addr, Duration::from_secs(10))
            && http::wait_for_port(admin, Duration::from_secs(5))
            && tls
                .iter()
                .all(|&a| http::wait_for_port(a, Duration::from_secs(5)))
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

    /// The config file keygate was started with (and reloads on SIGHUP).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("keygate.yaml")
    }

    /// The process this harness started (after a reload, another one serves).
    pub fn pid(&self) -> u32 {
        self.child.id()
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
        self.stop_timed(signal).is_some()
    }

    /// Sends `signal` (`-TERM`, `-INT`); returns how long the process took to exit (up to 10 s).
    pub fn stop_timed(&mut self, signal: &str) -> Option<Duration> {
        let _ = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status();
        within(Duration::from_secs(10), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        })
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

//! The YAML configuration: its file schema, strict parsing, and validation into a [`Config`].
//!
//! Two layers, as in the file: `*File` structs mirror the YAML exactly (unknown fields are
//! errors); `validate` turns them into the checked values the server runs on. Every error names
//! the config file, the field path and what is allowed.

mod source;

use source::SnapshotFile;
pub use source::{ControlPlaneConfig, Secret, SnapshotSource, SourceConfig};

use crate::connections::ConnectionLimits;
use crate::limits::{Policy, RateHeaders};
use crate::routes::{RouteSpec, RouteTable};
use crate::scopes::RequiredScope;
use pingora::server::configuration::ServerConf;
use serde::{Deserialize, Deserializer};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read the config: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    /// The YAML does not fit the schema; serde_yaml's message carries the field path and line.
    #[error("{file}: {message}")]
    Schema { file: PathBuf, message: String },
    #[error("{file}: {field}: {message}")]
    Invalid {
        file: PathBuf,
        field: String,
        message: String,
    },
}

// ---------------------------------------------------------------------------------------------
// The file as written.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    listen: ListenFile,
    upstream: UpstreamFile,
    #[serde(default)]
    server: ServerFile,
    snapshot: SnapshotFile,
    #[serde(default)]
    routes: Vec<RouteFile>,
    #[serde(default)]
    unmatched: Unmatched,
    #[serde(default)]
    limits: LimitsFile,
    #[serde(default)]
    admin: AdminFile,
    #[serde(default)]
    metrics: MetricsFile,
    #[serde(default)]
    access_log: AccessLogFile,
    #[serde(default)]
    usage: UsageFile,
    #[serde(default)]
    log: LogFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminFile {
    /// Serve /metrics, /healthz, /readyz and /status. Default true.
    enabled: Option<bool>,
    /// Default 127.0.0.1:9901 (loopback: these endpoints are for the host's own agents).
    address: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsFile {
    /// Export `keygate_workspace_requests_total` by workspace. Default false.
    per_workspace: Option<bool>,
    /// Workspaces given their own series before the rest count as `(other)`. Default 1000.
    per_workspace_max: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessLogFile {
    /// One JSON line per request on stdout. Default true.
    enabled: Option<bool>,
    /// The level the lines are logged at. Default info.
    level: Option<String>,
    /// Share of requests logged, 0.0 to 1.0. Default 1.0.
    sample_ratio: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageFile {
    /// `status`: per-key request counts and last use shown on /status; `off`. Default status.
    mode: Option<UsageMode>,
    /// Keys tracked at most; further keys are not tracked (and counted as dropped). Default 100000.
    max_keys: Option<usize>,
    /// With a control-plane source: how often usage is reported to it. Default 60s.
    #[serde(default, deserialize_with = "duration")]
    flush_interval: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    /// Count requests and answer 429 over a limit. Default true.
    enabled: Option<bool>,
    /// Default 30/s and 3,000/min.
    live: Option<PolicyFile>,
    /// Default 5/s and 100/min.
    sandbox: Option<PolicyFile>,
    /// Limits per internal key. Absent: internal keys are not throttled.
    internal: Option<PolicyFile>,
    /// Which rate-limit headers responses carry: both (default), ietf, x-ratelimit or none.
    headers: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    burst_per_second: Option<u32>,
    sustained_per_minute: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenFile {
    /// `host:port` addresses to accept clients on.
    addresses: Vec<String>,
    /// How long an idle client connection is kept open. Default 60s.
    #[serde(default, deserialize_with = "duration")]
    keepalive_timeout: Option<Duration>,
    /// Client connections open at once, over all proxy listeners' threads; more are closed on
    /// arrival. Default 4096.
    max_connections: Option<usize>,
    /// How long a request head may take from its first byte to its last. Default 10s.
    #[serde(default, deserialize_with = "duration")]
    request_head_timeout: Option<Duration>,
    /// The largest request head (request line and headers) accepted. Default 65536.
    max_request_head_bytes: Option<usize>,
    /// Above 90% of max_connections, how long a connection may stay idle. Default 1s.
    #[serde(default, deserialize_with = "duration")]
    idle_timeout_under_pressure: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamFile {
    /// `host:port` of the protected service; resolved once at start.
    address: String,
    /// Default 1s.
    #[serde(default, deserialize_with = "duration")]
    connect_timeout: Option<Duration>,
    /// Default 30s.
    #[serde(default, deserialize_with = "duration")]
    read_timeout: Option<Duration>,
    /// Default 30s.
    #[serde(default, deserialize_with = "duration")]
    write_timeout: Option<Duration>,
    /// How long a pooled upstream connection may idle; keep it below the upstream's own
    /// keep-alive timeout. Default 4s.
    #[serde(default, deserialize_with = "duration")]
    idle_timeout: Option<Duration>,
    /// Forward the client's `Authorization` header. Default false.
    #[serde(default)]
    forward_authorization: bool,
    /// Remove `X-HTTP-Method-Override` and its variants from forwarded requests. Default true.
    strip_method_override: Option<bool>,
}

/// The Pingora server settings keygate exposes, with keygate's defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerFile {
    /// Worker threads of the proxy service. Default 2.
    threads: Option<usize>,
    /// Let idle threads take work from busy ones. Default false: a sidecar shares its host's
    /// cores, and stealing costs more CPU per request than it saves (see the README).
    work_stealing: Option<bool>,
    /// Accept tasks per listening socket. Default 1.
    listener_tasks_per_fd: Option<usize>,
    /// Idle upstream connections kept per thread. Default 128.
    upstream_keepalive_pool_size: Option<usize>,
    /// Retries of a failed upstream connection. Default 16 (Pingora's).
    max_retries: Option<usize>,
    /// Seconds to keep serving after SIGTERM before shutting down. Default 5.
    grace_period_seconds: Option<u64>,
    /// Seconds to let runtimes finish after the grace period. Default 5.
    graceful_shutdown_timeout_seconds: Option<u64>,
    /// Run in the background (also `-d`). Default false.
    daemon: Option<bool>,
    /// Written when daemonised. Default /run/keygate/keygate.pid.
    pid_file: Option<String>,
    /// Socket for graceful upgrades (`-u`). Default /tmp/keygate_upgrade.sock.
    upgrade_sock: Option<String>,
    /// Error log file when daemonised.
    error_log: Option<String>,
    user: Option<String>,
    group: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteFile {
    name: String,
    #[serde(default)]
    methods: Option<Vec<String>>,
    path: String,
    #[serde(default)]
    scopes: Option<Vec<String>>,
    #[serde(default)]
    auth: Option<AuthMode>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum AuthMode {
    /// Public: no key needed.
    None,
    /// A valid key holding the route's scopes.
    Key,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogFile {
    /// error | warn | info | debug | trace. Default info; `RUST_LOG` overrides it.
    level: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// The validated configuration.

/// `listen`'s bounds on client connections, checked.
fn connection_limits(listen: &ListenFile) -> Result<ConnectionLimits, (String, String)> {
    let limits = ConnectionLimits {
        max_connections: listen.max_connections.unwrap_or(4096),
        head_timeout: listen
            .request_head_timeout
            .unwrap_or(Duration::from_secs(10)),
        max_head_bytes: listen.max_request_head_bytes.unwrap_or(64 * 1024),
        pressure_idle_timeout: listen
            .idle_timeout_under_pressure
            .unwrap_or(Duration::from_secs(1)),
    };
    if limits.max_connections == 0 {
        return Err((
            "listen.max_connections".into(),
            "must be at least 1; omit it for the default of 4096".into(),
        ));
    }
    // Pingora refuses heads over 1 MiB itself; a larger bound would never apply.
    if !(1024..=1024 * 1024).contains(&limits.max_head_bytes) {
        return Err((
            "listen.max_request_head_bytes".into(),
            "must be between 1024 and 1048576; omit it for the default of 65536".into(),
        ));
    }
    for (field, d) in [
        ("listen.request_head_timeout", limits.head_timeout),
        (
            "listen.idle_timeout_under_pressure",
            limits.pressure_idle_timeout,
        ),
    ] {
        if d.is_zero() {
            return Err((field.into(), "must be more than 0s".into()));
        }
    }
    Ok(limits)
}

/// What a request that matches no route gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unmatched {
    /// 404, before any authentication.
    #[default]
    Deny,
    /// Forwarded when it carries a valid key; no scope is required.
    Authenticate,
}

/// What a route asks of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteAuth {
    Public,
    /// A valid key holding every listed scope (none listed: any valid key).
    Scopes(Box<[RequiredScope]>),
}

impl UpstreamConfig {
    /// The upstream as a Pingora peer, with its timeouts. keygate and the bare-Pingora baseline
    /// (`examples/bare_proxy.rs`) both build their peer here, so the benchmark compares like
    /// with like.
    pub fn peer(&self) -> pingora::upstreams::peer::HttpPeer {
        let mut peer = pingora::upstreams::peer::HttpPeer::new(self.address, false, String::new());
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.read_timeout = Some(self.read_timeout);
        peer.options.write_timeout = Some(self.write_timeout);
        peer.options.idle_timeout = Some(self.idle_timeout);
        peer
    }
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub address: SocketAddr,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub idle_timeout: Duration,
    pub forward_authorization: bool,
    /// keygate decides on the request's method: an upstream that honours an override header
    /// would run another method than the one whose scopes were checked.
    pub strip_method_override: bool,
}

/// What happens to per-key usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageMode {
    Status,
    Off,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AccessLogConfig {
    pub level: tracing::Level,
    pub sample_ratio: f64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservabilityConfig {
    /// `None`: no admin listener.
    pub admin: Option<SocketAddr>,
    /// `Some(cap)`: per-workspace series, at most `cap` workspaces.
    pub per_workspace_metrics: Option<usize>,
    /// `None`: usage is not tracked.
    pub usage_max_keys: Option<usize>,
    /// How often usage goes to the control plane (with a control-plane source).
    pub usage_flush_interval: Duration,
}

/// The limits in force, per workspace type; workspaces may override them in the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitsConfig {
    pub live: Policy,
    pub sandbox: Policy,
    pub internal: Option<Policy>,
    pub headers: RateHeaders,
}

pub const DEFAULT_LIVE: Policy = Policy {
    burst_per_second: 30,
    sustained_per_minute: 3_000,
};
pub const DEFAULT_SANDBOX: Policy = Policy {
    burst_per_second: 5,
    sustained_per_minute: 100,
};

#[derive(Debug)]
pub struct Config {
    pub path: PathBuf,
    /// SHA-256 of the file's bytes (hex), shown on /status.
    pub checksum: String,
    pub listen: Vec<SocketAddr>,
    pub keepalive_timeout: Duration,
    pub connection_limits: ConnectionLimits,
    pub upstream: UpstreamConfig,
    pub server: ServerConf,
    pub snapshot: SnapshotSource,
    pub routes: RouteTable<RouteAuth>,
    pub unmatched: Unmatched,
    /// `None` when limits are disabled.
    pub limits: Option<LimitsConfig>,
    pub observability: ObservabilityConfig,
    /// `None` when access logs are off.
    pub access_log: Option<AccessLogConfig>,
    pub log_level: String,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_owned(),
            source,
        })?;
        Config::from_yaml(&text, path)
    }

    /// Parses config text; `path` names the file in errors and anchors relative paths.
    pub fn from_yaml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let file: ConfigFile = serde_yaml::from_str(text).map_err(|e| ConfigError::Schema {
            file: path.to_owned(),
            message: e.to_string(),
        })?;
        let mut config = validate(file, path)?;
        config.checksum = crate::secret::KeyHash::of(text).to_hex();
        Ok(config)
    }
}

fn validate(file: ConfigFile, path: &Path) -> Result<Config, ConfigError> {
    let invalid = |field: String, message: String| ConfigError::Invalid {
        file: path.to_owned(),
        field,
        message,
    };
    // Destructured so that a new field cannot be added to the file and forgotten here.
    let ConfigFile {
        listen,
        upstream,
        server,
        snapshot,
        routes,
        unmatched,
        limits,
        admin,
        metrics,
        access_log,
        usage,
        log,
    } = file;

    if listen.addresses.is_empty() {
        return Err(invalid(
            "listen.addresses".into(),
            "empty; give at least one address such as 127.0.0.1:8080".into(),
        ));
    }
    let mut addrs = Vec::new();
    for (i, a) in listen.addresses.iter().enumerate() {
        let addr = a.parse::<SocketAddr>().map_err(|_| {
            invalid(
                format!("listen.addresses[{i}]"),
                format!("{a:?} is not an IP address and port such as 127.0.0.1:8080 or [::1]:8080"),
            )
        })?;
        addrs.push(addr);
    }
    let connection_limits = connection_limits(&listen).map_err(|(f, m)| invalid(f, m))?;

    let upstream_addr = upstream
        .address
        .to_socket_addrs()
        .ok()
        .and_then(|mut it| it.next())
        .ok_or_else(|| {
            invalid(
                "upstream.address".into(),
                format!(
                    "{:?} does not resolve; give host:port such as 127.0.0.1:9000",
                    upstream.address
                ),
            )
        })?;
    let upstream = UpstreamConfig {
        address: upstream_addr,
        connect_timeout: upstream.connect_timeout.unwrap_or(Duration::from_secs(1)),
        read_timeout: upstream.read_timeout.unwrap_or(Duration::from_secs(30)),
        write_timeout: upstream.write_timeout.unwrap_or(Duration::from_secs(30)),
        idle_timeout: upstream.idle_timeout.unwrap_or(Duration::from_secs(4)),
        forward_authorization: upstream.forward_authorization,
        strip_method_override: upstream.strip_method_override.unwrap_or(true),
    };
    for (field, d) in [
        ("upstream.connect_timeout", upstream.connect_timeout),
        ("upstream.read_timeout", upstream.read_timeout),
        ("upstream.write_timeout", upstream.write_timeout),
    ] {
        if d.is_zero() {
            return Err(invalid(field.into(), "must be more than 0s".into()));
        }
    }

    let server = server_conf(server).map_err(|(f, m)| invalid(f, m))?;

    let base = path.parent().unwrap_or(Path::new("."));
    let snapshot = source::validate(snapshot, base).map_err(|(f, m)| invalid(f, m))?;

    let mut specs = Vec::with_capacity(routes.len());
    for (i, r) in routes.into_iter().enumerate() {
        let field = |f: &str| format!("routes[{i}] ({:?}).{f}", r.name);
        let auth = match (r.auth, &r.scopes) {
            (Some(AuthMode::None), None) => RouteAuth::Public,
            (Some(AuthMode::None), Some(_)) => {
                return Err(invalid(
                    field("scopes"),
                    "a public route (`auth: none`) takes no scopes; remove one of the two".into(),
                ));
            }
            (_, None) => {
                return Err(invalid(
                    field("scopes"),
                    "missing; give `scopes: [...]` (all required), `scopes: []` (any valid key) \
                     or `auth: none` (public)"
                        .into(),
                ));
            }
            (_, Some(list)) => {
                let mut required = Vec::with_capacity(list.len());
                for (j, s) in list.iter().enumerate() {
                    let scope = RequiredScope::parse(s)
                        .map_err(|e| invalid(field(&format!("scopes[{j}]")), e.to_string()))?;
                    required.push(scope);
                }
                RouteAuth::Scopes(required.into_boxed_slice())
            }
        };
        specs.push(RouteSpec {
            name: r.name,
            methods: r.methods,
            path: r.path,
            auth,
        });
    }
    let routes = RouteTable::build(specs).map_err(|e| invalid("routes".into(), e.to_string()))?;

    let limits = limits_config(limits).map_err(|(f, m)| invalid(f, m))?;

    let log_level = log.level.unwrap_or_else(|| "info".into());
    parse_level(&log_level).map_err(|m| invalid("log.level".into(), m))?;

    let admin_addr = match (admin.enabled.unwrap_or(true), admin.address) {
        (false, _) => None,
        (true, None) => Some(SocketAddr::from(([127, 0, 0, 1], 9901))),
        (true, Some(a)) => Some(a.parse::<SocketAddr>().map_err(|_| {
            invalid(
                "admin.address".into(),
                format!("{a:?} is not an IP address and port such as 127.0.0.1:9901"),
            )
        })?),
    };
    if admin_addr.is_some_and(|a| addrs.contains(&a)) {
        return Err(invalid(
            "admin.address".into(),
            "is also a listen address; give the admin endpoints their own port".into(),
        ));
    }
    let per_workspace_metrics = metrics
        .per_workspace
        .unwrap_or(false)
        .then(|| metrics.per_workspace_max.unwrap_or(1000));
    let access_log = if access_log.enabled.unwrap_or(true) {
        let level = access_log.level.unwrap_or_else(|| "info".into());
        let level = parse_level(&level).map_err(|m| invalid("access_log.level".into(), m))?;
        let sample_ratio = access_log.sample_ratio.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&sample_ratio) {
            return Err(invalid(
                "access_log.sample_ratio".into(),
                format!("{sample_ratio} is outside 0.0 to 1.0 (1.0 logs every request)"),
            ));
        }
        Some(AccessLogConfig {
            level,
            sample_ratio,
        })
    } else {
        None
    };
    let usage_flush_interval = usage.flush_interval.unwrap_or(Duration::from_secs(60));
    if usage_flush_interval < Duration::from_millis(100) {
        return Err(invalid(
            "usage.flush_interval".into(),
            "must be at least 100ms".into(),
        ));
    }
    let usage_max_keys = match usage.mode.unwrap_or(UsageMode::Status) {
        UsageMode::Off => None,
        UsageMode::Status => Some(usage.max_keys.unwrap_or(100_000)),
    };

    Ok(Config {
        path: path.to_owned(),
        checksum: String::new(),
        listen: addrs,
        keepalive_timeout: listen.keepalive_timeout.unwrap_or(Duration::from_secs(60)),
        connection_limits,
        upstream,
        server,
        snapshot,
        routes,
        unmatched,
        limits,
        observability: ObservabilityConfig {
            admin: admin_addr,
            per_workspace_metrics,
            usage_max_keys,
            usage_flush_interval,
        },
        access_log,
        log_level,
    })
}

fn parse_level(level: &str) -> Result<tracing::Level, String> {
    level
        .parse()
        .map_err(|_| format!("{level:?} is not one of error, warn, info, debug, trace"))
}

fn limits_config(l: LimitsFile) -> Result<Option<LimitsConfig>, (String, String)> {
    let LimitsFile {
        enabled,
        live,
        sandbox,
        internal,
        headers,
    } = l;
    let headers = match headers.as_deref() {
        None => RateHeaders::BOTH,
        Some(name) => RateHeaders::parse(name).ok_or_else(|| {
            (
                "limits.headers".to_string(),
                format!("{name:?} is not one of {}", RateHeaders::NAMES.join(", ")),
            )
        })?,
    };
    let policy = |name: &str, file: Option<PolicyFile>, default: Policy| {
        let file = file.unwrap_or_default();
        let p = Policy {
            burst_per_second: file.burst_per_second.unwrap_or(default.burst_per_second),
            sustained_per_minute: file
                .sustained_per_minute
                .unwrap_or(default.sustained_per_minute),
        };
        for (field, v) in [
            ("burst_per_second", p.burst_per_second),
            ("sustained_per_minute", p.sustained_per_minute),
        ] {
            if v == 0 {
                return Err((
                    format!("limits.{name}.{field}"),
                    "must be at least 1; to turn limits off set `limits.enabled: false`".into(),
                ));
            }
        }
        Ok(p)
    };
    let config = LimitsConfig {
        live: policy("live", live, DEFAULT_LIVE)?,
        sandbox: policy("sandbox", sandbox, DEFAULT_SANDBOX)?,
        internal: match internal {
            Some(file) => Some(policy("internal", Some(file), DEFAULT_LIVE)?),
            None => None,
        },
        headers,
    };
    Ok(enabled.unwrap_or(true).then_some(config))
}

fn server_conf(s: ServerFile) -> Result<ServerConf, (String, String)> {
    let ServerFile {
        threads,
        work_stealing,
        listener_tasks_per_fd,
        upstream_keepalive_pool_size,
        max_retries,
        grace_period_seconds,
        graceful_shutdown_timeout_seconds,
        daemon,
        pid_file,
        upgrade_sock,
        error_log,
        user,
        group,
    } = s;
    let threads = threads.unwrap_or(2);
    if !(1..=1024).contains(&threads) {
        return Err(("server.threads".into(), "must be between 1 and 1024".into()));
    }
    let listener_tasks = listener_tasks_per_fd.unwrap_or(1);
    if !(1..=64).contains(&listener_tasks) {
        return Err((
            "server.listener_tasks_per_fd".into(),
            "must be between 1 and 64".into(),
        ));
    }
    let defaults = ServerConf::default();
    Ok(ServerConf {
        threads,
        work_stealing: work_stealing.unwrap_or(false),
        listener_tasks_per_fd: listener_tasks,
        upstream_keepalive_pool_size: upstream_keepalive_pool_size
            .unwrap_or(defaults.upstream_keepalive_pool_size),
        max_retries: max_retries.unwrap_or(defaults.max_retries),
        grace_period_seconds: Some(grace_period_seconds.unwrap_or(5)),
        graceful_shutdown_timeout_seconds: Some(graceful_shutdown_timeout_seconds.unwrap_or(5)),
        daemon: daemon.unwrap_or(false),
        pid_file: pid_file.unwrap_or_else(|| "/run/keygate/keygate.pid".into()),
        upgrade_sock: upgrade_sock.unwrap_or_else(|| "/tmp/keygate_upgrade.sock".into()),
        error_log,
        user,
        group,
        ..defaults
    })
}

/// Durations are written as `500ms`, `2s`, `1m`. Parsed inside a visitor so that serde_yaml
/// reports the error with the field's path and line.
pub(crate) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    struct HumanDuration;
    impl serde::de::Visitor<'_> for HumanDuration {
        type Value = Duration;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a duration such as 500ms, 2s or 1m")
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Duration, E> {
            humantime::parse_duration(s).map_err(|_| {
                E::custom(format!(
                    "invalid duration {s:?}: write a number and a unit, such as 500ms, 2s or 1m"
                ))
            })
        }
    }
    d.deserialize_str(HumanDuration).map(Some)
}

//! The YAML configuration: its file schema, strict parsing, and validation into a [`Config`].
//!
//! Two layers: the `*File` structs of [`file`] mirror the YAML exactly (unknown fields are
//! errors); `validate` turns them into the checked values the server runs on. Every error names
//! the config file, the field path and what is allowed.

pub mod file;
mod global;
mod source;

use file::*;
pub use source::{ControlPlaneConfig, Secret, SnapshotSource, SourceConfig};

use crate::concurrency::ConcurrencyCaps;
use crate::connections::ConnectionLimits;
use crate::limits::{Policy, RateHeaders};
use crate::routes::{RouteSpec, RouteTable};
use crate::scopes::RequiredScope;
use pingora::server::configuration::ServerConf;
use serde::{Deserialize, Serialize};
use std::net::{SocketAddr, ToSocketAddrs};
use std::num::NonZeroU32;
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
// The validated configuration.

/// A list of `ip:port` addresses; an error names the entry (`field[i]`).
fn socket_addresses(list: &[String], field: &str) -> Result<Vec<SocketAddr>, (String, String)> {
    list.iter()
        .enumerate()
        .map(|(i, a)| {
            a.parse::<SocketAddr>().map_err(|_| {
                (
                    format!("{field}[{i}]"),
                    format!(
                        "{a:?} is not an IP address and port such as 127.0.0.1:8080 or [::1]:8080"
                    ),
                )
            })
        })
        .collect()
}

/// `listen.tls`, checked, with its certificate pair loaded once: a start or `keygate check`
/// fails on a pair the listeners could not serve.
fn tls_listen_config(
    tls: &TlsFile,
    config_path: &Path,
) -> Result<crate::tls::TlsListenConfig, (String, String)> {
    let addresses = socket_addresses(&tls.addresses, "listen.tls.addresses")?;
    if addresses.is_empty() {
        return Err((
            "listen.tls.addresses".into(),
            "empty; give at least one address such as 0.0.0.0:8443, or remove listen.tls".into(),
        ));
    }
    let base = config_path.parent().unwrap_or(Path::new("."));
    let watch_interval = tls.watch_interval.unwrap_or(Duration::from_secs(10));
    if watch_interval < Duration::from_millis(100) {
        return Err((
            "listen.tls.watch_interval".into(),
            "must be at least 100ms".into(),
        ));
    }
    let config = crate::tls::TlsListenConfig {
        addresses,
        cert_file: base.join(&tls.cert_file),
        key_file: base.join(&tls.key_file),
        watch_interval,
    };
    crate::tls::check(&config.cert_file, &config.key_file)
        .map_err(|e| pair_error("listen.tls", &config.cert_file, e))?;
    Ok(config)
}

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
        proxy_protocol: listen.proxy_protocol.unwrap_or(false),
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
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
    /// As `Scopes`, for browsers (`browser: true`): a client token may also come in the
    /// `access_token` query parameter or the `Sec-WebSocket-Protocol` header.
    Browser(Box<[RequiredScope]>),
}

impl UpstreamConfig {
    /// The upstream as a Pingora peer, with its timeouts. keygate and the bare-Pingora baseline
    /// (`examples/bare_proxy.rs`) both build their peer here, so the benchmark compares like
    /// with like.
    pub fn peer(&self) -> pingora::upstreams::peer::HttpPeer {
        // Never an empty SNI with TLS: Pingora's rustls connector then verifies nothing.
        let (tls, sni) = match &self.tls {
            Some(tls) => (true, tls.sni.clone()),
            None => (false, String::new()),
        };
        let mut peer = pingora::upstreams::peer::HttpPeer::new(self.address, tls, sni);
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
    /// `Some` when the upstream is reached over TLS (`upstream.tls`).
    pub tls: Option<UpstreamTls>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub idle_timeout: Duration,
    pub forward_authorization: bool,
    /// keygate decides on the request's method: an upstream that honours an override header
    /// would run another method than the one whose scopes were checked.
    pub strip_method_override: bool,
    /// Forward and pass back header names in their sender's letter case (see
    /// [`crate::headers`]); otherwise they go out in lower case, at less cost per request.
    pub preserve_header_case: bool,
}

/// TLS to the upstream: its certificate is always verified, against this name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    pub sni: String,
}

/// `upstream.tls`, `sni` and `ca_file`, checked: the TLS settings, and the CA file's path.
fn upstream_tls(
    upstream: &UpstreamFile,
    base: &Path,
) -> Result<(Option<UpstreamTls>, Option<String>), (String, String)> {
    if !upstream.tls {
        for (field, set) in [
            ("upstream.sni", upstream.sni.is_some()),
            ("upstream.ca_file", upstream.ca_file.is_some()),
        ] {
            if set {
                return Err((field.into(), "applies only with upstream.tls: true".into()));
            }
        }
        return Ok((None, None));
    }
    let sni = match &upstream.sni {
        Some(sni) => sni.clone(),
        // The host of `host:port` (an IP address is verified against the certificate's IP SANs).
        None => upstream
            .address
            .rsplit_once(':')
            .map_or(upstream.address.as_str(), |(host, _)| host)
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
    };
    if rustls::pki_types::ServerName::try_from(sni.as_str()).is_err() {
        return Err((
            "upstream.sni".into(),
            format!("{sni:?} is not a DNS name or IP address the certificate could carry"),
        ));
    }
    let ca_file = match &upstream.ca_file {
        None => None,
        Some(file) => {
            let path = base.join(file);
            ca_certificates(&path).map_err(|m| ("upstream.ca_file".to_string(), m))?;
            Some(path.display().to_string())
        }
    };
    Ok((Some(UpstreamTls { sni }), ca_file))
}

/// A certificate pair that did not load, as the config error naming the file at fault: the
/// `cert_file` or `key_file` field under `section`.
fn pair_error(section: &str, cert_file: &Path, e: crate::tls::TlsError) -> (String, String) {
    let field = if e.is_about_cert_file(cert_file) {
        "cert_file"
    } else {
        "key_file"
    };
    (format!("{section}.{field}"), e.to_string())
}

/// The PEM CA certificates in `path`, checked to hold at least one; the error says why not.
fn ca_certificates(path: &Path) -> Result<Vec<u8>, String> {
    let pem =
        std::fs::read(path).map_err(|e| format!("{}: cannot read it: {e}", path.display()))?;
    if rustls_pemfile::certs(&mut &pem[..])
        .filter_map(Result::ok)
        .count()
        == 0
    {
        return Err(format!(
            "{}: no PEM certificate in it; give the CA certificates",
            path.display()
        ));
    }
    Ok(pem)
}

/// What happens to per-key usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Caps on requests in flight, by kind of caller.
    pub concurrency: ConcurrencyCaps,
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
    /// Plain HTTP/1.1 listeners.
    pub listen: Vec<SocketAddr>,
    /// `Some` with TLS listeners (`listen.tls`).
    pub tls: Option<crate::tls::TlsListenConfig>,
    pub keepalive_timeout: Duration,
    pub connection_limits: ConnectionLimits,
    pub upstream: UpstreamConfig,
    pub server: ServerConf,
    pub snapshot: SnapshotSource,
    pub routes: RouteTable<RouteAuth>,
    pub unmatched: Unmatched,
    /// `None` when limits are disabled.
    pub limits: Option<LimitsConfig>,
    /// `Some` when limits hold across the fleet (`limits.global`).
    pub fleet: Option<crate::limits::FleetConfig>,
    pub observability: ObservabilityConfig,
    /// `None` when access logs are off.
    pub access_log: Option<AccessLogConfig>,
    pub log_level: String,
    /// Who the client is behind proxies.
    pub client_address: crate::client_address::ClientAddressConfig,
    /// `None` when the failed-authentication shield is off.
    pub shield: Option<crate::shield::ShieldConfig>,
    /// `None` when access tokens are not accepted.
    pub tokens: Option<crate::tokens::TokenConfig>,
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
        client_address,
        shield,
        tokens,
    } = file;

    let addrs =
        socket_addresses(&listen.addresses, "listen.addresses").map_err(|(f, m)| invalid(f, m))?;
    let tls = match &listen.tls {
        None => None,
        Some(tls) => Some(tls_listen_config(tls, path).map_err(|(f, m)| invalid(f, m))?),
    };
    let tls_addrs = tls.as_ref().map_or(&[][..], |t| &t.addresses[..]);
    if addrs.is_empty() && tls_addrs.is_empty() {
        return Err(invalid(
            "listen.addresses".into(),
            "empty; give at least one address such as 127.0.0.1:8080 (or listen.tls.addresses)"
                .into(),
        ));
    }
    if let Some(a) = tls_addrs.iter().find(|a| addrs.contains(a)) {
        return Err(invalid(
            "listen.tls.addresses".into(),
            format!("{a} is also in listen.addresses; one port serves either TLS or plain HTTP"),
        ));
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
    let base = path.parent().unwrap_or(Path::new("."));
    let (upstream_tls, upstream_ca) =
        upstream_tls(&upstream, base).map_err(|(f, m)| invalid(f, m))?;
    let upstream = UpstreamConfig {
        address: upstream_addr,
        tls: upstream_tls,
        connect_timeout: upstream.connect_timeout.unwrap_or(Duration::from_secs(1)),
        read_timeout: upstream.read_timeout.unwrap_or(Duration::from_secs(30)),
        write_timeout: upstream.write_timeout.unwrap_or(Duration::from_secs(30)),
        idle_timeout: upstream.idle_timeout.unwrap_or(Duration::from_secs(4)),
        forward_authorization: upstream.forward_authorization,
        strip_method_override: upstream.strip_method_override.unwrap_or(true),
        preserve_header_case: upstream.preserve_header_case,
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
    // Zero would pool a connection only to close it at once, or hand it out before its timer
    // fired: no one means either.
    if upstream.idle_timeout.is_zero() {
        return Err(invalid(
            "upstream.idle_timeout".into(),
            "must be more than 0s: how long an idle upstream connection waits to be reused \
             (default 4s)"
                .into(),
        ));
    }

    let mut server = server_conf(server).map_err(|(f, m)| invalid(f, m))?;
    // Pingora's upstream connector trusts the CAs of the server-wide `ca_file`.
    server.ca_file = upstream_ca;

    let snapshot = source::validate(snapshot, base).map_err(|(f, m)| invalid(f, m))?;

    let mut specs = Vec::with_capacity(routes.len());
    // The first route marked `browser: true`, which needs the `tokens` section.
    let mut browser_routes = None;
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
                if r.browser == Some(true) {
                    browser_routes.get_or_insert(i);
                    RouteAuth::Browser(required.into_boxed_slice())
                } else {
                    RouteAuth::Scopes(required.into_boxed_slice())
                }
            }
        };
        if r.browser == Some(true) && matches!(auth, RouteAuth::Public) {
            return Err(invalid(
                field("browser"),
                "a public route (`auth: none`) reads no credential; remove `browser` or \
                 `auth: none`"
                    .into(),
            ));
        }
        specs.push(RouteSpec {
            name: r.name,
            methods: r.methods,
            path: r.path,
            auth,
        });
    }
    let routes = RouteTable::build(specs).map_err(|e| invalid("routes".into(), e.to_string()))?;

    let (limits, fleet) = limits_config(limits, base).map_err(|(f, m)| invalid(f, m))?;

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
    if admin_addr.is_some_and(|a| addrs.contains(&a) || tls_addrs.contains(&a)) {
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

    let client_address = client_address_config(client_address).map_err(|(f, m)| invalid(f, m))?;
    let shield = shield_config(shield).map_err(|(f, m)| invalid(f, m))?;
    let tokens = match tokens {
        None => None,
        Some(t) => Some(tokens_config(t).map_err(|(f, m)| invalid(f, m))?),
    };
    if let (Some(i), None) = (browser_routes, &tokens) {
        return Err(invalid(
            format!("routes[{i}].browser"),
            "a browser route accepts client tokens, which keygate verifies only with a `tokens` \
             section (its `issuer` and `audience`); add one, or remove `browser: true`"
                .into(),
        ));
    }

    Ok(Config {
        path: path.to_owned(),
        checksum: String::new(),
        listen: addrs,
        tls,
        keepalive_timeout: listen.keepalive_timeout.unwrap_or(Duration::from_secs(60)),
        connection_limits,
        upstream,
        server,
        snapshot,
        routes,
        unmatched,
        limits,
        fleet,
        observability: ObservabilityConfig {
            admin: admin_addr,
            per_workspace_metrics,
            usage_max_keys,
            usage_flush_interval,
        },
        access_log,
        log_level,
        client_address,
        shield,
        tokens,
    })
}

/// `tokens`, checked.
fn tokens_config(t: TokensFile) -> Result<crate::tokens::TokenConfig, (String, String)> {
    use crate::tokens::{DEFAULT_CACHE_ENTRIES, DEFAULT_LEEWAY, MAX_LEEWAY};
    for (field, value) in [
        ("tokens.issuer", &t.issuer),
        ("tokens.audience", &t.audience),
    ] {
        if value.trim().is_empty() {
            return Err((
                field.into(),
                "empty; give the value the control plane mints with (its --token-issuer or --token-audience)".into(),
            ));
        }
    }
    let leeway = t.leeway.unwrap_or(DEFAULT_LEEWAY);
    if leeway > MAX_LEEWAY {
        return Err((
            "tokens.leeway".into(),
            format!(
                "at most {}s: a longer one keeps expired tokens working",
                MAX_LEEWAY.as_secs()
            ),
        ));
    }
    let cache_entries = t.cache_entries.unwrap_or(DEFAULT_CACHE_ENTRIES);
    if !(1..=10_000_000).contains(&cache_entries) {
        return Err((
            "tokens.cache_entries".into(),
            "must be between 1 and 10000000".into(),
        ));
    }
    Ok(crate::tokens::TokenConfig {
        issuer: t.issuer,
        audience: t.audience,
        leeway,
        cache_entries,
    })
}

/// The shield's default limit: a client retrying a mistyped key once a second stays under
/// it, a guesser does not.
pub const DEFAULT_SHIELD_FAILURES_PER_MINUTE: u32 = 100;

/// `shield`, checked; `None` when it is off.
fn shield_config(s: ShieldFile) -> Result<Option<crate::shield::ShieldConfig>, (String, String)> {
    if s.enabled == Some(false) {
        return Ok(None);
    }
    let failures_per_minute = s
        .failures_per_minute
        .unwrap_or(DEFAULT_SHIELD_FAILURES_PER_MINUTE);
    if failures_per_minute == 0 {
        return Err((
            "shield.failures_per_minute".into(),
            "must be at least 1; use shield.enabled: false to turn the shield off".into(),
        ));
    }
    let cooldown = s.cooldown.unwrap_or(Duration::from_secs(60));
    if cooldown.is_zero() || cooldown > Duration::from_secs(86_400) {
        return Err((
            "shield.cooldown".into(),
            "must be more than 0s and at most 24h".into(),
        ));
    }
    Ok(Some(crate::shield::ShieldConfig {
        failures_per_minute,
        cooldown,
        exempt: cidr_list("shield.exempt", &s.exempt)?,
    }))
}

/// A list of addresses and CIDR blocks at `field`; a wrong one is named by its index.
fn cidr_list(
    field: &str,
    blocks: &[String],
) -> Result<crate::client_address::CidrSet, (String, String)> {
    use crate::client_address::CidrSet;
    for (i, block) in blocks.iter().enumerate() {
        CidrSet::parse(std::slice::from_ref(block))
            .map_err(|e| (format!("{field}[{i}]"), e.to_string()))?;
    }
    CidrSet::parse(blocks).map_err(|e| (field.to_owned(), e.to_string()))
}

/// `client_address`, checked.
fn client_address_config(
    c: ClientAddressFile,
) -> Result<crate::client_address::ClientAddressConfig, (String, String)> {
    Ok(crate::client_address::ClientAddressConfig {
        trusted_proxies: cidr_list("client_address.trusted_proxies", &c.trusted_proxies)?,
        from: c.from.unwrap_or_default(),
    })
}

fn parse_level(level: &str) -> Result<tracing::Level, String> {
    level
        .parse()
        .map_err(|_| format!("{level:?} is not one of error, warn, info, debug, trace"))
}

type Limits = (Option<LimitsConfig>, Option<crate::limits::FleetConfig>);

fn limits_config(l: LimitsFile, base: &Path) -> Result<Limits, (String, String)> {
    let LimitsFile {
        enabled,
        live,
        sandbox,
        internal,
        headers,
        global,
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
    if !enabled.unwrap_or(true) {
        if global.is_some() {
            return Err((
                "limits.global".into(),
                "fleet-wide limits need limits on: remove `enabled: false` or this section".into(),
            ));
        }
        // Limits that are off are not checked either: turning them off must not need the
        // values fixed first.
        return Ok((None, None));
    }
    // A kind's limits and its cap on requests in flight.
    let policy = |name: &str, file: Option<PolicyFile>, default: Policy| {
        let file = file.unwrap_or_default();
        let p = Policy {
            burst_per_second: file.burst_per_second.unwrap_or(default.burst_per_second),
            sustained_per_minute: file
                .sustained_per_minute
                .unwrap_or(default.sustained_per_minute),
        };
        for (field, v) in [
            ("burst_per_second", Some(p.burst_per_second)),
            ("sustained_per_minute", Some(p.sustained_per_minute)),
            ("concurrent_requests", file.concurrent_requests),
        ] {
            if v == Some(0) {
                let fix = if field == "concurrent_requests" {
                    "must be at least 1; for no cap leave the field out"
                } else {
                    "must be at least 1; to turn limits off set `limits.enabled: false`"
                };
                return Err((format!("limits.{name}.{field}"), fix.into()));
            }
        }
        Ok((p, file.concurrent_requests.and_then(NonZeroU32::new)))
    };
    let (live, live_cap) = policy("live", live, DEFAULT_LIVE)?;
    let (sandbox, sandbox_cap) = policy("sandbox", sandbox, DEFAULT_SANDBOX)?;
    let (internal, internal_cap) = match internal {
        Some(file) => {
            let (p, cap) = policy("internal", Some(file), DEFAULT_LIVE)?;
            (Some(p), cap)
        }
        None => (None, None),
    };
    let config = LimitsConfig {
        live,
        sandbox,
        internal,
        headers,
        concurrency: ConcurrencyCaps {
            live: live_cap,
            sandbox: sandbox_cap,
            internal: internal_cap,
        },
    };
    let fleet = global.map(|g| global::validate(g, base)).transpose()?;
    Ok((Some(config), fleet))
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

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "/etc/keygate/keygate.yaml";

    /// The smallest valid config: one listener, an upstream, a keys file.
    const MINIMAL: &str = "\
listen:
  addresses: ['127.0.0.1:8080']
upstream:
  address: 127.0.0.1:9000
snapshot:
  file: keys.yaml
";

    fn parse(yaml: &str) -> Result<Config, ConfigError> {
        Config::from_yaml(yaml, Path::new(FILE))
    }

    /// `MINIMAL` with `line` added to `section` (appended as a new section if it has none).
    fn with(section: &str, line: &str) -> String {
        let header = format!("{section}:\n");
        if MINIMAL.starts_with(&header) || MINIMAL.contains(&format!("\n{header}")) {
            MINIMAL.replacen(&header, &format!("{header}  {line}\n"), 1)
        } else {
            format!("{MINIMAL}{header}  {line}\n")
        }
    }

    /// `MINIMAL` with its `snapshot:` section replaced by `section`.
    fn with_snapshot(section: &str) -> String {
        MINIMAL.replace("snapshot:\n  file: keys.yaml\n", section)
    }

    /// The field and message of a validation error; panics on anything else.
    fn invalid(yaml: &str) -> (String, String) {
        match parse(yaml) {
            Err(ConfigError::Invalid { field, message, .. }) => (field, message),
            Err(e) => panic!("not a validation error: {e}\n{yaml}"),
            Ok(_) => panic!("accepted:\n{yaml}"),
        }
    }

    /// Refused, naming `field`, with a message that says how to fix it.
    #[track_caller]
    fn assert_invalid(yaml: &str, field: &str, fix: &str) {
        let (f, message) = invalid(yaml);
        assert_eq!(f, field, "{message}\n{yaml}");
        assert!(message.contains(fix), "{field}: {message:?} lacks {fix:?}");
    }

    /// The message of a schema error (serde_yaml's, with the field path); panics on anything else.
    fn schema_error(yaml: &str) -> String {
        match parse(yaml) {
            Err(ConfigError::Schema { message, .. }) => message,
            Err(e) => panic!("not a schema error: {e}\n{yaml}"),
            Ok(_) => panic!("accepted:\n{yaml}"),
        }
    }

    #[track_caller]
    fn assert_schema_error(yaml: &str, expected: &[&str]) {
        let message = schema_error(yaml);
        for e in expected {
            assert!(message.contains(e), "{message:?} lacks {e:?}");
        }
    }

    #[track_caller]
    fn accepted(yaml: &str) -> Config {
        parse(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
    }

    #[test]
    fn the_shipped_config_parses_with_its_documented_values() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/keygate.yaml"));
        let c = Config::load(path).unwrap();
        assert_eq!(c.listen, ["127.0.0.1:8080".parse::<SocketAddr>().unwrap()]);
        assert_eq!(c.upstream.address, "127.0.0.1:9000".parse().unwrap());
        assert!(!c.upstream.forward_authorization);
        assert!(c.upstream.strip_method_override);
        assert_eq!(c.routes.routes().len(), 5);
        assert_eq!(c.unmatched, Unmatched::Deny);
        let limits = c.limits.unwrap();
        assert_eq!(
            (limits.live, limits.sandbox),
            (DEFAULT_LIVE, DEFAULT_SANDBOX)
        );
        assert_eq!(limits.internal, None);
        assert_eq!(
            limits.concurrency,
            ConcurrencyCaps {
                live: NonZeroU32::new(100),
                sandbox: NonZeroU32::new(20),
                internal: None,
            }
        );
        assert_eq!(
            c.observability.admin,
            Some(SocketAddr::from(([127, 0, 0, 1], 9901)))
        );
        // The keys file is found next to the config, wherever it is run from.
        match &c.snapshot.source {
            SourceConfig::File {
                path: keys,
                watch_interval,
            } => {
                assert_eq!(keys, &path.parent().unwrap().join("keys.example.yaml"));
                assert_eq!(*watch_interval, Duration::from_millis(250));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.checksum.len(), 64);
    }

    #[test]
    fn a_minimal_config_gets_the_documented_defaults() {
        let c = accepted(MINIMAL);
        assert_eq!(c.keepalive_timeout, Duration::from_secs(60));
        let l = &c.connection_limits;
        assert_eq!((l.max_connections, l.max_head_bytes), (4096, 64 * 1024));
        assert_eq!(
            (l.head_timeout, l.pressure_idle_timeout),
            (Duration::from_secs(10), Duration::from_secs(1))
        );
        let u = &c.upstream;
        assert_eq!(
            (
                u.connect_timeout,
                u.read_timeout,
                u.write_timeout,
                u.idle_timeout
            ),
            (
                Duration::from_secs(1),
                Duration::from_secs(30),
                Duration::from_secs(30),
                Duration::from_secs(4)
            )
        );
        assert!(!u.forward_authorization && u.strip_method_override);
        assert_eq!((c.server.threads, c.server.work_stealing), (2, false));
        assert_eq!(c.server.listener_tasks_per_fd, 1);
        assert_eq!(c.server.grace_period_seconds, Some(5));
        assert_eq!(c.routes.routes().len(), 0);
        assert_eq!(c.unmatched, Unmatched::Deny);
        assert_eq!(
            c.limits,
            Some(LimitsConfig {
                live: DEFAULT_LIVE,
                sandbox: DEFAULT_SANDBOX,
                internal: None,
                headers: RateHeaders::BOTH,
                concurrency: ConcurrencyCaps::default(),
            })
        );
        assert_eq!(
            c.observability,
            ObservabilityConfig {
                admin: Some(SocketAddr::from(([127, 0, 0, 1], 9901))),
                per_workspace_metrics: None,
                usage_max_keys: Some(100_000),
                usage_flush_interval: Duration::from_secs(60),
            }
        );
        assert_eq!(
            c.access_log,
            Some(AccessLogConfig {
                level: tracing::Level::INFO,
                sample_ratio: 1.0
            })
        );
        assert_eq!(c.log_level, "info");
        assert!(matches!(
            &c.snapshot.source,
            SourceConfig::File { path, .. } if path == Path::new("/etc/keygate/keys.yaml")
        ));
        assert_eq!(
            (c.snapshot.cache_file.as_ref(), c.snapshot.max_staleness),
            (None, None)
        );
    }

    #[test]
    fn an_error_names_the_file_then_the_field() {
        let e = parse(&with("server", "threads: 0")).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{FILE}: server.threads: must be between 1 and 1024")
        );
        let e = parse(&format!("{MINIMAL}upstream_timeout: 1s\n")).unwrap_err();
        assert!(e.to_string().starts_with(&format!("{FILE}: ")), "{e}");
    }

    #[test]
    fn an_unknown_field_is_refused_with_the_allowed_names() {
        assert_schema_error(
            &format!("{MINIMAL}upstream_timeout: 1s\n"),
            &[
                "unknown field `upstream_timeout`",
                "expected one of",
                "`listen`",
            ],
        );
        assert_schema_error(
            &with("upstream", "read_timout: 1s"),
            &["upstream", "unknown field `read_timout`", "`read_timeout`"],
        );
        assert_schema_error(
            &with("routes", "- { name: all, path: /**, scope: [a:read] }"),
            &["routes[0]", "unknown field `scope`"],
        );
        assert_schema_error(
            &with_snapshot("snapshot:\n  file: keys.yaml\n  cache: x\n"),
            &["snapshot", "unknown field `cache`"],
        );
    }

    #[test]
    fn a_missing_section_or_a_wrong_type_is_a_schema_error() {
        let no_upstream = MINIMAL.replace("upstream:\n  address: 127.0.0.1:9000\n", "");
        assert_schema_error(&no_upstream, &["missing field `upstream`"]);
        assert_schema_error(
            &MINIMAL.replace("addresses: ['127.0.0.1:8080']", "addresses: 8080"),
            &["listen.addresses", "invalid type: integer `8080`"],
        );
        assert_schema_error(
            &format!("{MINIMAL}unmatched: allow\n"),
            &[
                "unmatched",
                "unknown variant `allow`",
                "`deny`",
                "`authenticate`",
            ],
        );
        assert_schema_error(
            &with("listen", "max_connections: -1"),
            &["listen.max_connections"],
        );
    }

    #[test]
    fn a_bad_duration_names_its_field_and_the_accepted_form() {
        for (section, line, field) in [
            ("upstream", "read_timeout: soon", "upstream.read_timeout"),
            (
                "upstream",
                "connect_timeout: 10",
                "upstream.connect_timeout",
            ),
            (
                "listen",
                "keepalive_timeout: -1s",
                "listen.keepalive_timeout",
            ),
            (
                "usage",
                "flush_interval: 1 fortnight",
                "usage.flush_interval",
            ),
        ] {
            let message = schema_error(&with(section, line));
            assert!(message.contains(field), "{message:?} lacks {field:?}");
            assert!(
                message.contains("write a number and a unit, such as 500ms, 2s or 1m")
                    || message.contains("a duration such as 500ms, 2s or 1m"),
                "{message:?}"
            );
        }
        // A well-formed duration in each unit is accepted.
        let c = accepted(&with("upstream", "read_timeout: 1m"));
        assert_eq!(c.upstream.read_timeout, Duration::from_secs(60));
        let c = accepted(&with("upstream", "connect_timeout: 500ms"));
        assert_eq!(c.upstream.connect_timeout, Duration::from_millis(500));
    }

    #[test]
    fn listen_needs_ip_addresses_with_ports() {
        assert_invalid(
            &MINIMAL.replace("['127.0.0.1:8080']", "[]"),
            "listen.addresses",
            "give at least one address such as 127.0.0.1:8080",
        );
        for (bad, field) in [
            (
                "['127.0.0.1:8080', 'localhost:8081']",
                "listen.addresses[1]",
            ),
            ("['127.0.0.1']", "listen.addresses[0]"),
            ("['127.0.0.1:99999']", "listen.addresses[0]"),
        ] {
            assert_invalid(
                &MINIMAL.replace("['127.0.0.1:8080']", bad),
                field,
                "is not an IP address and port such as 127.0.0.1:8080 or [::1]:8080",
            );
        }
        let c =
            accepted(&MINIMAL.replace("['127.0.0.1:8080']", "['127.0.0.1:8080', '[::1]:8080']"));
        assert_eq!(c.listen.len(), 2);
    }

    #[test]
    fn listen_connection_bounds_are_checked() {
        assert_invalid(
            &with("listen", "max_connections: 0"),
            "listen.max_connections",
            "must be at least 1; omit it for the default of 4096",
        );
        for bytes in [0, 1023, 1_048_577] {
            assert_invalid(
                &with("listen", &format!("max_request_head_bytes: {bytes}")),
                "listen.max_request_head_bytes",
                "must be between 1024 and 1048576; omit it for the default of 65536",
            );
        }
        for bytes in [1024, 1_048_576] {
            let c = accepted(&with("listen", &format!("max_request_head_bytes: {bytes}")));
            assert_eq!(c.connection_limits.max_head_bytes, bytes);
        }
        for field in ["request_head_timeout", "idle_timeout_under_pressure"] {
            assert_invalid(
                &with("listen", &format!("{field}: 0s")),
                &format!("listen.{field}"),
                "must be more than 0s",
            );
        }
        assert_invalid(
            &with("upstream", "idle_timeout: 0s"),
            "upstream.idle_timeout",
            "must be more than 0s: how long an idle upstream connection waits to be reused \
             (default 4s)",
        );
    }

    #[test]
    fn client_address_takes_trusted_blocks_and_names_a_bad_one_by_index() {
        use crate::client_address::ForwardedFrom;
        let c = accepted(&with(
            "client_address",
            "trusted_proxies: [10.0.0.0/8, '2001:db8::/32', 192.0.2.7]",
        ));
        assert!(
            c.client_address
                .trusted_proxies
                .contains("10.9.9.9".parse().unwrap())
        );
        assert!(
            !c.client_address
                .trusted_proxies
                .contains("11.0.0.1".parse().unwrap())
        );
        assert_eq!(c.client_address.from, ForwardedFrom::XForwardedFor);
        let c = accepted(&with("client_address", "from: forwarded"));
        assert_eq!(c.client_address.from, ForwardedFrom::Forwarded);
        assert!(
            c.client_address.trusted_proxies.is_empty(),
            "none by default"
        );
        assert_invalid(
            &with(
                "client_address",
                "trusted_proxies: [10.0.0.0/8, 10.0.0.0/33]",
            ),
            "client_address.trusted_proxies[1]",
            "prefix length outside 0..=32",
        );
        assert_invalid(
            &with("client_address", "trusted_proxies: [loadbalancer]"),
            "client_address.trusted_proxies[0]",
            "CIDR block such as 10.0.0.0/8",
        );
        assert_schema_error(
            &with("client_address", "from: x-real-ip"),
            &["client_address.from", "x-forwarded-for", "forwarded"],
        );
    }

    #[test]
    fn the_shield_is_on_by_default_and_its_bad_values_are_named() {
        let c = accepted(MINIMAL);
        let shield = c.shield.expect("on by default");
        assert_eq!(
            shield.failures_per_minute,
            DEFAULT_SHIELD_FAILURES_PER_MINUTE
        );
        assert_eq!(shield.cooldown, Duration::from_secs(60));
        assert!(accepted(&with("shield", "enabled: false")).shield.is_none());
        let c = accepted(&with("shield", "exempt: [10.0.0.0/8]"));
        assert!(
            c.shield
                .unwrap()
                .exempt
                .contains("10.1.1.1".parse().unwrap())
        );
        assert_invalid(
            &with("shield", "failures_per_minute: 0"),
            "shield.failures_per_minute",
            "use shield.enabled: false",
        );
        assert_invalid(
            &with("shield", "cooldown: 0s"),
            "shield.cooldown",
            "more than 0s",
        );
        assert_invalid(
            &with("shield", "exempt: [10.0.0.0/8, office]"),
            "shield.exempt[1]",
            "CIDR block",
        );
    }

    #[test]
    fn the_upstream_must_resolve_and_its_timeouts_be_positive() {
        for bad in ["127.0.0.1", "not an address", "127.0.0.1:port"] {
            assert_invalid(
                &MINIMAL.replace("address: 127.0.0.1:9000", &format!("address: '{bad}'")),
                "upstream.address",
                "does not resolve; give host:port such as 127.0.0.1:9000",
            );
        }
        for field in ["connect_timeout", "read_timeout", "write_timeout"] {
            assert_invalid(
                &with("upstream", &format!("{field}: 0s")),
                &format!("upstream.{field}"),
                "must be more than 0s",
            );
        }
    }

    #[test]
    fn server_threads_and_listener_tasks_are_bounded() {
        for threads in [0, 1025] {
            assert_invalid(
                &with("server", &format!("threads: {threads}")),
                "server.threads",
                "must be between 1 and 1024",
            );
        }
        for threads in [1, 1024] {
            assert_eq!(
                accepted(&with("server", &format!("threads: {threads}")))
                    .server
                    .threads,
                threads
            );
        }
        for tasks in [0, 65] {
            assert_invalid(
                &with("server", &format!("listener_tasks_per_fd: {tasks}")),
                "server.listener_tasks_per_fd",
                "must be between 1 and 64",
            );
        }
    }

    #[test]
    fn the_snapshot_needs_exactly_one_source() {
        let fix = "give exactly one source: `file: keys.yaml` or `control_plane: { url: … }`";
        assert_invalid(&with_snapshot("snapshot: {}\n"), "snapshot.file", fix);
        assert_invalid(
            &with_snapshot(
                "snapshot:\n  file: keys.yaml\n  control_plane: { url: 'https://cp', token_env: T }\n",
            ),
            "snapshot.file",
            fix,
        );
        assert_schema_error(
            &MINIMAL.replace("snapshot:\n  file: keys.yaml\n", ""),
            &["missing field `snapshot`"],
        );
    }

    #[test]
    fn the_file_source_settings_are_checked() {
        for interval in ["5ms", "61s"] {
            assert_invalid(
                &with("snapshot", &format!("watch_interval: {interval}")),
                "snapshot.watch_interval",
                "must be between 10ms and 60s",
            );
        }
        for (interval, expected) in [
            ("10ms", Duration::from_millis(10)),
            ("60s", Duration::from_secs(60)),
        ] {
            let c = accepted(&with("snapshot", &format!("watch_interval: {interval}")));
            assert!(matches!(
                c.snapshot.source,
                SourceConfig::File { watch_interval, .. } if watch_interval == expected
            ));
        }
        assert_invalid(
            &with("snapshot", "cache_file: last.json"),
            "snapshot.cache_file",
            "is for the control-plane source",
        );
        assert_invalid(
            &with("snapshot", "max_staleness: 500ms"),
            "snapshot.max_staleness",
            "must be at least 1s (or absent: never)",
        );
        let c = accepted(&with("snapshot", "max_staleness: 1s"));
        assert_eq!(c.snapshot.max_staleness, Some(Duration::from_secs(1)));
    }

    /// A control-plane `snapshot:` section whose token is read from `token` beside the config.
    fn control_plane(fields: &str) -> String {
        with_snapshot(&format!(
            "snapshot:\n  control_plane:\n    url: https://cp.internal:7443/\n    token_file: token\n{fields}"
        ))
    }

    /// A directory holding the token file, and the config path inside it.
    fn token_dir(token: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), token).unwrap();
        let config = dir.path().join("keygate.yaml");
        (dir, config)
    }

    fn invalid_at(yaml: &str, path: &Path) -> (String, String) {
        match Config::from_yaml(yaml, path) {
            Err(ConfigError::Invalid { field, message, .. }) => (field, message),
            Err(e) => panic!("not a validation error: {e}"),
            Ok(_) => panic!("accepted:\n{yaml}"),
        }
    }

    #[test]
    fn a_control_plane_source_gets_its_token_from_a_file_beside_the_config() {
        let (dir, path) = token_dir("  s3cret-token\n");
        let yaml = control_plane("  cache_file: last.json\n");
        let c = Config::from_yaml(&yaml, &path).unwrap();
        let SourceConfig::ControlPlane(cp) = &c.snapshot.source else {
            panic!("{:?}", c.snapshot.source)
        };
        assert_eq!(cp.url, "https://cp.internal:7443", "trailing slash trimmed");
        assert_eq!(cp.token.expose(), "s3cret-token");
        assert_eq!(format!("{:?}", cp.token), "Secret(..)");
        assert!(cp.watch);
        assert_eq!(
            (cp.wait, cp.poll_interval, cp.timeout),
            (
                Duration::from_secs(30),
                Duration::from_secs(10),
                Duration::from_secs(10)
            )
        );
        assert!(cp.public_key.is_none());
        assert_eq!(c.snapshot.cache_file, Some(dir.path().join("last.json")));
        assert_eq!(c.snapshot.name(), "control_plane");
    }

    #[test]
    fn the_control_plane_settings_are_checked() {
        let (_dir, path) = token_dir("s3cret-token");
        let cases = [
            (
                control_plane("  watch_interval: 1s\n"),
                "snapshot.watch_interval",
                "is for the file source; use control_plane.watch / poll_interval",
            ),
            (
                control_plane("    wait: 61s\n"),
                "snapshot.control_plane.wait",
                "must be at most 60s",
            ),
            (
                control_plane("    public_key: not-base64\n"),
                "snapshot.control_plane.public_key",
                "as printed by `keygate-control-plane --print-public-key`",
            ),
            (
                control_plane("    token_env: KEYGATE_TOKEN\n"),
                "snapshot.control_plane.token_env",
                "give exactly one of `token_env: VAR` or `token_file: path`",
            ),
            (
                control_plane("").replace("token_file: token", "token_file: missing"),
                "snapshot.control_plane.token_file",
                "cannot read",
            ),
            (
                control_plane("").replace(
                    "token_file: token",
                    "token_env: KEYGATE_UNIT_TEST_VARIABLE_NEVER_SET",
                ),
                "snapshot.control_plane.token_env",
                "the environment variable KEYGATE_UNIT_TEST_VARIABLE_NEVER_SET is not set",
            ),
            (
                control_plane("").replace("    token_file: token\n", ""),
                "snapshot.control_plane.token_env",
                "give exactly one of",
            ),
        ];
        for (yaml, field, fix) in cases {
            let (f, message) = invalid_at(&yaml, &path);
            assert_eq!(f, field, "{message}\n{yaml}");
            assert!(message.contains(fix), "{field}: {message:?} lacks {fix:?}");
        }
    }

    #[test]
    fn the_control_plane_url_must_be_an_http_base_url() {
        let (_dir, path) = token_dir("s3cret-token");
        for (url, fix) in [
            ("ftp://cp.internal", "must start with http:// or https://"),
            ("cp.internal:7443", "must start with http:// or https://"),
            (
                "https://cp internal",
                "is not a base URL such as https://cp.internal:7443",
            ),
            ("https://cp.internal/?x=1", "is not a base URL"),
            ("https://cp.internal/#top", "is not a base URL"),
            // Named as written, not as "https:" with its slashes trimmed.
            ("https://", "\"https://\" is not a base URL"),
            ("http:///", "\"http:///\" is not a base URL"),
        ] {
            let yaml = control_plane("").replace("https://cp.internal:7443/", url);
            let (field, message) = invalid_at(&yaml, &path);
            assert_eq!(field, "snapshot.control_plane.url", "{url}");
            assert!(message.contains(fix), "{url}: {message:?} lacks {fix:?}");
        }
    }

    #[test]
    fn an_empty_or_spaced_token_is_refused() {
        for token in ["", "  \n", "two words", "tab\there"] {
            let (_dir, path) = token_dir(token);
            let (field, message) = invalid_at(&control_plane(""), &path);
            assert_eq!(field, "snapshot.control_plane.token_env", "{token:?}");
            assert!(
                message.contains("the token is empty or holds spaces or control characters"),
                "{message}"
            );
        }
    }

    #[test]
    fn route_scopes_are_required_and_checked() {
        assert_invalid(
            &with(
                "routes",
                "- { name: docs, path: /docs/**, auth: none, scopes: [] }",
            ),
            "routes[0] (\"docs\").scopes",
            "a public route (`auth: none`) takes no scopes; remove one of the two",
        );
        for route in [
            "- { name: all, path: /** }",
            "- { name: all, path: /**, auth: key }",
        ] {
            assert_invalid(
                &with("routes", route),
                "routes[0] (\"all\").scopes",
                "missing; give `scopes: [...]` (all required), `scopes: []` (any valid key) \
                 or `auth: none` (public)",
            );
        }
        let (field, message) = invalid(&with(
            "routes",
            "- { name: a, path: /a, scopes: [] }\n  - { name: all, path: /**, scopes: [x:read, 'a::read'] }",
        ));
        assert_eq!(field, "routes[1] (\"all\").scopes[1]");
        assert!(message.contains("a::read"), "{message}");
    }

    #[test]
    fn route_table_errors_are_reported_under_routes() {
        let (field, message) = invalid(&with(
            "routes",
            "- { name: a, path: /v1/x, scopes: [] }\n  - { name: b, path: /V1/X, scopes: [] }",
        ));
        assert_eq!(field, "routes");
        assert!(message.contains("only in letter case"), "{message}");
        let (field, message) = invalid(&with("routes", "- { name: a, path: /**/x, scopes: [] }"));
        assert_eq!(field, "routes");
        assert!(
            message.contains("\"**\" may only be the last segment"),
            "{message}"
        );
    }

    #[test]
    fn route_auth_modes_build_the_right_requirement() {
        let c = accepted(&with(
            "routes",
            "- { name: docs, path: /docs/**, auth: none }\n  - { name: any, path: /me, scopes: [] }\n  - { name: rw, path: /p/**, auth: key, scopes: [p:read, p:write] }",
        ));
        let auths: Vec<_> = c.routes.routes().iter().map(|r| r.auth().clone()).collect();
        assert_eq!(auths[0], RouteAuth::Public);
        assert_eq!(auths[1], RouteAuth::Scopes(Box::new([])));
        assert_eq!(
            auths[2],
            RouteAuth::Scopes(Box::new([
                RequiredScope::parse("p:read").unwrap(),
                RequiredScope::parse("p:write").unwrap()
            ]))
        );
    }

    #[test]
    fn a_browser_route_needs_scopes_and_the_tokens_section() {
        let route = "- { name: live, path: /live/**, scopes: [p:read], browser: true }";
        assert_invalid(
            &with("routes", route),
            "routes[0].browser",
            "a browser route accepts client tokens, which keygate verifies only with a `tokens` \
             section",
        );
        let tokens = "tokens:\n  issuer: cp\n  audience: keygate\n";
        let c = accepted(&format!("{}{tokens}", with("routes", route)));
        assert_eq!(
            c.routes.routes()[0].auth(),
            &RouteAuth::Browser(Box::new([RequiredScope::parse("p:read").unwrap()]))
        );
        assert_invalid(
            &format!(
                "{}{tokens}",
                with(
                    "routes",
                    "- { name: d, path: /d, auth: none, browser: true }"
                )
            ),
            "routes[0] (\"d\").browser",
            "a public route (`auth: none`) reads no credential; remove `browser` or `auth: none`",
        );
    }

    #[test]
    fn limits_of_zero_are_refused_with_the_way_to_turn_limits_off() {
        for (section, field) in [
            ("live", "burst_per_second"),
            ("live", "sustained_per_minute"),
            ("sandbox", "burst_per_second"),
            ("sandbox", "sustained_per_minute"),
            ("internal", "burst_per_second"),
            ("internal", "sustained_per_minute"),
        ] {
            assert_invalid(
                &with("limits", &format!("{section}: {{ {field}: 0 }}")),
                &format!("limits.{section}.{field}"),
                "must be at least 1; to turn limits off set `limits.enabled: false`",
            );
            // Limits turned off are not checked: turning them off needs no fix first.
            let off = with(
                "limits",
                &format!("enabled: false\n  {section}: {{ {field}: 0 }}"),
            );
            assert_eq!(accepted(&off).limits, None);
        }
        for section in ["live", "sandbox", "internal"] {
            assert_invalid(
                &with(
                    "limits",
                    &format!("{section}: {{ concurrent_requests: 0 }}"),
                ),
                &format!("limits.{section}.concurrent_requests"),
                "must be at least 1; for no cap leave the field out",
            );
        }
    }

    #[test]
    fn caps_on_requests_in_flight_are_read_by_kind_and_absent_by_default() {
        let c = accepted(&with(
            "limits",
            "live: { concurrent_requests: 40 }\n  internal: { concurrent_requests: 200 }",
        ));
        let l = c.limits.unwrap();
        assert_eq!(
            l.concurrency,
            ConcurrencyCaps {
                live: NonZeroU32::new(40),
                sandbox: None,
                internal: NonZeroU32::new(200),
            }
        );
        // A cap leaves the kind's rates at their defaults.
        assert_eq!(l.live, DEFAULT_LIVE);
        let none = accepted(&with("limits", "enabled: true")).limits.unwrap();
        assert_eq!(none.concurrency, ConcurrencyCaps::default());
    }

    #[test]
    fn limits_take_their_defaults_field_by_field_and_can_be_turned_off() {
        let c = accepted(&with("limits", "sandbox: { burst_per_second: 7 }"));
        let l = c.limits.unwrap();
        assert_eq!(
            l.sandbox,
            Policy {
                burst_per_second: 7,
                sustained_per_minute: DEFAULT_SANDBOX.sustained_per_minute
            }
        );
        assert_eq!((l.live, l.internal), (DEFAULT_LIVE, None));
        // Internal limits, once given, fill in from the live defaults.
        let c = accepted(&with("limits", "internal: { burst_per_second: 1000 }"));
        assert_eq!(
            c.limits.unwrap().internal,
            Some(Policy {
                burst_per_second: 1000,
                sustained_per_minute: DEFAULT_LIVE.sustained_per_minute
            })
        );
        assert_eq!(accepted(&with("limits", "enabled: false")).limits, None);
    }

    /// `limits.global` written inline after `redis:`'s url.
    fn global(url: &str, more: &str) -> String {
        with(
            "limits",
            &format!("global: {{ redis: {{ url: {url:?} }}{more} }}"),
        )
    }

    #[test]
    fn fleet_limits_take_their_defaults() {
        let c = accepted(&global("redis://127.0.0.1:6379/0", ""));
        let f = c.fleet.expect("fleet limits");
        assert_eq!(f.url, "redis://127.0.0.1:6379/0");
        assert_eq!(f.command_timeout, Duration::from_millis(50));
        assert_eq!(f.connect_timeout, Duration::from_millis(250));
        assert_eq!(f.on_outage, crate::limits::OnOutage::Local);
        assert_eq!(f.local_share, 1.0);
        assert!(f.password.is_none());
        assert!(accepted(MINIMAL).fleet.is_none());
        let c = accepted(&global(
            "redis://cache:6379",
            ", on_outage: deny, local_share: 0.25",
        ));
        let f = c.fleet.unwrap();
        assert_eq!(
            (f.on_outage, f.local_share),
            (crate::limits::OnOutage::Deny, 0.25)
        );
    }

    #[test]
    fn a_bad_fleet_limits_section_names_its_field_and_the_fix() {
        for (url, fix) in [
            ("http://127.0.0.1:6379", "write it as redis://host:port/db"),
            (
                "rediss://127.0.0.1:6379#insecure",
                "would skip verifying Redis's certificate",
            ),
            (
                "redis://:hunter2@127.0.0.1:6379",
                "use `password_env` or `password_file`",
            ),
            ("redis://", "is not redis://host:port/db"),
            ("redis://127.0.0.1:6379/zero", "is not redis://host:port/db"),
        ] {
            assert_invalid(&global(url, ""), "limits.global.redis.url", fix);
        }
        let (_, message) = invalid(&global("redis://:hunter2@127.0.0.1:6379", ""));
        assert!(!message.contains("hunter2"), "{message}");
        for share in ["0", "1.5", "-1", ".nan"] {
            assert_invalid(
                &global("redis://h:1", &format!(", local_share: {share}")),
                "limits.global.local_share",
                "1/N for N sidecars",
            );
        }
        assert_invalid(
            &with(
                "limits",
                "global: { redis: { url: redis://h:1, command_timeout: 5s } }",
            ),
            "limits.global.redis.command_timeout",
            "between 1ms and 1s",
        );
        assert_invalid(
            &with(
                "limits",
                "global: { redis: { url: redis://h:1/2, cluster: true } }",
            ),
            "limits.global.redis.url",
            "a Redis Cluster has only database 0",
        );
        for url in ["redis://h:1", "redis://h:1/0"] {
            let c = accepted(&with(
                "limits",
                &format!("global: {{ redis: {{ url: {url}, cluster: true }} }}"),
            ));
            assert!(c.fleet.unwrap().cluster, "{url}");
        }
        let c = accepted(&with(
            "limits",
            "global: { redis: { url: redis://a:1, cluster: true, nodes: [redis://b:2, redis://c:3/0] } }",
        ));
        assert_eq!(c.fleet.unwrap().nodes, ["redis://b:2", "redis://c:3/0"]);
        for (redis, field, fix) in [
            (
                "url: redis://a:1, nodes: [redis://b:2]",
                "limits.global.redis.nodes",
                "applies only with `cluster: true`",
            ),
            (
                "url: redis://a:1, cluster: true, nodes: [redis://b:2, redis://c:3/1]",
                "limits.global.redis.nodes[1]",
                "a Redis Cluster has only database 0",
            ),
            (
                "url: redis://a:1, cluster: true, nodes: [rediss://b:2]",
                "limits.global.redis.nodes[0]",
                "with the scheme of `url` (redis://)",
            ),
            (
                "url: redis://a:1, cluster: true, nodes: [b:2]",
                "limits.global.redis.nodes[0]",
                "write it as redis://host:port/db",
            ),
        ] {
            assert_invalid(
                &with("limits", &format!("global: {{ redis: {{ {redis} }} }}")),
                field,
                fix,
            );
        }
        assert_invalid(
            &with(
                "limits",
                "global: { redis: { url: redis://h:1, ca_file: ca.pem } }",
            ),
            "limits.global.redis.ca_file",
            "applies only to a rediss:// url",
        );
        assert_invalid(
            &with(
                "limits",
                "global: { redis: { url: rediss://h:1, ca_file: no-such-ca.pem } }",
            ),
            "limits.global.redis.ca_file",
            "cannot read it",
        );
        for (redis, field, fix) in [
            (
                "url: rediss://h:1, cert_file: c.pem",
                "key_file",
                "needs its private key",
            ),
            (
                "url: rediss://h:1, key_file: k.pem",
                "cert_file",
                "needs its client certificate",
            ),
            (
                "url: redis://h:1, cert_file: c.pem, key_file: k.pem",
                "cert_file",
                "applies only to a rediss:// url",
            ),
            (
                "url: rediss://h:1, cert_file: no-such.crt, key_file: no-such.key",
                "cert_file",
                "no-such.crt: cannot read it",
            ),
        ] {
            assert_invalid(
                &with("limits", &format!("global: {{ redis: {{ {redis} }} }}")),
                &format!("limits.global.redis.{field}"),
                fix,
            );
        }
        assert_invalid(
            &with(
                "limits",
                "global: { redis: { url: redis://h:1, password_env: KEYGATE_TEST_NO_SUCH_VAR } }",
            ),
            "limits.global.redis.password_env",
            "KEYGATE_TEST_NO_SUCH_VAR is not set",
        );
        assert_invalid(
            &format!(
                "{}  enabled: false\n  global: {{ redis: {{ url: redis://h:1 }} }}\n",
                MINIMAL.to_owned() + "limits:\n"
            ),
            "limits.global",
            "need limits on",
        );
        assert_schema_error(
            &global("redis://h:1", ", on_outage: ignore"),
            &[
                "limits.global.on_outage",
                "unknown variant `ignore`",
                "local",
                "allow",
                "deny",
            ],
        );
        assert_schema_error(
            &with(
                "limits",
                "global: { redis: { url: redis://h:1, pasword_env: X } }",
            ),
            &["unknown field `pasword_env`"],
        );
    }

    #[test]
    fn limits_headers_must_be_a_known_set() {
        assert_invalid(
            &with("limits", "headers: all"),
            "limits.headers",
            "\"all\" is not one of both, ietf, x-ratelimit, none",
        );
        let c = accepted(&with("limits", "headers: none"));
        assert_eq!(
            c.limits.unwrap().headers,
            RateHeaders::parse("none").unwrap()
        );
    }

    #[test]
    fn log_levels_must_be_tracing_levels() {
        let fix = "is not one of error, warn, info, debug, trace";
        assert_invalid(&with("log", "level: verbose"), "log.level", fix);
        assert_invalid(&with("access_log", "level: loud"), "access_log.level", fix);
        assert_eq!(accepted(&with("log", "level: debug")).log_level, "debug");
    }

    #[test]
    fn the_access_log_sample_ratio_is_a_share() {
        for ratio in ["1.5", "-0.1", ".nan"] {
            assert_invalid(
                &with("access_log", &format!("sample_ratio: {ratio}")),
                "access_log.sample_ratio",
                "is outside 0.0 to 1.0 (1.0 logs every request)",
            );
        }
        let c = accepted(&with("access_log", "sample_ratio: 0.0"));
        assert_eq!(c.access_log.unwrap().sample_ratio, 0.0);
        assert_eq!(
            accepted(&with("access_log", "enabled: false")).access_log,
            None
        );
    }

    #[test]
    fn the_admin_address_is_an_ip_and_port_of_its_own() {
        assert_invalid(
            &with("admin", "address: localhost"),
            "admin.address",
            "\"localhost\" is not an IP address and port such as 127.0.0.1:9901",
        );
        assert_invalid(
            &with("admin", "address: '127.0.0.1:8080'"),
            "admin.address",
            "is also a listen address; give the admin endpoints their own port",
        );
        // Disabled, neither its address nor a clash with a listener matters.
        let c = accepted(
            &with("admin", "enabled: false")
                .replace("admin:\n", "admin:\n  address: '127.0.0.1:8080'\n"),
        );
        assert_eq!(c.observability.admin, None);
    }

    #[test]
    fn usage_settings_are_checked() {
        assert_invalid(
            &with("usage", "flush_interval: 50ms"),
            "usage.flush_interval",
            "must be at least 100ms",
        );
        let c = accepted(&with("usage", "flush_interval: 100ms"));
        assert_eq!(
            c.observability.usage_flush_interval,
            Duration::from_millis(100)
        );
        assert_eq!(
            accepted(&with("usage", "mode: off"))
                .observability
                .usage_max_keys,
            None
        );
        assert_eq!(
            accepted(&with("usage", "max_keys: 10"))
                .observability
                .usage_max_keys,
            Some(10)
        );
    }

    #[test]
    fn per_workspace_metrics_are_capped_only_when_enabled() {
        let c = accepted(&with("metrics", "per_workspace_max: 5"));
        assert_eq!(c.observability.per_workspace_metrics, None);
        let c = accepted(&with("metrics", "per_workspace: true"));
        assert_eq!(c.observability.per_workspace_metrics, Some(1000));
    }
}

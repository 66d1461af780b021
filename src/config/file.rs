//! The config file's schema, field for field: what `keygate.yaml` may contain, and nothing
//! more (unknown fields are errors). `Config::from_yaml` parses into these types and then
//! validates them; tools and tests build a config from them and write it with `serde_yaml`, so a
//! config built in code cannot name a field the file does not have. `None` means "the default",
//! written as `null`.

use super::{Unmatched, UsageMode};
use crate::client_address::ForwardedFrom;
use crate::limits::OnOutage;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub listen: ListenFile,
    pub upstream: UpstreamFile,
    #[serde(default)]
    pub server: ServerFile,
    pub snapshot: SnapshotFile,
    #[serde(default)]
    pub routes: Vec<RouteFile>,
    #[serde(default)]
    pub unmatched: Unmatched,
    #[serde(default)]
    pub limits: LimitsFile,
    #[serde(default)]
    pub admin: AdminFile,
    #[serde(default)]
    pub metrics: MetricsFile,
    #[serde(default)]
    pub access_log: AccessLogFile,
    #[serde(default)]
    pub usage: UsageFile,
    #[serde(default)]
    pub log: LogFile,
    #[serde(default)]
    pub client_address: ClientAddressFile,
    #[serde(default)]
    pub shield: ShieldFile,
    /// Absent: only API keys are accepted.
    #[serde(default)]
    pub tokens: Option<TokensFile>,
}

/// `tokens`: OAuth access tokens (JWTs) minted by the control plane, verified offline.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensFile {
    /// The `iss` every token must carry: the control plane's `--token-issuer`.
    pub issuer: String,
    /// The `aud` every token must carry: the control plane's `--token-audience`.
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf`. Default 30s, at most 60s.
    #[serde(default, with = "human_duration")]
    pub leeway: Option<Duration>,
    /// Verified tokens remembered, so that a repeated token costs no signature check.
    /// Default 100000.
    pub cache_entries: Option<usize>,
}

/// `shield`: addresses that fail authentication too often are refused for a while.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShieldFile {
    /// Default true.
    pub enabled: Option<bool>,
    /// Failed authentications per minute from one address (IPv6: one /64) that start its
    /// cool-down. Default 100.
    pub failures_per_minute: Option<u32>,
    /// How long a shielded address is refused. Default 60s.
    #[serde(default, with = "human_duration")]
    pub cooldown: Option<Duration>,
    /// Addresses and CIDR blocks never shielded (monitoring, a known office).
    #[serde(default)]
    pub exempt: Vec<String>,
}

/// `client_address`: who the client is when keygate sits behind proxies.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientAddressFile {
    /// Peers whose forwarding header is believed: addresses and CIDR blocks. Default none: the
    /// TCP peer is the client, and forwarding headers from clients are dropped.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// `x-forwarded-for` (default) or `forwarded` (RFC 7239).
    pub from: Option<ForwardedFrom>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    /// Serve /metrics, /healthz, /readyz and /status. Default true.
    pub enabled: Option<bool>,
    /// Default 127.0.0.1:9901 (loopback: these endpoints are for the host's own agents).
    pub address: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsFile {
    /// Export `keygate_workspace_requests_total` by workspace. Default false.
    pub per_workspace: Option<bool>,
    /// Workspaces given their own series before the rest count as `(other)`. Default 1000.
    pub per_workspace_max: Option<usize>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogFile {
    /// One JSON line per request on stdout. Default true.
    pub enabled: Option<bool>,
    /// The level the lines are logged at. Default info.
    pub level: Option<String>,
    /// Share of requests logged, 0.0 to 1.0. Default 1.0.
    pub sample_ratio: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageFile {
    /// `status`: per-key request counts and last use shown on /status; `off`. Default status.
    pub mode: Option<UsageMode>,
    /// Keys tracked at most; further keys are not tracked (and counted as dropped). Default 100000.
    pub max_keys: Option<usize>,
    /// With a control-plane source: how often usage is reported to it. Default 60s.
    #[serde(default, with = "human_duration")]
    pub flush_interval: Option<Duration>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Count requests and answer 429 over a limit. Default true.
    pub enabled: Option<bool>,
    /// Default 30/s and 3,000/min.
    pub live: Option<PolicyFile>,
    /// Default 5/s and 100/min.
    pub sandbox: Option<PolicyFile>,
    /// Limits per internal key. Absent: internal keys are not throttled.
    pub internal: Option<PolicyFile>,
    /// Which rate-limit headers responses carry: both (default), ietf, x-ratelimit or none.
    pub headers: Option<String>,
    /// Hold the limits across every sidecar through Redis. Absent: each host enforces them alone.
    pub global: Option<GlobalLimitsFile>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalLimitsFile {
    pub redis: RedisFile,
    /// What a request beyond the leased tokens gets while Redis is unreachable: local
    /// (default), allow or deny.
    pub on_outage: Option<OnOutage>,
    /// With `on_outage: local`: each sidecar's share of each limit while Redis is out. Default 1.0;
    /// set it to 1/N for N sidecars.
    pub local_share: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisFile {
    /// `redis://host:port/db`.
    pub url: String,
    /// The environment variable holding Redis's password (never the config itself).
    pub password_env: Option<String>,
    /// A file holding Redis's password (relative to this config file).
    pub password_file: Option<PathBuf>,
    /// Default 250ms.
    #[serde(default, with = "human_duration")]
    pub connect_timeout: Option<Duration>,
    /// The longest a request waits on Redis. Default 50ms.
    #[serde(default, with = "human_duration")]
    pub command_timeout: Option<Duration>,
    /// With a `rediss://` url: PEM certificates of the CAs that sign Redis's certificate
    /// (relative to this config file). Default: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// With a `rediss://` url: the client certificate (PEM, leaf first) keygate presents, for a
    /// Redis with `tls-auth-clients yes` (relative to this config file). With `key_file`.
    pub cert_file: Option<PathBuf>,
    /// The private key of `cert_file` (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// `url` is one node of a Redis Cluster: keygate learns the others from it and sends each
    /// workspace's calls to the shard that holds its slot. Default false.
    pub cluster: Option<bool>,
    /// With `cluster: true`: more nodes of the cluster, each `redis://host:port` like `url`
    /// (same scheme), to start from and to come back through when `url`'s node is down.
    pub nodes: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    pub burst_per_second: Option<u32>,
    pub sustained_per_minute: Option<u32>,
    /// Requests in flight at once, per workspace (per key for `internal`), on each host.
    /// Absent: no cap.
    pub concurrent_requests: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenFile {
    /// `host:port` addresses to accept clients on.
    pub addresses: Vec<String>,
    /// How long an idle client connection is kept open. Default 60s.
    #[serde(default, with = "human_duration")]
    pub keepalive_timeout: Option<Duration>,
    /// Client connections open at once, over all proxy listeners' threads; more are closed on
    /// arrival. Default 4096.
    pub max_connections: Option<usize>,
    /// How long a request head may take from its first byte to its last. Default 10s.
    #[serde(default, with = "human_duration")]
    pub request_head_timeout: Option<Duration>,
    /// The largest request head (request line and headers) accepted. Default 65536.
    pub max_request_head_bytes: Option<usize>,
    /// Above 90% of max_connections, how long a connection may stay idle. Default 1s.
    #[serde(default, with = "human_duration")]
    pub idle_timeout_under_pressure: Option<Duration>,
    /// Every connection begins with a PROXY protocol header (v1 or v2) from a load balancer,
    /// naming the client. Default false.
    pub proxy_protocol: Option<bool>,
    /// HTTPS listeners (HTTP/2 and HTTP/1.1 by ALPN), beside or instead of `addresses`.
    pub tls: Option<TlsFile>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// `host:port` addresses to accept TLS clients on.
    pub addresses: Vec<String>,
    /// The PEM certificate chain, leaf first (relative to this config file).
    pub cert_file: String,
    /// The PEM private key of the leaf (relative to this config file).
    pub key_file: String,
    /// How often both files are read again; a changed, valid pair is served from the next
    /// handshake. Default 10s.
    #[serde(default, with = "human_duration")]
    pub watch_interval: Option<Duration>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    /// `host:port` of the protected service; resolved once at start.
    pub address: String,
    /// Default 1s.
    #[serde(default, with = "human_duration")]
    pub connect_timeout: Option<Duration>,
    /// Default 30s.
    #[serde(default, with = "human_duration")]
    pub read_timeout: Option<Duration>,
    /// Default 30s.
    #[serde(default, with = "human_duration")]
    pub write_timeout: Option<Duration>,
    /// How long a pooled upstream connection may idle; keep it below the upstream's own
    /// keep-alive timeout. Default 4s.
    #[serde(default, with = "human_duration")]
    pub idle_timeout: Option<Duration>,
    /// Forward the client's `Authorization` header. Default false.
    #[serde(default)]
    pub forward_authorization: bool,
    /// Remove `X-HTTP-Method-Override` and its variants from forwarded requests. Default true.
    pub strip_method_override: Option<bool>,
    /// Keep each header name's letter case as its sender wrote it, on the requests keygate
    /// forwards and the responses it passes back over HTTP/1. Default false: names go out in
    /// lower case (as on HTTP/2), which saves Pingora's second header map on every request.
    #[serde(default)]
    pub preserve_header_case: bool,
    /// Connect to the upstream over TLS, verifying its certificate. Default false.
    #[serde(default)]
    pub tls: bool,
    /// The name the upstream's certificate must carry, sent as SNI. Default: the host of
    /// `address`.
    pub sni: Option<String>,
    /// PEM certificates of the CAs that sign the upstream's certificate (relative to this
    /// config file). Default: the system's roots.
    pub ca_file: Option<String>,
}

/// The Pingora server settings keygate exposes, with keygate's defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    /// Worker threads of the proxy service. Default 2.
    pub threads: Option<usize>,
    /// Let idle threads take work from busy ones. Default false: a sidecar shares its host's
    /// cores, and stealing costs more CPU per request than it saves (see docs/performance.md).
    pub work_stealing: Option<bool>,
    /// Accept tasks per listening socket. Default 1.
    pub listener_tasks_per_fd: Option<usize>,
    /// Idle upstream connections kept per thread. Default 128.
    pub upstream_keepalive_pool_size: Option<usize>,
    /// Retries of a failed upstream connection. Default 16 (Pingora's).
    pub max_retries: Option<usize>,
    /// Seconds to keep serving after SIGTERM before shutting down. Default 5.
    pub grace_period_seconds: Option<u64>,
    /// Seconds to let runtimes finish after the grace period. Default 5.
    pub graceful_shutdown_timeout_seconds: Option<u64>,
    /// Run in the background (also `-d`). Default false.
    pub daemon: Option<bool>,
    /// Written when daemonised. Default /run/keygate/keygate.pid.
    pub pid_file: Option<String>,
    /// Socket for graceful upgrades (`-u`). Default /tmp/keygate_upgrade.sock.
    pub upgrade_sock: Option<String>,
    /// Error log file when daemonised.
    pub error_log: Option<String>,
    pub user: Option<String>,
    pub group: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    pub name: String,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    pub path: String,
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    #[serde(default)]
    pub auth: Option<AuthMode>,
    /// Also accept a browser client token from the `access_token` query parameter or the
    /// `Sec-WebSocket-Protocol` header. Default false.
    #[serde(default)]
    pub browser: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Public: no key needed.
    None,
    /// A valid key holding the route's scopes.
    Key,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFile {
    /// error | warn | info | debug | trace. Default info; `RUST_LOG` overrides it.
    pub level: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotFile {
    /// The keys file, relative to this config file.
    pub file: Option<PathBuf>,
    /// How often the keys file is checked for changes. Default 250ms.
    #[serde(default, with = "human_duration")]
    pub watch_interval: Option<Duration>,
    pub control_plane: Option<ControlPlaneFile>,
    /// Where the last accepted control-plane snapshot is kept, for starts while it is down.
    pub cache_file: Option<PathBuf>,
    /// Past this age without confirmation from the source, fail closed. Default: never.
    #[serde(default, with = "human_duration")]
    pub max_staleness: Option<Duration>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPlaneFile {
    /// Base URL, `http://` or `https://`.
    pub url: String,
    /// The environment variable holding the bearer token.
    pub token_env: Option<String>,
    /// A file holding the bearer token (relative to this config file).
    pub token_file: Option<PathBuf>,
    /// Long-poll for changes (default true); false: poll every `poll_interval`.
    pub watch: Option<bool>,
    /// How long a long-poll is held by the control plane. Default 30s.
    #[serde(default, with = "human_duration")]
    pub wait: Option<Duration>,
    /// Between polls when `watch` is false. Default 10s.
    #[serde(default, with = "human_duration")]
    pub poll_interval: Option<Duration>,
    /// Per request, on top of `wait`. Default 10s.
    #[serde(default, with = "human_duration")]
    pub timeout: Option<Duration>,
    /// Base64 Ed25519 public key: when set, every snapshot must carry a valid signature.
    pub public_key: Option<String>,
    /// PEM CA certificate(s) to trust for an `https://` control plane with a private CA.
    pub ca_file: Option<PathBuf>,
}

/// Durations as people write them (`500ms`, `2s`, `1m`), parsed with `humantime`; `null` or an
/// absent field is the default.
mod human_duration {
    use serde::{Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.collect_str(&humantime::format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        struct HumanDuration;
        impl<'de> serde::de::Visitor<'de> for HumanDuration {
            type Value = Option<Duration>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a duration such as 500ms, 2s or 1m")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
                humantime::parse_duration(s).map(Some).map_err(|_| {
                    E::custom(format!(
                        "invalid duration {s:?}: write a number and a unit, such as 500ms, 2s or 1m"
                    ))
                })
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_str(self)
            }
        }
        d.deserialize_option(HumanDuration)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    /// A config built from these types, written out, reads back as the same value and
    /// validates: what the test harness relies on.
    #[test]
    fn a_config_built_in_code_round_trips_through_yaml() {
        let file = ConfigFile {
            listen: ListenFile {
                addresses: vec!["127.0.0.1:8080".into()],
                keepalive_timeout: Some(Duration::from_secs(90)),
                ..ListenFile::default()
            },
            upstream: UpstreamFile {
                address: "127.0.0.1:9000".into(),
                forward_authorization: true,
                ..UpstreamFile::default()
            },
            snapshot: SnapshotFile {
                file: Some("keys.yaml".into()),
                watch_interval: Some(Duration::from_millis(1500)),
                ..SnapshotFile::default()
            },
            routes: vec![RouteFile {
                name: "health".into(),
                path: "/health".into(),
                auth: Some(AuthMode::None),
                ..RouteFile::default()
            }],
            unmatched: Unmatched::Authenticate,
            limits: LimitsFile {
                sandbox: Some(PolicyFile {
                    burst_per_second: Some(1),
                    sustained_per_minute: None,
                    concurrent_requests: Some(3),
                }),
                ..LimitsFile::default()
            },
            usage: UsageFile {
                mode: Some(UsageMode::Off),
                ..UsageFile::default()
            },
            ..ConfigFile::default()
        };
        let yaml = serde_yaml::to_string(&file).unwrap();
        assert!(yaml.contains("keepalive_timeout: 1m 30s"), "{yaml}");
        assert!(yaml.contains("watch_interval: 1s 500ms"), "{yaml}");
        let back: ConfigFile = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(back, file);
        let config = Config::from_yaml(&yaml, Path::new("/etc/keygate/keygate.yaml")).unwrap();
        assert_eq!(config.keepalive_timeout, Duration::from_secs(90));
        assert!(config.upstream.forward_authorization);
    }

    #[test]
    fn a_null_duration_is_the_default_and_a_bad_one_says_how_to_write_it() {
        let read = |v: &str| serde_yaml::from_str::<UsageFile>(&format!("flush_interval: {v}"));
        assert_eq!(read("null").unwrap().flush_interval, None);
        assert_eq!(read("~").unwrap().flush_interval, None);
        assert_eq!(
            read("250ms").unwrap().flush_interval,
            Some(Duration::from_millis(250))
        );
        for bad in ["5", "soon", "[1]"] {
            let e = read(bad).unwrap_err().to_string();
            assert!(e.contains("500ms, 2s or 1m"), "{bad}: {e}");
        }
    }
}

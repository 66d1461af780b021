//! The `limits.global` section: fleet-wide limits through Redis, checked.

use super::Secret;
use super::file::{GlobalLimitsFile, RedisFile};
use crate::limits::FleetConfig;
use crate::limits::fleet::TlsClientIdentity;
use std::path::Path;
use std::time::Duration;

type Invalid = (String, String);

fn err(field: &str, message: impl Into<String>) -> Invalid {
    (format!("limits.global.{field}"), message.into())
}

pub(super) fn validate(g: GlobalLimitsFile, base: &Path) -> Result<FleetConfig, Invalid> {
    let GlobalLimitsFile {
        redis,
        on_outage,
        local_share,
    } = g;
    let RedisFile {
        url,
        password_env,
        password_file,
        connect_timeout,
        command_timeout,
        ca_file,
        cert_file,
        key_file,
        cluster,
        nodes,
    } = redis;
    let (url, db) = redis_url("redis.url", &url)?;
    let cluster = cluster.unwrap_or(false);
    let only_database_0 = |url: &str| {
        format!("{url:?}: a Redis Cluster has only database 0; drop the /db or make it /0")
    };
    if cluster && db != 0 {
        return Err(err("redis.url", only_database_0(&url)));
    }
    let tls = url.starts_with("rediss://");
    let nodes = match nodes {
        None => Vec::new(),
        Some(_) if !cluster => {
            return Err(err(
                "redis.nodes",
                "applies only with `cluster: true`: more nodes of one Redis Cluster",
            ));
        }
        Some(nodes) => {
            let mut checked = Vec::with_capacity(nodes.len());
            for (i, node) in nodes.iter().enumerate() {
                let field = format!("redis.nodes[{i}]");
                let (node, db) = redis_url(&field, node)?;
                if db != 0 {
                    return Err(err(&field, only_database_0(&node)));
                }
                if node.starts_with("rediss://") != tls {
                    return Err(err(
                        &field,
                        format!(
                            "{node:?}: write it with the scheme of `url` ({}): one cluster, one way to reach it",
                            if tls { "rediss://" } else { "redis://" }
                        ),
                    ));
                }
                checked.push(node);
            }
            checked
        }
    };
    let tls_ca = match ca_file {
        None => None,
        Some(_) if !tls => {
            return Err(err(
                "redis.ca_file",
                "applies only to a rediss:// url (Redis over TLS)",
            ));
        }
        Some(file) => {
            Some(super::ca_certificates(&base.join(file)).map_err(|m| err("redis.ca_file", m))?)
        }
    };
    let tls_client = match (cert_file, key_file) {
        (None, None) => None,
        (Some(_), Some(_)) if !tls => {
            return Err(err(
                "redis.cert_file",
                "applies only to a rediss:// url (Redis over TLS)",
            ));
        }
        (Some(cert), Some(key)) => {
            let (cert, key) = (base.join(cert), base.join(key));
            let (cert_pem, key_pem) = crate::tls::read_pair(&cert, &key)
                .map_err(|e| super::pair_error("limits.global.redis", &cert, e))?;
            Some(TlsClientIdentity::new(cert_pem, key_pem))
        }
        (Some(_), None) => {
            return Err(err(
                "redis.key_file",
                "missing: a client certificate (`cert_file`) needs its private key",
            ));
        }
        (None, Some(_)) => {
            return Err(err(
                "redis.cert_file",
                "missing: a private key (`key_file`) needs its client certificate",
            ));
        }
    };
    let password = match (password_env, password_file) {
        (None, None) => None,
        (Some(var), None) => Some(std::env::var(&var).map_err(|_| {
            err(
                "redis.password_env",
                format!("the environment variable {var} is not set (or not UTF-8)"),
            )
        })?),
        (None, Some(file)) => {
            let path = base.join(file);
            Some(std::fs::read_to_string(&path).map_err(|e| {
                err(
                    "redis.password_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?)
        }
        (Some(_), Some(_)) => {
            return Err(err(
                "redis.password_env",
                "give at most one of `password_env` and `password_file`",
            ));
        }
    };
    let password = password.map(|p| p.trim().to_owned());
    if password.as_deref() == Some("") {
        return Err(err("redis.password_env", "the password is empty"));
    }
    let connect_timeout = connect_timeout.unwrap_or(Duration::from_millis(250));
    let command_timeout = command_timeout.unwrap_or(Duration::from_millis(50));
    for (field, d, max) in [
        (
            "redis.connect_timeout",
            connect_timeout,
            Duration::from_secs(10),
        ),
        (
            "redis.command_timeout",
            command_timeout,
            Duration::from_secs(1),
        ),
    ] {
        if d < Duration::from_millis(1) || d > max {
            return Err(err(
                field,
                format!(
                    "must be between 1ms and {}: it bounds how long a request can wait",
                    humantime::format_duration(max)
                ),
            ));
        }
    }
    let local_share = local_share.unwrap_or(1.0);
    if !(local_share > 0.0 && local_share <= 1.0) {
        return Err(err(
            "local_share",
            "must be more than 0 and at most 1: each sidecar's share of a limit during an outage (1/N for N sidecars)",
        ));
    }
    Ok(FleetConfig {
        url,
        password: password.map(Secret::new),
        tls_ca,
        tls_client,
        cluster,
        nodes,
        connect_timeout,
        command_timeout,
        on_outage: on_outage.unwrap_or_default(),
        local_share,
    })
}

/// `redis://host[:port][/db]` (plain TCP) or `rediss://…` (TLS, the server's certificate always
/// verified), no credentials in the URL; with its database number (0 when not given).
fn redis_url(field: &str, url: &str) -> Result<(String, u32), Invalid> {
    let Some(rest) = url
        .strip_prefix("redis://")
        .or_else(|| url.strip_prefix("rediss://"))
    else {
        return Err(err(
            field,
            format!(
                "{url:?}: write it as redis://host:port/db, such as redis://127.0.0.1:6379/0 (rediss:// for TLS)"
            ),
        ));
    };
    // The redis crate's `#insecure` fragment would skip verifying the server's certificate.
    if rest.contains('#') {
        return Err(err(
            field,
            format!("{url:?}: no fragment (#insecure would skip verifying Redis's certificate)"),
        ));
    }
    if rest.contains('@') {
        return Err(err(
            field,
            "holds credentials: a password is never written in the config; use `password_env` or `password_file`",
        ));
    }
    let (host_port, db) = rest.split_once('/').unwrap_or((rest, ""));
    let db = match db {
        "" => Some(0),
        db => db.parse::<u32>().ok(),
    };
    let Some(db) = db.filter(|_| !host_port.is_empty()) else {
        return Err(err(
            field,
            format!("{url:?} is not redis://host:port/db, such as redis://127.0.0.1:6379/0"),
        ));
    };
    redis::IntoConnectionInfo::into_connection_info(url)
        .map_err(|e| err(field, format!("{url:?}: {e}")))?;
    Ok((url.to_owned(), db))
}

//! The `snapshot:` section: where keys come from (a keys file or a control plane), the
//! last-known-good cache, and how stale a snapshot may get.

use super::file::{ControlPlaneFile, SnapshotFile};
use keygate_protocol::signature::Verifier;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A secret read from the environment or a file: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub(crate) fn new(secret: String) -> Secret {
        Secret(secret)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    /// Without a trailing slash.
    pub url: String,
    pub token: Secret,
    pub watch: bool,
    pub wait: Duration,
    pub poll_interval: Duration,
    pub timeout: Duration,
    pub public_key: Option<Verifier>,
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub enum SourceConfig {
    File {
        path: PathBuf,
        watch_interval: Duration,
    },
    ControlPlane(ControlPlaneConfig),
}

#[derive(Debug, Clone)]
pub struct SnapshotSource {
    pub source: SourceConfig,
    pub cache_file: Option<PathBuf>,
    pub max_staleness: Option<Duration>,
}

impl SnapshotSource {
    /// The label snapshots from this source carry in metrics and `/status`.
    pub fn name(&self) -> &'static str {
        match self.source {
            SourceConfig::File { .. } => "file",
            SourceConfig::ControlPlane(_) => "control_plane",
        }
    }
}

type Invalid = (String, String);

fn err(field: &str, message: impl Into<String>) -> Invalid {
    (format!("snapshot.{field}"), message.into())
}

pub(super) fn validate(s: SnapshotFile, base: &Path) -> Result<SnapshotSource, Invalid> {
    let SnapshotFile {
        file,
        watch_interval,
        control_plane,
        cache_file,
        max_staleness,
    } = s;
    let source = match (file, control_plane) {
        (Some(_), Some(_)) | (None, None) => {
            return Err(err(
                "file",
                "give exactly one source: `file: keys.yaml` or `control_plane: { url: … }`",
            ));
        }
        (Some(file), None) => {
            let watch_interval = watch_interval.unwrap_or(Duration::from_millis(250));
            if watch_interval < Duration::from_millis(10)
                || watch_interval > Duration::from_secs(60)
            {
                return Err(err("watch_interval", "must be between 10ms and 60s"));
            }
            if cache_file.is_some() {
                return Err(err(
                    "cache_file",
                    "is for the control-plane source; the keys file is its own last-known-good copy",
                ));
            }
            SourceConfig::File {
                path: base.join(file),
                watch_interval,
            }
        }
        (None, Some(cp)) => {
            if watch_interval.is_some() {
                return Err(err(
                    "watch_interval",
                    "is for the file source; use control_plane.watch / poll_interval",
                ));
            }
            SourceConfig::ControlPlane(control_plane_config(cp, base)?)
        }
    };
    if max_staleness.is_some_and(|d| d < Duration::from_secs(1)) {
        return Err(err(
            "max_staleness",
            "must be at least 1s (or absent: never)",
        ));
    }
    Ok(SnapshotSource {
        source,
        cache_file: cache_file.map(|f| base.join(f)),
        max_staleness,
    })
}

fn control_plane_config(cp: ControlPlaneFile, base: &Path) -> Result<ControlPlaneConfig, Invalid> {
    let ControlPlaneFile {
        url,
        token_env,
        token_file,
        watch,
        wait,
        poll_interval,
        timeout,
        public_key,
        ca_file,
    } = cp;
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return Err(err(
            "control_plane.url",
            format!("{url:?} must start with http:// or https://"),
        ));
    };
    // Checked before the trailing slashes go, so that "https://" is named as written.
    if rest.trim_end_matches('/').is_empty() || rest.contains(['?', '#', ' ']) {
        return Err(err(
            "control_plane.url",
            format!("{url:?} is not a base URL such as https://cp.internal:7443"),
        ));
    }
    let url = url.trim_end_matches('/').to_owned();
    // The token never sits in this file: a config is copied, diffed and pasted into tickets.
    let token = match (token_env, token_file) {
        (Some(var), None) => std::env::var(&var).map_err(|_| {
            err(
                "control_plane.token_env",
                format!("the environment variable {var} is not set (or not UTF-8)"),
            )
        })?,
        (None, Some(file)) => {
            let path = base.join(file);
            std::fs::read_to_string(&path).map_err(|e| {
                err(
                    "control_plane.token_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?
        }
        _ => {
            return Err(err(
                "control_plane.token_env",
                "give exactly one of `token_env: VAR` or `token_file: path` (a token is never written in the config)",
            ));
        }
    };
    let token = token.trim().to_owned();
    if token.is_empty() || token.chars().any(|c| c.is_control() || c == ' ') {
        return Err(err(
            "control_plane.token_env",
            "the token is empty or holds spaces or control characters",
        ));
    }
    let public_key = match public_key {
        None => None,
        Some(b64) => {
            let verifier = Verifier::from_base64(&b64).map_err(|e| {
                err(
                    "control_plane.public_key",
                    format!("{e}, as printed by `keygate-control-plane --print-public-key`"),
                )
            })?;
            Some(verifier)
        }
    };
    let wait = wait.unwrap_or(Duration::from_secs(30));
    if wait > Duration::from_secs(60) {
        return Err(err("control_plane.wait", "must be at most 60s"));
    }
    Ok(ControlPlaneConfig {
        url,
        token: Secret(token),
        watch: watch.unwrap_or(true),
        wait,
        poll_interval: poll_interval.unwrap_or(Duration::from_secs(10)),
        timeout: timeout.unwrap_or(Duration::from_secs(10)),
        public_key,
        ca_file: ca_file.map(|f| base.join(f)),
    })
}

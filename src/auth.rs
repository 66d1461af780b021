//! Authentication: from the `Authorization` header to a key in the snapshot, or why not.

use crate::secret::{self, Env, KeyHash};
use crate::snapshot::{KeyEntry, Owner, Snapshot, Workspace, WorkspaceKind};
use http::HeaderMap;
use http::header::AUTHORIZATION;
use std::sync::Arc;

/// The header an internal key names its workspace with.
pub const WORKSPACE_HEADER: &str = "x-workspace-id";

/// Why a presented credential was refused. Callers see one answer for all of these (so that a
/// prober learns nothing); the reason is for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// Not `Bearer <token>`, or a token that is not shaped like a keygate secret.
    Malformed,
    Unknown,
    Revoked,
    Expired,
    /// An `sk_test_` secret for a live workspace, or the reverse: the snapshot is inconsistent,
    /// and a sandbox key must never reach live data.
    WrongEnvironment,
}

impl AuthFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Malformed => "malformed",
            AuthFailure::Unknown => "unknown",
            AuthFailure::Revoked => "revoked",
            AuthFailure::Expired => "expired",
            AuthFailure::WrongEnvironment => "wrong_environment",
        }
    }
}

/// What the request presented.
#[derive(Debug, PartialEq, Eq)]
pub enum Credential<'a> {
    Missing,
    Malformed,
    Token(&'a str, Env),
}

/// Reads `Authorization: Bearer <token>` (scheme in any letter case). Two `Authorization`
/// headers are malformed: which one a server would pick is not something to leave to chance.
pub fn credential(headers: &HeaderMap) -> Credential<'_> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Credential::Missing;
    };
    if values.next().is_some() {
        return Credential::Malformed;
    }
    let Ok(value) = value.to_str() else {
        return Credential::Malformed;
    };
    let Some((scheme, token)) = value.split_once(' ') else {
        return Credential::Malformed;
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Credential::Malformed;
    }
    let token = token.trim_matches(' ');
    match secret::parse_token(token) {
        Some(env) => Credential::Token(token, env),
        None => Credential::Malformed,
    }
}

/// Finds the key a well-formed token belongs to and checks that it may be used now.
pub fn authenticate<'s>(
    snapshot: &'s Snapshot,
    token: &str,
    env: Env,
    now_unix: i64,
) -> Result<&'s Arc<KeyEntry>, AuthFailure> {
    let key = snapshot
        .key(&KeyHash::of(token))
        .ok_or(AuthFailure::Unknown)?;
    if key.revoked {
        return Err(AuthFailure::Revoked);
    }
    if key.expires_at().is_some_and(|t| now_unix >= t) {
        return Err(AuthFailure::Expired);
    }
    if let Owner::Workspace(w) = &key.owner {
        let expected = match w.kind {
            WorkspaceKind::Live => Env::Live,
            WorkspaceKind::Sandbox => Env::Test,
        };
        if env != expected {
            return Err(AuthFailure::WrongEnvironment);
        }
    }
    Ok(key)
}

/// Why an internal key's request names no usable workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkspaceError {
    /// Absent, empty, repeated or not text.
    Required,
    Unknown,
}

/// The workspace a request acts for: the key's own, or for an internal key the one it names.
/// A customer key's `x-workspace-id` is ignored (and later replaced toward the upstream).
pub fn workspace(
    snapshot: &Snapshot,
    key: &KeyEntry,
    headers: &HeaderMap,
) -> Result<Arc<Workspace>, WorkspaceError> {
    match &key.owner {
        Owner::Workspace(w) => Ok(w.clone()),
        Owner::Internal => {
            let mut values = headers.get_all(WORKSPACE_HEADER).iter();
            let (Some(value), None) = (values.next(), values.next()) else {
                return Err(WorkspaceError::Required);
            };
            let id = value.to_str().map_err(|_| WorkspaceError::Required)?.trim();
            if id.is_empty() {
                return Err(WorkspaceError::Required);
            }
            snapshot
                .workspace(id)
                .cloned()
                .ok_or(WorkspaceError::Unknown)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_token_shape_checked() {
        let token = format!("sk_live_{}", "x".repeat(32));
        for scheme in ["Bearer", "bearer", "BEARER"] {
            let h = headers(&[("authorization", &format!("{scheme} {token}"))]);
            assert_eq!(credential(&h), Credential::Token(&token, Env::Live));
        }
        assert_eq!(credential(&headers(&[])), Credential::Missing);
        for bad in [
            format!("Basic {token}"),
            token.clone(),
            "Bearer ".into(),
            "Bearer sk_live_short".into(),
            format!("Bearer {token} extra"),
        ] {
            assert_eq!(
                credential(&headers(&[("authorization", &bad)])),
                Credential::Malformed,
                "{bad}"
            );
        }
        let twice = headers(&[
            ("authorization", &format!("Bearer {token}")),
            ("authorization", &format!("Bearer {token}")),
        ]);
        assert_eq!(credential(&twice), Credential::Malformed);
    }
}

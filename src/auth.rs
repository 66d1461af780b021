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
    /// An access token that does not verify: signature, algorithm, header or claims.
    InvalidToken,
    /// An access token signed under a `kid` the snapshot does not publish.
    UnknownSigningKey,
    /// A credential where it is not accepted: in the URL or the WebSocket subprotocols, which
    /// only a browser client token on a `browser: true` route may use.
    Misplaced,
}

impl AuthFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Malformed => "malformed",
            AuthFailure::Unknown => "unknown",
            AuthFailure::Revoked => "revoked",
            AuthFailure::Expired => "expired",
            AuthFailure::WrongEnvironment => "wrong_environment",
            AuthFailure::InvalidToken => "invalid_token",
            AuthFailure::UnknownSigningKey => "unknown_signing_key",
            AuthFailure::Misplaced => "misplaced",
        }
    }
}

/// What the request presented.
#[derive(Debug, PartialEq, Eq)]
pub enum Credential<'a> {
    Missing,
    Malformed,
    Token(&'a str, Env),
    /// Shaped as a JWT: an access token, for [`crate::tokens`].
    AccessToken(&'a str),
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
    parse_bearer(token.trim_matches(' '))
}

/// What a bearer value is: an API key (by its shape), an access or client token (a JWT), or
/// neither.
pub fn parse_bearer(token: &str) -> Credential<'_> {
    match secret::parse_token(token) {
        Some(env) => Credential::Token(token, env),
        None if keygate_protocol::tokens::looks_like_jwt(token) => Credential::AccessToken(token),
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
    if key.revoked() {
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
///
/// `env` is the secret's environment. An internal `sk_test_` key sees only sandbox workspaces:
/// a live one is unknown to it, so a test credential never reaches live data. An internal
/// `sk_live_` key may name either type, as the platform's own services serve both.
pub fn workspace(
    snapshot: &Snapshot,
    key: &KeyEntry,
    env: Env,
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
                .filter(|w| env == Env::Live || w.kind == WorkspaceKind::Sandbox)
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
    // -----------------------------------------------------------------------------------------
    // `authenticate` and `workspace` on a snapshot parsed as a keys file is.

    use crate::snapshot::Format;

    /// 2030-01-01T00:00:00Z, when `key_expiring` stops working.
    const EXPIRY: i64 = 1_893_456_000;

    fn live(name: &str) -> String {
        format!("sk_live_{name:0<32}")
    }

    fn test(name: &str) -> String {
        format!("sk_test_{name:0<32}")
    }

    fn snapshot() -> Snapshot {
        let hash = |secret: &str| KeyHash::of(secret).to_hex();
        let doc = format!(
            "version: 1
workspaces:
  - {{ id: ws_live, type: live }}
  - {{ id: ws_sandbox, type: sandbox }}
keys:
  - {{ id: key_live, hash: {live}, workspace: ws_live }}
  - {{ id: key_sandbox, hash: {sandbox}, workspace: ws_sandbox }}
  - {{ id: key_revoked, hash: {revoked}, workspace: ws_live, status: revoked }}
  - {{ id: key_expiring, hash: {expiring}, workspace: ws_live, expires_at: '2030-01-01T00:00:00Z' }}
  - {{ id: key_revoked_expired, hash: {revoked_expired}, workspace: ws_live, status: revoked, expires_at: '2020-01-01T00:00:00Z' }}
  - {{ id: key_test_on_live, hash: {test_on_live}, workspace: ws_live }}
  - {{ id: key_live_on_sandbox, hash: {live_on_sandbox}, workspace: ws_sandbox }}
  - {{ id: key_internal_live, hash: {internal_live}, internal: true }}
  - {{ id: key_internal_test, hash: {internal_test}, internal: true }}
  - {{ id: key_short, hash: {short}, workspace: ws_live }}
",
            live = hash(&live("live")),
            sandbox = hash(&test("sandbox")),
            revoked = hash(&live("revoked")),
            expiring = hash(&live("expiring")),
            revoked_expired = hash(&live("revokedexpired")),
            test_on_live = hash(&test("testonlive")),
            live_on_sandbox = hash(&live("liveonsandbox")),
            internal_live = hash(&live("internal")),
            internal_test = hash(&test("internal")),
            short = hash("sk_live_short"),
        );
        let snap = crate::snapshot::parse(doc.as_bytes(), Format::Yaml, "auth tests").unwrap();
        assert_eq!(snap.skipped_count(), 0, "{:?}", snap.skipped());
        snap
    }

    /// `authenticate` on a well-formed token at `now`: the key's id, or why not.
    fn key_id_at<'s>(snap: &'s Snapshot, token: &str, now: i64) -> Result<&'s str, AuthFailure> {
        let env = secret::parse_token(token).expect("a well-formed token");
        authenticate(snap, token, env, now).map(|k| k.id())
    }

    fn key_id<'s>(snap: &'s Snapshot, token: &str) -> Result<&'s str, AuthFailure> {
        key_id_at(snap, token, EXPIRY - 3_600)
    }

    #[test]
    fn an_active_key_of_the_right_environment_is_found() {
        let snap = snapshot();
        assert_eq!(key_id(&snap, &live("live")), Ok("key_live"));
        assert_eq!(key_id(&snap, &test("sandbox")), Ok("key_sandbox"));
    }

    #[test]
    fn a_token_no_key_has_is_unknown() {
        let snap = snapshot();
        assert_eq!(key_id(&snap, &live("nobody")), Err(AuthFailure::Unknown));
        // The same body under the other prefix is another secret.
        assert_eq!(key_id(&snap, &test("live")), Err(AuthFailure::Unknown));
    }

    #[test]
    fn a_revoked_key_is_refused_as_revoked() {
        let snap = snapshot();
        assert_eq!(key_id(&snap, &live("revoked")), Err(AuthFailure::Revoked));
        // Revoked and expired: the revocation is the reason given.
        assert_eq!(
            key_id(&snap, &live("revokedexpired")),
            Err(AuthFailure::Revoked)
        );
    }

    #[test]
    fn a_key_is_expired_from_its_expiry_instant_on() {
        let snap = snapshot();
        let token = live("expiring");
        assert_eq!(key_id_at(&snap, &token, EXPIRY - 1), Ok("key_expiring"));
        assert_eq!(key_id_at(&snap, &token, EXPIRY), Err(AuthFailure::Expired));
        assert_eq!(
            key_id_at(&snap, &token, EXPIRY + 86_400),
            Err(AuthFailure::Expired)
        );
    }

    #[test]
    fn a_test_secret_for_a_live_workspace_is_the_wrong_environment() {
        assert_eq!(
            key_id(&snapshot(), &test("testonlive")),
            Err(AuthFailure::WrongEnvironment)
        );
    }

    #[test]
    fn a_live_secret_for_a_sandbox_workspace_is_the_wrong_environment() {
        assert_eq!(
            key_id(&snapshot(), &live("liveonsandbox")),
            Err(AuthFailure::WrongEnvironment)
        );
    }

    #[test]
    fn the_environment_checked_is_the_one_the_token_names() {
        // `env` comes from the caller's parse of the token: a live key presented as `Test` is
        // refused even though its hash matches.
        let snap = snapshot();
        let token = live("live");
        assert_eq!(
            authenticate(&snap, &token, Env::Test, 0).map(|k| k.id()),
            Err(AuthFailure::WrongEnvironment)
        );
    }

    #[test]
    fn an_internal_key_is_not_bound_to_an_environment() {
        // Internal keys have no workspace of their own, so neither prefix is checked.
        let snap = snapshot();
        assert_eq!(key_id(&snap, &live("internal")), Ok("key_internal_live"));
        assert_eq!(key_id(&snap, &test("internal")), Ok("key_internal_test"));
    }

    #[test]
    fn a_token_not_shaped_like_a_secret_is_malformed_even_when_its_hash_is_known() {
        let snap = snapshot();
        let h = headers(&[("authorization", "Bearer sk_live_short")]);
        assert_eq!(credential(&h), Credential::Malformed);
        // What `credential` protects: the lookup alone would find the key.
        assert_eq!(
            authenticate(&snap, "sk_live_short", Env::Live, 0).map(|k| k.id()),
            Ok("key_short")
        );
    }

    #[test]
    fn failure_reasons_have_the_metric_labels_the_readme_lists() {
        let labels = [
            AuthFailure::Malformed,
            AuthFailure::Unknown,
            AuthFailure::Revoked,
            AuthFailure::Expired,
            AuthFailure::WrongEnvironment,
        ]
        .map(AuthFailure::as_str);
        assert_eq!(
            labels,
            [
                "malformed",
                "unknown",
                "revoked",
                "expired",
                "wrong_environment"
            ]
        );
    }

    fn key<'s>(snap: &'s Snapshot, token: &str) -> &'s KeyEntry {
        let env = secret::parse_token(token).unwrap();
        authenticate(snap, token, env, 0).unwrap()
    }

    fn acts_for(snap: &Snapshot, token: &str, h: &HeaderMap) -> Result<String, WorkspaceError> {
        let env = secret::parse_token(token).unwrap();
        workspace(snap, key(snap, token), env, h).map(|w| w.id.to_string())
    }

    #[test]
    fn a_customer_key_acts_for_its_own_workspace_whatever_it_names() {
        let snap = snapshot();
        let token = live("live");
        for named in [
            &[][..],
            &[(WORKSPACE_HEADER, "ws_sandbox")],
            &[(WORKSPACE_HEADER, "nope")],
        ] {
            assert_eq!(
                acts_for(&snap, &token, &headers(named)),
                Ok("ws_live".into()),
                "{named:?}"
            );
        }
    }

    #[test]
    fn an_internal_key_acts_for_the_workspace_it_names_trimmed() {
        let snap = snapshot();
        let token = live("internal");
        for (named, expected) in [("ws_sandbox", "ws_sandbox"), ("  ws_live ", "ws_live")] {
            let h = headers(&[(WORKSPACE_HEADER, named)]);
            assert_eq!(
                acts_for(&snap, &token, &h),
                Ok(expected.into()),
                "{named:?}"
            );
        }
    }

    /// A test credential never reaches live data: to an internal `sk_test_` key, a live
    /// workspace is as unknown as one not in the snapshot.
    #[test]
    fn an_internal_test_key_sees_only_sandbox_workspaces() {
        let snap = snapshot();
        let token = test("internal");
        let named = |id| headers(&[(WORKSPACE_HEADER, id)]);
        assert_eq!(
            acts_for(&snap, &token, &named("ws_sandbox")),
            Ok("ws_sandbox".into())
        );
        assert_eq!(
            acts_for(&snap, &token, &named("ws_live")),
            Err(WorkspaceError::Unknown)
        );
    }

    #[test]
    fn an_internal_key_must_name_exactly_one_workspace_in_text() {
        let snap = snapshot();
        let token = live("internal");
        let mut not_text = HeaderMap::new();
        not_text.insert(
            WORKSPACE_HEADER,
            http::HeaderValue::from_bytes(b"ws_\xff").unwrap(),
        );
        for h in [
            headers(&[]),
            headers(&[(WORKSPACE_HEADER, "")]),
            headers(&[(WORKSPACE_HEADER, "   ")]),
            headers(&[(WORKSPACE_HEADER, "ws_live"), (WORKSPACE_HEADER, "ws_live")]),
            not_text,
        ] {
            assert_eq!(
                acts_for(&snap, &token, &h),
                Err(WorkspaceError::Required),
                "{h:?}"
            );
        }
    }

    #[test]
    fn an_internal_key_naming_a_workspace_not_in_the_snapshot_gets_unknown() {
        let snap = snapshot();
        let h = headers(&[(WORKSPACE_HEADER, "ws_gone")]);
        assert_eq!(
            acts_for(&snap, &live("internal"), &h),
            Err(WorkspaceError::Unknown)
        );
        // Workspace ids are matched exactly.
        let h = headers(&[(WORKSPACE_HEADER, "WS_LIVE")]);
        assert_eq!(
            acts_for(&snap, &live("internal"), &h),
            Err(WorkspaceError::Unknown)
        );
    }
}

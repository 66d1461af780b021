//! Browser client tokens: `POST /v1/client-tokens`.
//!
//! A customer's server, holding a workspace API key, asks for a short-lived token that carries
//! some of the key's scopes, and hands that token to a browser: the key itself never leaves the
//! server. The token is a JWT with the claims of an access token ([`AccessClaims`]), the minting
//! key's id as `sub` and `client_id`, and the header `typ` [`CLIENT_TOKEN_TYPE`], signed with the
//! current signing key as `POST /oauth/token` signs. keygate checks it against the minting key
//! on every use, so revoking (or narrowing) the key ends (or narrows) its tokens.
//!
//! The endpoint is authenticated by the API key itself (`Authorization: Bearer sk_live_…` or
//! `sk_test_…`), never by the admin token. Neither the key's secret nor a token is logged.

use crate::api::{ApiError, KeyRow, now};
use crate::oauth::new_jti;
use crate::service::{ControlPlane, credentials, error_response, json_response, parse_query};
use http::{HeaderValue, Response, StatusCode, header};
use keygate_protocol::scopes::{KeyScopes, ScopePattern};
use keygate_protocol::secret::{self, KeyHash};
use keygate_protocol::tokens::{AccessClaims, DEFAULT_CLIENT_TOKEN_SECS, MAX_CLIENT_TOKEN_SECS};
use serde::Deserialize;
use serde_json::json;

/// Most scopes one client token may carry (as many as a key may hold).
const MAX_SCOPES: usize = 100;

/// The answer to a missing or malformed `Authorization`.
const SEND_A_KEY: &str = "send a workspace API key: Authorization: Bearer sk_live_… (or sk_test_…)";
/// One answer for an unknown, revoked or expired key: no oracle for which.
const KEY_REFUSED: &str = "invalid API key: unknown, revoked or expired";
/// The answer to an internal key.
const INTERNAL_KEY: &str = "internal keys cannot mint client tokens; use a workspace key";

/// Why a mint was refused.
#[derive(Debug)]
enum Refusal {
    /// 401 with `WWW-Authenticate: Bearer error="invalid_token"`.
    InvalidToken(&'static str),
    /// 403 with `WWW-Authenticate: Bearer error="insufficient_scope"`: a scope the key cannot
    /// hand on.
    InsufficientScope(String),
    /// 403: a key that may not mint at all.
    Forbidden(&'static str),
    /// Anything else: a 400 for malformed input, a 500.
    Api(ApiError),
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Self {
        Refusal::Api(e)
    }
}

impl Refusal {
    /// In the API's error shape, `{"success":false,"error":"…"}`.
    fn answer(self) -> Response<Vec<u8>> {
        let (status, message, challenge) = match self {
            Refusal::InvalidToken(m) => (
                StatusCode::UNAUTHORIZED,
                m.to_owned(),
                Some(r#"Bearer error="invalid_token""#),
            ),
            Refusal::InsufficientScope(m) => (
                StatusCode::FORBIDDEN,
                m,
                Some(r#"Bearer error="insufficient_scope""#),
            ),
            Refusal::Forbidden(m) => (StatusCode::FORBIDDEN, m.to_owned(), None),
            Refusal::Api(e) => return error_response(&e),
        };
        let mut r = json_response(status, json!({"success": false, "error": message}));
        if let Some(challenge) = challenge {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        r
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MintBody {
    #[serde(default)]
    scopes: Option<Vec<String>>,
    #[serde(default)]
    ttl: Option<u64>,
}

/// A well-formed request: what it asks for, before it is held against the key.
#[derive(Debug, PartialEq, Eq)]
struct MintRequest {
    /// Each scope with its index in the request (for messages); duplicates dropped.
    scopes: Vec<(usize, String)>,
    ttl: u64,
}

/// Reads the body (and refuses a query string): every error is a 400 naming the field.
fn read_request(query: Option<&str>, body: &[u8]) -> Result<MintRequest, ApiError> {
    parse_query(query, &[])?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(bad(
            "a JSON body is required: {\"scopes\": [\"products:read\"], \"ttl\": 600}",
        ));
    }
    let b: MintBody = serde_json::from_slice(body).map_err(|e| {
        bad(format!(
            "invalid JSON body: {e}; expected {{\"scopes\": [...], \"ttl\": seconds}}"
        ))
    })?;
    let Some(list) = b.scopes else {
        return Err(bad(
            "scopes: required: the scopes the token may carry, e.g. [\"products:read\"] \
             (each one the key holds or grants)",
        ));
    };
    if list.is_empty() {
        return Err(bad(
            "scopes: give at least one scope; a client token carries only what it names",
        ));
    }
    if list.len() > MAX_SCOPES {
        return Err(bad(format!("scopes: at most {MAX_SCOPES}")));
    }
    let mut scopes: Vec<(usize, String)> = Vec::with_capacity(list.len());
    for (i, s) in list.into_iter().enumerate() {
        ScopePattern::parse(&s).map_err(|e| bad(format!("scopes[{i}]: {e}")))?;
        if !scopes.iter().any(|(_, held)| *held == s) {
            scopes.push((i, s));
        }
    }
    let ttl = b.ttl.unwrap_or(DEFAULT_CLIENT_TOKEN_SECS);
    if !(1..=MAX_CLIENT_TOKEN_SECS).contains(&ttl) {
        return Err(bad(format!(
            "ttl: {ttl} is out of range; give 1 to {MAX_CLIENT_TOKEN_SECS} seconds \
             (or leave it out for {DEFAULT_CLIENT_TOKEN_SECS})"
        )));
    }
    Ok(MintRequest { scopes, ttl })
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::BadRequest(msg.into())
}

/// The API key secret of `Authorization: Bearer …`, shaped and checksummed like one (so that
/// nothing else, the admin token included, reaches the database).
fn presented_key(authorization: Option<&str>) -> Result<&str, Refusal> {
    authorization
        .and_then(|v| credentials(v, "bearer"))
        .filter(|token| secret::parse_token(token).is_some())
        .ok_or(Refusal::InvalidToken(SEND_A_KEY))
}

/// Checks that `scopes` are all ones `key` may hand on ([`KeyScopes::may_hold`]; a key without
/// scopes, a legacy key, may hand on any).
fn check_scopes(key: &KeyRow, scopes: &[(usize, String)]) -> Result<(), Refusal> {
    let held = KeyScopes::parse(key.scopes.as_deref()).map_err(|e| {
        ApiError::Internal(format!(
            "key {}: a stored scope does not parse: {e}",
            key.id
        ))
    })?;
    match scopes.iter().find(|(_, s)| !held.may_hold(s)) {
        None => Ok(()),
        Some((i, s)) => Err(Refusal::InsufficientScope(format!(
            "scopes[{i}]: the key may not hold {s:?}; ask for scopes the key holds, or ones \
             without wildcards that it grants"
        ))),
    }
}

/// The 200 answer, and what may be logged of it.
struct Minted {
    key_id: String,
    workspace: String,
    expires_in: i64,
    body: serde_json::Value,
}

impl ControlPlane {
    /// `POST /v1/client-tokens`.
    pub(crate) async fn client_token_endpoint(
        &self,
        authorization: Option<String>,
        query: Option<&str>,
        body: Vec<u8>,
    ) -> Response<Vec<u8>> {
        let presented = match presented_key(authorization.as_deref()) {
            Ok(k) => KeyHash::of(k).to_hex(),
            Err(r) => return r.answer(),
        };
        // Read now, refused only once the key is known good: a caller without a key learns
        // nothing from a 400.
        let request = read_request(query, &body);
        let settings = self.tokens.clone();
        let signers = self.signers.clone();
        let answer = self
            .db
            .call(move |store| {
                let key = store.key_by_hash(&presented)?;
                Ok((|| -> Result<Minted, Refusal> {
                    let key = key.ok_or(Refusal::InvalidToken(KEY_REFUSED))?;
                    let issued = now();
                    if key.revoked || key.expires_at.is_some_and(|t| t <= issued) {
                        return Err(Refusal::InvalidToken(KEY_REFUSED));
                    }
                    let Some(workspace) = key.workspace.clone() else {
                        return Err(Refusal::Forbidden(INTERNAL_KEY));
                    };
                    let request = request?;
                    check_scopes(&key, &request.scopes)?;
                    let signer = signers.get(&store.current_signing_key()?)?;
                    let ttl = i64::try_from(request.ttl).unwrap_or(0);
                    // Never past the key's own expiry (which is after `issued`: checked above).
                    let exp = key.expires_at.map_or(issued + ttl, |t| t.min(issued + ttl));
                    let scope = request
                        .scopes
                        .iter()
                        .map(|(_, s)| s.as_str())
                        .collect::<Vec<_>>()
                        .join(" ");
                    let claims = AccessClaims {
                        iss: settings.issuer.clone(),
                        sub: key.id.clone(),
                        aud: settings.audience.clone(),
                        exp,
                        nbf: issued,
                        iat: issued,
                        jti: new_jti(),
                        client_id: key.id.clone(),
                        scope: scope.clone(),
                        workspace: workspace.clone(),
                    };
                    let body = json!({
                        "token": signer.sign_client_token(&claims),
                        "token_type": "Bearer",
                        "expires_in": exp - issued,
                        "scope": scope,
                        "workspace": workspace,
                        "key_id": key.id,
                    });
                    Ok(Minted {
                        key_id: key.id,
                        workspace,
                        expires_in: exp - issued,
                        body,
                    })
                })())
            })
            .await;
        match answer {
            Ok(Ok(m)) => {
                tracing::info!(key = %m.key_id, workspace = %m.workspace, expires_in = m.expires_in, "client token issued");
                let mut r = json_response(StatusCode::OK, m.body);
                r.headers_mut()
                    .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
                r
            }
            Ok(Err(refusal)) => refusal.answer(),
            Err(e) => Refusal::Api(e).answer(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Environment;

    fn key(scopes: Option<&[&str]>) -> KeyRow {
        KeyRow {
            id: "key_1".into(),
            name: String::new(),
            hash: String::new(),
            prefix: String::new(),
            workspace: Some("ws".into()),
            environment: Environment::Live,
            scopes: scopes.map(|s| s.iter().map(|&s| s.to_owned()).collect()),
            revoked: false,
            expires_at: None,
            created_at: 0,
            revoked_at: None,
            rotated_to: None,
            last_used: None,
            requests: 0,
            restrictions: None,
        }
    }

    fn scopes(list: &[&str]) -> Vec<(usize, String)> {
        list.iter()
            .enumerate()
            .map(|(i, s)| (i, (*s).to_owned()))
            .collect()
    }

    #[test]
    fn requests_need_scopes_and_a_ttl_in_range() {
        let r = read_request(None, br#"{"scopes":["a:read","b:*","a:read"]}"#).unwrap();
        assert_eq!(
            r,
            MintRequest {
                scopes: vec![(0, "a:read".into()), (1, "b:*".into())],
                ttl: DEFAULT_CLIENT_TOKEN_SECS,
            }
        );
        let r = read_request(None, br#"{"scopes":["a:read"],"ttl":3600}"#).unwrap();
        assert_eq!(r.ttl, MAX_CLIENT_TOKEN_SECS);
        for (body, names) in [
            ("", "JSON body"),
            ("{}", "scopes"),
            (r#"{"scopes":null}"#, "scopes"),
            (r#"{"scopes":[]}"#, "scopes"),
            (r#"{"scopes":["a:read","a::b"]}"#, "scopes[1]"),
            (r#"{"scopes":["a:read"],"ttl":0}"#, "ttl"),
            (r#"{"scopes":["a:read"],"ttl":3601}"#, "ttl"),
            (r#"{"scopes":["a:read"],"ttl":-1}"#, "invalid JSON"),
            (r#"{"scopes":["a:read"],"ttl":"600"}"#, "invalid JSON"),
            (r#"{"scope":["a:read"]}"#, "unknown field `scope`"),
            ("[", "invalid JSON"),
        ] {
            let e = read_request(None, body.as_bytes()).unwrap_err().message();
            assert!(e.contains(names), "{body}: {e}");
        }
        let e = read_request(Some("ttl=5"), br#"{"scopes":["a:read"]}"#).unwrap_err();
        assert!(e.message().contains("ttl"), "{}", e.message());
    }

    #[test]
    fn only_a_bearer_api_key_is_read_from_authorization() {
        let live = secret::generate(secret::Env::Live);
        let test = secret::generate(secret::Env::Test);
        for good in [format!("Bearer {live}"), format!("bearer  {test}")] {
            assert!(presented_key(Some(&good)).is_ok(), "{good}");
        }
        let mut typo = live.clone();
        typo.pop();
        typo.push(if live.ends_with('A') { 'B' } else { 'A' });
        for refused in [
            String::new(),
            "Bearer".into(),
            format!("Basic {live}"),
            format!("Bearer {typo}"),
            "Bearer admin-token-0123456789abcdef".into(),
        ] {
            assert!(
                matches!(presented_key(Some(&refused)), Err(Refusal::InvalidToken(_))),
                "{refused}"
            );
        }
        assert!(presented_key(None).is_err());
    }

    #[test]
    fn a_key_hands_on_only_what_it_may_hold() {
        let k = key(Some(&["products:read", "orders:*"]));
        check_scopes(&k, &scopes(&["products:read", "orders:write", "orders:*"])).unwrap();
        for wider in ["products:*", "*", "*:read", "customers:read"] {
            match check_scopes(&k, &scopes(&["orders:read", wider])) {
                Err(Refusal::InsufficientScope(m)) => assert!(m.starts_with("scopes[1]"), "{m}"),
                other => panic!("{wider}: {other:?}"),
            }
        }
        check_scopes(&key(None), &scopes(&["*"])).unwrap();
        assert!(check_scopes(&key(Some(&[])), &scopes(&["a:read"])).is_err());
    }
}

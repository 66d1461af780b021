//! OAuth 2.0 over HTTP: the token endpoint (`POST /oauth/token`, the client-credentials grant
//! of RFC 6749 §4.4, errors per §5.2) and the admin API of clients and signing keys.

use crate::api::{ApiError, now};
use crate::clients::{self, ClientRow, NewClient, SigningKeyRow};
use crate::service::{
    ControlPlane, Route, bad, created, credentials, json_response, param, parse_query, path_id,
    percent_decode, purge_param, written,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::{Method, Response, StatusCode, header};
use keygate_protocol::tokens::{
    AccessClaims, DEFAULT_LIFETIME_SECS, MAX_LIFETIME_SECS, TokenSigner,
};
use rand::distr::{Alphanumeric, SampleString};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// What minted tokens say about where they are from and for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSettings {
    /// The `iss` claim (keygate's `tokens.issuer`).
    pub issuer: String,
    /// The `aud` claim (keygate's `tokens.audience`).
    pub audience: String,
    pub lifetime: Duration,
}

/// The shortest token lifetime accepted.
pub const MIN_LIFETIME: Duration = Duration::from_secs(60);

impl Default for TokenSettings {
    fn default() -> Self {
        TokenSettings {
            issuer: "keygate-control-plane".into(),
            audience: "keygate".into(),
            lifetime: Duration::from_secs(DEFAULT_LIFETIME_SECS),
        }
    }
}

impl TokenSettings {
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (MIN_LIFETIME..=Duration::from_secs(MAX_LIFETIME_SECS)).contains(&self.lifetime),
            "--token-lifetime {}: must be between 1m and 24h",
            humantime::format_duration(self.lifetime)
        );
        for (flag, v) in [
            ("--token-issuer", &self.issuer),
            ("--token-audience", &self.audience),
        ] {
            anyhow::ensure!(
                !v.trim().is_empty() && !v.chars().any(char::is_control),
                "{flag} must be non-empty text"
            );
        }
        Ok(())
    }
}

/// The signer of the current signing key, made once per key rather than per token (it decodes
/// the seed and derives the public key); replaced when a rotation makes another key current.
#[derive(Default)]
pub struct SignerCache(Mutex<Option<Arc<TokenSigner>>>);

impl SignerCache {
    pub(crate) fn get(&self, key: &SigningKeyRow) -> Result<Arc<TokenSigner>, ApiError> {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(signer) = slot.as_ref().filter(|s| s.kid() == key.kid) {
            return Ok(signer.clone());
        }
        let signer = Arc::new(key.signer()?);
        *slot = Some(signer.clone());
        Ok(signer)
    }
}

/// An RFC 6749 §5.2 error.
#[derive(Debug)]
struct OAuthError {
    code: &'static str,
    description: String,
}

fn oauth_error(code: &'static str, description: impl Into<String>) -> OAuthError {
    OAuthError {
        code,
        description: description.into(),
    }
}

/// One answer for every way client authentication fails: no oracle for ids or secrets.
fn invalid_client() -> OAuthError {
    oauth_error(
        "invalid_client",
        "client authentication failed: unknown client, wrong secret, or a revoked or expired client",
    )
}

/// An answer of the token endpoint: JSON, with `Cache-Control: no-store` and
/// `Pragma: no-cache` (RFC 6749 §5.1); a 401 carries the Basic challenge (§5.2).
fn token_json(status: StatusCode, value: &Value) -> Response<Vec<u8>> {
    let body = value.to_string().into_bytes();
    let mut b = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .header(header::PRAGMA, "no-cache")
        .header(header::CONTENT_LENGTH, body.len());
    if status == StatusCode::UNAUTHORIZED {
        b = b.header(
            header::WWW_AUTHENTICATE,
            r#"Basic realm="keygate-control-plane""#,
        );
    }
    b.body(body).unwrap_or_default()
}

fn error_answer(e: OAuthError) -> Response<Vec<u8>> {
    let body = json!({"error": e.code, "error_description": e.description});
    // invalid_client is a 401 with a challenge for the scheme clients authenticate with
    // (RFC 6749 §5.2); every other error a 400.
    let status = if e.code == "invalid_client" {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::BAD_REQUEST
    };
    token_json(status, &body)
}

/// The form's parameters, each at most once (RFC 6749 §3.2: parameters must not repeat).
fn parse_form(body: &[u8]) -> Result<Vec<(String, String)>, OAuthError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| oauth_error("invalid_request", "the body is not UTF-8"))?;
    let mut out: Vec<(String, String)> = Vec::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let (Some(name), Some(value)) = (percent_decode(name), percent_decode(value)) else {
            return Err(oauth_error(
                "invalid_request",
                format!("malformed form parameter {pair:?}"),
            ));
        };
        if out.iter().any(|(n, _)| *n == name) {
            return Err(oauth_error(
                "invalid_request",
                format!("parameter {name:?} given more than once"),
            ));
        }
        out.push((name, value));
    }
    Ok(out)
}

/// The client's id and secret from `Authorization: Basic` (RFC 6749 §2.3.1: each part
/// form-url-encoded before the base64), or `None` when the header is not Basic.
fn basic_credentials(authorization: &str) -> Option<Result<(String, String), OAuthError>> {
    let value = credentials(authorization, "basic")?;
    let decoded = STANDARD
        .decode(value)
        .ok()
        .and_then(|b| String::from_utf8(b).ok());
    let parts = decoded.as_deref().and_then(|d| d.split_once(':'));
    Some(
        parts
            .and_then(|(id, secret)| Some((percent_decode(id)?, percent_decode(secret)?)))
            .ok_or_else(invalid_client),
    )
}

/// What a valid token request asks for.
struct TokenRequest {
    client_id: String,
    client_secret: String,
    scope: Option<String>,
}

fn read_request(
    authorization: Option<&str>,
    content_type: Option<&str>,
    query: Option<&str>,
    body: &[u8],
) -> Result<TokenRequest, OAuthError> {
    let form_type = content_type
        .and_then(|t| t.split(';').next())
        .is_some_and(|t| {
            t.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form_type {
        return Err(oauth_error(
            "invalid_request",
            "send the parameters as application/x-www-form-urlencoded",
        ));
    }
    if query.is_some_and(|q| !q.is_empty()) {
        return Err(oauth_error(
            "invalid_request",
            "parameters go in the body, not the query string",
        ));
    }
    let form = parse_form(body)?;
    let grant_type = param(&form, "grant_type")
        .ok_or_else(|| oauth_error("invalid_request", "grant_type is required"))?;
    let from_body = (param(&form, "client_id"), param(&form, "client_secret"));
    let basic = authorization.and_then(basic_credentials);
    let (client_id, client_secret) = match (basic, from_body) {
        (Some(_), (_, Some(_))) => {
            return Err(oauth_error(
                "invalid_request",
                "authenticate the client one way: HTTP Basic or client_secret in the body, not both",
            ));
        }
        (Some(basic), (body_id, None)) => {
            let (id, secret) = basic?;
            if body_id.is_some_and(|b| b != id) {
                return Err(oauth_error(
                    "invalid_request",
                    "client_id in the body differs from the one authenticated",
                ));
            }
            (id, secret)
        }
        (None, (Some(id), Some(secret))) => (id.to_owned(), secret.to_owned()),
        (None, _) => return Err(invalid_client()),
    };
    if grant_type != "client_credentials" {
        return Err(oauth_error(
            "unsupported_grant_type",
            format!("grant_type {grant_type:?} is not supported; use client_credentials"),
        ));
    }
    Ok(TokenRequest {
        client_id,
        client_secret,
        scope: param(&form, "scope").map(str::to_owned),
    })
}

/// A token's `jti`: `jti_` and 22 random letters and digits (131 bits), unique to the token.
pub(crate) fn new_jti() -> String {
    let mut jti = String::from("jti_");
    Alphanumeric.append_string(&mut rand::rng(), &mut jti, 22);
    jti
}

/// A token for `client`, with `scopes`, signed with the current signing key.
fn mint(
    store: &crate::store::Store,
    signers: &SignerCache,
    settings: &TokenSettings,
    client: &ClientRow,
    scopes: &[String],
) -> Result<Value, ApiError> {
    let signer = signers.get(&store.current_signing_key()?)?;
    let issued = now();
    let lifetime = i64::try_from(settings.lifetime.as_secs()).unwrap_or(3600);
    // Never past the client's own expiry.
    let exp = client
        .expires_at
        .map_or(issued + lifetime, |t| t.min(issued + lifetime));
    let jti = new_jti();
    let scope = scopes.join(" ");
    let claims = AccessClaims {
        iss: settings.issuer.clone(),
        sub: client.id.clone(),
        aud: settings.audience.clone(),
        exp,
        nbf: issued,
        iat: issued,
        jti,
        client_id: client.id.clone(),
        scope: scope.clone(),
        workspace: client.workspace.clone(),
    };
    Ok(json!({
        "access_token": signer.sign(&claims),
        "token_type": "Bearer",
        "expires_in": exp - issued,
        "scope": scope,
    }))
}

impl ControlPlane {
    /// `POST /oauth/token`.
    pub(crate) async fn token_endpoint(
        &self,
        authorization: Option<String>,
        content_type: Option<String>,
        query: Option<&str>,
        body: Vec<u8>,
    ) -> Response<Vec<u8>> {
        let request = match read_request(
            authorization.as_deref(),
            content_type.as_deref(),
            query,
            &body,
        ) {
            Ok(r) => r,
            Err(e) => return error_answer(e),
        };
        let settings = self.tokens.clone();
        let signers = self.signers.clone();
        let answer = self
            .db
            .call(move |store| {
                let client = match store.client(&request.client_id) {
                    Ok(c) => c,
                    Err(ApiError::NotFound(_)) => return Ok(Err(invalid_client())),
                    Err(e) => return Err(e),
                };
                if !client.secret_matches(&request.client_secret) || !client.usable(now()) {
                    return Ok(Err(invalid_client()));
                }
                let scopes = match clients::narrow(&client.scopes, request.scope.as_deref()) {
                    Ok(s) => s,
                    Err(why) => return Ok(Err(oauth_error("invalid_scope", why))),
                };
                let token = mint(store, &signers, &settings, &client, &scopes)?;
                Ok(Ok((client.id, token)))
            })
            .await;
        match answer {
            Ok(Ok((client, token))) => {
                tracing::info!(client = %client, "access token issued");
                token_json(StatusCode::OK, &token)
            }
            Ok(Err(e)) => error_answer(e),
            Err(e) => {
                tracing::error!(error = %e.message(), "token endpoint failed");
                let body = json!({"error": "server_error", "error_description": "internal error"});
                token_json(StatusCode::INTERNAL_SERVER_ERROR, &body)
            }
        }
    }

    /// The admin API of clients and signing keys; `None` for any other route.
    pub(crate) async fn oauth_admin(
        &self,
        route: Route<'_>,
        method: &Method,
        query: Option<&str>,
        body: &[u8],
    ) -> Option<Result<Response<Vec<u8>>, ApiError>> {
        Some(match route {
            Route::Clients | Route::Client(_) | Route::ClientSecret(_) => {
                self.clients_admin(route, method, query, body).await
            }
            Route::SigningKeys | Route::SigningKeyRotate | Route::SigningKey(_) => {
                self.signing_keys_admin(route, query).await
            }
            _ => return None,
        })
    }

    async fn clients_admin(
        &self,
        route: Route<'_>,
        method: &Method,
        query: Option<&str>,
        body: &[u8],
    ) -> Result<Response<Vec<u8>>, ApiError> {
        match route {
            Route::Clients if method == Method::GET => {
                let params = parse_query(query, &["workspace"])?;
                let workspace = param(&params, "workspace").map(str::to_owned);
                let rows = self
                    .db
                    .call(move |s| s.clients(workspace.as_deref()))
                    .await?;
                let now = now();
                let data: Vec<Value> = rows.iter().map(|c| clients::client_json(c, now)).collect();
                Ok(json_response(
                    StatusCode::OK,
                    json!({"success": true, "data": data}),
                ))
            }
            Route::Clients => {
                parse_query(query, &[])?;
                let new = NewClient::parse(body, &self.templates)?;
                let w = self.db.call(move |s| s.create_client(new)).await?;
                let c = &w.value.row;
                tracing::info!(client = %c.id, workspace = %c.workspace, version = w.version, "OAuth client created");
                Ok(created(
                    w.version,
                    format!("/v1/oauth-clients/{}", c.id),
                    clients::client_with_secret_json(&w.value),
                ))
            }
            Route::Client(raw) => {
                let params = parse_query(query, &["purge"])?;
                let id = path_id(raw, "client id")?;
                if *method == Method::GET {
                    if !params.is_empty() {
                        return Err(bad("purge is only for DELETE"));
                    }
                    let row = self.db.call(move |s| s.client(&id)).await?;
                    return Ok(json_response(
                        StatusCode::OK,
                        json!({"success": true, "data": clients::client_json(&row, now())}),
                    ));
                }
                let purge = purge_param(&params)?;
                let log_id = id.clone();
                let version = if purge {
                    let w = self.db.call(move |s| s.purge_client(&id)).await?;
                    tracing::info!(client = %log_id, version = w.version, "OAuth client purged");
                    w.version
                } else {
                    let w = self.db.call(move |s| s.revoke_client(&id)).await?;
                    if w.changed {
                        tracing::info!(client = %log_id, version = w.version, "OAuth client revoked");
                    }
                    w.version
                };
                Ok(written(StatusCode::OK, version, None))
            }
            Route::ClientSecret(raw) => {
                parse_query(query, &[])?;
                let id = path_id(raw, "client id")?;
                let c = self.db.call(move |s| s.rotate_client_secret(&id)).await?;
                tracing::info!(client = %c.row.id, "OAuth client secret rotated");
                Ok(json_response(
                    StatusCode::OK,
                    json!({"success": true, "data": clients::client_with_secret_json(&c)}),
                ))
            }
            _ => Err(ApiError::Internal("not a client route".into())),
        }
    }

    async fn signing_keys_admin(
        &self,
        route: Route<'_>,
        query: Option<&str>,
    ) -> Result<Response<Vec<u8>>, ApiError> {
        parse_query(query, &[])?;
        match route {
            Route::SigningKeys => {
                let rows = self.db.call(|s| s.signing_keys()).await?;
                let data: Vec<Value> = rows.iter().map(clients::signing_key_json).collect();
                Ok(json_response(
                    StatusCode::OK,
                    json!({"success": true, "data": data}),
                ))
            }
            Route::SigningKeyRotate => {
                let w = self.db.call(|s| s.rotate_signing_key()).await?;
                tracing::info!(kid = %w.value.kid, version = w.version, "signing key rotated");
                Ok(written(
                    StatusCode::OK,
                    w.version,
                    Some(clients::signing_key_json(&w.value)),
                ))
            }
            Route::SigningKey(raw) => {
                let kid = path_id(raw, "kid")?;
                let w = self.db.call(move |s| s.retire_signing_key(&kid)).await?;
                if w.changed {
                    tracing::info!(kid = %w.value.kid, version = w.version, "signing key retired");
                }
                Ok(written(
                    StatusCode::OK,
                    w.version,
                    Some(clients::signing_key_json(&w.value)),
                ))
            }
            _ => Err(ApiError::Internal("not a signing-key route".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORM: Option<&str> = Some("application/x-www-form-urlencoded");

    #[test]
    fn token_lifetimes_run_from_a_minute_to_a_day() {
        let with = |secs| TokenSettings {
            lifetime: Duration::from_secs(secs),
            ..TokenSettings::default()
        };
        for ok in [60, 3600, 86_400] {
            with(ok).check().unwrap();
        }
        for refused in [0, 59, 86_401] {
            let e = with(refused).check().unwrap_err().to_string();
            assert!(e.contains("--token-lifetime"), "{e}");
        }
        let blank = TokenSettings {
            issuer: " ".into(),
            ..TokenSettings::default()
        };
        assert!(
            blank
                .check()
                .unwrap_err()
                .to_string()
                .contains("--token-issuer")
        );
    }

    #[test]
    fn the_signer_is_kept_while_its_key_stays_current() {
        let key = |kid: &str| SigningKeyRow {
            kid: kid.into(),
            seed: TokenSigner::generate_seed(),
            public_key: String::new(),
            state: "current".into(),
            created_at: 0,
            retired_at: None,
        };
        let cache = SignerCache::default();
        let first = key("kid_a");
        let a = cache.get(&first).unwrap();
        assert!(Arc::ptr_eq(&a, &cache.get(&first).unwrap()));
        let b = cache.get(&key("kid_b")).unwrap();
        assert_eq!(b.kid(), "kid_b");
        assert!(!Arc::ptr_eq(&a, &b));
        let broken = SigningKeyRow {
            seed: "not base64".into(),
            ..key("kid_c")
        };
        assert!(cache.get(&broken).is_err());
    }

    fn code(r: Result<TokenRequest, OAuthError>) -> &'static str {
        match r {
            Ok(_) => "ok",
            Err(e) => e.code,
        }
    }

    #[test]
    fn token_requests_are_read_per_rfc_6749() {
        let basic = format!("Basic {}", STANDARD.encode("oc_1:cs_x%2By"));
        let ok = read_request(
            Some(&basic),
            FORM,
            None,
            b"grant_type=client_credentials&scope=a%3Aread+b%3Aread",
        )
        .unwrap();
        assert_eq!(
            (ok.client_id.as_str(), ok.client_secret.as_str()),
            ("oc_1", "cs_x+y")
        );
        assert_eq!(ok.scope.as_deref(), Some("a:read b:read"));
        let form = read_request(
            None,
            FORM,
            None,
            b"grant_type=client_credentials&client_id=oc_1&client_secret=s",
        )
        .unwrap();
        assert_eq!(form.client_id, "oc_1");

        for (auth, ctype, query, body, want) in [
            (
                None,
                FORM,
                None,
                "client_id=a&client_secret=b",
                "invalid_request",
            ),
            (
                None,
                FORM,
                None,
                "grant_type=client_credentials&grant_type=client_credentials&client_id=a&client_secret=b",
                "invalid_request",
            ),
            (
                Some(basic.as_str()),
                FORM,
                None,
                "grant_type=client_credentials&client_secret=b",
                "invalid_request",
            ),
            (
                None,
                Some("application/json"),
                None,
                "grant_type=client_credentials",
                "invalid_request",
            ),
            (
                None,
                FORM,
                Some("grant_type=client_credentials"),
                "",
                "invalid_request",
            ),
            (
                None,
                FORM,
                None,
                "grant_type=client_credentials&client_id=a%ZZ",
                "invalid_request",
            ),
            (
                None,
                FORM,
                None,
                "grant_type=client_credentials",
                "invalid_client",
            ),
            (
                None,
                FORM,
                None,
                "grant_type=client_credentials&client_id=a",
                "invalid_client",
            ),
            (
                Some("Bearer x"),
                FORM,
                None,
                "grant_type=client_credentials",
                "invalid_client",
            ),
            (
                Some("Basic !!!"),
                FORM,
                None,
                "grant_type=client_credentials",
                "invalid_client",
            ),
            (
                None,
                FORM,
                None,
                "grant_type=password&client_id=a&client_secret=b",
                "unsupported_grant_type",
            ),
        ] {
            assert_eq!(
                code(read_request(auth, ctype, query, body.as_bytes())),
                want,
                "{body}"
            );
        }
    }
}

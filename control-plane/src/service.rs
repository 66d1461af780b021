//! The control plane's HTTP side: one Pingora `ServeHttp` app serving the sync protocol to
//! keygate and the key-management API to people, over the SQLite [`Store`].

use crate::api::{
    self, ApiError, KeyUpdate, NewKey, NewWorkspace, OldExpiry, UsageEntry, WorkspaceUpdate,
    snap_key, snap_workspace,
};
use crate::clients::{snap_client, snap_signing_key};
use crate::oauth::{SignerCache, TokenSettings};
use crate::store::{Db, DeltaOutcome, FullState, Store};
use crate::templates::ScopeTemplates;
use async_trait::async_trait;
use http::{Method, Response, StatusCode, header};
use keygate_protocol::signature::{SIGNATURE_HEADER, Signer};
use keygate_protocol::wire::{Changes, DeltaDoc, SnapshotDoc};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::watch;

/// Largest request body accepted.
pub const MAX_BODY: usize = 1 << 20;
/// Longest long-poll: a longer `wait` is cut to this.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// Delta renderings kept, for many keygates asking for the same change at once.
const CACHED_DELTAS: usize = 32;

/// A rendered 200 body of the sync endpoint, with its signature.
struct Rendered {
    version: u64,
    body: Vec<u8>,
    signature: Option<String>,
}

/// The latest full snapshot and recent deltas, rendered and signed once. A version names one
/// state for good, so an entry is right for as long as it is kept.
#[derive(Default)]
struct Cache {
    full: Mutex<Option<Arc<Rendered>>>,
    /// `(from, rendering)`; only renderings of the newest version seen are kept.
    deltas: Mutex<VecDeque<(u64, Arc<Rendered>)>>,
    /// Held while reading and rendering on a cache miss, so that requests woken together
    /// render once and the rest find it in the cache.
    render: Mutex<()>,
}

impl Cache {
    fn rendering(&self) -> MutexGuard<'_, ()> {
        self.render.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn full(&self) -> Option<Arc<Rendered>> {
        self.full
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn keep_full(&self, r: &Arc<Rendered>) {
        let mut full = self.full.lock().unwrap_or_else(PoisonError::into_inner);
        if full.as_ref().is_none_or(|c| c.version < r.version) {
            *full = Some(r.clone());
        }
    }

    fn delta(&self, from: u64, version: u64) -> Option<Arc<Rendered>> {
        let deltas = self.deltas.lock().unwrap_or_else(PoisonError::into_inner);
        deltas
            .iter()
            .find(|(f, r)| *f == from && r.version == version)
            .map(|(_, r)| r.clone())
    }

    fn keep_delta(&self, from: u64, r: &Arc<Rendered>) {
        let mut deltas = self.deltas.lock().unwrap_or_else(PoisonError::into_inner);
        deltas.retain(|(_, d)| d.version >= r.version);
        if deltas.len() >= CACHED_DELTAS {
            deltas.pop_front();
        }
        deltas.push_back((from, r.clone()));
    }
}

/// SHA-256 of a bearer token: tokens are compared through their digests, in constant time.
#[derive(Clone, Copy)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    pub fn of(token: &str) -> TokenDigest {
        TokenDigest(Sha256::digest(token.as_bytes()).into())
    }

    fn matches(&self, presented: &str) -> bool {
        constant_time_eq(&self.0, &TokenDigest::of(presented).0)
    }
}

/// Whether `a` and `b` are equal, in a time that depends on their lengths only.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub struct ControlPlane {
    pub(crate) db: Db,
    versions: watch::Receiver<u64>,
    shutdown: watch::Receiver<bool>,
    admin_token: TokenDigest,
    sync_token: TokenDigest,
    signer: Option<Arc<Signer>>,
    cache: Arc<Cache>,
    pub(crate) templates: Arc<ScopeTemplates>,
    pub(crate) tokens: Arc<TokenSettings>,
    /// The current signing key, ready to sign.
    pub(crate) signers: Arc<SignerCache>,
}

impl ControlPlane {
    pub fn new(
        store: Arc<Store>,
        admin_token: TokenDigest,
        sync_token: TokenDigest,
        signer: Option<Signer>,
        templates: ScopeTemplates,
        tokens: TokenSettings,
        shutdown: watch::Receiver<bool>,
    ) -> ControlPlane {
        ControlPlane {
            versions: store.subscribe(),
            db: Db(store),
            shutdown,
            admin_token,
            sync_token,
            signer: signer.map(Arc::new),
            cache: Arc::default(),
            templates: Arc::new(templates),
            tokens: Arc::new(tokens),
            signers: Arc::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route<'a> {
    Health,
    Snapshot,
    Usage,
    Workspaces,
    Workspace(&'a str),
    Keys,
    Key(&'a str),
    Rotate(&'a str),
    ScopeTemplates,
    /// `POST /oauth/token`: authenticated by client credentials, not a bearer token.
    OAuthToken,
    /// `POST /v1/client-tokens`: authenticated by a workspace API key, not the admin token.
    ClientTokens,
    Clients,
    Client(&'a str),
    ClientSecret(&'a str),
    SigningKeys,
    SigningKeyRotate,
    SigningKey(&'a str),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Token {
    None,
    Sync,
    Admin,
}

impl Route<'_> {
    fn parse(path: &str) -> Option<Route<'_>> {
        let path = path
            .strip_suffix('/')
            .filter(|p| !p.is_empty())
            .unwrap_or(path);
        let segments: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
        Some(match segments.as_slice() {
            ["healthz"] => Route::Health,
            ["v1", "snapshot"] => Route::Snapshot,
            ["v1", "usage"] => Route::Usage,
            ["v1", "workspaces"] => Route::Workspaces,
            ["v1", "workspaces", id] => Route::Workspace(id),
            ["v1", "api-keys"] => Route::Keys,
            ["v1", "api-keys", id] => Route::Key(id),
            ["v1", "api-keys", id, "rotate"] => Route::Rotate(id),
            ["v1", "scope-templates"] => Route::ScopeTemplates,
            ["oauth", "token"] => Route::OAuthToken,
            ["v1", "client-tokens"] => Route::ClientTokens,
            ["v1", "oauth-clients"] => Route::Clients,
            ["v1", "oauth-clients", id] => Route::Client(id),
            ["v1", "oauth-clients", id, "rotate-secret"] => Route::ClientSecret(id),
            ["v1", "signing-keys"] => Route::SigningKeys,
            ["v1", "signing-keys", "rotate"] => Route::SigningKeyRotate,
            ["v1", "signing-keys", kid] => Route::SigningKey(kid),
            _ => return None,
        })
    }

    fn token(self) -> Token {
        match self {
            // The token endpoints authenticate their callers themselves.
            Route::Health | Route::OAuthToken | Route::ClientTokens => Token::None,
            Route::Snapshot | Route::Usage => Token::Sync,
            _ => Token::Admin,
        }
    }

    fn allow(self) -> &'static str {
        match self {
            Route::Health | Route::Snapshot | Route::ScopeTemplates | Route::SigningKeys => "GET",
            Route::Usage
            | Route::Rotate(_)
            | Route::OAuthToken
            | Route::ClientTokens
            | Route::ClientSecret(_)
            | Route::SigningKeyRotate => "POST",
            Route::Workspaces | Route::Keys | Route::Clients => "GET, POST",
            Route::Client(_) => "GET, DELETE",
            Route::SigningKey(_) => "DELETE",
            Route::Workspace(_) => "GET, PUT, DELETE",
            Route::Key(_) => "GET, PATCH, DELETE",
        }
    }
}

// --- responses -----------------------------------------------------------------------------

fn respond(status: StatusCode, body: Vec<u8>) -> http::response::Builder {
    let b = Response::builder()
        .status(status)
        .header(header::CACHE_CONTROL, "no-store");
    if body.is_empty() && status == StatusCode::NOT_MODIFIED {
        // A 304 has no body by definition; a Content-Length here would have to be the one of
        // the 200 it stands for (RFC 9110, 8.6), so none is sent.
        b
    } else {
        b.header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, body.len())
    }
}

fn json_body(value: &Value) -> Vec<u8> {
    let mut body = value.to_string().into_bytes();
    body.push(b'\n');
    body
}

pub(crate) fn json_response(status: StatusCode, value: Value) -> Response<Vec<u8>> {
    let body = json_body(&value);
    respond(status, body.clone()).body(body).unwrap_or_default()
}

/// The value of an `Authorization` header in `scheme` (any letter case), trimmed; `None` for
/// another scheme or no value.
pub(crate) fn credentials<'a>(authorization: &'a str, scheme: &str) -> Option<&'a str> {
    let (given, value) = authorization.split_once(' ')?;
    given.eq_ignore_ascii_case(scheme).then(|| value.trim())
}

pub(crate) fn error_response(e: &ApiError) -> Response<Vec<u8>> {
    if let ApiError::Internal(detail) = e {
        tracing::error!(%detail, "control plane: internal error");
    }
    let body = json_body(&json!({"success": false, "error": e.message()}));
    let mut b = respond(e.status(), body.clone());
    match e {
        ApiError::Unauthorized => b = b.header(header::WWW_AUTHENTICATE, "Bearer"),
        ApiError::MethodNotAllowed(allow) => b = b.header(header::ALLOW, *allow),
        _ => {}
    }
    b.body(body).unwrap_or_default()
}

fn etag(version: u64) -> String {
    format!("\"{version}\"")
}

fn not_modified(version: u64) -> Response<Vec<u8>> {
    respond(StatusCode::NOT_MODIFIED, Vec::new())
        .header(header::ETAG, etag(version))
        .body(Vec::new())
        .unwrap_or_default()
}

fn sync_response(r: &Rendered) -> Response<Vec<u8>> {
    let mut b = respond(StatusCode::OK, r.body.clone()).header(header::ETAG, etag(r.version));
    if let Some(sig) = &r.signature {
        b = b.header(SIGNATURE_HEADER, sig.as_str());
    }
    b.body(r.body.clone()).unwrap_or_default()
}

pub(crate) fn written(status: StatusCode, version: u64, data: Option<Value>) -> Response<Vec<u8>> {
    let mut v = json!({"success": true, "version": version});
    if let Some(data) = data {
        v["data"] = data;
    }
    json_response(status, v)
}

pub(crate) fn created(version: u64, location: String, data: Value) -> Response<Vec<u8>> {
    let body = json_body(&json!({"success": true, "version": version, "data": data}));
    respond(StatusCode::CREATED, body.clone())
        .header(header::LOCATION, location)
        .body(body)
        .unwrap_or_default()
}

fn render<T: serde::Serialize>(
    version: u64,
    doc: &T,
    signer: Option<&Signer>,
) -> Result<Rendered, ApiError> {
    let body = serde_json::to_vec(doc).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Rendered {
        version,
        signature: signer.map(|s| s.sign(&body)),
        body,
    })
}

fn render_full(state: &FullState, signer: Option<&Signer>) -> Result<Rendered, ApiError> {
    let doc = SnapshotDoc {
        version: state.version,
        workspaces: state.workspaces.iter().map(snap_workspace).collect(),
        keys: state.keys.iter().map(snap_key).collect(),
        signing_keys: state.signing_keys.iter().map(snap_signing_key).collect(),
        clients: state.clients.iter().map(snap_client).collect(),
    };
    render(state.version, &doc, signer)
}

// --- request parsing -----------------------------------------------------------------------

pub(crate) fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::BadRequest(msg.into())
}

/// Decodes `%XX` escapes; `None` for a bad escape or a result that is not UTF-8.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The query's parameters, each at most once and each one of `allowed`: a typo such as
/// `?sinse=3` is an error, not a silent full snapshot.
pub(crate) fn parse_query(
    query: Option<&str>,
    allowed: &[&str],
) -> Result<Vec<(String, String)>, ApiError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let (Some(name), Some(value)) = (percent_decode(name), percent_decode(value)) else {
            return Err(bad(format!("malformed query parameter {pair:?}")));
        };
        if !allowed.contains(&name.as_str()) {
            return Err(bad(format!(
                "unknown query parameter {name:?}; allowed: {}",
                allowed.join(", ")
            )));
        }
        if out.iter().any(|(n, _)| *n == name) {
            return Err(bad(format!("query parameter {name:?} given twice")));
        }
        out.push((name, value));
    }
    Ok(out)
}

pub(crate) fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// `30s`, `500ms`, `1m`, or bare seconds; cut to [`MAX_WAIT`].
fn parse_wait(s: &str) -> Result<Duration, ApiError> {
    let d = match s.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(s).map_err(|_| {
            bad(format!(
                "wait: {s:?} is not a duration such as 30s or 500ms (at most 60s)"
            ))
        })?,
    };
    Ok(d.min(MAX_WAIT))
}

/// The versions an `If-None-Match` names (`"7"`, `W/"7"`, lists); `*` matches any.
#[derive(Default)]
struct IfNoneMatch {
    any: bool,
    versions: Vec<u64>,
}

impl IfNoneMatch {
    fn parse(value: Option<&http::HeaderValue>) -> IfNoneMatch {
        let mut out = IfNoneMatch::default();
        let Some(value) = value.and_then(|v| v.to_str().ok()) else {
            return out;
        };
        for tag in value.split(',').map(str::trim) {
            if tag == "*" {
                out.any = true;
            }
            let tag = tag.strip_prefix("W/").unwrap_or(tag);
            if let Some(v) = tag
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .and_then(|t| t.parse().ok())
            {
                out.versions.push(v);
            }
        }
        out
    }

    fn matches(&self, version: u64) -> bool {
        self.any || self.versions.contains(&version)
    }

    /// The version the client holds, for a long-poll to wait past.
    fn held(&self) -> Option<u64> {
        self.versions.iter().copied().max()
    }
}

/// `?purge=true` on a DELETE: delete outright instead of revoking.
pub(crate) fn purge_param(params: &[(String, String)]) -> Result<bool, ApiError> {
    match param(params, "purge") {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(bad(format!("purge: {other:?} is not true or false"))),
    }
}

pub(crate) fn path_id(raw: &str, what: &str) -> Result<String, ApiError> {
    match percent_decode(raw) {
        Some(id) if api::valid_id(&id) => Ok(id),
        _ => Err(bad(format!(
            "invalid {what} {raw:?}: 1-128 characters of A-Z a-z 0-9 _ - . :"
        ))),
    }
}

async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, ApiError> {
    let mut body = Vec::new();
    loop {
        let chunk = session
            .read_request_body()
            .await
            .map_err(|e| bad(format!("could not read the request body: {e}")))?;
        let Some(chunk) = chunk else {
            return Ok(body);
        };
        if body.len() + chunk.len() > MAX_BODY {
            // The rest of the body is never read: the connection cannot be reused.
            session.set_keepalive(None);
            return Err(ApiError::PayloadTooLarge(MAX_BODY));
        }
        body.extend_from_slice(&chunk);
    }
}

// --- the app -------------------------------------------------------------------------------

#[async_trait]
impl ServeHttp for ControlPlane {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        match self.handle(session).await {
            Ok(r) => r,
            Err(e) => error_response(&e),
        }
    }
}

impl ControlPlane {
    async fn handle(&self, session: &mut ServerSession) -> Result<Response<Vec<u8>>, ApiError> {
        let req = session.req_header();
        let method = req.method.clone();
        let uri = req.uri.clone();
        let authorization = req
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let if_none_match = IfNoneMatch::parse(req.headers.get(header::IF_NONE_MATCH));

        let route = Route::parse(uri.path())
            .ok_or_else(|| ApiError::NotFound(format!("no such endpoint: {}", uri.path())))?;
        let body = read_body(session).await?;
        let token = match route.token() {
            Token::None => None,
            Token::Sync => Some(&self.sync_token),
            Token::Admin => Some(&self.admin_token),
        };
        if let Some(expected) = token {
            let presented = authorization
                .as_deref()
                .and_then(|v| credentials(v, "bearer"));
            if !presented.is_some_and(|t| expected.matches(t)) {
                return Err(ApiError::Unauthorized);
            }
        }
        if !route.allow().split(", ").any(|m| m == method.as_str()) {
            return Err(ApiError::MethodNotAllowed(route.allow()));
        }
        let query = uri.query();
        if route == Route::OAuthToken {
            let req = session.req_header();
            let content_type = req
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            return Ok(self
                .token_endpoint(authorization, content_type, query, body)
                .await);
        }
        if route == Route::ClientTokens {
            return Ok(self.client_token_endpoint(authorization, query, body).await);
        }
        if let Some(r) = self.oauth_admin(route, &method, query, &body).await {
            return r;
        }

        match route {
            Route::Health => Ok(json_response(
                StatusCode::OK,
                json!({"status": "ok", "version": self.db.0.current_version()}),
            )),
            Route::Snapshot => {
                let params = parse_query(query, &["since", "wait"])?;
                let since = param(&params, "since")
                    .map(|s| {
                        s.parse::<u64>()
                            .map_err(|_| bad(format!("since: {s:?} is not a version number")))
                    })
                    .transpose()?;
                let wait = param(&params, "wait").map(parse_wait).transpose()?;
                self.snapshot(since, wait, if_none_match).await
            }
            Route::Usage => {
                parse_query(query, &[])?;
                let entries = UsageEntry::parse_report(&body)?;
                let outcome = self.db.call(move |s| s.record_usage(&entries)).await?;
                Ok(json_response(
                    StatusCode::OK,
                    json!({"success": true, "data": {"updated": outcome.updated, "unknown": outcome.unknown}}),
                ))
            }
            // Answered above, by `crate::oauth` and `crate::client_tokens`.
            Route::OAuthToken
            | Route::ClientTokens
            | Route::Clients
            | Route::Client(_)
            | Route::ClientSecret(_)
            | Route::SigningKeys
            | Route::SigningKeyRotate
            | Route::SigningKey(_) => Err(ApiError::Internal(
                "token or OAuth route not dispatched".into(),
            )),
            Route::ScopeTemplates => {
                parse_query(query, &[])?;
                Ok(json_response(
                    StatusCode::OK,
                    json!({"success": true, "data": self.templates.to_json()}),
                ))
            }
            Route::Workspaces if method == Method::GET => {
                parse_query(query, &[])?;
                let rows = self.db.call(|s| s.workspaces()).await?;
                let data: Vec<Value> = rows.iter().map(api::workspace_json).collect();
                Ok(json_response(
                    StatusCode::OK,
                    json!({"success": true, "data": data}),
                ))
            }
            Route::Workspaces => {
                parse_query(query, &[])?;
                let new = NewWorkspace::parse(&body)?;
                let w = self.db.call(move |s| s.create_workspace(new)).await?;
                tracing::info!(workspace = %w.value.id, version = w.version, "workspace created");
                Ok(created(
                    w.version,
                    format!("/v1/workspaces/{}", w.value.id),
                    api::workspace_json(&w.value),
                ))
            }
            Route::Workspace(raw) => {
                parse_query(query, &[])?;
                let id = path_id(raw, "workspace id")?;
                match method {
                    Method::GET => {
                        let row = self.db.call(move |s| s.workspace(&id)).await?;
                        Ok(json_response(
                            StatusCode::OK,
                            json!({"success": true, "data": api::workspace_json(&row)}),
                        ))
                    }
                    Method::PUT => {
                        let update = WorkspaceUpdate::parse(&body)?;
                        let w = self
                            .db
                            .call(move |s| s.update_workspace(&id, update))
                            .await?;
                        if w.changed {
                            tracing::info!(workspace = %w.value.id, version = w.version, "workspace updated");
                        }
                        Ok(written(
                            StatusCode::OK,
                            w.version,
                            Some(api::workspace_json(&w.value)),
                        ))
                    }
                    _ => {
                        let log_id = id.clone();
                        let w = self.db.call(move |s| s.delete_workspace(&id)).await?;
                        tracing::info!(workspace = %log_id, version = w.version, "workspace deleted");
                        Ok(written(StatusCode::OK, w.version, None))
                    }
                }
            }
            Route::Keys if method == Method::GET => {
                let params = parse_query(query, &["workspace"])?;
                let workspace = param(&params, "workspace").map(str::to_owned);
                let rows = self.db.call(move |s| s.keys(workspace.as_deref())).await?;
                let now = api::now();
                let data: Vec<Value> = rows.iter().map(|k| api::key_json(k, now)).collect();
                Ok(json_response(
                    StatusCode::OK,
                    json!({"success": true, "data": data}),
                ))
            }
            Route::Keys => {
                parse_query(query, &[])?;
                let new = NewKey::parse(&body, &self.templates)?;
                let w = self.db.call(move |s| s.create_key(new)).await?;
                let k = &w.value.row;
                tracing::info!(key = %k.id, workspace = k.workspace.as_deref().unwrap_or("(internal)"), version = w.version, "API key created");
                Ok(created(
                    w.version,
                    format!("/v1/api-keys/{}", k.id),
                    api::created_key_json(k, &w.value.secret),
                ))
            }
            Route::Key(raw) => {
                let params = parse_query(query, &["purge"])?;
                let id = path_id(raw, "key id")?;
                match method {
                    Method::GET => {
                        if !params.is_empty() {
                            return Err(bad("purge is only for DELETE"));
                        }
                        let row = self.db.call(move |s| s.key(&id)).await?;
                        Ok(json_response(
                            StatusCode::OK,
                            json!({"success": true, "data": api::key_json(&row, api::now())}),
                        ))
                    }
                    Method::PATCH => {
                        if !params.is_empty() {
                            return Err(bad("purge is only for DELETE"));
                        }
                        let update = KeyUpdate::parse(&body)?;
                        let w = self.db.call(move |s| s.update_key(&id, update)).await?;
                        if w.changed {
                            tracing::info!(key = %w.value.id, version = w.version, "API key updated");
                        }
                        Ok(written(
                            StatusCode::OK,
                            w.version,
                            Some(api::key_json(&w.value, api::now())),
                        ))
                    }
                    _ => {
                        let purge = purge_param(&params)?;
                        let log_id = id.clone();
                        if purge {
                            let w = self.db.call(move |s| s.purge_key(&id)).await?;
                            tracing::info!(key = %log_id, version = w.version, "API key purged");
                            Ok(written(StatusCode::OK, w.version, None))
                        } else {
                            let w = self.db.call(move |s| s.revoke_key(&id)).await?;
                            if w.changed {
                                tracing::info!(key = %log_id, version = w.version, "API key revoked");
                            }
                            Ok(written(StatusCode::OK, w.version, None))
                        }
                    }
                }
            }
            Route::Rotate(raw) => {
                parse_query(query, &[])?;
                let id = path_id(raw, "key id")?;
                let expiry = OldExpiry::parse(&body)?;
                let w = self.db.call(move |s| s.rotate_key(&id, expiry)).await?;
                let (old, new) = (&w.value.old, &w.value.new);
                tracing::info!(key = %old.id, new_key = %new.row.id, version = w.version, "API key rotated");
                let mut data = api::created_key_json(&new.row, &new.secret);
                data["rotated_from"] = api::key_json(old, api::now());
                Ok(created(
                    w.version,
                    format!("/v1/api-keys/{}", new.row.id),
                    data,
                ))
            }
        }
    }

    /// `GET /v1/snapshot`: the full snapshot, or with `since` a delta; with `wait` a long-poll.
    async fn snapshot(
        &self,
        since: Option<u64>,
        wait: Option<Duration>,
        if_none_match: IfNoneMatch,
    ) -> Result<Response<Vec<u8>>, ApiError> {
        if let Some(wait) = wait {
            let held = match since {
                Some(v) => Some(v),
                None => if_none_match.held(),
            };
            if let Some(held) = held {
                self.wait_past(held, wait).await;
            }
        }
        match since {
            Some(since) => self.delta(since).await,
            None => self.full(if_none_match).await,
        }
    }

    /// Returns once the published version differs from `held`, the server stops, or `wait`
    /// passes — at once when it already differs.
    async fn wait_past(&self, held: u64, wait: Duration) {
        let mut versions = self.versions.clone();
        let mut shutdown = self.shutdown.clone();
        if *versions.borrow_and_update() != held || *shutdown.borrow_and_update() {
            return;
        }
        tokio::select! {
            _ = versions.wait_for(|v| *v != held) => {}
            _ = shutdown.wait_for(|stop| *stop) => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }

    async fn full(&self, inm: IfNoneMatch) -> Result<Response<Vec<u8>>, ApiError> {
        enum Answer {
            NotModified(u64),
            Body(Arc<Rendered>),
        }
        let cache = self.cache.clone();
        let signer = self.signer.clone();
        let answer = self
            .db
            .call(move |store| {
                // Answered from the published version and the cache when possible: a burst of
                // keygates woken by one write costs one database read and one rendering.
                let published = store.current_version();
                if inm.matches(published) {
                    return Ok(Answer::NotModified(published));
                }
                if let Some(c) = cache.full().filter(|c| c.version >= published) {
                    return Ok(Answer::Body(c));
                }
                let _one_at_a_time = cache.rendering();
                if let Some(c) = cache.full().filter(|c| c.version >= published) {
                    return Ok(Answer::Body(c));
                }
                Ok(match store.full(|v| inm.matches(v))? {
                    Err(v) => Answer::NotModified(v),
                    Ok(state) => {
                        let r = Arc::new(render_full(&state, signer.as_deref())?);
                        cache.keep_full(&r);
                        Answer::Body(r)
                    }
                })
            })
            .await?;
        Ok(match answer {
            Answer::NotModified(v) => not_modified(v),
            Answer::Body(r) => sync_response(&r),
        })
    }

    async fn delta(&self, since: u64) -> Result<Response<Vec<u8>>, ApiError> {
        enum Answer {
            Current(u64),
            Gone { version: u64, oldest: u64 },
            Body(Arc<Rendered>),
        }
        let cache = self.cache.clone();
        let signer = self.signer.clone();
        let answer = self
            .db
            .call(move |store| {
                let published = store.current_version();
                if since == published {
                    return Ok(Answer::Current(published));
                }
                if let Some(r) = cache.delta(since, published) {
                    return Ok(Answer::Body(r));
                }
                let _one_at_a_time = cache.rendering();
                if let Some(r) = cache.delta(since, store.current_version()) {
                    return Ok(Answer::Body(r));
                }
                Ok(match store.delta(since)? {
                    DeltaOutcome::Current(v) => Answer::Current(v),
                    DeltaOutcome::Gone { version, oldest } => Answer::Gone { version, oldest },
                    DeltaOutcome::Changes(d) => {
                        let doc = DeltaDoc {
                            from: d.from,
                            version: d.version,
                            workspaces: Changes {
                                upsert: d.workspace_upserts.iter().map(snap_workspace).collect(),
                                remove: d.workspace_removes.clone(),
                            },
                            keys: Changes {
                                upsert: d.key_upserts.iter().map(snap_key).collect(),
                                remove: d.key_removes.clone(),
                            },
                            signing_keys: d
                                .signing_keys
                                .as_ref()
                                .map(|keys| keys.iter().map(snap_signing_key).collect()),
                            clients: Changes {
                                upsert: d.client_upserts.iter().map(snap_client).collect(),
                                remove: d.client_removes.clone(),
                            },
                        };
                        let r = Arc::new(render(d.version, &doc, signer.as_deref())?);
                        cache.keep_delta(since, &r);
                        Answer::Body(r)
                    }
                })
            })
            .await?;
        Ok(match answer {
            Answer::Current(v) => not_modified(v),
            Answer::Body(r) => sync_response(&r),
            Answer::Gone { version, oldest } => {
                let why = if since > version {
                    format!("version {since} is newer than the current version {version}")
                } else {
                    format!(
                        "version {since} is older than the change log reaches (oldest: {oldest})"
                    )
                };
                json_response(
                    StatusCode::GONE,
                    json!({
                        "success": false,
                        "error": format!("{why}; fetch the full snapshot (GET /v1/snapshot)"),
                        "version": version,
                        "oldest_since": oldest,
                    }),
                )
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(Route::parse("/v1/snapshot"), Some(Route::Snapshot));
        assert_eq!(Route::parse("/v1/api-keys/"), Some(Route::Keys));
        assert_eq!(Route::parse("/v1/api-keys/k1"), Some(Route::Key("k1")));
        assert_eq!(
            Route::parse("/v1/api-keys/k1/rotate"),
            Some(Route::Rotate("k1"))
        );
        assert_eq!(Route::parse("/v1/api-keys/k1/x"), None);
        assert_eq!(Route::parse("/v1/client-tokens"), Some(Route::ClientTokens));
        assert!(Route::ClientTokens.token() == Token::None);
        assert_eq!(Route::parse("/"), None);
        assert_eq!(Route::parse("v1/snapshot"), None);
    }

    #[test]
    fn queries_are_strict() {
        let q = parse_query(Some("since=3&wait=30s"), &["since", "wait"]).unwrap();
        assert_eq!(param(&q, "since"), Some("3"));
        assert!(parse_query(Some("sinse=3"), &["since"]).is_err());
        assert!(parse_query(Some("since=3&since=4"), &["since"]).is_err());
        assert!(parse_query(Some("since=%zz"), &["since"]).is_err());
        assert_eq!(
            param(
                &parse_query(Some("workspace=ws%3Aa"), &["workspace"]).unwrap(),
                "workspace"
            ),
            Some("ws:a")
        );
    }

    #[test]
    fn waits() {
        assert_eq!(parse_wait("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_wait("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_wait("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_wait("10m").unwrap(), MAX_WAIT);
        assert!(parse_wait("soon").is_err());
    }

    #[test]
    fn if_none_match() {
        let h = |s: &'static str| IfNoneMatch::parse(Some(&http::HeaderValue::from_static(s)));
        assert!(h("\"7\"").matches(7));
        assert!(h("W/\"7\", \"9\"").matches(9));
        assert_eq!(h("W/\"7\", \"9\"").held(), Some(9));
        assert!(!h("\"7\"").matches(8));
        assert!(h("*").matches(8));
        assert!(!IfNoneMatch::parse(None).matches(1));
    }

    #[test]
    fn tokens_compare_by_digest() {
        let t = TokenDigest::of("secret-token-1234");
        assert!(t.matches("secret-token-1234"));
        assert!(!t.matches("secret-token-1235"));
        assert!(!t.matches(""));
    }
}

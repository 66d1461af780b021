//! The control plane's JSON: request bodies and their validation, stored rows, and how rows
//! are written out — in the snapshot schema of `docs/snapshot.md` for keygate, and in the
//! key-management API's own shape for people.

use crate::templates::ScopeTemplates;
use http::StatusCode;
use keygate_protocol::ids;
use keygate_protocol::scopes::ScopePattern;
use keygate_protocol::wire::{KeyDoc, KeyStatus, RestrictionsDoc, WorkspaceDoc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value, json};
use std::borrow::Cow;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Longest key name accepted, in characters (as in the snapshot schema).
const MAX_NAME_CHARS: usize = 256;
/// Most scopes one key may hold.
const MAX_SCOPES: usize = 100;
/// Entries per restriction list: keygate matches any number without a scan, but a key's row
/// and every snapshot carry them.
const MAX_RESTRICTIONS: usize = 1000;
/// Longest rotation grace accepted: ten years.
const MAX_GRACE_SECONDS: u64 = 10 * 366 * 24 * 3600;

/// An error answered as `{"success":false,"error":"…"}`.
#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    Unauthorized,
    NotFound(String),
    MethodNotAllowed(&'static str),
    Conflict(String),
    PayloadTooLarge(usize),
    /// The database is locked by someone else for longer than the busy timeout.
    Busy,
    /// Logged in full; the client gets a generic message.
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn message(&self) -> String {
        match self {
            ApiError::BadRequest(m) | ApiError::NotFound(m) | ApiError::Conflict(m) => m.clone(),
            ApiError::Unauthorized => {
                "missing or invalid bearer token for this endpoint".to_owned()
            }
            ApiError::MethodNotAllowed(allow) => format!("method not allowed; allowed: {allow}"),
            ApiError::PayloadTooLarge(max) => format!("request body over {max} bytes"),
            ApiError::Busy => "the database is busy; retry".to_owned(),
            ApiError::Internal(_) => "internal error".to_owned(),
        }
    }
}

impl From<rusqlite::Error> for ApiError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                ApiError::Busy
            }
            _ => ApiError::Internal(format!("database: {e}")),
        }
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::BadRequest(msg.into())
}

// --- shared vocabulary ---------------------------------------------------------------------

/// The snapshot's own workspace type: the API and the sync protocol speak the same words.
pub use keygate_protocol::wire::WorkspaceKind;

/// A key's environment: the `sk_live_` / `sk_test_` prefix of its secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Live,
    Test,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Live => "live",
            Environment::Test => "test",
        }
    }

    /// Live workspaces take live keys; sandbox workspaces take test keys.
    pub fn for_workspace(kind: WorkspaceKind) -> Environment {
        match kind {
            WorkspaceKind::Live => Environment::Live,
            WorkspaceKind::Sandbox => Environment::Test,
        }
    }
}

/// Per-workspace overrides of keygate's configured limits; absent fields keep the default.
pub use keygate_protocol::wire::LimitsDoc as Limits;

/// Refuses a limit of 0, with the message keygate gives for it.
fn check_limits(limits: Limits) -> Result<Limits, ApiError> {
    if limits.is_valid() {
        Ok(limits)
    } else {
        Err(bad(ids::LIMIT_RULE))
    }
}

pub use keygate_protocol::ids::valid_id;

pub(crate) fn check_id(what: &str, id: &str) -> Result<(), ApiError> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(bad(format!("invalid {what} {id:?}: {}", ids::ID_RULE)))
    }
}

/// Parses an RFC 3339 time into Unix seconds (sub-second digits are dropped: a key expiring
/// at `…:00.5Z` expires at `…:00Z`, never later).
pub fn parse_time(field: &str, s: &str) -> Result<i64, ApiError> {
    OffsetDateTime::parse(s, &Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|e| {
            bad(format!(
                "{field}: {s:?} is not an RFC 3339 time like 2027-01-31T00:00:00Z ({e})"
            ))
        })
}

/// Unix seconds as RFC 3339 in UTC, e.g. `2027-01-31T00:00:00Z`.
pub fn format_time(t: i64) -> String {
    OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

pub fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// Parses a JSON body, naming the field at fault in the error.
pub fn parse_body<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(bad("a JSON body is required"));
    }
    serde_json::from_slice(body).map_err(|e| bad(format!("invalid JSON body: {e}")))
}

/// Distinguishes an explicit `null` from an absent field: the outer `Some` records presence.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

// --- request bodies ------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewWorkspaceBody {
    id: String,
    #[serde(rename = "type")]
    kind: WorkspaceKind,
    #[serde(default)]
    limits: Option<Limits>,
}

pub struct NewWorkspace {
    pub id: String,
    pub kind: WorkspaceKind,
    pub limits: Limits,
}

impl NewWorkspace {
    pub fn parse(body: &[u8]) -> Result<NewWorkspace, ApiError> {
        let b: NewWorkspaceBody = parse_body(body)?;
        check_id("workspace id", &b.id)?;
        Ok(NewWorkspace {
            id: b.id,
            kind: b.kind,
            limits: check_limits(b.limits.unwrap_or_default())?,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkspaceUpdateBody {
    #[serde(rename = "type", default)]
    kind: Option<WorkspaceKind>,
    #[serde(default, deserialize_with = "present")]
    limits: Option<Option<Limits>>,
}

/// `None` fields are left as they are; `limits: null` clears the overrides.
pub struct WorkspaceUpdate {
    pub kind: Option<WorkspaceKind>,
    pub limits: Option<Limits>,
}

impl WorkspaceUpdate {
    pub fn parse(body: &[u8]) -> Result<WorkspaceUpdate, ApiError> {
        let b: WorkspaceUpdateBody = parse_body(body)?;
        let limits = match b.limits {
            None => None,
            Some(l) => Some(check_limits(l.unwrap_or_default())?),
        };
        Ok(WorkspaceUpdate {
            kind: b.kind,
            limits,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKeyBody {
    #[serde(default)]
    name: String,
    #[serde(default)]
    workspace: Option<String>,
    #[serde(default)]
    internal: bool,
    #[serde(default)]
    environment: Option<Environment>,
    #[serde(default, deserialize_with = "present")]
    scopes: Option<Option<Vec<String>>>,
    #[serde(default)]
    legacy: bool,
    /// A scope template's name, instead of `scopes`.
    #[serde(default)]
    template: Option<String>,
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    restrictions: Option<RestrictionsDoc>,
}

pub struct NewKey {
    pub name: String,
    /// `None`: an internal key.
    pub workspace: Option<String>,
    /// Required for internal keys; for workspace keys it must match the workspace's type.
    pub environment: Option<Environment>,
    /// `None`: a legacy key (every route).
    pub scopes: Option<Vec<String>>,
    pub expires_at: Option<i64>,
    /// `None`: unrestricted.
    pub restrictions: Option<RestrictionsDoc>,
}

/// Checks restrictions by the rules keygate enforces them with; an empty one is none.
fn check_restrictions(r: Option<RestrictionsDoc>) -> Result<Option<RestrictionsDoc>, ApiError> {
    let Some(r) = r else { return Ok(None) };
    if r.ips.is_empty() && r.referrers.is_empty() && r.endpoints.is_empty() {
        return Ok(None);
    }
    for (what, list) in [
        ("ips", &r.ips),
        ("referrers", &r.referrers),
        ("endpoints", &r.endpoints),
    ] {
        if list.len() > MAX_RESTRICTIONS {
            return Err(bad(format!(
                "restrictions.{what}: at most {MAX_RESTRICTIONS} entries"
            )));
        }
    }
    keygate::restrictions::KeyRestrictions::compile(r.clone()).map_err(|e| bad(e.to_string()))?;
    Ok(Some(r))
}

/// `PATCH /v1/api-keys/{id}`: what may change on a key in place.
pub struct KeyUpdate {
    /// `Some(None)`: remove the key's restrictions.
    pub restrictions: Option<Option<RestrictionsDoc>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyUpdateBody {
    #[serde(default, deserialize_with = "present")]
    restrictions: Option<Option<RestrictionsDoc>>,
}

impl KeyUpdate {
    pub fn parse(body: &[u8]) -> Result<KeyUpdate, ApiError> {
        let b: KeyUpdateBody = parse_body(body)?;
        let Some(restrictions) = b.restrictions else {
            return Err(bad(
                "nothing to change: give \"restrictions\" (an object, or null to remove them)",
            ));
        };
        Ok(KeyUpdate {
            restrictions: Some(check_restrictions(restrictions)?),
        })
    }
}

impl NewKey {
    pub fn parse(body: &[u8], templates: &ScopeTemplates) -> Result<NewKey, ApiError> {
        let mut b: NewKeyBody = parse_body(body)?;
        if let Some(name) = b.template.take() {
            if b.scopes.is_some() || b.legacy {
                return Err(bad(
                    "give \"template\" or \"scopes\" (or \"legacy\"), not both",
                ));
            }
            b.scopes = Some(Some(template_scopes(templates, &name)?));
        }
        let workspace = match (b.workspace, b.internal) {
            (Some(_), true) => {
                return Err(bad(
                    "give either \"workspace\" or \"internal\": true, not both",
                ));
            }
            (None, false) => {
                return Err(bad(
                    "\"workspace\" is required (or \"internal\": true for a platform key)",
                ));
            }
            (Some(w), false) => {
                check_id("workspace id", &w)?;
                Some(w)
            }
            (None, true) => None,
        };
        if workspace.is_none() && b.environment.is_none() {
            return Err(bad(
                "an internal key needs \"environment\": \"live\" or \"test\"",
            ));
        }
        let scopes = match (b.scopes, b.legacy) {
            (Some(_), true) => {
                return Err(bad(
                    "a legacy key has no scopes: drop \"scopes\" or \"legacy\"",
                ));
            }
            (Some(None), false) => {
                return Err(bad(
                    "\"scopes\" must be a list; leave it out (or use []) for a key with no scopes",
                ));
            }
            (Some(Some(list)), false) => Some(list),
            (None, false) => Some(Vec::new()),
            (None, true) => None,
        };
        if let Some(list) = &scopes {
            if list.len() > MAX_SCOPES {
                return Err(bad(format!("at most {MAX_SCOPES} scopes per key")));
            }
            for s in list {
                ScopePattern::parse(s).map_err(|e| bad(e.to_string()))?;
            }
        }
        check_name(&b.name)?;
        let expires_at = future_expiry(b.expires_at)?;
        Ok(NewKey {
            name: b.name,
            workspace,
            environment: b.environment,
            scopes,
            expires_at,
            restrictions: check_restrictions(b.restrictions)?,
        })
    }
}

/// The scopes of the template `name`, or a 400 listing the known ones.
pub(crate) fn template_scopes(
    templates: &ScopeTemplates,
    name: &str,
) -> Result<Vec<String>, ApiError> {
    templates.get(name).map(<[String]>::to_vec).ok_or_else(|| {
        bad(format!(
            "no scope template {name:?}; known: {}",
            templates.names()
        ))
    })
}

/// An optional `expires_at`, which must be an RFC 3339 time in the future.
pub(crate) fn future_expiry(expires_at: Option<String>) -> Result<Option<i64>, ApiError> {
    let Some(s) = expires_at else { return Ok(None) };
    let t = parse_time("expires_at", &s)?;
    if t <= now() {
        return Err(bad(format!("expires_at {s} is not in the future")));
    }
    Ok(Some(t))
}

/// `active`, `revoked`, or `expired` (active but past `expires_at`), as listings show it.
pub(crate) fn status_word(revoked: bool, expires_at: Option<i64>, now: i64) -> &'static str {
    if revoked {
        "revoked"
    } else if expires_at.is_some_and(|e| e <= now) {
        "expired"
    } else {
        "active"
    }
}

pub(crate) fn check_name(name: &str) -> Result<(), ApiError> {
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(bad(format!("name: at most {MAX_NAME_CHARS} characters")));
    }
    if name.chars().any(char::is_control) {
        return Err(bad("name: control characters are not allowed"));
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    #[serde(default)]
    expires_in_seconds: Option<u64>,
    #[serde(default)]
    old_expires_at: Option<String>,
}

/// When the old key of a rotation stops working.
pub enum OldExpiry {
    /// Seconds from now; 0 is at once.
    In(u64),
    /// Unix seconds.
    At(i64),
}

impl OldExpiry {
    pub fn parse(body: &[u8]) -> Result<OldExpiry, ApiError> {
        let b: RotateBody = parse_body(body)?;
        match (b.expires_in_seconds, b.old_expires_at) {
            (Some(s), None) if s <= MAX_GRACE_SECONDS => Ok(OldExpiry::In(s)),
            (Some(_), None) => Err(bad(format!(
                "expires_in_seconds: at most {MAX_GRACE_SECONDS}"
            ))),
            (None, Some(at)) => Ok(OldExpiry::At(parse_time("old_expires_at", &at)?)),
            _ => Err(bad(
                "give exactly one of \"expires_in_seconds\" (0 = at once) or \"old_expires_at\"",
            )),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageBody {
    usage: Vec<UsageEntryBody>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageEntryBody {
    key_id: String,
    #[serde(default)]
    requests: u64,
    #[serde(default)]
    last_used: Option<String>,
}

pub struct UsageEntry {
    pub key_id: String,
    pub requests: u64,
    pub last_used: Option<i64>,
}

impl UsageEntry {
    pub fn parse_report(body: &[u8]) -> Result<Vec<UsageEntry>, ApiError> {
        let b: UsageBody = parse_body(body)?;
        b.usage
            .into_iter()
            .map(|e| {
                check_id("key_id", &e.key_id)?;
                // SQLite integers are signed; a larger count is a bug in the reporter.
                if e.requests > (1 << 53) {
                    return Err(bad(format!("requests of {} is out of range", e.key_id)));
                }
                let last_used = e
                    .last_used
                    .map(|s| parse_time("last_used", &s))
                    .transpose()?;
                Ok(UsageEntry {
                    key_id: e.key_id,
                    requests: e.requests,
                    last_used,
                })
            })
            .collect()
    }
}

// --- stored rows ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct WorkspaceRow {
    pub id: String,
    pub kind: WorkspaceKind,
    pub limits: Limits,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone)]
pub struct KeyRow {
    pub id: String,
    pub name: String,
    /// Hex SHA-256 of the secret.
    pub hash: String,
    pub prefix: String,
    /// `None`: an internal key.
    pub workspace: Option<String>,
    pub environment: Environment,
    /// `None`: a legacy key.
    pub scopes: Option<Vec<String>>,
    pub revoked: bool,
    pub expires_at: Option<i64>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    pub rotated_to: Option<String>,
    pub last_used: Option<i64>,
    pub requests: u64,
    /// `None`: unrestricted.
    pub restrictions: Option<RestrictionsDoc>,
}

// --- the snapshot schema (keygate_protocol::wire, docs/snapshot.md) ---------------------------

/// A key entry as served, borrowing from its row.
pub type SnapKey<'a> = KeyDoc<Cow<'a, str>>;

pub fn snap_workspace(w: &WorkspaceRow) -> WorkspaceDoc {
    WorkspaceDoc {
        id: w.id.clone(),
        kind: w.kind,
        limits: (!w.limits.is_empty()).then_some(w.limits),
    }
}

pub fn snap_key(k: &KeyRow) -> SnapKey<'_> {
    KeyDoc {
        id: Cow::Borrowed(&k.id),
        name: Cow::Borrowed(&k.name),
        hash: Cow::Borrowed(&k.hash),
        workspace: k.workspace.as_deref().map(Cow::Borrowed),
        internal: k.workspace.is_none(),
        // Absent for a legacy key.
        scopes: k
            .scopes
            .as_ref()
            .map(|s| Some(s.iter().map(|s| Cow::Borrowed(s.as_str())).collect())),
        status: if k.revoked {
            KeyStatus::Revoked
        } else {
            KeyStatus::Active
        },
        expires_at: k.expires_at.map(|t| Cow::Owned(format_time(t))),
        restrictions: k.restrictions.clone(),
    }
}

// --- the key-management API's shapes -------------------------------------------------------

pub fn workspace_json(w: &WorkspaceRow) -> Value {
    json!({
        "id": w.id,
        "type": w.kind,
        "limits": (!w.limits.is_empty()).then_some(w.limits),
        "created_at": format_time(w.created_at),
        "updated_at": format_time(w.updated_at),
    })
}

/// A key as listed: never its secret, nor its hash.
pub fn key_json(k: &KeyRow, now: i64) -> Value {
    let status = status_word(k.revoked, k.expires_at, now);
    json!({
        "id": k.id,
        "name": k.name,
        "prefix": k.prefix,
        "workspace": k.workspace,
        "internal": k.workspace.is_none(),
        "environment": k.environment,
        "scopes": k.scopes,
        "legacy": k.scopes.is_none(),
        "status": status,
        "created_at": format_time(k.created_at),
        "expires_at": k.expires_at.map(format_time),
        "revoked_at": k.revoked_at.map(format_time),
        "rotated_to": k.rotated_to,
        "last_used": k.last_used.map(format_time),
        "requests": k.requests,
        "restrictions": k.restrictions,
    })
}

/// A key just made: as listed, plus its secret (shown this once).
pub fn created_key_json(k: &KeyRow, secret: &str) -> Value {
    let mut v = key_json(k, now());
    v["secret"] = Value::String(secret.to_owned());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_snapshot_alphabet() {
        assert!(valid_id("ws_acme-1.a:b"));
        assert!(!valid_id(""));
        assert!(!valid_id("ws acme"));
        assert!(!valid_id("ws/acme"));
        assert!(!valid_id(&"a".repeat(129)));
    }

    #[test]
    fn new_key_scopes_default_to_none_and_legacy_is_explicit() {
        let k = NewKey::parse(br#"{"workspace":"ws"}"#, &ScopeTemplates::default()).unwrap();
        assert_eq!(k.scopes, Some(vec![]));
        let k = NewKey::parse(
            br#"{"workspace":"ws","legacy":true}"#,
            &ScopeTemplates::default(),
        )
        .unwrap();
        assert_eq!(k.scopes, None);
        for bad in [
            r#"{"workspace":"ws","scopes":null}"#,
            r#"{"workspace":"ws","scopes":[],"legacy":true}"#,
            r#"{"workspace":"ws","scopes":["a::b"]}"#,
            r#"{"workspace":"ws","scope":["a:b"]}"#,
            r#"{"workspace":"ws","internal":true,"environment":"live"}"#,
            r#"{"internal":true}"#,
            r#"{"name":"x"}"#,
            r#"{"workspace":"ws","expires_at":"tomorrow"}"#,
            r#"{"workspace":"ws","expires_at":"2001-01-01T00:00:00Z"}"#,
            r#"{"workspace":"ws","environment":"prod"}"#,
        ] {
            assert!(
                NewKey::parse(bad.as_bytes(), &ScopeTemplates::default()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn times_round_trip_and_drop_fractions() {
        let t = parse_time("t", "2027-01-31T00:00:00.9Z").unwrap();
        assert_eq!(format_time(t), "2027-01-31T00:00:00Z");
        let t = parse_time("t", "2027-01-31T02:00:00+02:00").unwrap();
        assert_eq!(format_time(t), "2027-01-31T00:00:00Z");
    }

    #[test]
    fn rotation_needs_exactly_one_expiry() {
        assert!(matches!(
            OldExpiry::parse(br#"{"expires_in_seconds":0}"#),
            Ok(OldExpiry::In(0))
        ));
        assert!(OldExpiry::parse(br#"{}"#).is_err());
        assert!(
            OldExpiry::parse(
                br#"{"expires_in_seconds":1,"old_expires_at":"2030-01-01T00:00:00Z"}"#
            )
            .is_err()
        );
    }
}

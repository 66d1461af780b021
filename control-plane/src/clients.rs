//! OAuth clients and the keys their access tokens are signed with: request bodies, stored rows,
//! the JSON written out, and the store's operations on them.
//!
//! A client belongs to a workspace and holds the scopes its tokens may carry. Its secret is
//! shown once and stored as a SHA-256 hash (it is 190 random bits: a slow hash adds nothing).
//! What keygate needs of a client (its workspace and status) and the public signing keys go into
//! the snapshot; its secret, scopes and the private seeds never do.

use crate::api::{
    ApiError, check_id, check_name, format_time, future_expiry, now, parse_body, status_word,
    template_scopes,
};
use crate::store::{Kind, Store, Written, get_workspace, read_meta};
use crate::templates::ScopeTemplates;
use keygate_protocol::scopes::{KeyScopes, ScopePattern};
use keygate_protocol::secret::{self, KeyHash};
use keygate_protocol::tokens::TokenSigner;
use keygate_protocol::wire::{ClientDoc, KeyStatus, SigningAlgorithm, SigningKeyDoc};
use rand::distr::{Alphanumeric, SampleString};
use rusqlite::{OptionalExtension, Row, Transaction};
use serde::Deserialize;
use serde_json::{Value, json};

/// Most scopes one client may hold.
const MAX_SCOPES: usize = 100;
/// Random characters of a client secret after `cs_` (62^40: 238 bits).
const SECRET_RANDOM_LEN: usize = 40;
/// Characters of a secret shown to people to tell clients apart.
const SECRET_PREFIX_LEN: usize = 7;

const CLIENT_COLUMNS: &str = "id, name, workspace, secret_hash, secret_prefix, scopes, status, \
     expires_at, created_at, revoked_at, secret_rotated_at";

#[derive(Debug, Clone)]
pub struct ClientRow {
    pub id: String,
    pub name: String,
    pub workspace: String,
    /// Hex SHA-256 of the secret.
    pub secret_hash: String,
    pub secret_prefix: String,
    pub scopes: Vec<String>,
    pub revoked: bool,
    pub expires_at: Option<i64>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    pub secret_rotated_at: Option<i64>,
}

impl ClientRow {
    /// Whether it may get tokens at `now`.
    pub fn usable(&self, now: i64) -> bool {
        !self.revoked && self.expires_at.is_none_or(|t| now < t)
    }

    /// Whether `secret` is this client's (compared as hashes, in constant time).
    pub fn secret_matches(&self, secret: &str) -> bool {
        let given = KeyHash::of(secret).to_hex();
        crate::service::constant_time_eq(given.as_bytes(), self.secret_hash.as_bytes())
    }
}

#[derive(Debug, Clone)]
pub struct SigningKeyRow {
    pub kid: String,
    /// Base64 of the private seed: never written out.
    pub seed: String,
    pub public_key: String,
    /// `current`, `previous` or `retired`.
    pub state: String,
    pub created_at: i64,
    pub retired_at: Option<i64>,
}

impl SigningKeyRow {
    pub fn signer(&self) -> Result<TokenSigner, ApiError> {
        TokenSigner::new(&self.kid, &self.seed)
            .map_err(|e| ApiError::Internal(format!("signing key {}: {e}", self.kid)))
    }
}

/// A client just made or given a new secret: its row and the secret, shown once.
pub struct ClientWithSecret {
    pub row: ClientRow,
    pub secret: String,
}

// --- request bodies ------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewClientBody {
    workspace: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    scopes: Option<Vec<String>>,
    #[serde(default)]
    template: Option<String>,
    #[serde(default)]
    expires_at: Option<String>,
}

pub struct NewClient {
    pub workspace: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub expires_at: Option<i64>,
}

impl NewClient {
    pub fn parse(body: &[u8], templates: &ScopeTemplates) -> Result<NewClient, ApiError> {
        let b: NewClientBody = parse_body(body)?;
        check_id("workspace id", &b.workspace)?;
        let scopes = match (b.scopes, b.template) {
            (Some(_), Some(_)) => return Err(bad("give \"template\" or \"scopes\", not both")),
            (Some(list), None) => list,
            (None, Some(name)) => template_scopes(templates, &name)?,
            (None, None) => {
                return Err(bad(
                    "give \"scopes\" (the most its tokens may hold) or a \"template\"",
                ));
            }
        };
        if scopes.len() > MAX_SCOPES {
            return Err(bad(format!("at most {MAX_SCOPES} scopes per client")));
        }
        for s in &scopes {
            ScopePattern::parse(s).map_err(|e| bad(e.to_string()))?;
        }
        check_name(&b.name)?;
        let expires_at = future_expiry(b.expires_at)?;
        Ok(NewClient {
            workspace: b.workspace,
            name: b.name,
            scopes,
            expires_at,
        })
    }
}

/// The scopes a token asks for (`scope` in the token request, space-separated), checked
/// against what the client holds: each must be one of the client's scopes as written, or a
/// scope without wildcards that one of them grants (`products:read` under `products:*`): the
/// rule of [`KeyScopes::may_hold`]. `None` (no `scope` parameter): all of the client's.
pub fn narrow(held: &[String], requested: Option<&str>) -> Result<Vec<String>, String> {
    let Some(requested) = requested else {
        return Ok(held.to_vec());
    };
    let mut out: Vec<String> = Vec::new();
    // Stored scopes were checked when the client was made; should one not parse, nothing is
    // granted rather than something the rule was not written for.
    let held = KeyScopes::parse_list(held)
        .map_err(|e| format!("the client's own scopes are invalid ({e}); recreate it"))?;
    for s in requested.split(' ').filter(|s| !s.is_empty()) {
        if !held.may_hold(s) {
            return Err(format!("the client may not hold the scope {s:?}"));
        }
        if !out.iter().any(|o| o == s) {
            out.push(s.to_owned());
        }
    }
    if out.is_empty() {
        return Err("scope is empty; leave it out for all of the client's scopes".into());
    }
    Ok(out)
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::BadRequest(msg.into())
}

// --- JSON out --------------------------------------------------------------------------------

/// A client as listed: never its secret, nor its hash.
pub fn client_json(c: &ClientRow, now: i64) -> Value {
    let status = status_word(c.revoked, c.expires_at, now);
    json!({
        "id": c.id,
        "name": c.name,
        "workspace": c.workspace,
        "secret_prefix": c.secret_prefix,
        "scopes": c.scopes,
        "status": status,
        "created_at": format_time(c.created_at),
        "expires_at": c.expires_at.map(format_time),
        "revoked_at": c.revoked_at.map(format_time),
        "secret_rotated_at": c.secret_rotated_at.map(format_time),
    })
}

/// A client with its secret, shown this once.
pub fn client_with_secret_json(c: &ClientWithSecret) -> Value {
    let mut v = client_json(&c.row, now());
    v["secret"] = Value::String(c.secret.clone());
    v
}

/// A signing key as listed: never its seed.
pub fn signing_key_json(k: &SigningKeyRow) -> Value {
    json!({
        "kid": k.kid,
        "alg": "EdDSA",
        "public_key": k.public_key,
        "state": k.state,
        "created_at": format_time(k.created_at),
        "retired_at": k.retired_at.map(format_time),
    })
}

pub fn snap_client(c: &ClientRow) -> ClientDoc {
    ClientDoc {
        id: c.id.clone(),
        workspace: c.workspace.clone(),
        status: if c.revoked {
            KeyStatus::Revoked
        } else {
            KeyStatus::Active
        },
        expires_at: c.expires_at.map(format_time),
    }
}

pub fn snap_signing_key(k: &SigningKeyRow) -> SigningKeyDoc {
    SigningKeyDoc {
        kid: k.kid.clone(),
        alg: SigningAlgorithm::EdDSA,
        public_key: k.public_key.clone(),
    }
}

// --- the store's operations ---------------------------------------------------------------

fn no_client(id: &str) -> ApiError {
    ApiError::NotFound(format!("no OAuth client {id}"))
}

fn new_secret() -> String {
    let mut s = String::from("cs_");
    Alphanumeric.append_string(&mut rand::rng(), &mut s, SECRET_RANDOM_LEN);
    s
}

impl Store {
    pub fn clients(&self, workspace: Option<&str>) -> Result<Vec<ClientRow>, ApiError> {
        self.read(|tx| match workspace {
            Some(w) => query_clients(tx, "WHERE workspace = ?1 ORDER BY created_at, id", [w]),
            None => query_clients(tx, "ORDER BY created_at, id", []),
        })
    }

    pub fn client(&self, id: &str) -> Result<ClientRow, ApiError> {
        self.read(|tx| get_client(tx, id)?.ok_or_else(|| no_client(id)))
    }

    pub fn create_client(&self, new: NewClient) -> Result<Written<ClientWithSecret>, ApiError> {
        let w = self.write(|tx| {
            if get_workspace(tx, &new.workspace)?.is_none() {
                return Err(bad(format!("workspace {} does not exist", new.workspace)));
            }
            let id = secret::generate_id("oc_");
            let secret = new_secret();
            let scopes = serde_json::to_string(&new.scopes)
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            tx.execute(
                &format!(
                    "INSERT INTO oauth_clients ({CLIENT_COLUMNS})
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'active', ?7, ?8, NULL, NULL)"
                ),
                rusqlite::params![
                    id,
                    new.name,
                    new.workspace,
                    KeyHash::of(&secret).to_hex(),
                    &secret[..SECRET_PREFIX_LEN],
                    scopes,
                    new.expires_at,
                    now()
                ],
            )?;
            let row = get_client(tx, &id)?.ok_or_else(|| no_client(&id))?;
            self.changed(tx, &[(Kind::Client, &id)], ClientWithSecret { row, secret })
        })?;
        Ok(self.committed(w))
    }

    /// Revokes a client: it stays in the snapshot as revoked, so keygate refuses its tokens.
    /// Revoking a revoked client changes nothing.
    pub fn revoke_client(&self, id: &str) -> Result<Written<ClientRow>, ApiError> {
        let w = self.write(|tx| {
            let old = get_client(tx, id)?.ok_or_else(|| no_client(id))?;
            if old.revoked {
                return self.unchanged(tx, old);
            }
            tx.execute(
                "UPDATE oauth_clients SET status = 'revoked', revoked_at = ?2 WHERE id = ?1",
                rusqlite::params![id, now()],
            )?;
            let row = get_client(tx, id)?.ok_or_else(|| no_client(id))?;
            self.changed(tx, &[(Kind::Client, id)], row)
        })?;
        Ok(self.committed(w))
    }

    /// Deletes a client outright: it leaves the snapshot, and its tokens are then unknown.
    pub fn purge_client(&self, id: &str) -> Result<Written<()>, ApiError> {
        let w = self.write(|tx| {
            get_client(tx, id)?.ok_or_else(|| no_client(id))?;
            tx.execute("DELETE FROM oauth_clients WHERE id = ?1", [id])?;
            self.changed(tx, &[(Kind::Client, id)], ())
        })?;
        Ok(self.committed(w))
    }

    /// A new secret; the old one stops working at once. Tokens already minted keep working
    /// until they expire (revoke the client to end them). The snapshot does not change.
    pub fn rotate_client_secret(&self, id: &str) -> Result<ClientWithSecret, ApiError> {
        self.write(|tx| {
            let old = get_client(tx, id)?.ok_or_else(|| no_client(id))?;
            if !old.usable(now()) {
                return Err(ApiError::Conflict(format!(
                    "OAuth client {id} is revoked or expired"
                )));
            }
            let secret = new_secret();
            tx.execute(
                "UPDATE oauth_clients SET secret_hash = ?2, secret_prefix = ?3,
                        secret_rotated_at = ?4 WHERE id = ?1",
                rusqlite::params![
                    id,
                    KeyHash::of(&secret).to_hex(),
                    &secret[..SECRET_PREFIX_LEN],
                    now()
                ],
            )?;
            let row = get_client(tx, id)?.ok_or_else(|| no_client(id))?;
            Ok(ClientWithSecret { row, secret })
        })
    }

    pub fn signing_keys(&self) -> Result<Vec<SigningKeyRow>, ApiError> {
        self.read(|tx| query_signing_keys(tx, "ORDER BY created_at, kid"))
    }

    /// The key tokens are signed with now.
    pub fn current_signing_key(&self) -> Result<SigningKeyRow, ApiError> {
        self.read(|tx| {
            query_signing_keys(tx, "WHERE state = 'current'")?
                .pop()
                .ok_or_else(|| ApiError::Internal("no current signing key".into()))
        })
    }

    /// Makes a first signing key when there is none (at start): in the version 0 of a database
    /// this process created, in any other as a change of its own. (A database upgraded from an
    /// older schema may still be at version 0, and a keygate may hold that version without
    /// keys: only a new version, whose delta carries the keys, reaches it.)
    pub fn ensure_signing_key(&self) -> Result<(), ApiError> {
        let w = self.write(|tx| {
            if !query_signing_keys(tx, "WHERE state = 'current'")?.is_empty() {
                return self.unchanged(tx, ());
            }
            insert_signing_key(tx)?;
            if read_meta(tx, "version")? == 0 && self.created {
                // A new database: its first state holds the key. No keygate can hold a version
                // 0 without it, so the version need not move.
                return self.unchanged(tx, ());
            }
            self.changed(tx, &[(Kind::SigningKeys, "*")], ())
        })?;
        self.committed(w);
        Ok(())
    }

    /// A new current key; the current one becomes previous and stays published, so the
    /// tokens it signed keep verifying until it is retired.
    pub fn rotate_signing_key(&self) -> Result<Written<SigningKeyRow>, ApiError> {
        let w = self.write(|tx| {
            tx.execute(
                "UPDATE signing_keys SET state = 'previous' WHERE state = 'current'",
                [],
            )?;
            let row = insert_signing_key(tx)?;
            self.changed(tx, &[(Kind::SigningKeys, "*")], row)
        })?;
        Ok(self.committed(w))
    }

    /// Stops publishing a previous key: the tokens it signed stop working. The current key
    /// cannot be retired (rotate first); retiring a retired key changes nothing.
    pub fn retire_signing_key(&self, kid: &str) -> Result<Written<SigningKeyRow>, ApiError> {
        let w = self.write(|tx| {
            let key = get_signing_key(tx, kid)?
                .ok_or_else(|| ApiError::NotFound(format!("no signing key {kid}")))?;
            match key.state.as_str() {
                "current" => Err(ApiError::Conflict(format!(
                    "signing key {kid} is the current one; rotate (POST /v1/signing-keys/rotate) \
                     before retiring it"
                ))),
                "retired" => self.unchanged(tx, key),
                _ => {
                    tx.execute(
                        "UPDATE signing_keys SET state = 'retired', retired_at = ?2 WHERE kid = ?1",
                        rusqlite::params![kid, now()],
                    )?;
                    let key = get_signing_key(tx, kid)?
                        .ok_or_else(|| ApiError::NotFound(format!("no signing key {kid}")))?;
                    self.changed(tx, &[(Kind::SigningKeys, "*")], key)
                }
            }
        })?;
        Ok(self.committed(w))
    }
}

fn insert_signing_key(tx: &Transaction) -> Result<SigningKeyRow, ApiError> {
    let kid = secret::generate_id("kid_");
    let seed = TokenSigner::generate_seed();
    let public_key = TokenSigner::new(&kid, &seed)
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .public_key()
        .to_owned();
    tx.execute(
        "INSERT INTO signing_keys (kid, seed, public_key, state, created_at)
         VALUES (?1, ?2, ?3, 'current', ?4)",
        rusqlite::params![kid, seed, public_key, now()],
    )?;
    get_signing_key(tx, &kid)?.ok_or_else(|| ApiError::Internal("signing key vanished".into()))
}

fn client_row(r: &Row) -> rusqlite::Result<ClientRow> {
    let scopes: String = r.get(5)?;
    let scopes = serde_json::from_str::<Vec<String>>(&scopes).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(5, rusqlite::types::Type::Text, e.into())
    })?;
    let status: String = r.get(6)?;
    Ok(ClientRow {
        id: r.get(0)?,
        name: r.get(1)?,
        workspace: r.get(2)?,
        secret_hash: r.get(3)?,
        secret_prefix: r.get(4)?,
        scopes,
        revoked: status == "revoked",
        expires_at: r.get(7)?,
        created_at: r.get(8)?,
        revoked_at: r.get(9)?,
        secret_rotated_at: r.get(10)?,
    })
}

pub(crate) fn query_clients<P: rusqlite::Params>(
    tx: &Transaction,
    tail: &str,
    params: P,
) -> Result<Vec<ClientRow>, ApiError> {
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT {CLIENT_COLUMNS} FROM oauth_clients {tail}"
    ))?;
    let rows = stmt.query_map(params, client_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub(crate) fn get_client(tx: &Transaction, id: &str) -> Result<Option<ClientRow>, ApiError> {
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT {CLIENT_COLUMNS} FROM oauth_clients WHERE id = ?1"
    ))?;
    Ok(stmt.query_row([id], client_row).optional()?)
}

fn signing_key_row(r: &Row) -> rusqlite::Result<SigningKeyRow> {
    Ok(SigningKeyRow {
        kid: r.get(0)?,
        seed: r.get(1)?,
        public_key: r.get(2)?,
        state: r.get(3)?,
        created_at: r.get(4)?,
        retired_at: r.get(5)?,
    })
}

fn query_signing_keys(tx: &Transaction, tail: &str) -> Result<Vec<SigningKeyRow>, ApiError> {
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT kid, seed, public_key, state, created_at, retired_at FROM signing_keys {tail}"
    ))?;
    let rows = stmt.query_map([], signing_key_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

fn get_signing_key(tx: &Transaction, kid: &str) -> Result<Option<SigningKeyRow>, ApiError> {
    let mut stmt = tx.prepare_cached(
        "SELECT kid, seed, public_key, state, created_at, retired_at FROM signing_keys
         WHERE kid = ?1",
    )?;
    Ok(stmt.query_row([kid], signing_key_row).optional()?)
}

/// The keys the snapshot publishes: current and previous, by `kid`.
pub(crate) fn published_signing_keys(tx: &Transaction) -> Result<Vec<SigningKeyRow>, ApiError> {
    query_signing_keys(tx, "WHERE state != 'retired' ORDER BY kid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_may_narrow_to_scopes_the_client_holds_or_grants() {
        let held = vec!["products:*".to_owned(), "orders:read".to_owned()];
        assert_eq!(narrow(&held, None).unwrap(), held);
        assert_eq!(
            narrow(&held, Some("orders:read products:write")).unwrap(),
            ["orders:read", "products:write"]
        );
        assert_eq!(narrow(&held, Some("products:*")).unwrap(), ["products:*"]);
        for refused in ["orders:write", "*", "orders:*", "", "  ", "products::read"] {
            assert!(narrow(&held, Some(refused)).is_err(), "{refused:?}");
        }
    }

    #[test]
    fn new_clients_need_scopes_or_a_template_and_valid_fields() {
        let t = ScopeTemplates::default();
        let c = NewClient::parse(br#"{"workspace":"ws","template":"read-only"}"#, &t).unwrap();
        assert_eq!(c.scopes, ["*:read"]);
        let c = NewClient::parse(br#"{"workspace":"ws","scopes":[]}"#, &t).unwrap();
        assert!(c.scopes.is_empty());
        for bad in [
            r#"{"workspace":"ws"}"#,
            r#"{"workspace":"ws","scopes":["a"],"template":"read-only"}"#,
            r#"{"workspace":"ws","template":"nope"}"#,
            r#"{"workspace":"ws","scopes":["a::b"]}"#,
            r#"{"workspace":"w s","scopes":[]}"#,
            r#"{"workspace":"ws","scopes":[],"expires_at":"2001-01-01T00:00:00Z"}"#,
            r#"{"workspace":"ws","scopes":[],"secret":"x"}"#,
        ] {
            assert!(NewClient::parse(bad.as_bytes(), &t).is_err(), "{bad}");
        }
    }
}

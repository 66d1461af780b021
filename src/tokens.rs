//! Access tokens and browser client tokens, verified offline: from a JWT to the entry it acts as.
//!
//! Trust comes from the snapshot only: the public key under the token's `kid`, with the
//! algorithm the snapshot names for it (never the token's), and whoever the token was minted
//! for. An OAuth access token (`typ: at+jwt`) names its OAuth client, which must still be
//! active. A browser client token (`typ: client+jwt`) names the API key it was minted with,
//! which must still be active and its workspace's, and may do no more than that key may now
//! (see [`client_token_entry`]). The claims `exp`, `nbf`, `iss`, `aud`, `sub` are required,
//! `exp` and `nbf` as numbers (see [`AccessClaims`]).
//!
//! A verified token is remembered in a bounded cache keyed by its SHA-256, until it expires, so
//! a repeated token costs a hash and four lookups instead of a signature check. Only tokens that
//! verified enter the cache: a flood of forged ones cannot evict anything, and each costs at
//! most one signature check (most, less: a wrong `kid`, header or shape is refused before it).
//! What could change after a token was verified is checked again whenever the snapshot in hand
//! is a new one: the signing key still published under the `kid`, the client's status or the
//! minting key, the workspace. Revoking a client or a key, retiring a signing key or removing a
//! workspace therefore stops its tokens as soon as the snapshot that says so is swapped in.

use crate::auth::AuthFailure;
use crate::scopes::{KeyScopes, ScopeSet};
use crate::secret::KeyHash;
use crate::snapshot::trust::Client;
use crate::snapshot::{KeyEntry, Owner, SigningAlgorithm, Snapshot, TokenKind};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use keygate_protocol::tokens::{ACCESS_TOKEN_TYPE, AccessClaims, CLIENT_TOKEN_TYPE};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

/// Clock skew allowed on `exp` and `nbf` unless configured.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// The most skew that may be configured: more would keep expired tokens working.
pub const MAX_LEEWAY: Duration = Duration::from_secs(60);
/// Verified tokens remembered unless configured.
pub const DEFAULT_CACHE_ENTRIES: usize = 100_000;

/// `tokens` in the config, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenConfig {
    pub issuer: String,
    pub audience: String,
    pub leeway: Duration,
    pub cache_entries: usize,
}

/// Verifies access tokens against a snapshot, and remembers the ones that verified.
pub struct TokenVerifier {
    /// For `EdDSA` keys, the only kind a snapshot can hold.
    ed25519: Validation,
    leeway: i64,
    cache: VerifiedCache,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("leeway", &self.leeway)
            .finish_non_exhaustive()
    }
}

impl TokenVerifier {
    pub fn new(config: &TokenConfig) -> TokenVerifier {
        keygate_protocol::tokens::install_provider();
        let mut ed25519 = Validation::new(Algorithm::EdDSA);
        ed25519.set_issuer(&[&config.issuer]);
        ed25519.set_audience(&[&config.audience]);
        ed25519.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        ed25519.validate_nbf = true;
        ed25519.leeway = config.leeway.as_secs();
        TokenVerifier {
            ed25519,
            leeway: i64::try_from(config.leeway.as_secs()).unwrap_or(0),
            cache: VerifiedCache::new(config.cache_entries),
        }
    }

    /// The entry `token` acts as, or why it is refused.
    pub fn authenticate(
        &self,
        snapshot: &Snapshot,
        token: &str,
        now_unix: i64,
    ) -> Result<Arc<KeyEntry>, AuthFailure> {
        let hash = KeyHash::of(token);
        let cached = self.cache.get(&hash);
        let verified = match cached {
            Some(v) => v,
            None => {
                let v = Arc::new(self.verify(snapshot, token, hash, now_unix)?);
                self.cache.insert(hash, v.clone(), now_unix);
                v
            }
        };
        match still_good(snapshot, &verified, now_unix) {
            Ok(Standing::Good) => Ok(verified.entry.clone()),
            // Its workspace or minting key is another version now: the same token, remade.
            Ok(Standing::Renewed(entry, issuer)) => {
                let fresh = Verified {
                    entry: entry.clone(),
                    kid: verified.kid.clone(),
                    public_key: verified.public_key.clone(),
                    issuer,
                    checked: AtomicU64::new(snapshot.generation()),
                };
                self.cache.insert(hash, Arc::new(fresh), now_unix);
                Ok(entry)
            }
            Err(f) => {
                self.cache.remove(&hash);
                Err(f)
            }
        }
    }

    /// A first sight of a token: header, signature, claims, and who it was minted for.
    fn verify(
        &self,
        snapshot: &Snapshot,
        token: &str,
        hash: KeyHash,
        now_unix: i64,
    ) -> Result<Verified, AuthFailure> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthFailure::InvalidToken)?;
        // Key material named by the token itself is never used, and a token that offers some
        // is not one this control plane minted.
        if header.jwk.is_some()
            || header.jku.is_some()
            || header.x5u.is_some()
            || header.x5c.is_some()
        {
            return Err(AuthFailure::InvalidToken);
        }
        // The type is signed: an access token cannot pass as a client token, nor the reverse.
        let client_token = match header.typ.as_deref() {
            Some(t) if t.eq_ignore_ascii_case(ACCESS_TOKEN_TYPE) => false,
            Some(t) if t.eq_ignore_ascii_case(CLIENT_TOKEN_TYPE) => true,
            _ => return Err(AuthFailure::InvalidToken),
        };
        let kid = header.kid.ok_or(AuthFailure::InvalidToken)?;
        let key = snapshot
            .signing_key(&kid)
            .ok_or(AuthFailure::UnknownSigningKey)?;
        let validation = match key.alg {
            SigningAlgorithm::EdDSA => &self.ed25519,
        };
        let claims = jsonwebtoken::decode::<AccessClaims>(token, &key.decoding, validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthFailure::Expired,
                _ => AuthFailure::InvalidToken,
            })?
            .claims;
        if claims.client_id != claims.sub {
            return Err(AuthFailure::InvalidToken);
        }
        let scopes: Vec<&str> = claims.scope.split(' ').filter(|s| !s.is_empty()).collect();
        let scopes = KeyScopes::parse_list(&scopes).map_err(|_| AuthFailure::InvalidToken)?;
        let scopes = Arc::new(ScopeSet::new(scopes));
        // Refused from `exp + leeway` on, as the library refuses it.
        let expires_at = claims.exp.saturating_add(self.leeway);
        let (entry, issuer) = if client_token {
            let minted_by = snapshot
                .key_by_id(&claims.client_id)
                .ok_or(AuthFailure::Unknown)?;
            let entry = client_token_entry(
                snapshot,
                hash,
                minted_by,
                &claims.workspace,
                scopes,
                expires_at,
                now_unix,
            )?;
            let issuer = Issuer::Key {
                key: minted_by.clone(),
                token_expires_at: expires_at,
            };
            (entry, issuer)
        } else {
            let client = snapshot
                .client(&claims.client_id)
                .ok_or(AuthFailure::Unknown)?;
            client_usable(client, now_unix)?;
            if client.workspace.as_ref() != claims.workspace {
                return Err(AuthFailure::InvalidToken);
            }
            let workspace = snapshot
                .workspace(&claims.workspace)
                .ok_or(AuthFailure::Unknown)?;
            let entry = KeyEntry::for_token(
                TokenKind::OAuth,
                hash,
                &claims.client_id,
                workspace.clone(),
                scopes,
                expires_at,
            );
            (entry, Issuer::Client)
        };
        Ok(Verified {
            entry,
            kid: kid.into(),
            public_key: key.public_key.clone(),
            issuer,
            checked: AtomicU64::new(snapshot.generation()),
        })
    }
}

/// Checks what may have changed since `v` was verified.
fn still_good(snapshot: &Snapshot, v: &Verified, now_unix: i64) -> Result<Standing, AuthFailure> {
    if v.entry.expires_at().is_some_and(|t| now_unix >= t) {
        return Err(AuthFailure::Expired);
    }
    // A snapshot never changes: checked against this one already, nothing else can fail.
    if v.checked.load(Ordering::Relaxed) == snapshot.generation() {
        return Ok(Standing::Good);
    }
    match snapshot.signing_key(&v.kid) {
        Some(k) if k.public_key == v.public_key => {}
        _ => return Err(AuthFailure::UnknownSigningKey),
    }
    let Owner::Workspace(held) = &v.entry.owner else {
        return Err(AuthFailure::Unknown);
    };
    match &v.issuer {
        Issuer::Client => {
            let client = snapshot.client(v.entry.id()).ok_or(AuthFailure::Unknown)?;
            client_usable(client, now_unix)?;
            match snapshot.workspace(&client.workspace) {
                Some(now) if Arc::ptr_eq(now, held) => {}
                Some(now) => {
                    let entry = v.entry.with_owner(Owner::Workspace(now.clone()));
                    return Ok(Standing::Renewed(Arc::new(entry), Issuer::Client));
                }
                None => return Err(AuthFailure::Unknown),
            }
        }
        Issuer::Key {
            key,
            token_expires_at,
        } => {
            let now = snapshot
                .key_by_id(v.entry.id())
                .ok_or(AuthFailure::Unknown)?;
            // Any change to the key (its scopes, restrictions, expiry, workspace) makes it a
            // new entry: the token is judged again against what the key is now.
            if !Arc::ptr_eq(now, key) {
                let entry = client_token_entry(
                    snapshot,
                    v.entry.hash,
                    now,
                    &held.id,
                    v.entry.scopes.clone(),
                    *token_expires_at,
                    now_unix,
                )?;
                let issuer = Issuer::Key {
                    key: now.clone(),
                    token_expires_at: *token_expires_at,
                };
                return Ok(Standing::Renewed(entry, issuer));
            }
        }
    }
    v.checked.store(snapshot.generation(), Ordering::Relaxed);
    Ok(Standing::Good)
}

/// The entry a client token acts as, minted by `key` for `workspace`: never more than the key
/// may do now. The key must be active and its workspace's own; every scope the token holds
/// must be one the key could hand on ([`KeyScopes::may_hold`]), so narrowing a key takes back
/// what its tokens held beyond it; the token lives no longer than the key; and it carries the
/// key's endpoint restrictions.
fn client_token_entry(
    snapshot: &Snapshot,
    hash: KeyHash,
    key: &Arc<KeyEntry>,
    workspace: &str,
    scopes: Arc<ScopeSet>,
    token_expires_at: i64,
    now_unix: i64,
) -> Result<Arc<KeyEntry>, AuthFailure> {
    if key.revoked() {
        return Err(AuthFailure::Revoked);
    }
    if key.expires_at().is_some_and(|t| now_unix >= t) {
        return Err(AuthFailure::Expired);
    }
    // An internal key has no workspace of its own, and a control plane mints for none.
    let Owner::Workspace(w) = &key.owner else {
        return Err(AuthFailure::InvalidToken);
    };
    if *w.id != *workspace {
        return Err(AuthFailure::InvalidToken);
    }
    let within_key = match scopes.scopes() {
        KeyScopes::Listed(held) => held.iter().all(|s| key.scopes.may_hold(s.as_str())),
        // A token's scope claim is always a list: never the legacy "everything".
        KeyScopes::Legacy => false,
    };
    if !within_key {
        return Err(AuthFailure::Revoked);
    }
    let expires_at = key
        .expires_at()
        .map_or(token_expires_at, |k| k.min(token_expires_at));
    let restrictions = snapshot
        .restrictions(key)
        .and_then(|r| r.for_client_tokens())
        .map(Arc::new);
    Ok(KeyEntry::for_token(
        TokenKind::Client(restrictions),
        hash,
        key.id(),
        w.clone(),
        scopes,
        expires_at,
    ))
}

/// A verified token in the snapshot in hand.
enum Standing {
    Good,
    /// Good, but remade for a new version of its workspace or minting key.
    Renewed(Arc<KeyEntry>, Issuer),
}

fn client_usable(client: &Client, now_unix: i64) -> Result<(), AuthFailure> {
    if client.revoked {
        return Err(AuthFailure::Revoked);
    }
    if !client.usable(now_unix) {
        return Err(AuthFailure::Expired);
    }
    Ok(())
}

/// Who a verified token was minted for.
enum Issuer {
    /// An OAuth client: the entry's id.
    Client,
    /// A browser client token's minting key, as it was when the token was last judged.
    Key {
        key: Arc<KeyEntry>,
        /// The token's own expiry (the entry's is also capped at the key's).
        token_expires_at: i64,
    },
}

/// A token that verified: the entry it acts as, and what to check again on each use.
struct Verified {
    entry: Arc<KeyEntry>,
    kid: Box<str>,
    public_key: Box<str>,
    issuer: Issuer,
    /// The [`Snapshot::generation`] it was last found good in.
    checked: AtomicU64,
}

/// One shard of the cache: verified tokens by their SHA-256.
type Shard = RwLock<HashMap<[u8; 32], Arc<Verified>, foldhash::fast::RandomState>>;

/// Verified tokens by their SHA-256, in shards so that threads rarely meet on one lock.
struct VerifiedCache {
    shards: Box<[Shard]>,
    per_shard: usize,
}

const SHARDS: usize = 16;

impl VerifiedCache {
    fn new(capacity: usize) -> VerifiedCache {
        VerifiedCache {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            per_shard: capacity.div_ceil(SHARDS),
        }
    }

    fn shard(&self, hash: &KeyHash) -> &Shard {
        &self.shards[usize::from(hash.0[0]) % SHARDS]
    }

    fn get(&self, hash: &KeyHash) -> Option<Arc<Verified>> {
        let shard = self
            .shard(hash)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        shard.get(&hash.0).cloned()
    }

    /// Remembers `v`; when the shard is full, expired tokens make room, and if none has
    /// expired the token is simply not remembered (it is verified again next time).
    fn insert(&self, hash: KeyHash, v: Arc<Verified>, now_unix: i64) {
        let mut shard = self
            .shard(&hash)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if shard.len() >= self.per_shard && !shard.contains_key(&hash.0) {
            shard.retain(|_, v| v.entry.expires_at().is_some_and(|t| now_unix < t));
            if shard.len() >= self.per_shard {
                return;
            }
        }
        shard.insert(hash.0, v);
    }

    fn remove(&self, hash: &KeyHash) {
        self.shard(hash)
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&hash.0);
    }
}

//! Why a snapshot entry was left out: the typed reasons the loader, the delta path and the
//! reports share. Each message says what is wrong and, where it helps, what to write instead;
//! none quotes a hash or a secret.

use crate::scopes::ScopeError;
use keygate_protocol::ids;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEntry {
    /// The entry does not match the schema (an unknown field, a wrong type), as serde says it.
    #[error("{0}")]
    Unreadable(String),
    #[error("id must be {}", ids::ID_RULE)]
    Id,
    #[error("duplicate id")]
    DuplicateId,
    #[error("duplicate hash")]
    DuplicateHash,
    #[error("name is longer than 256 characters")]
    NameTooLong,
    #[error("hash must be 64 lowercase hex digits (SHA-256 of the secret)")]
    Hash,
    #[error("an internal key names no workspace; remove `workspace` or `internal`")]
    InternalWithWorkspace,
    #[error("missing `workspace` (or `internal: true` for a platform key)")]
    NoOwner,
    #[error("workspace {0:?} is not in the snapshot")]
    UnknownWorkspace(String),
    #[error("workspace {0:?} was removed")]
    RemovedWorkspace(String),
    #[error("scopes is null; omit the field for a legacy key or give a list")]
    NullScopes,
    #[error(transparent)]
    Scope(#[from] ScopeError),
    #[error("expires_at {0:?} is not an RFC 3339 time such as 2027-01-31T00:00:00Z")]
    ExpiresAt(String),
    #[error(transparent)]
    Restriction(#[from] crate::restrictions::RestrictionError),
    #[error("{}", ids::LIMIT_RULE)]
    ZeroLimit,
    #[error("public_key must be an Ed25519 public key: 32 bytes in base64url, as a JWK's `x`")]
    PublicKey,
}

//! The snapshot's wire schema: what a keys file holds and a control plane serves (YAML or JSON).
//!
//! These types only describe the format; keygate's `snapshot::model` turns them into validated,
//! indexed values.
//! The schema is strict: an unknown field is an error, so a typo such as `scope:` can never
//! silently turn a key into a wide-open legacy key. See `docs/snapshot.md`.

use serde::{Deserialize, Deserializer, Serialize};

/// The top level of a snapshot document.
///
/// `workspaces` and `keys` are read entry by entry (see `load`), so one malformed entry is
/// skipped without rejecting the others; this struct is the shape written out.
///
/// `S` is the string type of the keys, as in [`KeyDoc`]: a control plane writes borrowed
/// strings (`Cow<str>`) from its own rows.
#[derive(Debug, Clone, Serialize)]
#[serde(bound(serialize = "S: Serialize + AsRef<str>"))]
pub struct SnapshotDoc<S = String> {
    pub version: u64,
    pub workspaces: Vec<WorkspaceDoc>,
    pub keys: Vec<KeyDoc<S>>,
    /// The public keys access tokens are signed with (see [`crate::tokens`]); absent: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signing_keys: Vec<SigningKeyDoc>,
    /// OAuth clients, so that revoking one stops its tokens; absent: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<ClientDoc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceDoc {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: WorkspaceKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsDoc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkspaceKind {
    Live,
    Sandbox,
}

impl WorkspaceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkspaceKind::Live => "live",
            WorkspaceKind::Sandbox => "sandbox",
        }
    }
}

/// Per-workspace overrides of the configured limits; an absent field keeps the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst_per_second: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sustained_per_minute: Option<u32>,
    /// Requests in flight at once, on each host; absent keeps the configured cap (or none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrent_requests: Option<u32>,
}

impl LimitsDoc {
    /// No override at all: the workspace runs on the configured defaults.
    pub fn is_empty(&self) -> bool {
        self.burst_per_second.is_none()
            && self.sustained_per_minute.is_none()
            && self.concurrent_requests.is_none()
    }

    /// Whether every override present allows a request (see [`crate::ids::valid_limit`]).
    pub fn is_valid(&self) -> bool {
        crate::ids::valid_limit(self.burst_per_second)
            && crate::ids::valid_limit(self.sustained_per_minute)
            && crate::ids::valid_limit(self.concurrent_requests)
    }
}

/// A key entry. The loader reads it with `S = &str`, borrowing from the document instead of
/// copying every string; `KeyDoc` (`S = String`) is the owned form written out and kept in a
/// [`DeltaDoc`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    bound(
        serialize = "S: Serialize + AsRef<str>",
        deserialize = "S: Deserialize<'de> + Default"
    )
)]
pub struct KeyDoc<S = String> {
    pub id: S,
    #[serde(default, skip_serializing_if = "is_empty")]
    pub name: S,
    /// Lowercase hex SHA-256 of the secret.
    pub hash: S,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<S>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub internal: bool,
    /// Absent: a legacy wide-open key. `null` is an error, not "absent": see [`present`].
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub scopes: Option<Option<Vec<S>>>,
    #[serde(default)]
    pub status: KeyStatus,
    /// RFC 3339 time after which the key stops working.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<S>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restrictions: Option<RestrictionsDoc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    #[default]
    Active,
    Revoked,
}

/// Where a key may be used: keygate enforces every list given (see "Restrictions" in
/// `docs/snapshot.md`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestrictionsDoc {
    /// IP addresses or CIDR blocks the key may be used from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    /// Referrer origins the key may be used from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub referrers: Vec<String>,
    /// Route names the key may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
}

/// A public key that access tokens may be signed with. keygate uses the algorithm named here,
/// never the one a token's header claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningKeyDoc {
    /// The `kid` of tokens signed with it.
    pub kid: String,
    pub alg: SigningAlgorithm,
    /// The key as a JWK's `x`: the 32 bytes of an Ed25519 public key, base64url without padding.
    pub public_key: String,
}

/// The algorithms a signing key may have. One today: adding one is a deliberate change here,
/// never something a token can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SigningAlgorithm {
    EdDSA,
}

/// An OAuth client (client-credentials grant), as keygate needs it: whose it is and whether its
/// tokens still work. Its secret and scopes stay in the control plane, which mints the tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientDoc {
    pub id: String,
    pub workspace: String,
    #[serde(default)]
    pub status: KeyStatus,
    /// RFC 3339 time from which the client's tokens stop working.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// A change from snapshot version `from` to `version`, as a control plane serves it for
/// `GET /v1/snapshot?since=<from>`. An upsert replaces the entry with the same id (or adds it);
/// a removal names an id. See "Deltas" in `docs/snapshot.md`.
///
/// Like [`SnapshotDoc`], this is the shape written out: `parse_delta` reads the upserts entry by
/// entry, so that one malformed entry is skipped rather than failing the whole delta.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(
    deny_unknown_fields,
    bound(
        serialize = "S: Serialize + AsRef<str>",
        deserialize = "S: Deserialize<'de> + Default"
    )
)]
pub struct DeltaDoc<S = String> {
    pub from: u64,
    pub version: u64,
    #[serde(default)]
    pub workspaces: Changes<WorkspaceDoc>,
    #[serde(default)]
    pub keys: Changes<KeyDoc<S>>,
    /// When present, the whole new set of signing keys (there are only ever a few); absent:
    /// unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_keys: Option<Vec<SigningKeyDoc>>,
    #[serde(default, skip_serializing_if = "Changes::is_empty")]
    pub clients: Changes<ClientDoc>,
}

/// The changes to one kind of entry: whole entries to add or replace, and ids to remove.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, bound(deserialize = "T: Deserialize<'de>"))]
pub struct Changes<T> {
    #[serde(default)]
    pub upsert: Vec<T>,
    /// Ids.
    #[serde(default)]
    pub remove: Vec<String>,
}

impl<T> Changes<T> {
    pub fn is_empty(&self) -> bool {
        self.upsert.is_empty() && self.remove.is_empty()
    }
}

/// Not derived: that would require `T: Default`.
impl<T> Default for Changes<T> {
    fn default() -> Self {
        Changes {
            upsert: Vec::new(),
            remove: Vec::new(),
        }
    }
}

fn is_empty<S: AsRef<str>>(s: &S) -> bool {
    s.as_ref().is_empty()
}

/// Distinguishes `scopes: null` (or a bare `scopes:` in YAML, easy to type by accident) from an
/// absent field: only absence means "legacy wide-open key"; the outer `Some` records presence.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

//! The validated snapshot: workspaces and keys indexed for lookup by hash, built off the request path.
//!
//! A `Snapshot` is immutable once built; a change means building a new one and swapping it in.
//! Everything the request path needs (parsed scopes, expiry as a number, ready-made header
//! values) is computed here so that a request only hashes, looks up and compares.

use super::wire::{KeyDoc, KeyStatus, LimitsDoc, RestrictionsDoc, WorkspaceDoc, WorkspaceKind};
use crate::scopes::KeyScopes;
use crate::secret::KeyHash;
use http::HeaderValue;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// How many skipped-entry reasons a snapshot keeps for reports; all are counted.
const KEPT_SKIP_REASONS: usize = 100;

pub struct Workspace {
    pub id: Box<str>,
    pub kind: WorkspaceKind,
    pub limits: LimitsDoc,
    /// `id` as a header value, built once.
    pub id_header: HeaderValue,
}

pub enum Owner {
    Workspace(Arc<Workspace>),
    /// A platform-internal key: the request names its workspace with `x-workspace-id`.
    Internal,
}

pub struct KeyEntry {
    pub id: Box<str>,
    pub name: Box<str>,
    pub owner: Owner,
    pub scopes: KeyScopes,
    pub revoked: bool,
    /// Unix seconds; the key fails from this instant on.
    pub expires_at: Option<i64>,
    /// Parsed and kept; not enforced yet (see docs/snapshot.md).
    pub restrictions: Option<RestrictionsDoc>,
    pub id_header: HeaderValue,
    pub scopes_header: HeaderValue,
}

impl fmt::Debug for Workspace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Workspace")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// Shows ids only: the entry holds no secret material, but keep `Debug` short and safe anyway.
impl fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let owner = match &self.owner {
            Owner::Workspace(w) => &*w.id,
            Owner::Internal => "(internal)",
        };
        f.debug_struct("KeyEntry")
            .field("id", &self.id)
            .field("owner", &owner)
            .field("revoked", &self.revoked)
            .finish_non_exhaustive()
    }
}

/// An entry that failed validation and was left out of the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub kind: EntryKind,
    /// The entry's id, or its position when it has none.
    pub id: String,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Workspace,
    Key,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            EntryKind::Workspace => "workspace",
            EntryKind::Key => "key",
        };
        write!(f, "{kind} {}: {}", self.id, self.reason)
    }
}

/// The key hashes are SHA-256 outputs, uniformly distributed and not chosen by clients (a client
/// controls only the preimage), so their first eight bytes are already a good table hash.
#[derive(Default)]
pub struct PrefixHasher(u64);

impl Hasher for PrefixHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `KeyHash::hash` feeds this hasher, through `write_u64`.
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl Hash for KeyHash {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(first));
    }
}

type KeyIndex = HashMap<KeyHash, Arc<KeyEntry>, BuildHasherDefault<PrefixHasher>>;

pub struct Snapshot {
    version: u64,
    keys: KeyIndex,
    workspaces: HashMap<Box<str>, Arc<Workspace>>,
    skipped_count: usize,
    skipped: Vec<Skipped>,
    restricted_keys: usize,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("version", &self.version)
            .field("keys", &self.keys.len())
            .field("workspaces", &self.workspaces.len())
            .field("skipped", &self.skipped_count)
            .finish()
    }
}

impl Snapshot {
    pub fn version(&self) -> u64 {
        self.version
    }
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }
    pub fn workspace_count(&self) -> usize {
        self.workspaces.len()
    }
    /// Entries left out at load, all counted.
    pub fn skipped_count(&self) -> usize {
        self.skipped_count
    }
    /// The first [`KEPT_SKIP_REASONS`] skipped entries with their reasons.
    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }
    /// Keys that carry restrictions this release does not enforce yet.
    pub fn restricted_keys(&self) -> usize {
        self.restricted_keys
    }
    pub fn key(&self, hash: &KeyHash) -> Option<&Arc<KeyEntry>> {
        self.keys.get(hash)
    }
    pub fn workspace(&self, id: &str) -> Option<&Arc<Workspace>> {
        self.workspaces.get(id)
    }
}

/// Builds a snapshot entry by entry, so a caller can stream a large document through it.
pub struct SnapshotBuilder {
    version: u64,
    workspaces: HashMap<Box<str>, Arc<Workspace>>,
    /// Keys wait for `finish`, because a document may list keys before their workspaces.
    pending: Vec<(KeyHash, PendingKey)>,
    skipped_count: usize,
    skipped: Vec<Skipped>,
}

struct PendingKey {
    doc_workspace: Option<String>,
    entry: KeyEntry,
}

impl SnapshotBuilder {
    pub fn new(version: u64) -> Self {
        SnapshotBuilder {
            version,
            workspaces: HashMap::new(),
            pending: Vec::new(),
            skipped_count: 0,
            skipped: Vec::new(),
        }
    }

    pub fn set_version(&mut self, version: u64) {
        self.version = version;
    }

    pub fn skip(&mut self, kind: EntryKind, id: String, reason: String) {
        self.skipped_count += 1;
        if self.skipped.len() < KEPT_SKIP_REASONS {
            self.skipped.push(Skipped { kind, id, reason });
        }
    }

    pub fn add_workspace(&mut self, doc: WorkspaceDoc) {
        if let Err(reason) = check_id(&doc.id) {
            return self.skip(EntryKind::Workspace, doc.id, reason);
        }
        if self.workspaces.contains_key(doc.id.as_str()) {
            return self.skip(EntryKind::Workspace, doc.id, "duplicate id".into());
        }
        if let Some(limits) = doc.limits {
            if limits.burst_per_second == Some(0) || limits.sustained_per_minute == Some(0) {
                let reason = "limits must be at least 1; remove the field to use the default";
                return self.skip(EntryKind::Workspace, doc.id, reason.into());
            }
        }
        let workspace = Workspace {
            id_header: header(&doc.id),
            id: doc.id.into_boxed_str(),
            kind: doc.kind,
            limits: doc.limits.unwrap_or_default(),
        };
        self.workspaces
            .insert(workspace.id.clone(), Arc::new(workspace));
    }

    pub fn add_key(&mut self, doc: KeyDoc) {
        match validate_key(doc) {
            Ok((hash, pending)) => self.pending.push((hash, pending)),
            Err((id, reason)) => self.skip(EntryKind::Key, id, reason),
        }
    }

    pub fn finish(mut self) -> Snapshot {
        let mut keys = KeyIndex::with_capacity_and_hasher(self.pending.len(), Default::default());
        let mut seen_ids = std::collections::HashSet::with_capacity(self.pending.len());
        let mut restricted_keys = 0;
        for (hash, mut pending) in std::mem::take(&mut self.pending) {
            let id = pending.entry.id.to_string();
            if let Some(ws) = pending.doc_workspace.take() {
                match self.workspaces.get(ws.as_str()) {
                    Some(w) => pending.entry.owner = Owner::Workspace(w.clone()),
                    None => {
                        let reason = format!("workspace {ws:?} is not in the snapshot");
                        self.skip(EntryKind::Key, id, reason);
                        continue;
                    }
                }
            }
            if !seen_ids.insert(pending.entry.id.clone()) {
                self.skip(EntryKind::Key, id, "duplicate id".into());
                continue;
            }
            if keys.contains_key(&hash) {
                // Two ids for one secret would make the caller's identity ambiguous.
                self.skip(EntryKind::Key, id, "duplicate hash".into());
                continue;
            }
            restricted_keys += usize::from(pending.entry.restrictions.is_some());
            keys.insert(hash, Arc::new(pending.entry));
        }
        Snapshot {
            version: self.version,
            keys,
            workspaces: self.workspaces,
            skipped_count: self.skipped_count,
            skipped: self.skipped,
            restricted_keys,
        }
    }
}

/// Ids travel in upstream headers and logs, so they are kept to a plain, header-safe alphabet.
fn check_id(id: &str) -> Result<(), String> {
    let ok_char = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':');
    if id.is_empty() || id.len() > 128 || !id.bytes().all(ok_char) {
        return Err("id must be 1 to 128 characters of A-Z a-z 0-9 _ - . :".into());
    }
    Ok(())
}

fn header(s: &str) -> HeaderValue {
    // Callers pass only checked ids or scope lists, which are visible ASCII.
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

type Rejected = (String, String);

fn validate_key(doc: KeyDoc) -> Result<(KeyHash, PendingKey), Rejected> {
    let fail = |reason: String| (doc.id.clone(), reason);
    check_id(&doc.id).map_err(fail)?;
    if doc.name.chars().count() > 256 {
        return Err(fail("name is longer than 256 characters".into()));
    }
    let hash = KeyHash::from_hex(&doc.hash).ok_or_else(|| {
        fail("hash must be 64 lowercase hex digits (SHA-256 of the secret)".into())
    })?;
    let owner_ws = match (&doc.workspace, doc.internal) {
        (Some(_), true) => {
            return Err(fail(
                "an internal key names no workspace; remove `workspace` or `internal`".into(),
            ));
        }
        (None, false) => {
            return Err(fail(
                "missing `workspace` (or `internal: true` for a platform key)".into(),
            ));
        }
        (ws, _) => ws.clone(),
    };
    let scopes = match &doc.scopes {
        None => KeyScopes::Legacy,
        Some(None) => {
            return Err(fail(
                "scopes is null; omit the field for a legacy key or give a list".into(),
            ));
        }
        Some(Some(list)) => KeyScopes::parse(Some(list)).map_err(|e| fail(e.to_string()))?,
    };
    let expires_at = match &doc.expires_at {
        None => None,
        Some(t) => Some(
            OffsetDateTime::parse(t, &Rfc3339)
                .map_err(|_| {
                    fail(format!(
                        "expires_at {t:?} is not an RFC 3339 time such as 2027-01-31T00:00:00Z"
                    ))
                })?
                .unix_timestamp(),
        ),
    };
    if let Some(r) = &doc.restrictions {
        check_restrictions(r).map_err(fail)?;
    }
    let entry = KeyEntry {
        id_header: header(&doc.id),
        scopes_header: header(&scopes.header_value()),
        id: doc.id.into_boxed_str(),
        name: doc.name.into_boxed_str(),
        owner: Owner::Internal,
        scopes,
        revoked: doc.status == KeyStatus::Revoked,
        expires_at,
        restrictions: doc.restrictions,
    };
    Ok((
        hash,
        PendingKey {
            doc_workspace: owner_ws,
            entry,
        },
    ))
}

fn check_restrictions(r: &RestrictionsDoc) -> Result<(), String> {
    for ip in &r.ips {
        let (addr, len) = ip.split_once('/').unwrap_or((ip, ""));
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("restrictions.ips: {ip:?} is not an IP address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if !len.is_empty() && len.parse::<u8>().map_or(true, |l| l > max) {
            return Err(format!(
                "restrictions.ips: {ip:?} has a prefix length outside 0..={max}"
            ));
        }
    }
    let blank = |v: &Vec<String>| v.iter().any(|s| s.trim().is_empty());
    if blank(&r.referrers) || blank(&r.endpoints) {
        return Err("restrictions: empty referrer or endpoint".into());
    }
    Ok(())
}

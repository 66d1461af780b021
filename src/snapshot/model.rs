//! The validated snapshot: workspaces and keys indexed for lookup by hash, built off the request path.
//!
//! A `Snapshot` is immutable once built; a change means building a new one and swapping it in.
//! Everything the request path needs (parsed scopes, expiry as a number, ready-made header
//! values) is computed here so that a request only hashes, looks up and compares.
//!
//! Memory is what limits a snapshot of millions of keys, so a key is one allocation of 72 bytes
//! plus its share of: the text arena its id and name live in (written back to back in 16 KiB
//! chunks that header values slice without copying), the interned scope set it holds (one per
//! distinct scope list, with its header value), and the two indexes (see [`super::index`]).
//! A restricted key also holds its compiled restrictions; the usual unrestricted key, an empty
//! pointer.

use super::index::{self, IdBuild, IdIndex, KeyIndex};
use super::invalid::InvalidEntry;
use super::trust::{self, Client, Clients, SigningKey, SigningKeys};
use super::wire::{ClientDoc, SigningKeyDoc};
use super::wire::{KeyDoc, KeyStatus, LimitsDoc, RestrictionsDoc, WorkspaceDoc, WorkspaceKind};
use crate::limits::{Policy, StateCache, SubjectKey};
use crate::restrictions::KeyRestrictions;
use crate::scopes::{KeyScopes, ScopeError, ScopeSet};
use crate::secret::KeyHash;
use bytes::Bytes;
use http::HeaderValue;
use keygate_protocol::ids;
use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// How many skipped-entry reasons a snapshot keeps for reports; all are counted.
pub(crate) const KEPT_SKIP_REASONS: usize = 100;

/// `repr(C)` with what every request reads first (its Arc's counts come just before): with a
/// hundred thousand workspaces, each is a likely cache miss, and this keeps the decision's reads
/// on one cache line instead of spread over the struct's three.
#[repr(C)]
pub struct Workspace {
    /// Where the limiter keeps this workspace's state, once a request has been counted.
    pub limiter_state: StateCache,
    pub limits: LimitOverrides,
    pub kind: WorkspaceKind,
    pub id: Box<str>,
    /// `id` as a header value, built once.
    pub id_header: HeaderValue,
    /// `id` as the rate limiter's key, built once (inline: see `limits::SubjectKey`).
    pub limiter_key: SubjectKey,
}

/// A workspace's own limits where it overrides the configured ones. Each allows at least one
/// request: a limit of 0 is refused at the snapshot boundary, never decided on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LimitOverrides {
    pub burst_per_second: Option<NonZeroU32>,
    pub sustained_per_minute: Option<NonZeroU32>,
    /// The workspace's cap on requests in flight ([`crate::concurrency`]).
    pub concurrent_requests: Option<NonZeroU32>,
}

impl LimitOverrides {
    /// `base` (the configured limits for the workspace's kind) with these overrides applied.
    pub fn over(self, base: Policy) -> Policy {
        Policy {
            burst_per_second: self
                .burst_per_second
                .map_or(base.burst_per_second, NonZeroU32::get),
            sustained_per_minute: self
                .sustained_per_minute
                .map_or(base.sustained_per_minute, NonZeroU32::get),
        }
    }

    /// The wire form, as a snapshot is written back out; `None` without overrides.
    pub fn to_doc(self) -> Option<LimitsDoc> {
        let doc = LimitsDoc {
            burst_per_second: self.burst_per_second.map(NonZeroU32::get),
            sustained_per_minute: self.sustained_per_minute.map(NonZeroU32::get),
            concurrent_requests: self.concurrent_requests.map(NonZeroU32::get),
        };
        (!doc.is_empty()).then_some(doc)
    }
}

impl TryFrom<LimitsDoc> for LimitOverrides {
    type Error = InvalidEntry;

    fn try_from(doc: LimitsDoc) -> Result<Self, InvalidEntry> {
        let non_zero = |limit: Option<u32>| match limit {
            None => Ok(None),
            Some(n) => NonZeroU32::new(n).map(Some).ok_or(InvalidEntry::ZeroLimit),
        };
        Ok(LimitOverrides {
            burst_per_second: non_zero(doc.burst_per_second)?,
            sustained_per_minute: non_zero(doc.sustained_per_minute)?,
            concurrent_requests: non_zero(doc.concurrent_requests)?,
        })
    }
}

pub enum Owner {
    Workspace(Arc<Workspace>),
    /// A platform-internal key: the request names its workspace with `x-workspace-id`.
    Internal,
}

impl Clone for Owner {
    fn clone(&self) -> Self {
        match self {
            Owner::Workspace(w) => Owner::Workspace(w.clone()),
            Owner::Internal => Owner::Internal,
        }
    }
}

/// One API key, as the request path needs it.
pub struct KeyEntry {
    /// What the index finds the key by.
    pub hash: KeyHash,
    pub owner: Owner,
    /// Shared by every key with the same scope list.
    pub scopes: Arc<ScopeSet>,
    /// Also what kind of credential the entry stands for: one byte, where a separate field
    /// would grow every key by eight.
    state: EntryState,
    /// Unix seconds, [`NEVER`] when the key does not expire: see [`KeyEntry::expires_at`].
    expires: i64,
    /// The id then the name, at `text_at` in a chunk shared with other keys.
    text: Arc<Bytes>,
    text_at: u32,
    id_len: u8,
    name_len: u16,
    /// Compiled at load; `None` for the (usual) unrestricted key. Held in the entry, so that
    /// checking them costs the request no lookup.
    restrictions: Option<Arc<KeyRestrictions>>,
}

const NEVER: i64 = i64::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryState {
    ActiveKey,
    RevokedKey,
    /// A verified access token, made by [`KeyEntry::for_token`]; never in a snapshot.
    AccessToken,
    /// A verified browser client token, also made by [`KeyEntry::for_token`].
    ClientToken,
}

/// Which kind of token [`KeyEntry::for_token`] makes an entry for.
pub enum TokenKind {
    OAuth,
    /// A browser client token, held to these restrictions (its minting key's, in part).
    Client(Option<Arc<KeyRestrictions>>),
}

/// How a request authenticated, sent upstream as `x-auth-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthType {
    ApiKey,
    OAuth,
    /// A browser client token, minted for an API key.
    ClientToken,
}

impl AuthType {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthType::ApiKey => "api_key",
            AuthType::OAuth => "oauth",
            AuthType::ClientToken => "client_token",
        }
    }
}

impl KeyEntry {
    /// Sent upstream as `x-api-key-id`; the only key identifier keygate logs.
    pub fn id(&self) -> &str {
        let at = self.text_at as usize;
        // Checked ASCII when the entry was made, so this never falls back.
        std::str::from_utf8(&self.text[at..at + usize::from(self.id_len)]).unwrap_or("")
    }

    pub(crate) fn id_bytes(&self) -> &[u8] {
        let at = self.text_at as usize;
        &self.text[at..at + usize::from(self.id_len)]
    }

    pub fn name(&self) -> &str {
        let at = self.text_at as usize + usize::from(self.id_len);
        let len = usize::from(self.name_len);
        std::str::from_utf8(&self.text[at..at + len]).unwrap_or("")
    }

    pub fn revoked(&self) -> bool {
        self.state == EntryState::RevokedKey
    }

    pub fn auth_type(&self) -> AuthType {
        match self.state {
            EntryState::ActiveKey | EntryState::RevokedKey => AuthType::ApiKey,
            EntryState::AccessToken => AuthType::OAuth,
            EntryState::ClientToken => AuthType::ClientToken,
        }
    }

    /// The entry a verified token acts as: as the key id, its OAuth client's id or (a client
    /// token) its minting key's; its own scopes, workspace and expiry; and for a client token
    /// the restrictions it inherits. Keyed by the token's SHA-256 (the cache's key), so that
    /// nothing about it can match an API key.
    pub fn for_token(
        kind: TokenKind,
        token_hash: KeyHash,
        client_id: &str,
        workspace: Arc<Workspace>,
        scopes: Arc<ScopeSet>,
        expires_at: i64,
    ) -> Arc<KeyEntry> {
        let (state, restrictions) = match kind {
            TokenKind::OAuth => (EntryState::AccessToken, None),
            TokenKind::Client(restrictions) => (EntryState::ClientToken, restrictions),
        };
        Arc::new(KeyEntry {
            hash: token_hash,
            owner: Owner::Workspace(workspace),
            scopes,
            state,
            expires: expires_at,
            text: Arc::new(Bytes::copy_from_slice(client_id.as_bytes())),
            text_at: 0,
            // Client ids are checked ids (at most 64 bytes) before they get here.
            id_len: client_id.len().min(usize::from(u8::MAX)) as u8,
            name_len: 0,
            restrictions,
        })
    }

    /// Unix seconds; the key fails from this instant on.
    pub fn expires_at(&self) -> Option<i64> {
        (self.expires != NEVER).then_some(self.expires)
    }

    /// The id as a header value: a view of the shared text, so no bytes are copied.
    pub fn id_header(&self) -> HeaderValue {
        let at = self.text_at as usize;
        let id = self.text.slice(at..at + usize::from(self.id_len));
        HeaderValue::from_maybe_shared(id).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// The scopes as the `x-api-key-scopes` header value (shared, not copied).
    pub fn scopes_header(&self) -> HeaderValue {
        self.scopes.header().clone()
    }

    /// The same key under another owner (a workspace replaced by a delta).
    pub(crate) fn with_owner(&self, owner: Owner) -> KeyEntry {
        KeyEntry {
            hash: self.hash,
            owner,
            scopes: self.scopes.clone(),
            state: self.state,
            expires: self.expires,
            text: self.text.clone(),
            text_at: self.text_at,
            id_len: self.id_len,
            name_len: self.name_len,
            restrictions: self.restrictions.clone(),
        }
    }
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
            .field("id", &self.id())
            .field("owner", &owner)
            .field("revoked", &self.revoked())
            .field("auth", &self.auth_type())
            .finish_non_exhaustive()
    }
}

/// An entry that failed validation and was left out of the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub kind: EntryKind,
    /// The entry's id, or its position when it has none.
    pub id: String,
    pub reason: InvalidEntry,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Workspace,
    Key,
    SigningKey,
    Client,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            EntryKind::Workspace => "workspace",
            EntryKind::Key => "key",
            EntryKind::SigningKey => "signing key",
            EntryKind::Client => "client",
        };
        write!(f, "{kind} {}: {}", self.id, self.reason)
    }
}

/// Skipped entries: all counted, the first [`KEPT_SKIP_REASONS`] kept with their reasons.
#[derive(Debug, Default, Clone)]
pub(crate) struct Skips {
    pub(crate) count: usize,
    pub(crate) kept: Vec<Skipped>,
}

impl Skips {
    pub(crate) fn add(&mut self, kind: EntryKind, id: String, reason: InvalidEntry) {
        self.count += 1;
        if self.kept.len() < KEPT_SKIP_REASONS {
            self.kept.push(Skipped { kind, id, reason });
        }
    }
}

pub(crate) type Workspaces = HashMap<Box<str>, Arc<Workspace>>;

pub struct Snapshot {
    pub(crate) version: u64,
    pub(crate) keys: KeyIndex,
    pub(crate) ids: IdIndex,
    pub(crate) workspaces: Arc<Workspaces>,
    pub(crate) scope_sets: Arc<ScopeInterner>,
    pub(crate) skips: Skips,
    pub(crate) signing_keys: Arc<SigningKeys>,
    pub(crate) clients: Arc<Clients>,
    /// Unique to this snapshot in this process (unlike `version`, which a keys file may keep
    /// through an edit): what a cached verification was last checked against.
    pub(crate) generation: u64,
}

/// A new [`Snapshot::generation`].
pub(crate) fn next_generation() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("version", &self.version)
            .field("keys", &self.keys.len())
            .field("workspaces", &self.workspaces.len())
            .field("skipped", &self.skips.count)
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
    /// Entries left out by the load (or the delta) that made this snapshot, all counted.
    pub fn skipped_count(&self) -> usize {
        self.skips.count
    }
    /// The first [`KEPT_SKIP_REASONS`] skipped entries with their reasons.
    pub fn skipped(&self) -> &[Skipped] {
        &self.skips.kept
    }
    /// Keys that carry restrictions. Walks every key: for tests and tools, not the request path.
    pub fn restricted_keys(&self) -> usize {
        self.keys
            .iter()
            .filter(|k| k.restrictions.is_some())
            .count()
    }
    /// The restrictions of a key of this snapshot, compiled at load.
    #[inline]
    pub fn restrictions<'k>(&self, key: &'k KeyEntry) -> Option<&'k KeyRestrictions> {
        key.restrictions.as_deref()
    }
    /// The request path's lookup: one probe of one hash table.
    pub fn key(&self, hash: &KeyHash) -> Option<&Arc<KeyEntry>> {
        self.keys.get(hash)
    }
    /// A key by its id.
    pub fn key_by_id(&self, id: &str) -> Option<&Arc<KeyEntry>> {
        self.ids.get(id)
    }
    pub fn workspace(&self, id: &str) -> Option<&Arc<Workspace>> {
        self.workspaces.get(id)
    }
    pub fn workspaces(&self) -> impl Iterator<Item = &Arc<Workspace>> {
        self.workspaces.values()
    }
    /// The public key tokens signed under `kid` are checked with.
    pub fn signing_key(&self, kid: &str) -> Option<&Arc<SigningKey>> {
        self.signing_keys.get(kid)
    }
    pub fn signing_key_count(&self) -> usize {
        self.signing_keys.len()
    }
    /// An OAuth client by its id.
    pub fn client(&self, id: &str) -> Option<&Client> {
        self.clients.get(id)
    }
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }
    /// Unique to this snapshot among those this process built.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// Identical scope lists share one [`ScopeSet`]. Lists are keyed by their exact text
/// (length-prefixed, so no two lists share a key), and the table is capped so that a snapshot
/// where every key has its own list does not also pay for a table of them.
#[derive(Clone)]
pub(crate) struct ScopeInterner {
    sets: HashMap<Box<[u8]>, Arc<ScopeSet>, IdBuild>,
    legacy: Arc<ScopeSet>,
}

const MAX_INTERNED: usize = 4096;

impl ScopeInterner {
    pub(crate) fn new() -> Self {
        ScopeInterner {
            sets: HashMap::default(),
            legacy: Arc::new(ScopeSet::new(KeyScopes::Legacy)),
        }
    }

    /// The shared set for `list` (`None`: a legacy key). `scratch` is reused between calls, so
    /// a list seen before costs no allocation. Copies the table first if another snapshot
    /// shares it and the list is new.
    pub(crate) fn intern<S: AsRef<str>>(
        this: &mut Arc<ScopeInterner>,
        list: Option<&[S]>,
        scratch: &mut Vec<u8>,
    ) -> Result<Arc<ScopeSet>, ScopeError> {
        let Some(list) = list else {
            return Ok(this.legacy.clone());
        };
        scratch.clear();
        for s in list {
            let s = s.as_ref().as_bytes();
            scratch.extend_from_slice(&(s.len() as u32).to_le_bytes());
            scratch.extend_from_slice(s);
        }
        if let Some(set) = this.sets.get(scratch.as_slice()) {
            return Ok(set.clone());
        }
        let set = Arc::new(ScopeSet::new(KeyScopes::parse_list(list)?));
        if this.sets.len() < MAX_INTERNED {
            Arc::make_mut(this)
                .sets
                .insert(scratch.as_slice().into(), set.clone());
        }
        Ok(set)
    }
}

/// Where new keys' ids and names are written: 16 KiB chunks, each shared by the keys in it.
///
/// A key is made before its chunk is full, so it first points at an empty placeholder; `seal`
/// then points every key written since the last seal at the finished chunk. Until then the
/// keys are not shared, which `seal` relies on.
pub(crate) struct TextArena {
    buf: Vec<u8>,
    /// The first key (in the caller's list) whose text is in `buf`.
    first: usize,
    placeholder: Arc<Bytes>,
}

const CHUNK: usize = 16 * 1024;

impl TextArena {
    pub(crate) fn new() -> Self {
        TextArena {
            buf: Vec::new(),
            first: 0,
            placeholder: Arc::new(Bytes::new()),
        }
    }

    /// Writes `id` and `name`; returns where. `made` is the caller's list of keys made so far.
    fn push(&mut self, made: &mut [Arc<KeyEntry>], id: &str, name: &str) -> u32 {
        let need = id.len() + name.len();
        if self.buf.len() + need > self.buf.capacity() {
            self.seal(made);
            self.buf.reserve_exact(CHUNK.max(need));
        }
        let at = self.buf.len() as u32;
        self.buf.extend_from_slice(id.as_bytes());
        self.buf.extend_from_slice(name.as_bytes());
        at
    }

    /// Ends the current chunk: the keys written into it from now on refer to it.
    pub(crate) fn seal(&mut self, made: &mut [Arc<KeyEntry>]) {
        if self.first < made.len() {
            let mut buf = std::mem::take(&mut self.buf);
            buf.shrink_to_fit();
            let chunk = Arc::new(Bytes::from(buf));
            for e in &mut made[self.first..] {
                match Arc::get_mut(e) {
                    Some(e) => e.text = chunk.clone(),
                    None => unreachable!("a key is shared before its text is sealed"),
                }
            }
        }
        self.buf = Vec::new();
        self.first = made.len();
    }
}

/// Compiled restrictions by their document, for one build or one delta: keys with the same
/// restrictions (a customer's office ranges on all its keys) share one compiled copy. Memory
/// and load time then follow the distinct sets, and the request path finds a shared set's
/// tables already in cache.
#[derive(Default)]
pub(crate) struct RestrictionInterner {
    sets: HashMap<RestrictionsDoc, Arc<KeyRestrictions>, IdBuild>,
}

impl RestrictionInterner {
    fn intern(&mut self, doc: &RestrictionsDoc) -> Result<Arc<KeyRestrictions>, InvalidEntry> {
        if let Some(set) = self.sets.get(doc) {
            return Ok(set.clone());
        }
        let set = Arc::new(KeyRestrictions::compile(doc.clone())?);
        self.sets.insert(doc.clone(), set.clone());
        Ok(set)
    }
}

/// Validates one key entry and makes its [`KeyEntry`] (owner still `Internal`), writing its
/// text to `arena` and adding it to `made`. The one path every key takes, from a full document
/// or a delta. On failure: why.
pub(crate) fn make_key<S: AsRef<str>>(
    doc: &KeyDoc<S>,
    scope_sets: &mut Arc<ScopeInterner>,
    restriction_sets: &mut RestrictionInterner,
    scratch: &mut Vec<u8>,
    arena: &mut TextArena,
    made: &mut Vec<Arc<KeyEntry>>,
) -> Result<(), InvalidEntry> {
    let id = doc.id.as_ref();
    check_id(id)?;
    let name = doc.name.as_ref();
    if name.chars().count() > 256 {
        return Err(InvalidEntry::NameTooLong);
    }
    let hash = KeyHash::from_hex(doc.hash.as_ref()).ok_or(InvalidEntry::Hash)?;
    match (&doc.workspace, doc.internal) {
        (Some(_), true) => return Err(InvalidEntry::InternalWithWorkspace),
        (None, false) => return Err(InvalidEntry::NoOwner),
        _ => {}
    }
    let scopes = match &doc.scopes {
        None => ScopeInterner::intern::<&str>(scope_sets, None, scratch),
        Some(None) => return Err(InvalidEntry::NullScopes),
        Some(Some(list)) => ScopeInterner::intern(scope_sets, Some(list), scratch),
    }?;
    let expires = match &doc.expires_at {
        None => NEVER,
        Some(t) => {
            let t = t.as_ref();
            let parsed = OffsetDateTime::parse(t, &Rfc3339)
                .map_err(|_| InvalidEntry::ExpiresAt(t.to_owned()))?;
            // RFC 3339 years end at 9999, far below `NEVER`.
            parsed.unix_timestamp()
        }
    };
    let restrictions = match &doc.restrictions {
        Some(r) => Some(restriction_sets.intern(r)?),
        None => None,
    };
    let text_at = arena.push(made, id, name);
    made.push(Arc::new(KeyEntry {
        hash,
        owner: Owner::Internal,
        scopes,
        state: match doc.status {
            KeyStatus::Active => EntryState::ActiveKey,
            KeyStatus::Revoked => EntryState::RevokedKey,
        },
        expires,
        text: arena.placeholder.clone(),
        text_at,
        id_len: id.len() as u8,
        name_len: name.len() as u16,
        restrictions,
    }));
    Ok(())
}

/// Sets the owner of a key no one else holds yet.
pub(crate) fn set_owner(entry: &mut Arc<KeyEntry>, owner: Owner) {
    match Arc::get_mut(entry) {
        Some(e) => e.owner = owner,
        None => unreachable!("a key is shared before it has its owner"),
    }
}

/// The same key under another owner.
pub(crate) fn rehome(entry: &KeyEntry, owner: Owner) -> Arc<KeyEntry> {
    Arc::new(entry.with_owner(owner))
}

/// Validates one workspace entry.
pub(crate) fn make_workspace(doc: WorkspaceDoc) -> Result<Workspace, (String, InvalidEntry)> {
    if let Err(reason) = check_id(&doc.id) {
        return Err((doc.id, reason));
    }
    let limits = match LimitOverrides::try_from(doc.limits.unwrap_or_default()) {
        Ok(limits) => limits,
        Err(reason) => return Err((doc.id, reason)),
    };
    Ok(Workspace {
        id_header: header(&doc.id),
        limiter_key: SubjectKey::new(&doc.id),
        limiter_state: StateCache::default(),
        id: doc.id.into_boxed_str(),
        kind: doc.kind,
        limits,
    })
}

/// Builds a snapshot entry by entry, so a caller can stream a large document through it.
pub struct SnapshotBuilder {
    version: u64,
    workspaces: Workspaces,
    scope_sets: Arc<ScopeInterner>,
    restriction_sets: RestrictionInterner,
    scratch: Vec<u8>,
    arena: TextArena,
    /// Valid keys in document order; they go into the indexes at `finish`.
    keys: Vec<Arc<KeyEntry>>,
    /// Keys whose workspace had not been listed yet (a document may list keys first), by
    /// position in `keys`.
    unresolved: Vec<(usize, Box<str>)>,
    skips: Skips,
    signing_keys: SigningKeys,
    /// Checked at `finish`, once every workspace is known.
    clients: Vec<ClientDoc>,
}

impl SnapshotBuilder {
    pub fn new(version: u64) -> Self {
        SnapshotBuilder {
            version,
            workspaces: HashMap::new(),
            scope_sets: Arc::new(ScopeInterner::new()),
            restriction_sets: RestrictionInterner::default(),
            scratch: Vec::new(),
            arena: TextArena::new(),
            keys: Vec::new(),
            unresolved: Vec::new(),
            skips: Skips::default(),
            signing_keys: SigningKeys::default(),
            clients: Vec::new(),
        }
    }

    pub fn set_version(&mut self, version: u64) {
        self.version = version;
    }

    pub fn skip(&mut self, kind: EntryKind, id: String, reason: InvalidEntry) {
        self.skips.add(kind, id, reason);
    }

    pub fn add_workspace(&mut self, doc: WorkspaceDoc) {
        match make_workspace(doc) {
            Ok(w) if self.workspaces.contains_key(&w.id) => {
                self.skip(EntryKind::Workspace, w.id.into(), InvalidEntry::DuplicateId)
            }
            Ok(w) => {
                self.workspaces.insert(w.id.clone(), Arc::new(w));
            }
            Err((id, reason)) => self.skip(EntryKind::Workspace, id, reason),
        }
    }

    pub fn add_key<S: AsRef<str>>(&mut self, doc: KeyDoc<S>) {
        let made = make_key(
            &doc,
            &mut self.scope_sets,
            &mut self.restriction_sets,
            &mut self.scratch,
            &mut self.arena,
            &mut self.keys,
        );
        if let Err(reason) = made {
            return self.skip(EntryKind::Key, doc.id.as_ref().to_owned(), reason);
        }
        let at = self.keys.len() - 1;
        if let Some(ws) = &doc.workspace {
            match self.workspaces.get(ws.as_ref()) {
                Some(w) => set_owner(&mut self.keys[at], Owner::Workspace(w.clone())),
                None => self.unresolved.push((at, ws.as_ref().into())),
            }
        }
    }

    pub fn add_signing_key(&mut self, doc: SigningKeyDoc) {
        trust::add_signing_keys(
            &mut self.signing_keys,
            std::slice::from_ref(&doc),
            &mut self.skips,
        );
    }

    pub fn add_client(&mut self, doc: ClientDoc) {
        self.clients.push(doc);
    }

    pub fn finish(mut self) -> Snapshot {
        self.arena.seal(&mut self.keys);
        // Keys listed before their workspace: resolve, or leave out.
        let mut dropped = vec![];
        for (at, ws) in std::mem::take(&mut self.unresolved) {
            match self.workspaces.get(&ws) {
                Some(w) => set_owner(&mut self.keys[at], Owner::Workspace(w.clone())),
                None => dropped.push((at, ws)),
            }
        }
        let mut skips = std::mem::take(&mut self.skips);
        let mut keys = std::mem::take(&mut self.keys);
        if !dropped.is_empty() {
            let mut gone = dropped.into_iter().peekable();
            let mut at = 0;
            keys.retain(|e| {
                let keep = match gone.peek() {
                    Some((i, ws)) if *i == at => {
                        let reason = InvalidEntry::UnknownWorkspace(ws.to_string());
                        skips.add(EntryKind::Key, e.id().to_owned(), reason);
                        gone.next();
                        false
                    }
                    _ => true,
                };
                at += 1;
                keep
            });
        }
        let (keys, ids) = index::build(keys, |e, why| {
            skips.add(EntryKind::Key, e.id().to_owned(), why)
        });
        let mut clients = Clients::default();
        for doc in &self.clients {
            let made = trust::make_client(doc, |w| self.workspaces.contains_key(w));
            match made {
                Ok(_) if clients.contains_key(doc.id.as_str()) => {
                    skips.add(EntryKind::Client, doc.id.clone(), InvalidEntry::DuplicateId)
                }
                Ok(c) => {
                    clients.insert(doc.id.as_str().into(), c);
                }
                Err(reason) => skips.add(EntryKind::Client, doc.id.clone(), reason),
            }
        }
        Snapshot {
            version: self.version,
            keys,
            ids,
            workspaces: Arc::new(self.workspaces),
            scope_sets: self.scope_sets,
            skips,
            signing_keys: Arc::new(self.signing_keys),
            clients: Arc::new(clients),
            generation: next_generation(),
        }
    }
}

/// Ids travel in upstream headers and logs, so they are kept to a plain, header-safe alphabet.
pub(crate) fn check_id(id: &str) -> Result<(), InvalidEntry> {
    if !ids::valid_id(id) {
        return Err(InvalidEntry::Id);
    }
    Ok(())
}

fn header(s: &str) -> HeaderValue {
    // Callers pass only checked ids, which are visible ASCII.
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `repr(C)` is for: what a decision reads of its workspace (the limiter's state, the
    /// limits, the kind) lies in the 48 bytes that share a cache line with the Arc's counts.
    #[test]
    fn a_workspaces_decision_fields_share_the_first_cache_line() {
        use std::mem::{offset_of, size_of};
        assert_eq!(offset_of!(Workspace, limiter_state), 0);
        assert!(offset_of!(Workspace, limits) >= size_of::<StateCache>());
        assert!(offset_of!(Workspace, kind) > offset_of!(Workspace, limits));
        assert!(offset_of!(Workspace, kind) + size_of::<WorkspaceKind>() <= 48);
    }

    #[test]
    fn limit_overrides_refuse_zero_and_apply_over_the_configured_limits() {
        let doc = |burst, sustained| LimitsDoc {
            burst_per_second: burst,
            sustained_per_minute: sustained,
            concurrent_requests: None,
        };
        let base = Policy {
            burst_per_second: 30,
            sustained_per_minute: 3_000,
        };
        let none = LimitOverrides::try_from(doc(None, None)).unwrap();
        assert_eq!(none.over(base), base);
        assert_eq!(none.to_doc(), None);
        let some = LimitOverrides::try_from(doc(Some(7), None)).unwrap();
        assert_eq!(some.over(base).burst_per_second, 7);
        assert_eq!(some.over(base).sustained_per_minute, 3_000);
        assert_eq!(some.to_doc(), Some(doc(Some(7), None)));
        let capped = LimitsDoc {
            concurrent_requests: Some(4),
            ..doc(None, None)
        };
        let capped_overrides = LimitOverrides::try_from(capped).unwrap();
        assert_eq!(capped_overrides.over(base), base);
        assert_eq!(capped_overrides.concurrent_requests, NonZeroU32::new(4));
        assert_eq!(capped_overrides.to_doc(), Some(capped));
        let zero_cap = LimitsDoc {
            concurrent_requests: Some(0),
            ..doc(None, None)
        };
        for zero in [doc(Some(0), None), doc(None, Some(0)), zero_cap] {
            assert_eq!(LimitOverrides::try_from(zero), Err(InvalidEntry::ZeroLimit));
        }
    }

    #[test]
    fn keys_with_the_same_restrictions_share_one_compiled_set() {
        use crate::snapshot::{Format, parse};
        let key = |i: u32, restrictions: &str| {
            format!(
                r#"{{"id":"k{i}","hash":"{}","workspace":"ws","restrictions":{restrictions}}}"#,
                KeyHash::of(&format!("s{i}")).to_hex()
            )
        };
        let office =
            r#"{"ips":["203.0.113.0/24","2001:db8::/32"],"referrers":["https://a.example"]}"#;
        let other = r#"{"ips":["203.0.113.0/24"]}"#;
        let doc = format!(
            r#"{{"version":1,"workspaces":[{{"id":"ws","type":"live"}}],"keys":[{},{},{}]}}"#,
            key(1, office),
            key(2, office),
            key(3, other)
        );
        let s = parse(doc.as_bytes(), Format::Json, "t").unwrap();
        let set = |i: u32| {
            let k = s.key(&KeyHash::of(&format!("s{i}"))).unwrap();
            k.restrictions.clone().unwrap()
        };
        assert!(Arc::ptr_eq(&set(1), &set(2)));
        assert!(!Arc::ptr_eq(&set(1), &set(3)));
        assert_eq!(set(3).ips, ["203.0.113.0/24"]);
        assert_eq!(set(1).referrers, ["https://a.example"]);
    }

    #[test]
    fn a_key_entry_is_one_small_allocation() {
        // 80 bytes + the Arc's two counts: exactly a 96-byte malloc chunk (the restrictions
        // pointer took the 8 bytes that were free in it). Each step up costs 16 MB per million
        // keys.
        assert_eq!(std::mem::size_of::<KeyEntry>(), 80);
    }

    /// The million-key path (one interned scope set per distinct list, the text arena, the
    /// sharded indexes) on 20,000 keys: every key is found, by hash and by id, with what its
    /// entry said.
    #[test]
    fn a_large_snapshot_finds_every_key_and_shares_scope_sets() {
        use crate::snapshot::{Format, parse};
        use std::fmt::Write;
        const N: usize = 20_000;
        const SETS: [&str; 10] = [
            r#"["products:read"]"#,
            r#"["products:read","products:write"]"#,
            r#"["products:*"]"#,
            r#"["*:read"]"#,
            r#"["orders:read","orders:write","products:read"]"#,
            r#"["data:geo:read","data:seo:read"]"#,
            r#"["data:*"]"#,
            r#"["bookings:*","products:read"]"#,
            r#"["*"]"#,
            r#"["reports:read","reports:export"]"#,
        ];
        let scopes_of = |i: usize| match i % 20 {
            0 | 1 => None,
            2 => Some("[]"),
            n => Some(SETS[n % SETS.len()]),
        };
        let mut doc = String::from(r#"{"version":7,"workspaces":["#);
        for w in 0..100 {
            let kind = if w % 5 == 0 { "sandbox" } else { "live" };
            let sep = if w > 0 { "," } else { "" };
            write!(doc, r#"{sep}{{"id":"ws_{w:04}","type":"{kind}"}}"#).unwrap();
        }
        doc.push_str(r#"],"keys":["#);
        for i in 0..N {
            let sep = if i > 0 { "," } else { "" };
            let hash = KeyHash::of(&format!("secret-{i}")).to_hex();
            write!(
                doc,
                r#"{sep}{{"id":"key_{i:026}","hash":"{hash}","workspace":"ws_{:04}""#,
                i % 100
            )
            .unwrap();
            if let Some(s) = scopes_of(i) {
                write!(doc, r#","scopes":{s}"#).unwrap();
            }
            if i % 5 == 1 {
                doc.push_str(r#","expires_at":"2031-06-30T12:00:00Z""#);
            }
            if i % 4 == 2 {
                write!(doc, r#","name":"integration {i} \u00e9""#).unwrap();
            }
            if i % 100 == 7 {
                doc.push_str(r#","status":"revoked""#);
            }
            if i % 1000 == 11 {
                doc.push_str(r#","restrictions":{"ips":["203.0.113.0/24"]}"#);
            }
            doc.push('}');
        }
        doc.push_str("]}");

        let s = parse(doc.as_bytes(), Format::Json, "large").unwrap();
        assert_eq!((s.version(), s.key_count(), s.skipped_count()), (7, N, 0));
        assert_eq!((s.workspace_count(), s.restricted_keys()), (100, N / 1000));
        let mut sets: HashMap<String, Arc<ScopeSet>> = HashMap::new();
        for i in 0..N {
            let key = s.key(&KeyHash::of(&format!("secret-{i}"))).unwrap();
            let id = format!("key_{i:026}");
            assert_eq!(key.id(), id);
            assert_eq!(key.id_header(), id.as_str());
            assert!(Arc::ptr_eq(s.key_by_id(&id).unwrap(), key));
            let Owner::Workspace(w) = &key.owner else {
                panic!("{id}")
            };
            assert_eq!(&*w.id, format!("ws_{:04}", i % 100));
            assert!(Arc::ptr_eq(w, s.workspace(&w.id).unwrap()));
            let name = if i % 4 == 2 {
                format!("integration {i} \u{e9}")
            } else {
                String::new()
            };
            assert_eq!(key.name(), name);
            assert_eq!(key.expires_at(), (i % 5 == 1).then_some(1_940_587_200));
            assert_eq!(key.revoked(), i % 100 == 7);
            assert_eq!(s.restrictions(key).is_some(), i % 1000 == 11);
            let list = scopes_of(i).unwrap_or("legacy").to_owned();
            let shared = sets
                .entry(list.clone())
                .or_insert_with(|| key.scopes.clone());
            assert!(Arc::ptr_eq(shared, &key.scopes), "{id}: {list}");
            let want: Vec<String> = match scopes_of(i) {
                None => vec!["*".into()],
                Some(l) => serde_json::from_str(l).unwrap(),
            };
            assert_eq!(key.scopes_header(), want.join(" ").as_str());
        }
        assert_eq!(sets.len(), 12, "10 lists, [] and legacy");
        assert!(s.key(&KeyHash::of("secret-unknown")).is_none());
        assert!(s.keys.bits() > 0);
    }
}

//! The control plane's state in SQLite: workspaces, API keys, the global version and the change
//! log that deltas are built from.
//!
//! One writer connection (behind a mutex) and a small pool of reader connections, all on one
//! database file in WAL mode, so readers never wait for the writer. Every method here blocks:
//! the HTTP side calls them through [`Db::call`], on Tokio's blocking pool.
//!
//! Every change to what a snapshot holds runs in one `BEGIN IMMEDIATE` transaction that also
//! raises the version by exactly one and records which workspaces and keys it touched, so a
//! version always names one consistent state and `since=V` can be answered from the log.

use crate::api::{
    ApiError, Environment, KeyRow, KeyUpdate, Limits, NewKey, NewWorkspace, OldExpiry, UsageEntry,
    WorkspaceKind, WorkspaceRow, WorkspaceUpdate, now,
};
use crate::clients::{self, ClientRow, SigningKeyRow};
use keygate_protocol::secret::{self, Env, KeyHash};
use keygate_protocol::wire::RestrictionsDoc;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, Transaction, TransactionBehavior};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::watch;

/// How many versions of history the change log keeps by default: `since=V` works for any `V`
/// within this many versions of the current one.
pub const DEFAULT_HISTORY: u64 = 10_000;

/// How long a connection waits for a lock held by another connection before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Idle reader connections kept open.
const MAX_IDLE_READERS: usize = 8;

/// The schema this build writes. A database marked with a newer one is refused.
const SCHEMA_VERSION: i64 = 4;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) STRICT;
INSERT OR IGNORE INTO meta (name, value) VALUES ('version', 0), ('history_floor', 0), ('schema', 1);

CREATE TABLE IF NOT EXISTS workspaces (
    id                   TEXT PRIMARY KEY,
    type                 TEXT NOT NULL CHECK (type IN ('live', 'sandbox')),
    burst_per_second     INTEGER,
    sustained_per_minute INTEGER,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL,
    concurrent_requests  INTEGER            -- cap on requests in flight per host; NULL: keygate's default
) STRICT;

CREATE TABLE IF NOT EXISTS api_keys (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    hash        TEXT NOT NULL UNIQUE,   -- hex SHA-256 of the secret; the secret is never stored
    prefix      TEXT NOT NULL,          -- secret::display_prefix, for people
    workspace   TEXT REFERENCES workspaces (id),
    internal    INTEGER NOT NULL,
    environment TEXT NOT NULL CHECK (environment IN ('live', 'test')),
    scopes      TEXT,                   -- JSON list; NULL for a legacy key
    status      TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
    expires_at  INTEGER,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER,
    rotated_to  TEXT,
    last_used   INTEGER,
    requests    INTEGER NOT NULL DEFAULT 0,
    restrictions TEXT,                  -- JSON {ips, referrers, endpoints}; NULL: unrestricted
    CHECK ((workspace IS NULL) = (internal = 1))
) STRICT;
CREATE INDEX IF NOT EXISTS api_keys_by_workspace ON api_keys (workspace);

-- One row per workspace or key changed by a version. Rows of versions at or below
-- meta.history_floor have been pruned.
CREATE TABLE IF NOT EXISTS changes (
    version INTEGER NOT NULL,
    kind    TEXT NOT NULL CHECK (kind IN ('workspace', 'key')),
    id      TEXT NOT NULL,
    PRIMARY KEY (version, kind, id)
) STRICT, WITHOUT ROWID;

-- Schema 4: OAuth clients and the keys access tokens are signed with.
CREATE TABLE IF NOT EXISTS oauth_clients (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    workspace     TEXT NOT NULL REFERENCES workspaces (id),
    secret_hash   TEXT NOT NULL UNIQUE,   -- hex SHA-256 of the secret; the secret is never stored
    secret_prefix TEXT NOT NULL,          -- its first characters, for people
    scopes        TEXT NOT NULL,          -- JSON list: the most a token may hold
    status        TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
    expires_at    INTEGER,
    created_at    INTEGER NOT NULL,
    revoked_at    INTEGER,
    secret_rotated_at INTEGER
) STRICT;
CREATE INDEX IF NOT EXISTS oauth_clients_by_workspace ON oauth_clients (workspace);

-- The Ed25519 keys tokens are signed with. `current` signs; `previous` is still published so
-- that tokens it signed keep verifying; `retired` is no longer published.
CREATE TABLE IF NOT EXISTS signing_keys (
    kid        TEXT PRIMARY KEY,
    seed       TEXT NOT NULL,             -- base64 private seed: this file is the owner's only
    public_key TEXT NOT NULL,             -- base64url, as the snapshot carries it
    state      TEXT NOT NULL CHECK (state IN ('current', 'previous', 'retired')),
    created_at INTEGER NOT NULL,
    retired_at INTEGER
) STRICT;

-- The change log of clients and signing keys (`changes` cannot take new kinds in place: SQLite
-- cannot alter a CHECK).
CREATE TABLE IF NOT EXISTS trust_changes (
    version INTEGER NOT NULL,
    kind    TEXT NOT NULL CHECK (kind IN ('client', 'signing_keys')),
    id      TEXT NOT NULL,
    PRIMARY KEY (version, kind, id)
) STRICT, WITHOUT ROWID;
";

const KEY_COLUMNS: &str = "id, name, hash, prefix, workspace, internal, environment, scopes, \
     status, expires_at, created_at, revoked_at, rotated_to, last_used, requests, restrictions";
const WORKSPACE_COLUMNS: &str =
    "id, type, burst_per_second, sustained_per_minute, created_at, updated_at, concurrent_requests";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    Workspace,
    Key,
    Client,
    /// The published set as a whole (id `*`).
    SigningKeys,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Workspace => "workspace",
            Kind::Key => "key",
            Kind::Client => "client",
            Kind::SigningKeys => "signing_keys",
        }
    }

    fn from_str(s: &str) -> Kind {
        match s {
            "workspace" => Kind::Workspace,
            "client" => Kind::Client,
            "signing_keys" => Kind::SigningKeys,
            _ => Kind::Key,
        }
    }

    /// Where its changes are logged.
    fn log(self) -> &'static str {
        match self {
            Kind::Workspace | Kind::Key => "changes",
            Kind::Client | Kind::SigningKeys => "trust_changes",
        }
    }
}

/// Everything a full snapshot holds, read in one transaction.
pub struct FullState {
    pub version: u64,
    pub workspaces: Vec<WorkspaceRow>,
    pub keys: Vec<KeyRow>,
    pub clients: Vec<ClientRow>,
    /// The published ones: current and previous.
    pub signing_keys: Vec<SigningKeyRow>,
}

/// What changed after `from`, as of `version`.
pub struct Delta {
    pub from: u64,
    pub version: u64,
    pub workspace_upserts: Vec<WorkspaceRow>,
    pub workspace_removes: Vec<String>,
    pub key_upserts: Vec<KeyRow>,
    pub key_removes: Vec<String>,
    pub client_upserts: Vec<ClientRow>,
    pub client_removes: Vec<String>,
    /// The whole published set, when it changed.
    pub signing_keys: Option<Vec<SigningKeyRow>>,
}

pub enum DeltaOutcome {
    /// `since` is the current version.
    Current(u64),
    /// `since` is older than the log reaches, or newer than the current version.
    Gone {
        version: u64,
        oldest: u64,
    },
    Changes(Delta),
}

/// The result of a write: the version that holds it, and whether anything changed (a repeated
/// revocation, say, changes nothing and does not raise the version).
pub struct Written<T> {
    pub version: u64,
    pub changed: bool,
    pub value: T,
}

/// A key just made: its row and its secret, which exists only in this value and the response.
pub struct CreatedKey {
    pub row: KeyRow,
    pub secret: String,
}

pub struct Rotated {
    pub old: KeyRow,
    pub new: CreatedKey,
}

pub struct UsageOutcome {
    pub updated: usize,
    pub unknown: Vec<String>,
}

pub struct Store {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    history: u64,
    version: watch::Sender<u64>,
    /// Whether this open created the database: its version 0 was never served to anyone.
    pub(crate) created: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "foreign_keys", true)?;
    // FULL: a write acknowledged to a client (a revocation above all) survives a power cut.
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(())
}

/// Creates the database file readable by its owner only (hashes are not secrets, but they
/// are nobody else's business); SQLite gives its `-wal` and `-shm` files the same mode.
#[cfg(unix)]
fn create_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(not(unix))]
fn create_private(_path: &Path) -> std::io::Result<()> {
    Ok(())
}

impl Store {
    /// Opens (creating when needed) the database at `path` and brings its schema up to date.
    /// `history`: versions of change log kept for deltas (at least 1).
    pub fn open(path: &Path, history: u64) -> anyhow::Result<Store> {
        use anyhow::Context as _;
        create_private(path).with_context(|| format!("creating {}", path.display()))?;
        let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
        configure(&conn)?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        anyhow::ensure!(
            mode.eq_ignore_ascii_case("wal"),
            "{}: SQLite refused WAL mode (journal_mode is {mode})",
            path.display()
        );
        let created: bool = conn.query_row(
            "SELECT COUNT(*) = 0 FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
            [],
            |r| r.get(0),
        )?;
        conn.execute_batch(SCHEMA)
            .with_context(|| format!("{}: creating the schema", path.display()))?;
        let schema: i64 =
            conn.query_row("SELECT value FROM meta WHERE name = 'schema'", [], |r| {
                r.get(0)
            })?;
        anyhow::ensure!(
            schema <= SCHEMA_VERSION,
            "{}: written by a newer keygate (schema {schema}, this one knows {SCHEMA_VERSION})",
            path.display()
        );
        migrate(&conn).with_context(|| format!("{}: upgrading the schema", path.display()))?;
        let version = read_meta(&conn, "version")?;
        let (tx, _) = watch::channel(version);
        Ok(Store {
            path: path.to_owned(),
            writer: Mutex::new(conn),
            readers: Mutex::new(Vec::new()),
            history: history.max(1),
            version: tx,
            created,
        })
    }

    /// The version the last committed write produced; waiters are woken on every raise.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    pub fn current_version(&self) -> u64 {
        *self.version.borrow()
    }

    /// Runs `f` in a read transaction on a pooled reader connection: one consistent view.
    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&Transaction) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let pooled = lock(&self.readers).pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                configure_reader(&c)?;
                c
            }
        };
        let result = (|| -> Result<T, ApiError> {
            // Rolled back when dropped: it only read.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
            f(&tx)
        })();
        let mut pool = lock(&self.readers);
        if pool.len() < MAX_IDLE_READERS {
            pool.push(conn);
        }
        result
    }

    /// Runs `f` in a write transaction; commits only when it succeeds.
    pub(crate) fn write<T>(
        &self,
        f: impl FnOnce(&Transaction) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Raises the version by one and records what it changed; called inside a write
    /// transaction. Prunes the log to the last `history` versions.
    fn bump(&self, tx: &Transaction, changes: &[(Kind, &str)]) -> Result<u64, ApiError> {
        let version = read_meta(tx, "version")? + 1;
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE name = 'version'",
            [version],
        )?;
        for (kind, id) in changes {
            let mut insert = tx.prepare_cached(&format!(
                "INSERT OR IGNORE INTO {} (version, kind, id) VALUES (?1, ?2, ?3)",
                kind.log()
            ))?;
            insert.execute(rusqlite::params![version, kind.as_str(), id])?;
        }
        if version > self.history {
            let floor = version - self.history;
            if read_meta(tx, "history_floor")? < floor {
                tx.execute("DELETE FROM changes WHERE version <= ?1", [floor])?;
                tx.execute("DELETE FROM trust_changes WHERE version <= ?1", [floor])?;
                tx.execute(
                    "UPDATE meta SET value = ?1 WHERE name = 'history_floor'",
                    [floor],
                )?;
            }
        }
        Ok(version)
    }

    /// A write that changed something: bumps the version with `changes` and returns `value` as
    /// what was written. (`bump` touches only the version and the change log, so rows read
    /// before it are the rows as written.)
    pub(crate) fn changed<T>(
        &self,
        tx: &Transaction,
        changes: &[(Kind, &str)],
        value: T,
    ) -> Result<Written<T>, ApiError> {
        Ok(Written {
            version: self.bump(tx, changes)?,
            changed: true,
            value,
        })
    }

    /// A write that changed nothing: the version stays, and `value` is what is there.
    pub(crate) fn unchanged<T>(&self, tx: &Transaction, value: T) -> Result<Written<T>, ApiError> {
        Ok(Written {
            version: read_meta(tx, "version")?,
            changed: false,
            value,
        })
    }

    /// Wakes long-polls once a write is committed. Writers may finish out of order: the
    /// published version only ever rises.
    fn publish(&self, version: u64) {
        self.version.send_if_modified(|v| {
            let newer = version > *v;
            if newer {
                *v = version;
            }
            newer
        });
    }

    pub(crate) fn committed<T>(&self, w: Written<T>) -> Written<T> {
        if w.changed {
            self.publish(w.version);
        }
        w
    }

    // --- reads -------------------------------------------------------------------------------

    pub fn version(&self) -> Result<u64, ApiError> {
        self.read(|tx| Ok(read_meta(tx, "version")?))
    }

    /// The whole state at one version, or `Err(version)` without reading the rows when
    /// `skip(version)` says so (the client already has that version).
    pub fn full(&self, skip: impl FnOnce(u64) -> bool) -> Result<Result<FullState, u64>, ApiError> {
        self.read(|tx| {
            let version = read_meta(tx, "version")?;
            if skip(version) {
                return Ok(Err(version));
            }
            let workspaces = query_workspaces(tx, "ORDER BY id", [])?;
            let keys = query_keys(tx, "ORDER BY id", [])?;
            Ok(Ok(FullState {
                version,
                workspaces,
                keys,
                clients: clients::query_clients(tx, "ORDER BY id", [])?,
                signing_keys: clients::published_signing_keys(tx)?,
            }))
        })
    }

    /// Everything changed after `since`: the current state of what still exists, the ids of
    /// what was deleted.
    pub fn delta(&self, since: u64) -> Result<DeltaOutcome, ApiError> {
        self.read(|tx| {
            let version = read_meta(tx, "version")?;
            let oldest = read_meta(tx, "history_floor")?;
            if since == version {
                return Ok(DeltaOutcome::Current(version));
            }
            if since > version || since < oldest {
                return Ok(DeltaOutcome::Gone { version, oldest });
            }
            let mut touched = BTreeSet::new();
            {
                let mut stmt = tx.prepare_cached(
                    "SELECT DISTINCT kind, id FROM changes WHERE version > ?1 AND version <= ?2
                     UNION SELECT DISTINCT kind, id FROM trust_changes
                           WHERE version > ?1 AND version <= ?2",
                )?;
                let rows = stmt.query_map([since, version], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })?;
                for row in rows {
                    let (kind, id) = row?;
                    touched.insert((Kind::from_str(&kind), id));
                }
            }
            let mut delta = Delta {
                from: since,
                version,
                workspace_upserts: Vec::new(),
                workspace_removes: Vec::new(),
                key_upserts: Vec::new(),
                key_removes: Vec::new(),
                client_upserts: Vec::new(),
                client_removes: Vec::new(),
                signing_keys: None,
            };
            for (kind, id) in touched {
                match kind {
                    Kind::Workspace => match get_workspace(tx, &id)? {
                        Some(w) => delta.workspace_upserts.push(w),
                        None => delta.workspace_removes.push(id),
                    },
                    Kind::Key => match get_key(tx, &id)? {
                        Some(k) => delta.key_upserts.push(k),
                        None => delta.key_removes.push(id),
                    },
                    Kind::Client => match clients::get_client(tx, &id)? {
                        Some(c) => delta.client_upserts.push(c),
                        None => delta.client_removes.push(id),
                    },
                    Kind::SigningKeys => {
                        delta.signing_keys = Some(clients::published_signing_keys(tx)?);
                    }
                }
            }
            Ok(DeltaOutcome::Changes(delta))
        })
    }

    pub fn workspaces(&self) -> Result<Vec<WorkspaceRow>, ApiError> {
        self.read(|tx| query_workspaces(tx, "ORDER BY id", []))
    }

    pub fn workspace(&self, id: &str) -> Result<WorkspaceRow, ApiError> {
        self.read(|tx| get_workspace(tx, id)?.ok_or_else(|| no_workspace(id)))
    }

    pub fn keys(&self, workspace: Option<&str>) -> Result<Vec<KeyRow>, ApiError> {
        self.read(|tx| match workspace {
            Some(w) => query_keys(tx, "WHERE workspace = ?1 ORDER BY created_at, id", [w]),
            None => query_keys(tx, "ORDER BY created_at, id", []),
        })
    }

    pub fn key(&self, id: &str) -> Result<KeyRow, ApiError> {
        self.read(|tx| get_key(tx, id)?.ok_or_else(|| no_key(id)))
    }

    /// The key whose secret hashes to `hash` (hex SHA-256, as stored), if any: how a presented
    /// secret is found (the column is unique, and indexed as such).
    pub fn key_by_hash(&self, hash: &str) -> Result<Option<KeyRow>, ApiError> {
        self.read(|tx| {
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT {KEY_COLUMNS} FROM api_keys WHERE hash = ?1"
            ))?;
            Ok(stmt.query_row([hash], key_row).optional()?)
        })
    }

    // --- writes ------------------------------------------------------------------------------

    pub fn create_workspace(&self, new: NewWorkspace) -> Result<Written<WorkspaceRow>, ApiError> {
        let w = self.write(|tx| {
            if get_workspace(tx, &new.id)?.is_some() {
                return Err(ApiError::Conflict(format!(
                    "workspace {} already exists",
                    new.id
                )));
            }
            let t = now();
            tx.execute(
                "INSERT INTO workspaces (id, type, burst_per_second, sustained_per_minute,
                                         concurrent_requests, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
                rusqlite::params![
                    new.id,
                    new.kind.as_str(),
                    new.limits.burst_per_second,
                    new.limits.sustained_per_minute,
                    new.limits.concurrent_requests,
                    t
                ],
            )?;
            let row = get_workspace(tx, &new.id)?.ok_or_else(|| no_workspace(&new.id))?;
            self.changed(tx, &[(Kind::Workspace, &new.id)], row)
        })?;
        Ok(self.committed(w))
    }

    pub fn update_workspace(
        &self,
        id: &str,
        update: WorkspaceUpdate,
    ) -> Result<Written<WorkspaceRow>, ApiError> {
        let w = self.write(|tx| {
            let old = get_workspace(tx, id)?.ok_or_else(|| no_workspace(id))?;
            let kind = update.kind.unwrap_or(old.kind);
            let limits = update.limits.unwrap_or(old.limits);
            if kind == old.kind && limits == old.limits {
                return self.unchanged(tx, old);
            }
            if kind != old.kind {
                let env = Environment::for_workspace(kind);
                let mismatched: i64 = tx.query_row(
                    "SELECT COUNT(*) FROM api_keys WHERE workspace = ?1 AND environment != ?2",
                    rusqlite::params![id, env.as_str()],
                    |r| r.get(0),
                )?;
                if mismatched > 0 {
                    return Err(ApiError::Conflict(format!(
                        "workspace {id} still has {mismatched} key(s) of the {} environment; \
                         purge them before changing its type to {}",
                        Environment::for_workspace(old.kind).as_str(),
                        kind.as_str()
                    )));
                }
            }
            tx.execute(
                "UPDATE workspaces SET type = ?2, burst_per_second = ?3, sustained_per_minute = ?4,
                 concurrent_requests = ?5, updated_at = ?6 WHERE id = ?1",
                rusqlite::params![
                    id,
                    kind.as_str(),
                    limits.burst_per_second,
                    limits.sustained_per_minute,
                    limits.concurrent_requests,
                    now()
                ],
            )?;
            let row = get_workspace(tx, id)?.ok_or_else(|| no_workspace(id))?;
            self.changed(tx, &[(Kind::Workspace, id)], row)
        })?;
        Ok(self.committed(w))
    }

    pub fn delete_workspace(&self, id: &str) -> Result<Written<()>, ApiError> {
        let w = self.write(|tx| {
            get_workspace(tx, id)?.ok_or_else(|| no_workspace(id))?;
            let keys: i64 = tx.query_row(
                "SELECT COUNT(*) FROM api_keys WHERE workspace = ?1",
                [id],
                |r| r.get(0),
            )?;
            if keys > 0 {
                return Err(ApiError::Conflict(format!(
                    "workspace {id} still has {keys} key(s); purge them first \
                     (DELETE /v1/api-keys/{{id}}?purge=true)"
                )));
            }
            let clients: i64 = tx.query_row(
                "SELECT COUNT(*) FROM oauth_clients WHERE workspace = ?1",
                [id],
                |r| r.get(0),
            )?;
            if clients > 0 {
                return Err(ApiError::Conflict(format!(
                    "workspace {id} still has {clients} OAuth client(s); purge them first \
                     (DELETE /v1/oauth-clients/{{id}}?purge=true)"
                )));
            }
            tx.execute("DELETE FROM workspaces WHERE id = ?1", [id])?;
            self.changed(tx, &[(Kind::Workspace, id)], ())
        })?;
        Ok(self.committed(w))
    }

    pub fn create_key(&self, new: NewKey) -> Result<Written<CreatedKey>, ApiError> {
        let w = self.write(|tx| {
            let env = match &new.workspace {
                Some(ws) => {
                    let workspace = get_workspace(tx, ws)?.ok_or_else(|| {
                        ApiError::BadRequest(format!("workspace {ws} does not exist"))
                    })?;
                    let expected = Environment::for_workspace(workspace.kind);
                    match new.environment {
                        Some(e) if e != expected => {
                            return Err(ApiError::BadRequest(format!(
                                "environment {} does not match workspace {ws}, which is {} \
                                 (live workspaces take live keys, sandbox workspaces test keys)",
                                e.as_str(),
                                workspace.kind.as_str()
                            )));
                        }
                        _ => expected,
                    }
                }
                None => new.environment.ok_or_else(|| {
                    ApiError::BadRequest("an internal key needs \"environment\"".into())
                })?,
            };
            let created = insert_key(
                tx,
                &new.name,
                new.workspace.as_deref(),
                env,
                new.scopes.as_deref(),
                new.expires_at,
                new.restrictions.as_ref(),
            )?;
            let id = created.row.id.clone();
            self.changed(tx, &[(Kind::Key, &id)], created)
        })?;
        Ok(self.committed(w))
    }

    /// Revokes a key: it stays in the snapshot with `status: revoked`. Revoking a revoked key
    /// changes nothing.
    pub fn revoke_key(&self, id: &str) -> Result<Written<KeyRow>, ApiError> {
        let w = self.write(|tx| {
            let old = get_key(tx, id)?.ok_or_else(|| no_key(id))?;
            if old.revoked {
                return self.unchanged(tx, old);
            }
            tx.execute(
                "UPDATE api_keys SET status = 'revoked', revoked_at = ?2 WHERE id = ?1",
                rusqlite::params![id, now()],
            )?;
            let row = get_key(tx, id)?.ok_or_else(|| no_key(id))?;
            self.changed(tx, &[(Kind::Key, id)], row)
        })?;
        Ok(self.committed(w))
    }

    /// Deletes a key outright: it leaves the snapshot (keygate then treats its secret as
    /// unknown, which gets the same 401 as revoked).
    pub fn purge_key(&self, id: &str) -> Result<Written<()>, ApiError> {
        let w = self.write(|tx| {
            get_key(tx, id)?.ok_or_else(|| no_key(id))?;
            tx.execute("DELETE FROM api_keys WHERE id = ?1", [id])?;
            self.changed(tx, &[(Kind::Key, id)], ())
        })?;
        Ok(self.committed(w))
    }

    /// A new key with the old one's name, owner, environment, scopes and expiry; the old key
    /// expires at `old_expiry` (never later than it already would). One version.
    pub fn rotate_key(
        &self,
        id: &str,
        old_expiry: OldExpiry,
    ) -> Result<Written<Rotated>, ApiError> {
        let w = self.write(|tx| {
            let old = get_key(tx, id)?.ok_or_else(|| no_key(id))?;
            let t = now();
            if old.revoked {
                return Err(ApiError::Conflict(format!("key {id} is revoked")));
            }
            if old.expires_at.is_some_and(|e| e <= t) {
                return Err(ApiError::Conflict(format!("key {id} has expired")));
            }
            let until = match old_expiry {
                OldExpiry::In(secs) => t.saturating_add(i64::try_from(secs).unwrap_or(i64::MAX)),
                OldExpiry::At(at) => at,
            };
            let until = old.expires_at.map_or(until, |e| e.min(until));
            let new = insert_key(
                tx,
                &old.name,
                old.workspace.as_deref(),
                old.environment,
                old.scopes.as_deref(),
                old.expires_at,
                old.restrictions.as_ref(),
            )?;
            tx.execute(
                "UPDATE api_keys SET expires_at = ?2, rotated_to = ?3 WHERE id = ?1",
                rusqlite::params![id, until, new.row.id],
            )?;
            let old = get_key(tx, id)?.ok_or_else(|| no_key(id))?;
            let new_id = new.row.id.clone();
            let changes = [(Kind::Key, id), (Kind::Key, new_id.as_str())];
            self.changed(tx, &changes, Rotated { old, new })
        })?;
        Ok(self.committed(w))
    }

    /// Changes a key in place (its restrictions); one version, or none when nothing changed.
    pub fn update_key(&self, id: &str, update: KeyUpdate) -> Result<Written<KeyRow>, ApiError> {
        let w = self.write(|tx| {
            let old = get_key(tx, id)?.ok_or_else(|| no_key(id))?;
            let Some(restrictions) = update.restrictions else {
                return self.unchanged(tx, old);
            };
            if old.restrictions == restrictions {
                return self.unchanged(tx, old);
            }
            let json = restrictions
                .as_ref()
                .map(serde_json::to_string)
                .transpose()
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            tx.execute(
                "UPDATE api_keys SET restrictions = ?2 WHERE id = ?1",
                rusqlite::params![id, json],
            )?;
            let row = get_key(tx, id)?.ok_or_else(|| no_key(id))?;
            self.changed(tx, &[(Kind::Key, id)], row)
        })?;
        Ok(self.committed(w))
    }

    /// Adds request counts and keeps the latest `last_used`. Not part of the snapshot: the
    /// version does not change.
    pub fn record_usage(&self, entries: &[UsageEntry]) -> Result<UsageOutcome, ApiError> {
        self.write(|tx| {
            let mut stmt = tx.prepare_cached(
                "UPDATE api_keys SET requests = requests + ?2,
                   last_used = CASE WHEN ?3 IS NULL THEN last_used
                                    WHEN last_used IS NULL OR last_used < ?3 THEN ?3
                                    ELSE last_used END
                 WHERE id = ?1",
            )?;
            let mut out = UsageOutcome {
                updated: 0,
                unknown: Vec::new(),
            };
            for e in entries {
                if stmt.execute(rusqlite::params![e.key_id, e.requests, e.last_used])? == 0 {
                    out.unknown.push(e.key_id.clone());
                } else {
                    out.updated += 1;
                }
            }
            Ok(out)
        })
    }
}

/// Brings a database of an older schema up to this one, in place. Schema 2 added keys'
/// restrictions (NULL: unrestricted, as every key of schema 1 was); schema 3, workspaces' caps
/// on requests in flight (NULL: keygate's configured default).
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let has_column = |table: &str, column: &str| -> rusqlite::Result<bool> {
        conn.query_row(
            "SELECT COUNT(*) > 0 FROM pragma_table_info(?1) WHERE name = ?2",
            [table, column],
            |r| r.get(0),
        )
    };
    if !has_column("api_keys", "restrictions")? {
        conn.execute("ALTER TABLE api_keys ADD COLUMN restrictions TEXT", [])?;
    }
    if !has_column("workspaces", "concurrent_requests")? {
        conn.execute(
            "ALTER TABLE workspaces ADD COLUMN concurrent_requests INTEGER",
            [],
        )?;
    }
    conn.execute(
        "UPDATE meta SET value = ?1 WHERE name = 'schema' AND value < ?1",
        [SCHEMA_VERSION],
    )?;
    Ok(())
}

fn configure_reader(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "query_only", true)
}

pub(crate) fn read_meta(conn: &Connection, name: &str) -> rusqlite::Result<u64> {
    conn.query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| {
        r.get(0)
    })
}

fn no_workspace(id: &str) -> ApiError {
    ApiError::NotFound(format!("no workspace {id}"))
}

fn no_key(id: &str) -> ApiError {
    ApiError::NotFound(format!("no API key {id}"))
}

fn insert_key(
    tx: &Transaction,
    name: &str,
    workspace: Option<&str>,
    env: Environment,
    scopes: Option<&[String]>,
    expires_at: Option<i64>,
    restrictions: Option<&RestrictionsDoc>,
) -> Result<CreatedKey, ApiError> {
    let secret = secret::generate(match env {
        Environment::Live => Env::Live,
        Environment::Test => Env::Test,
    });
    let id = secret::generate_key_id();
    let hash = KeyHash::of(&secret).to_hex();
    let prefix = secret::display_prefix(&secret).to_owned();
    let scopes_json = scopes
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let restrictions_json = restrictions
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    tx.execute(
        "INSERT INTO api_keys (id, name, hash, prefix, workspace, internal, environment, scopes,
                               status, expires_at, created_at, restrictions)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'active', ?9, ?10, ?11)",
        rusqlite::params![
            id,
            name,
            hash,
            prefix,
            workspace,
            workspace.is_none(),
            env.as_str(),
            scopes_json,
            expires_at,
            now(),
            restrictions_json
        ],
    )?;
    let row = get_key(tx, &id)?.ok_or_else(|| no_key(&id))?;
    Ok(CreatedKey { row, secret })
}

fn workspace_row(r: &Row) -> rusqlite::Result<WorkspaceRow> {
    let kind: String = r.get(1)?;
    Ok(WorkspaceRow {
        id: r.get(0)?,
        kind: if kind == "live" {
            WorkspaceKind::Live
        } else {
            WorkspaceKind::Sandbox
        },
        limits: Limits {
            burst_per_second: r.get(2)?,
            sustained_per_minute: r.get(3)?,
            concurrent_requests: r.get(6)?,
        },
        created_at: r.get(4)?,
        updated_at: r.get(5)?,
    })
}

fn key_row(r: &Row) -> rusqlite::Result<KeyRow> {
    let scopes: Option<String> = r.get(7)?;
    let scopes = scopes
        .map(|s| serde_json::from_str::<Vec<String>>(&s))
        .transpose()
        .map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(7, rusqlite::types::Type::Text, e.into())
        })?;
    let restrictions: Option<String> = r.get(15)?;
    let restrictions = restrictions
        .map(|s| serde_json::from_str::<RestrictionsDoc>(&s))
        .transpose()
        .map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(15, rusqlite::types::Type::Text, e.into())
        })?;
    let env: String = r.get(6)?;
    let status: String = r.get(8)?;
    Ok(KeyRow {
        id: r.get(0)?,
        name: r.get(1)?,
        hash: r.get(2)?,
        prefix: r.get(3)?,
        workspace: r.get(4)?,
        environment: if env == "live" {
            Environment::Live
        } else {
            Environment::Test
        },
        scopes,
        revoked: status == "revoked",
        expires_at: r.get(9)?,
        created_at: r.get(10)?,
        revoked_at: r.get(11)?,
        rotated_to: r.get(12)?,
        last_used: r.get(13)?,
        requests: r.get(14)?,
        restrictions,
    })
}

fn query_workspaces<P: rusqlite::Params>(
    tx: &Transaction,
    tail: &str,
    params: P,
) -> Result<Vec<WorkspaceRow>, ApiError> {
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT {WORKSPACE_COLUMNS} FROM workspaces {tail}"
    ))?;
    let rows = stmt.query_map(params, workspace_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

fn query_keys<P: rusqlite::Params>(
    tx: &Transaction,
    tail: &str,
    params: P,
) -> Result<Vec<KeyRow>, ApiError> {
    let mut stmt = tx.prepare_cached(&format!("SELECT {KEY_COLUMNS} FROM api_keys {tail}"))?;
    let rows = stmt.query_map(params, key_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub(crate) fn get_workspace(tx: &Transaction, id: &str) -> Result<Option<WorkspaceRow>, ApiError> {
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT {WORKSPACE_COLUMNS} FROM workspaces WHERE id = ?1"
    ))?;
    Ok(stmt.query_row([id], workspace_row).optional()?)
}

fn get_key(tx: &Transaction, id: &str) -> Result<Option<KeyRow>, ApiError> {
    let mut stmt =
        tx.prepare_cached(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?1"))?;
    Ok(stmt.query_row([id], key_row).optional()?)
}

/// The store, shared with the HTTP side, which reaches it through the blocking pool.
#[derive(Clone)]
pub struct Db(pub Arc<Store>);

impl Db {
    /// Runs `f` on Tokio's blocking pool so SQLite (and its fsyncs) never stall the runtime.
    pub async fn call<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, ApiError> + Send + 'static,
    {
        let store = self.0.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| ApiError::Internal(format!("database task failed: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database written by the first schema (keys without restrictions, workspaces without
    /// caps) opens, gains both columns in place, keeps its keys unrestricted and its workspaces
    /// uncapped, and is marked with this schema.
    #[test]
    fn a_schema_1_database_gains_restrictions_and_caps_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            let restrictions = "    restrictions TEXT,                  -- JSON {ips, referrers, endpoints}; NULL: unrestricted\n";
            let cap = ",\n    concurrent_requests  INTEGER            -- cap on requests in flight per host; NULL: keygate's default\n";
            assert!(SCHEMA.contains(restrictions) && SCHEMA.contains(cap));
            let schema_1 = SCHEMA.replace(restrictions, "").replace(cap, "\n");
            conn.execute_batch(&schema_1).unwrap();
            conn.execute_batch(
                "INSERT INTO workspaces VALUES ('ws', 'live', NULL, NULL, 1, 1);
                 INSERT INTO api_keys (id, name, hash, prefix, workspace, internal, environment,
                                       scopes, status, created_at)
                 VALUES ('key_old', 'old', 'aa', 'sk_live_abcd', 'ws', 0, 'live', '[]',
                         'active', 1);",
            )
            .unwrap();
        }
        let store = Store::open(&path, 10).unwrap();
        let keys = store.keys(None).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].restrictions, None);
        assert_eq!(
            store.workspaces().unwrap()[0].limits.concurrent_requests,
            None
        );
        let conn = Connection::open(&path).unwrap();
        assert_eq!(read_meta(&conn, "schema").unwrap(), SCHEMA_VERSION as u64);
        // Opening again changes nothing.
        drop(store);
        Store::open(&path, 10).unwrap();
    }

    /// The schema before OAuth clients: everything up to schema 4's tables.
    fn schema_3() -> &'static str {
        let end = SCHEMA
            .find("-- Schema 4:")
            .expect("schema 4's tables are marked");
        &SCHEMA[..end]
    }

    /// A database of schema 3 with history opens, gains the tables of clients and signing keys
    /// in place, keeps its rows and its change log, and its first signing key is a version of
    /// its own, so that a delta from the version a keygate holds carries the key.
    #[test]
    fn a_schema_3_database_gains_clients_and_a_signing_key_as_a_new_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(schema_3()).unwrap();
            conn.execute_batch(
                "UPDATE meta SET value = 3 WHERE name = 'schema';
                 UPDATE meta SET value = 2 WHERE name = 'version';
                 INSERT INTO workspaces VALUES ('ws', 'live', NULL, NULL, 1, 1, NULL);
                 INSERT INTO api_keys (id, name, hash, prefix, workspace, internal, environment,
                                       scopes, status, created_at)
                 VALUES ('key_old', 'old', 'aa', 'sk_live_abcd', 'ws', 0, 'live', '[]',
                         'active', 1);
                 INSERT INTO changes VALUES (1, 'workspace', 'ws'), (2, 'key', 'key_old');",
            )
            .unwrap();
            let tables: i64 = conn
                .query_row(
                    "SELECT COUNT(*) FROM sqlite_master
                     WHERE name IN ('oauth_clients', 'signing_keys', 'trust_changes')",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(tables, 0, "schema 3 has none of schema 4's tables");
        }
        let store = Store::open(&path, 10).unwrap();
        assert!(!store.created);
        assert_eq!(store.current_version(), 2);
        store.ensure_signing_key().unwrap();
        assert_eq!(store.current_version(), 3);
        let keys = store.signing_keys().unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].state, "current");
        let DeltaOutcome::Changes(d) = store.delta(1).unwrap() else {
            panic!("a delta from version 1");
        };
        assert_eq!(d.version, 3);
        assert_eq!(
            d.key_upserts
                .iter()
                .map(|k| k.id.as_str())
                .collect::<Vec<_>>(),
            ["key_old"]
        );
        let published = d.signing_keys.expect("the new key is in the delta");
        assert_eq!(published.len(), 1);
        assert_eq!(published[0].kid, keys[0].kid);
        assert!(d.client_upserts.is_empty() && d.client_removes.is_empty());
        let conn = Connection::open(&path).unwrap();
        assert_eq!(read_meta(&conn, "schema").unwrap(), SCHEMA_VERSION as u64);
        // A second start keeps the key and the version.
        drop(store);
        let store = Store::open(&path, 10).unwrap();
        store.ensure_signing_key().unwrap();
        assert_eq!(store.current_version(), 3);
        assert_eq!(store.signing_keys().unwrap()[0].kid, keys[0].kid);
    }

    /// Version 0 of an upgraded database may be held by a keygate (one that synced a control
    /// plane with nothing in it yet): the first key still takes a version. Version 0 of a
    /// database this process made holds the key from the start.
    #[test]
    fn the_first_signing_key_takes_a_version_unless_the_database_is_new() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old.sqlite");
        Connection::open(&old)
            .unwrap()
            .execute_batch(schema_3())
            .unwrap();
        let store = Store::open(&old, 10).unwrap();
        store.ensure_signing_key().unwrap();
        assert_eq!(store.current_version(), 1);
        assert!(matches!(
            store.delta(0).unwrap(),
            DeltaOutcome::Changes(Delta { signing_keys: Some(ref k), .. }) if k.len() == 1
        ));

        let new = dir.path().join("new.sqlite");
        let store = Store::open(&new, 10).unwrap();
        assert!(store.created);
        store.ensure_signing_key().unwrap();
        assert_eq!(store.current_version(), 0);
        let Ok(full) = store.full(|_| false).unwrap() else {
            panic!("a full state");
        };
        assert_eq!(full.signing_keys.len(), 1);
    }
}

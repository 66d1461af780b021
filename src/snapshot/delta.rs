//! Deltas: reading a change from one snapshot version to a later one, and applying it.
//!
//! [`Snapshot::apply`] makes a new snapshot and leaves the old one serving until the caller swaps.
//! It shares everything the delta does not touch with the old snapshot: the index shards it
//! does not change, the workspaces, the interned scope sets, the keys' text. A one-key delta on
//! a million keys therefore costs well under a millisecond. Only a workspace that changes or
//! goes costs a pass over all keys (to re-link or drop the keys it owns).
//!
//! The rule throughout: applying a delta gives the snapshot a full load of the new version
//! would give, skipped entries included. In particular an upsert that cannot be used (it does
//! not parse, fails validation, names a missing workspace) still removes the entry it replaces:
//! a control plane that revokes a key by upserting it must never leave the old, active version
//! in place because the new one had a typo.

use super::index::{self, IdIndex, KeyIndex};
use super::invalid::InvalidEntry;
use super::load::{Entries, SnapshotError};
use super::model::{
    self, EntryKind, KeyEntry, Owner, Skipped, Skips, Snapshot, TextArena, Workspace,
};
use super::raw::Raw;
use super::trust::{self, Clients, SigningKeys};
use super::wire::{Changes, ClientDoc, DeltaDoc, KeyDoc, SigningKeyDoc, WorkspaceDoc};
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

/// A delta ready to apply: its upserts parsed entry by entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Delta {
    pub from: u64,
    pub version: u64,
    pub workspaces: Changes<WorkspaceDoc>,
    pub keys: Changes<KeyDoc>,
    /// The whole new set of signing keys, when the delta changes it.
    pub signing_keys: Option<Vec<SigningKeyDoc>>,
    pub clients: Changes<ClientDoc>,
    /// Upserts that did not fit the schema, with why. They are skipped, and the entries with
    /// their ids are removed.
    pub unreadable: Vec<Skipped>,
    /// Where the delta came from, for error messages.
    pub origin: String,
}

impl From<DeltaDoc> for Delta {
    fn from(doc: DeltaDoc) -> Delta {
        Delta {
            from: doc.from,
            version: doc.version,
            workspaces: doc.workspaces,
            keys: doc.keys,
            signing_keys: doc.signing_keys,
            clients: doc.clients,
            unreadable: vec![],
            origin: "delta".into(),
        }
    }
}

/// Parses a delta document (JSON); `origin` names where it came from in error messages.
///
/// The document as a whole must parse, with `from` and `version`, only the fields of
/// [`DeltaDoc`], and every removal a string; otherwise it is rejected whole. An upserted entry
/// that does not fit the schema is kept in [`Delta::unreadable`] — unless it has no id, since
/// then there is no telling which entry it replaces, and the delta is rejected whole.
pub fn parse_delta(bytes: &[u8], origin: &str) -> Result<Delta, SnapshotError> {
    let invalid = |message: String| SnapshotError::Invalid {
        origin: origin.to_owned(),
        message,
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let mut anonymous = 0usize;
    let delta = DeltaSeed {
        origin,
        anonymous: &mut anonymous,
    }
    .deserialize(&mut de)
    .map_err(|e| invalid(e.to_string()))?;
    de.end().map_err(|e| invalid(e.to_string()))?;
    if anonymous > 0 {
        return Err(invalid(format!(
            "{anonymous} upserted entries have no string `id`, so which entries they replace is unknown"
        )));
    }
    Ok(delta)
}

struct DeltaSeed<'a> {
    origin: &'a str,
    anonymous: &'a mut usize,
}

impl<'de> DeserializeSeed<'de> for DeltaSeed<'_> {
    type Value = Delta;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Delta, D::Error> {
        d.deserialize_map(self)
    }
}

const DELTA_FIELDS: &[&str] = &[
    "from",
    "version",
    "workspaces",
    "keys",
    "signing_keys",
    "clients",
];
const CHANGES_FIELDS: &[&str] = &["upsert", "remove"];

impl<'de> Visitor<'de> for DeltaSeed<'_> {
    type Value = Delta;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a delta: a map with `from`, `version`, `workspaces` and `keys`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Delta, A::Error> {
        let mut delta = Delta {
            from: 0,
            version: 0,
            workspaces: Changes::default(),
            keys: Changes::default(),
            signing_keys: None,
            clients: Changes::default(),
            unreadable: vec![],
            origin: self.origin.to_owned(),
        };
        let (mut from, mut version) = (None, None);
        let mut seen = HashSet::new();
        while let Some(field) = map.next_key::<String>()? {
            if !seen.insert(field.clone()) {
                return Err(de::Error::custom(format_args!("duplicate field `{field}`")));
            }
            match field.as_str() {
                "from" => from = Some(map.next_value::<u64>()?),
                "version" => version = Some(map.next_value::<u64>()?),
                "workspaces" => map.next_value_seed(ChangesSeed {
                    kind: EntryKind::Workspace,
                    delta: &mut delta,
                    anonymous: self.anonymous,
                })?,
                "keys" => map.next_value_seed(ChangesSeed {
                    kind: EntryKind::Key,
                    delta: &mut delta,
                    anonymous: self.anonymous,
                })?,
                "clients" => map.next_value_seed(ChangesSeed {
                    kind: EntryKind::Client,
                    delta: &mut delta,
                    anonymous: self.anonymous,
                })?,
                "signing_keys" => {
                    let mut set = vec![];
                    let unreadable = &mut delta.unreadable;
                    map.next_value_seed(Entries(|raw: Raw<'_>, position| {
                        match SigningKeyDoc::deserialize(&raw) {
                            Ok(doc) => set.push(doc),
                            Err(e) => unreadable.push(Skipped {
                                kind: EntryKind::SigningKey,
                                id: raw.kid_label(position),
                                reason: InvalidEntry::Unreadable(e.to_string()),
                            }),
                        }
                    }))?;
                    delta.signing_keys = Some(set);
                }
                other => return Err(de::Error::unknown_field(other, DELTA_FIELDS)),
            }
        }
        delta.from = from.ok_or_else(|| de::Error::missing_field("from"))?;
        delta.version = version.ok_or_else(|| de::Error::missing_field("version"))?;
        Ok(delta)
    }
}

/// `{"upsert": [...], "remove": [...]}` for one kind of entry.
struct ChangesSeed<'a> {
    kind: EntryKind,
    delta: &'a mut Delta,
    anonymous: &'a mut usize,
}

impl<'de> DeserializeSeed<'de> for ChangesSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ChangesSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map with `upsert` and `remove`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let ChangesSeed {
            kind,
            delta,
            anonymous,
        } = self;
        let mut seen = HashSet::new();
        while let Some(field) = map.next_key::<String>()? {
            if !seen.insert(field.clone()) {
                return Err(de::Error::custom(format_args!("duplicate field `{field}`")));
            }
            match field.as_str() {
                "upsert" => map.next_value_seed(Entries(|raw: Raw<'_>, _position| {
                    let read = match kind {
                        EntryKind::Workspace => WorkspaceDoc::deserialize(&raw)
                            .map(|doc| delta.workspaces.upsert.push(doc)),
                        EntryKind::Key => KeyDoc::<String>::deserialize(&raw)
                            .map(|doc| delta.keys.upsert.push(doc)),
                        EntryKind::Client => {
                            ClientDoc::deserialize(&raw).map(|doc| delta.clients.upsert.push(doc))
                        }
                        EntryKind::SigningKey => {
                            unreachable!("signing keys come as a whole set, not as changes")
                        }
                    };
                    if let Err(e) = read {
                        match raw.id() {
                            Some(id) => delta.unreadable.push(Skipped {
                                kind,
                                id: id.to_owned(),
                                reason: InvalidEntry::Unreadable(e.to_string()),
                            }),
                            None => *anonymous += 1,
                        }
                    }
                }))?,
                "remove" => {
                    let ids = map.next_value::<Vec<String>>()?;
                    match kind {
                        EntryKind::Workspace => delta.workspaces.remove.extend(ids),
                        EntryKind::Key => delta.keys.remove.extend(ids),
                        EntryKind::Client => delta.clients.remove.extend(ids),
                        EntryKind::SigningKey => {
                            unreachable!("signing keys come as a whole set, not as changes")
                        }
                    }
                }
                other => return Err(de::Error::unknown_field(other, CHANGES_FIELDS)),
            }
        }
        Ok(())
    }
}

/// Workspaces by the address of their `Arc`: the ones a delta replaced or removed, with what
/// takes their place.
type Moved = HashMap<usize, Option<Arc<Workspace>>, index::IdBuild>;

impl Snapshot {
    /// The snapshot `delta` leads to, or why it does not apply: its `from` must be this
    /// snapshot's version and its `version` later than `from`.
    ///
    /// Removals come first, then upserts, so an entry both removed and upserted ends up
    /// upserted. An upsert replaces the entry with its id whole (a key's hash may change: the
    /// old hash stops working). Keys of a removed workspace are dropped; keys of a replaced one
    /// see the new version (type, limits). [`Snapshot::skipped`] of the result lists what this
    /// delta left out.
    pub fn apply(&self, delta: &Delta) -> Result<Snapshot, SnapshotError> {
        let invalid = |message: String| SnapshotError::Invalid {
            origin: delta.origin.clone(),
            message,
        };
        if delta.from != self.version {
            return Err(invalid(format!(
                "delta from version {} does not apply to snapshot version {}",
                delta.from, self.version
            )));
        }
        if delta.version <= delta.from {
            return Err(invalid(format!(
                "delta to version {} does not come after its base version {}",
                delta.version, delta.from
            )));
        }
        let mut skips = Skips::default();
        for s in &delta.unreadable {
            skips.add(s.kind, s.id.clone(), s.reason.clone());
        }
        let (workspaces, moved) = self.apply_workspaces(delta, &mut skips);
        let signing_keys = match &delta.signing_keys {
            None => self.signing_keys.clone(),
            Some(docs) => {
                let mut keys = SigningKeys::default();
                trust::add_signing_keys(&mut keys, docs, &mut skips);
                Arc::new(keys)
            }
        };
        let clients = self.apply_clients(delta, &workspaces, !moved.is_empty(), &mut skips);
        let mut next = Snapshot {
            version: delta.version,
            keys: self.keys.clone(),
            ids: self.ids.clone(),
            workspaces,
            scope_sets: self.scope_sets.clone(),
            skips,
            signing_keys,
            clients,
            generation: model::next_generation(),
        };
        next.apply_keys(delta);
        if !moved.is_empty() {
            next.rehome(&moved);
        }
        if index::outgrown(next.keys.len(), next.keys.bits()) {
            next.reindex();
        }
        Ok(next)
    }

    fn apply_workspaces(
        &self,
        delta: &Delta,
        skips: &mut Skips,
    ) -> (Arc<model::Workspaces>, Moved) {
        let mut map = self.workspaces.clone();
        if delta.workspaces.upsert.is_empty()
            && delta.workspaces.remove.is_empty()
            && !delta
                .unreadable
                .iter()
                .any(|s| s.kind == EntryKind::Workspace)
        {
            return (map, Moved::default());
        }
        let ws = Arc::make_mut(&mut map);
        let unreadable = delta
            .unreadable
            .iter()
            .filter(|s| s.kind == EntryKind::Workspace);
        for id in delta
            .workspaces
            .remove
            .iter()
            .chain(unreadable.map(|s| &s.id))
        {
            ws.remove(id.as_str());
        }
        let mut seen = HashSet::new();
        for doc in &delta.workspaces.upsert {
            if !seen.insert(doc.id.as_str()) {
                skips.add(
                    EntryKind::Workspace,
                    doc.id.clone(),
                    InvalidEntry::DuplicateId,
                );
                continue;
            }
            match model::make_workspace(doc.clone()) {
                Ok(w) => {
                    // Unchanged: keep the very same workspace, so its keys need no re-linking.
                    let same = self
                        .workspaces
                        .get(&w.id)
                        .filter(|old| (old.kind, old.limits) == (w.kind, w.limits));
                    let w = same.cloned().unwrap_or_else(|| Arc::new(w));
                    ws.insert(w.id.clone(), w);
                }
                Err((id, reason)) => {
                    ws.remove(id.as_str());
                    skips.add(EntryKind::Workspace, id, reason);
                }
            }
        }
        let moved = self
            .workspaces
            .values()
            .filter_map(|old| match ws.get(&old.id) {
                Some(new) if Arc::ptr_eq(new, old) => None,
                new => Some((Arc::as_ptr(old) as usize, new.cloned())),
            })
            .collect();
        (map, moved)
    }

    /// The clients after `delta`: removals, then upserts (each checked against the new
    /// workspaces), then, when workspaces changed, the clients of removed ones dropped.
    fn apply_clients(
        &self,
        delta: &Delta,
        workspaces: &model::Workspaces,
        workspaces_changed: bool,
        skips: &mut Skips,
    ) -> Arc<Clients> {
        let mut unreadable = delta
            .unreadable
            .iter()
            .filter(|s| s.kind == EntryKind::Client)
            .peekable();
        let mut map = self.clients.clone();
        if delta.clients.is_empty() && unreadable.peek().is_none() && !workspaces_changed {
            return map;
        }
        let clients = Arc::make_mut(&mut map);
        for id in delta.clients.remove.iter().chain(unreadable.map(|s| &s.id)) {
            clients.remove(id.as_str());
        }
        let mut seen = HashSet::new();
        for doc in &delta.clients.upsert {
            if !seen.insert(doc.id.as_str()) {
                skips.add(EntryKind::Client, doc.id.clone(), InvalidEntry::DuplicateId);
                continue;
            }
            clients.remove(doc.id.as_str());
            match trust::make_client(doc, |w| workspaces.contains_key(w)) {
                Ok(c) => {
                    clients.insert(doc.id.as_str().into(), c);
                }
                Err(reason) => skips.add(EntryKind::Client, doc.id.clone(), reason),
            }
        }
        if workspaces_changed {
            clients.retain(|id, c| {
                let keep = workspaces.contains_key(&c.workspace);
                if !keep {
                    let reason = InvalidEntry::RemovedWorkspace(c.workspace.to_string());
                    skips.add(EntryKind::Client, id.to_string(), reason);
                }
                keep
            });
        }
        map
    }

    /// Removes the key with this id, if any.
    fn remove_key(&mut self, id: &str) {
        if let Some(old) = self.ids.remove(id) {
            self.keys.remove(&old.hash);
        }
    }

    fn add_key(&mut self, entry: Arc<KeyEntry>) {
        self.ids.insert(entry.clone());
        self.keys.insert(entry);
    }

    fn apply_keys(&mut self, delta: &Delta) {
        let unreadable = delta.unreadable.iter().filter(|s| s.kind == EntryKind::Key);
        for id in delta.keys.remove.iter().chain(unreadable.map(|s| &s.id)) {
            self.remove_key(id);
        }
        // Every old version goes before any new one comes in, so that a hash can pass from
        // one key to another within one delta.
        let mut seen = HashSet::new();
        let mut docs = vec![];
        for doc in &delta.keys.upsert {
            if seen.insert(doc.id.as_str()) {
                self.remove_key(&doc.id);
                docs.push(doc);
            } else {
                self.skips
                    .add(EntryKind::Key, doc.id.clone(), InvalidEntry::DuplicateId);
            }
        }
        let (mut arena, mut scratch) = (TextArena::new(), Vec::new());
        let mut restriction_sets = model::RestrictionInterner::default();
        let mut made = Vec::with_capacity(docs.len());
        let mut owners = Vec::with_capacity(docs.len());
        for doc in docs {
            let made_key = model::make_key(
                doc,
                &mut self.scope_sets,
                &mut restriction_sets,
                &mut scratch,
                &mut arena,
                &mut made,
            );
            match made_key {
                Ok(()) => owners.push(doc.workspace.as_deref()),
                Err(reason) => self.skips.add(EntryKind::Key, doc.id.clone(), reason),
            }
        }
        arena.seal(&mut made);
        for (mut entry, ws) in made.into_iter().zip(owners) {
            if let Some(ws) = ws {
                let Some(w) = self.workspaces.get(ws) else {
                    let reason = InvalidEntry::UnknownWorkspace(ws.to_owned());
                    self.skips
                        .add(EntryKind::Key, entry.id().to_owned(), reason);
                    continue;
                };
                model::set_owner(&mut entry, Owner::Workspace(w.clone()));
            }
            if self.keys.contains(&entry.hash) {
                let id = entry.id().to_owned();
                self.skips
                    .add(EntryKind::Key, id, InvalidEntry::DuplicateHash);
                continue;
            }
            self.add_key(entry);
        }
    }

    /// Points the keys of replaced workspaces at the new versions, and drops those of removed
    /// ones. A pass over every key, but only when a delta changes a workspace.
    fn rehome(&mut self, moved: &Moved) {
        let mut rehomed = vec![];
        let mut dropped = vec![];
        for e in self.keys.iter() {
            let Owner::Workspace(w) = &e.owner else {
                continue;
            };
            match moved.get(&(Arc::as_ptr(w) as usize)) {
                None => {}
                Some(Some(new)) => rehomed.push(model::rehome(e, Owner::Workspace(new.clone()))),
                Some(None) => dropped.push((e.id().to_owned(), w.id.clone())),
            }
        }
        for e in rehomed {
            self.ids.replace(e.clone());
            self.keys.replace(e);
        }
        for (id, ws) in dropped {
            self.remove_key(&id);
            let reason = InvalidEntry::RemovedWorkspace(ws.to_string());
            self.skips.add(EntryKind::Key, id, reason);
        }
    }

    /// Rebuilds the indexes with more shards, once deltas have grown the snapshot well past
    /// the size they were made for.
    fn reindex(&mut self) {
        let entries: Vec<Arc<KeyEntry>> = self.keys.iter().cloned().collect();
        let (keys, ids): (KeyIndex, IdIndex) =
            index::build(entries, |_, _| unreachable!("an index holds no duplicates"));
        (self.keys, self.ids) = (keys, ids);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::KeyHash;
    use crate::snapshot::{Format, KeyStatus, LimitsDoc, WorkspaceKind, parse, write_json};
    use serde_json::json;

    fn hash(secret: &str) -> String {
        KeyHash::of(secret).to_hex()
    }

    /// Version 3: live `ws_a` (k1 with scopes, k2 legacy), sandbox `ws_b` (k3), internal `ki`.
    fn base() -> Snapshot {
        let doc = json!({
            "version": 3,
            "workspaces": [
                {"id": "ws_a", "type": "live"},
                {"id": "ws_b", "type": "sandbox", "limits": {"burst_per_second": 7}},
            ],
            "keys": [
                {"id": "k1", "hash": hash("s1"), "workspace": "ws_a", "scopes": ["a:read"], "name": "one"},
                {"id": "k2", "hash": hash("s2"), "workspace": "ws_a"},
                {"id": "k3", "hash": hash("s3"), "workspace": "ws_b", "scopes": [],
                 "restrictions": {"ips": ["10.0.0.0/8"]}},
                {"id": "ki", "hash": hash("si"), "internal": true, "scopes": ["*"]},
            ],
        });
        parse(doc.to_string().as_bytes(), Format::Json, "base").unwrap()
    }

    fn delta(from: u64, version: u64, body: serde_json::Value) -> Delta {
        let mut doc = body;
        doc["from"] = from.into();
        doc["version"] = version.into();
        parse_delta(doc.to_string().as_bytes(), "test").unwrap()
    }

    fn key<'s>(s: &'s Snapshot, secret: &str) -> Option<&'s Arc<KeyEntry>> {
        s.key(&KeyHash::of(secret))
    }

    fn owner(e: &KeyEntry) -> &str {
        match &e.owner {
            Owner::Workspace(w) => &w.id,
            Owner::Internal => "(internal)",
        }
    }

    fn reasons(s: &Snapshot) -> Vec<String> {
        s.skipped().iter().map(|s| s.to_string()).collect()
    }

    /// Everything a snapshot holds, in a comparable form.
    fn dump(s: &Snapshot) -> (u64, Vec<String>, Vec<String>) {
        let mut ws: Vec<String> = s
            .workspaces
            .values()
            .map(|w| format!("{} {:?} {:?}", w.id, w.kind, w.limits))
            .collect();
        ws.sort();
        let mut keys: Vec<String> = s
            .keys
            .iter()
            .map(|k| {
                assert!(Arc::ptr_eq(s.key_by_id(k.id()).unwrap(), k));
                if let Owner::Workspace(w) = &k.owner {
                    assert!(Arc::ptr_eq(s.workspace(&w.id).unwrap(), w), "{}", k.id());
                }
                format!(
                    "{} {:?} {} {} {:?} {} {:?} {:?}",
                    k.id(),
                    k.name(),
                    k.hash.to_hex(),
                    owner(k),
                    k.scopes_header(),
                    k.revoked(),
                    k.expires_at(),
                    s.restrictions(k),
                )
            })
            .collect();
        keys.sort();
        assert_eq!(keys.len(), s.key_count());
        assert_eq!(
            s.restricted_keys(),
            s.keys
                .iter()
                .filter(|k| s.restrictions(k).is_some())
                .count()
        );
        (s.version(), ws, keys)
    }

    #[test]
    fn the_wire_form_reads_back_as_written() {
        let doc = DeltaDoc {
            from: 3,
            version: 5,
            workspaces: Changes {
                upsert: vec![WorkspaceDoc {
                    id: "ws_c".into(),
                    kind: WorkspaceKind::Live,
                    limits: Some(LimitsDoc {
                        burst_per_second: Some(9),
                        sustained_per_minute: None,
                        concurrent_requests: None,
                    }),
                }],
                remove: vec!["ws_x".into()],
            },
            keys: Changes {
                upsert: vec![KeyDoc {
                    id: "k9".into(),
                    name: "nine".into(),
                    hash: hash("s9"),
                    workspace: Some("ws_c".into()),
                    internal: false,
                    scopes: Some(Some(vec!["a:*".into()])),
                    status: KeyStatus::Revoked,
                    expires_at: Some("2030-01-01T00:00:00Z".into()),
                    restrictions: None,
                }],
                remove: vec!["key_1".into()],
            },
            signing_keys: Some(vec![SigningKeyDoc {
                kid: "kid_1".into(),
                alg: crate::snapshot::SigningAlgorithm::EdDSA,
                public_key: PUBLIC_KEY.into(),
            }]),
            clients: Changes {
                upsert: vec![ClientDoc {
                    id: "oc_1".into(),
                    workspace: "ws_c".into(),
                    status: KeyStatus::Revoked,
                    expires_at: None,
                }],
                remove: vec!["oc_2".into()],
            },
        };
        let json = serde_json::to_string(&doc).unwrap();
        assert!(json.starts_with(r#"{"from":3,"version":5,"workspaces":{"upsert":[{"id":"ws_c""#));
        let parsed = parse_delta(json.as_bytes(), "delta").unwrap();
        assert_eq!(parsed, Delta::from(doc.clone()));
        assert_eq!(serde_json::from_str::<DeltaDoc>(&json).unwrap(), doc);
        // Both lists and both kinds are optional.
        let bare = parse_delta(br#"{"from":1,"version":2}"#, "d").unwrap();
        assert_eq!((bare.from, bare.version, bare.keys.upsert.len()), (1, 2, 0));
    }

    #[test]
    fn a_delta_that_does_not_parse_is_rejected_whole() {
        for (doc, want) in [
            (r#"{"version":2}"#, "missing field `from`"),
            (r#"{"from":1}"#, "missing field `version`"),
            (
                r#"{"from":1,"version":2,"extra":1}"#,
                "unknown field `extra`",
            ),
            (
                r#"{"from":1,"version":2,"keys":{"upsert":[],"delete":[]}}"#,
                "unknown field `delete`",
            ),
            (
                r#"{"from":1,"version":2,"keys":{"remove":[5]}}"#,
                "invalid type: integer `5`",
            ),
            (
                r#"{"from":1,"version":2,"keys":[]}"#,
                "invalid type: sequence",
            ),
            (
                r#"{"from":1,"version":2,"from":1}"#,
                "duplicate field `from`",
            ),
            (r#"{"from":-1,"version":2}"#, "invalid value: integer `-1`"),
            (r#"{"from":1,"version":2} x"#, "trailing characters"),
            (
                r#"{"from":1,"version":2,"keys":{"upsert":[{"hash":"h"}]}}"#,
                "no string `id`",
            ),
            (
                r#"{"from":1,"version":2,"workspaces":{"upsert":[{"id":4}]}}"#,
                "no string `id`",
            ),
        ] {
            let err = parse_delta(doc.as_bytes(), "cp").unwrap_err().to_string();
            assert!(err.starts_with("cp: invalid snapshot: "), "{err}");
            assert!(err.contains(want), "{doc}: {err}");
        }
    }

    #[test]
    fn a_delta_must_start_at_this_version_and_move_forward() {
        let s = base();
        for (from, version, want) in [
            (
                2,
                4,
                "delta from version 2 does not apply to snapshot version 3",
            ),
            (
                4,
                5,
                "delta from version 4 does not apply to snapshot version 3",
            ),
            (
                3,
                3,
                "delta to version 3 does not come after its base version 3",
            ),
            (
                3,
                2,
                "delta to version 2 does not come after its base version 3",
            ),
        ] {
            let err = s.apply(&delta(from, version, json!({}))).unwrap_err();
            assert_eq!(err.to_string(), format!("test: invalid snapshot: {want}"));
        }
        let next = s.apply(&delta(3, 9, json!({}))).unwrap();
        assert_eq!(
            (next.version(), dump(&next).1, dump(&next).2),
            (9, dump(&s).1, dump(&s).2)
        );
    }

    #[test]
    fn revoking_by_upsert_leaves_the_old_snapshot_serving() {
        let s = base();
        let d = delta(
            3,
            4,
            json!({"keys": {"upsert": [
                {"id": "k1", "hash": hash("s1"), "workspace": "ws_a", "scopes": ["a:read"], "status": "revoked"}
            ]}}),
        );
        let next = s.apply(&d).unwrap();
        assert!(key(&next, "s1").unwrap().revoked());
        assert!(
            !key(&s, "s1").unwrap().revoked(),
            "the old snapshot is untouched"
        );
        assert_eq!(
            (next.version(), next.key_count(), next.skipped_count()),
            (4, 4, 0)
        );
        // Keys the delta does not name are the very same entries.
        assert!(Arc::ptr_eq(
            key(&s, "s2").unwrap(),
            key(&next, "s2").unwrap()
        ));
    }

    #[test]
    fn a_reissued_secret_replaces_the_old_hash() {
        let s = base();
        let d = delta(
            3,
            4,
            json!({"keys": {"upsert": [
                {"id": "k1", "hash": hash("s1-new"), "workspace": "ws_a", "scopes": ["a:*"], "name": "renamed"}
            ]}}),
        );
        let next = s.apply(&d).unwrap();
        assert!(key(&next, "s1").is_none(), "the old secret stops working");
        let k = key(&next, "s1-new").unwrap();
        assert_eq!((k.id(), k.name(), owner(k)), ("k1", "renamed", "ws_a"));
        assert_eq!(k.scopes_header(), "a:*");
        assert!(Arc::ptr_eq(next.key_by_id("k1").unwrap(), k));
        assert_eq!(next.key_count(), 4);
        assert!(key(&s, "s1").is_some() && key(&s, "s1-new").is_none());
    }

    #[test]
    fn removals_and_new_keys() {
        let s = base();
        let d = delta(
            3,
            4,
            json!({"keys": {
                "remove": ["k2", "k3", "no-such-key"],
                "upsert": [{"id": "k4", "hash": hash("s4"), "internal": true}],
            }}),
        );
        let next = s.apply(&d).unwrap();
        assert!(key(&next, "s2").is_none() && next.key_by_id("k2").is_none());
        assert!(key(&next, "s3").is_none());
        assert_eq!(owner(key(&next, "s4").unwrap()), "(internal)");
        assert_eq!((next.key_count(), next.restricted_keys()), (3, 0));
        assert_eq!(s.restricted_keys(), 1);
        // Removed and upserted in one delta: upserted.
        let d = delta(
            3,
            4,
            json!({"keys": {
                "remove": ["k2"],
                "upsert": [{"id": "k2", "hash": hash("s2"), "workspace": "ws_b"}],
            }}),
        );
        assert_eq!(owner(key(&s.apply(&d).unwrap(), "s2").unwrap()), "ws_b");
    }

    #[test]
    fn removing_a_workspace_drops_its_keys() {
        let s = base();
        let next = s
            .apply(&delta(3, 4, json!({"workspaces": {"remove": ["ws_a"]}})))
            .unwrap();
        assert!(next.workspace("ws_a").is_none());
        assert!(key(&next, "s1").is_none() && key(&next, "s2").is_none());
        assert!(next.key_by_id("k1").is_none());
        assert!(key(&next, "s3").is_some() && key(&next, "si").is_some());
        assert_eq!(next.skipped_count(), 2);
        let mut r = reasons(&next);
        r.sort();
        assert_eq!(
            r,
            [
                "key k1: workspace \"ws_a\" was removed",
                "key k2: workspace \"ws_a\" was removed"
            ]
        );
        // Removed and re-added in the same delta: the keys stay.
        let d = delta(
            3,
            4,
            json!({"workspaces": {
                "remove": ["ws_a"],
                "upsert": [{"id": "ws_a", "type": "live"}],
            }}),
        );
        let next = s.apply(&d).unwrap();
        assert_eq!((next.key_count(), next.skipped_count()), (4, 0));
        assert!(Arc::ptr_eq(
            key(&s, "s1").unwrap(),
            key(&next, "s1").unwrap()
        ));
    }

    #[test]
    fn a_changed_workspace_is_seen_through_all_its_keys() {
        let s = base();
        let d = delta(
            3,
            4,
            json!({"workspaces": {"upsert": [
                {"id": "ws_a", "type": "sandbox", "limits": {"sustained_per_minute": 42}},
            ]}}),
        );
        let next = s.apply(&d).unwrap();
        let w = next.workspace("ws_a").unwrap();
        assert_eq!(
            (w.kind, w.limits.sustained_per_minute),
            (WorkspaceKind::Sandbox, std::num::NonZeroU32::new(42))
        );
        for secret in ["s1", "s2"] {
            let Owner::Workspace(kw) = &key(&next, secret).unwrap().owner else {
                panic!()
            };
            assert!(Arc::ptr_eq(kw, w), "{secret}");
        }
        let k1 = key(&next, "s1").unwrap();
        assert_eq!(
            (k1.id(), k1.name(), k1.scopes_header()),
            ("k1", "one", "a:read".try_into().unwrap())
        );
        // The old snapshot still has the old limits; other workspaces' keys are shared.
        let Owner::Workspace(old) = &key(&s, "s1").unwrap().owner else {
            panic!()
        };
        assert_eq!(old.limits.sustained_per_minute, None);
        assert!(Arc::ptr_eq(
            key(&s, "s3").unwrap(),
            key(&next, "s3").unwrap()
        ));

        // Upserting a workspace as it is changes nothing, not even its keys' entries.
        let same = delta(
            3,
            4,
            json!({"workspaces": {"upsert": [
                {"id": "ws_b", "type": "sandbox", "limits": {"burst_per_second": 7}},
            ]}}),
        );
        let next = s.apply(&same).unwrap();
        assert!(Arc::ptr_eq(
            s.workspace("ws_b").unwrap(),
            next.workspace("ws_b").unwrap()
        ));
        assert!(Arc::ptr_eq(
            key(&s, "s3").unwrap(),
            key(&next, "s3").unwrap()
        ));
    }

    #[test]
    fn an_unusable_upsert_is_skipped_and_removes_what_it_replaces() {
        let s = base();
        let d = delta(
            3,
            4,
            json!({
                "keys": {"upsert": [
                    // A typo in a field: does not fit the schema.
                    {"id": "k1", "hash": hash("s1"), "workspace": "ws_a", "satus": "revoked"},
                    // Fits the schema, fails validation.
                    {"id": "k2", "hash": "not-a-hash", "workspace": "ws_a"},
                    // Names a workspace that is not there.
                    {"id": "ki", "hash": hash("si"), "workspace": "ws_gone"},
                    {"id": "k5", "hash": hash("s5"), "workspace": "ws_b"},
                ]},
                "workspaces": {"upsert": [{"id": "ws_b", "type": "live", "limits": {"burst_per_second": 0}}]},
            }),
        );
        assert_eq!(d.unreadable.len(), 1);
        let next = s.apply(&d).unwrap();
        for secret in ["s1", "s2", "si", "s3", "s5"] {
            assert!(key(&next, secret).is_none(), "{secret}");
        }
        assert_eq!((next.key_count(), next.workspace_count()), (0, 1));
        let r = reasons(&next);
        for want in [
            "key k1: unknown field `satus`",
            "key k2: hash must be 64 lowercase hex digits",
            "key ki: workspace \"ws_gone\" is not in the snapshot",
            "workspace ws_b: limits must be at least 1",
            "key k3: workspace \"ws_b\" was removed",
            "key k5: workspace \"ws_b\" is not in the snapshot",
        ] {
            assert!(
                r.iter().any(|x| x.starts_with(want)),
                "no {want:?} in {r:#?}"
            );
        }
        assert_eq!(next.skipped_count(), 6);
    }

    #[test]
    fn duplicates_within_a_delta_and_hashes_moving_between_keys() {
        let s = base();
        // k1 and k2 swap secrets; k9 claims k3's; k4 is listed twice.
        let d = delta(
            3,
            4,
            json!({"keys": {"upsert": [
                {"id": "k1", "hash": hash("s2"), "workspace": "ws_a"},
                {"id": "k2", "hash": hash("s1"), "workspace": "ws_a"},
                {"id": "k9", "hash": hash("s3"), "workspace": "ws_a"},
                {"id": "k4", "hash": hash("s4"), "workspace": "ws_a"},
                {"id": "k4", "hash": hash("s44"), "workspace": "ws_a"},
            ]}}),
        );
        let next = s.apply(&d).unwrap();
        assert_eq!(key(&next, "s2").unwrap().id(), "k1");
        assert_eq!(key(&next, "s1").unwrap().id(), "k2");
        assert_eq!(key(&next, "s3").unwrap().id(), "k3");
        assert_eq!(key(&next, "s4").unwrap().id(), "k4");
        assert!(key(&next, "s44").is_none() && next.key_by_id("k9").is_none());
        let mut r = reasons(&next);
        r.sort();
        assert_eq!(r, ["key k4: duplicate id", "key k9: duplicate hash"]);
    }

    #[test]
    fn restrictions_follow_their_keys() {
        let s = base();
        let k3 = key(&s, "s3").unwrap();
        assert_eq!(s.restrictions(k3).unwrap().ips, ["10.0.0.0/8"]);
        let d = delta(
            3,
            4,
            json!({"keys": {"upsert": [
                {"id": "k1", "hash": hash("s1"), "workspace": "ws_a", "restrictions": {"endpoints": ["r"]}},
                {"id": "k3", "hash": hash("s3"), "workspace": "ws_b"},
            ]}}),
        );
        let next = s.apply(&d).unwrap();
        assert_eq!(next.restricted_keys(), 1);
        assert_eq!(
            next.restrictions(key(&next, "s1").unwrap())
                .unwrap()
                .endpoints,
            ["r"]
        );
        assert!(next.restrictions(key(&next, "s3").unwrap()).is_none());
        assert_eq!(s.restricted_keys(), 1);
    }

    /// Applying a delta gives what a full load of the new version gives, over a long run of
    /// random deltas, invalid entries included. (Not for entries skipped for what other entries
    /// say — a hash another key holds, a workspace that is missing —, which a full load may
    /// take once the other entry changes but a delta does not bring back: those have their own
    /// tests. Here hashes never repeat, and keys name existing workspaces or one that never
    /// exists. A delta names an id at most once.)
    #[test]
    fn apply_matches_a_full_load() {
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut workspaces: std::collections::BTreeMap<String, serde_json::Value> =
            Default::default();
        let mut keys: std::collections::BTreeMap<String, serde_json::Value> = Default::default();
        let mut snap = parse(br#"{"version":0}"#, Format::Json, "t").unwrap();
        let mut fresh = 0;
        for version in 1..=200u64 {
            let mut d = json!({"workspaces": {"upsert": [], "remove": []},
                               "keys": {"upsert": [], "remove": []}});
            let mut named = std::collections::HashSet::new();
            for _ in 0..next(3) {
                let id = format!("ws_{}", next(6));
                if !named.insert(id.clone()) {
                    continue;
                }
                if next(4) == 0 {
                    workspaces.remove(&id);
                    keys.retain(|_, k| k["workspace"] != id.as_str());
                    d["workspaces"]["remove"]
                        .as_array_mut()
                        .unwrap()
                        .push(id.into());
                } else {
                    let kind = ["live", "sandbox"][next(2) as usize];
                    let mut w = json!({"id": id, "type": kind});
                    if next(3) == 0 {
                        w["limits"] = json!({"sustained_per_minute": 1 + next(9)});
                    }
                    workspaces.insert(id, w.clone());
                    d["workspaces"]["upsert"].as_array_mut().unwrap().push(w);
                }
            }
            let existing: Vec<String> = workspaces.keys().cloned().collect();
            for _ in 0..next(12) {
                let id = format!("k{}", next(40));
                if !named.insert(id.clone()) {
                    continue;
                }
                if next(5) == 0 {
                    keys.remove(&id);
                    d["keys"]["remove"].as_array_mut().unwrap().push(id.into());
                    continue;
                }
                fresh += 1;
                let mut k = json!({"id": id, "hash": hash(&format!("s{fresh}"))});
                match next(8) {
                    0 => k["internal"] = true.into(),
                    1 => k["workspace"] = "ws_never".into(),
                    _ if existing.is_empty() => k["internal"] = true.into(),
                    _ => {
                        let w = &existing[next(existing.len() as u64) as usize];
                        k["workspace"] = w.as_str().into();
                    }
                }
                match next(6) {
                    0 => {}
                    1 => k["scopes"] = json!([]),
                    2 => k["scopes"] = json!(["a:b", "c:*"]),
                    3 => k["scopes"] = json!(["bad::scope"]),
                    _ => k["scopes"] = json!(["a:b"]),
                }
                if next(6) == 0 {
                    k["status"] = "revoked".into();
                }
                if next(6) == 0 {
                    k["expires_at"] = "2030-01-01T00:00:00Z".into();
                }
                if next(10) == 0 {
                    k["restrictions"] = json!({"ips": ["10.0.0.1"]});
                }
                if next(10) == 0 {
                    k["name"] = format!("n{}", next(5)).into();
                }
                if next(30) == 0 {
                    k["scope"] = json!([]); // does not parse
                }
                keys.insert(id, k.clone());
                d["keys"]["upsert"].as_array_mut().unwrap().push(k);
            }
            d["from"] = (version - 1).into();
            d["version"] = version.into();
            let delta = parse_delta(d.to_string().as_bytes(), "d").unwrap();
            snap = snap.apply(&delta).unwrap();
            let full = json!({
                "version": version,
                "workspaces": workspaces.values().collect::<Vec<_>>(),
                "keys": keys.values().collect::<Vec<_>>(),
            });
            let full = parse(full.to_string().as_bytes(), Format::Json, "full").unwrap();
            assert_eq!(dump(&snap), dump(&full), "version {version}");
            // A snapshot written out reads back the same.
            let mut out = vec![];
            write_json(&snap, &mut out).unwrap();
            let back = parse(&out, Format::Json, "back").unwrap();
            assert_eq!(dump(&back), dump(&snap), "version {version}");
            assert_eq!(back.skipped_count(), 0);
        }
        assert!(snap.key_count() > 10, "{}", snap.key_count());
    }

    #[test]
    fn deltas_that_grow_a_snapshot_reshard_it() {
        let s = base();
        assert_eq!(s.keys.bits(), 0);
        let upsert: Vec<_> = (0..5000)
            .map(|i| json!({"id": format!("n{i}"), "hash": hash(&format!("n{i}")), "workspace": "ws_a"}))
            .collect();
        let next = s
            .apply(&delta(3, 4, json!({"keys": {"upsert": upsert}})))
            .unwrap();
        assert!(next.keys.bits() > 0);
        assert_eq!(next.key_count(), 5004);
        for i in (0..5000).step_by(7) {
            assert_eq!(key(&next, &format!("n{i}")).unwrap().id(), format!("n{i}"));
        }
        assert!(key(&next, "s1").is_some());
    }

    /// An Ed25519 public key (of the seed [1; 32]), base64url.
    const PUBLIC_KEY: &str = "iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w";

    fn signing_key(kid: &str) -> serde_json::Value {
        json!({"kid": kid, "alg": "EdDSA", "public_key": PUBLIC_KEY})
    }

    fn clients(s: &Snapshot) -> Vec<String> {
        let mut v: Vec<String> = s
            .clients
            .iter()
            .map(|(id, c)| format!("{id} {} {}", c.workspace, c.revoked))
            .collect();
        v.sort();
        v
    }

    fn with_trust() -> Snapshot {
        let doc = json!({
            "version": 3,
            "workspaces": [{"id": "ws_a", "type": "live"}, {"id": "ws_b", "type": "sandbox"}],
            "keys": [],
            "signing_keys": [signing_key("kid_1"), signing_key("bad id!"),
                             {"kid": "kid_2", "alg": "EdDSA", "public_key": "AAAA"},
                             {"kid": "kid_3", "alg": "HS256", "public_key": PUBLIC_KEY}],
            "clients": [
                {"id": "oc_1", "workspace": "ws_a"},
                {"id": "oc_2", "workspace": "ws_b", "status": "revoked"},
                {"id": "oc_3", "workspace": "ws_gone"},
                {"id": "oc_1", "workspace": "ws_b"},
            ],
        });
        parse(doc.to_string().as_bytes(), Format::Json, "trust").unwrap()
    }

    #[test]
    fn signing_keys_and_clients_load_and_bad_ones_are_skipped_with_reasons() {
        let s = with_trust();
        assert_eq!(s.signing_key_count(), 1);
        assert!(s.signing_key("kid_1").is_some());
        assert_eq!(clients(&s), ["oc_1 ws_a false", "oc_2 ws_b true"]);
        let reasons = reasons(&s);
        for want in [
            "signing key bad id!: id must be",
            "signing key kid_2: public_key must be an Ed25519 public key",
            "signing key kid_3: unknown variant `HS256`",
            "client oc_3: workspace \"ws_gone\" is not in the snapshot",
            "client oc_1: duplicate id",
        ] {
            assert!(
                reasons.iter().any(|r| r.starts_with(want)),
                "{want}: {reasons:?}"
            );
        }
    }

    #[test]
    fn a_delta_replaces_the_signing_keys_whole_and_changes_clients_one_by_one() {
        let s = with_trust();
        let unchanged = s.apply(&delta(3, 4, json!({}))).unwrap();
        assert!(Arc::ptr_eq(&unchanged.signing_keys, &s.signing_keys));
        assert!(Arc::ptr_eq(&unchanged.clients, &s.clients));

        let next = s
            .apply(&delta(
                3,
                4,
                json!({
                    "signing_keys": [signing_key("kid_9")],
                    "clients": {"upsert": [{"id": "oc_1", "workspace": "ws_a", "status": "revoked"},
                                           {"id": "oc_4", "workspace": "ws_none"}],
                                "remove": ["oc_2"]},
                }),
            ))
            .unwrap();
        assert!(next.signing_key("kid_1").is_none());
        assert!(next.signing_key("kid_9").is_some());
        assert_eq!(clients(&next), ["oc_1 ws_a true"]);
        assert!(
            reasons(&next)
                .iter()
                .any(|r| r.starts_with("client oc_4: workspace"))
        );

        // An empty set retires every key; a removed workspace takes its clients along.
        let bare = next
            .apply(&delta(
                4,
                5,
                json!({"signing_keys": [],
                                        "workspaces": {"remove": ["ws_a"]}}),
            ))
            .unwrap();
        assert_eq!(bare.signing_key_count(), 0);
        assert_eq!(clients(&bare), Vec::<String>::new());
        assert!(
            reasons(&bare)
                .iter()
                .any(|r| r == "client oc_1: workspace \"ws_a\" was removed")
        );
    }

    #[test]
    fn signing_keys_and_clients_are_written_back_out() {
        let s = with_trust();
        let mut out = vec![];
        write_json(&s, &mut out).unwrap();
        let again = parse(&out, Format::Json, "written").unwrap();
        assert_eq!(again.signing_key_count(), 1);
        assert_eq!(
            again.signing_key("kid_1").unwrap().public_key,
            s.signing_key("kid_1").unwrap().public_key
        );
        assert_eq!(clients(&again), clients(&s));
    }
}

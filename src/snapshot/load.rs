//! Reading a snapshot document (YAML or JSON) into a [`Snapshot`], entry by entry.
//!
//! A document that cannot be read or parsed is rejected whole, and the caller keeps serving its
//! last good snapshot. Within a readable document, a malformed workspace or key entry is skipped
//! and counted with its reason, so one bad key never takes the others down.

use super::invalid::InvalidEntry;
use super::model::{EntryKind, Snapshot, SnapshotBuilder};
use super::raw::{Raw, RawSeed};
use super::wire::{ClientDoc, KeyDoc, SigningKeyDoc, WorkspaceDoc};
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

impl Format {
    /// `.json` files are JSON; everything else is read as YAML.
    pub fn for_path(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("json") => Format::Json,
            _ => Format::Yaml,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{path}: cannot read the snapshot: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: invalid snapshot: {message}")]
    Invalid { origin: String, message: String },
}

/// Reads and parses a snapshot file.
pub fn load_file(path: &Path) -> Result<Snapshot, SnapshotError> {
    let bytes = std::fs::read(path).map_err(|source| SnapshotError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&bytes, Format::for_path(path), &path.display().to_string())
}

/// Parses a snapshot document; `origin` names where it came from in error messages.
pub fn parse(bytes: &[u8], format: Format, origin: &str) -> Result<Snapshot, SnapshotError> {
    let invalid = |message: String| SnapshotError::Invalid {
        origin: origin.to_owned(),
        message,
    };
    let doc = DocSeed;
    let builder = match format {
        Format::Json => {
            let mut de = serde_json::Deserializer::from_slice(bytes);
            let b = doc
                .deserialize(&mut de)
                .map_err(|e| invalid(e.to_string()))?;
            de.end().map_err(|e| invalid(e.to_string()))?;
            b
        }
        Format::Yaml => doc
            .deserialize(serde_yaml::Deserializer::from_slice(bytes))
            .map_err(|e| invalid(e.to_string()))?,
    };
    Ok(builder.finish())
}

/// The top-level document: `version`, `workspaces`, `keys`, `signing_keys`, `clients`; any
/// other field is an error.
struct DocSeed;

impl<'de> DeserializeSeed<'de> for DocSeed {
    type Value = SnapshotBuilder;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<SnapshotBuilder, D::Error> {
        d.deserialize_map(self)
    }
}

const FIELDS: &[&str] = &["version", "workspaces", "keys", "signing_keys", "clients"];

impl<'de> Visitor<'de> for DocSeed {
    type Value = SnapshotBuilder;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a snapshot: a map with `version`, `workspaces` and `keys`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SnapshotBuilder, A::Error> {
        let mut builder = SnapshotBuilder::new(0);
        let mut version = None;
        while let Some(field) = map.next_key::<String>()? {
            match field.as_str() {
                "version" => version = Some(map.next_value::<u64>()?),
                "workspaces" => map.next_value_seed(Entries(|raw: Raw<'_>, position| {
                    match WorkspaceDoc::deserialize(&raw) {
                        Ok(doc) => builder.add_workspace(doc),
                        Err(e) => builder.skip(
                            EntryKind::Workspace,
                            raw.label(position),
                            InvalidEntry::Unreadable(e.to_string()),
                        ),
                    }
                }))?,
                "keys" => map.next_value_seed(Entries(|raw: Raw<'_>, position| {
                    match KeyDoc::<&str>::deserialize(&raw) {
                        Ok(doc) => builder.add_key(doc),
                        Err(e) => builder.skip(
                            EntryKind::Key,
                            raw.label(position),
                            InvalidEntry::Unreadable(e.to_string()),
                        ),
                    }
                }))?,
                "signing_keys" => map.next_value_seed(Entries(|raw: Raw<'_>, position| {
                    match SigningKeyDoc::deserialize(&raw) {
                        Ok(doc) => builder.add_signing_key(doc),
                        Err(e) => builder.skip(
                            EntryKind::SigningKey,
                            raw.kid_label(position),
                            InvalidEntry::Unreadable(e.to_string()),
                        ),
                    }
                }))?,
                "clients" => map.next_value_seed(Entries(|raw: Raw<'_>, position| {
                    match ClientDoc::deserialize(&raw) {
                        Ok(doc) => builder.add_client(doc),
                        Err(e) => builder.skip(
                            EntryKind::Client,
                            raw.label(position),
                            InvalidEntry::Unreadable(e.to_string()),
                        ),
                    }
                }))?,
                other => return Err(de::Error::unknown_field(other, FIELDS)),
            }
        }
        let version = version.ok_or_else(|| de::Error::missing_field("version"))?;
        builder.set_version(version);
        Ok(builder)
    }
}

/// A list of entries, each read on its own into a [`Raw`] and handed to the closure with its
/// position, so that one that does not fit the schema can be skipped. Only one entry is held at
/// a time, never the whole list.
pub(crate) struct Entries<F>(pub(crate) F);

impl<'de, F: FnMut(Raw<'de>, usize)> DeserializeSeed<'de> for Entries<F> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, F: FnMut(Raw<'de>, usize)> Visitor<'de> for Entries<F> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of entries")
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        // `keys:` with nothing after it in YAML: an empty list.
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        let mut position = 0usize;
        while let Some(raw) = seq.next_element_seed(RawSeed)? {
            (self.0)(raw, position);
            position += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::KeyHash;

    fn hash(secret: &str) -> String {
        KeyHash::of(secret).to_hex()
    }

    fn reasons(s: &Snapshot) -> Vec<String> {
        s.skipped().iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn json_documents_may_list_keys_before_workspaces() {
        let doc = format!(
            r#"{{"keys":[{{"id":"k1","hash":"{}","workspace":"ws"}}],"version":9,
                "workspaces":[{{"id":"ws","type":"sandbox"}}]}}"#,
            hash("s1")
        );
        let s = parse(doc.as_bytes(), Format::Json, "test").unwrap();
        assert_eq!((s.version(), s.key_count(), s.skipped_count()), (9, 1, 0));
        let key = s.key(&KeyHash::of("s1")).unwrap();
        assert!(matches!(&key.owner, crate::snapshot::Owner::Workspace(w) if &*w.id == "ws"));
        assert!(s.key(&KeyHash::of("s2")).is_none());
    }

    #[test]
    fn duplicates_and_contradictions_are_skipped_with_reasons() {
        let yaml = format!(
            "version: 1
workspaces:
  - {{ id: ws, type: live }}
  - {{ id: ws, type: sandbox }}
  - {{ id: 'bad id', type: live }}
  - {{ id: zero, type: live, limits: {{ burst_per_second: 0 }} }}
keys:
  - {{ id: k1, hash: {h1}, workspace: ws }}
  - {{ id: k1, hash: {h2}, workspace: ws }}
  - {{ id: k3, hash: {h1}, workspace: ws }}
  - {{ id: k4, hash: {h4}, workspace: ws, internal: true }}
  - {{ id: k5, hash: {h5} }}
  - {{ id: k6, hash: {h6}, workspace: ws, expires_at: tomorrow }}
  - {{ id: k7, hash: {h7}, workspace: ws, restrictions: {{ ips: [10.0.0.0/33] }} }}
  - {{ id: k8, hash: {h8}, workspace: ws, restrictions: {{ ips: [10.0.0.0/8, '::1'], endpoints: [a] }} }}
  - {{ id: k9, hash: {h9}, workspace: ws, status: paused }}
",
            h1 = hash("1"),
            h2 = hash("2"),
            h4 = hash("4"),
            h5 = hash("5"),
            h6 = hash("6"),
            h7 = hash("7"),
            h8 = hash("8"),
            h9 = hash("9"),
        );
        let s = parse(yaml.as_bytes(), Format::Yaml, "test").unwrap();
        assert_eq!(s.workspace_count(), 1);
        assert_eq!(s.key_count(), 2, "{:?}", reasons(&s));
        assert_eq!(s.restricted_keys(), 1);
        let r = reasons(&s);
        let expect = [
            "workspace ws: duplicate id",
            "workspace bad id: id must be",
            "workspace zero: limits must be at least 1",
            "key k4: an internal key names no workspace",
            "key k5: missing `workspace`",
            "key k6: expires_at \"tomorrow\" is not an RFC 3339 time",
            "key k7: restrictions.ips: \"10.0.0.0/33\" has a prefix length",
            "key k9: unknown variant `paused`",
            "key k1: duplicate id",
            "key k3: duplicate hash",
        ];
        for e in expect {
            assert!(r.iter().any(|x| x.starts_with(e)), "no {e:?} in {r:#?}");
        }
        assert_eq!(s.skipped_count(), expect.len());
    }

    #[test]
    fn a_document_that_does_not_parse_is_rejected_whole() {
        for (doc, want) in [
            ("keys: []", "missing field `version`"),
            ("version: 1\nkeyz: []", "unknown field `keyz`"),
            (
                "version: -3",
                "version: invalid type: integer `-3`, expected u64",
            ),
            ("version: 1\nkeys: {a: 1}", "invalid type"),
            ("[1, 2]", "invalid type"),
        ] {
            let err = parse(doc.as_bytes(), Format::Yaml, "keys.yaml").unwrap_err();
            let msg = err.to_string();
            assert!(msg.starts_with("keys.yaml: invalid snapshot"), "{msg}");
            assert!(msg.contains(want), "{doc:?}: {msg}");
        }
        assert!(parse(b"{\"version\":1} trailing", Format::Json, "x").is_err());
        // Empty lists, or none at all, are a valid (if empty) snapshot.
        let empty = parse(b"version: 2\nkeys:\nworkspaces: []\n", Format::Yaml, "x").unwrap();
        assert_eq!((empty.version(), empty.key_count()), (2, 0));
    }

    #[test]
    fn debug_output_carries_no_hash() {
        let yaml = format!(
            "version: 1\nworkspaces: [{{ id: ws, type: live }}]\nkeys: [{{ id: k1, hash: {}, workspace: ws }}]\n",
            hash("secret")
        );
        let s = parse(yaml.as_bytes(), Format::Yaml, "x").unwrap();
        let key = s.key(&KeyHash::of("secret")).unwrap();
        for text in [format!("{s:?}"), format!("{key:?}")] {
            assert!(!text.contains(&hash("secret")[..8]), "{text}");
        }
        assert!(format!("{key:?}").contains("k1"));
    }
}

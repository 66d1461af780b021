//! Reading a snapshot document (YAML or JSON) into a [`Snapshot`], entry by entry.
//!
//! A document that cannot be read or parsed is rejected whole, and the caller keeps serving its
//! last good snapshot. Within a readable document, a malformed workspace or key entry is skipped
//! and counted with its reason, so one bad key never takes the others down.

use super::model::{EntryKind, Snapshot, SnapshotBuilder};
use super::wire::{KeyDoc, WorkspaceDoc};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
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

/// The top-level document: `version`, `workspaces`, `keys`; any other field is an error.
struct DocSeed;

impl<'de> DeserializeSeed<'de> for DocSeed {
    type Value = SnapshotBuilder;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<SnapshotBuilder, D::Error> {
        d.deserialize_map(self)
    }
}

const FIELDS: &[&str] = &["version", "workspaces", "keys"];

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
                "workspaces" => map.next_value_seed(Entries {
                    builder: &mut builder,
                    kind: EntryKind::Workspace,
                })?,
                "keys" => map.next_value_seed(Entries {
                    builder: &mut builder,
                    kind: EntryKind::Key,
                })?,
                other => return Err(de::Error::unknown_field(other, FIELDS)),
            }
        }
        let version = version.ok_or_else(|| de::Error::missing_field("version"))?;
        builder.set_version(version);
        Ok(builder)
    }
}

/// A list of workspace or key entries, each read on its own so that a bad one is skipped.
struct Entries<'a> {
    builder: &'a mut SnapshotBuilder,
    kind: EntryKind,
}

impl<'de> DeserializeSeed<'de> for Entries<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Entries<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of entries")
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        // `keys:` with nothing after it in YAML: an empty list.
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut position = 0usize;
        // One entry is held as a generic value at a time, never the whole list.
        while let Some(value) = seq.next_element::<Value>()? {
            let label = match value.get("id").and_then(Value::as_str) {
                Some(id) => id.to_owned(),
                None => format!("#{position} (no id)"),
            };
            position += 1;
            match self.kind {
                EntryKind::Workspace => match serde_json::from_value::<WorkspaceDoc>(value) {
                    Ok(doc) => self.builder.add_workspace(doc),
                    Err(e) => self.builder.skip(self.kind, label, e.to_string()),
                },
                EntryKind::Key => match serde_json::from_value::<KeyDoc>(value) {
                    Ok(doc) => self.builder.add_key(doc),
                    Err(e) => self.builder.skip(self.kind, label, e.to_string()),
                },
            }
        }
        Ok(())
    }
}

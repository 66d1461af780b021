//! One entry of a document held as a generic value, so that it can be checked against the schema
//! on its own: a malformed entry is then skipped without losing the parser's place in the list.
//!
//! Cheaper than `serde_json::Value` on large snapshots: strings borrow from the input where they
//! can (no escapes), a map is one vector of pairs, and the typed entry
//! ([`KeyDoc<&str>`](super::wire::KeyDoc)) borrows its strings from here in turn.

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Raw<'de> {
    Null,
    Bool(bool),
    U64(u64),
    I64(i64),
    F64(f64),
    Str(Cow<'de, str>),
    Seq(Vec<Raw<'de>>),
    Map(Vec<(Cow<'de, str>, Raw<'de>)>),
}

impl Raw<'_> {
    /// The entry's `id` when it is a string: names the entry in reports even when it is invalid.
    pub(crate) fn id(&self) -> Option<&str> {
        match self {
            Raw::Map(pairs) => pairs.iter().find_map(|(k, v)| match v {
                Raw::Str(s) if k == "id" => Some(&**s),
                _ => None,
            }),
            _ => None,
        }
    }

    /// A signing key's `kid`, or its position when it has none.
    pub(crate) fn kid_label(&self, position: usize) -> String {
        let kid = match self {
            Raw::Map(pairs) => pairs.iter().find_map(|(k, v)| match v {
                Raw::Str(s) if k == "kid" => Some(&**s),
                _ => None,
            }),
            _ => None,
        };
        kid.map_or_else(|| format!("#{position} (no kid)"), str::to_owned)
    }

    /// The entry's id, or its position when it has none.
    pub(crate) fn label(&self, position: usize) -> String {
        match self.id() {
            Some(id) => id.to_owned(),
            None => format!("#{position} (no id)"),
        }
    }

    fn unexpected(&self) -> de::Unexpected<'_> {
        match self {
            Raw::Null => de::Unexpected::Unit,
            Raw::Bool(b) => de::Unexpected::Bool(*b),
            Raw::U64(n) => de::Unexpected::Unsigned(*n),
            Raw::I64(n) => de::Unexpected::Signed(*n),
            Raw::F64(n) => de::Unexpected::Float(*n),
            Raw::Str(s) => de::Unexpected::Str(s),
            Raw::Seq(_) => de::Unexpected::Seq,
            Raw::Map(_) => de::Unexpected::Map,
        }
    }
}

/// Reads any value into a [`Raw`].
pub(crate) struct RawSeed;

impl<'de> DeserializeSeed<'de> for RawSeed {
    type Value = Raw<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Raw<'de>, D::Error> {
        d.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Raw<'de>, E> {
        Ok(Raw::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Raw<'de>, E> {
        Ok(Raw::I64(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Raw<'de>, E> {
        Ok(Raw::U64(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Raw<'de>, E> {
        Ok(Raw::F64(v))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Raw<'de>, E> {
        Ok(Raw::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Raw<'de>, E> {
        Ok(Raw::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Raw<'de>, E> {
        Ok(Raw::Str(Cow::Owned(v)))
    }
    fn visit_unit<E>(self) -> Result<Raw<'de>, E> {
        Ok(Raw::Null)
    }
    fn visit_none<E>(self) -> Result<Raw<'de>, E> {
        Ok(Raw::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Raw<'de>, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element_seed(RawSeed)? {
            items.push(item);
        }
        Ok(Raw::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw<'de>, A::Error> {
        let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(8).min(64));
        while let Some(key) = map.next_key_seed(KeySeed)? {
            pairs.push((key, map.next_value_seed(RawSeed)?));
        }
        Ok(Raw::Map(pairs))
    }
}

/// A map key: borrowed from the input when possible.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string key")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v))
    }
}

/// Why an entry does not fit the schema; the message is serde's, as `serde_json` words it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawError(String);

impl fmt::Display for RawError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RawError {}

impl de::Error for RawError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        RawError(msg.to_string())
    }
}

/// Typed entries are read from a `&Raw`; strings are lent out for as long as the `Raw` lives.
impl<'a, 'de> Deserializer<'a> for &'a Raw<'de> {
    type Error = RawError;

    fn deserialize_any<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, RawError> {
        match self {
            Raw::Null => visitor.visit_unit(),
            Raw::Bool(b) => visitor.visit_bool(*b),
            Raw::U64(n) => visitor.visit_u64(*n),
            Raw::I64(n) => visitor.visit_i64(*n),
            Raw::F64(n) => visitor.visit_f64(*n),
            Raw::Str(s) => visitor.visit_borrowed_str(s),
            Raw::Seq(items) => {
                let mut access = SeqIter(items.iter());
                let value = visitor.visit_seq(&mut access)?;
                match access.0.len() {
                    0 => Ok(value),
                    _ => Err(de::Error::invalid_length(items.len(), &"fewer elements")),
                }
            }
            Raw::Map(pairs) => {
                let mut access = MapIter {
                    pairs: pairs.iter(),
                    value: None,
                };
                let value = visitor.visit_map(&mut access)?;
                match access.pairs.len() {
                    0 => Ok(value),
                    _ => Err(de::Error::invalid_length(pairs.len(), &"fewer entries")),
                }
            }
        }
    }

    fn deserialize_option<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, RawError> {
        match self {
            Raw::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    /// Unit variants (`status: revoked`, `type: live`) are written as plain strings.
    fn deserialize_enum<V: Visitor<'a>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, RawError> {
        match self {
            Raw::Str(s) => visitor.visit_enum(de::value::BorrowedStrDeserializer::new(s)),
            other => Err(de::Error::invalid_type(other.unexpected(), &"a string")),
        }
    }

    /// Entries are maps; serde would also take a list of the fields in order.
    fn deserialize_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, RawError> {
        match self {
            Raw::Map(_) => self.deserialize_any(visitor),
            other => Err(de::Error::invalid_type(other.unexpected(), &visitor)),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, RawError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_ignored_any<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, RawError> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        <W: Visitor<'a>>
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map identifier
    }
}

struct SeqIter<'a, 'de>(std::slice::Iter<'a, Raw<'de>>);

impl<'a> SeqAccess<'a> for SeqIter<'a, '_> {
    type Error = RawError;
    fn next_element_seed<T: DeserializeSeed<'a>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, RawError> {
        self.0.next().map(|item| seed.deserialize(item)).transpose()
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

struct MapIter<'a, 'de> {
    pairs: std::slice::Iter<'a, (Cow<'de, str>, Raw<'de>)>,
    value: Option<&'a Raw<'de>>,
}

impl<'a> MapAccess<'a> for MapIter<'a, '_> {
    type Error = RawError;
    fn next_key_seed<K: DeserializeSeed<'a>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, RawError> {
        let Some((key, value)) = self.pairs.next() else {
            return Ok(None);
        };
        self.value = Some(value);
        let key: de::value::BorrowedStrDeserializer<'a, RawError> =
            de::value::BorrowedStrDeserializer::new(key);
        seed.deserialize(key).map(Some)
    }
    fn next_value_seed<V: DeserializeSeed<'a>>(&mut self, seed: V) -> Result<V::Value, RawError> {
        match self.value.take() {
            Some(value) => seed.deserialize(value),
            None => Err(de::Error::custom("value is missing")),
        }
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.pairs.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::wire::{KeyDoc, KeyStatus, WorkspaceDoc, WorkspaceKind};
    use serde::Deserialize;

    fn raw(json: &str) -> Raw<'_> {
        let mut de = serde_json::Deserializer::from_str(json);
        RawSeed.deserialize(&mut de).unwrap()
    }

    #[test]
    fn strings_borrow_from_the_input_unless_escaped() {
        let r = raw(r#"{"id":"k1","name":"a\"b"}"#);
        let Raw::Map(pairs) = &r else { panic!() };
        assert!(matches!(&pairs[0].1, Raw::Str(Cow::Borrowed("k1"))));
        assert!(matches!(&pairs[1].1, Raw::Str(Cow::Owned(s)) if s == "a\"b"));
        assert_eq!(r.id(), Some("k1"));
        assert_eq!(raw(r#"{"id":5}"#).label(3), "#3 (no id)");
    }

    #[test]
    fn typed_entries_read_from_raw_with_serde_json_wording() {
        let r = raw(
            r#"{"id":"k","hash":"h","workspace":"w","scopes":["a:b"],"status":"revoked","expires_at":"t"}"#,
        );
        let doc = KeyDoc::<&str>::deserialize(&r).unwrap();
        assert_eq!(
            (doc.id, doc.scopes, doc.status, doc.expires_at),
            ("k", Some(Some(vec!["a:b"])), KeyStatus::Revoked, Some("t"))
        );
        let owned = KeyDoc::<String>::deserialize(&r).unwrap();
        assert_eq!(owned.workspace.as_deref(), Some("w"));
        let ws = raw(r#"{"id":"w","type":"sandbox","limits":{"burst_per_second":7}}"#);
        let ws = WorkspaceDoc::deserialize(&ws).unwrap();
        assert_eq!(ws.kind, WorkspaceKind::Sandbox);
        assert_eq!(ws.limits.unwrap().burst_per_second, Some(7));

        for (json, want) in [
            (
                r#"{"id":"k","hash":"h","scope":[]}"#,
                "unknown field `scope`, expected one of",
            ),
            (r#"{"id":"k"}"#, "missing field `hash`"),
            (
                r#"{"id":"k","hash":"h","status":"paused"}"#,
                "unknown variant `paused`",
            ),
            (
                r#"{"id":"k","hash":5}"#,
                "invalid type: integer `5`, expected a",
            ),
            (r#"{"id":"k","hash":"h","scopes":null}"#, ""),
            (
                r#"{"id":"k","hash":"h","internal":"yes"}"#,
                "invalid type: string \"yes\"",
            ),
            (r#"[1]"#, "invalid type: sequence, expected struct KeyDoc"),
            (
                r#""k""#,
                "invalid type: string \"k\", expected struct KeyDoc",
            ),
        ] {
            let r = raw(json);
            match KeyDoc::<&str>::deserialize(&r) {
                Ok(doc) => assert_eq!((want, doc.scopes), ("", Some(None)), "{json}"),
                Err(e) => assert!(e.to_string().starts_with(want), "{json}: {e}"),
            }
        }
        let big = raw(r#"{"id":"w","type":"live","limits":{"burst_per_second":5000000000}}"#);
        let err = WorkspaceDoc::deserialize(&big).unwrap_err().to_string();
        assert!(err.contains("expected u32"), "{err}");
    }
}

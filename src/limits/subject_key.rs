//! The limiter's map key: a subject's id, held inline when it is short (as ids almost always
//! are), so that a lookup compares it in the map's own memory rather than behind a pointer to a
//! separate allocation, which would be one more cache miss per request. Each snapshot workspace
//! carries its key, made once at load, for the same reason.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};

/// Ids up to this many bytes are stored inline (the key is then 32 bytes, half a cache line).
const INLINE: usize = 30;

#[derive(Clone)]
pub enum SubjectKey {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<[u8]>),
}

impl SubjectKey {
    pub fn new(id: &str) -> SubjectKey {
        Self::from_bytes(id.as_bytes())
    }

    pub(super) fn from_bytes(id: &[u8]) -> SubjectKey {
        if id.len() <= INLINE {
            let mut bytes = [0; INLINE];
            bytes[..id.len()].copy_from_slice(id);
            SubjectKey::Inline {
                len: id.len() as u8,
                bytes,
            }
        } else {
            SubjectKey::Heap(id.into())
        }
    }

    pub(super) fn as_bytes(&self) -> &[u8] {
        match self {
            SubjectKey::Inline { len, bytes } => &bytes[..usize::from(*len)],
            SubjectKey::Heap(b) => b,
        }
    }
}

/// Ids of workspaces and keys, never secrets: shown as they are.
impl std::fmt::Debug for SubjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

// Hash, Eq and Borrow<[u8]> all go through the id's bytes, so the map is probed with `&[u8]`.
impl Hash for SubjectKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state)
    }
}

impl PartialEq for SubjectKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for SubjectKey {}

impl Borrow<[u8]> for SubjectKey {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn short_and_long_ids_hash_and_compare_as_their_bytes() {
        let hasher = foldhash::fast::FixedState::default();
        for id in [
            "",
            "ws_1",
            &"w".repeat(INLINE),
            &"w".repeat(INLINE + 1),
            "ws_é",
        ] {
            let key = SubjectKey::new(id);
            assert_eq!(key.as_bytes(), id.as_bytes());
            assert_eq!(
                hasher.hash_one(&key),
                hasher.hash_one(id.as_bytes()),
                "{id}"
            );
            assert!(key == SubjectKey::new(id));
            assert!(key != SubjectKey::new(&format!("{id}x")));
        }
        assert!(matches!(
            SubjectKey::new(&"w".repeat(INLINE)),
            SubjectKey::Inline { .. }
        ));
        assert!(matches!(
            SubjectKey::new(&"w".repeat(INLINE + 1)),
            SubjectKey::Heap(_)
        ));
        assert_eq!(std::mem::size_of::<SubjectKey>(), 32);
    }
}

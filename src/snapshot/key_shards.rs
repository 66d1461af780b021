//! The key index's shards: small open-addressing tables, each one allocation.
//!
//! A request's lookup is a chain of dependent memory reads, and with a million keys each is a
//! likely cache miss. A `HashSet` shard behind an `Arc` costs four before the key entry: the
//! shard table's pointer, the set's header, its control bytes, then its bucket. Here the slots
//! sit in the shard's own allocation (`Arc<[Slot]>`) with the hash's first eight bytes as a tag,
//! so a lookup reads the shard pointer, one slot line (rarely two), then the entry.
//!
//! Linear probing, at most two thirds full. The size is not rounded up to a power of two (the
//! tag is mapped onto the slots by a multiplication instead of a mask): rounding, with the
//! `Arc`'s counts on top, put a typical shard of 30 keys just past the allocator's 1 KiB size
//! class, and cost 20 MB more than `HashSet` shards at a million keys. A change rebuilds the one
//! shard it touches (a few dozen slots), which is what copying a shared shard cost before anyway.

use super::model::KeyEntry;
use crate::secret::KeyHash;
use std::sync::Arc;

#[derive(Clone, Default)]
pub(super) struct Slot {
    /// The hash's first eight bytes; meaningless when `entry` is `None`.
    tag: u64,
    entry: Option<Arc<KeyEntry>>,
}

/// The tag of a hash: SHA-256 output, uniformly distributed and not chosen by clients (a client
/// controls only the preimage), so its first bytes are already a good table hash. The shard is
/// chosen from bytes 8 and 9 (see `index::hash_selector`), apart from these.
fn tag(hash: &KeyHash) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.0[..8]);
    u64::from_le_bytes(first)
}

/// Slots for `n` entries: at most two thirds full, never full.
fn capacity(n: usize) -> usize {
    n + n / 2 + 1
}

/// Where a tag's probe starts among `len` slots: uniform for uniform tags ("fast range").
fn home(tag: u64, len: usize) -> usize {
    ((u128::from(tag) * len as u128) >> 64) as usize
}

/// The slot after `i`, wrapping around.
fn next(i: usize, len: usize) -> usize {
    if i + 1 == len { 0 } else { i + 1 }
}

/// One shard: never full, so every probe ends.
pub(super) type Shard = Arc<[Slot]>;

/// A shard with room for `n` entries, empty.
pub(super) fn empty(n: usize) -> Shard {
    (0..capacity(n)).map(|_| Slot::default()).collect()
}

pub(super) fn get<'s>(shard: &'s [Slot], hash: &KeyHash) -> Option<&'s Arc<KeyEntry>> {
    let tag = tag(hash);
    let mut i = home(tag, shard.len());
    loop {
        let slot = &shard[i];
        match &slot.entry {
            None => return None,
            Some(e) if slot.tag == tag && e.hash == *hash => return Some(e),
            Some(_) => i = next(i, shard.len()),
        }
    }
}

/// Adds `entry` to a shard made by [`empty`] for at least as many entries as it will hold;
/// hands it back (and nothing changes) when its hash is taken.
pub(super) fn insert_new(shard: &mut [Slot], entry: Arc<KeyEntry>) -> Result<(), Arc<KeyEntry>> {
    let tag = tag(&entry.hash);
    let mut i = home(tag, shard.len());
    loop {
        let slot = &mut shard[i];
        match &slot.entry {
            None => {
                *slot = Slot {
                    tag,
                    entry: Some(entry),
                };
                return Ok(());
            }
            Some(e) if slot.tag == tag && e.hash == entry.hash => return Err(entry),
            Some(_) => i = next(i, shard.len()),
        }
    }
}

pub(super) fn entries(shard: &[Slot]) -> impl Iterator<Item = &Arc<KeyEntry>> {
    shard.iter().filter_map(|s| s.entry.as_ref())
}

/// The shard with `entries` in it, sized for them. Hashes must be distinct.
pub(super) fn rebuilt(entries: impl ExactSizeIterator<Item = Arc<KeyEntry>>) -> Shard {
    let mut shard = empty(entries.len());
    let slots = Arc::get_mut(&mut shard).expect("a new shard is not shared");
    for e in entries {
        let _ = insert_new(slots, e);
    }
    shard
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Internal keys with the given hex hashes, through the real parser.
    fn parsed(hashes: &[String]) -> Vec<Arc<KeyEntry>> {
        let keys: Vec<String> = hashes
            .iter()
            .enumerate()
            .map(|(i, h)| format!(r#"{{"id":"key_{i}","internal":true,"hash":"{h}"}}"#))
            .collect();
        let doc = format!(r#"{{"version":1,"keys":[{}]}}"#, keys.join(","));
        let s = crate::snapshot::parse(doc.as_bytes(), crate::snapshot::Format::Json, "t").unwrap();
        (0..hashes.len())
            .map(|i| s.key_by_id(&format!("key_{i}")).unwrap().clone())
            .collect()
    }

    /// 64 hex digits: `tag` for the first eight bytes, then `rest`.
    fn hash(tag: u64, rest: u64) -> String {
        format!("{:016x}{rest:048x}", tag.swap_bytes())
    }

    #[test]
    fn finds_every_entry_and_only_those_even_when_tags_collide_and_probes_wrap() {
        // Groups of five under one tag, and tags that all aim at the shard's last slots, so that
        // probes run through other entries and wrap around the end.
        let hashes: Vec<String> = (0..30u64).map(|i| hash(u64::MAX - i / 5, i)).collect();
        let all = parsed(&hashes);
        let shard = rebuilt(all.iter().cloned());
        assert_eq!(shard.len(), 46);
        assert_eq!(entries(&shard).count(), 30);
        for e in &all {
            assert!(Arc::ptr_eq(get(&shard, &e.hash).unwrap(), e));
        }
        let absent = parsed(&[hash(u64::MAX, 999), hash(7, 0)]);
        for e in &absent {
            assert!(get(&shard, &e.hash).is_none());
        }
        let mut copy: Vec<Slot> = shard.to_vec();
        assert!(insert_new(&mut copy, all[3].clone()).is_err());
        assert!(insert_new(&mut copy, absent[0].clone()).is_ok());
        assert!(get(&copy, &absent[0].hash).is_some());
    }

    #[test]
    fn shards_are_never_more_than_two_thirds_full() {
        for n in 0..200 {
            let cap = capacity(n);
            assert!(n * 3 <= cap * 2 && n < cap, "{n}: {cap}");
        }
    }
}

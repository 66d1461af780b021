//! The snapshot's two key indexes — by hash (the request path) and by id (deltas) — as tables
//! split into shards that snapshots share.
//!
//! Each shard is behind an `Arc`, so a new snapshot made by a delta copies the shard table (one
//! refcount per shard) and only the shards it changes (a few dozen entries each): a one-key
//! change costs microseconds however many keys there are, where copying one flat table would
//! touch every entry. A lookup picks its shard from bits the table inside does not use and
//! probes that one table: no lock, no allocation. The by-hash shards are flat tables of their
//! own (`key_shards`), to keep a request's chain of memory reads short; the by-id ones, which
//! only deltas read, are `HashSet`s.

use super::invalid::InvalidEntry;
use super::key_shards;
use super::model::KeyEntry;
use crate::secret::KeyHash;
use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

/// Keys per shard aimed for: small enough that a changed shard is cheap to copy, large enough
/// that the shards' own overhead stays small next to the entries.
const KEYS_PER_SHARD: usize = 32;
/// At most 2^16 shards (then up to ~2M keys are at the target; more keys make shards larger).
const MAX_SHARD_BITS: u32 = 16;

/// Shard bits for `n` keys: 2^bits shards of about [`KEYS_PER_SHARD`] keys.
pub(crate) fn bits_for(n: usize) -> u32 {
    let shards = n / KEYS_PER_SHARD;
    if shards <= 1 {
        0
    } else {
        (usize::BITS - (shards - 1).leading_zeros()).min(MAX_SHARD_BITS)
    }
}

/// Whether an index of `n` keys in 2^`bits` shards should be rebuilt with more shards.
pub(crate) fn outgrown(n: usize, bits: u32) -> bool {
    bits < MAX_SHARD_BITS && n > (KEYS_PER_SHARD << bits) * 4
}

/// Keys by id in 2^bits shards; which shard an id belongs to is [`id_selector`], hash bits
/// that the shard's own table does not use.
#[derive(Clone)]
struct IdShards {
    shards: Box<[Arc<HashSet<ById, IdBuild>>]>,
    bits: u32,
    len: usize,
}

impl IdShards {
    fn slot(&self, selector: u16) -> usize {
        slot(self.bits, selector)
    }

    fn get(&self, selector: u16, id: &str) -> Option<&ById> {
        self.shards[self.slot(selector)].get(id)
    }

    /// Copies the shard first if another snapshot shares it.
    fn shard_mut(&mut self, selector: u16) -> &mut HashSet<ById, IdBuild> {
        let slot = self.slot(selector);
        Arc::make_mut(&mut self.shards[slot])
    }

    fn insert(&mut self, selector: u16, value: ById) -> bool {
        let added = self.shard_mut(selector).insert(value);
        self.len += usize::from(added);
        added
    }

    fn replace(&mut self, selector: u16, value: ById) -> Option<ById> {
        let old = self.shard_mut(selector).replace(value);
        self.len += usize::from(old.is_none());
        old
    }

    fn take(&mut self, selector: u16, id: &str) -> Option<ById> {
        // Look before copying a shared shard for nothing.
        self.get(selector, id)?;
        let old = self.shard_mut(selector).take(id);
        self.len -= usize::from(old.is_some());
        old
    }
}

/// The shard of a hash: bytes 8 and 9, which the shard's table (bytes 0 to 7) does not look at.
fn hash_selector(hash: &KeyHash) -> u16 {
    u16::from_le_bytes([hash.0[8], hash.0[9]])
}

/// Keys by hash: what a request looks up, in 2^bits shards (see `key_shards`).
#[derive(Clone)]
pub(crate) struct KeyIndex {
    shards: Box<[key_shards::Shard]>,
    bits: u32,
    len: usize,
}

impl KeyIndex {
    fn shard_of(&self, hash: &KeyHash) -> usize {
        slot(self.bits, hash_selector(hash))
    }
    pub(crate) fn get(&self, hash: &KeyHash) -> Option<&Arc<KeyEntry>> {
        key_shards::get(&self.shards[self.shard_of(hash)], hash)
    }
    pub(crate) fn contains(&self, hash: &KeyHash) -> bool {
        self.get(hash).is_some()
    }
    pub(crate) fn len(&self) -> usize {
        self.len
    }
    pub(crate) fn bits(&self) -> u32 {
        self.bits
    }
    /// Makes shard `at` anew: its entries that `keep` keeps, and `add`. Other snapshots sharing
    /// the old shard keep it.
    fn rebuild(&mut self, at: usize, keep: impl Fn(&KeyEntry) -> bool, add: Option<Arc<KeyEntry>>) {
        let entries: Vec<Arc<KeyEntry>> = key_shards::entries(&self.shards[at])
            .filter(|e| keep(e))
            .cloned()
            .chain(add)
            .collect();
        self.shards[at] = key_shards::rebuilt(entries.into_iter());
    }
    /// False (and nothing changes) when the hash is taken.
    pub(crate) fn insert(&mut self, entry: Arc<KeyEntry>) -> bool {
        if self.contains(&entry.hash) {
            return false;
        }
        let at = self.shard_of(&entry.hash);
        self.rebuild(at, |_| true, Some(entry));
        self.len += 1;
        true
    }
    /// Puts `entry` in place of the one with its hash.
    pub(crate) fn replace(&mut self, entry: Arc<KeyEntry>) -> Option<Arc<KeyEntry>> {
        let old = self.get(&entry.hash).cloned();
        let (at, hash) = (self.shard_of(&entry.hash), entry.hash);
        self.rebuild(at, |e| e.hash != hash, Some(entry));
        self.len += usize::from(old.is_none());
        old
    }
    pub(crate) fn remove(&mut self, hash: &KeyHash) -> Option<Arc<KeyEntry>> {
        let old = self.get(hash).cloned()?;
        let at = self.shard_of(hash);
        self.rebuild(at, |e| e.hash != *hash, None);
        self.len -= 1;
        Some(old)
    }
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<KeyEntry>> {
        self.shards.iter().flat_map(|s| key_shards::entries(s))
    }
}

/// A key by its id; `Hash` and `Eq` agree with `str`'s.
#[derive(Clone)]
struct ById(Arc<KeyEntry>);

/// Hashes as `str` does (its bytes, then `0xff`), without checking the bytes are UTF-8 again.
impl Hash for ById {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.0.id_bytes());
        state.write_u8(0xff);
    }
}
impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.id_bytes() == other.0.id_bytes()
    }
}
impl Eq for ById {}
impl Borrow<str> for ById {
    fn borrow(&self) -> &str {
        self.0.id()
    }
}

/// The hasher of maps keyed by ids and scope lists: foldhash with a fixed seed, so that an id's
/// shard is the same in every snapshot of the process. Ids come from the operator's keys file or
/// control plane, not from clients, so a fixed seed exposes nothing to them.
pub(crate) type IdBuild = foldhash::fast::FixedState;

/// The shard of an id: hash bits 32 to 47, away from those the table uses (the low bits for
/// the bucket, the top seven for its tag).
fn id_selector(id: &str) -> u16 {
    (IdBuild::default().hash_one(id) >> 32) as u16
}

/// Keys by id: what a delta names.
#[derive(Clone)]
pub(crate) struct IdIndex(IdShards);

impl IdIndex {
    pub(crate) fn get(&self, id: &str) -> Option<&Arc<KeyEntry>> {
        self.0.get(id_selector(id), id).map(|e| &e.0)
    }
    pub(crate) fn insert(&mut self, entry: Arc<KeyEntry>) -> bool {
        self.0.insert(id_selector(entry.id()), ById(entry))
    }
    pub(crate) fn replace(&mut self, entry: Arc<KeyEntry>) -> Option<Arc<KeyEntry>> {
        self.0
            .replace(id_selector(entry.id()), ById(entry))
            .map(|e| e.0)
    }
    pub(crate) fn remove(&mut self, id: &str) -> Option<Arc<KeyEntry>> {
        self.0.take(id_selector(id), id).map(|e| e.0)
    }
}

/// Both indexes, built together from entries in document order: an entry whose id or hash an
/// earlier entry already holds is handed to `rejected` with the reason instead.
///
/// Every shard starts at its final size (counted first): a shard that grows rehashes, which
/// means visiting its entries again, at a cache miss each.
pub(crate) fn build(
    entries: Vec<Arc<KeyEntry>>,
    mut rejected: impl FnMut(Arc<KeyEntry>, InvalidEntry),
) -> (KeyIndex, IdIndex) {
    let bits = bits_for(entries.len());
    let (sizes_by_hash, sizes_by_id) = shard_sizes(&entries, bits);
    let mut keys: Vec<key_shards::Shard> = sizes_by_hash
        .iter()
        .map(|&n| key_shards::empty(n))
        .collect();
    let mut ids: Vec<HashSet<ById, IdBuild>> = sizes_by_id
        .iter()
        .map(|&n| HashSet::with_capacity_and_hasher(n, IdBuild::default()))
        .collect();
    let mut len = 0;
    for e in entries {
        let by_id = &mut ids[slot(bits, id_selector(e.id()))];
        if !by_id.insert(ById(e.clone())) {
            rejected(e, InvalidEntry::DuplicateId);
            continue;
        }
        let by_hash = Arc::get_mut(&mut keys[slot(bits, hash_selector(&e.hash))])
            .expect("a shard being built is not shared");
        if let Err(e) = key_shards::insert_new(by_hash, e) {
            // Two ids for one secret would make the caller's identity ambiguous.
            by_id.remove(e.id());
            rejected(e, InvalidEntry::DuplicateHash);
            continue;
        }
        len += 1;
    }
    let keys = KeyIndex {
        shards: keys.into_boxed_slice(),
        bits,
        len,
    };
    let ids = IdShards {
        shards: ids.into_iter().map(Arc::new).collect(),
        bits,
        len,
    };
    (keys, IdIndex(ids))
}

/// How many entries fall in each shard, by hash and by id.
fn shard_sizes(entries: &[Arc<KeyEntry>], bits: u32) -> (Vec<usize>, Vec<usize>) {
    let mut by_hash = vec![0usize; 1 << bits];
    let mut by_id = vec![0usize; 1 << bits];
    for e in entries {
        by_hash[slot(bits, hash_selector(&e.hash))] += 1;
        by_id[slot(bits, id_selector(e.id()))] += 1;
    }
    (by_hash, by_id)
}

/// Which of 2^`bits` shards a selector picks: its top `bits` bits.
fn slot(bits: u32, selector: u16) -> usize {
    match bits {
        0 => 0,
        b => usize::from(selector >> (16 - b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_bits_follow_the_key_count() {
        assert_eq!(bits_for(0), 0);
        assert_eq!(bits_for(63), 0);
        assert_eq!(bits_for(20_000), 10);
        assert_eq!(bits_for(1_000_000), 15);
        assert_eq!(bits_for(usize::MAX / 2), MAX_SHARD_BITS);
        assert!(!outgrown(4 * KEYS_PER_SHARD, 0));
        assert!(outgrown(4 * KEYS_PER_SHARD + 1, 0));
        assert!(!outgrown(usize::MAX, MAX_SHARD_BITS));
    }

    #[test]
    fn an_id_entry_hashes_like_its_id() {
        let s = crate::snapshot::parse(
            br#"{"version":1,"keys":[{"id":"key_0123456789abcdefghij","internal":true,
                "hash":"0000000000000000000000000000000000000000000000000000000000000000"}]}"#,
            crate::snapshot::Format::Json,
            "t",
        )
        .unwrap();
        let e = s.key_by_id("key_0123456789abcdefghij").unwrap();
        assert_eq!(
            IdBuild::default().hash_one(ById(e.clone())),
            IdBuild::default().hash_one(e.id())
        );
    }

    #[test]
    fn id_hashes_spread_over_shards_and_buckets() {
        let mut shards = std::collections::HashSet::new();
        let mut low = std::collections::HashSet::new();
        for i in 0..4096 {
            let id = format!("key_{i}");
            shards.insert(id_selector(&id) >> 8);
            low.insert(IdBuild::default().hash_one(id.as_str()) & 0xff);
        }
        assert_eq!((shards.len(), low.len()), (256, 256));
    }
}

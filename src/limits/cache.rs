//! Where a workspace's limiter state is, remembered by the snapshot workspace itself.
//!
//! The limiter's map stays the owner of every state (states outlive snapshot swaps, and idle ones
//! are evicted); a cache only saves the lookup. It can be out of date in two ways, both checked
//! on use: the state was evicted (then it is marked, under its lock), or it belongs to another
//! limiter (each has an id). Either way the request falls back to the map and refreshes the cache.
//!
//! Memory: a cache would keep an evicted state alive until its workspace's next request, so the
//! eviction pass also has each workspace of the snapshot in force forget an evicted state
//! ([`StateCache::forget_if_evicted`]); memory follows active workspaces, as without caches.

use super::Slot;
use arc_swap::ArcSwapOption;
use std::sync::Arc;

#[derive(Default)]
pub struct StateCache(ArcSwapOption<Slot>);

impl StateCache {
    pub(super) fn get(&self) -> arc_swap::Guard<Option<Arc<Slot>>> {
        self.0.load()
    }

    pub(super) fn set(&self, slot: &Arc<Slot>) {
        self.0.store(Some(slot.clone()));
    }

    /// Lets go of a state the limiter has evicted, so that its memory is freed; true if it did.
    /// A request that refreshed the cache meanwhile keeps its state.
    pub fn forget_if_evicted(&self) -> bool {
        let held = self.0.load();
        let evicted = held
            .as_ref()
            .is_some_and(|slot| super::lock(&slot.state).evicted);
        if evicted {
            self.0.compare_and_swap(&held, None);
        }
        evicted
    }
}

impl std::fmt::Debug for StateCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = if self.0.load().is_some() {
            "set"
        } else {
            "empty"
        };
        write!(f, "StateCache({held})")
    }
}

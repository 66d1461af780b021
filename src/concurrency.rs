//! Caps on requests in flight: at most N of a workspace's requests at once on this host, so a
//! slow upstream cannot let one workspace hold every upstream connection while its rate stays
//! inside its limits.
//!
//! The count is a count-min sketch from `pingora_limits` (its `Estimator`), the one behind its
//! `Inflight`, sized for this job: 2 rows × 65,536 counters (1 MiB, fixed) instead of
//! `Inflight`'s fixed 4 × 8,192. Each row costs a hash and, on a host whose caches are full of
//! keys, a cache miss on every request: at a million keys `Inflight` added about 250 ns a
//! decision, four misses. A request takes a [`Slot`] when it is let through and gives it back
//! when its context is dropped, after the response and the access log.
//!
//! The estimate can only be too high, never too low: a workspace is refused wrongly only when,
//! in both rows, its counter is shared with other workspaces whose requests in flight carry it
//! past its cap. With W workspaces in flight at the same instant, the odds that both rows collide
//! are about (W / 65,536)²: 2×10⁻⁴ for 1,000 such workspaces (`Inflight`'s (W / 8,192)⁴ is the
//! same there, and worse beyond), before asking whether the shared counts reach a cap, which
//! with caps far above a normal count they seldom do. Approximation is harmless here; a rate
//! limit, which is a promise, stays exact.
//!
//! The cap is per host, like the count: with fleet-wide limits the rates hold across hosts, and
//! each host still caps what it holds open.

use crate::limits::SubjectKind;
use crate::snapshot::{KeyEntry, Owner, WorkspaceKind};
use pingora_limits::estimator::Estimator;
use std::hash::BuildHasher;
use std::num::NonZeroU32;
use std::sync::Arc;

/// The configured caps by kind of caller (`limits.<kind>.concurrent_requests`); `None`: no cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConcurrencyCaps {
    pub live: Option<NonZeroU32>,
    pub sandbox: Option<NonZeroU32>,
    /// Per internal key, when `limits.internal` gives one.
    pub internal: Option<NonZeroU32>,
}

impl ConcurrencyCaps {
    /// The cap on `key`'s caller and what kind of caller it is; `None`: uncapped. A workspace's
    /// own cap (in the snapshot) wins over its kind's.
    pub fn cap_for(&self, key: &KeyEntry) -> Option<(NonZeroU32, SubjectKind)> {
        match &key.owner {
            Owner::Internal => Some((self.internal?, SubjectKind::Internal)),
            Owner::Workspace(w) => {
                let configured = match w.kind {
                    WorkspaceKind::Live => self.live,
                    WorkspaceKind::Sandbox => self.sandbox,
                };
                Some((w.limits.concurrent_requests.or(configured)?, w.kind.into()))
            }
        }
    }
}

/// Rows of the sketch: each costs a hash and, on a busy host, a cache miss per request.
const ROWS: usize = 2;
/// Counters per row (1 MiB in all).
const SLOTS: usize = 65_536;

/// Requests in flight, per workspace (or internal key).
pub struct InFlight {
    counts: Arc<Estimator>,
    hasher: foldhash::fast::RandomState,
}

impl Default for InFlight {
    fn default() -> Self {
        InFlight {
            counts: Arc::new(Estimator::new(ROWS, SLOTS)),
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight").finish_non_exhaustive()
    }
}

/// One request's place among its caller's requests in flight; given back when dropped.
pub struct Slot {
    counts: Arc<Estimator>,
    /// The caller's hash: what the sketch is indexed by.
    id: u64,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").finish_non_exhaustive()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.counts.decr(self.id, 1);
    }
}

impl InFlight {
    /// Takes a slot for a request by `key`'s caller, unless `cap` of them are in flight already.
    pub fn enter(&self, key: &KeyEntry, cap: NonZeroU32) -> Option<Slot> {
        // Workspace and key ids are separate namespaces: the tag keeps a workspace and an
        // internal key of the same name apart.
        let id = match &key.owner {
            Owner::Workspace(w) => self.hasher.hash_one((0u8, &*w.id)),
            Owner::Internal => self.hasher.hash_one((1u8, key.id())),
        };
        let count = self.counts.incr(id, 1);
        let slot = Slot {
            counts: self.counts.clone(),
            id,
        };
        // Over the cap, the slot is dropped here and takes its count back with it.
        (count <= cap.get() as isize).then_some(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::KeyHash;
    use crate::snapshot::{Format, parse};

    #[test]
    fn a_slot_is_given_back_when_dropped_and_callers_are_counted_apart() {
        let doc = format!(
            r#"{{"version":1,"workspaces":[{{"id":"a","type":"live"}},{{"id":"b","type":"live"}}],
               "keys":[{{"id":"ka","hash":"{}","workspace":"a"}},{{"id":"kb","hash":"{}","workspace":"b"}},
                       {{"id":"a","hash":"{}","internal":true}}]}}"#,
            KeyHash::of("sa").to_hex(),
            KeyHash::of("sb").to_hex(),
            KeyHash::of("si").to_hex()
        );
        let snap = parse(doc.as_bytes(), Format::Json, "t").unwrap();
        let key = |s: &str| snap.key(&KeyHash::of(s)).unwrap().clone();
        let (a, b, internal) = (key("sa"), key("sb"), key("si"));
        let in_flight = InFlight::default();
        let two = NonZeroU32::new(2).unwrap();
        let first = in_flight.enter(&a, two).unwrap();
        let second = in_flight.enter(&a, two).unwrap();
        assert!(in_flight.enter(&a, two).is_none());
        // Another workspace, and an internal key named like the workspace, have their own.
        let others: Vec<_> = (0..2)
            .flat_map(|_| [in_flight.enter(&b, two), in_flight.enter(&internal, two)])
            .collect();
        assert!(others.iter().all(Option::is_some));
        drop(first);
        let third = in_flight.enter(&a, two).unwrap();
        assert!(
            in_flight.enter(&a, two).is_none(),
            "a refusal holds nothing"
        );
        drop((second, third));
        assert_eq!(
            in_flight.counts.get(in_flight.hasher.hash_one((0u8, "a"))),
            0
        );
    }
}

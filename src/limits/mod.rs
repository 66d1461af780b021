//! Per-workspace rate limits: a burst limit per second and a sustained limit per minute, exact.
//!
//! State is keyed by workspace id (or, for internal keys with limits of their own, by key id), so
//! it survives snapshot swaps; the limits themselves are read from the snapshot and the config
//! on every decision, so a changed override is in force at the swap. Each subject has its own
//! mutex behind a sharded map: decisions for different workspaces do not wait on each other, and
//! no lock is shared by all requests. Idle subjects are evicted by [`Limiter::evict_idle`].
//!
//! A snapshot workspace also remembers where its state is (a [`StateCache`]), so its requests
//! go straight to the state without hashing the id and probing the map, which with a hundred
//! thousand active workspaces costs cache misses on every request.

mod cache;
mod clock;
pub mod fleet;
mod headers;
mod subject_key;
mod window;

pub use cache::StateCache;
pub use fleet::{Attempt, Fleet, FleetConfig, OnOutage, Waiter};

pub use clock::{Clock, FakeClock, MonotonicClock};
pub use headers::{RateHeaders, add_rate_headers, rate_headers};
pub use window::{Millis, Standing};

use dashmap::DashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
pub use subject_key::SubjectKey;
use window::Window;

/// Burst: 20 buckets of 50 ms. Sustained: 60 buckets of 1 s. See `window` for what N buys.
type BurstWindow = Window<21, 50>;
type SustainedWindow = Window<61, 1_000>;

const SECOND_MS: Millis = BurstWindow::LENGTH_MS;
const MINUTE_MS: Millis = SustainedWindow::LENGTH_MS;

/// The two limits that apply to one subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub burst_per_second: u32,
    pub sustained_per_minute: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitName {
    Burst,
    Sustained,
}

impl LimitName {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitName::Burst => "burst",
            LimitName::Sustained => "sustained",
        }
    }
}

/// What kind of subject a request counted against: the `subject_type` label of a 429.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectKind {
    Live,
    Sandbox,
    /// A platform-internal key with limits of its own (`limits.internal`).
    Internal,
}

impl SubjectKind {
    pub const ALL: [SubjectKind; 3] = [
        SubjectKind::Live,
        SubjectKind::Sandbox,
        SubjectKind::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SubjectKind::Live => "live",
            SubjectKind::Sandbox => "sandbox",
            SubjectKind::Internal => "internal",
        }
    }
}

impl From<keygate_protocol::wire::WorkspaceKind> for SubjectKind {
    fn from(kind: keygate_protocol::wire::WorkspaceKind) -> Self {
        match kind {
            keygate_protocol::wire::WorkspaceKind::Live => SubjectKind::Live,
            keygate_protocol::wire::WorkspaceKind::Sandbox => SubjectKind::Sandbox,
        }
    }
}

/// Where both limits stand after a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub burst: Standing,
    pub sustained: Standing,
}

impl Usage {
    /// The limit closest to binding: the one with the fewest requests left (on a tie, the one
    /// that takes longer to recover).
    pub fn binding(&self) -> (LimitName, &Standing) {
        let (b, s) = (&self.burst, &self.sustained);
        if (b.remaining, s.reset_ms) <= (s.remaining, b.reset_ms) {
            (LimitName::Burst, b)
        } else {
            (LimitName::Sustained, s)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Admitted(Usage),
    /// Refused, and not counted. `retry_after_secs` is when a request would be admitted.
    Limited {
        limit: LimitName,
        retry_after_secs: u32,
        usage: Usage,
    },
    /// Fleet-wide limits: no token on hand; wait for Redis (at most `command_timeout`), then
    /// decide again with the [`Attempt`] the wait ended in.
    Wait(Waiter),
    /// Fleet-wide limits with `on_outage: deny`: Redis cannot say, so the request is refused.
    Unavailable,
}

/// Who a request is counted against.
#[derive(Debug, Clone, Copy)]
pub enum Subject<'a> {
    Workspace(&'a str),
    /// A snapshot workspace, by the key and the cache it carries: the request path's way.
    CachedWorkspace(&'a SubjectKey, &'a StateCache),
    InternalKey(&'a str),
}

/// `repr(C)`, with each window's bookkeeping ahead of its buckets: a decision reads the map slot's
/// first lines (key, lock, burst window) and the sustained window's newest buckets, and with
/// many active workspaces each line read is a likely cache miss.
#[derive(Default)]
#[repr(C)]
struct State {
    burst: BurstWindow,
    sustained: SustainedWindow,
    /// Set, under the lock, when the map drops this state: a cache that still holds it must
    /// look the subject up again rather than count into a state nobody else sees.
    evicted: bool,
    /// With fleet-wide limits: this sidecar's leases for the subject (boxed: most subjects of a
    /// local-only limiter never need one).
    lease: Option<Box<fleet::LeaseBook>>,
}

impl State {
    fn decide(&mut self, now: Millis, p: Policy) -> Verdict {
        let burst_ok = self.burst.has_room(now, p.burst_per_second);
        let sustained_ok = self.sustained.has_room(now, p.sustained_per_minute);
        if burst_ok && sustained_ok {
            self.burst.count();
            self.sustained.count();
        }
        let usage = Usage {
            burst: self.burst.standing(now, p.burst_per_second),
            sustained: self.sustained.standing(now, p.sustained_per_minute),
        };
        if burst_ok && sustained_ok {
            return Verdict::Admitted(usage);
        }
        // A limit with room now keeps it while nothing is admitted, so the wait is the longer
        // of the full limits' waits; that limit is the one named.
        let (limit, retry_ms) = match (burst_ok, sustained_ok) {
            (false, true) => (LimitName::Burst, usage.burst.retry_ms),
            (true, false) => (LimitName::Sustained, usage.sustained.retry_ms),
            _ if usage.sustained.retry_ms >= usage.burst.retry_ms => {
                (LimitName::Sustained, usage.sustained.retry_ms)
            }
            _ => (LimitName::Burst, usage.burst.retry_ms),
        };
        Verdict::Limited {
            limit,
            retry_after_secs: retry_ms.div_ceil(SECOND_MS).max(1) as u32,
            usage,
        }
    }

    fn is_idle(&self, now: Millis) -> bool {
        self.burst.is_idle(now)
            && self.sustained.is_idle(now)
            && self.lease.as_ref().is_none_or(|b| b.is_idle())
    }

    /// Counts an admission decided elsewhere (by the fleet): the local windows see every
    /// admission, so that an outage's local share starts from this sidecar's real recent load.
    fn count_local(&mut self, now: Millis) {
        self.burst.has_room(now, u32::MAX);
        self.sustained.has_room(now, u32::MAX);
        self.burst.count();
        self.sustained.count();
    }

    /// The local windows' view, under `p`.
    fn local_usage(&self, now: Millis, p: Policy) -> Usage {
        Usage {
            burst: self.burst.standing(now, p.burst_per_second),
            sustained: self.sustained.standing(now, p.sustained_per_minute),
        }
    }
}

/// One subject's state, owned by the limiter's map and shared with the caches that remember it.
struct Slot {
    /// The limiter it belongs to: a cache is trusted only by that limiter.
    limiter: u64,
    /// The subject's requests in flight on this host, for its cap ([`InFlight`]). Beside the
    /// lock the decision has just taken, so counting costs no cache miss; a state with requests
    /// in flight is never evicted, so the count survives idle minutes and snapshot swaps.
    in_flight: AtomicU32,
    state: Mutex<State>,
}

impl Slot {
    fn new(limiter: u64) -> Arc<Slot> {
        Arc::new(Slot {
            limiter,
            in_flight: AtomicU32::new(0),
            state: Mutex::default(),
        })
    }

    /// How many exchanges with Redis this subject has had: what a waiting request watches.
    fn generation(&self) -> u64 {
        lock(&self.state)
            .lease
            .as_ref()
            .map_or(0, |b| b.generation())
    }
}

/// Which map a subject lives in: also its Redis key's kind.
#[derive(Clone, Copy)]
enum Class {
    Workspace,
    InternalKey,
}

impl Class {
    fn as_str(self) -> &'static str {
        match self {
            Class::Workspace => "ws",
            Class::InternalKey => "key",
        }
    }
}

type Subjects = DashMap<SubjectKey, Arc<Slot>, foldhash::fast::RandomState>;

/// Gives each limiter its own id, for [`Slot::limiter`].
static LIMITERS: AtomicU64 = AtomicU64::new(0);

pub struct Limiter {
    id: u64,
    clock: Arc<dyn Clock>,
    workspaces: Subjects,
    internal_keys: Subjects,
    /// Fleet-wide limits through Redis; `None`: this host's limits alone.
    fleet: Option<Arc<Fleet>>,
}

impl Limiter {
    pub fn new(clock: Arc<dyn Clock>) -> Limiter {
        Limiter {
            id: LIMITERS.fetch_add(1, Ordering::Relaxed),
            clock,
            workspaces: DashMap::default(),
            internal_keys: DashMap::default(),
            fleet: None,
        }
    }

    /// A limiter whose limits hold across the fleet (see [`fleet`]); `fleet` must run on `clock`.
    pub fn with_fleet(clock: Arc<dyn Clock>, fleet: Arc<Fleet>) -> Limiter {
        Limiter {
            fleet: Some(fleet),
            ..Limiter::new(clock)
        }
    }

    pub fn fleet(&self) -> Option<&Arc<Fleet>> {
        self.fleet.as_ref()
    }

    /// Decides one request and, when admitted, counts it.
    pub fn check(&self, subject: Subject<'_>, policy: Policy) -> Verdict {
        self.check_with(subject, policy, Attempt::First)
    }

    /// As [`check`](Self::check), for a request's `attempt`: after a [`Verdict::Wait`], the
    /// outcome of the wait, so that a request waits for Redis at most once.
    pub fn check_with(&self, subject: Subject<'_>, policy: Policy, attempt: Attempt) -> Verdict {
        let now = self.clock.now_ms();
        let d = Decide {
            now,
            policy,
            attempt,
        };
        match subject {
            Subject::Workspace(id) => {
                self.decide_in(&self.workspaces, Class::Workspace, id.as_bytes(), None, d)
            }
            Subject::CachedWorkspace(key, cache) => {
                if let Some(slot) = cache.get().as_ref()
                    && slot.limiter == self.id
                {
                    let mut state = lock(&slot.state);
                    if !state.evicted {
                        return self.decide(&mut state, slot, Class::Workspace, key.as_bytes(), d);
                    }
                }
                self.decide_in(
                    &self.workspaces,
                    Class::Workspace,
                    key.as_bytes(),
                    Some(cache),
                    d,
                )
            }
            Subject::InternalKey(id) => self.decide_in(
                &self.internal_keys,
                Class::InternalKey,
                id.as_bytes(),
                None,
                d,
            ),
        }
    }

    /// One decision on a locked state: this host's windows, or the fleet's leases.
    fn decide(
        &self,
        state: &mut State,
        slot: &Arc<Slot>,
        class: Class,
        id: &[u8],
        d: Decide,
    ) -> Verdict {
        let Some(fleet) = &self.fleet else {
            return state.decide(d.now, d.policy);
        };
        let book = state.lease.get_or_insert_with(Box::default);
        if let Some(refill) = book.take(d.now) {
            if refill != fleet::Refill::No {
                fleet::need(fleet, slot, class.as_str(), id, d.policy, refill);
            }
            let usage = book.usage(d.now, d.policy);
            state.count_local(d.now);
            fleet.metrics.decided(if d.attempt == Attempt::First {
                fleet::DecisionPath::Lease
            } else {
                fleet::DecisionPath::Waited
            });
            return Verdict::Admitted(usage);
        }
        match book.shortfall(d.now, fleet.is_up(), d.attempt) {
            (fleet::Shortfall::Wait(generation), start) => {
                if start {
                    fleet::need(
                        fleet,
                        slot,
                        class.as_str(),
                        id,
                        d.policy,
                        fleet::Refill::Now,
                    );
                }
                Verdict::Wait(fleet::waiter(fleet, slot, generation))
            }
            (fleet::Shortfall::Full, _) => {
                fleet.metrics.decided(fleet::DecisionPath::Refused);
                let usage = book.usage(d.now, d.policy);
                let limit = if usage.burst.remaining == 0 {
                    LimitName::Burst
                } else {
                    LimitName::Sustained
                };
                let retry_ms = match limit {
                    LimitName::Burst => usage.burst.retry_ms,
                    LimitName::Sustained => usage.sustained.retry_ms,
                };
                Verdict::Limited {
                    limit,
                    retry_after_secs: retry_ms.div_ceil(SECOND_MS).max(1) as u32,
                    usage,
                }
            }
            (fleet::Shortfall::Outage, _) => {
                fleet.metrics.decided(fleet::DecisionPath::Outage);
                match fleet.config.on_outage {
                    OnOutage::Local => state.decide(d.now, fleet.config.local_policy(d.policy)),
                    OnOutage::Allow => {
                        state.count_local(d.now);
                        Verdict::Admitted(state.local_usage(d.now, d.policy))
                    }
                    OnOutage::Deny => Verdict::Unavailable,
                }
            }
        }
    }

    /// Decides through the map, remembering the state in `cache`. The state is locked while the
    /// map's shard is, so eviction (which takes the shard's write lock) cannot drop it between
    /// the lookup and the count.
    fn decide_in(
        &self,
        map: &Subjects,
        class: Class,
        id: &[u8],
        cache: Option<&StateCache>,
        d: Decide,
    ) -> Verdict {
        // The common case holds only a shard read lock; a new subject takes the write lock once.
        if let Some(slot) = map.get(id) {
            if let Some(cache) = cache {
                cache.set(&slot);
            }
            return self.decide(&mut lock(&slot.state), &slot, class, id, d);
        }
        let slot = map
            .entry(SubjectKey::from_bytes(id))
            .or_insert_with(|| Slot::new(self.id));
        if let Some(cache) = cache {
            cache.set(&slot);
        }
        self.decide(&mut lock(&slot.state), &slot, class, id, d)
    }

    /// Takes a place among `subject`'s requests in flight, unless `cap` of them are in flight
    /// already. Called after [`Limiter::check_with`] admitted the request, so the subject's
    /// state exists and, for a snapshot workspace, its cache holds it: no map lookup.
    pub fn enter(&self, subject: Subject<'_>, cap: NonZeroU32) -> Option<InFlight> {
        let slot = match subject {
            Subject::CachedWorkspace(key, cache) => match cache.get().as_ref() {
                Some(slot) if slot.limiter == self.id => slot.clone(),
                _ => self.slot_in(&self.workspaces, key.as_bytes(), Some(cache)),
            },
            Subject::Workspace(id) => self.slot_in(&self.workspaces, id.as_bytes(), None),
            Subject::InternalKey(id) => self.slot_in(&self.internal_keys, id.as_bytes(), None),
        };
        // Exact: a request over the cap never adds itself, even for an instant, so it cannot
        // make a neighbour's request look over the cap too.
        slot.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap.get()).then_some(n + 1)
            })
            .ok()?;
        Some(InFlight { slot })
    }

    /// The subject's state, made if it has none. Unlike [`Limiter::decide_in`], which decides
    /// under the map's shard guard so that eviction cannot drop the state in between, this lets
    /// the guard go: it serves [`Limiter::enter`], right after a count that keeps the state from
    /// being idle, and a state with requests in flight is never evicted.
    fn slot_in(&self, map: &Subjects, id: &[u8], cache: Option<&StateCache>) -> Arc<Slot> {
        let slot = match map.get(id) {
            Some(slot) => slot.clone(),
            None => map
                .entry(SubjectKey::from_bytes(id))
                .or_insert_with(|| Slot::new(self.id))
                .clone(),
        };
        if let Some(cache) = cache {
            cache.set(&slot);
        }
        slot
    }

    /// Drops the state of subjects with nothing left in either window; returns how many.
    pub fn evict_idle(&self) -> usize {
        let now = self.clock.now_ms();
        let before = self.active();
        for map in [&self.workspaces, &self.internal_keys] {
            map.retain(|_, slot| {
                let mut state = lock(&slot.state);
                state.evicted = state.is_idle(now) && slot.in_flight.load(Ordering::Acquire) == 0;
                !state.evicted
            });
        }
        before - self.active()
    }

    /// Subjects with state in memory.
    pub fn active(&self) -> usize {
        self.workspaces.len() + self.internal_keys.len()
    }
}

/// One request's place among its subject's requests in flight; given back when dropped.
/// See [`crate::concurrency`].
pub struct InFlight {
    slot: Arc<Slot>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.slot.in_flight.fetch_sub(1, Ordering::Release);
    }
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight").finish_non_exhaustive()
    }
}

/// What one decision is asked.
#[derive(Clone, Copy)]
struct Decide {
    now: Millis,
    policy: Policy,
    attempt: Attempt,
}

/// A panic while a state was locked leaves only counters behind, which stay consistent enough
/// to keep limiting: carry on rather than failing every later request of that workspace.
fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests;

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
mod headers;
mod subject_key;
mod window;

pub use cache::StateCache;

pub use clock::{Clock, FakeClock, MonotonicClock};
pub use headers::{RateHeaders, rate_headers};
pub use window::{Millis, Standing};

use dashmap::DashMap;
use std::sync::atomic::{AtomicU64, Ordering};
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Admitted(Usage),
    /// Refused, and not counted. `retry_after_secs` is when a request would be admitted.
    Limited {
        limit: LimitName,
        retry_after_secs: u32,
        usage: Usage,
    },
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
        self.burst.is_idle(now) && self.sustained.is_idle(now)
    }
}

/// One subject's state, owned by the limiter's map and shared with the caches that remember it.
struct Slot {
    /// The limiter it belongs to: a cache is trusted only by that limiter.
    limiter: u64,
    state: Mutex<State>,
}

type Subjects = DashMap<SubjectKey, Arc<Slot>, foldhash::fast::RandomState>;

/// Gives each limiter its own id, for [`Slot::limiter`].
static LIMITERS: AtomicU64 = AtomicU64::new(0);

pub struct Limiter {
    id: u64,
    clock: Arc<dyn Clock>,
    workspaces: Subjects,
    internal_keys: Subjects,
}

impl Limiter {
    pub fn new(clock: Arc<dyn Clock>) -> Limiter {
        Limiter {
            id: LIMITERS.fetch_add(1, Ordering::Relaxed),
            clock,
            workspaces: DashMap::default(),
            internal_keys: DashMap::default(),
        }
    }

    /// Decides one request and, when admitted, counts it.
    pub fn check(&self, subject: Subject<'_>, policy: Policy) -> Verdict {
        let now = self.clock.now_ms();
        match subject {
            Subject::Workspace(id) => {
                self.decide_in(&self.workspaces, id.as_bytes(), None, now, policy)
            }
            Subject::CachedWorkspace(key, cache) => {
                if let Some(slot) = cache.get().as_ref() {
                    if slot.limiter == self.id {
                        let mut state = lock(&slot.state);
                        if !state.evicted {
                            return state.decide(now, policy);
                        }
                    }
                }
                self.decide_in(&self.workspaces, key.as_bytes(), Some(cache), now, policy)
            }
            Subject::InternalKey(id) => {
                self.decide_in(&self.internal_keys, id.as_bytes(), None, now, policy)
            }
        }
    }

    /// Decides through the map, remembering the state in `cache`. The state is locked while the
    /// map's shard is, so eviction (which takes the shard's write lock) cannot drop it between
    /// the lookup and the count.
    fn decide_in(
        &self,
        map: &Subjects,
        id: &[u8],
        cache: Option<&StateCache>,
        now: Millis,
        policy: Policy,
    ) -> Verdict {
        // The common case holds only a shard read lock; a new subject takes the write lock once.
        if let Some(slot) = map.get(id) {
            if let Some(cache) = cache {
                cache.set(&slot);
            }
            return lock(&slot.state).decide(now, policy);
        }
        let slot = map.entry(SubjectKey::from_bytes(id)).or_insert_with(|| {
            Arc::new(Slot {
                limiter: self.id,
                state: Mutex::default(),
            })
        });
        if let Some(cache) = cache {
            cache.set(&slot);
        }
        lock(&slot.state).decide(now, policy)
    }

    /// Drops the state of subjects with nothing left in either window; returns how many.
    pub fn evict_idle(&self) -> usize {
        let now = self.clock.now_ms();
        let before = self.active();
        for map in [&self.workspaces, &self.internal_keys] {
            map.retain(|_, slot| {
                let mut state = lock(&slot.state);
                state.evicted = state.is_idle(now);
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

/// A panic while a state was locked leaves only counters behind, which stay consistent enough
/// to keep limiting: carry on rather than failing every later request of that workspace.
fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests;

//! Per-workspace rate limits: a burst limit per second and a sustained limit per minute, exact.
//!
//! State is keyed by workspace id (or, for internal keys with limits of their own, by key id), so
//! it survives snapshot swaps; the limits themselves are read from the snapshot and the config
//! on every decision, so a changed override is in force at the swap. Each subject has its own
//! mutex behind a sharded map: decisions for different workspaces do not wait on each other, and
//! no lock is shared by all requests. Idle subjects are evicted by [`Limiter::evict_idle`].

mod clock;
mod headers;
mod subject_key;
mod window;

pub use clock::{Clock, FakeClock, MonotonicClock};
pub use headers::{RateHeaders, rate_headers};
pub use window::{Millis, Standing};

use dashmap::DashMap;
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
    /// A workspace by the key its snapshot entry holds: the request path's way, which reads the
    /// id from the workspace's own memory rather than through a pointer to the id string.
    WorkspaceKey(&'a SubjectKey),
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

type Subjects = DashMap<SubjectKey, Mutex<State>, foldhash::fast::RandomState>;

pub struct Limiter {
    clock: Arc<dyn Clock>,
    workspaces: Subjects,
    internal_keys: Subjects,
}

impl Limiter {
    pub fn new(clock: Arc<dyn Clock>) -> Limiter {
        Limiter {
            clock,
            workspaces: DashMap::default(),
            internal_keys: DashMap::default(),
        }
    }

    /// Decides one request and, when admitted, counts it.
    pub fn check(&self, subject: Subject<'_>, policy: Policy) -> Verdict {
        let (map, id) = match subject {
            Subject::Workspace(id) => (&self.workspaces, id.as_bytes()),
            Subject::WorkspaceKey(key) => (&self.workspaces, key.as_bytes()),
            Subject::InternalKey(id) => (&self.internal_keys, id.as_bytes()),
        };
        self.decide_in(map, id, policy)
    }

    fn decide_in(&self, map: &Subjects, id: &[u8], policy: Policy) -> Verdict {
        let now = self.clock.now_ms();
        // The common case holds only a shard read lock; a new subject takes the write lock once.
        if let Some(state) = map.get(id) {
            return lock(&state).decide(now, policy);
        }
        let state = map.entry(SubjectKey::from_bytes(id)).or_default();
        lock(&state).decide(now, policy)
    }

    /// Drops the state of subjects with nothing left in either window; returns how many.
    pub fn evict_idle(&self) -> usize {
        let now = self.clock.now_ms();
        let before = self.active();
        for map in [&self.workspaces, &self.internal_keys] {
            map.retain(|_, state| {
                !state
                    .get_mut()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .is_idle(now)
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

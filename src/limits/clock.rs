//! Time for the limiter: a monotonic clock in production, a settable one in tests and benches.

use super::Millis;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

pub trait Clock: Send + Sync {
    fn now_ms(&self) -> Millis;
}

/// Milliseconds since the clock was made; immune to wall-clock jumps.
pub struct MonotonicClock(Instant);

impl MonotonicClock {
    pub fn new() -> Self {
        MonotonicClock(Instant::now())
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now_ms(&self) -> Millis {
        self.0.elapsed().as_millis() as Millis
    }
}

/// A clock that moves only when told: limiter tests check exact bounds without sleeping.
#[derive(Default)]
pub struct FakeClock(AtomicU64);

impl FakeClock {
    pub fn at(ms: Millis) -> Self {
        FakeClock(AtomicU64::new(ms))
    }
    pub fn set(&self, ms: Millis) {
        self.0.store(ms, Ordering::SeqCst);
    }
    pub fn advance(&self, ms: Millis) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now_ms(&self) -> Millis {
        self.0.load(Ordering::SeqCst)
    }
}

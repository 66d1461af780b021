//! Caps on requests in flight: at most N of a workspace's requests at once on this host, so a
//! slow upstream cannot let one workspace hold every upstream connection while its rate stays
//! inside its limits.
//!
//! The count is exact and lives beside the workspace's rate-limit state in the limiter
//! ([`crate::limits::Limiter::enter`]), which the decision has just locked: counting costs no cache
//! miss, and the count outlives snapshot swaps. A request takes its place when it is let through
//! and gives it back when its context is dropped, after the response and the access log.
//!
//! Not `pingora_limits::inflight::Inflight`, as first planned. Measured in the decision bench at
//! 1,000,000 keys, its count-min sketch (4 × 8,192 counters, 256 KiB) added about 250 ns a
//! decision: four counters, each a cache miss on a host whose caches are full of keys. Sized down
//! to 2 × 65,536 it still added 300–400 ns (misses and TLB misses on 1 MiB). And it over-counts
//! by design, refusing a workspace whose counters collide with busy ones. An exact counter on a
//! line already in cache costs neither. `pingora_limits` keeps the job it fits: the
//! failed-authentication shield ([`crate::shield`]).
//!
//! The cap is per host, like the count: with fleet-wide limits the rates hold across hosts, and
//! each host still caps what it holds open.

use crate::snapshot::{KeyEntry, Owner, WorkspaceKind};
use std::num::NonZeroU32;

/// The configured caps by kind of caller (`limits.<kind>.concurrent_requests`); `None`: no cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConcurrencyCaps {
    pub live: Option<NonZeroU32>,
    pub sandbox: Option<NonZeroU32>,
    /// Per internal key, when `limits.internal` gives one.
    pub internal: Option<NonZeroU32>,
}

impl ConcurrencyCaps {
    /// The cap on `key`'s caller; `None`: uncapped. A workspace's own cap (in the snapshot)
    /// wins over its kind's.
    pub fn cap_for(&self, key: &KeyEntry) -> Option<NonZeroU32> {
        match &key.owner {
            Owner::Internal => self.internal,
            Owner::Workspace(w) => {
                let configured = match w.kind {
                    WorkspaceKind::Live => self.live,
                    WorkspaceKind::Sandbox => self.sandbox,
                };
                w.limits.concurrent_requests.or(configured)
            }
        }
    }
}

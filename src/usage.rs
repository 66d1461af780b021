//! Per-key usage: request counts and last-used times, kept in memory and bounded.
//!
//! Recorded for every authenticated request (refused ones after authentication included). A key
//! seen for the first time once `max_keys` are tracked is not tracked; such requests are counted
//! as dropped, so the report says how much it misses. Reported on the admin `/status`.

use dashmap::DashMap;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

#[derive(Default)]
struct Entry {
    requests: AtomicU64,
    /// Requests not yet reported to the control plane.
    unflushed: AtomicU64,
    last_used_ms: AtomicU64,
}

pub struct UsageTracker {
    keys: DashMap<Box<str>, Entry, foldhash::fast::RandomState>,
    max_keys: usize,
    dropped: AtomicU64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyUsage {
    pub key_id: String,
    pub requests: u64,
    /// RFC 3339, UTC.
    pub last_used: String,
}

/// One key's requests since the last report, as `POST /v1/usage` takes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageDelta {
    pub key_id: String,
    pub requests: u64,
    pub last_used: String,
}

fn rfc3339_ms(unix_ms: u64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageReport {
    pub tracked_keys: usize,
    pub max_keys: usize,
    /// Requests of keys that could not be tracked because `max_keys` was reached.
    pub dropped_requests: u64,
    pub keys: Vec<KeyUsage>,
}

impl UsageTracker {
    pub fn new(max_keys: usize) -> UsageTracker {
        UsageTracker {
            keys: DashMap::default(),
            max_keys,
            dropped: AtomicU64::new(0),
        }
    }

    pub fn record(&self, key_id: &str, now_unix_ms: u64) {
        let touch = |e: &Entry| {
            e.requests.fetch_add(1, Ordering::Relaxed);
            e.unflushed.fetch_add(1, Ordering::Relaxed);
            e.last_used_ms.fetch_max(now_unix_ms, Ordering::Relaxed);
        };
        if let Some(e) = self.keys.get(key_id) {
            return touch(&e);
        }
        if self.keys.len() >= self.max_keys {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        touch(&self.keys.entry(Box::from(key_id)).or_default());
    }

    /// Takes the requests counted since the last call, per key, for the control plane
    /// (`POST /v1/usage`). A failed report is put back with [`UsageTracker::restore`].
    pub fn take_unflushed(&self) -> Vec<UsageDelta> {
        self.keys
            .iter()
            .filter_map(|e| {
                let requests = e.unflushed.swap(0, Ordering::Relaxed);
                (requests > 0).then(|| UsageDelta {
                    key_id: e.key().to_string(),
                    requests,
                    last_used: rfc3339_ms(e.last_used_ms.load(Ordering::Relaxed)),
                })
            })
            .collect()
    }

    /// Puts back a report that did not reach the control plane, to be sent with the next one.
    pub fn restore(&self, batch: &[UsageDelta]) {
        for d in batch {
            if let Some(e) = self.keys.get(d.key_id.as_str()) {
                e.unflushed.fetch_add(d.requests, Ordering::Relaxed);
            }
        }
    }

    pub fn tracked(&self) -> usize {
        self.keys.len()
    }

    /// Every tracked key, most recently used first.
    pub fn report(&self) -> UsageReport {
        let mut keys: Vec<(u64, KeyUsage)> = self
            .keys
            .iter()
            .map(|e| {
                let last = e.last_used_ms.load(Ordering::Relaxed);
                let time = rfc3339_ms(last);
                (
                    last,
                    KeyUsage {
                        key_id: e.key().to_string(),
                        requests: e.requests.load(Ordering::Relaxed),
                        last_used: time,
                    },
                )
            })
            .collect();
        keys.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.key_id.cmp(&b.1.key_id)));
        UsageReport {
            tracked_keys: keys.len(),
            max_keys: self.max_keys,
            dropped_requests: self.dropped.load(Ordering::Relaxed),
            keys: keys.into_iter().map(|(_, k)| k).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_keeps_the_latest_use_and_stays_bounded() {
        let u = UsageTracker::new(2);
        u.record("k1", 1_700_000_000_000);
        u.record("k1", 1_700_000_005_000);
        u.record("k1", 1_700_000_001_000);
        u.record("k2", 1_700_000_002_000);
        u.record("k3", 1_700_000_003_000);
        let r = u.report();
        assert_eq!((r.tracked_keys, r.dropped_requests), (2, 1));
        assert_eq!(r.keys[0].key_id, "k1");
        assert_eq!(r.keys[0].requests, 3);
        assert_eq!(r.keys[0].last_used, "2023-11-14T22:13:25Z");
        assert_eq!(r.keys[1].key_id, "k2");
    }

    #[test]
    fn unflushed_requests_are_taken_once_and_restored_on_failure() {
        let u = UsageTracker::new(10);
        u.record("k1", 1_700_000_000_000);
        u.record("k1", 1_700_000_001_000);
        let batch = u.take_unflushed();
        assert_eq!(batch.len(), 1);
        assert_eq!(
            (batch[0].requests, batch[0].last_used.as_str()),
            (2, "2023-11-14T22:13:21Z")
        );
        assert!(u.take_unflushed().is_empty());
        u.restore(&batch);
        u.record("k1", 1_700_000_002_000);
        assert_eq!(u.take_unflushed()[0].requests, 3);
        // The total on /status is not affected by flushing.
        assert_eq!(u.report().keys[0].requests, 3);
    }
}

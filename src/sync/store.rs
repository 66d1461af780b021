//! The one place the snapshot in force lives, with which source put it there and when that
//! source last confirmed it is current. Readers take the snapshot without a lock; a source swaps
//! a whole new snapshot in, so a request sees the old one or the new one, never a mix.

use crate::metrics::unix_ms;
use crate::snapshot::Snapshot;
use arc_swap::{ArcSwapOption, Guard};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

/// Where a snapshot came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The keys file.
    File,
    /// The control plane.
    ControlPlane,
    /// The last control-plane snapshot kept on disk, served while the control plane is down.
    DiskCache,
}

impl Source {
    pub const ALL: [Source; 3] = [Source::File, Source::ControlPlane, Source::DiskCache];

    /// The metric label and log field.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::File => "file",
            Source::ControlPlane => "control_plane",
            Source::DiskCache => "disk_cache",
        }
    }

    /// Stored in an atomic; 0 means no source yet.
    fn code(self) -> u8 {
        match self {
            Source::File => 1,
            Source::ControlPlane => 2,
            Source::DiskCache => 3,
        }
    }

    fn from_code(code: u8) -> Option<Source> {
        Source::ALL.into_iter().find(|s| s.code() == code)
    }
}

/// The snapshot in force, its source and its last confirmation.
#[derive(Default)]
pub struct SnapshotStore {
    current: ArcSwapOption<Snapshot>,
    /// Unix milliseconds when the source last confirmed the snapshot in force; 0: never.
    confirmed_at_ms: AtomicU64,
    /// [`Source::code`] of the snapshot in force; 0: none yet.
    source: AtomicU8,
}

impl SnapshotStore {
    pub fn new() -> Arc<SnapshotStore> {
        Arc::new(SnapshotStore::default())
    }

    /// The snapshot in force, for the length of one decision (never held across an `.await`).
    pub fn load(&self) -> Guard<Option<Arc<Snapshot>>> {
        self.current.load()
    }

    /// The snapshot in force, to keep.
    pub fn load_full(&self) -> Option<Arc<Snapshot>> {
        self.current.load_full()
    }

    /// Puts `snapshot` in force, confirmed now; returns the snapshot it replaced.
    pub fn install(&self, snapshot: Arc<Snapshot>, source: Source) -> Option<Arc<Snapshot>> {
        // Confirmed before the swap: a request that sees the new snapshot never finds it stale.
        self.confirm();
        self.source.store(source.code(), Ordering::Relaxed);
        self.current.swap(Some(snapshot))
    }

    /// The source has just confirmed that the snapshot in force is current.
    pub fn confirm(&self) {
        self.confirm_at(unix_ms());
    }

    /// Backdates the confirmation, e.g. to a cache file's age when serving from it.
    pub fn confirm_at(&self, unix_ms: u64) {
        self.confirmed_at_ms.store(unix_ms, Ordering::Relaxed);
    }

    /// Time since the last confirmation; `None` before the first.
    pub fn age(&self) -> Option<Duration> {
        match self.confirmed_at_ms.load(Ordering::Relaxed) {
            0 => None,
            t => Some(Duration::from_millis(unix_ms().saturating_sub(t))),
        }
    }

    /// Whether the snapshot in force may still be decided on: confirmed within `max_staleness`
    /// (always, without a maximum). A snapshot never confirmed is not fresh under a maximum.
    pub fn fresh(&self, max_staleness: Option<Duration>) -> bool {
        match (max_staleness, self.age()) {
            (None, _) => true,
            (Some(max), Some(age)) => age <= max,
            (Some(_), None) => false,
        }
    }

    /// Where the snapshot in force came from; `None` before the first.
    pub fn source(&self) -> Option<Source> {
        Source::from_code(self.source.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{Format, parse};

    fn snapshot(version: u64) -> Arc<Snapshot> {
        let doc = format!(r#"{{"version":{version},"workspaces":[],"keys":[]}}"#);
        Arc::new(parse(doc.as_bytes(), Format::Json, "test").unwrap())
    }

    #[test]
    fn an_empty_store_has_no_snapshot_source_or_age() {
        let store = SnapshotStore::new();
        assert!(store.load().is_none());
        assert_eq!(store.source(), None);
        assert_eq!(store.age(), None);
        assert!(store.fresh(None));
        assert!(!store.fresh(Some(Duration::from_secs(3600))));
    }

    #[test]
    fn install_swaps_confirms_and_records_the_source() {
        let store = SnapshotStore::new();
        assert!(store.install(snapshot(1), Source::File).is_none());
        let old = store.install(snapshot(2), Source::ControlPlane).unwrap();
        assert_eq!(old.version(), 1);
        assert_eq!(store.load_full().unwrap().version(), 2);
        assert_eq!(store.source(), Some(Source::ControlPlane));
        assert!(store.age().unwrap() < Duration::from_secs(60));
        assert!(store.fresh(Some(Duration::from_secs(60))));
    }

    #[test]
    fn a_snapshot_confirmed_too_long_ago_is_not_fresh() {
        let store = SnapshotStore::new();
        store.install(snapshot(1), Source::DiskCache);
        store.confirm_at(unix_ms() - 120_000);
        assert!(store.age().unwrap() >= Duration::from_secs(120));
        assert!(!store.fresh(Some(Duration::from_secs(60))));
        assert!(store.fresh(Some(Duration::from_secs(600))));
        assert!(store.fresh(None));
        store.confirm();
        assert!(store.fresh(Some(Duration::from_secs(60))));
    }

    #[test]
    fn sources_round_trip_through_their_codes() {
        for source in Source::ALL {
            assert_eq!(Source::from_code(source.code()), Some(source));
        }
        assert_eq!(Source::from_code(0), None);
    }
}

//! Keeping the snapshot current: the shared store the proxy reads, and the sources that fill it.

pub mod cache;
pub mod control_plane;
pub mod file;
pub mod store;
pub mod usage_report;

pub use store::{SnapshotStore, Source};

use crate::metrics::Metrics;
use crate::snapshot::Snapshot;
use std::sync::Arc;

/// How many skipped entries are logged one by one before the rest are only counted.
const LOGGED_SKIPS: usize = 20;

/// Puts an accepted snapshot in force: swaps it in, updates the metrics, logs what it holds.
pub fn install(
    store: &SnapshotStore,
    metrics: &Metrics,
    snapshot: impl Into<Arc<Snapshot>>,
    source: Source,
) {
    let snapshot: Arc<Snapshot> = snapshot.into();
    log_accepted(&snapshot, source.as_str());
    metrics.reload(source, true);
    metrics.snapshot_version.set(snapshot.version() as i64);
    metrics.snapshot_keys.set(snapshot.key_count() as i64);
    metrics
        .snapshot_workspaces
        .set(snapshot.workspace_count() as i64);
    metrics
        .snapshot_skipped
        .set(snapshot.skipped_count() as i64);
    if let Some(old) = store.install(snapshot, source) {
        retire(old);
    }
}

/// How long a swapped-out snapshot is kept before it is freed. Requests hold the snapshot for
/// microseconds; this only has to outlast them.
const RETIRE_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

/// Frees a swapped-out snapshot off the request path. Whoever drops the last reference pays for
/// freeing it — for a million keys, a large index and a million reference counts — so the last
/// reference is kept here, past any request that might still be reading it.
fn retire(old: Arc<Snapshot>) {
    let spawned = std::thread::Builder::new()
        .name("snapshot-retire".into())
        .spawn(move || {
            std::thread::sleep(RETIRE_AFTER);
            drop(old);
        });
    if let Err(e) = spawned {
        tracing::debug!("could not start a thread to free the old snapshot: {e}");
    }
}

/// Logs what an accepted snapshot holds and every entry it left out (up to a bound).
fn log_accepted(snapshot: &Snapshot, source: &str) {
    tracing::info!(
        source,
        version = snapshot.version(),
        keys = snapshot.key_count(),
        workspaces = snapshot.workspace_count(),
        signing_keys = snapshot.signing_key_count(),
        clients = snapshot.client_count(),
        skipped = snapshot.skipped_count(),
        "snapshot loaded"
    );
    for skipped in snapshot.skipped().iter().take(LOGGED_SKIPS) {
        tracing::warn!(source, "skipped {skipped}");
    }
    if snapshot.skipped_count() > LOGGED_SKIPS {
        tracing::warn!(
            source,
            "{} more entries skipped",
            snapshot.skipped_count() - LOGGED_SKIPS
        );
    }
}

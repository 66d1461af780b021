//! The keys-file source: load at start, then poll the file and swap in each good edit.
//!
//! Polling (default every 250 ms) instead of inotify: it sees edits made by renaming a new file
//! into place, by editors, and through symlink swaps such as Kubernetes ConfigMaps, and costs one
//! `stat` per tick.

use super::{SnapshotStore, Source, install};
use crate::metrics::Metrics;
use crate::snapshot;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What identifies one version of the file on disk, cheaply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn fingerprint(path: &std::path::Path) -> Option<Fingerprint> {
    let m = std::fs::metadata(path).ok()?;
    Some(Fingerprint {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

const SOURCE: Source = Source::File;

pub struct FileSource {
    path: PathBuf,
    interval: Duration,
    store: Arc<SnapshotStore>,
    metrics: Arc<Metrics>,
}

impl FileSource {
    pub fn new(
        path: PathBuf,
        interval: Duration,
        store: Arc<SnapshotStore>,
        metrics: Arc<Metrics>,
    ) -> Self {
        FileSource {
            path,
            interval,
            store,
            metrics,
        }
    }

    /// The first load, before serving: a keys file that cannot be read is a start-up error.
    pub fn load_initial(&self) -> Result<(), snapshot::SnapshotError> {
        let snapshot = snapshot::load_file(&self.path)?;
        install(&self.store, &self.metrics, snapshot, SOURCE);
        Ok(())
    }

    /// Loads the file and swaps it in; on any error the current snapshot keeps serving.
    fn reload(&self) -> bool {
        match snapshot::load_file(&self.path) {
            Ok(snapshot) => {
                install(&self.store, &self.metrics, snapshot, SOURCE);
                true
            }
            Err(e) => {
                match &e {
                    snapshot::SnapshotError::Read { .. } => self.metrics.sync_error(SOURCE),
                    snapshot::SnapshotError::Invalid { .. } => self.metrics.reload(SOURCE, false),
                }
                let serving = self.store.load().as_ref().map(|s| s.version());
                tracing::warn!(
                    serving_version = serving,
                    "keys file rejected, keeping the current snapshot: {e}"
                );
                false
            }
        }
    }
}

#[async_trait]
impl BackgroundService for FileSource {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut seen = fingerprint(&self.path);
        // A rejected read may have caught an editor half-way through writing: look once more on
        // the next tick even if the file looks unchanged, then wait for the next change.
        let mut retry = false;
        // Whether the file on disk is the snapshot in force: only then does a tick confirm it
        // (and keep `keygate_snapshot_age_seconds` low).
        let mut in_force = true;
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let now = fingerprint(&self.path);
            if now == seen && !retry {
                if in_force && now.is_some() {
                    self.store.confirm();
                }
                continue;
            }
            seen = now;
            if now.is_none() {
                tracing::warn!(path = %self.path.display(), "keys file is missing, keeping the current snapshot");
                self.metrics.sync_error(SOURCE);
                retry = false;
                in_force = false;
                continue;
            }
            let had_retry = retry;
            in_force = self.reload();
            retry = !in_force && !had_retry;
        }
    }
}

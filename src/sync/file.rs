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
    /// The file as it was when `load_initial` read it. The watch starts from this, not from a
    /// fresh look when its task first runs: an edit made in between (the proxy already answers
    /// by then) would otherwise count as seen and never load.
    loaded: std::sync::Mutex<Option<Fingerprint>>,
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
            loaded: std::sync::Mutex::new(None),
        }
    }

    /// The first load, before serving: a keys file that cannot be read is a start-up error.
    pub fn load_initial(&self) -> Result<(), snapshot::SnapshotError> {
        // Taken before the read: an edit racing the read then shows as a change and is re-read.
        let before = fingerprint(&self.path);
        let snapshot = snapshot::load_file(&self.path)?;
        install(&self.store, &self.metrics, snapshot, SOURCE);
        *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) = before;
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
        let mut seen = *self.loaded.lock().unwrap_or_else(|e| e.into_inner());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn keys_file(version: u64) -> String {
        format!("version: {version}\nworkspaces: [{{ id: ws, type: live }}]\nkeys: []\n")
    }

    /// An edit that lands after the first load but before the watch's task first runs is still
    /// loaded. (The proxy answers before background services start, so this is reachable: CI
    /// once saw a revocation ignored this way.)
    #[test]
    fn an_edit_before_the_watch_starts_is_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.yaml");
        std::fs::write(&path, keys_file(1)).unwrap();
        let store = SnapshotStore::new();
        let metrics = Arc::new(Metrics::new(&[], None));
        let source = FileSource::new(
            path.clone(),
            Duration::from_millis(5),
            store.clone(),
            metrics,
        );
        source.load_initial().unwrap();

        let tmp = dir.path().join("keys.yaml.tmp");
        std::fs::write(&tmp, keys_file(2)).unwrap();
        std::fs::rename(&tmp, &path).unwrap();

        let version = || store.load().as_ref().map(|s| s.version());
        assert_eq!(version(), Some(1));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let loaded = runtime.block_on(async {
            let wait = async {
                let loaded = tokio::time::timeout(Duration::from_secs(5), async {
                    while version() != Some(2) {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
                .await;
                stop.send(true).unwrap();
                loaded.is_ok()
            };
            tokio::join!(source.start(shutdown), wait).1
        });
        assert!(loaded, "the edit was never loaded");
    }
}

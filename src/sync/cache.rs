//! The last-known-good snapshot on disk, so that keygate can start while the control plane is
//! unreachable.
//!
//! Every accepted control-plane snapshot is written atomically — temp file (mode 0600), fsync,
//! rename, fsync of the directory — so a crash leaves the old file or the new one, never half of
//! one. Writes run off the sync loop and coalesce: if snapshots arrive faster than a large one
//! can be written, the newest is written next and the ones in between are skipped.

use crate::snapshot::{self, Format, Snapshot};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub struct CacheWriter {
    path: PathBuf,
    pending: Mutex<Option<Arc<Snapshot>>>,
    writing: AtomicBool,
}

impl CacheWriter {
    pub fn new(path: PathBuf) -> Arc<CacheWriter> {
        Arc::new(CacheWriter {
            path,
            pending: Mutex::new(None),
            writing: AtomicBool::new(false),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the cached snapshot. A missing, unreadable or corrupt file is an error for the
    /// caller to report; it never replaces a snapshot in force.
    pub fn load(&self) -> Result<Snapshot, snapshot::SnapshotError> {
        let bytes = std::fs::read(&self.path).map_err(|source| snapshot::SnapshotError::Read {
            path: self.path.clone(),
            source,
        })?;
        snapshot::parse(&bytes, Format::Json, &self.path.display().to_string())
    }

    /// Queues `snapshot` to be written; returns at once.
    pub fn save(self: &Arc<Self>, snapshot: Arc<Snapshot>) {
        *lock(&self.pending) = Some(snapshot);
        if self.writing.swap(true, Ordering::AcqRel) {
            return; // the running writer picks up the newest when it is done
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.drain());
    }

    fn drain(&self) {
        loop {
            let next = lock(&self.pending).take();
            match next {
                Some(s) => {
                    if let Err(e) = self.write(&s) {
                        tracing::warn!(path = %self.path.display(), "could not write the snapshot cache: {e}");
                    }
                }
                None => {
                    self.writing.store(false, Ordering::Release);
                    // A save between `take` and the store above found `writing` still set.
                    if lock(&self.pending).is_none() || self.writing.swap(true, Ordering::AcqRel) {
                        return;
                    }
                }
            }
        }
    }

    /// Writes synchronously (used by the drain loop, and by tests).
    pub fn write(&self, s: &Snapshot) -> std::io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let name = self.path.file_name().unwrap_or_default().to_string_lossy();
        let tmp = dir.join(format!(".{name}.tmp"));
        {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            let mut w = std::io::BufWriter::new(&mut f);
            snapshot::write_json(s, &mut w)?;
            w.flush()?;
            drop(w);
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        std::fs::File::open(dir)?.sync_all()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

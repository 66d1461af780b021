//! The access log: one JSON line per request on stdout, serialised by [`line`] on the request's
//! thread and written in batches by [`queue`]'s thread. It bypasses `tracing` (which keeps the
//! application log): through `tracing`'s JSON layer a line cost 2.5 µs and 7 allocations.

pub mod line;
pub mod queue;

pub use line::{Line, TARGET};
pub use queue::Queue;

use std::cell::RefCell;
use std::sync::OnceLock;
use std::time::SystemTime;

/// The process's access log, once [`install`]ed: stdout, like the process.
static QUEUE: OnceLock<Queue> = OnceLock::new();

/// Sends access-log lines to `queue` from now on. Only the first call in a process counts.
pub fn install(queue: Queue) {
    let _ = QUEUE.set(queue);
}

/// Writes out every queued line and stops the writer thread (see [`Queue::close`]).
pub fn close() {
    if let Some(queue) = QUEUE.get() {
        queue.close();
    }
}

thread_local! {
    /// Each request thread formats its lines here, so the queue's lock is held for a copy only.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
}

/// Formats `line` and queues it; nothing if no access log is installed.
pub fn emit(line: &Line<'_>) {
    let Some(queue) = QUEUE.get() else { return };
    SCRATCH.with_borrow_mut(|scratch| {
        scratch.clear();
        line.write(SystemTime::now(), scratch);
        queue.push(scratch);
    });
}

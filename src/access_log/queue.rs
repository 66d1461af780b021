//! The hand-off from request threads to the thread that writes access-log lines.
//!
//! A request appends its line to one shared byte buffer under a mutex held for a copy (tens of
//! nanoseconds). The writer thread sleeps until the buffer stops being empty, then lets lines
//! gather for up to [`LINGER`] (or until [`BATCH`] bytes are waiting), swaps the buffer for its
//! empty spare and writes the lot with one `write`. Under load it wakes a few hundred times a
//! second however many requests there are, instead of once per line, and leaves the two cores
//! to the requests; idle, it never wakes.
//!
//! Nothing is dropped and nothing is reordered: lines reach the output in the order their
//! requests appended them. If the output falls [`MAX_PENDING`] bytes behind, requests wait for
//! it, as they would writing directly. Once [`Queue::close`] (the end of the process) has written
//! out the rest, a line is written directly by the request that made it.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Bytes that wake the writer early, before [`LINGER`] is up: one `write` of about this size.
pub const BATCH: usize = 64 * 1024;
/// How long the writer lets lines gather once the first one arrives. A line reaches the output
/// at most this late (plus the write), which nobody reading a log can tell.
pub const LINGER: Duration = Duration::from_millis(5);
/// The most buffer memory the writer keeps between batches.
const KEPT_CAPACITY: usize = 4 * 1024 * 1024;
/// Bytes waiting past which requests wait for the writer (about 64k typical lines).
pub const MAX_PENDING: usize = 16 * 1024 * 1024;

/// Where lines go, and the thread that writes them there.
pub struct Queue {
    shared: Arc<Shared>,
    /// The writer thread starts with the first line: after `--daemon`'s fork, which would leave a
    /// thread started earlier behind.
    start: Once,
    writer: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    state: Mutex<State>,
    /// The writer waits here for lines (or for more of them, while gathering).
    wake: Condvar,
    /// Requests wait here while [`MAX_PENDING`] bytes are waiting.
    room: Condvar,
    out: Mutex<Box<dyn Write + Send>>,
    max_pending: usize,
}

struct State {
    pending: Vec<u8>,
    writer: Writer,
    /// `close` was called: the writer thread writes what is left and stops.
    closed: bool,
    /// The writer thread has stopped (or never started): requests write their lines themselves,
    /// under the state lock so that lines stay in order.
    writer_gone: bool,
    waiting_for_room: usize,
}

/// What the writer thread is doing, so that a request signals it only when it must (a condvar
/// signal is a system call even when nobody waits).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Writer {
    /// Waiting for a first line.
    Idle,
    /// Signalled, or letting lines gather until [`LINGER`] is up or [`BATCH`] bytes wait.
    Gathering,
    /// Writing a batch; it looks for more before it sleeps again.
    Writing,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not stop the log: the data under these locks is always whole.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Queue {
    pub fn new(out: Box<dyn Write + Send>) -> Queue {
        Queue::with_limit(out, MAX_PENDING)
    }

    /// A queue whose requests wait once `max_pending` bytes wait (tests use a small one).
    pub fn with_limit(out: Box<dyn Write + Send>, max_pending: usize) -> Queue {
        Queue {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    pending: Vec::with_capacity(2 * BATCH),
                    writer: Writer::Idle,
                    closed: false,
                    writer_gone: false,
                    waiting_for_room: 0,
                }),
                wake: Condvar::new(),
                room: Condvar::new(),
                out: Mutex::new(out),
                max_pending,
            }),
            start: Once::new(),
            writer: Mutex::new(None),
        }
    }

    /// Queues `line` (whole lines only: the writer may cut between any two pushes).
    pub fn push(&self, line: &[u8]) {
        self.start.call_once(|| {
            let shared = self.shared.clone();
            let spawned = std::thread::Builder::new()
                .name("keygate-access-log".into())
                .spawn(move || shared.write_until_closed());
            match spawned {
                Ok(handle) => *lock(&self.writer) = Some(handle),
                // No thread: every line is written by its request, as after `close`.
                Err(_) => lock(&self.shared.state).writer_gone = true,
            }
        });
        let shared = &*self.shared;
        let mut state = lock(&shared.state);
        while state.pending.len() >= shared.max_pending && !state.writer_gone {
            state.waiting_for_room += 1;
            state = shared
                .room
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            state.waiting_for_room -= 1;
        }
        if state.writer_gone {
            shared.write(line);
            return;
        }
        let before = state.pending.len();
        state.pending.extend_from_slice(line);
        let signal = match state.writer {
            Writer::Idle => {
                state.writer = Writer::Gathering;
                true
            }
            Writer::Gathering => before < BATCH && state.pending.len() >= BATCH,
            Writer::Writing => false,
        };
        drop(state);
        if signal {
            shared.wake.notify_one();
        }
    }

    /// Writes out every queued line and stops the writer thread. Lines pushed afterwards are
    /// written directly. For the end of the process.
    pub fn close(&self) {
        lock(&self.shared.state).closed = true;
        self.shared.wake.notify_one();
        self.shared.room.notify_all();
        if let Some(writer) = lock(&self.writer).take() {
            let _ = writer.join();
        }
        // Lines pushed after the writer's last look, or with no writer at all; written under the
        // lock so that no line written directly from now on overtakes them.
        let mut state = lock(&self.shared.state);
        state.writer_gone = true;
        let rest = std::mem::take(&mut state.pending);
        self.shared.write(&rest);
        drop(state);
        self.shared.room.notify_all();
    }
}

impl Shared {
    fn write_until_closed(&self) {
        let mut spare = Vec::with_capacity(2 * BATCH);
        loop {
            let mut state = lock(&self.state);
            while state.pending.is_empty() {
                if state.closed {
                    return;
                }
                state.writer = Writer::Idle;
                state = self
                    .wake
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            state.writer = Writer::Gathering;
            let until = Instant::now() + LINGER;
            while state.pending.len() < BATCH && !state.closed {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                state = self
                    .wake
                    .wait_timeout(state, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            std::mem::swap(&mut state.pending, &mut spare);
            state.writer = Writer::Writing;
            let someone_waits = state.waiting_for_room > 0;
            drop(state);
            if someone_waits {
                self.room.notify_all();
            }
            self.write(&spare);
            spare.clear();
            // Both buffers keep the size a busy second gave them (so that the steady state
            // allocates nothing), but not what a stalled output made them.
            if spare.capacity() > KEPT_CAPACITY {
                spare = Vec::with_capacity(2 * BATCH);
            }
        }
    }

    fn write(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut out = lock(&self.out);
        // Nowhere to report a failed write to but the log itself; the lines are lost either way
        // (stdout closed), and the next batch tries again.
        let _ = out.write_all(bytes).and_then(|()| out.flush());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output that keeps what it is given, optionally slowly.
    #[derive(Clone, Default)]
    struct Kept {
        bytes: Arc<Mutex<Vec<u8>>>,
        writes: Arc<Mutex<usize>>,
        delay: Duration,
    }

    impl Write for Kept {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            std::thread::sleep(self.delay);
            *lock(&self.writes) += 1;
            lock(&self.bytes).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Kept {
        fn lines(&self) -> Vec<String> {
            String::from_utf8(lock(&self.bytes).clone())
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect()
        }
    }

    /// Each of `threads` pushes `per_thread` numbered lines.
    fn push_from_threads(queue: &Queue, threads: usize, per_thread: usize) {
        std::thread::scope(|s| {
            for t in 0..threads {
                s.spawn(move || {
                    for i in 0..per_thread {
                        queue.push(format!("{t} {i}\n").as_bytes());
                    }
                });
            }
        });
    }

    /// Every line arrives, whole, and each thread's lines in the order it pushed them.
    fn assert_all_in_order(lines: &[String], threads: usize, per_thread: usize) {
        assert_eq!(lines.len(), threads * per_thread);
        let mut next = vec![0; threads];
        for line in lines {
            let (t, i) = line.split_once(' ').unwrap();
            let (t, i): (usize, usize) = (t.parse().unwrap(), i.parse().unwrap());
            assert_eq!(i, next[t], "thread {t}'s lines out of order");
            next[t] += 1;
        }
    }

    #[test]
    fn lines_from_many_threads_arrive_whole_and_in_order_in_few_writes() {
        let out = Kept::default();
        let queue = Queue::new(Box::new(out.clone()));
        push_from_threads(&queue, 4, 20_000);
        queue.close();
        assert_all_in_order(&out.lines(), 4, 20_000);
        let writes = *lock(&out.writes);
        // About 1 MB: a write per batch, not per line.
        assert!(writes < 400, "{writes} writes for 80,000 lines");
    }

    #[test]
    fn a_lone_line_is_written_without_waiting_for_a_batch() {
        let out = Kept::default();
        let queue = Queue::new(Box::new(out.clone()));
        queue.push(b"one\n");
        let started = Instant::now();
        while out.lines().is_empty() {
            assert!(started.elapsed() < Duration::from_secs(5), "never written");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(out.lines(), ["one"]);
        // The writer went back to sleep; a second line wakes it again.
        queue.push(b"two\n");
        while out.lines().len() < 2 {
            assert!(started.elapsed() < Duration::from_secs(5), "never written");
            std::thread::sleep(Duration::from_millis(1));
        }
        queue.close();
        assert_eq!(out.lines(), ["one", "two"]);
    }

    #[test]
    fn a_slow_output_makes_requests_wait_and_loses_nothing() {
        let out = Kept {
            delay: Duration::from_millis(2),
            ..Kept::default()
        };
        // Room for a few lines only: the pushers outrun the writer and must wait.
        let queue = Queue::with_limit(Box::new(out.clone()), 64);
        push_from_threads(&queue, 3, 300);
        queue.close();
        assert_all_in_order(&out.lines(), 3, 300);
    }

    #[test]
    fn lines_after_close_are_written_directly() {
        let out = Kept::default();
        let queue = Queue::new(Box::new(out.clone()));
        queue.push(b"before\n");
        queue.close();
        queue.push(b"after\n");
        assert_eq!(out.lines(), ["before", "after"]);
        // Closing without a line ever pushed is fine too.
        Queue::new(Box::new(Kept::default())).close();
    }
}

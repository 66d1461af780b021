//! Where log lines go. Two streams: application logs to stderr as text, access-log lines to
//! stdout as JSON.
//!
//! `RUST_LOG`, when set, wins over the config's level — except that Pingora's own targets stay
//! at `info` or quieter, since at `debug` and `trace` they print whole request headers,
//! `Authorization` included. Access-log lines are written at the access log's own level,
//! whatever `RUST_LOG` says.
//!
//! Access-log lines are formatted on the request's thread but written by a thread of their own,
//! in batches: one `write` per request to stdout (a pipe to journald, or a file) cost more than
//! everything else keygate does per request. The queue is bounded and never drops a line; if the
//! reader falls that far behind, requests wait for it, as they did when they wrote themselves.

use crate::config::AccessLogConfig;
use crate::observe::ACCESS_TARGET;
use std::io::{BufWriter, IsTerminal};
use std::sync::Mutex;
use tracing::Subscriber;
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::filter::{EnvFilter, FilterExt, LevelFilter, Targets, filter_fn};
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::prelude::*;

/// Lines the access-log queue holds before requests wait for the writer thread.
const ACCESS_QUEUE_LINES: usize = 64 * 1024;
/// Bytes the writer thread gathers before a `write`; it also writes whenever the queue is empty.
const ACCESS_WRITE_BUFFER: usize = 64 * 1024;

/// Where access-log lines go: stdout, through the writer thread unless `direct`.
pub enum AccessSink {
    /// Written by the request's own thread (for `--daemon`, whose fork would leave the writer
    /// thread behind).
    Direct,
    Queued(NonBlocking),
}

/// Keeps the access-log writer thread running; [`LogGuard::flush`] (or dropping it) writes out
/// what is queued and stops the thread.
pub struct LogGuard {
    writer: Mutex<Option<WorkerGuard>>,
}

impl LogGuard {
    /// Writes out every queued line and stops the writer thread; lines logged afterwards are
    /// lost. For the end of the process, when nothing is served any more.
    pub fn flush(&self) {
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(writer);
    }
}

/// Installs the subscriber for the whole process (and routes the `log` crate, which Pingora
/// uses, into it). Keep the guard until the server has stopped.
pub fn init(level: &str, access_log: Option<&AccessLogConfig>, direct: bool) -> LogGuard {
    let rust_log = std::env::var("RUST_LOG").ok();
    let (sink, guard) = if direct || access_log.is_none() {
        (AccessSink::Direct, None)
    } else {
        let (writer, guard) = NonBlockingBuilder::default()
            .lossy(false)
            .buffered_lines_limit(ACCESS_QUEUE_LINES)
            .thread_name("keygate-access-log")
            .finish(BufWriter::with_capacity(
                ACCESS_WRITE_BUFFER,
                std::io::stdout(),
            ));
        (AccessSink::Queued(writer), Some(guard))
    };
    subscriber(level, rust_log.as_deref(), access_log, sink).init();
    LogGuard {
        writer: Mutex::new(guard),
    }
}

/// The subscriber `init` installs: `level` is the config's, `rust_log` the environment's.
///
/// Its maximum-level hint matters for speed, not only for what is printed: the `log` bridge caps
/// the `log` crate at that level, and every `log::debug!` Pingora runs per request below the cap
/// is skipped at its call site. Without a hint (a filter that cannot say how verbose it is) the
/// cap is `trace`, and each of those calls is built and then refused by the filters — measured
/// at 8% of keygate's instructions per request.
pub fn subscriber(
    level: &str,
    rust_log: Option<&str>,
    access_log: Option<&AccessLogConfig>,
    sink: AccessSink,
) -> impl Subscriber + Send + Sync + 'static {
    let wanted = rust_log
        .filter(|spec| !spec.trim().is_empty())
        .and_then(|spec| EnvFilter::try_new(spec).ok())
        .unwrap_or_else(|| EnvFilter::new(format!("{level},pingora=warn")));
    let no_header_dumps = Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target("pingora", LevelFilter::INFO);
    // Excludes by target only, so it places no bound on the level: say so, or the combined
    // filter would have no hint at all.
    let not_access =
        filter_fn(|meta| meta.target() != ACCESS_TARGET).with_max_level_hint(LevelFilter::TRACE);
    let app = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(wanted.and(no_header_dumps).and(not_access));
    let writer = match sink {
        AccessSink::Direct => BoxMakeWriter::new(std::io::stdout),
        AccessSink::Queued(queue) => BoxMakeWriter::new(queue),
    };
    let access = access_log.map(|a| {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(writer)
            .with_filter(Targets::new().with_target(ACCESS_TARGET, a.level))
    });
    tracing_subscriber::registry().with(app).with(access)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    fn access(level: Level) -> AccessLogConfig {
        AccessLogConfig {
            level,
            sample_ratio: 1.0,
        }
    }

    #[test]
    fn the_level_hint_is_the_most_verbose_level_any_stream_wants() {
        let hint = |level, rust_log, log: Option<AccessLogConfig>| {
            subscriber(level, rust_log, log.as_ref(), AccessSink::Direct).max_level_hint()
        };
        assert_eq!(hint("info", None, None), Some(LevelFilter::INFO));
        assert_eq!(hint("warn", None, None), Some(LevelFilter::WARN));
        assert_eq!(
            hint("info", None, Some(access(Level::INFO))),
            Some(LevelFilter::INFO)
        );
        assert_eq!(
            hint("warn", None, Some(access(Level::DEBUG))),
            Some(LevelFilter::DEBUG)
        );
        assert_eq!(
            hint("info", Some("keygate=debug"), None),
            Some(LevelFilter::DEBUG)
        );
    }
}

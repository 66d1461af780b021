//! Where log lines go. Two streams: application logs to stderr as text, through `tracing`, and
//! access-log lines to stdout as JSON, through [`crate::access_log`].
//!
//! `RUST_LOG`, when set, wins over the config's level — except that Pingora's own targets stay
//! at `info` or quieter, since at `debug` and `trace` they print whole request headers,
//! `Authorization` included. The access log is not affected by either.

use crate::access_log::{self, Queue};
use crate::config::AccessLogConfig;
use crate::connections::HEAD_REFUSED;
use std::borrow::Cow;
use std::io::IsTerminal;
use tracing::{Event, Metadata, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::filter::{EnvFilter, FilterExt, LevelFilter, Targets};
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::{DefaultFields, Writer};
use tracing_subscriber::layer::Context;
use tracing_subscriber::prelude::*;

/// Writes out the queued access-log lines when the process ends: [`LogGuard::flush`].
pub struct LogGuard(());

impl LogGuard {
    /// Writes out every queued access-log line and stops the writer thread; lines logged
    /// afterwards are written directly. For the end of the process, when nothing is served any
    /// more.
    pub fn flush(&self) {
        access_log::close();
    }
}

/// Installs the application log's subscriber for the whole process (and routes the `log`
/// crate, which Pingora uses, into it), and the access log on stdout if it is on. Keep the guard
/// until the server has stopped.
pub fn init(level: &str, access_log: Option<&AccessLogConfig>) -> LogGuard {
    let rust_log = std::env::var("RUST_LOG").ok();
    if access_log.is_some() {
        access_log::install(Queue::new(Box::new(std::io::stdout())));
    }
    subscriber(level, rust_log.as_deref()).init();
    LogGuard(())
}

/// The subscriber `init` installs: `level` is the config's, `rust_log` the environment's.
///
/// Its maximum-level hint matters for speed, not only for what is printed: the `log` bridge caps
/// the `log` crate at that level, and every `log::debug!` Pingora runs per request below the cap
/// is skipped at its call site. Without a hint (a filter that cannot say how verbose it is) the
/// cap is `trace`, and each of those calls is built and then refused by the filters — measured
/// at 8% of keygate's instructions per request.
pub fn subscriber(level: &str, rust_log: Option<&str>) -> impl Subscriber + Send + Sync + 'static {
    let wanted = rust_log
        .filter(|spec| !spec.trim().is_empty())
        .and_then(|spec| EnvFilter::try_new(spec).ok())
        .unwrap_or_else(|| EnvFilter::new(format!("{level},pingora=warn")));
    let no_header_dumps = Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target("pingora", LevelFilter::INFO);
    let app = tracing_subscriber::fmt::layer()
        .fmt_fields(Redacting)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(wanted.and(no_header_dumps).and(RoutinePingoraErrors));
    tracing_subscriber::registry().with(app)
}

/// Pingora events logged as errors for what is routine, dropped: `(target, message start)`.
///
/// "failed to acquire reusable stream": a pooled upstream connection was still held, for a
/// moment, by the task that watched it while idle. Pingora then opens a new connection and the
/// request goes on unharmed. Under load it happened on about 0.3% of requests, and an ERROR line
/// at that rate in the journal reads as an incident.
///
/// "Downstream handshake error": a client's TLS handshake failed (a scanner, a TLS 1.1 client,
/// a client that distrusts the certificate). It is the client's fault, any client can cause
/// one per connection, and each is counted in `keygate_tls_handshake_failures_total` instead.
const ROUTINE_PINGORA_ERRORS: &[(&str, &str)] = &[
    (
        "pingora_core::connectors",
        "failed to acquire reusable stream",
    ),
    (TLS_HANDSHAKE_ERROR.0, TLS_HANDSHAKE_ERROR.1),
];

const TLS_HANDSHAKE_ERROR: (&str, &str) = (
    "pingora_core::services::listening",
    "Downstream handshake error",
);

/// Drops [`ROUTINE_PINGORA_ERRORS`]; passes everything else. Only Pingora's error events are
/// looked at, so the check costs nothing on the request path.
struct RoutinePingoraErrors;

impl<S> tracing_subscriber::layer::Filter<S> for RoutinePingoraErrors {
    fn enabled(&self, _: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &Event<'_>, _: &Context<'_, S>) -> bool {
        // Pingora logs through the `log` crate: its events carry their target as a field.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        if *meta.level() != tracing::Level::ERROR || !meta.target().starts_with("pingora") {
            return true;
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        // Each head keygate refuses is counted in a metric; an ERROR line per slow client would
        // let a flood of them write the journal full.
        if meta.target() == TLS_HANDSHAKE_ERROR.0 && message.0.starts_with(TLS_HANDSHAKE_ERROR.1) {
            crate::tls::HANDSHAKE_FAILURES.inc();
        }
        !message.0.contains(HEAD_REFUSED)
            && !ROUTINE_PINGORA_ERRORS
                .iter()
                .any(|&(target, text)| meta.target() == target && message.0.starts_with(text))
    }

    /// Places no bound on the level (see `subscriber` on why a hint matters).
    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::TRACE)
    }
}

/// Formats an application-log line's fields as usual, then removes credentials from them.
///
/// Pingora puts the raw bytes of a request head it could not parse into its error (`buf: …`)
/// and logs that error at ERROR on some listeners (the admin endpoints' `ServeHttp` app), so a
/// malformed request carrying `Authorization: Bearer sk_…` would reach the journal. Every
/// application-log line — keygate's own too — goes through here; the access log has its own,
/// fixed fields and never holds a credential.
struct Redacting;

impl<'w> FormatFields<'w> for Redacting {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'w>,
        fields: R,
    ) -> std::fmt::Result {
        let mut text = String::new();
        DefaultFields::new().format_fields(Writer::new(&mut text), fields)?;
        writer.write_str(&redact(&text))
    }
}

/// `text` without raw request bytes after Pingora's `buf: `, `Bearer` credentials, or anything
/// shaped like a keygate secret.
pub fn redact(text: &str) -> Cow<'_, str> {
    const BUF: &str = "buf: ";
    let mut out = Cow::Borrowed(text);
    if let Some(at) = out.find(BUF) {
        out = Cow::Owned(format!("{}{BUF}<redacted>", &out[..at]));
    }
    for marker in ["Bearer ", "bearer ", "BEARER ", "sk_live_", "sk_test_"] {
        if out.contains(marker) {
            out = Cow::Owned(redact_after(&out, marker));
        }
    }
    out
}

/// Replaces the token that follows each `marker` with `<redacted>`.
fn redact_after(text: &str, marker: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(marker) {
        let after = at + marker.len();
        out.push_str(&rest[..after]);
        let token_len = rest[after..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\\' | ',' | ';'))
            .unwrap_or(rest.len() - after);
        if token_len > 0 && !rest[after..].starts_with("<redacted>") {
            out.push_str("<redacted>");
        }
        rest = &rest[after + token_len..];
    }
    out.push_str(rest);
    out
}

/// An event's `message` field, as text.
struct Message(String);

impl tracing::field::Visit for Message {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    /// What the filter lets through, of an event at `target` with `message`.
    fn shown(target_is_pingora_connectors: bool, level: Level, message: &str) -> bool {
        use std::sync::{Arc, Mutex};
        let out = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = out.clone();
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(move || Capture(sink.clone()))
            .with_filter(RoutinePingoraErrors);
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            match (target_is_pingora_connectors, level) {
                (true, Level::ERROR) => {
                    tracing::error!(target: "pingora_core::connectors", "{message}")
                }
                (true, _) => tracing::warn!(target: "pingora_core::connectors", "{message}"),
                (false, _) => tracing::error!(target: "keygate::proxy", "{message}"),
            }
        });
        !out.lock().unwrap().is_empty()
    }

    struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn credentials_and_raw_requests_are_redacted() {
        let pingora = r#"HTTP server fails to read from downstream: InvalidHTTPHeader context: buf: GET /metrics HTTP/1.1\r\nAuthorization: Bearer sk_live_abc\r\n"#;
        assert_eq!(
            redact(pingora),
            "HTTP server fails to read from downstream: InvalidHTTPHeader context: buf: <redacted>"
        );
        assert_eq!(
            redact("header Authorization: Bearer eyJ.x.y, next"),
            "header Authorization: Bearer <redacted>, next"
        );
        assert_eq!(
            redact("key sk_test_0123 and sk_live_9 end"),
            "key sk_test_<redacted> and sk_live_<redacted> end"
        );
        assert!(matches!(redact("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn the_application_log_goes_through_the_redaction() {
        use std::sync::{Arc, Mutex};
        let out = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = out.clone();
        let layer = tracing_subscriber::fmt::layer()
            .fmt_fields(Redacting)
            .with_writer(move || Capture(sink.clone()));
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            tracing::error!(target: "pingora_core::apps::http_app", "fails: buf: Bearer sk_live_SECRET");
        });
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        assert!(text.contains("buf: <redacted>"), "{text}");
        assert!(!text.contains("SECRET"), "{text}");
    }

    #[test]
    fn only_pingoras_routine_pool_error_is_dropped() {
        let routine = "failed to acquire reusable stream";
        assert!(!shown(true, Level::ERROR, routine));
        assert!(shown(true, Level::ERROR, "connection refused"));
        assert!(shown(true, Level::WARN, routine));
        assert!(shown(false, Level::ERROR, routine));
    }

    #[test]
    fn the_level_hint_is_the_application_logs_level() {
        let hint = |level, rust_log| subscriber(level, rust_log).max_level_hint();
        assert_eq!(hint("info", None), Some(LevelFilter::INFO));
        assert_eq!(hint("warn", None), Some(LevelFilter::WARN));
        assert_eq!(
            hint("info", Some("keygate=debug")),
            Some(LevelFilter::DEBUG)
        );
    }
}

//! Bounds on what clients can hold on the proxy listeners: open connections, the time and bytes
//! of one request head, and idle keep-alive connections when connections run short.
//!
//! Pingora gives an application no hook between accepting a connection and handing it a whole
//! request head, and bounds the head only by a per-read timeout and 1 MiB. So the proxy service
//! is wrapped ([`Bounded`]): each accepted stream is counted and wrapped ([`BoundedStream`]),
//! and the wrapper watches the reads that carry a request head. The proxy tells it where heads
//! end ([`head_done`]) and where requests end ([`request_done`]), so no second HTTP parser
//! decides anything.
//!
//! - **Open connections** above `max_connections` are closed on arrival with a 503.
//! - **A request head** must arrive whole within `head_timeout` of its first byte and within
//!   `max_head_bytes`; otherwise the client gets a 408 or 431 and the connection is closed.
//! - **A PROXY protocol header**, on a listener with `proxy_protocol`, is read first, within
//!   `head_timeout`; a connection without a good one is closed ([`crate::proxy_protocol`]).
//! - **Under pressure** (more than 90% of `max_connections` open), responses close their
//!   connection instead of keeping it alive, and a connection that turns idle is closed after
//!   `pressure_idle_timeout`. A connection idle since before the pressure began is closed at its
//!   keep-alive timeout: nothing wakes it sooner.

use crate::metrics::ConnectionMetrics;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::{
    ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, IO, Peek, Shutdown, SocketDigest, Ssl,
    Stream, TimingDigest, UniqueID,
};
use pingora::proxy::Session;
use pingora::server::ShutdownWatch;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Sleep;

/// The configured bounds (`listen.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub head_timeout: Duration,
    pub max_head_bytes: usize,
    pub pressure_idle_timeout: Duration,
    /// Each connection begins with a PROXY protocol header ([`crate::proxy_protocol`]), read
    /// within `head_timeout` before anything else.
    pub proxy_protocol: bool,
}

impl ConnectionLimits {
    /// Open connections above which keygate stops keeping connections alive.
    fn pressure_at(&self) -> usize {
        self.max_connections - self.max_connections / 10
    }
}

/// The text Pingora's error for a refused head carries; `logging` drops Pingora's ERROR lines
/// that quote it, since each refusal is counted in a metric instead.
pub const HEAD_REFUSED: &str = "keygate refused the request head";

const TOO_MANY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 113\r\nConnection: close\r\n\r\n{\"error\":\"Service Unavailable\",\"code\":\"too_many_connections\",\"message\":\"keygate has too many open connections.\"}\n";
const HEAD_TIMEOUT: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nContent-Length: 112\r\nConnection: close\r\n\r\n{\"error\":\"Request Timeout\",\"code\":\"request_head_timeout\",\"message\":\"The request head took too long to arrive.\"}\n";
const HEAD_TOO_LARGE: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: application/json\r\nContent-Length: 119\r\nConnection: close\r\n\r\n{\"error\":\"Request Header Fields Too Large\",\"code\":\"request_head_too_large\",\"message\":\"The request head is too large.\"}\n";

/// State shared by every connection of one listener service.
struct Shared {
    limits: ConnectionLimits,
    open: AtomicUsize,
    metrics: ConnectionMetrics,
}

impl Shared {
    fn under_pressure(&self) -> bool {
        self.open.load(Ordering::Relaxed) > self.limits.pressure_at()
    }
}

/// A Pingora application (the proxy) with its connections bounded.
pub struct Bounded<A> {
    inner: Arc<A>,
    shared: Arc<Shared>,
}

impl<A> Bounded<A> {
    pub fn new(inner: A, limits: ConnectionLimits, metrics: ConnectionMetrics) -> Self {
        Bounded {
            inner: Arc::new(inner),
            shared: Arc::new(Shared {
                limits,
                open: AtomicUsize::new(0),
                metrics,
            }),
        }
    }
}

impl<A> Bounded<A> {
    /// A handle on the count of open client connections, for the drain at a stop.
    pub fn open_connections(&self) -> OpenConnections {
        OpenConnections(self.shared.clone())
    }
}

/// How many client connections are open on the proxy listeners (see [`Bounded`]).
#[derive(Clone)]
pub struct OpenConnections(Arc<Shared>);

impl OpenConnections {
    pub fn count(&self) -> usize {
        self.0.open.load(Ordering::Acquire)
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Bounded<A> {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let open = self.shared.open.fetch_add(1, Ordering::Relaxed) + 1;
        if open > self.shared.limits.max_connections {
            self.shared.open.fetch_sub(1, Ordering::Relaxed);
            self.shared.metrics.refused.inc();
            // A courtesy for HTTP clients; the connection closes either way.
            let _ =
                tokio::time::timeout(Duration::from_millis(100), stream.write_all(TOO_MANY)).await;
            return None;
        }
        self.shared.metrics.open.inc();
        let mut stream = BoundedStream::new(stream, self.shared.clone());
        // Over TLS the header came before the handshake, read by `proxy_protocol::BeforeTls`.
        if self.shared.limits.proxy_protocol && stream.inner.get_ssl().is_none() {
            let header = crate::proxy_protocol::read_header(&mut stream.inner);
            match tokio::time::timeout(self.shared.limits.head_timeout, header).await {
                Ok(Ok(client)) => stream.proxied_client = client,
                Ok(Err(e)) => {
                    tracing::debug!("connection closed: {e}");
                    self.shared.metrics.proxy_header_refused.inc();
                    return None;
                }
                Err(_) => {
                    tracing::debug!("connection closed: no PROXY protocol header in time");
                    self.shared.metrics.proxy_header_refused.inc();
                    return None;
                }
            }
        }
        if crate::upgrade::draining() {
            // Once this process stops, Pingora drops every connection whose request has not
            // arrived yet, and a client that connected just before would lose its request.
            // While it drains, a new connection is handed on only once its first bytes are here
            // (put back for the proxy to read), so that its request is read, and answered.
            let arrived = stream.wait_for_first_bytes();
            match tokio::time::timeout(self.shared.limits.head_timeout, arrived).await {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) | Ok(Err(_)) | Err(_) => return None,
            }
        }
        // HTTP/1 connections are served to the end inside; nothing comes back to reuse.
        self.inner.process_new(Box::new(stream), shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

/// The proxy's side of a connection: what it tells the stream, and asks of it.
pub struct Connection<'s>(&'s BoundedStream);

/// The bounded connection a request arrived on (`None` for HTTP/2 streams and tests that serve
/// without [`Bounded`]).
pub fn of(session: &Session) -> Option<Connection<'_>> {
    let stream: &dyn IO = session.stream()?.as_ref();
    stream
        .as_any()
        .downcast_ref::<BoundedStream>()
        .map(Connection)
}

impl Connection<'_> {
    /// The request head has been read whole: its deadline and size bound end here.
    pub fn head_done(&self) {
        let state = &self.0.state;
        state.in_request.store(true, Ordering::Relaxed);
        state.heads.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether open connections are above 90% of the cap: responses should then close.
    /// The client a PROXY protocol header named for this connection.
    pub fn proxied_client(&self) -> Option<std::net::SocketAddr> {
        self.0.proxied_client
    }

    pub fn under_pressure(&self) -> bool {
        self.0.shared.under_pressure()
    }
}

/// The request has been answered: reads from here on belong to the next head.
pub fn request_done(session: &Session) {
    if let Some(Connection(stream)) = of(session) {
        stream.state.in_request.store(false, Ordering::Relaxed);
    }
}

/// What the proxy sets (through `&`), read by the stream's own reads.
#[derive(Default)]
struct ProxyState {
    /// Heads read whole so far.
    heads: AtomicU32,
    /// Between a head read whole and the end of its response: body reads are not head reads.
    in_request: AtomicBool,
}

/// What the current head, or idle period, has used so far.
#[derive(Default)]
struct HeadProgress {
    /// `ProxyState::heads` when this progress began.
    heads_seen: u32,
    bytes: usize,
    first_byte: Option<Instant>,
    idle_since: Option<Instant>,
}

/// An accepted client stream, counted while open and bounded while it carries a request head.
pub struct BoundedStream {
    inner: Stream,
    shared: Arc<Shared>,
    state: ProxyState,
    head: HeadProgress,
    /// Armed only while a read waits on a partial head, or on an idle connection under
    /// pressure; most connections never allocate one.
    timer: Option<Pin<Box<Sleep>>>,
    /// HTTP/2 multiplexes heads and has its own limits: only HTTP/1 reads are watched.
    watched: bool,
    /// HTTP/2 only: until the client's connection preface has arrived, its deadline and the
    /// bytes still to come. Pingora's HTTP/2 handshake waits for the preface without a bound,
    /// so a client that chose `h2` by ALPN and then sent nothing would hold its connection.
    h2_preface: Option<(Instant, usize)>,
    /// The client a PROXY protocol header named, on a listener that reads one.
    proxied_client: Option<std::net::SocketAddr>,
    /// Bytes read ahead of the proxy (only while draining, from a stream that cannot peek:
    /// TLS), handed to its first reads. Empty, and unallocated, otherwise.
    prefetched: bytes::Bytes,
}

impl BoundedStream {
    fn new(inner: Stream, shared: Arc<Shared>) -> Self {
        let watched = !matches!(inner.selected_alpn_proto(), Some(ALPN::H2));
        // "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" (RFC 9113 §3.4), within the head timeout.
        let h2_preface = (!watched).then(|| (Instant::now() + shared.limits.head_timeout, 24));
        BoundedStream {
            inner,
            shared,
            state: ProxyState::default(),
            head: HeadProgress::default(),
            timer: None,
            watched,
            h2_preface,
            proxied_client: None,
            prefetched: bytes::Bytes::new(),
        }
    }

    /// Waits until the client has sent something: `Ok(false)` if it closed first. A plain
    /// socket is peeked; a TLS stream cannot be, so its first bytes are read and kept for the
    /// proxy's first reads.
    async fn wait_for_first_bytes(&mut self) -> io::Result<bool> {
        if self.inner.try_peek(&mut [0u8; 1]).await? {
            return Ok(true);
        }
        let mut first = vec![0u8; 4096];
        let n = tokio::io::AsyncReadExt::read(&mut self.inner, &mut first).await?;
        first.truncate(n);
        self.prefetched = first.into();
        Ok(n > 0)
    }

    /// A read from the client: the bytes read ahead first, then the stream.
    fn poll_client(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.prefetched.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.prefetched.len().min(buf.remaining());
        buf.put_slice(&self.prefetched.split_to(n));
        Poll::Ready(Ok(()))
    }

    /// Fails the read with `answer` sent first, as far as the socket takes it without waiting.
    fn refuse(&mut self, cx: &mut Context<'_>, answer: &[u8], reason: &str) -> io::Error {
        let inner = Pin::new(&mut self.inner);
        if let Poll::Ready(Ok(_)) = inner.poll_write(cx, answer) {
            let _ = Pin::new(&mut self.inner).poll_flush(cx);
        }
        io::Error::new(io::ErrorKind::TimedOut, format!("{HEAD_REFUSED}: {reason}"))
    }

    /// Polls the timer set for `deadline` (re-arming it if it was set for another one).
    fn timer_fired(&mut self, cx: &mut Context<'_>, deadline: Instant) -> bool {
        let deadline = tokio::time::Instant::from_std(deadline);
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().poll(cx).is_ready()
    }

    /// A read while an HTTP/2 client's preface is still due: past its deadline, the connection
    /// is closed (no answer: an HTTP/2 client would not read an HTTP/1 one).
    fn poll_read_h2_preface(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
        deadline: Instant,
        missing: usize,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match self.poll_client(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                self.h2_preface = match missing.saturating_sub(n) {
                    0 => None,
                    left => Some((deadline, left)),
                };
                self.timer = None;
                Poll::Ready(Ok(()))
            }
            Poll::Pending if self.timer_fired(cx, deadline) => {
                self.shared.metrics.head_timeouts.inc();
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{HEAD_REFUSED}: no HTTP/2 preface in time"),
                )))
            }
            polled => polled,
        }
    }
}

impl Drop for BoundedStream {
    fn drop(&mut self) {
        self.shared.open.fetch_sub(1, Ordering::Relaxed);
        self.shared.metrics.open.dec();
    }
}

impl AsyncRead for BoundedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some((deadline, missing)) = this.h2_preface {
            return this.poll_read_h2_preface(cx, buf, deadline, missing);
        }
        let watching = this.watched && !this.state.in_request.load(Ordering::Relaxed);
        if !watching {
            return this.poll_client(cx, buf);
        }
        let heads = this.state.heads.load(Ordering::Relaxed);
        if heads != this.head.heads_seen {
            this.head = HeadProgress {
                heads_seen: heads,
                ..HeadProgress::default()
            };
        }
        let limits = this.shared.limits;
        let before = buf.filled().len();
        let polled = this.poll_client(cx, buf);
        let now = Instant::now();
        match polled {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                if n == 0 {
                    return Poll::Ready(Ok(()));
                }
                this.head.idle_since = None;
                let first = *this.head.first_byte.get_or_insert(now);
                this.head.bytes += n;
                if this.head.bytes > limits.max_head_bytes {
                    this.shared.metrics.head_too_large.inc();
                    return Poll::Ready(Err(this.refuse(cx, HEAD_TOO_LARGE, "too large")));
                }
                if now.duration_since(first) > limits.head_timeout {
                    this.shared.metrics.head_timeouts.inc();
                    return Poll::Ready(Err(this.refuse(cx, HEAD_TIMEOUT, "timeout")));
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if let Some(first) = this.head.first_byte {
                    if this.timer_fired(cx, first + limits.head_timeout) {
                        this.shared.metrics.head_timeouts.inc();
                        return Poll::Ready(Err(this.refuse(cx, HEAD_TIMEOUT, "timeout")));
                    }
                } else if this.shared.under_pressure() {
                    let idle_since = *this.head.idle_since.get_or_insert(now);
                    if this.timer_fired(cx, idle_since + limits.pressure_idle_timeout) {
                        // End of stream before a head: Pingora closes quietly.
                        this.shared.metrics.idle_closed_under_pressure.inc();
                        return Poll::Ready(Ok(()));
                    }
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for BoundedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for BoundedStream {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(self.inner.as_mut()).await
    }
}

impl UniqueID for BoundedStream {
    fn id(&self) -> pingora::protocols::UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for BoundedStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for BoundedStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for BoundedStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for BoundedStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for BoundedStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

impl fmt::Debug for BoundedStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundedStream")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_starts_above_nine_tenths_of_the_cap() {
        let limits = |max| ConnectionLimits {
            max_connections: max,
            head_timeout: Duration::from_secs(10),
            max_head_bytes: 65_536,
            pressure_idle_timeout: Duration::from_secs(1),
            proxy_protocol: false,
        };
        assert_eq!(limits(4096).pressure_at(), 3687);
        assert_eq!(limits(10).pressure_at(), 9);
        assert_eq!(limits(1).pressure_at(), 1);
    }

    #[test]
    fn canned_answers_state_their_length() {
        for answer in [TOO_MANY, HEAD_TIMEOUT, HEAD_TOO_LARGE] {
            let text = std::str::from_utf8(answer).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let declared: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(declared, body.len(), "{head}");
            serde_json::from_str::<serde_json::Value>(body).unwrap();
        }
    }
}

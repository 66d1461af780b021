//! Raw HTTP/1.1 over std `TcpStream` for integration tests: the one client of every test (of
//! keygate, of the control plane, of Prometheus), an echo upstream, port helpers.
//!
//! Everything is hand-rolled on purpose: higher-level clients normalise request targets such as
//! `/v1//products`, `/v1/./products` or `/%70roducts` before sending them, which would hide the
//! very proxy behaviour these tests exist to check. The client writes the target byte for byte
//! and the echo server reports it back byte for byte.
//!
//! The ways in, from the most convenient to the most raw:
//! - [`request`] / [`try_request`]: one request on its own connection, read to the close, with
//!   a check that the response is framed exactly (nothing follows it);
//! - [`get`], [`send`], [`send_many`] and [`Connection`]: a [`Request`] (or several on one
//!   kept-alive connection), each response read by its framing;
//! - [`send_raw`] / [`Connection::send_raw`]: arbitrary bytes, one parsed response back;
//! - [`exchange_raw`]: arbitrary bytes, the raw response bytes back (read to the close), which
//!   [`parse_response`] can take apart.

use std::collections::{HashMap, HashSet};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Value of the `Host` header the client sends unless the request sets its own.
pub const TEST_HOST: &str = "keygate.test";

/// Read, write and connect timeout of every client socket, so a wedged proxy fails a test
/// instead of hanging it.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Read timeout of [`request`] and [`try_request`]: long enough for a control plane's long
/// polls (`?wait=30s`) to end on their own.
pub const LONG_READ_TIMEOUT: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/// A parsed HTTP response. Interim `1xx` responses (other than `101`) are skipped, so this is
/// always the final one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// In the order received, names as received.
    pub headers: Vec<(String, String)>,
    /// Already de-chunked when the response used chunked transfer-encoding.
    pub body: Vec<u8>,
}

impl Response {
    /// First header with this name, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every header with this name, compared case-insensitively, in order received.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Body as UTF-8, invalid bytes replaced.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Body parsed as JSON.
    ///
    /// # Panics
    /// If the body is not JSON; the message carries the status and the body text, which is
    /// usually what explains a failing test.
    pub fn json(&self) -> serde_json::Value {
        match serde_json::from_slice(&self.body) {
            Ok(v) => v,
            Err(e) => panic!(
                "response body is not JSON ({e}); status {}, body: {:?}",
                self.status,
                self.text()
            ),
        }
    }
}

/// A request to send. Method, path and headers are written exactly as given: nothing is
/// normalised, validated or escaped, so tests can also send malformed input on purpose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The request-target, e.g. `/v1//products?x=1`.
    pub path: &'a str,
    pub headers: Vec<(&'a str, &'a str)>,
    pub body: Option<&'a [u8]>,
}

impl<'a> Request<'a> {
    pub fn new(method: &'a str, path: &'a str) -> Self {
        Request {
            method,
            path,
            headers: Vec::new(),
            body: None,
        }
    }

    pub fn get(path: &'a str) -> Self {
        Self::new("GET", path)
    }

    pub fn head(path: &'a str) -> Self {
        Self::new("HEAD", path)
    }

    pub fn delete(path: &'a str) -> Self {
        Self::new("DELETE", path)
    }

    pub fn post(path: &'a str, body: &'a [u8]) -> Self {
        Self::new("POST", path).body(body)
    }

    pub fn put(path: &'a str, body: &'a [u8]) -> Self {
        Self::new("PUT", path).body(body)
    }

    /// Appends a header; repeated names are sent repeatedly.
    pub fn header(mut self, name: &'a str, value: &'a str) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn body(mut self, body: &'a [u8]) -> Self {
        self.body = Some(body);
        self
    }

    fn has_header(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    /// Wire bytes, with `Connection: close` when `close`. Defaults give way to the caller's own
    /// headers so tests can send an odd `Host`, keep a connection open, or frame a body
    /// themselves (chunked, or a deliberately wrong `Content-Length`).
    pub fn to_bytes(&self, close: bool) -> Vec<u8> {
        let mut head = format!("{} {} HTTP/1.1\r\n", self.method, self.path);
        if !self.has_header("host") {
            head.push_str(&format!("Host: {TEST_HOST}\r\n"));
        }
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if close && !self.has_header("connection") {
            head.push_str("Connection: close\r\n");
        }
        let frame_body =
            !self.has_header("content-length") && !self.has_header("transfer-encoding");
        if let Some(body) = self.body.filter(|_| frame_body) {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(self.body.unwrap_or_default());
        out
    }
}

/// One client TCP connection that can carry several requests (HTTP/1.1 keep-alive).
pub struct Connection {
    reader: BufReader<TcpStream>,
}

impl Connection {
    pub fn open(addr: SocketAddr) -> io::Result<Connection> {
        Self::open_with_timeout(addr, IO_TIMEOUT)
    }

    /// Like [`Connection::open`], with another read timeout (connect and write: [`IO_TIMEOUT`]).
    pub fn open_with_timeout(addr: SocketAddr, read_timeout: Duration) -> io::Result<Connection> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        stream.set_read_timeout(Some(read_timeout))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            reader: BufReader::new(stream),
        })
    }

    /// Sends `req` without adding `Connection: close`, so the connection stays usable.
    pub fn send(&mut self, req: &Request) -> io::Result<Response> {
        self.exchange(req, false)
    }

    /// Writes `raw` as-is (no `Host`, no framing added) and reads one response.
    pub fn send_raw(&mut self, raw: &[u8]) -> io::Result<Response> {
        self.write_then_read(raw, raw.starts_with(b"HEAD "))
    }

    fn exchange(&mut self, req: &Request, close: bool) -> io::Result<Response> {
        self.write_then_read(
            &req.to_bytes(close),
            req.method.eq_ignore_ascii_case("HEAD"),
        )
    }

    fn write_then_read(&mut self, bytes: &[u8], head: bool) -> io::Result<Response> {
        let written = {
            let stream = self.reader.get_mut();
            stream.write_all(bytes).and_then(|()| stream.flush())
        };
        match written {
            Ok(()) => read_response(&mut self.reader, head),
            // A server may answer (413, 400, ...) and close before taking the whole request;
            // that answer is what the test wants to see, not the broken pipe.
            Err(write_err) => read_response(&mut self.reader, head).map_err(|_| write_err),
        }
    }
}

/// Sends one request on a fresh connection with `Connection: close`.
pub fn send(addr: SocketAddr, req: &Request) -> io::Result<Response> {
    Connection::open(addr)?.exchange(req, true)
}

/// Sends raw bytes on a fresh connection and reads one response; for requests too malformed
/// for [`Request`] (no `Host`, HTTP/1.0, absolute-form, bad request line, ...).
pub fn send_raw(addr: SocketAddr, raw: &[u8]) -> io::Result<Response> {
    Connection::open(addr)?.send_raw(raw)
}

/// GET on a fresh connection.
///
/// # Panics
/// On any I/O or parse error, naming the address and path.
pub fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut req = Request::get(path);
    req.headers.extend_from_slice(headers);
    send(addr, &req).unwrap_or_else(|e| panic!("GET {path} to {addr} failed: {e}"))
}

/// Sends the requests one after another on a single keep-alive connection, waiting for each
/// response before sending the next. Only the last request gets `Connection: close`.
///
/// # Panics
/// On any I/O or parse error, naming which request failed; typically the server closed the
/// connection after an earlier response.
pub fn send_many(addr: SocketAddr, reqs: &[Request]) -> Vec<Response> {
    let mut conn = Connection::open(addr)
        .unwrap_or_else(|e| panic!("send_many: connect to {addr} failed: {e}"));
    reqs.iter()
        .enumerate()
        .map(|(i, req)| {
            let last = i + 1 == reqs.len();
            conn.exchange(req, last).unwrap_or_else(|e| {
                panic!(
                    "send_many: request {} of {} ({} {}) on one connection to {addr} failed: {e}",
                    i + 1,
                    reqs.len(),
                    req.method,
                    req.path
                )
            })
        })
        .collect()
}

/// Writes `bytes` as-is on a fresh connection and returns every byte the server sends until it
/// closes the connection (so ask it to: `Connection: close`, or HTTP/1.0), or until nothing has
/// come for `read_timeout`, which is an error. A failed write is not an error when the server
/// answered anyway (a 400 or 413 before the whole request was read).
pub fn exchange_raw(addr: SocketAddr, bytes: &[u8], read_timeout: Duration) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(read_timeout))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.set_nodelay(true)?;
    let written = stream.write_all(bytes).and_then(|()| stream.flush());
    let mut raw = Vec::new();
    match (stream.read_to_end(&mut raw), written) {
        (Ok(_), Ok(())) => Ok(raw),
        (Ok(_), Err(write_err)) if raw.is_empty() => Err(write_err),
        (Ok(_), Err(_)) => Ok(raw),
        (Err(read_err), _) => Err(read_err),
    }
}

/// Parses the response at the start of `raw` (interim `1xx` responses other than `101`
/// skipped, as everywhere here); `head`: it answers a `HEAD`, so it has no body. Returns the
/// response and how many bytes of `raw` it took, interim responses included.
pub fn parse_response(raw: &[u8], head: bool) -> io::Result<(Response, usize)> {
    let mut cursor = io::Cursor::new(raw);
    let response = read_response(&mut cursor, head)?;
    let used = usize::try_from(cursor.position()).expect("a position inside a slice");
    Ok((response, used))
}

/// One request on its own connection, with `Connection: close` (and `Content-Length` when
/// there is a body; `Host` unless `headers` name one), read until the server closes it.
/// Stricter than [`send`]: the response must be framed exactly, nothing following it.
///
/// # Panics
/// On any I/O or parse error, naming the method, path and address.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Response {
    try_request(addr, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {path} to {addr} failed: {e}"))
}

/// [`request`], returning errors (connection refused, a malformed or inexactly framed
/// response) instead of panicking; for polling a server that may not be up yet.
pub fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> io::Result<Response> {
    let mut req = Request::new(method, path);
    req.headers.extend_from_slice(headers);
    req.body = body;
    let raw = exchange_raw(addr, &req.to_bytes(true), LONG_READ_TIMEOUT)?;
    let (response, used) = parse_response(&raw, method.eq_ignore_ascii_case("HEAD"))?;
    if used != raw.len() {
        return Err(invalid(format!(
            "{} bytes after the response (status {}, headers {:?}): {:?}",
            raw.len() - used,
            response.status,
            response.headers,
            String::from_utf8_lossy(&raw[used..])
        )));
    }
    Ok(response)
}

fn read_response(r: &mut impl BufRead, head: bool) -> io::Result<Response> {
    loop {
        let line = read_line(r)?
            .ok_or_else(|| eof("connection closed before a response status line was received"))?;
        let status = parse_status_line(&line)?;
        let headers = read_headers(r)?;
        let interim = (100..200).contains(&status);
        if interim && status != 101 {
            continue;
        }
        // These never carry a body even when Content-Length says otherwise (RFC 9112 6.3).
        let body = if head || interim || status == 204 || status == 304 {
            Vec::new()
        } else if is_chunked(&headers) {
            read_chunked(r)?
        } else if let Some(len) = content_length(&headers)? {
            read_exactly(r, len)?
        } else {
            let mut body = Vec::new();
            r.read_to_end(&mut body)?;
            body
        };
        return Ok(Response {
            status,
            headers,
            body,
        });
    }
}

fn parse_status_line(line: &str) -> io::Result<u16> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/") || code.len() != 3 {
        return Err(invalid(format!("malformed status line: {line:?}")));
    }
    code.parse()
        .map_err(|_| invalid(format!("malformed status code in status line: {line:?}")))
}

// ---------------------------------------------------------------------------------------------
// Message parsing shared by client and echo server
// ---------------------------------------------------------------------------------------------

/// One line without its CRLF (bare LF tolerated), or `None` at a clean EOF.
fn read_line(r: &mut impl BufRead) -> io::Result<Option<String>> {
    let mut buf = Vec::new();
    if r.read_until(b'\n', &mut buf)? == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

/// Header block up to and including the empty line. Names are kept exactly as received;
/// values lose surrounding whitespace, as the grammar says they should.
fn read_headers(r: &mut impl BufRead) -> io::Result<Vec<(String, String)>> {
    let mut headers = Vec::new();
    loop {
        let line = read_line(r)?.ok_or_else(|| eof("connection closed inside a header block"))?;
        if line.is_empty() {
            return Ok(headers);
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid(format!("header line without a colon: {line:?}")))?;
        headers.push((name.to_string(), value.trim().to_string()));
    }
}

fn find_header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn has_token(headers: &[(String, String)], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Chunked framing applies only when `chunked` is the final transfer-coding.
fn is_chunked(headers: &[(String, String)]) -> bool {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"))
        .flat_map(|(_, v)| v.split(','))
        .last()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"))
}

fn content_length(headers: &[(String, String)]) -> io::Result<Option<usize>> {
    match find_header(headers, "content-length") {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| invalid(format!("bad Content-Length: {v:?}"))),
    }
}

/// Grows with the data actually received rather than trusting the announced length up front.
fn read_exactly(r: &mut impl Read, len: usize) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    r.take(len as u64).read_to_end(&mut body)?;
    if body.len() != len {
        return Err(eof(&format!(
            "body ended after {} of {len} bytes",
            body.len()
        )));
    }
    Ok(body)
}

/// Decodes a chunked body; chunk extensions and trailers are read and discarded.
fn read_chunked(r: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_line(r)?.ok_or_else(|| eof("connection closed before a chunk size"))?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| invalid(format!("bad chunk size line: {line:?}")))?;
        if size == 0 {
            while !read_line(r)?
                .ok_or_else(|| eof("connection closed inside chunked trailers"))?
                .is_empty()
            {}
            return Ok(body);
        }
        body.extend(read_exactly(r, size)?);
        match read_line(r)? {
            Some(rest) if rest.is_empty() => {}
            _ => return Err(invalid("chunk data not followed by CRLF".to_string())),
        }
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn eof(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, msg.to_string())
}

// ---------------------------------------------------------------------------------------------
// Echo upstream
// ---------------------------------------------------------------------------------------------

/// A real upstream on `127.0.0.1` that answers every request with `200`, a header of its own
/// (`X-Served-By: echo`, spelled so) and a JSON description of what it received:
///
/// ```json
/// {"method": "GET", "path": "/v1//x?y", "headers": [["Host", "..."], ["X_Workspace_Id", "7"]], "body": "..."}
/// ```
///
/// `path` is the request-target and header names are exactly as received (case kept, order
/// kept, duplicates kept). Keep-alive, `Content-Length` and chunked request bodies and
/// `Expect: 100-continue` are supported. Dropping it closes the listener and every open
/// connection, and joins all its threads.
pub struct Echo {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

struct Shared {
    stop: AtomicBool,
    delay: Duration,
    requests: AtomicUsize,
    connections: AtomicUsize,
    // Clones of open connections, so Drop can cut connections a proxy keeps pooled; otherwise
    // a dropped upstream would go on answering over them.
    live: Mutex<HashMap<u64, TcpStream>>,
    /// Every byte received, per connection in the order connections were accepted.
    received: Mutex<Vec<Vec<u8>>>,
}

impl Shared {
    fn live(&self) -> MutexGuard<'_, HashMap<u64, TcpStream>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

struct EchoRequest {
    method: String,
    target: String,
    version: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Echo {
    pub fn start() -> Echo {
        Self::start_with_delay(Duration::ZERO)
    }

    /// Waits `delay` after receiving each whole request before answering. The request is
    /// already counted by [`Echo::requests_seen`] while the delay runs, and dropping the `Echo`
    /// cuts the delay short.
    pub fn start_with_delay(delay: Duration) -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").expect("Echo: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("Echo: local_addr");
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            delay,
            requests: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            live: Mutex::new(HashMap::new()),
            received: Mutex::new(Vec::new()),
        });
        let accept_shared = Arc::clone(&shared);
        let accept = thread::Builder::new()
            .name(format!("echo-accept-{}", addr.port()))
            .spawn(move || accept_loop(listener, accept_shared))
            .expect("Echo: spawn accept thread");
        Echo {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    /// `http://127.0.0.1:PORT`, for proxy configuration.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests received in full so far (counted before any delay and before answering).
    pub fn requests_seen(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// The bytes each connection has carried so far, exactly as received (connections in the
    /// order they were accepted), for checks on the wire rather than on a parsed view.
    pub fn received(&self) -> Vec<Vec<u8>> {
        self.shared
            .received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// TCP connections accepted so far, e.g. to check that a proxy reuses upstream
    /// connections. Includes connections that never sent a request, such as
    /// [`wait_for_port`] probes.
    pub fn connections_seen(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // std's accept() cannot time out, so wake it with a throwaway connection.
        let woke = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).is_ok();
        if let Some(handle) = self.accept.take() {
            // Without the wake-up the join would block forever; leaking the thread is better.
            if woke {
                let _ = handle.join();
            }
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    let mut next_id: u64 = 0;
    for stream in listener.incoming() {
        if shared.stopped() {
            break;
        }
        let stream = match stream {
            Ok(s) => s,
            Err(_) => {
                // E.g. out of file descriptors; retrying at full speed would only spin.
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        shared.connections.fetch_add(1, Ordering::SeqCst);
        let id = next_id;
        next_id += 1;
        if let Ok(clone) = stream.try_clone() {
            shared.live().insert(id, clone);
        }
        let slot = {
            let mut received = shared.received.lock().unwrap_or_else(|e| e.into_inner());
            received.push(Vec::new());
            received.len() - 1
        };
        workers.retain(|h| !h.is_finished());
        let worker_shared = Arc::clone(&shared);
        let spawned = thread::Builder::new()
            .name(format!("echo-conn-{id}"))
            .spawn(move || {
                serve_connection(stream, &worker_shared, slot);
                worker_shared.live().remove(&id);
            });
        match spawned {
            Ok(handle) => workers.push(handle),
            Err(_) => {
                shared.live().remove(&id);
            }
        }
    }
    // Refuse new connections before cutting the open ones.
    drop(listener);
    for (_, stream) in shared.live().drain() {
        let _ = stream.shutdown(Shutdown::Both);
    }
    for handle in workers {
        let _ = handle.join();
    }
}

/// Reads from a connection, keeping a copy of every byte in the connection's `received` slot.
struct Recording<'s> {
    stream: TcpStream,
    shared: &'s Shared,
    slot: usize,
}

impl Read for Recording<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.stream.read(buf)?;
        let mut received = self
            .shared
            .received
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        received[self.slot].extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

fn serve_connection(stream: TcpStream, shared: &Shared, slot: usize) {
    // No read timeout: a proxy may keep a pooled connection idle for as long as it likes, and
    // Drop unblocks the read anyway. Writes are bounded so a client that never reads cannot
    // wedge the thread.
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(Recording {
        stream,
        shared,
        slot,
    });
    while !shared.stopped() {
        let req = match read_echo_request(&mut reader) {
            Ok(Some(req)) => req,
            Ok(None) | Err(_) => return,
        };
        shared.requests.fetch_add(1, Ordering::SeqCst);
        pause(shared);
        if shared.stopped() {
            return;
        }
        let close = wants_close(&req);
        let out = echo_response(&req, close);
        let stream = &mut reader.get_mut().stream;
        if stream
            .write_all(&out)
            .and_then(|()| stream.flush())
            .is_err()
        {
            return;
        }
        if close {
            let _ = stream.shutdown(Shutdown::Write);
            return;
        }
    }
}

fn pause(shared: &Shared) {
    let deadline = Instant::now() + shared.delay;
    while !shared.stopped() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        thread::sleep(left.min(Duration::from_millis(10)));
    }
}

/// `None` when the client closed the connection between requests.
fn read_echo_request(r: &mut BufReader<Recording<'_>>) -> io::Result<Option<EchoRequest>> {
    let line = loop {
        match read_line(r)? {
            None => return Ok(None),
            // RFC 9112 2.2: ignore empty lines before a request line.
            Some(l) if l.is_empty() => continue,
            Some(l) => break l,
        }
    };
    // Split at the first and last space so a target containing spaces still comes back whole.
    let (method, rest) = line
        .split_once(' ')
        .ok_or_else(|| invalid(format!("bad request line: {line:?}")))?;
    let (target, version) = rest
        .rsplit_once(' ')
        .ok_or_else(|| invalid(format!("bad request line: {line:?}")))?;
    let headers = read_headers(r)?;
    if has_token(&headers, "expect", "100-continue") {
        let stream = &mut r.get_mut().stream;
        stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        stream.flush()?;
    }
    let body = if is_chunked(&headers) {
        read_chunked(r)?
    } else if let Some(len) = content_length(&headers)? {
        read_exactly(r, len)?
    } else {
        Vec::new()
    };
    Ok(Some(EchoRequest {
        method: method.to_string(),
        target: target.to_string(),
        version: version.to_string(),
        headers,
        body,
    }))
}

fn wants_close(req: &EchoRequest) -> bool {
    if has_token(&req.headers, "connection", "close") {
        return true;
    }
    req.version == "HTTP/1.0" && !has_token(&req.headers, "connection", "keep-alive")
}

fn echo_response(req: &EchoRequest, close: bool) -> Vec<u8> {
    let headers: Vec<[&str; 2]> = req
        .headers
        .iter()
        .map(|(n, v)| [n.as_str(), v.as_str()])
        .collect();
    let payload = serde_json::to_vec(&serde_json::json!({
        "method": req.method,
        "path": req.target,
        "headers": headers,
        "body": String::from_utf8_lossy(&req.body),
    }))
    .expect("serialising a JSON value cannot fail");
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Served-By: echo\r\nContent-Length: {}\r\n{}\r\n",
        payload.len(),
        if close { "Connection: close\r\n" } else { "" }
    )
    .into_bytes();
    if !req.method.eq_ignore_ascii_case("HEAD") {
        out.extend_from_slice(&payload);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------------------------

/// A port that was free a moment ago on 127.0.0.1, for a server that must be told its address
/// (keygate, the control plane, Prometheus: none of them can bind port 0 and report the port).
/// Never the same port twice in one process, so two tests running in parallel cannot be handed
/// the same one; another process can still take it before the caller binds it, so callers
/// retry on another port when that happens. Servers of the harness itself (such as [`Echo`])
/// bind `127.0.0.1:0` instead.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free_port: bind 127.0.0.1:0")
            .port();
        if handed_out.insert(port) {
            return port;
        }
    }
}

/// Polls with a TCP connect every 20 ms until something accepts on `addr`; `false` once
/// `timeout` has passed without success.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) -> bool {
    let step = Duration::from_millis(20);
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        if TcpStream::connect_timeout(&addr, left.min(step)).is_ok() {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        thread::sleep(left.min(step));
    }
}

//! An adversarial corpus: raw requests that lie about their framing, target, identity or method,
//! sent over plain sockets to the real keygate in front of an upstream that records every byte
//! it receives. After every probe the upstream's bytes are parsed as the upstream would parse
//! them and checked:
//! - every request for a protected path carries keygate's identity, and the scope that path
//!   needs for that method;
//! - no client-chosen identity, no credential, no method override ever arrives;
//! - every target is the canonical origin-form path keygate matched;
//! - nothing a probe smuggled (a request hidden in a body) ever arrives.
//!
//! Each probe also states the answer it must get and whether the connection must close
//! (RFC 9112 §6.1, §9.3: after conflicting framing, after HTTP/1.0 without keep-alive).

mod common;

use common::http::Echo;
use common::*;
use std::borrow::Cow;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Holds `products:read` only.
const READER_TAG: &str = "ADVreader";
/// `scopes: []`: valid, but grants no scope.
const NOSCOPE_TAG: &str = "ADVnoscope";
/// The value every spoofed identity header carries.
const SPOOF: &str = "EVILMARK";
/// Part of every target hidden inside another request.
const SMUGGLED: &str = "smuggled";

/// Public routes, scoped routes, and unmatched paths open to any valid key: every way a
/// request can be decided.
fn probe_config(c: &mut ConfigFile) {
    c.routes = vec![
        public_route("health", &["GET"], "/health"),
        public_route("public", &[], "/public/**"),
        route(
            "products-read",
            &["GET", "HEAD"],
            "/v1/products/**",
            &["products:read"],
        ),
        route(
            "products-write",
            &["POST", "PUT", "PATCH", "DELETE"],
            "/v1/products/**",
            &["products:write"],
        ),
    ];
    c.unmatched = Unmatched::Authenticate;
}

/// What a probe must get back.
struct Expect {
    /// The status of each response, in order.
    statuses: &'static [u16],
    /// `Some(true)`: the connection must be closed after the responses; `Some(false)`: it must
    /// stay open; `None`: either.
    closes: Option<bool>,
}

const OPEN: Option<bool> = Some(false);
const CLOSED: Option<bool> = Some(true);
const EITHER: Option<bool> = None;

fn expect(statuses: &'static [u16], closes: Option<bool>) -> Expect {
    Expect { statuses, closes }
}

struct Probe {
    name: &'static str,
    bytes: Vec<u8>,
    expect: Expect,
}

fn probes(reader: &str, noscope: &str) -> Vec<Probe> {
    let r = format!("Authorization: Bearer {reader}\r\n");
    let n = format!("Authorization: Bearer {noscope}\r\n");
    let p = |name, text: String, expect| Probe {
        name,
        bytes: text.into_bytes(),
        expect,
    };
    let smuggled = format!("GET /public/{SMUGGLED} HTTP/1.1\r\nHost: a\r\n\r\n");
    let chunked_then = |te: &str, extra: &str| {
        format!("POST /public/upload HTTP/1.1\r\nHost: a\r\n{te}{extra}\r\n0\r\n\r\n{smuggled}")
    };
    vec![
        // --- Finding 1: targets that are not origin-form ---
        p("opaque scheme target", format!("GET x:/v1/products/1 HTTP/1.1\r\nHost: a\r\n{n}\r\n"), expect(&[400], EITHER)),
        p("opaque scheme DELETE with a no-scope key", format!("DELETE x:/v1/products/1 HTTP/1.1\r\nHost: a\r\n{n}\r\n"), expect(&[400], EITHER)),
        p("relative target", format!("GET v1/products/1 HTTP/1.1\r\nHost: a\r\n{n}\r\n"), expect(&[400], EITHER)),
        p("double space before the target", format!("GET  /v1/products/1 HTTP/1.1\r\nHost: a\r\n{n}\r\n"), expect(&[400], EITHER)),
        p("ws absolute-form", format!("GET ws://a/v1/products/1 HTTP/1.1\r\nHost: a\r\n{r}\r\n"), expect(&[400], EITHER)),
        p("asterisk-form", "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n".into(), expect(&[400], EITHER)),
        p("CONNECT", "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n".into(), expect(&[405], EITHER)),
        p("http absolute-form, granted", format!("GET http://api.example/v1/products/1 HTTP/1.1\r\nHost: api.example\r\n{r}\r\n"), expect(&[200], OPEN)),
        p("http absolute-form, write with a read key", format!("DELETE http://api.example/v1/products/1 HTTP/1.1\r\nHost: api.example\r\n{r}\r\n"), expect(&[403], OPEN)),
        p("http absolute-form naming another host than Host", format!("GET http://api.example/v1/products/1 HTTP/1.1\r\nHost: other\r\n{r}\r\n"), expect(&[400], CLOSED)),
        p("http absolute-form with userinfo", format!("GET http://u@api.example/v1/products/1 HTTP/1.1\r\nHost: a\r\n{r}\r\n"), expect(&[400], EITHER)),
        p("absolute-form into a dot segment with params", "GET http://a/public/..;/v1/products/1 HTTP/1.1\r\nHost: a\r\n\r\n".into(), expect(&[400], EITHER)),
        // --- Finding 2: framing that must close the connection ---
        p("CL and TE: chunked", chunked_then("Transfer-Encoding: chunked\r\n", "Content-Length: 48\r\n"), expect(&[200], CLOSED)),
        p("CL and TE, TE first", chunked_then("Content-Length: 48\r\n", "Transfer-Encoding: chunked\r\n"), expect(&[200], CLOSED)),
        p("HTTP/1.0 without keep-alive", "GET /public/a HTTP/1.0\r\nHost: a\r\n\r\n".into(), expect(&[200], CLOSED)),
        p("HTTP/1.0 with keep-alive", "GET /public/a HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n".into(), expect(&[200], OPEN)),
        p("Connection: close", "GET /public/a HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".into(), expect(&[200], CLOSED)),
        // --- Transfer-Encoding obfuscations ---
        p("TE: chunked, identity", chunked_then("Transfer-Encoding: chunked, identity\r\n", ""), expect(&[400], CLOSED)),
        p("TE: identity, chunked, with CL", chunked_then("Transfer-Encoding: identity, chunked\r\n", "Content-Length: 5\r\n"), expect(&[200], CLOSED)),
        p("TE: xchunked", chunked_then("Transfer-Encoding: xchunked\r\n", ""), expect(&[400], CLOSED)),
        p("TE: CHUNKED upper case", chunked_then("Transfer-Encoding: CHUNKED\r\n", "Content-Length: 48\r\n"), expect(&[200], CLOSED)),
        p("TE with a space before the colon", chunked_then("Transfer-Encoding : chunked\r\n", ""), expect(&[400], CLOSED)),
        p("TE with a tab in the value", chunked_then("Transfer-Encoding:\tchunked\r\n", "Content-Length: 48\r\n"), expect(&[200], CLOSED)),
        p("two TE headers", chunked_then("Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n", ""), expect(&[400], CLOSED)),
        p("TE folded over two lines", chunked_then("Transfer-Encoding:\r\n chunked\r\n", "Content-Length: 48\r\n"), expect(&[400], CLOSED)),
        p("bad chunk size", format!("POST /public/upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{smuggled}"), expect(&[400], CLOSED)),
        p("chunk size overflow", format!("POST /public/upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff1\r\n{smuggled}"), expect(&[400], CLOSED)),
        // --- Content-Length tricks ---
        p("duplicate differing Content-Length", format!("POST /public/upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 44\r\n\r\nhello{smuggled}"), expect(&[400], CLOSED)),
        p("Content-Length list", format!("POST /public/upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 44\r\n\r\nhello{smuggled}"), expect(&[400], CLOSED)),
        p("negative Content-Length", format!("POST /public/upload HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n{smuggled}"), expect(&[400], CLOSED)),
        p("signed Content-Length", format!("POST /public/upload HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello{smuggled}"), expect(&[400], CLOSED)),
        // --- Header syntax ---
        p("obs-fold continuing Authorization", format!("GET /v1/products/1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer\r\n {reader}\r\n\r\n"), expect(&[400], CLOSED)),
        p("space before the colon of Authorization", format!("GET /v1/products/1 HTTP/1.1\r\nHost: a\r\nAuthorization : Bearer {reader}\r\n\r\n"), expect(&[400], CLOSED)),
        p("NUL in a header value", format!("GET /public/a HTTP/1.1\r\nHost: a\r\nX-A: a\0b\r\n{r}\r\n"), expect(&[400], CLOSED)),
        p("bare LF line endings", format!("GET /v1/products/1 HTTP/1.1\nHost: a\nAuthorization: Bearer {reader}\n\n"), expect(&[200], EITHER)),
        p("bare CR inside a header", format!("GET /public/a HTTP/1.1\r\nHost: a\r\nX-A: a\rGET /public/{SMUGGLED} HTTP/1.1\r\n\r\n"), expect(&[400], CLOSED)),
        p("HTTP/2.0 version in an HTTP/1 request line", "GET /public/a HTTP/2.0\r\nHost: a\r\n\r\n".into(), expect(&[400], CLOSED)),
        // --- Pipelining and 100-continue ---
        // Pingora 0.9 does not serve pipelined requests unless asked to: it answers the first and
        // closes, so the second is never read (nor forwarded). Its answer does not announce the
        // close, which no RFC requires here.
        p("pipelined: granted, then no key", format!("GET /v1/products/1 HTTP/1.1\r\nHost: a\r\n{r}\r\nGET /v1/products/2 HTTP/1.1\r\nHost: a\r\n\r\n"), expect(&[200], EITHER)),
        p("pipelined: refused POST with a body that is a request", format!("POST /v1/products HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{smuggled}", smuggled.len()), expect(&[401], CLOSED)),
        // A refusal sent before the body was read closes the connection, so the body is never
        // read as the next request; after a granted one, the next request is pipelined (above).
        p("Expect: 100-continue refused for no key, body is a request", format!("POST /v1/products/new HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n{smuggled}", smuggled.len()), expect(&[401], CLOSED)),
        p("Expect: 100-continue refused for a scope, body is a request, then another", format!("POST /v1/products/new HTTP/1.1\r\nHost: a\r\n{r}Expect: 100-continue\r\nContent-Length: {}\r\n\r\n{smuggled}GET /v1/products/1 HTTP/1.1\r\nHost: a\r\n\r\n", smuggled.len()), expect(&[403], CLOSED)),
        p("Expect: 100-continue granted, then a request without a key", "POST /public/upload HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhelloGET /v1/products/1 HTTP/1.1\r\nHost: a\r\n\r\n".into(), expect(&[200], EITHER)),
        // --- Upgrades on protected routes ---
        p("h2c upgrade without a key", "GET /v1/products/1 HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n".into(), expect(&[401], EITHER)),
        p("h2c upgrade with a read key on a write route", format!("DELETE /v1/products/1 HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n{r}\r\n"), expect(&[403], EITHER)),
        p("WebSocket upgrade without a key", "GET /v1/products/ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".into(), expect(&[401], EITHER)),
        p("h2 preface on an HTTP/1 listener", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".into(), expect(&[400], CLOSED)),
        // --- Path tricks ---
        p("dot-dot out of a public prefix", "GET /public/../v1/products/1 HTTP/1.1\r\nHost: a\r\n\r\n".into(), expect(&[401], OPEN)),
        p("encoded dot-dot out of a public prefix", "GET /public/%2e%2e/v1/products/1 HTTP/1.1\r\nHost: a\r\n\r\n".into(), expect(&[401], OPEN)),
        p("matrix dot-dot", "GET /public/..;/v1/products/1 HTTP/1.1\r\nHost: a\r\n\r\n".into(), expect(&[400], OPEN)),
        p("encoded matrix dot-dot", "GET /public/%2e%2e;/v1/products/1 HTTP/1.1\r\nHost: a\r\n\r\n".into(), expect(&[400], OPEN)),
        p("double-encoded dot-dot", "GET /public/%252e%252e/v1/products/1 HTTP/1.1\r\nHost: a\r\n\r\n".into(), expect(&[400], OPEN)),
        p("overlong UTF-8 dot-dot", "GET /public/%c0%ae%c0%ae/v1/products/1 HTTP/1.1\r\nHost: a\r\n\r\n".into(), expect(&[400], OPEN)),
        p("encoded slash", format!("GET /v1/products%2F1 HTTP/1.1\r\nHost: a\r\n{r}\r\n"), expect(&[400], OPEN)),
        p("encoded backslash", "GET /public/..%5cv1%5cproducts HTTP/1.1\r\nHost: a\r\n\r\n".into(), expect(&[400], OPEN)),
        p("raw backslash", "GET /public\\..\\v1\\products HTTP/1.1\r\nHost: a\r\n\r\n".into(), expect(&[400], OPEN)),
        p("encoded NUL", format!("GET /v1/products/1%00 HTTP/1.1\r\nHost: a\r\n{r}\r\n"), expect(&[400], OPEN)),
        p("encoded control character", format!("GET /v1/products/1%01 HTTP/1.1\r\nHost: a\r\n{r}\r\n"), expect(&[400], OPEN)),
        p("raw control character", format!("GET /v1/products/\x01 HTTP/1.1\r\nHost: a\r\n{r}\r\n"), expect(&[400], EITHER)),
        p("upper-case path under unmatched: authenticate", format!("DELETE /V1/PRODUCTS/1 HTTP/1.1\r\nHost: a\r\n{n}\r\n"), expect(&[404], OPEN)),
        p("lower-case method under unmatched: authenticate", format!("delete /v1/products/1 HTTP/1.1\r\nHost: a\r\n{n}\r\n"), expect(&[404], OPEN)),
        p("merged slashes into a protected route", format!("DELETE //v1//products/1 HTTP/1.1\r\nHost: a\r\n{r}\r\n"), expect(&[403], OPEN)),
        p("query that looks like a path", format!("GET /public/a?/../../v1/products/1 HTTP/1.1\r\nHost: a\r\n{r}\r\n"), expect(&[200], OPEN)),
        p("fragment in the target", "GET /public/a#/../../v1/products/1 HTTP/1.1\r\nHost: a\r\n\r\n".into(), expect(&[200], OPEN)),
        // --- Identity and method spoofing ---
        p("spoofed identity on a public route", format!("GET /public/a HTTP/1.1\r\nHost: a\r\nX-Workspace-Id: {SPOOF}\r\nx_api_key_id: {SPOOF}\r\nX-API-KEY-SCOPES: {SPOOF}\r\nx-workspace_type: {SPOOF}\r\n\r\n"), expect(&[200], OPEN)),
        p("spoofed identity with a key", format!("GET /v1/products/1 HTTP/1.1\r\nHost: a\r\nX-Workspace-Id: {SPOOF}\r\nX_Api_Key_Id: {SPOOF}\r\nx-api-key-scopes: products:write {SPOOF}\r\n{r}\r\n"), expect(&[200], OPEN)),
        // Forged addresses: no proxy is trusted here, so the client is the peer, whatever it writes.
        p("forged forwarding headers on a public route", format!("GET /public/a HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: {SPOOF}\r\nX_Forwarded_For: 6.6.6.6\r\nForwarded: for={SPOOF}\r\nX-Client-IP: {SPOOF}\r\nx_client_ip: 6.6.6.6\r\n\r\n"), expect(&[200], OPEN)),
        p("forged forwarding headers with a key", format!("GET /v1/products/1 HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 6.6.6.6, {SPOOF}\r\nX-Forwarded-For: 7.7.7.7\r\nforwarded: for=\"[2001:db8::1]\";by={SPOOF}\r\nX-CLIENT-IP: 6.6.6.6\r\n{r}\r\n"), expect(&[200], OPEN)),
        p("method override to DELETE on a read", format!("GET /v1/products/1 HTTP/1.1\r\nHost: a\r\nX-HTTP-Method-Override: DELETE\r\nx_http_method: DELETE\r\nX-Method-Override: DELETE\r\n{r}\r\n"), expect(&[200], OPEN)),
        p("two Authorization headers", format!("GET /v1/products/1 HTTP/1.1\r\nHost: a\r\n{r}{n}\r\n"), expect(&[401], OPEN)),
        p("Authorization with another scheme", format!("GET /v1/products/1 HTTP/1.1\r\nHost: a\r\nAuthorization: Basic {reader}\r\n\r\n"), expect(&[401], OPEN)),
    ]
}

/// What came back for a probe.
struct Got {
    statuses: Vec<u16>,
    closed: bool,
    text: String,
}

/// Sends `bytes` on a fresh connection; reads responses until `wanted` have arrived (then waits
/// briefly for the close, if one comes) or the connection closes.
fn exchange(addr: SocketAddr, bytes: &[u8], wanted: usize, must_close: bool) -> Got {
    let mut stream = TcpStream::connect(addr).expect("connect to keygate");
    stream.set_nodelay(true).unwrap();
    // The server may close before reading everything: a failed write is part of the answer.
    let _ = stream.write_all(bytes);
    let mut buf = Vec::new();
    let mut closed = false;
    let started = Instant::now();
    loop {
        let complete = parse_statuses(&buf).len();
        let wait = if complete >= wanted && !must_close {
            Duration::from_millis(150)
        } else {
            Duration::from_secs(3)
        };
        if started.elapsed() > Duration::from_secs(6) {
            break;
        }
        stream.set_read_timeout(Some(wait)).unwrap();
        let mut chunk = [0u8; 8192];
        match stream.read(&mut chunk) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    Got {
        statuses: parse_statuses(&buf),
        closed,
        text: String::from_utf8_lossy(&buf).into_owned(),
    }
}

/// The statuses of the complete responses in `buf` (each framed by its Content-Length).
fn parse_statuses(mut buf: &[u8]) -> Vec<u16> {
    let mut statuses = Vec::new();
    while let Some(end) = find(buf, b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&buf[..end]);
        let Some(status) = head.split(' ').nth(1).and_then(|s| s.parse::<u16>().ok()) else {
            break;
        };
        let length = header(&head, "content-length").map_or(0, |v| v.parse().unwrap_or(0));
        if buf.len() < end + 4 + length {
            break;
        }
        if status != 100 {
            statuses.push(status);
        }
        buf = &buf[end + 4 + length..];
    }
    statuses
}

/// Whether the last response head in `text` carries `Connection: close`.
fn says_close(text: &str) -> bool {
    let last = text.rfind("HTTP/1.").map_or(text, |at| &text[at..]);
    let head = last.split("\r\n\r\n").next().unwrap_or_default();
    header(head, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.split("\r\n").skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

/// A request as the upstream reads it off the wire.
#[derive(Debug)]
struct Received {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
}

impl Received {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Splits one upstream connection's bytes into requests, framing bodies as an HTTP/1.1 server
/// must. keygate's output has to be well formed, so anything unparseable is an error.
fn requests_on_the_wire(mut raw: &[u8]) -> Result<Vec<Received>, String> {
    let mut out = Vec::new();
    while !raw.is_empty() {
        let end = find(raw, b"\r\n\r\n").ok_or("a request head without its end")?;
        let head = std::str::from_utf8(&raw[..end]).map_err(|_| "a head that is not UTF-8")?;
        let mut lines = head.split("\r\n");
        let line = lines.next().unwrap_or_default();
        let mut parts = line.split(' ');
        let (Some(method), Some(target), Some("HTTP/1.1"), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("bad request line {line:?}"));
        };
        let mut headers = Vec::new();
        for l in lines {
            let (n, v) = l.split_once(':').ok_or(format!("bad header line {l:?}"))?;
            if n.is_empty() || n.contains([' ', '\t', '\r', '\n']) || l.contains('\n') {
                return Err(format!("bad header line {l:?}"));
            }
            headers.push((n.to_owned(), v.trim().to_owned()));
        }
        let req = Received {
            method: method.to_owned(),
            target: target.to_owned(),
            headers,
        };
        raw = &raw[end + 4..];
        if req.get("transfer-encoding").is_some() {
            if req.get("content-length").is_some() {
                return Err("both Content-Length and Transfer-Encoding upstream".into());
            }
            loop {
                // keygate stops forwarding a body it finds malformed and closes the upstream
                // connection: the upstream sees a request cut short, never another one.
                let Some(line_end) = find(raw, b"\r\n") else {
                    out.push(req);
                    return Ok(out);
                };
                let size = std::str::from_utf8(&raw[..line_end]).map_err(|_| "chunk size")?;
                let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
                    .map_err(|_| format!("bad chunk size {size:?}"))?;
                let Some(rest) = raw.get(line_end + 2 + size + 2..) else {
                    out.push(req);
                    return Ok(out);
                };
                raw = rest;
                if size == 0 {
                    break;
                }
            }
        } else if let Some(length) = req.get("content-length") {
            let length: usize = length.parse().map_err(|_| "bad Content-Length upstream")?;
            raw = raw.get(length..).ok_or("a short body")?;
        }
        out.push(req);
    }
    Ok(out)
}

/// Every property the upstream relies on, for one request it received.
fn check(req: &Received, keys: &[(&str, &str)]) -> Result<(), String> {
    let (path, _query) = req.target.split_once('?').unwrap_or((&req.target, ""));
    match keygate::path::normalize(path) {
        Ok(Cow::Borrowed(_)) => {}
        other => {
            return Err(format!(
                "target {:?} is not canonical: {other:?}",
                req.target
            ));
        }
    }
    if req.target.contains(SMUGGLED) {
        return Err(format!("a smuggled request arrived: {}", req.target));
    }
    for (name, value) in &req.headers {
        let spelled = name.to_ascii_lowercase().replace('_', "-");
        if spelled == "authorization" {
            return Err("a credential was forwarded".into());
        }
        if spelled.contains("method-override") || spelled == "x-http-method" {
            return Err(format!("a method override was forwarded: {name}"));
        }
        if value.contains(SPOOF) {
            return Err(format!(
                "a client-chosen identity was forwarded: {name}: {value}"
            ));
        }
    }
    // Nothing is trusted to forward here: the client is the peer, and the chain is the peer.
    for name in ["x-client-ip", "x-forwarded-for"] {
        let spellings: Vec<&str> = req
            .headers
            .iter()
            .filter(|(n, _)| n.to_ascii_lowercase().replace('_', "-") == name)
            .map(|(_, v)| v.as_str())
            .collect();
        if spellings != ["127.0.0.1"] {
            return Err(format!("{name} arrived as {spellings:?}, not the peer"));
        }
    }
    if req.get("forwarded").is_some() {
        return Err("a client's Forwarded header was passed on".into());
    }
    if path == "/health" || path.starts_with("/public/") {
        return Ok(());
    }
    let key_id = req.get("x-api-key-id").ok_or_else(|| {
        format!(
            "{} {} arrived without keygate's identity",
            req.method, req.target
        )
    })?;
    if !keys.iter().any(|(id, _)| *id == key_id) {
        return Err(format!("unknown key id {key_id:?}"));
    }
    if path.starts_with("/v1/products") {
        let scopes = req.get("x-api-key-scopes").unwrap_or_default();
        let needed = match req.method.as_str() {
            "GET" | "HEAD" => "products:read",
            _ => "products:write",
        };
        if !scopes.split(' ').any(|s| s == needed) {
            return Err(format!(
                "{} {} arrived for key {key_id} whose scopes {scopes:?} lack {needed}",
                req.method, req.target
            ));
        }
    }
    Ok(())
}

#[test]
fn no_probe_gets_a_request_past_keygate_that_it_did_not_decide() {
    let reader = secret("live", READER_TAG);
    let noscope = secret("live", NOSCOPE_TAG);
    let keys = Keys::new(1)
        .workspace("ws_adv", WorkspaceKind::Live)
        .key(
            "key_reader",
            &reader,
            Some("ws_adv"),
            Some(&["products:read"]),
        )
        .key("key_noscope", &noscope, Some("ws_adv"), Some(&[]));
    let key_ids = [("key_reader", READER_TAG), ("key_noscope", NOSCOPE_TAG)];
    let up = Echo::start();
    let kg = Keygate::start(Setup::new(&up, &keys).config(probe_config));
    let probes = probes(&reader, &noscope);
    let mut failures = Vec::new();
    let mut forwarded = 0;
    for probe in &probes {
        let must_close = probe.expect.closes == Some(true);
        let got = exchange(
            kg.addr,
            &probe.bytes,
            probe.expect.statuses.len(),
            must_close,
        );
        if got.statuses != probe.expect.statuses {
            failures.push(format!(
                "{}: statuses {:?}, expected {:?}\n{}",
                probe.name, got.statuses, probe.expect.statuses, got.text
            ));
        }
        // Closing is not enough: the answer must say so, or a front proxy would reuse its
        // connection and send the next client's request into the closing one.
        if must_close && !got.statuses.is_empty() && !says_close(&got.text) {
            failures.push(format!(
                "{}: the last answer does not say Connection: close\n{}",
                probe.name, got.text
            ));
        }
        if let Some(closes) = probe.expect.closes
            && got.closed != closes
        {
            failures.push(format!(
                "{}: connection {}, expected it {}",
                probe.name,
                if got.closed { "closed" } else { "left open" },
                if closes { "closed" } else { "left open" },
            ));
        }
        // Everything the upstream has received so far, checked after every probe, so that the
        // first failure names the probe that caused it.
        std::thread::sleep(Duration::from_millis(20));
        forwarded = 0;
        let answers_wrong = failures.len();
        for (i, raw) in up.received().iter().enumerate() {
            let text = String::from_utf8_lossy(raw);
            for tag in [READER_TAG, NOSCOPE_TAG] {
                if text.contains(tag) {
                    failures.push(format!("{}: a secret reached the upstream", probe.name));
                }
            }
            match requests_on_the_wire(raw) {
                Ok(requests) => {
                    forwarded += requests.len();
                    for req in &requests {
                        if let Err(e) = check(req, &key_ids) {
                            failures.push(format!("{}: upstream connection {i}: {e}", probe.name));
                        }
                    }
                }
                Err(e) => failures.push(format!(
                    "{}: upstream connection {i} is not well-formed HTTP/1.1: {e}\n{text}",
                    probe.name
                )),
            }
        }
        // A wrong answer is reported with the others; a wrong upstream request ends the run,
        // since every later check would report it again.
        if failures.len() > answers_wrong {
            break;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // The corpus must exercise forwarding too, or the upstream checks prove nothing.
    assert!(forwarded >= 15, "only {forwarded} requests were forwarded");
    assert!(probes.len() >= 60, "the corpus shrank to {}", probes.len());
    assert!(!kg.log().contains(READER_TAG), "a secret reached the log");

    // keygate writes its access-log lines itself: whatever a probe put in its method or target,
    // each request it recorded has one line, a JSON object of its own, holding no secret.
    let recorded = within(Duration::from_secs(5), || {
        let n = kg
            .metric("keygate_request_duration_seconds_count")
            .unwrap_or(0.0) as usize;
        n > 0 && kg.access_log_text().lines().count() == n
    });
    let text = kg.access_log_text();
    assert!(
        recorded.is_some(),
        "lines and recorded requests differ:\n{text}"
    );
    for line in text.lines() {
        let parsed: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("an access-log line is not JSON ({e}): {line}"));
        assert_eq!(parsed["target"], "keygate::access", "{line}");
        assert!(
            parsed["path"].is_string() && parsed["method"].is_string(),
            "{line}"
        );
    }
    for tag in [READER_TAG, NOSCOPE_TAG] {
        assert!(!text.contains(tag), "a secret reached the access log");
    }
}

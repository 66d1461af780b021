//! TLS for clients (`listen.tls`), through the real binary with real clients: curl over
//! HTTP/1.1 and HTTP/2, h2load with many streams on a connection, openssl for the protocol
//! versions and the certificate presented. Certificates are made by openssl for each test.

mod common;

use common::http::Echo;
use common::*;
use keygate_test_support::metric;
use keygate_test_support::tls::{make_ca_and_leaf, make_certificate};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

const READER: &str = "sk_live_TLSREADER0000000000000000000000001";
const WRITER: &str = "sk_live_TLSWRITER0000000000000000000000001";

fn keys() -> Keys {
    Keys::new(1)
        .workspace("ws_tls", WorkspaceKind::Live)
        .key(
            "key_reader",
            READER,
            Some("ws_tls"),
            Some(&["products:read"]),
        )
        .key("key_writer", WRITER, Some("ws_tls"), Some(&["products:*"]))
}

/// keygate with a plain listener and a TLS one on a free port, serving `cert` and `key`.
fn start_tls(
    up: &Echo,
    keys: &Keys,
    cert: &Path,
    key: &Path,
    limits: bool,
) -> (Keygate, SocketAddr) {
    let mut tls_addr = None;
    let k = Keygate::start(Setup::new(up, keys).config(|c| {
        tls_addr = Some(tls_listener(c, cert, key));
        if limits {
            c.limits.enabled = Some(true);
            c.limits.live = policy(Some(3), Some(1000));
        }
    }));
    (k, tls_addr.unwrap())
}

/// What one curl exchange gave: the protocol version, status, headers (names lowercased, in
/// order) and body.
#[derive(Debug)]
struct Exchange {
    version: String,
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

/// One request through curl to `path` on `addr` (as host `localhost`), `args` added.
fn curl(
    addr: SocketAddr,
    scheme: &str,
    protocol: &str,
    ca: &Path,
    path: &str,
    args: &[&str],
) -> Exchange {
    let dir = tempfile::tempdir().unwrap();
    let head = dir.path().join("head");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", protocol, "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("localhost:{}:127.0.0.1", addr.port())])
        // One Host for every listener, so that what the upstream sees can be compared whole.
        .args(["-H", "Host: api.test", "-D"])
        .arg(&head)
        .args(["-w", "\n%{http_version} %{http_code}"])
        .args(args)
        .arg(format!("{scheme}://localhost:{}{path}", addr.port()))
        .output()
        .expect("curl runs");
    assert!(out.status.success(), "curl failed: {out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, tail) = text.rsplit_once('\n').unwrap();
    let (version, status) = tail.split_once(' ').unwrap();
    let head = std::fs::read_to_string(&head).unwrap();
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Exchange {
        version: version.to_owned(),
        status: status.parse().unwrap(),
        headers,
        body: body.to_owned(),
    }
}

/// A body as comparable across protocols: an upstream echo's headers lowercased and sorted,
/// a refusal's timing left out.
fn seen_upstream(body: &str) -> serde_json::Value {
    let Ok(mut echo) = serde_json::from_str::<serde_json::Value>(body) else {
        return body.into();
    };
    if echo["code"] == "rate_limited" {
        // When to retry depends on when in the window the request came.
        echo["retry_after"] = serde_json::Value::Null;
        echo["message"] = serde_json::Value::Null;
    }
    if let Some(headers) = echo.get_mut("headers").and_then(|h| h.as_array_mut()) {
        for h in headers.iter_mut() {
            h[0] = h[0].as_str().unwrap().to_ascii_lowercase().into();
        }
        headers.sort_by_key(|h| h.to_string());
    }
    echo
}

/// The matrix every listener must answer alike: (method, path, key).
const MATRIX: &[(&str, &str, Option<&str>)] = &[
    ("GET", "/health", None),
    ("GET", "/v1/products/1", None),
    (
        "GET",
        "/v1/products/1",
        Some("sk_live_NOTAKEY000000000000000000000000001"),
    ),
    ("POST", "/v1/products/1", Some(READER)),
    ("GET", "/v1/products/1", Some(READER)),
    ("GET", "/v1/products/2", Some(WRITER)),
    // The burst of 3 per second is now used up: 429.
    ("GET", "/v1/products/3", Some(READER)),
];

fn run_matrix(addr: SocketAddr, scheme: &str, protocol: &str, ca: &Path) -> Vec<Exchange> {
    MATRIX
        .iter()
        .map(|&(method, path, key)| {
            let auth = key.map(|k| format!("Authorization: {}", bearer(k)));
            let mut args = vec!["-X", method];
            if let Some(auth) = &auth {
                args.extend(["-H", auth.as_str()]);
            }
            let mut exchange = curl(addr, scheme, protocol, ca, path, &args);
            // The response's date, and rate-limit timings, depend on when it was sent.
            exchange.headers.retain(|(n, _)| {
                !matches!(
                    n.as_str(),
                    "date" | "ratelimit" | "x-ratelimit-reset" | "retry-after"
                )
            });
            exchange
        })
        .collect()
}

/// Waits until the burst is whole again, so that each run of the matrix starts alike.
fn fresh_burst() {
    std::thread::sleep(Duration::from_millis(2100));
}

#[test]
fn http2_and_http1_over_tls_answer_exactly_as_the_plain_listener() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_certificate(dir.path(), "server");
    let up = Echo::start();
    let (k, tls) = start_tls(&up, &keys(), &cert, &key, true);

    let plain = run_matrix(k.addr, "http", "--http1.1", &cert);
    fresh_burst();
    let h1 = run_matrix(tls, "https", "--http1.1", &cert);
    fresh_burst();
    let h2 = run_matrix(tls, "https", "--http2", &cert);

    let statuses: Vec<u16> = plain.iter().map(|e| e.status).collect();
    assert_eq!(statuses, [200, 401, 401, 403, 200, 200, 429]);
    for (((p, a), b), request) in plain.iter().zip(&h1).zip(&h2).zip(MATRIX) {
        assert_eq!(p.version, "1.1");
        assert_eq!(a.version, "1.1");
        assert_eq!(b.version, "2", "ALPN h2 not chosen: {b:?}");
        for other in [a, b] {
            assert_eq!(other.status, p.status, "{request:?}");
            // The upstream's echo included: it saw the same request whichever way it came
            // (HTTP/2 sends header names in lower case, and `:authority` becomes Host).
            assert_eq!(
                seen_upstream(&other.body),
                seen_upstream(&p.body),
                "{request:?}"
            );
            // HTTP/2 has no connection-specific headers; everything else is the same.
            let expected: Vec<_> = p
                .headers
                .iter()
                .filter(|(n, _)| {
                    other.version == "1.1"
                        || !matches!(
                            n.as_str(),
                            "connection" | "keep-alive" | "transfer-encoding"
                        )
                })
                .cloned()
                .collect();
            assert_eq!(
                other.headers, expected,
                "{request:?} over {}",
                other.version
            );
        }
    }
    // The upstream saw the key's identity, not the key.
    assert!(
        !up.received()
            .iter()
            .any(|r| String::from_utf8_lossy(r).contains("TLSREADER"))
    );
}

/// `h2load`: many concurrent streams on each connection, each decided on its own.
#[test]
fn many_streams_on_one_http2_connection_are_each_decided() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_certificate(dir.path(), "server");
    let up = Echo::start();
    let (k, tls) = start_tls(&up, &keys(), &cert, &key, false);
    let h2load = |path: &str, key: &str| -> String {
        let out = Command::new("h2load")
            .args(["-n", "400", "-c", "2", "-m", "20", "-H"])
            .arg(format!("Authorization: {}", bearer(key)))
            .arg(format!("https://127.0.0.1:{}{path}", tls.port()))
            .output()
            .expect("h2load runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.contains("Application protocol: h2"), "{text}");
        text
    };
    let ok = h2load("/v1/products/1", READER);
    assert!(ok.contains("400 succeeded, 0 failed"), "{ok}");
    assert!(
        ok.contains("status codes: 400 2xx, 0 3xx, 0 4xx, 0 5xx"),
        "{ok}"
    );
    let refused = h2load(
        "/v1/products/1",
        "sk_live_NOTAKEY000000000000000000000000001",
    );
    assert!(
        refused.contains("status codes: 0 2xx, 0 3xx, 400 4xx, 0 5xx"),
        "{refused}"
    );
    let forbidden = h2load("/v1/data/geo/1", READER);
    assert!(
        forbidden.contains("status codes: 0 2xx, 0 3xx, 400 4xx, 0 5xx"),
        "{forbidden}"
    );
    // Each of the 1,200 streams was one decision, counted as such.
    let metrics = k.metrics();
    let total: f64 = keygate_test_support::metrics::parse(&metrics)
        .iter()
        .filter(|s| s.name == "keygate_requests_total")
        .map(|s| s.value)
        .sum();
    assert_eq!(total, 1200.0, "{metrics}");
    assert_eq!(up.requests_seen(), 400);
    // And logged on its own: one access-log line per stream (written out at the stop).
    let mut k = k;
    assert!(k.terminate());
    let lines = k.access_log();
    assert_eq!(lines.len(), 1200);
    assert_eq!(lines.iter().filter(|l| l["status"] == 200).count(), 400);
}

/// What `openssl s_client` makes of the listener with `args`: whether the handshake succeeded,
/// and the served certificate's SHA-256 fingerprint.
fn handshake(addr: SocketAddr, args: &[&str]) -> Option<String> {
    let out: Output = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "localhost",
        ])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !text.contains("BEGIN CERTIFICATE") {
        return None;
    }
    Some(fingerprint_of(text.as_bytes()))
}

fn fingerprint_of(pem: &[u8]) -> String {
    let mut child = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(pem).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn tls_1_2_and_1_3_only() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_certificate(dir.path(), "server");
    let up = Echo::start();
    let (k, tls) = start_tls(&up, &keys(), &cert, &key, false);
    let served = fingerprint_of(&std::fs::read(&cert).unwrap());
    assert_eq!(
        handshake(tls, &["-tls1_3"]).as_deref(),
        Some(served.as_str())
    );
    assert_eq!(
        handshake(tls, &["-tls1_2"]).as_deref(),
        Some(served.as_str())
    );
    // The client is allowed the old versions (OpenSSL 3 hides them at its default level).
    for old in ["-tls1_1", "-tls1"] {
        assert_eq!(
            handshake(tls, &[old, "-cipher", "DEFAULT@SECLEVEL=0"]),
            None,
            "{old}"
        );
    }
    // Plain HTTP on the TLS port is no handshake either.
    let _ = common::http::exchange_raw(
        tls,
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(2),
    );
    metric("keygate_tls_handshake_failures_total")
        .at_least(3)
        .eventually(k.admin);
    // Each failure is counted, not logged as an error.
    assert!(!k.log().contains("handshake error"), "{}", k.log());
}

#[test]
fn a_renewed_certificate_is_served_without_a_restart_and_a_broken_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_certificate(dir.path(), "served");
    let (new_cert, new_key) = make_certificate(dir.path(), "renewed");
    let up = Echo::start();
    let (mut k, tls) = start_tls(&up, &keys(), &cert, &key, false);
    let pid = k.pid();
    let old = fingerprint_of(&std::fs::read(&cert).unwrap());
    let new = fingerprint_of(&std::fs::read(&new_cert).unwrap());
    assert_eq!(handshake(tls, &[]).as_deref(), Some(old.as_str()));

    // Half a renewal: the new certificate beside the old key. Refused; the old pair serves on.
    std::fs::copy(&new_cert, &cert).unwrap();
    metric("keygate_tls_certificate_reloads_total")
        .label("result", "error")
        .value(1)
        .eventually(k.admin);
    assert_eq!(handshake(tls, &[]).as_deref(), Some(old.as_str()));
    assert!(
        k.log().contains("does not belong to the certificate"),
        "{}",
        k.log()
    );

    // The key arrives: the renewed pair is served from the next handshake, by the same process.
    std::fs::copy(&new_key, &key).unwrap();
    metric("keygate_tls_certificate_reloads_total")
        .label("result", "ok")
        .value(1)
        .eventually(k.admin);
    assert_eq!(handshake(tls, &[]).as_deref(), Some(new.as_str()));
    let r = curl(tls, "https", "--http2", &new_cert, "/health", &[]);
    assert_eq!((r.version.as_str(), r.status), ("2", 200));
    assert!(k.is_running());
    assert_eq!(k.pid(), pid);
    // Nothing of the key reached the log.
    let key_pem = std::fs::read_to_string(&new_key).unwrap();
    let key_body = key_pem.lines().nth(1).unwrap();
    assert!(!k.log().contains(key_body));
}

fn check(config: &str, dir: &Path) -> (bool, String) {
    let path = dir.join("keygate.yaml");
    std::fs::write(&path, config).unwrap();
    std::fs::write(dir.join("keys.yaml"), keys().yaml()).unwrap();
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn a_certificate_pair_that_cannot_serve_is_refused_at_check_with_the_file_at_fault() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_certificate(dir.path(), "a");
    let (_, other_key) = make_certificate(dir.path(), "b");
    let config = |tls: &str, extra: &str| {
        format!(
            "listen:\n  addresses: ['127.0.0.1:8080']\n  tls: {tls}\n{extra}upstream: {{ address: '127.0.0.1:9000' }}\nsnapshot: {{ file: keys.yaml }}\nroutes: [{{ name: h, path: /health, auth: none }}]\n"
        )
    };
    let tls = |c: &str, k: &str| {
        format!("{{ addresses: ['127.0.0.1:8443'], cert_file: {c}, key_file: {k} }}")
    };
    let (ok, text) = check(&config(&tls("a.crt", "a.key"), ""), dir.path());
    assert!(ok, "{text}");
    for (c, k, field, message) in [
        (
            "missing.crt",
            "a.key",
            "listen.tls.cert_file",
            "cannot read it",
        ),
        (
            "a.key",
            "a.key",
            "listen.tls.cert_file",
            "no PEM certificate",
        ),
        (
            "a.crt",
            "missing.key",
            "listen.tls.key_file",
            "cannot read it",
        ),
        (
            "a.crt",
            "a.crt",
            "listen.tls.key_file",
            "no PEM private key",
        ),
        (
            "a.crt",
            "b.key",
            "listen.tls.key_file",
            "does not belong to the certificate",
        ),
    ] {
        let (ok, text) = check(&config(&tls(c, k), ""), dir.path());
        assert!(!ok, "{c} {k} accepted: {text}");
        assert!(
            text.contains(field) && text.contains(message),
            "{c} {k}: {text}"
        );
        assert!(text.contains("keygate.yaml"), "{text}");
    }
    let (ok, text) = check(
        &config(&tls("a.crt", "a.key"), "").replace("8080']\n", "8080']\n  proxy_protocol: true\n"),
        dir.path(),
    );
    // The PROXY protocol with TLS: the header is read before the handshake.
    assert!(ok, "{text}");
    let (ok, text) = check(
        &config(&tls("a.crt", "a.key").replace("8443", "8080"), ""),
        dir.path(),
    );
    assert!(!ok && text.contains("listen.tls.addresses"), "{text}");
    // TLS listeners alone are enough.
    let (ok, text) = check(
        &config(&tls("a.crt", "a.key"), "").replace("['127.0.0.1:8080']", "[]"),
        dir.path(),
    );
    assert!(ok, "{text}");
    drop((cert, key, other_key));
}

/// How long an `openssl s_client` that chose `h2` by ALPN, sent `bytes` and then nothing,
/// stayed connected (`None`: still connected after `limit`).
fn held_for(addr: SocketAddr, bytes: &[u8], limit: Duration) -> Option<Duration> {
    use std::io::Write;
    let start = std::time::Instant::now();
    let mut client = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-alpn",
            "h2",
            "-quiet",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kept open (and written to once): the client closes nothing itself.
    let mut stdin = client.stdin.take().unwrap();
    stdin.write_all(bytes).unwrap();
    let held = within(limit, || client.try_wait().unwrap().is_some()).map(|_| start.elapsed());
    let _ = client.kill();
    drop(stdin);
    held
}

#[test]
fn a_silent_or_idle_http2_connection_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_certificate(dir.path(), "server");
    let up = Echo::start();
    let mut tls_addr = None;
    let k = Keygate::start(Setup::new(&up, &keys()).config(|c| {
        c.listen.request_head_timeout = Some(Duration::from_secs(1));
        c.listen.keepalive_timeout = Some(Duration::from_secs(3));
        tls_addr = Some(tls_listener(c, &cert, &key));
    }));
    let tls_addr = tls_addr.unwrap();
    // No preface: closed at the head timeout (Pingora alone would wait for ever).
    let silent = held_for(tls_addr, b"", Duration::from_secs(10)).expect("silent client held");
    assert!(silent < Duration::from_secs(3), "{silent:?}");
    // The preface and empty settings, then no stream: closed at the keep-alive timeout.
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    let idle = held_for(tls_addr, preface, Duration::from_secs(10)).expect("idle client held");
    assert!(
        idle > Duration::from_secs(2) && idle < Duration::from_secs(5),
        "{idle:?}"
    );
    metric("keygate_request_heads_refused_total")
        .label("reason", "timeout")
        .value(1)
        .assert_at(k.admin);
}

/// An HTTPS upstream (Python's, a different TLS stack from keygate's) that answers each GET
/// with what it saw: the TLS version, the SNI, the headers.
struct TlsUpstream {
    child: std::process::Child,
    addr: SocketAddr,
}

impl TlsUpstream {
    fn start(cert: &Path, key: &Path) -> TlsUpstream {
        const SERVER: &str = r#"
import http.server, json, ssl, sys
seen = {}
class Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = json.dumps({"tls": self.connection.version(), "sni": seen.get("sni"),
                           "headers": [[k, v] for k, v in self.headers.items()]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[2], sys.argv[3])
def on_sni(sock, name, context):
    seen["sni"] = name
ctx.sni_callback = on_sni
server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Echo)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"#;
        let port = common::http::free_port();
        let child = Command::new("python3")
            .args(["-c", SERVER, &port.to_string()])
            .arg(cert)
            .arg(key)
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        assert!(common::http::wait_for_port(addr, Duration::from_secs(10)));
        TlsUpstream { child, addr }
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn an_upstream_over_tls_is_verified_against_its_name_and_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, leaf, leaf_key) = make_ca_and_leaf(dir.path(), "DNS:upstream.test,IP:127.0.0.1");
    let upstream = TlsUpstream::start(&leaf, &leaf_key);
    let unused = Echo::start();
    let through = |sni: Option<&str>, ca_file: Option<&Path>| {
        let k = Keygate::start(Setup::new(&unused, &keys()).config(|c| {
            c.upstream.address = upstream.addr.to_string();
            c.upstream.tls = true;
            c.upstream.sni = sni.map(str::to_owned);
            c.upstream.ca_file = ca_file.map(|p| p.display().to_string());
        }));
        k.get_with_key("/v1/products/1", READER)
    };
    // The address's IP, verified against the certificate's IP SAN (no SNI is sent for an IP).
    let r = through(None, Some(&ca));
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json();
    assert!(
        seen["tls"].as_str().unwrap().starts_with("TLSv1."),
        "{seen}"
    );
    assert_eq!(
        upstream_header(&r, "x-workspace-id").as_deref(),
        Some("ws_tls")
    );
    // A name: sent as SNI and verified.
    let r = through(Some("upstream.test"), Some(&ca));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["sni"], "upstream.test");
    // A name the certificate does not carry, or a CA that did not sign it: no request leaves.
    assert_eq!(through(Some("other.test"), Some(&ca)).status, 502);
    assert_eq!(through(Some("upstream.test"), None).status, 502);
    assert_eq!(unused.requests_seen(), 0);
}

#[test]
fn upstream_tls_settings_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (_, leaf, _) = make_ca_and_leaf(dir.path(), "DNS:upstream.test");
    let config = |upstream: &str| {
        format!(
            "listen: {{ addresses: ['127.0.0.1:8080'] }}\nupstream: {{ address: '127.0.0.1:9443', {upstream} }}\nsnapshot: {{ file: keys.yaml }}\nroutes: [{{ name: h, path: /health, auth: none }}]\n"
        )
    };
    let (ok, text) = check(
        &config("tls: true, ca_file: ca.crt, sni: upstream.test"),
        dir.path(),
    );
    assert!(ok, "{text}");
    for (upstream, field, message) in [
        (
            "sni: upstream.test",
            "upstream.sni",
            "only with upstream.tls: true",
        ),
        (
            "ca_file: ca.crt",
            "upstream.ca_file",
            "only with upstream.tls: true",
        ),
        (
            "tls: true, ca_file: missing.crt",
            "upstream.ca_file",
            "cannot read it",
        ),
        (
            "tls: true, ca_file: leaf.key",
            "upstream.ca_file",
            "no PEM certificate",
        ),
        (
            "tls: true, sni: 'bad name!'",
            "upstream.sni",
            "not a DNS name",
        ),
    ] {
        let (ok, text) = check(&config(upstream), dir.path());
        assert!(!ok, "{upstream} accepted: {text}");
        assert!(
            text.contains(field) && text.contains(message),
            "{upstream}: {text}"
        );
    }
    drop(leaf);
}

/// Behind a TCP balancer that sends a PROXY header and lets keygate terminate TLS: the header
/// before the handshake names the client; a connection without one never gets a handshake.
#[test]
fn a_proxy_protocol_header_before_the_tls_handshake_names_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_ca_and_leaf(dir.path(), "DNS:localhost");
    let up = Echo::start();
    let mut tls_addr = None;
    let k = Keygate::start(Setup::new(&up, &keys()).config(|c| {
        c.listen.proxy_protocol = Some(true);
        c.listen.request_head_timeout = Some(Duration::from_secs(1));
        tls_addr = Some(tls_listener(c, &cert, &key));
    }));
    let tls_addr = tls_addr.unwrap();
    let request = format!(
        "GET /v1/me HTTP/1.1\r\nHost: localhost\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
        bearer(READER)
    );
    let header = b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 443\r\n";
    let mut client =
        keygate_test_support::tls::TlsClient::connect_after(tls_addr, &ca, "localhost", header)
            .unwrap();
    let raw = client.exchange(request.as_bytes()).unwrap();
    let (response, _) = common::http::parse_response(&raw, false).unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        upstream_header(&response, "x-client-ip").as_deref(),
        Some("203.0.113.7")
    );
    // v2 LOCAL (a balancer's health check): the connection's own peer stands.
    let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    let mut client =
        keygate_test_support::tls::TlsClient::connect_after(tls_addr, &ca, "localhost", &local)
            .unwrap();
    let raw = client.exchange(request.as_bytes()).unwrap();
    let (response, _) = common::http::parse_response(&raw, false).unwrap();
    assert_eq!(
        upstream_header(&response, "x-client-ip").as_deref(),
        Some("127.0.0.1")
    );
    // No header (the ClientHello is no header), or one that never finishes: refused. (The
    // harness's port probes, without a header, were refused too.)
    let before = k.metric("keygate_proxy_protocol_refused_total").unwrap();
    assert!(keygate_test_support::tls::TlsClient::connect(tls_addr, &ca, "localhost").is_err());
    let slow = std::net::TcpStream::connect(tls_addr).unwrap();
    std::io::Write::write_all(&mut &slow, b"PROXY TCP4 ").unwrap();
    metric("keygate_proxy_protocol_refused_total")
        .value(before + 2.0)
        .eventually(k.admin);
    drop(slow);
    assert!(!k.log().contains("handshake error"), "{}", k.log());
}

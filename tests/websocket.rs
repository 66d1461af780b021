//! WebSocket through keygate: the upgrade request is decided like any request (credential,
//! route, scopes), then the 101 and both directions of frames pass through. The upstream is a
//! real, minimal WebSocket echo server (RFC 6455 handshake and frames) on loopback.

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const READER: &str = "sk_live_WEBSOCKETREADER00000000000000000001";
const WRITER_ONLY: &str = "sk_live_WEBSOCKETWRITER00000000000000000001";
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// RFC 6455 §4.2.2: the accept value for a client's key.
fn accept(key: &str) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC11B65");
    STANDARD.encode(sha.digest().bytes())
}

fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).unwrap_or(0) == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// One frame: (opcode, payload), unmasked.
fn read_frame(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).ok()?;
    let mut len = u64::from(h[1] & 0x7f);
    if len == 126 {
        let mut b = [0u8; 2];
        s.read_exact(&mut b).ok()?;
        len = u64::from(u16::from_be_bytes(b));
    } else if len == 127 {
        let mut b = [0u8; 8];
        s.read_exact(&mut b).ok()?;
        len = u64::from_be_bytes(b);
    }
    let mask = if h[1] & 0x80 != 0 {
        let mut m = [0u8; 4];
        s.read_exact(&mut m).ok()?;
        Some(m)
    } else {
        None
    };
    let mut payload = vec![0u8; usize::try_from(len).ok()?];
    s.read_exact(&mut payload).ok()?;
    if let Some(m) = mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= m[i % 4];
        }
    }
    Some((h[0] & 0x0f, payload))
}

/// A final frame; masked as a client's must be (RFC 6455 §5.3), or not, as a server's.
fn frame(opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut out = vec![
        0x80 | opcode,
        payload.len() as u8 | if masked { 0x80 } else { 0 },
    ];
    let m = [0x37, 0xfa, 0x21, 0x3d];
    if masked {
        out.extend_from_slice(&m);
    }
    out.extend(
        payload
            .iter()
            .enumerate()
            .map(|(i, b)| if masked { b ^ m[i % 4] } else { *b }),
    );
    out
}

/// A WebSocket echo server; keeps the request heads it answered.
struct EchoWs {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl EchoWs {
    fn start() -> EchoWs {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let kept = heads.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut s) = conn else { continue };
                let kept = kept.clone();
                std::thread::spawn(move || {
                    let head = read_head(&mut s);
                    let key = head
                        .lines()
                        .find_map(|l| {
                            let (n, v) = l.split_once(':')?;
                            n.eq_ignore_ascii_case("sec-websocket-key")
                                .then(|| v.trim().to_owned())
                        })
                        .unwrap_or_default();
                    kept.lock().unwrap().push(head);
                    let answer = format!(
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                        accept(&key)
                    );
                    if s.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                    while let Some((opcode, payload)) = read_frame(&mut s) {
                        if opcode == 0x8 {
                            let _ = s.write_all(&frame(0x8, &payload, false));
                            return;
                        }
                        if s.write_all(&frame(opcode, &payload, false)).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        EchoWs { addr, heads }
    }
}

/// Opens a WebSocket to `path` through keygate with `secret`; the response head, and the
/// stream when it was switched.
fn open(kg: &Keygate, path: &str, secret: &str) -> (String, TcpStream) {
    open_with(kg, path, &format!("Authorization: Bearer {secret}\r\n"))
}

/// As [`open`], with `headers` (each line ending in CRLF) instead of a key.
fn open_with(kg: &Keygate, path: &str, headers: &str) -> (String, TcpStream) {
    let mut s = TcpStream::connect(kg.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: keygate.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    let head = read_head(&mut s);
    (head, s)
}

/// One live workspace with a key holding `products:read`.
fn reader_keys() -> Keys {
    Keys::new(1).workspace("ws_live", WorkspaceKind::Live).key(
        "key_reader",
        READER,
        Some("ws_live"),
        Some(&["products:read"]),
    )
}

fn keygate(up: &EchoWs) -> Keygate {
    let keys = reader_keys().key(
        "key_writer",
        WRITER_ONLY,
        Some("ws_live"),
        Some(&["products:write"]),
    );
    let echo = http::Echo::start();
    Keygate::start(Setup::new(&echo, &keys).config(|c| {
        c.upstream.address = up.addr.to_string();
        c.upstream.read_timeout = Some(Duration::from_secs(30));
    }))
}

#[test]
fn an_authorised_upgrade_is_proxied_both_ways_with_keygates_identity() {
    let up = EchoWs::start();
    let kg = keygate(&up);
    let (head, mut s) = open(&kg, "/v1/products/live", READER);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains(&accept(KEY)), "{head}");
    for text in ["hello", "a second message", ""] {
        s.write_all(&frame(0x1, text.as_bytes(), true)).unwrap();
        let (opcode, payload) = read_frame(&mut s).expect("an echo");
        assert_eq!((opcode, payload.as_slice()), (0x1, text.as_bytes()));
    }
    s.write_all(&frame(0x8, &[0x03, 0xe8], true)).unwrap();
    assert_eq!(read_frame(&mut s).map(|f| f.0), Some(0x8));

    // The upstream saw keygate's identity, not the key.
    let heads = up.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 1);
    let lower = heads[0].to_ascii_lowercase();
    assert!(lower.contains("x-api-key-id: key_reader"), "{}", heads[0]);
    assert!(lower.contains("x-auth-type: api_key"), "{}", heads[0]);
    assert!(lower.contains("upgrade: websocket"), "{}", heads[0]);
    assert!(!heads[0].contains(READER), "the key reached the upstream");
}

#[test]
fn an_upgrade_without_the_routes_scope_or_a_key_gets_keygates_answer_and_no_upstream() {
    let up = EchoWs::start();
    let kg = keygate(&up);
    let (head, _) = open(&kg, "/v1/products/live", WRITER_ONLY);
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    let (head, _) = open(
        &kg,
        "/v1/products/live",
        "sk_live_UNKNOWN000000000000000000000000001",
    );
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert!(
        up.heads.lock().unwrap().is_empty(),
        "a refused upgrade reached the upstream"
    );
}

#[test]
fn an_idle_websocket_lasts_as_long_as_the_upstream_read_timeout() {
    let up = EchoWs::start();
    let keys = reader_keys();
    let echo = http::Echo::start();
    let kg = Keygate::start(Setup::new(&echo, &keys).config(|c| {
        c.upstream.address = up.addr.to_string();
        c.upstream.read_timeout = Some(Duration::from_secs(1));
    }));
    // Messages more often than the timeout keep it open.
    let (head, mut s) = open(&kg, "/v1/products/live", READER);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(400));
        s.write_all(&frame(0x9, b"ping", true)).unwrap();
        assert_eq!(read_frame(&mut s).map(|f| f.0), Some(0x9));
    }
    // Idle past it: keygate closes the connection.
    std::thread::sleep(Duration::from_millis(1500));
    let _ = s.write_all(&frame(0x1, b"late", true));
    assert_eq!(
        read_frame(&mut s),
        None,
        "an idle WebSocket outlived read_timeout"
    );
}

/// A browser's WebSocket cannot set `Authorization`: on a `browser: true` route it carries a
/// client token in the `access_token` query parameter or as a subprotocol. Both open the socket
/// as the minting key, and neither way does the token reach the upstream or the logs.
#[test]
fn a_browser_opens_a_websocket_with_a_client_token_in_the_query_or_the_subprotocols() {
    use keygate_protocol::tokens::AccessClaims;
    let up = EchoWs::start();
    let signer = token_signer("kid_1", 1);
    let keys = reader_keys().signing_key("kid_1", signer.public_key());
    let echo = http::Echo::start();
    let kg = Keygate::start(Setup::new(&echo, &keys).config(|c| {
        c.upstream.address = up.addr.to_string();
        accept_client_tokens(c, "cp");
    }));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let token = signer.sign_client_token(&AccessClaims {
        iss: "cp".into(),
        sub: "key_reader".into(),
        aud: "keygate".into(),
        exp: now + 600,
        nbf: now,
        iat: now,
        jti: "jti_ws".into(),
        client_id: "key_reader".into(),
        scope: "products:read".into(),
        workspace: "ws_live".into(),
    });

    let by_query = open_with(&kg, &format!("/v1/live/feed?access_token={token}"), "");
    let by_protocol = open_with(
        &kg,
        "/v1/live/feed?room=2",
        &format!("Sec-WebSocket-Protocol: chat, access_token.{token}\r\n"),
    );
    for (head, mut s) in [by_query, by_protocol] {
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        s.write_all(&frame(0x1, b"hello", true)).unwrap();
        assert_eq!(read_frame(&mut s), Some((0x1, b"hello".to_vec())));
    }
    let heads = up.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 2);
    assert!(
        heads[0].starts_with("GET /v1/live/feed HTTP/1.1"),
        "{}",
        heads[0]
    );
    assert!(
        heads[1].starts_with("GET /v1/live/feed?room=2 HTTP/1.1"),
        "{}",
        heads[1]
    );
    for head in &heads {
        let lower = head.to_ascii_lowercase();
        assert!(lower.contains("x-auth-type: client_token"), "{head}");
        assert!(lower.contains("x-api-key-id: key_reader"), "{head}");
        assert!(
            !head.contains(&token),
            "the token reached the upstream: {head}"
        );
    }
    assert!(
        heads[1]
            .to_ascii_lowercase()
            .contains("sec-websocket-protocol: chat\r\n"),
        "{}",
        heads[1]
    );

    // The same token on a route not marked for browsers opens nothing.
    let (head, _) = open_with(&kg, &format!("/v1/products/live?access_token={token}"), "");
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    let (head, _) = open_with(
        &kg,
        "/v1/products/live",
        &format!("Sec-WebSocket-Protocol: access_token.{token}\r\n"),
    );
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    // Nor does an API key in the query string, on any route.
    let (head, _) = open_with(&kg, &format!("/v1/live/feed?access_token={READER}"), "");
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert_eq!(
        up.heads.lock().unwrap().len(),
        2,
        "a refused upgrade reached the upstream"
    );

    kg.settle(5);
    for log in [kg.access_log_text(), kg.log()] {
        assert!(
            !log.contains(&token[token.len() - 20..]),
            "the token was logged"
        );
        assert!(!log.contains(READER), "the key was logged");
    }
}

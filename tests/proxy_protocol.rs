//! The PROXY protocol through the real binary: on a listener that reads it, the header names
//! the client for restrictions, the upstream and the log, and a connection without a good one is
//! closed unanswered; on one that does not, a PROXY line is just a bad request.

mod common;

use common::http::{Echo, Response, exchange_raw, parse_response};
use common::*;
use std::time::Duration;

const KEY: &str = "sk_live_PROXYPROTOCOL00000000000000000001";

fn keys() -> Keys {
    Keys::new(1)
        .workspace("ws", WorkspaceKind::Live)
        .key("key_proxied", KEY, Some("ws"), Some(&["*"]))
        .restricted(&["203.0.113.0/24", "2001:db8::/32"], &[], &[])
}

fn start(up: &Echo, proxy_protocol: bool) -> Keygate {
    Keygate::start(Setup::new(up, &keys()).config(|c| {
        c.listen.proxy_protocol = Some(proxy_protocol);
    }))
}

/// `header` and then one request with the key, on one connection; the response, if any.
fn through(kg: &Keygate, header: &[u8]) -> Option<Response> {
    let mut bytes = header.to_vec();
    bytes.extend_from_slice(
        format!(
            "GET /v1/products HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {KEY}\r\n\
             Connection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    let raw = exchange_raw(kg.addr, &bytes, Duration::from_secs(5)).unwrap_or_default();
    (!raw.is_empty()).then(|| parse_response(&raw, false).unwrap().0)
}

fn v2(client: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&client);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&8080u16.to_be_bytes());
    h
}

#[test]
fn the_header_names_the_client_for_restrictions_the_upstream_and_the_log() {
    let up = Echo::start();
    let kg = start(&up, true);
    for (header, client) in [
        (
            b"PROXY TCP4 203.0.113.9 127.0.0.1 5555 8080\r\n".to_vec(),
            "203.0.113.9",
        ),
        (
            b"PROXY TCP6 2001:db8::7 ::1 5555 8080\r\n".to_vec(),
            "2001:db8::7",
        ),
        (v2([203, 0, 113, 10], 4444), "203.0.113.10"),
    ] {
        let r = through(&kg, &header).expect("an answer");
        assert_eq!(r.status, 200, "{client}: {}", r.text());
        assert_eq!(upstream_header(&r, "x-client-ip").as_deref(), Some(client));
        assert_eq!(
            upstream_header(&r, "x-forwarded-for").as_deref(),
            Some(client)
        );
    }
    // The key is restricted to those blocks: a client elsewhere is refused, though the
    // connection itself comes from loopback as before.
    let r = through(&kg, b"PROXY TCP4 198.51.100.1 127.0.0.1 5555 8080\r\n").unwrap();
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["restriction"], "ip");
    // A balancer's health check (v2 LOCAL) names no client: the peer stands, and the key's
    // restriction refuses loopback.
    let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    assert_eq!(through(&kg, &local).unwrap().status, 403);
    // Lines are written by the access log's own thread: wait for all five.
    within(Duration::from_secs(5), || kg.access_log().len() == 5).expect("five lines");
    let logged: Vec<_> = kg
        .access_log()
        .iter()
        .map(|l| l["client_ip"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        logged,
        [
            "203.0.113.9",
            "2001:db8::7",
            "203.0.113.10",
            "198.51.100.1",
            ""
        ]
    );
}

#[test]
fn a_connection_without_a_good_header_is_closed_unanswered() {
    let up = Echo::start();
    let kg = start(&up, true);
    // The harness's readiness probe connected once and sent nothing: the first refusal, counted
    // when keygate sees it close.
    let refused = || kg.metric("keygate_proxy_protocol_refused_total");
    within(Duration::from_secs(5), || refused() == Some(1.0)).expect("the probe is refused");
    for header in [
        &b""[..],
        b"PROXY TCP4 203.0.113.9 127.0.0.1 5555\r\n",
        b"PROXY TCP4 not-an-address 127.0.0.1 5555 8080\r\n",
        b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff",
    ] {
        assert!(
            through(&kg, header).is_none(),
            "{:?}",
            String::from_utf8_lossy(header)
        );
    }
    assert_eq!(up.requests_seen(), 0);
    within(Duration::from_secs(5), || refused() == Some(5.0))
        .unwrap_or_else(|| panic!("refused: {:?}", refused()));
}

#[test]
fn without_the_option_a_proxy_line_is_a_bad_request_and_names_no_one() {
    let up = Echo::start();
    let kg = start(&up, false);
    let r = through(&kg, b"PROXY TCP4 203.0.113.9 127.0.0.1 5555 8080\r\n").unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(up.requests_seen(), 0);
}

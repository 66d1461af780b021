//! Upstream failures become JSON answers: 502 when it cannot be reached, 504 when it is slow.

mod common;

use common::http::Echo;
use common::*;
use std::time::{Duration, Instant};

const KEY: &str = "sk_live_UPSTREAM0000000000000000000000001";

fn keys() -> Keys {
    Keys::new(1)
        .workspace("ws", WorkspaceKind::Live)
        .key("key_a", KEY, Some("ws"), None)
}

#[test]
fn an_unreachable_upstream_gives_502_json() {
    let up = Echo::start();
    let keys = keys();
    let kg = Keygate::start(Setup::new(&up, &keys));
    assert_eq!(kg.get_with_key("/v1/me", KEY).status, 200);
    drop(up);
    let r = kg.get_with_key("/v1/me", KEY);
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["code"], "upstream_unavailable");
}

#[test]
fn a_slow_upstream_gives_504_json_after_the_read_timeout() {
    // The harness sets `read_timeout: 2s`.
    let up = Echo::start_with_delay(Duration::from_secs(5));
    let keys = keys();
    let kg = Keygate::start(Setup::new(&up, &keys));
    let started = Instant::now();
    let r = kg.get_with_key("/v1/me", KEY);
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["code"], "upstream_timeout");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(up.requests_seen(), 1);
}

#[test]
fn forward_authorization_passes_the_header_when_asked() {
    let up = Echo::start();
    let keys = keys();
    let kg =
        Keygate::start(Setup::new(&up, &keys).config(|c| c.upstream.forward_authorization = true));
    let r = kg.get_with_key("/v1/me", KEY);
    assert_eq!(r.status, 200);
    assert_eq!(upstream_header(&r, "authorization"), Some(bearer(KEY)));
}

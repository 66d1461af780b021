//! Caps on requests in flight through the real binary, against an upstream that takes its time:
//! the request over the cap is refused while the others are held, the cap is the workspace's own
//! (no neighbour is touched), a snapshot's cap wins over the configured one, and a slot comes back
//! however its request ends, a client that hangs up included.

mod common;

use common::http::{Echo, Response};
use common::*;
use keygate::config::file::PolicyFile;
use std::io::Write;
use std::net::TcpStream;
use std::thread::{self, sleep};
use std::time::{Duration, Instant};

const CAPPED: &str = "sk_live_CONCURRENCYCAPPED00000000000000001";
const NEIGHBOUR: &str = "sk_live_CONCURRENCYNEIGHBOUR000000000001";
const SANDBOX: &str = "sk_test_CONCURRENCYSANDBOX00000000000001";

/// How long the upstream holds each request: long enough that requests started together are all
/// in flight at once, short of the upstream read timeout (2 s).
const HOLD: Duration = Duration::from_millis(1_000);

fn keys(version: u64, capped_override: Option<u32>) -> Keys {
    let limits = capped_override.map(|n| LimitsDoc {
        concurrent_requests: Some(n),
        ..LimitsDoc::default()
    });
    Keys::new(version)
        .workspace_with_limits("ws_capped", WorkspaceKind::Live, limits)
        .key("key_capped", CAPPED, Some("ws_capped"), Some(&["*"]))
        .workspace("ws_neighbour", WorkspaceKind::Live)
        .key(
            "key_neighbour",
            NEIGHBOUR,
            Some("ws_neighbour"),
            Some(&["*"]),
        )
        .workspace("ws_sandbox", WorkspaceKind::Sandbox)
        .key("key_sandbox", SANDBOX, Some("ws_sandbox"), Some(&["*"]))
}

/// Limits on, with rates no test here reaches; `live` and `sandbox` caps as given.
fn start(up: &Echo, keys: &Keys, live: Option<u32>, sandbox: Option<u32>) -> Keygate {
    let high = |cap| {
        Some(PolicyFile {
            burst_per_second: Some(10_000),
            sustained_per_minute: Some(100_000),
            concurrent_requests: cap,
        })
    };
    Keygate::start(Setup::new(up, keys).config(|c| {
        c.limits.enabled = Some(true);
        c.limits.live = high(live);
        c.limits.sandbox = high(sandbox);
    }))
}

/// Starts a request with `secret` on its own thread.
fn spawn_get(kg: &Keygate, secret: &'static str) -> thread::JoinHandle<Response> {
    let addr = kg.addr;
    thread::spawn(move || {
        let auth = bearer(secret);
        common::http::get(addr, "/v1/me", &[("Authorization", auth.as_str())])
    })
}

/// Waits until the upstream has received `n` requests in all.
fn upstream_holds(up: &Echo, n: usize) {
    within(Duration::from_secs(5), || up.requests_seen() >= n)
        .unwrap_or_else(|| panic!("the upstream saw {} of {n} requests", up.requests_seen()));
}

#[test]
fn a_cap_of_two_refuses_the_third_request_in_flight_and_frees_a_slot_as_each_finishes() {
    let up = Echo::start_with_delay(HOLD);
    let kg = start(&up, &keys(1, None), Some(2), None);
    let first = spawn_get(&kg, CAPPED);
    let second = spawn_get(&kg, CAPPED);
    upstream_holds(&up, 2);

    let third = kg.get_with_key("/v1/me", CAPPED);
    assert_eq!(third.status, 429, "{}", third.text());
    let body = third.json();
    assert_eq!(body["code"], "concurrency_limited");
    assert_eq!(body["allowed"], 2);
    assert_eq!(third.header("retry-after"), Some("1"));
    assert_eq!(third.header("content-type"), Some("application/json"));
    // The refusal never reached the upstream, and another workspace is not held back.
    assert_eq!(up.requests_seen(), 2);
    let neighbour = spawn_get(&kg, NEIGHBOUR);

    assert_eq!(first.join().unwrap().status, 200);
    assert_eq!(second.join().unwrap().status, 200);
    assert_eq!(neighbour.join().unwrap().status, 200);
    // Both slots are back: two more are let through together.
    let again = [spawn_get(&kg, CAPPED), spawn_get(&kg, CAPPED)];
    for r in again {
        assert_eq!(r.join().unwrap().status, 200);
    }
    assert_eq!(
        kg.metric(r#"keygate_concurrency_limited_total{workspace_type="live"}"#),
        Some(1.0)
    );
    assert_eq!(
        kg.metric(r#"keygate_requests_total{outcome="rate_limited",route="whoami"}"#),
        Some(1.0)
    );
    // Lines are written by the access log's own thread: wait for all six.
    within(Duration::from_secs(5), || kg.access_log().len() == 6).expect("six lines");
    let refused: Vec<_> = kg
        .access_log()
        .into_iter()
        .filter(|l| l["status"] == 429)
        .collect();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["reason"], "concurrency_limited");
    assert_eq!(refused[0]["key_id"], "key_capped");
}

#[test]
fn a_flood_of_simultaneous_requests_gets_exactly_the_cap_through() {
    let up = Echo::start_with_delay(HOLD);
    let kg = start(&up, &keys(1, None), None, Some(3));
    let started = Instant::now();
    let flood: Vec<_> = (0..24).map(|_| spawn_get(&kg, SANDBOX)).collect();
    let statuses: Vec<u16> = flood
        .into_iter()
        .map(|t| t.join().unwrap().status)
        .collect();
    // Every request was decided while the first three were still held.
    assert!(started.elapsed() < HOLD * 2, "{:?}", started.elapsed());
    let through = statuses.iter().filter(|&&s| s == 200).count();
    let refused = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!((through, refused), (3, 21), "{statuses:?}");
    assert_eq!(up.requests_seen(), 3);
    assert_eq!(
        kg.metric(r#"keygate_concurrency_limited_total{workspace_type="sandbox"}"#),
        Some(21.0)
    );
    // The live workspaces have no cap in this configuration.
    let live: Vec<_> = (0..6).map(|_| spawn_get(&kg, NEIGHBOUR)).collect();
    for r in live {
        assert_eq!(r.join().unwrap().status, 200);
    }
}

#[test]
fn a_workspace_cap_in_the_snapshot_wins_over_the_configuration_and_applies_at_the_next_swap() {
    let up = Echo::start_with_delay(HOLD);
    // No cap configured at all: only the snapshot's.
    let kg = start(&up, &keys(1, Some(1)), None, None);
    let held = spawn_get(&kg, CAPPED);
    upstream_holds(&up, 1);
    assert_eq!(kg.get_with_key("/v1/me", CAPPED).status, 429);
    // Uncapped neighbours run side by side.
    let neighbours: Vec<_> = (0..3).map(|_| spawn_get(&kg, NEIGHBOUR)).collect();
    assert_eq!(held.join().unwrap().status, 200);
    for r in neighbours {
        assert_eq!(r.join().unwrap().status, 200);
    }

    // Raised to 2 by a new snapshot.
    kg.replace_keys(&keys(2, Some(2)).yaml());
    within(Duration::from_secs(5), || {
        kg.metric("keygate_snapshot_version") == Some(2.0)
    })
    .expect("the new snapshot is in force");
    let seen = up.requests_seen();
    let held = [spawn_get(&kg, CAPPED), spawn_get(&kg, CAPPED)];
    upstream_holds(&up, seen + 2);
    assert_eq!(kg.get_with_key("/v1/me", CAPPED).status, 429);
    for r in held {
        assert_eq!(r.join().unwrap().status, 200);
    }
}

#[test]
fn a_client_that_hangs_up_gives_its_slot_back() {
    let up = Echo::start_with_delay(HOLD);
    let kg = start(&up, &keys(1, None), Some(1), None);
    // Send a whole request and hang up at once, without reading the answer.
    let mut conn = TcpStream::connect(kg.addr).unwrap();
    let auth = bearer(CAPPED);
    write!(
        conn,
        "GET /v1/me HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n"
    )
    .unwrap();
    upstream_holds(&up, 1);
    drop(conn);
    // While the upstream still holds it, the slot may be taken; once it has answered, the slot
    // must be back.
    sleep(HOLD + Duration::from_millis(500));
    let r = kg.get_with_key("/v1/me", CAPPED);
    assert_eq!(r.status, 200, "{}", r.text());
}

//! A graceful stop (SIGTERM) through the real binary: it exits as soon as nothing is in flight,
//! not at the end of its grace period, and never before an in-flight request is answered.

mod common;

use common::http::{Connection, Echo, Request};
use common::*;
use std::thread;
use std::time::{Duration, Instant};

const KEY: &str = "sk_live_SHUTDOWNKEY00000000000000000000001";

fn start(up: &Echo, grace_seconds: u64) -> Keygate {
    let keys = Keys::new(1).workspace("ws", WorkspaceKind::Live).key(
        "key_stop",
        KEY,
        Some("ws"),
        Some(&["*"]),
    );
    Keygate::start(Setup::new(up, &keys).config(|c| {
        c.server.grace_period_seconds = Some(grace_seconds);
        c.server.graceful_shutdown_timeout_seconds = Some(1);
        c.upstream.read_timeout = Some(Duration::from_secs(10));
    }))
}

#[test]
fn an_idle_keygate_exits_at_once_on_sigterm_even_with_a_kept_alive_connection() {
    let up = Echo::start();
    let mut kg = start(&up, 5);
    // A client that keeps its connection open after a request.
    let mut kept = Connection::open(kg.addr).unwrap();
    let auth = bearer(KEY);
    let r = kept
        .send(&Request::get("/v1/me").header("Authorization", &auth))
        .unwrap();
    assert_eq!(r.status, 200);
    kg.settle(1);
    let took = kg.stop_timed("-TERM").expect("keygate exits");
    // The grace period is 5 s; nothing is in flight.
    assert!(took < Duration::from_millis(1_500), "exited after {took:?}");
    // The last steps ran: the request's access-log line is written, and the stop logged.
    assert_eq!(kg.access_log().len(), 1);
    assert!(
        kg.log().contains("no client connection open: exiting"),
        "{}",
        kg.log()
    );
    assert!(kg.log().contains("keygate stopped"));
}

#[test]
fn sigterm_waits_for_a_request_in_flight_then_exits_right_after_it() {
    let up = Echo::start_with_delay(Duration::from_millis(2_000));
    let mut kg = start(&up, 10);
    let addr = kg.addr;
    let in_flight = thread::spawn(move || {
        let auth = bearer(KEY);
        let r = common::http::get(addr, "/v1/me", &[("Authorization", auth.as_str())]);
        (r, Instant::now())
    });
    within(Duration::from_secs(5), || up.requests_seen() == 1).expect("the request is held");
    let sent = Instant::now();
    let took = kg.stop_timed("-TERM").expect("keygate exits");
    let (r, answered) = in_flight.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // Not before the answer (about 2 s), and well before the 10 s grace period.
    assert!(answered <= sent + took, "exited before answering");
    assert!(took < Duration::from_millis(3_500), "exited after {took:?}");
    assert_eq!(kg.access_log().len(), 1);
}

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

/// Under systemd (`Type=notify`): `READY=1` once a snapshot is loaded and the listener accepts,
/// `WATCHDOG=1` at half of `WatchdogSec`, `STOPPING=1` on SIGTERM, on the socket systemd names.
#[test]
fn systemd_hears_ready_watchdog_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let systemd = UnixDatagram::bind(&path).unwrap();
    systemd
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let up = Echo::start();
    let keys = Keys::new(3).workspace("ws", WorkspaceKind::Live).key(
        "key_stop",
        KEY,
        Some("ws"),
        Some(&["*"]),
    );
    let mut setup = Setup::new(&up, &keys);
    setup.env = vec![
        ("NOTIFY_SOCKET", path.display().to_string()),
        ("WATCHDOG_USEC", "200000".into()),
    ];
    let mut kg = Keygate::start(setup);
    let next = || {
        let mut buf = [0u8; 256];
        let n = systemd.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(
        next(),
        format!(
            "MAINPID={}\nREADY=1\nSTATUS=serving snapshot version 3",
            kg.pid()
        )
    );
    // Ready means serving.
    assert_eq!(kg.get_with_key("/v1/me", KEY).status, 200);
    let started = Instant::now();
    for _ in 0..3 {
        assert_eq!(next(), "WATCHDOG=1");
    }
    // Every 100 ms: three take about 0.2 s; not a flood, and not stalled.
    let took = started.elapsed();
    assert!(
        (Duration::from_millis(150)..Duration::from_millis(2_000)).contains(&took),
        "{took:?}"
    );
    assert!(kg.terminate());
    let rest: Vec<String> = std::iter::from_fn(|| {
        let mut buf = [0u8; 256];
        systemd
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let n = systemd.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
    .collect();
    assert!(rest.iter().any(|m| m == "STOPPING=1"), "{rest:?}");
}

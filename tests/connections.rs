//! What one client can hold on the proxy listener: open connections, a slow or large request
//! head, idle connections when connections run short. Each test prints keygate's resident
//! memory before and after (run with `--nocapture` to see it): a figure, not an assertion.

mod common;

use common::http::Echo;
use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// keygate with one public route and `listen` changed by `change`.
fn start(up: &Echo, keys: &'static Keys, change: impl FnOnce(&mut ListenFile)) -> Keygate {
    Keygate::start(Setup::new(up, keys).config(|c| {
        c.routes = vec![public_route("public", &[], "/public/**")];
        change(&mut c.listen);
    }))
}

fn keys() -> &'static Keys {
    Box::leak(Box::new(Keys::new(1)))
}

fn connect(kg: &Keygate) -> TcpStream {
    let s = TcpStream::connect(kg.addr).expect("connect");
    s.set_nodelay(true).unwrap();
    s
}

/// Reads until the peer closes or `limit` passes; returns what arrived and whether it closed.
fn read_to_close(s: &mut TcpStream, limit: Duration) -> (String, bool) {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (String::from_utf8_lossy(&out).into_owned(), false);
        }
        s.set_read_timeout(Some(left)).unwrap();
        let mut buf = [0u8; 4096];
        match s.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (String::from_utf8_lossy(&out).into_owned(), false);
            }
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), true),
        }
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[test]
fn a_request_head_trickled_past_its_deadline_gets_408_and_is_closed() {
    let up = Echo::start();
    let kg = start(&up, keys(), |l| {
        l.request_head_timeout = Some(Duration::from_secs(1))
    });
    let rss_before = kg.rss_kib();
    let mut slow: Vec<TcpStream> = (0..50).map(|_| connect(&kg)).collect();
    let head = b"GET /public/slow HTTP/1.1\r\nHost: a\r\nX-Pad: ";
    let started = Instant::now();
    // One byte every 200 ms: each read is quick, only the whole head is late.
    for &b in head.iter().take(8) {
        for s in &mut slow {
            let _ = s.write_all(&[b]);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let rss_during = kg.rss_kib();
    let mut answered = 0;
    for s in &mut slow {
        let (text, closed) = read_to_close(s, Duration::from_secs(3));
        assert!(closed, "still open after {:?}: {text}", started.elapsed());
        if text.starts_with("HTTP/1.1 408 ") && text.contains("request_head_timeout") {
            answered += 1;
        }
    }
    let took = started.elapsed();
    assert_eq!(answered, 50, "every slow head gets the 408");
    assert!(took < Duration::from_secs(4), "closed only after {took:?}");
    assert_eq!(
        kg.metric("keygate_request_heads_refused_total{reason=\"timeout\"}"),
        Some(50.0)
    );
    // The deadline is the head's: a body may take longer, and a fast head still passes.
    let mut upload = connect(&kg);
    upload
        .write_all(b"POST /public/upload HTTP/1.1\r\nHost: a\r\nContent-Length: 8\r\n\r\n")
        .unwrap();
    for b in b"abcdefgh" {
        std::thread::sleep(Duration::from_millis(200));
        upload.write_all(&[*b]).unwrap();
    }
    let (text, _) = read_to_close(&mut upload, Duration::from_millis(1500));
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert!(text.contains("abcdefgh"), "{text}");
    // Nothing of the 408 path reaches the error log: the metric counts them instead.
    assert!(!kg.log().contains(" ERROR "), "{}", kg.log());
    eprintln!(
        "head deadline: RSS {:.1} MiB before, {:.1} MiB with 50 trickled heads open, {:.1} MiB after they were closed",
        mib(rss_before),
        mib(rss_during),
        mib(kg.rss_kib())
    );
}

#[test]
fn a_request_head_over_the_size_bound_gets_431_and_is_closed() {
    let up = Echo::start();
    let kg = start(&up, keys(), |l| l.max_request_head_bytes = Some(16384));
    let fits = format!(
        "GET /public/a HTTP/1.1\r\nHost: a\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(12_000)
    );
    let mut s = connect(&kg);
    s.write_all(fits.as_bytes()).unwrap();
    let (text, _) = read_to_close(&mut s, Duration::from_millis(500));
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");

    let rss_before = kg.rss_kib();
    // 100 clients each send 900 KB of head and never finish it.
    let pad = "p".repeat(900 * 1024);
    let mut big: Vec<TcpStream> = (0..100).map(|_| connect(&kg)).collect();
    for s in &mut big {
        let _ =
            s.write_all(format!("GET /public/a HTTP/1.1\r\nHost: a\r\nX-Pad: {pad}").as_bytes());
    }
    let rss_during = kg.rss_kib();
    let mut refused = 0;
    for s in &mut big {
        let (text, closed) = read_to_close(s, Duration::from_secs(3));
        assert!(closed, "{text}");
        refused += usize::from(
            text.starts_with("HTTP/1.1 431 ") && text.contains("request_head_too_large"),
        );
    }
    assert_eq!(refused, 100);
    assert_eq!(
        kg.metric("keygate_request_heads_refused_total{reason=\"too_large\"}"),
        Some(100.0)
    );
    eprintln!(
        "head size: RSS {:.1} MiB before, {:.1} MiB while 100 clients sent 900 KB heads, {:.1} MiB after",
        mib(rss_before),
        mib(rss_during),
        mib(kg.rss_kib())
    );
}

#[test]
fn connections_over_the_cap_are_refused_at_once() {
    let up = Echo::start();
    let kg = start(&up, keys(), |l| {
        l.max_connections = Some(200);
        l.idle_timeout_under_pressure = Some(Duration::from_secs(30));
    });
    let rss_before = kg.rss_kib();
    // Idle clients: each holds its connection (the idle timeout under pressure is 30 s).
    let mut held: Vec<TcpStream> = (0..1000).map(|_| connect(&kg)).collect();
    std::thread::sleep(Duration::from_millis(500));
    let mut refused = 0;
    for s in &mut held {
        s.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            Ok(n) if n > 0 => {
                let text = String::from_utf8_lossy(&buf[..n]);
                assert!(
                    text.starts_with("HTTP/1.1 503 ") && text.contains("too_many_connections"),
                    "{text}"
                );
                refused += 1;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            other => panic!("{other:?}"),
        }
    }
    let rss_full = kg.rss_kib();
    assert_eq!(refused, 800, "200 held, the rest refused");
    assert_eq!(kg.metric("keygate_client_connections"), Some(200.0));
    assert_eq!(
        kg.metric("keygate_client_connections_refused_total"),
        Some(800.0)
    );
    // Freed slots are taken again.
    held.clear();
    assert!(
        within(Duration::from_secs(3), || kg
            .metric("keygate_client_connections")
            == Some(0.0))
        .is_some()
    );
    let r = kg.get("/public/a", &[]);
    assert_eq!(r.status, 200);
    eprintln!(
        "connection cap 200: RSS {:.1} MiB before, {:.1} MiB with 1,000 clients connected (800 refused)",
        mib(rss_before),
        mib(rss_full)
    );
}

#[test]
fn under_pressure_idle_connections_close_first_and_responses_stop_keeping_alive() {
    let up = Echo::start();
    let kg = start(&up, keys(), |l| {
        l.max_connections = Some(20);
        l.idle_timeout_under_pressure = Some(Duration::from_millis(300));
    });
    // Pressure begins above 18 open connections. The first 18 go idle before it: kept.
    let mut early: Vec<TcpStream> = (0..18).map(|_| connect(&kg)).collect();
    assert!(
        within(Duration::from_secs(3), || kg
            .metric("keygate_client_connections")
            == Some(18.0))
        .is_some()
    );
    // Two more, idle from the start under pressure: closed after 300 ms.
    let mut late: Vec<TcpStream> = (0..2).map(|_| connect(&kg)).collect();
    let started = Instant::now();
    for s in &mut late {
        let (text, closed) = read_to_close(s, Duration::from_secs(3));
        assert!(closed && text.is_empty(), "{text:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        kg.metric("keygate_idle_connections_closed_total"),
        Some(2.0)
    );
    // Back under the threshold: a kept-alive request stays kept alive.
    early[0]
        .write_all(b"GET /public/a HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let (text, closed) = read_to_close(&mut early[0], Duration::from_millis(500));
    assert!(text.starts_with("HTTP/1.1 200 ") && !closed, "{text}");
    assert!(
        !text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    // Push it over again: the next response closes its connection.
    let _extra: Vec<TcpStream> = (0..2).map(|_| connect(&kg)).collect();
    assert!(
        within(Duration::from_secs(3), || kg
            .metric("keygate_client_connections")
            == Some(20.0))
        .is_some()
    );
    early[1]
        .write_all(b"GET /public/a HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let (text, closed) = read_to_close(&mut early[1], Duration::from_secs(2));
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert!(closed);
}

//! What the rate-limit headers cost one response, through Pingora's header API: added to a
//! response head as Pingora builds it from an upstream's (case-preserving, six headers), then
//! written out as HTTP/1 bytes, as every authenticated response is. Each way of adding them is
//! timed and its heap allocations counted (a wrapping allocator over mimalloc, as keygate
//! allocates): `insert_header` (what keygate did first), `append_header` (the names are known to
//! be absent), and keygate's way now (`limits::add_rate_headers`).
//!
//! Run: `cargo bench --bench rate_headers`, then `scripts/bench-medians.py`.

use bytes::BytesMut;
use criterion::Criterion;
use keygate::limits::{self, RateHeaders, Standing, Usage};
use mimalloc::MiMalloc;
use pingora::http::ResponseHeader;
use stats_alloc::StatsAlloc;
use std::hint::black_box;

#[global_allocator]
static ALLOC: StatsAlloc<MiMalloc> = StatsAlloc::new(MiMalloc);

fn allocations() -> usize {
    let stats = ALLOC.stats();
    stats.allocations + stats.reallocations
}

/// nginx's answer to the load bench's requests, as Pingora's HTTP/1 client builds it.
fn upstream_response() -> ResponseHeader {
    let mut r = ResponseHeader::build(200, Some(6)).unwrap();
    for (name, value) in [
        ("Server", "nginx/1.22.1"),
        ("Date", "Fri, 04 Dec 2026 08:00:00 GMT"),
        ("Content-Type", "text/plain"),
        ("Content-Length", "3"),
        ("Connection", "keep-alive"),
        ("Keep-Alive", "timeout=65"),
    ] {
        r.append_header(name, value).unwrap();
    }
    r
}

/// A live workspace's standing a few requests into its second.
fn usage() -> Usage {
    Usage {
        burst: Standing {
            limit: 30,
            remaining: 27,
            reset_ms: 1_000,
            retry_ms: 0,
        },
        sustained: Standing {
            limit: 3_000,
            remaining: 2_941,
            reset_ms: 60_000,
            retry_ms: 0,
        },
    }
}

type Add = fn(&mut ResponseHeader, &Usage);

fn none(_: &mut ResponseHeader, _: &Usage) {}

fn by_insert(header: &mut ResponseHeader, usage: &Usage) {
    for (name, value) in limits::rate_headers(usage, RateHeaders::BOTH) {
        header.insert_header(name.spelled, value).unwrap();
    }
}

fn by_append(header: &mut ResponseHeader, usage: &Usage) {
    for (name, value) in limits::rate_headers(usage, RateHeaders::BOTH) {
        header.append_header(name.spelled, value).unwrap();
    }
}

fn keygates(header: &mut ResponseHeader, usage: &Usage) {
    limits::add_rate_headers(header, usage, RateHeaders::BOTH).unwrap();
}

/// What keygate does by default (`upstream.preserve_header_case: false`): the headers written
/// into the value map under prepared names, the case map dropped.
fn without_case(header: &mut ResponseHeader, usage: &Usage) {
    keygate::headers::response_without_case(header, |map| {
        limits::add_rate_headers(map, usage, RateHeaders::BOTH).unwrap()
    });
}

const WAYS: [(&str, Add); 5] = [
    ("no rate-limit headers", none),
    ("insert_header", by_insert),
    ("append_header", by_append),
    ("keygate, preserve_header_case: true", keygates),
    ("keygate, by default (no case map)", without_case),
];

/// One response: its head as received, the headers added, the head written out.
fn respond(add: Add, usage: &Usage, wire: &mut BytesMut) {
    let mut header = upstream_response();
    add(&mut header, usage);
    wire.clear();
    header.header_to_h1_wire(wire);
    black_box(&wire);
}

fn main() {
    let usage = usage();
    let mut wire = BytesMut::with_capacity(4096);
    for (name, add) in WAYS {
        respond(add, &usage, &mut wire);
        let before = allocations();
        for _ in 0..10_000 {
            respond(add, &usage, &mut wire);
        }
        let per = (allocations() - before) as f64 / 10_000.0;
        println!(
            "{name}: {} bytes of head, allocations per response: {per}",
            wire.len()
        );
    }

    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("rate headers");
    for (name, add) in WAYS {
        group.bench_function(name, |b| {
            b.iter(|| respond(add, black_box(&usage), &mut wire))
        });
    }
    // The five values alone, without Pingora: what `add_rate_headers` makes before its inserts.
    group.bench_function("the values alone", |b| {
        b.iter(|| {
            for header in limits::rate_headers(black_box(&usage), RateHeaders::BOTH) {
                black_box(header);
            }
        })
    });
    group.finish();
    c.final_summary();
}

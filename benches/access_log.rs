//! The end of one request as keygate records it (`observe::Finish::record`): its metrics, and
//! with the access log on, its JSON line serialised and handed to the writer thread (whose
//! writes go to `io::sink` here, so only formatting and hand-off are timed). Two cases, log off
//! and log on: the difference is what one line costs. Then the heap allocations of each,
//! counted by a wrapping allocator over mimalloc, as keygate allocates.
//!
//! Issue 16 asked for a line at a fraction of the 2.5 µs and 7 allocations it cost through
//! `tracing`'s JSON layer, and none. Run: `cargo bench --bench access_log`, then
//! `scripts/bench-medians.py`.

use criterion::Criterion;
use keygate::access_log::{self, Line, Queue};
use keygate::config::AccessLogConfig;
use keygate::metrics::{Metrics, Outcome};
use keygate::observe::{Finish, RequestRecord};
use keygate::secret::KeyHash;
use keygate::snapshot::{self, Format, Owner};
use mimalloc::MiMalloc;
use stats_alloc::StatsAlloc;
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::SystemTime;

#[global_allocator]
static ALLOC: StatsAlloc<MiMalloc> = StatsAlloc::new(MiMalloc);

fn allocations() -> usize {
    let stats = ALLOC.stats();
    stats.allocations + stats.reallocations
}

fn main() {
    // keygate's own access-log queue and writer thread, writing to nowhere.
    access_log::install(Queue::new(Box::new(std::io::sink())));
    let log = AccessLogConfig {
        level: tracing::Level::INFO,
        sample_ratio: 1.0,
    };

    let doc = format!(
        r#"{{"version":1,"workspaces":[{{"id":"ws_acme","type":"live"}}],
           "keys":[{{"id":"key_01HV3","hash":"{}","workspace":"ws_acme","scopes":["products:read"]}}]}}"#,
        KeyHash::of("sk_live_bench").to_hex()
    );
    let snap = snapshot::parse(doc.as_bytes(), Format::Json, "bench").unwrap();
    let key = snap.key(&KeyHash::of("sk_live_bench")).unwrap().clone();
    let Owner::Workspace(workspace) = &key.owner else {
        unreachable!()
    };
    let record = RequestRecord {
        outcome: Outcome::Allowed,
        route: Some(0),
        workspace: Some(workspace.clone()),
        key: Some(key.clone()),
        upstream_status: Some(200),
        ..RequestRecord::default()
    };
    let metrics = Metrics::new(&["products"], None);
    let client: SocketAddr = "192.0.2.7:51234".parse().unwrap();
    let finish = |access_log: Option<&AccessLogConfig>| {
        Finish {
            metrics: &metrics,
            usage: None,
            access_log,
            route_name: Some("products"),
            method: "GET",
            path: "/v1/products/42",
            status: 200,
            client: Some(client),
            client_ip: None,
        }
        .record(black_box(&record))
    };

    for (name, access_log) in [("log off", None), ("log on", Some(&log))] {
        finish(access_log);
        let before = allocations();
        for _ in 0..100_000 {
            finish(access_log);
        }
        let per = (allocations() - before) as f64 / 100_000.0;
        println!("one request's record, {name}: allocations per request: {per}");
    }

    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("access log");
    group.bench_function("record, log off (metrics only)", |b| {
        b.iter(|| finish(None))
    });
    group.bench_function("record, log on (metrics + one line)", |b| {
        b.iter(|| finish(Some(&log)))
    });
    // The line alone: its serialisation, then serialisation and hand-off to the writer thread.
    let line = Line {
        level: "INFO",
        method: "GET",
        path: "/v1/products/42",
        route: Some("products"),
        status: 200,
        outcome: "allowed",
        reason: None,
        workspace_id: Some("ws_acme"),
        key_id: Some("key_01HV3"),
        auth_type: Some("api_key"),
        client: Some(client),
        client_ip: None,
        duration_ms: 0.412,
        upstream_status: Some(200),
    };
    let mut buffer = Vec::with_capacity(1024);
    group.bench_function("one line, serialised", |b| {
        b.iter(|| {
            buffer.clear();
            black_box(&line).write(SystemTime::now(), &mut buffer);
        })
    });
    group.bench_function("one line, serialised and queued", |b| {
        b.iter(|| access_log::emit(black_box(&line)))
    });
    group.finish();
    c.final_summary();
}

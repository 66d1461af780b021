//! The end of one request as keygate records it (`observe::Finish::record`): its metrics, and
//! with the access log on, its JSON line formatted through `tracing`'s JSON layer and handed to
//! the writer thread (whose writes go to `io::sink` here, so only formatting and hand-off are
//! timed). Two cases, log off and log on: the difference is what one line costs. Then the heap
//! allocations of each, counted by a wrapping allocator over mimalloc, as keygate allocates.
//!
//! The baseline for issue 16, which asks for a line at a fraction of today's cost and no
//! allocation. Run: `cargo bench --bench access_log`, then `scripts/bench-medians.py`.

use criterion::Criterion;
use keygate::config::AccessLogConfig;
use keygate::logging::{self, AccessSink};
use keygate::metrics::{Metrics, Outcome};
use keygate::observe::{Finish, RequestRecord};
use keygate::secret::KeyHash;
use keygate::snapshot::{self, Format, Owner};
use mimalloc::MiMalloc;
use stats_alloc::StatsAlloc;
use std::hint::black_box;
use std::net::SocketAddr;
use tracing_appender::non_blocking::NonBlockingBuilder;

#[global_allocator]
static ALLOC: StatsAlloc<MiMalloc> = StatsAlloc::new(MiMalloc);

fn allocations() -> usize {
    let stats = ALLOC.stats();
    stats.allocations + stats.reallocations
}

fn main() {
    // keygate's own subscriber, its access-log queue writing to nowhere.
    let (writer, _guard) = NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(64 * 1024)
        .finish(std::io::sink());
    let log = AccessLogConfig {
        level: tracing::Level::INFO,
        sample_ratio: 1.0,
    };
    let subscriber = logging::subscriber("warn", None, Some(&log), AccessSink::Queued(writer));
    tracing::subscriber::set_global_default(subscriber).unwrap();

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
        for _ in 0..1_000 {
            finish(access_log);
        }
        let per = (allocations() - before) as f64 / 1_000.0;
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
    group.finish();
    c.final_summary();
}

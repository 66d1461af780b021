//! The whole decision for one request — normalise the path, match the route, parse the header,
//! hash, look up, check scopes, resolve the workspace, count against limits — on a snapshot of
//! 10,000 keys.
//!
//! Run: `cargo bench --bench decision`

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue};
use keygate::config::{Config, DEFAULT_LIVE, DEFAULT_SANDBOX, LimitsConfig};
use keygate::gate::{Gate, RateLimits, Verdict};
use keygate::limits::{Limiter, MonotonicClock, Policy};
use keygate::secret::KeyHash;
use keygate::snapshot::{self, Format};
use std::fmt::Write;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

const KEYS: usize = 10_000;

fn secret(i: usize) -> String {
    format!("sk_live_BENCH{i:027}")
}

fn snapshot_yaml() -> String {
    let mut y = String::from("version: 1\nworkspaces:\n");
    for w in 0..KEYS / 10 {
        writeln!(y, "  - {{ id: ws_{w}, type: live }}").unwrap();
    }
    y.push_str("keys:\n");
    for i in 0..KEYS {
        let hash = KeyHash::of(&secret(i)).to_hex();
        writeln!(y, "  - {{ id: key_{i}, hash: {hash}, workspace: ws_{}, scopes: [\"products:*\", \"*:read\"] }}", i / 10).unwrap();
    }
    y
}

fn gate(limits: bool) -> Gate {
    let conf = Config::from_yaml(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/keygate.yaml"))
            .unwrap(),
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/keygate.yaml")),
    )
    .unwrap();
    // Limits high enough that the benchmark loop measures admissions, not refusals.
    let high = Policy {
        burst_per_second: u32::MAX,
        sustained_per_minute: u32::MAX,
    };
    let limits = limits.then(|| RateLimits {
        limiter: Arc::new(Limiter::new(Arc::new(MonotonicClock::new()))),
        config: LimitsConfig {
            live: high,
            sandbox: DEFAULT_SANDBOX,
            internal: None,
        },
    });
    let _ = DEFAULT_LIVE;
    Gate::new(conf.routes, conf.unmatched, limits)
}

fn decide(c: &mut Criterion) {
    let snap = snapshot::parse(snapshot_yaml().as_bytes(), Format::Yaml, "bench").unwrap();
    assert_eq!(snap.key_count(), KEYS);
    let headers: Vec<HeaderMap> = (0..KEYS)
        .step_by(97)
        .map(|i| {
            let mut h = HeaderMap::new();
            h.insert(
                "authorization",
                HeaderValue::from_str(&format!("Bearer {}", secret(i))).unwrap(),
            );
            h
        })
        .collect();
    let mut group = c.benchmark_group(format!("decision, {KEYS} keys"));
    for (name, limits) in [("auth + scopes", false), ("auth + scopes + limits", true)] {
        let gate = gate(limits);
        let mut i = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % headers.len();
                let d = gate.decide(
                    Some(&snap),
                    "GET",
                    black_box("/v1/products/42"),
                    &headers[i],
                    1_800_000_000,
                );
                black_box(matches!(d.verdict, Verdict::Forward { .. }))
            })
        });
    }
    let gate = gate(false);
    group.bench_function("unknown key (401)", |b| {
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_static("Bearer sk_live_UNKNOWN000000000000000000000000001"),
        );
        b.iter(|| {
            black_box(
                gate.decide(Some(&snap), "GET", "/v1/products/42", &h, 1_800_000_000)
                    .rate,
            )
        })
    });
    group.finish();
}

criterion_group!(benches, decide);
criterion_main!(benches);

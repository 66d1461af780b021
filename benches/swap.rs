//! Requests during snapshot swaps, on 1,000,000 keys: the decision's p50/p99 with and without
//! a swap every 100 ms (each a one-key delta applied and installed, the old snapshot retired),
//! and a check on every decision that it saw one snapshot, old or new, never a mix.
//!
//! Run: `cargo bench --bench swap` (about 30 s). Prints the figures; asserts the "never a mix"
//! property and that swaps do not double the p99.

use http::{HeaderMap, HeaderValue};
use keygate::config::{RouteAuth, Unmatched};
use keygate::gate::{Gate, Verdict};
use keygate::metrics::Metrics;
use keygate::routes::{RouteSpec, RouteTable};
use keygate::secret::KeyHash;
use keygate::snapshot::{self, Format};
use keygate::sync::{self, SnapshotStore, Source};
use std::fmt::Write;
use std::time::{Duration, Instant};

const KEYS: usize = 1_000_000;
/// The key every delta flips between active and revoked.
const FLIPPED: usize = 4_242;

fn secret(i: usize) -> String {
    format!("sk_live_SWAP{i:028}")
}

fn snapshot_json() -> String {
    let mut y = String::with_capacity(KEYS * 150);
    y.push_str("{\"version\":2,\"workspaces\":[");
    for w in 0..1000 {
        if w > 0 {
            y.push(',');
        }
        write!(y, "{{\"id\":\"ws_{w}\",\"type\":\"live\"}}").unwrap();
    }
    y.push_str("],\"keys\":[");
    for i in 0..KEYS {
        if i > 0 {
            y.push(',');
        }
        let hash = KeyHash::of(&secret(i)).to_hex();
        write!(y, "{{\"id\":\"key_{i}\",\"hash\":\"{hash}\",\"workspace\":\"ws_{}\",\"scopes\":[\"products:*\"]}}", i % 1000).unwrap();
    }
    y.push_str("]}");
    y
}

/// Version parity says whether the flipped key is revoked: even = active.
fn delta(from: u64) -> Vec<u8> {
    let status = if (from + 1).is_multiple_of(2) {
        "active"
    } else {
        "revoked"
    };
    let hash = KeyHash::of(&secret(FLIPPED)).to_hex();
    format!(
        "{{\"from\":{from},\"version\":{},\"keys\":{{\"upsert\":[{{\"id\":\"key_{FLIPPED}\",\"hash\":\"{hash}\",\"workspace\":\"ws_{}\",\"scopes\":[\"products:*\"],\"status\":\"{status}\"}}]}}}}",
        from + 1,
        FLIPPED % 1000
    )
    .into_bytes()
}

fn gate() -> Gate {
    let routes = RouteTable::build(vec![RouteSpec {
        name: "products".into(),
        methods: None,
        path: "/v1/products/**".into(),
        auth: RouteAuth::Scopes(Box::new([keygate::scopes::RequiredScope::parse(
            "products:read",
        )
        .unwrap()])),
    }])
    .unwrap();
    Gate::new(routes, Unmatched::Deny, None)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

/// Decides requests for `duration` on one thread; returns sorted latencies in ns.
fn measure(
    store: &SnapshotStore,
    gate: &Gate,
    headers: &[HeaderMap],
    flipped: &HeaderMap,
    duration: Duration,
) -> Vec<u64> {
    let mut lat = Vec::with_capacity(4_000_000);
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < duration {
        i = (i + 1) % headers.len();
        let t = Instant::now();
        let snap = store.load();
        let d = gate.decide(
            snap.as_deref(),
            "GET",
            "/v1/products/1",
            &headers[i],
            1_800_000_000,
        );
        std::hint::black_box(matches!(d.verdict, Verdict::Forward { .. }));
        lat.push(t.elapsed().as_nanos() as u64);
        // Never a mix: within one loaded snapshot, the version and the flipped key agree.
        if i % 64 == 0 {
            let s = snap.as_deref().unwrap();
            let d = gate.decide(Some(s), "GET", "/v1/products/1", flipped, 1_800_000_000);
            let active = matches!(d.verdict, Verdict::Forward { .. });
            assert_eq!(
                active,
                s.version().is_multiple_of(2),
                "version {} saw the other snapshot's key",
                s.version()
            );
        }
    }
    lat.sort_unstable();
    lat
}

fn main() {
    let json = snapshot_json();
    let t = Instant::now();
    let first = snapshot::parse(json.as_bytes(), Format::Json, "bench").unwrap();
    println!(
        "built a {}-key snapshot in {:.2} s",
        first.key_count(),
        t.elapsed().as_secs_f64()
    );
    drop(json);
    let metrics = Metrics::new(&[], None);
    let store = SnapshotStore::new();
    sync::install(&store, &metrics, first, Source::File);
    let gate = gate();
    let headers: Vec<HeaderMap> = (0..KEYS)
        .step_by(977)
        .map(|i| {
            let mut h = HeaderMap::new();
            h.insert(
                "authorization",
                HeaderValue::from_str(&format!("Bearer {}", secret(i))).unwrap(),
            );
            h
        })
        .collect();
    let mut flipped = HeaderMap::new();
    flipped.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {}", secret(FLIPPED))).unwrap(),
    );

    let calm = measure(&store, &gate, &headers, &flipped, Duration::from_secs(5));

    let mut swaps = 0u32;
    let mut apply_ms = Vec::new();
    let busy = std::thread::scope(|s| {
        let reader = s.spawn(|| measure(&store, &gate, &headers, &flipped, Duration::from_secs(5)));
        while !reader.is_finished() {
            let cur = store.load_full().unwrap();
            let t = Instant::now();
            let d = snapshot::parse_delta(&delta(cur.version()), "bench").unwrap();
            let next = cur.apply(&d).unwrap();
            apply_ms.push(t.elapsed().as_secs_f64() * 1000.0);
            drop(cur);
            sync::install(&store, &metrics, next, Source::File);
            swaps += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        reader.join().unwrap()
    });
    apply_ms.sort_by(f64::total_cmp);
    let (c50, c99) = (percentile(&calm, 0.5), percentile(&calm, 0.99));
    let (b50, b99) = (percentile(&busy, 0.5), percentile(&busy, 0.99));
    println!(
        "decision, no swaps:          p50 {c50} ns, p99 {c99} ns ({} decisions)",
        calm.len()
    );
    println!(
        "decision, swap every 100 ms: p50 {b50} ns, p99 {b99} ns ({} decisions, {swaps} swaps)",
        busy.len()
    );
    println!(
        "p99 ratio (swapping / calm): {:.2}",
        b99 as f64 / c99 as f64
    );
    println!(
        "one-key delta apply: median {:.1} ms, max {:.1} ms",
        apply_ms[apply_ms.len() / 2],
        apply_ms[apply_ms.len() - 1]
    );
    assert!(b99 < 2 * c99, "swaps doubled the p99: {b99} ns vs {c99} ns");
}

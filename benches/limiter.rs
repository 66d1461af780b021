//! The limiter decision: ns per decision with 1 and 100,000 active workspaces, by id (through the
//! limiter's map) and through each workspace's state cache (the request path's way), and the
//! bytes of state each active workspace costs (counted by a wrapping allocator, not estimated).
//!
//! Also the failed-authentication shield (`keygate::shield`): what a request that needs a key pays
//! while no address is shielded (the check), and what a failed authentication pays (counting
//! it, from 100,000 distinct addresses in turn).
//!
//! Run: `cargo bench --bench limiter`

use criterion::{BatchSize, Criterion, criterion_group};
use keygate::limits::{FakeClock, Limiter, Policy, StateCache, Subject, SubjectKey, Verdict};
use stats_alloc::StatsAlloc;
use std::alloc::System;
use std::hint::black_box;
use std::sync::Arc;

/// Counts live heap bytes so the per-workspace state can be measured exactly (`stats_alloc`:
/// keygate's crates forbid `unsafe`, which a counting allocator of our own would need).
#[global_allocator]
static ALLOC: StatsAlloc<System> = StatsAlloc::new(System);

fn live_bytes() -> isize {
    let stats = ALLOC.stats();
    stats.bytes_allocated as isize - stats.bytes_deallocated as isize + stats.bytes_reallocated
}

const LIVE: Policy = Policy {
    burst_per_second: 30,
    sustained_per_minute: 3_000,
};

/// A limiter with `n` active workspaces, each having sent one request.
fn populated(n: usize) -> (Arc<FakeClock>, Limiter, Vec<String>) {
    let clock = Arc::new(FakeClock::at(1_000));
    let limiter = Limiter::new(clock.clone());
    let ids: Vec<String> = (0..n).map(|i| format!("ws_{i:06}")).collect();
    for id in &ids {
        limiter.check(Subject::Workspace(id), LIVE);
    }
    (clock, limiter, ids)
}

fn bytes_per_workspace() {
    let n = 100_000;
    let ids: Vec<String> = (0..n).map(|i| format!("ws_{i:06}")).collect();
    let clock = Arc::new(FakeClock::at(1_000));
    let before = live_bytes();
    let limiter = Limiter::new(clock);
    for id in &ids {
        limiter.check(Subject::Workspace(id), LIVE);
    }
    let after = live_bytes();
    println!(
        "limiter state: {} bytes per active workspace ({} workspaces, {} bytes of heap)",
        (after - before) / n as isize,
        limiter.active(),
        after - before
    );
    black_box(limiter);
}

fn decisions(c: &mut Criterion) {
    let mut group = c.benchmark_group("limiter decision");
    for n in [1usize, 100_000] {
        let (clock, limiter, ids) = populated(n);
        let mut i = 0usize;
        let mut t = 1_000u64;
        group.bench_function(format!("{n} active workspaces"), |b| {
            b.iter(|| {
                // Walk the workspaces and let time pass so that windows roll as in real traffic
                // (about 10 requests per second per workspace for the 100,000 case).
                i = (i + 7919) % n;
                t += 1;
                clock.set(t / 100 * 100 + t % 100);
                black_box(matches!(
                    limiter.check(Subject::Workspace(black_box(&ids[i])), LIVE),
                    Verdict::Admitted(_)
                ))
            })
        });
    }
    // The request path's way: each workspace remembers where its state is.
    let (clock, limiter, ids) = populated(100_000);
    let workspaces: Vec<(SubjectKey, StateCache)> = ids
        .iter()
        .map(|id| (SubjectKey::new(id), StateCache::default()))
        .collect();
    let (mut i, mut t) = (0usize, 1_000u64);
    group.bench_function("100000 active workspaces, through their caches", |b| {
        b.iter(|| {
            i = (i + 7919) % workspaces.len();
            t += 1;
            clock.set(t / 100 * 100 + t % 100);
            let (key, cache) = &workspaces[i];
            black_box(matches!(
                limiter.check(Subject::CachedWorkspace(key, cache), LIVE),
                Verdict::Admitted(_)
            ))
        })
    });
    // A new workspace: the slow path that takes the shard's write lock once.
    group.bench_function("first request of a new workspace", |b| {
        b.iter_batched(
            || Limiter::new(Arc::new(FakeClock::at(0))),
            |limiter| black_box(limiter.check(Subject::Workspace("ws_new"), LIVE)),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn shield(c: &mut Criterion) {
    use keygate::client_address::CidrSet;
    use keygate::shield::{Shield, ShieldConfig};
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::{Duration, Instant};
    let shield = Shield::new(
        ShieldConfig {
            failures_per_minute: keygate::config::DEFAULT_SHIELD_FAILURES_PER_MINUTE,
            cooldown: Duration::from_secs(60),
            exempt: CidrSet::default(),
        },
        None,
    );
    let addrs: Vec<IpAddr> = (0..100_000u32)
        .map(|i| IpAddr::from(Ipv4Addr::from(0x0b00_0000 + i * 7)))
        .collect();
    let mut group = c.benchmark_group("shield");
    group.bench_function("check, nothing shielded", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % addrs.len();
            black_box(
                shield.shielded() > 0
                    && shield.refused_for(Some(addrs[i]), Instant::now()).is_some(),
            )
        })
    });
    group.bench_function("record a failure, 100,000 addresses", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % addrs.len();
            black_box(shield.record_failure(Some(addrs[i]), Instant::now()))
        })
    });
    group.finish();
}

criterion_group!(benches, decisions, shield);

fn main() {
    bytes_per_workspace();
    benches();
    Criterion::default().configure_from_args().final_summary();
}

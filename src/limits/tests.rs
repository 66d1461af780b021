//! The limiter's bars from the issue, each checked with an injected clock.

use super::*;
use std::mem::{offset_of, size_of};
use std::sync::Barrier;

/// Metrics index their 429 counters by `kind as usize`, in `ALL`'s order.
#[test]
fn subject_kinds_are_listed_in_discriminant_order() {
    for (i, kind) in SubjectKind::ALL.into_iter().enumerate() {
        assert_eq!(kind as usize, i, "{kind:?}");
    }
}

/// What `repr(C)` is for: the burst window (read whole) first, then the sustained window's
/// bookkeeping right after it, then the flag a cache checks.
#[test]
fn a_states_burst_window_comes_first_and_the_sustained_one_follows() {
    assert_eq!(offset_of!(State, burst), 0);
    assert_eq!(offset_of!(State, sustained), size_of::<BurstWindow>());
    assert!(offset_of!(State, evicted) >= size_of::<BurstWindow>() + size_of::<SustainedWindow>());
}

const LIVE: Policy = Policy {
    burst_per_second: 30,
    sustained_per_minute: 3_000,
};
const SANDBOX: Policy = Policy {
    burst_per_second: 5,
    sustained_per_minute: 100,
};

fn limiter_at(ms: Millis) -> (Arc<FakeClock>, Limiter) {
    let clock = Arc::new(FakeClock::at(ms));
    (clock.clone(), Limiter::new(clock))
}

/// The most admissions in any window `[s, s + w)`; `admitted` must be sorted.
fn max_in_any_window(admitted: &[Millis], w: Millis) -> usize {
    let (mut best, mut start) = (0, 0);
    for end in 0..admitted.len() {
        while admitted[end] - admitted[start] >= w {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best
}

/// Offers evenly spaced requests at `rate_per_ms` for `duration`; returns admitted times.
fn steady(
    limiter: &Limiter,
    clock: &FakeClock,
    p: Policy,
    per_sec: f64,
    secs: u64,
) -> (usize, Vec<Millis>) {
    let n = (per_sec * secs as f64) as u64;
    let gap = 1000.0 / per_sec;
    let start = clock.now_ms();
    let mut admitted = Vec::new();
    for i in 0..n {
        let t = start + (i as f64 * gap) as u64;
        clock.set(t);
        if let Verdict::Admitted(_) = limiter.check(Subject::Workspace("ws"), p) {
            admitted.push(t);
        }
    }
    (n as usize, admitted)
}

#[test]
fn steady_at_90_percent_of_either_limit_is_never_throttled() {
    // 90% of the live burst limit (27/s, well under the sustained limit) for ten minutes.
    let (clock, l) = limiter_at(1_000);
    let (offered, admitted) = steady(&l, &clock, LIVE, 27.0, 600);
    assert_eq!(admitted.len(), offered);
    // 90% of the sandbox sustained limit (90/min) for an hour.
    let (clock, l) = limiter_at(5);
    let (offered, admitted) = steady(&l, &clock, SANDBOX, 1.5, 3_600);
    assert_eq!(admitted.len(), offered);
    // 90% of the sustained limit with a burst limit out of the way.
    let wide = Policy {
        burst_per_second: 1_000,
        sustained_per_minute: 3_000,
    };
    let (clock, l) = limiter_at(0);
    let (offered, admitted) = steady(&l, &clock, wide, 45.0, 600);
    assert_eq!(admitted.len(), offered);
}

#[test]
fn overload_from_one_thread_is_held_to_the_limit_in_every_window() {
    for (p, window, limit) in [
        (LIVE, 1_000, LIVE.burst_per_second),
        (SANDBOX, 1_000, SANDBOX.burst_per_second),
        (
            Policy {
                burst_per_second: 1_000,
                ..LIVE
            },
            60_000,
            LIVE.sustained_per_minute,
        ),
        (
            Policy {
                burst_per_second: 1_000,
                ..SANDBOX
            },
            60_000,
            SANDBOX.sustained_per_minute,
        ),
    ] {
        for factor in [2.0, 10.0] {
            let (clock, l) = limiter_at(0);
            let per_sec = factor * f64::from(limit) * 1000.0 / window as f64;
            let secs = 10 * window / 1000;
            let (_, admitted) = steady(&l, &clock, p, per_sec, secs);
            let max = max_in_any_window(&admitted, window);
            assert!(
                max <= limit as usize,
                "{p:?} ×{factor}: {max} in one window"
            );
            // Held to the limit, not starved far below it.
            let windows = (secs * 1000 / window) as f64;
            assert!(
                admitted.len() as f64 >= 0.9 * (windows - 1.0) * f64::from(limit),
                "{p:?} ×{factor}: {}",
                admitted.len()
            );
        }
    }
}

/// Eight threads offer requests in lock-step on one workspace; the clock moves only between
/// steps, so each admission's time is known exactly.
fn overload_from_threads(
    p: Policy,
    window: Millis,
    limit: u32,
    factor: f64,
) -> (Vec<Millis>, Vec<Millis>) {
    const THREADS: usize = 8;
    const PER_THREAD_PER_STEP: usize = 4;
    let offered_per_step = (THREADS * PER_THREAD_PER_STEP) as f64;
    let step_ms = (offered_per_step * window as f64 / (factor * f64::from(limit))).max(1.0) as u64;
    let steps = (12 * window / step_ms) as usize;
    let (clock, l) = limiter_at(0);
    let barrier = Barrier::new(THREADS + 1);
    let admitted = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                for _ in 0..steps {
                    barrier.wait();
                    let now = clock.now_ms();
                    for _ in 0..PER_THREAD_PER_STEP {
                        if let Verdict::Admitted(_) = l.check(Subject::Workspace("hot"), p) {
                            admitted.lock().unwrap().push(now);
                        }
                    }
                    barrier.wait();
                }
            });
        }
        for step in 0..steps {
            clock.set(step as u64 * step_ms);
            barrier.wait();
            barrier.wait();
        }
    });
    let mut admitted = admitted.into_inner().unwrap();
    admitted.sort_unstable();
    let offered = (0..steps)
        .flat_map(|step| std::iter::repeat_n(step as u64 * step_ms, THREADS * PER_THREAD_PER_STEP))
        .collect();
    (offered, admitted)
}

#[test]
fn overload_from_many_threads_at_once_is_held_to_the_limit() {
    for factor in [2.0, 10.0] {
        for (p, window, limit) in [
            (LIVE, 1_000, LIVE.burst_per_second),
            (
                Policy {
                    burst_per_second: 100_000,
                    ..LIVE
                },
                60_000,
                LIVE.sustained_per_minute,
            ),
            (SANDBOX, 1_000, SANDBOX.burst_per_second),
        ] {
            let (offered, admitted) = overload_from_threads(p, window, limit, factor);
            let max = max_in_any_window(&admitted, window);
            assert!(
                max <= limit as usize,
                "{p:?} ×{factor}: {max} admitted in one window"
            );
            let exact = window::tests::exact_admissions(&offered, limit, window);
            assert!(
                admitted.len() as f64 >= 0.6 * exact as f64,
                "{p:?} ×{factor}: {} of {exact}",
                admitted.len()
            );
        }
    }
}

#[test]
fn a_hundred_thousand_workspaces_under_their_limits_are_never_throttled() {
    let (clock, l) = limiter_at(0);
    let ids: Vec<String> = (0..100_000).map(|i| format!("ws_{i}")).collect();
    // Each workspace sends 4 requests a second (under the sandbox's 5/s) for 20 seconds,
    // interleaved with all the others: 80 per workspace, under 100/min.
    for tick in 0..80u64 {
        for (i, id) in ids.iter().enumerate() {
            clock.set(tick * 250 + (i as u64 % 250));
            match l.check(Subject::Workspace(id), SANDBOX) {
                Verdict::Admitted(_) => {}
                v => panic!("{id} throttled at tick {tick}: {v:?}"),
            }
        }
    }
    assert_eq!(l.active(), 100_000);
    // Memory follows active workspaces: once all are idle, eviction frees every one.
    clock.advance(30_000);
    assert_eq!(
        l.evict_idle(),
        0,
        "state was evicted while still in the minute window"
    );
    clock.advance(61_000);
    assert_eq!(l.evict_idle(), 100_000);
    assert_eq!(l.active(), 0);
}

#[test]
fn retry_after_is_when_a_request_is_admitted_again() {
    for p in [SANDBOX, LIVE] {
        let (clock, l) = limiter_at(10_000);
        let retry = loop {
            match l.check(Subject::Workspace("ws"), p) {
                Verdict::Admitted(_) => clock.advance(1),
                Verdict::Limited {
                    retry_after_secs,
                    limit,
                    ..
                } => {
                    assert_eq!(limit, LimitName::Burst);
                    break retry_after_secs;
                }
                other => panic!("a local limiter never answers {other:?}"),
            }
        };
        assert!(retry >= 1);
        clock.advance(Millis::from(retry) * 1000 - 1);
        assert!(matches!(
            l.check(Subject::Workspace("ws"), p),
            Verdict::Admitted(_) | Verdict::Limited { .. }
        ));
        clock.advance(1);
        assert!(
            matches!(l.check(Subject::Workspace("ws"), p), Verdict::Admitted(_)),
            "{p:?}"
        );
    }
}

#[test]
fn sustained_limit_names_itself_and_its_wait() {
    let p = Policy {
        burst_per_second: 1_000,
        sustained_per_minute: 100,
    };
    let (clock, l) = limiter_at(0);
    for i in 0..100 {
        clock.set(i * 100);
        assert!(matches!(
            l.check(Subject::Workspace("ws"), p),
            Verdict::Admitted(_)
        ));
    }
    clock.set(20_000);
    let Verdict::Limited {
        limit,
        retry_after_secs,
        usage,
    } = l.check(Subject::Workspace("ws"), p)
    else {
        panic!("101st request in a minute admitted");
    };
    assert_eq!(limit, LimitName::Sustained);
    assert_eq!(usage.sustained.remaining, 0);
    // The first request (t=0, bucket 0) leaves the 61-bucket ring at 61 s.
    assert_eq!(retry_after_secs, 41);
    clock.set(61_000);
    assert!(matches!(
        l.check(Subject::Workspace("ws"), p),
        Verdict::Admitted(_)
    ));
}

#[test]
fn remaining_counts_down_and_names_the_closest_limit() {
    let (_clock, l) = limiter_at(0);
    for expected in (0..5).rev() {
        let Verdict::Admitted(u) = l.check(Subject::Workspace("ws"), SANDBOX) else {
            panic!()
        };
        let (name, s) = u.binding();
        assert_eq!(
            (name, s.remaining, s.limit),
            (LimitName::Burst, expected, 5)
        );
        assert_eq!(u.sustained.remaining, 95 + expected);
    }
    // A workspace near its sustained limit: that one binds.
    let p = Policy {
        burst_per_second: 50,
        sustained_per_minute: 3,
    };
    let Verdict::Admitted(u) = l.check(Subject::Workspace("other"), p) else {
        panic!()
    };
    assert_eq!(u.binding().0, LimitName::Sustained);
}

#[test]
fn a_changed_policy_applies_to_existing_state_at_once() {
    let (_clock, l) = limiter_at(0);
    for _ in 0..5 {
        assert!(matches!(
            l.check(Subject::Workspace("ws"), SANDBOX),
            Verdict::Admitted(_)
        ));
    }
    assert!(matches!(
        l.check(Subject::Workspace("ws"), SANDBOX),
        Verdict::Limited { .. }
    ));
    let raised = Policy {
        burst_per_second: 8,
        ..SANDBOX
    };
    for _ in 0..3 {
        assert!(matches!(
            l.check(Subject::Workspace("ws"), raised),
            Verdict::Admitted(_)
        ));
    }
    assert!(matches!(
        l.check(Subject::Workspace("ws"), raised),
        Verdict::Limited { .. }
    ));
}

#[test]
fn internal_keys_and_workspaces_are_counted_apart() {
    let (_clock, l) = limiter_at(0);
    for _ in 0..5 {
        assert!(matches!(
            l.check(Subject::Workspace("same"), SANDBOX),
            Verdict::Admitted(_)
        ));
    }
    assert!(matches!(
        l.check(Subject::InternalKey("same"), SANDBOX),
        Verdict::Admitted(_)
    ));
}

/// What a request through a workspace's cache reports as used from the burst limit.
fn used_through(l: &Limiter, key: &SubjectKey, cache: &StateCache) -> u32 {
    match l.check(Subject::CachedWorkspace(key, cache), SANDBOX) {
        Verdict::Admitted(u) => SANDBOX.burst_per_second - u.burst.remaining,
        v => panic!("{v:?}"),
    }
}

#[test]
fn a_cached_state_is_the_one_in_the_map() {
    let (_clock, l) = limiter_at(0);
    let (key, cache) = (SubjectKey::new("ws"), StateCache::default());
    assert_eq!(used_through(&l, &key, &cache), 1);
    assert!(format!("{cache:?}").contains("set"));
    assert!(matches!(
        l.check(Subject::Workspace("ws"), SANDBOX),
        Verdict::Admitted(_)
    ));
    assert_eq!(used_through(&l, &key, &cache), 3);
    // A second cache (the same workspace in a newer snapshot) finds the same state.
    assert_eq!(used_through(&l, &key, &StateCache::default()), 4);
    assert_eq!(l.active(), 1);
}

#[test]
fn an_evicted_state_is_never_counted_through_a_cache() {
    let (clock, l) = limiter_at(0);
    let (key, cache) = (SubjectKey::new("ws"), StateCache::default());
    assert_eq!(used_through(&l, &key, &cache), 1);
    clock.advance(2 * MINUTE_MS);
    assert_eq!(l.evict_idle(), 1);
    // The cache still holds the evicted state: the request must go to the map and make a new
    // one there, or the two would count apart and a workspace could double its limits.
    assert_eq!(used_through(&l, &key, &cache), 1);
    assert_eq!(l.active(), 1);
    assert!(matches!(
        l.check(Subject::Workspace("ws"), SANDBOX),
        Verdict::Admitted(_)
    ));
    assert_eq!(used_through(&l, &key, &cache), 3);
}

#[test]
fn a_cache_lets_go_of_an_evicted_state_and_keeps_a_live_one() {
    let (clock, l) = limiter_at(0);
    let (key, cache) = (SubjectKey::new("ws"), StateCache::default());
    assert_eq!(used_through(&l, &key, &cache), 1);
    assert!(!cache.forget_if_evicted(), "a live state was dropped");
    assert!(format!("{cache:?}").contains("set"));
    clock.advance(2 * MINUTE_MS);
    assert_eq!(l.evict_idle(), 1);
    assert!(cache.forget_if_evicted());
    assert!(format!("{cache:?}").contains("empty"));
    assert!(!cache.forget_if_evicted());
    assert_eq!(used_through(&l, &key, &cache), 1);
}

#[test]
fn a_cache_is_trusted_only_by_the_limiter_that_filled_it() {
    let (_clock, first) = limiter_at(0);
    let (_clock, second) = limiter_at(0);
    let (key, cache) = (SubjectKey::new("ws"), StateCache::default());
    assert_eq!(used_through(&first, &key, &cache), 1);
    assert_eq!(used_through(&second, &key, &cache), 1);
    assert_eq!(used_through(&first, &key, &cache), 2);
}

#[test]
fn requests_in_flight_are_capped_exactly_and_given_back_when_done() {
    let (_clock, l) = limiter_at(0);
    let (key, cache) = (SubjectKey::new("ws"), StateCache::default());
    let cached = Subject::CachedWorkspace(&key, &cache);
    let two = NonZeroU32::new(2).unwrap();
    assert!(matches!(l.check(cached, LIVE), Verdict::Admitted(_)));
    let first = l.enter(cached, two).unwrap();
    // Through the map, without the cache: the same count.
    let second = l.enter(Subject::Workspace("ws"), two).unwrap();
    assert!(l.enter(cached, two).is_none());
    // Another workspace, and an internal key of the same name, count apart.
    let others = [
        l.enter(Subject::Workspace("other"), two),
        l.enter(Subject::InternalKey("ws"), two),
    ];
    assert!(others.iter().all(Option::is_some));
    drop(first);
    let third = l.enter(cached, two).unwrap();
    assert!(l.enter(cached, two).is_none(), "a refusal holds nothing");
    drop((second, third));
    let again = [l.enter(cached, two), l.enter(cached, two)];
    assert!(again.iter().all(Option::is_some));
}

/// A long request (a slow upstream, a WebSocket) outlives its workspace's idle minute: its
/// state, and so its place in the count, must outlive the eviction pass.
#[test]
fn a_state_with_requests_in_flight_is_not_evicted() {
    let (clock, l) = limiter_at(0);
    let (key, cache) = (SubjectKey::new("ws"), StateCache::default());
    let cached = Subject::CachedWorkspace(&key, &cache);
    let one = NonZeroU32::new(1).unwrap();
    assert!(matches!(l.check(cached, LIVE), Verdict::Admitted(_)));
    let held = l.enter(cached, one).unwrap();
    clock.advance(2 * MINUTE_MS);
    assert_eq!(l.evict_idle(), 0);
    assert!(matches!(l.check(cached, LIVE), Verdict::Admitted(_)));
    assert!(l.enter(cached, one).is_none());
    drop(held);
    clock.advance(2 * MINUTE_MS);
    assert_eq!(l.evict_idle(), 1);
}

#[test]
fn threads_racing_at_the_cap_never_hold_more_than_it() {
    let (_clock, l) = limiter_at(0);
    let cap = NonZeroU32::new(3).unwrap();
    let held = std::sync::atomic::AtomicU32::new(0);
    let most = std::sync::atomic::AtomicU32::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..20_000 {
                    if let Some(place) = l.enter(Subject::Workspace("ws"), cap) {
                        let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        held.fetch_sub(1, Ordering::SeqCst);
                        drop(place);
                    }
                }
            });
        }
    });
    assert!(most.load(Ordering::SeqCst) <= 3);
    // Everything was given back.
    let all: Vec<_> = (0..3)
        .map(|_| l.enter(Subject::Workspace("ws"), cap))
        .collect();
    assert!(all.iter().all(Option::is_some));
}

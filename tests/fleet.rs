//! Fleet-wide limits (`limits.global`): three real keygate processes on one keys file, a real
//! `redis-server`, and clients that count admissions by their own clocks.

mod common;

use common::http::{Connection, Echo, Request};
use common::*;
use keygate::limits::OnOutage;
use keygate_test_support::{Redis, RedisCluster};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn fleet(url: String, on_outage: OnOutage, local_share: f64) -> GlobalLimitsFile {
    GlobalLimitsFile {
        redis: RedisFile {
            url,
            ..RedisFile::default()
        },
        on_outage: Some(on_outage),
        local_share: Some(local_share),
    }
}

fn start(up: &Echo, keys: &Keys, global: GlobalLimitsFile) -> Keygate {
    Keygate::start(Setup::new(up, keys).config(|c| {
        c.limits.enabled = Some(true);
        c.limits.global = Some(global);
    }))
}

fn secret_of(workspace: &str) -> String {
    secret("live", &workspace.replace('_', ""))
}

/// One workspace per `(id, burst, sustained)`, each with one legacy key.
fn keys_for(workspaces: &[(&str, u32, u32)]) -> Keys {
    let mut keys = Keys::new(1);
    for &(id, burst, sustained) in workspaces {
        keys = keys
            .workspace_with_limits(
                id,
                WorkspaceKind::Live,
                Some(LimitsDoc {
                    burst_per_second: Some(burst),
                    sustained_per_minute: Some(sustained),
                    concurrent_requests: None,
                }),
            )
            .key(&format!("key_{id}"), &secret_of(id), Some(id), None);
    }
    keys
}

/// One request as the client saw it: when it was sent (ms since the run began), its status and
/// how long it took.
#[derive(Debug, Clone, Copy)]
struct Sample {
    sent_ms: f64,
    status: u16,
    latency: Duration,
}

/// Sends `GET /v1/me` with `secret` to `addr` at the rates of `phases` (`(until, per second)`),
/// on one kept-alive connection, each phase's slots shifted by `offset`. A slot missed by more
/// than 20 ms is skipped rather than sent late, so a stalled thread never bursts to catch up.
fn pace(
    addr: SocketAddr,
    secret: String,
    phases: Phases,
    offset: Duration,
    t0: Instant,
) -> Vec<Sample> {
    let auth = bearer(&secret);
    let mut samples = Vec::new();
    let mut conn = Connection::open(addr).ok();
    let mut phase_start = Duration::ZERO;
    for (until, rate) in phases {
        if rate > 0.0 {
            let gap = Duration::from_secs_f64(1.0 / rate);
            let mut slot = phase_start + offset;
            while slot < until {
                let now = t0.elapsed();
                if now < slot {
                    std::thread::sleep(slot - now);
                }
                if t0.elapsed() <= slot + Duration::from_millis(20) {
                    let sent = t0.elapsed();
                    let req = Request::get("/v1/me").header("Authorization", &auth);
                    let status = match conn.as_mut().map(|c| c.send(&req)) {
                        Some(Ok(r)) => r.status,
                        _ => {
                            conn = Connection::open(addr).ok();
                            0
                        }
                    };
                    samples.push(Sample {
                        sent_ms: sent.as_secs_f64() * 1000.0,
                        status,
                        latency: t0.elapsed() - sent,
                    });
                }
                slot += gap;
            }
        }
        phase_start = until;
    }
    samples
}

/// The most admissions any window of `window_ms` certainly holds: an admission happened at some
/// moment between its request's send and its response's arrival, so it is certainly inside
/// `[a, a + window)` when it was sent at or after `a` and answered before `a + window`. This is
/// the client's proof of a violation, which queueing on a loaded machine cannot fake.
fn most_certainly_in_a_window(samples: &[Sample], window_ms: f64) -> usize {
    let mut admitted: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.status == 200)
        .map(|s| (s.sent_ms, s.sent_ms + s.latency.as_secs_f64() * 1000.0))
        .collect();
    admitted.sort_by(|x, y| x.0.total_cmp(&y.0));
    (0..admitted.len())
        .map(|i| {
            let a = admitted[i].0;
            admitted[i..]
                .iter()
                .take_while(|(sent, _)| *sent < a + window_ms)
                .filter(|(_, answered)| *answered < a + window_ms)
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// The most admissions (status 200) any window of `window_ms` holds, by send time: what a
/// client sees, which on a loaded machine can show one more than the limit where queueing
/// moved requests closer together than they were admitted.
fn most_in_any_window(samples: &[Sample], window_ms: f64) -> usize {
    let mut times: Vec<f64> = samples
        .iter()
        .filter(|s| s.status == 200)
        .map(|s| s.sent_ms)
        .collect();
    times.sort_by(f64::total_cmp);
    let (mut best, mut start) = (0, 0);
    for end in 0..times.len() {
        while times[end] - times[start] >= window_ms {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best
}

/// Rates by phase: until when (from the start of the run), how many requests per second.
type Phases = Vec<(Duration, f64)>;

/// One client: which sidecar it talks to, for which workspace, at which rates.
type Load = (usize, &'static str, Phases);

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// Runs every `(sidecar, workspace, phases)` load at once; the samples per workspace. The
/// clients of one workspace are staggered (the k-th of n starts k/n of its own gap late), so
/// that together they are as steady as one client, not n requests at the same instant.
fn run_loads(
    sidecars: &[Keygate],
    loads: Vec<Load>,
) -> std::collections::BTreeMap<&'static str, Vec<Sample>> {
    let t0 = Instant::now() + Duration::from_millis(200);
    let clients_of = |ws: &str| loads.iter().filter(|l| l.1 == ws).count();
    let clients: Vec<usize> = loads.iter().map(|l| clients_of(l.1)).collect();
    let mut seen = std::collections::HashMap::<&str, usize>::new();
    let threads: Vec<_> = loads
        .into_iter()
        .zip(clients)
        .map(|((i, ws, phases), n)| {
            let addr = sidecars[i].addr;
            let secret = secret_of(ws);
            let k = *seen.entry(ws).and_modify(|k| *k += 1).or_insert(0);
            let gap = phases.iter().find(|p| p.1 > 0.0).map_or(0.0, |p| 1.0 / p.1);
            let offset = Duration::from_secs_f64(gap * k as f64 / n as f64);
            (
                ws,
                std::thread::spawn(move || {
                    let now = Instant::now();
                    if now < t0 {
                        std::thread::sleep(t0 - now);
                    }
                    pace(addr, secret, phases, offset, t0)
                }),
            )
        })
        .collect();
    let mut by_workspace = std::collections::BTreeMap::<_, Vec<Sample>>::new();
    for (ws, t) in threads {
        by_workspace
            .entry(ws)
            .or_default()
            .extend(t.join().unwrap());
    }
    by_workspace
}

fn count(samples: &[Sample], status: u16) -> usize {
    samples.iter().filter(|s| s.status == status).count()
}

/// Bars 1 and 2 of the fleet-limits issue, in one run of 70 s: floods at three times both
/// limits, spread evenly and skewed 90/5/5, never exceed either limit fleet-wide in any window;
/// clients at 90% of either limit, spread either way, are never refused.
#[test]
fn limits_hold_across_three_sidecars_and_good_clients_are_never_refused() {
    let redis = Redis::start();
    let up = Echo::start();
    let keys = keys_for(&[
        ("ws_flood_even", 30, 300),
        ("ws_flood_skew", 30, 300),
        ("ws_good_burst", 30, 1_000_000),
        ("ws_good_sust_even", 30, 300),
        ("ws_good_sust_skew", 30, 300),
    ]);
    // The bound is the fleet's while Redis answers within `command_timeout`; past it a request
    // is decided by `on_outage` (tested below). On this 2-core machine, running the other tests
    // beside this one, 50 ms is sometimes too short, so this run allows 250 ms and checks that
    // no request was decided by the outage mode.
    let mut global = fleet(redis.url(), OnOutage::Local, 0.34);
    global.redis.command_timeout = Some(Duration::from_millis(250));
    let sidecars: Vec<Keygate> = (0..3).map(|_| start(&up, &keys, global.clone())).collect();
    // 3x the burst (90/s) until the sustained limit is long used up, then 3x the sustained
    // (15/s) to the end: both limits are pressed for a whole window.
    let flood = |share: f64| vec![(secs(12.0), 90.0 * share), (secs(70.0), 15.0 * share)];
    let even = [1.0 / 3.0; 3];
    let skew = [0.9, 0.05, 0.05];
    let mut loads = Vec::new();
    for i in 0..3 {
        loads.push((i, "ws_flood_even", flood(even[i])));
        loads.push((i, "ws_flood_skew", flood(skew[i])));
        // 90% of the burst limit: 10 s evenly, a second's pause (so that the two phases never
        // overlap into more than 90%), then 10 s skewed.
        loads.push((
            i,
            "ws_good_burst",
            vec![
                (secs(10.0), 27.0 * even[i]),
                (secs(11.0), 0.0),
                (secs(21.0), 27.0 * skew[i]),
            ],
        ));
        // 90% of the sustained limit (270/min) for more than a whole minute.
        loads.push((i, "ws_good_sust_even", vec![(secs(66.0), 4.5 * even[i])]));
        loads.push((i, "ws_good_sust_skew", vec![(secs(66.0), 4.5 * skew[i])]));
    }
    let results = run_loads(&sidecars, loads);
    let mut report = String::new();
    for (ws, samples) in &results {
        report += &format!(
            "{ws}: {} sent, {} admitted, {} refused; most in 1 s {} (by send time {}), most in 60 s {} (by send time {})\n",
            samples.len(),
            count(samples, 200),
            count(samples, 429),
            most_certainly_in_a_window(samples, 1000.0),
            most_in_any_window(samples, 1000.0),
            most_certainly_in_a_window(samples, 60_000.0),
            most_in_any_window(samples, 60_000.0),
        );
    }
    for kg in &sidecars {
        report += &format!(
            "sidecar: decisions lease {} waited {} refused {} outage {}; redis calls ok {:?} error {:?} timeout {:?}\n",
            fleet_decisions(kg, "lease"),
            fleet_decisions(kg, "waited"),
            fleet_decisions(kg, "refused"),
            fleet_decisions(kg, "outage"),
            kg.metric(r#"keygate_fleet_redis_calls_total{result="ok"}"#),
            kg.metric(r#"keygate_fleet_redis_calls_total{result="error"}"#),
            kg.metric(r#"keygate_fleet_redis_calls_total{result="timeout"}"#),
        );
    }
    // For a good client's refusal: what its clients had sent just before it.
    for ws in ["ws_good_burst", "ws_good_sust_even", "ws_good_sust_skew"] {
        let g = &results[ws];
        for r in g.iter().filter(|s| s.status == 429) {
            let admitted_within = |w: f64| {
                g.iter()
                    .filter(|s| {
                        s.status == 200 && s.sent_ms < r.sent_ms && s.sent_ms >= r.sent_ms - w
                    })
                    .count()
            };
            report += &format!(
                "{ws} refused at {:.0} ms, after {} admitted in the 1000 ms before ({} in 1050 ms)\n",
                r.sent_ms,
                admitted_within(1000.0),
                admitted_within(1050.0)
            );
        }
    }
    eprintln!("{report}");
    for (ws, samples) in &results {
        assert!(
            samples.iter().all(|s| s.status == 200 || s.status == 429),
            "{ws}: a status other than 200 or 429\n{report}"
        );
    }
    for kg in &sidecars {
        assert_eq!(fleet_decisions(kg, "outage"), 0.0, "{report}");
    }
    for ws in ["ws_flood_even", "ws_flood_skew"] {
        let s = &results[ws];
        assert!(most_certainly_in_a_window(s, 1000.0) <= 30, "{report}");
        assert!(most_certainly_in_a_window(s, 60_000.0) <= 300, "{report}");
        // By send time alone, queueing on this 2-core machine can make it look like one more
        // in a second (reported above); over a minute, within the issue's 2%.
        assert!(most_in_any_window(s, 60_000.0) <= 306, "{report}");
        // And the fleet did admit: the sustained limit was used, not refused wholesale.
        assert!(count(s, 200) >= 270, "{report}");
    }
    for ws in ["ws_good_burst", "ws_good_sust_even", "ws_good_sust_skew"] {
        assert_eq!(count(&results[ws], 429), 0, "{ws} was refused\n{report}");
    }
}

fn fleet_decisions(kg: &Keygate, path: &str) -> f64 {
    kg.metric(&format!("keygate_fleet_decisions_total{{path=\"{path}\"}}"))
        .unwrap_or(0.0)
}

/// The Redis calls a sidecar has had answered.
fn redis_calls_answered(kg: &Keygate) -> f64 {
    kg.metric(r#"keygate_fleet_redis_calls_total{result="ok"}"#)
        .unwrap_or(0.0)
}

/// Bar 3: at a steady load under the limit, at least 99% of admissions come from a lease held
/// already, with no wait on Redis.
#[test]
fn under_the_limit_requests_do_not_wait_on_redis() {
    let redis = Redis::start();
    let up = Echo::start();
    let keys = keys_for(&[("ws_busy", 1000, 1_000_000)]);
    let sidecars: Vec<Keygate> = (0..3)
        .map(|_| start(&up, &keys, fleet(redis.url(), OnOutage::Local, 0.34)))
        .collect();
    let loads = (0..3)
        .map(|i| (i, "ws_busy", vec![(secs(6.0), 100.0)]))
        .collect();
    let results = run_loads(&sidecars, loads);
    let samples = &results["ws_busy"];
    assert_eq!(count(samples, 200), samples.len(), "all admitted");
    let lease: f64 = sidecars.iter().map(|k| fleet_decisions(k, "lease")).sum();
    let waited: f64 = sidecars.iter().map(|k| fleet_decisions(k, "waited")).sum();
    eprintln!("lease {lease}, waited {waited}, of {}", samples.len());
    assert!(lease + waited >= samples.len() as f64 * 0.99);
    assert!(
        lease / (lease + waited) >= 0.99,
        "{lease} from leases, {waited} after waiting"
    );
    for kg in &sidecars {
        assert!(kg.metric(r#"keygate_fleet_redis_calls_total{result="ok"}"#) > Some(0.0));
        assert_eq!(kg.metric("keygate_fleet_backend_up"), Some(1.0));
    }
}

/// Far from the limits, a running-low lease is renewed on the worker's next round, in a batch,
/// not by a call of its own: once the leases have grown to the traffic, no request waits.
/// A relaxed lease is sized to 15 s of traffic, but within a quarter of the room left: with a
/// burst limit of 1,500 that is about 300 tokens, 3.5 to 7.5 s at these rates, so the measured
/// run needs renewals.
#[test]
fn far_from_the_limits_leases_are_renewed_before_they_run_out() {
    let redis = Redis::start();
    let up = Echo::start();
    let workspaces = [
        ("ws_a", 40.0),
        ("ws_b", 55.0),
        ("ws_c", 70.0),
        ("ws_d", 85.0),
    ];
    let limits: Vec<(&str, u32, u32)> = workspaces
        .iter()
        .map(|&(ws, _)| (ws, 1_500, 100_000_000))
        .collect();
    let kg = start(
        &up,
        &keys_for(&limits),
        fleet(redis.url(), OnOutage::Local, 0.34),
    );
    let loads = |run: f64| {
        workspaces
            .iter()
            .map(|&(ws, rate)| (0, ws, vec![(secs(run), rate)]))
            .collect()
    };
    run_loads(std::slice::from_ref(&kg), loads(1.5));
    let (lease0, waited0, calls0) = (
        fleet_decisions(&kg, "lease"),
        fleet_decisions(&kg, "waited"),
        redis_calls_answered(&kg),
    );
    let results = run_loads(std::slice::from_ref(&kg), loads(6.0));
    let admitted: usize = results.values().map(|s| count(s, 200)).sum();
    let total: usize = results.values().map(Vec::len).sum();
    assert_eq!(admitted, total, "all admitted");
    let waited = fleet_decisions(&kg, "waited") - waited0;
    let lease = fleet_decisions(&kg, "lease") - lease0;
    let renewals = redis_calls_answered(&kg) - calls0;
    eprintln!("{lease} from leases, {waited} after waiting, of {total}; {renewals} calls");
    assert!(
        renewals >= 4.0,
        "the run renewed no lease: it tests nothing"
    );
    assert_eq!(waited, 0.0, "a lease ran out before its renewal");
    assert_eq!(lease, total as f64);
}

/// The README's sizing: what a workspace at 10% and at 40% of a live workspace's limits (3/s
/// and 12/s of 30/s and 3,000/min) costs a sidecar in Redis calls once its leases have settled.
/// Each runs on its own sidecar, so that each sidecar's call counter is one workspace's.
#[test]
fn a_workspace_well_under_its_limits_costs_its_sidecar_few_calls() {
    let redis = Redis::start();
    let up = Echo::start();
    let keys = keys_for(&[("ws_tenth", 30, 3_000), ("ws_fortieth", 30, 3_000)]);
    let sidecars: Vec<Keygate> = (0..2)
        .map(|_| start(&up, &keys, fleet(redis.url(), OnOutage::Local, 0.34)))
        .collect();
    let loads = |run: f64| {
        vec![
            (0, "ws_tenth", vec![(secs(run), 3.0)]),
            (1, "ws_fortieth", vec![(secs(run), 12.0)]),
        ]
    };
    run_loads(&sidecars, loads(3.0));
    let before: Vec<f64> = sidecars.iter().map(redis_calls_answered).collect();
    let results = run_loads(&sidecars, loads(10.0));
    let per_second: Vec<f64> = sidecars
        .iter()
        .zip(&before)
        .map(|(kg, b)| (redis_calls_answered(kg) - b) / 10.0)
        .collect();
    eprintln!(
        "Redis calls per second: {:.2} at 3 req/s, {:.2} at 12 req/s",
        per_second[0], per_second[1]
    );
    for samples in results.values() {
        assert_eq!(count(samples, 200), samples.len(), "all admitted");
    }
    // Measured: 0.6 and 4.8 (README, sizing). At 10% a lease holds a quarter of the room left,
    // about 2 s of traffic; at 40% the fleet's count (outstanding leases in full) is near half
    // the burst limit: a lease holds about 3 tokens, and once spent goes back with the call
    // that takes the next (7.7 when it made a call of its own).
    assert!(per_second[0] <= 1.0, "{per_second:.2?}");
    assert!(per_second[1] <= 6.5, "{per_second:.2?}");
}

/// The worker's rounds look only at subjects whose time has come: a sidecar holding leases for
/// many quiet workspaces does nothing for them until a lease ends (30 s far from the limits),
/// where it used to look at each of them 20 times a second.
#[test]
fn quiet_workspaces_holding_leases_cost_the_worker_nothing() {
    let redis = Redis::start();
    let up = Echo::start();
    let ids: Vec<String> = (0..200).map(|i| format!("ws_quiet{i}")).collect();
    let limits: Vec<(&str, u32, u32)> = ids.iter().map(|id| (id.as_str(), 30, 3_000)).collect();
    let kg = start(
        &up,
        &keys_for(&limits),
        fleet(redis.url(), OnOutage::Local, 0.34),
    );
    let mut conn = once_connected(std::slice::from_ref(&kg)).remove(0);
    let mut send_each = || {
        for id in &ids {
            let auth = bearer(&secret_of(id));
            let req = Request::get("/v1/me").header("Authorization", &auth);
            assert_eq!(conn.send(&req).unwrap().status, 200, "{id}");
        }
    };
    // The first request's lease (1 s: the fleet's state unknown yet) is spent by the second,
    // whose renewal, far from the limits, brings a 30 s lease.
    send_each();
    send_each();
    let visits = || {
        kg.metric("keygate_fleet_worker_visits_total")
            .unwrap_or(0.0)
    };
    std::thread::sleep(secs(1.0));
    let (visits0, lease0) = (visits(), fleet_decisions(&kg, "lease"));
    std::thread::sleep(secs(2.0));
    let quiet = visits() - visits0;
    eprintln!(
        "{quiet} visits in 2 s, {visits0} before, for {} workspaces holding leases",
        ids.len()
    );
    assert!(
        quiet < ids.len() as f64,
        "{quiet} visits in 2 s to {} quiet workspaces",
        ids.len()
    );
    send_each();
    assert_eq!(
        fleet_decisions(&kg, "lease") - lease0,
        ids.len() as f64,
        "every workspace kept its lease, untouched by the rounds"
    );
}

/// Waits (3 s at most) for each sidecar to reach Redis; then a client connection to each.
fn once_connected(sidecars: &[Keygate]) -> Vec<Connection> {
    for kg in sidecars {
        assert!(within(secs(3.0), || fleet_state(kg) == "connected").is_some());
    }
    sidecars
        .iter()
        .map(|k| Connection::open(k.addr).unwrap())
        .collect()
}

/// Sends `n` requests for `workspace`, one sidecar's connection after the other's: how many
/// were admitted. Every other answer must be a refusal by Redis's count, not the outage mode.
fn admitted_alternating(conns: &mut [Connection], workspace: &str, n: usize) -> usize {
    let auth = bearer(&secret_of(workspace));
    let mut admitted = 0;
    for i in 0..n {
        let req = Request::get("/v1/me").header("Authorization", &auth);
        let r = conns[i % conns.len()].send(&req).unwrap();
        match r.status {
            200 => admitted += 1,
            429 => assert!(
                !r.text().contains("limits_unavailable"),
                "{workspace}: Redis did not answer: {}",
                r.text()
            ),
            other => panic!("{workspace}: {other} {}", r.text()),
        }
    }
    admitted
}

/// With `cluster: true`, each workspace's script call goes to the shard that holds its hash
/// tag: a workspace's limit holds across two sidecars whichever of three primaries keeps it,
/// and no call fails or falls to the outage mode.
#[test]
fn on_a_redis_cluster_each_workspace_is_limited_on_its_own_shard() {
    let cluster = RedisCluster::start();
    let up = Echo::start();
    let workspaces: Vec<String> = (0..9).map(|i| format!("ws_shard{i}")).collect();
    let limits: Vec<(&str, u32, u32)> = workspaces.iter().map(|w| (w.as_str(), 10, 10)).collect();
    let keys = keys_for(&limits);
    let sidecars: Vec<Keygate> = (0..2)
        .map(|_| {
            let mut global = fleet(cluster.url(), OnOutage::Deny, 0.5);
            global.redis.cluster = Some(true);
            start(&up, &keys, global)
        })
        .collect();
    // Requests before the first connection is made are the outage mode's (tested elsewhere).
    let mut conns = once_connected(&sidecars);
    for ws in &workspaces {
        // 30 requests, alternating sidecars: at most 10 a minute may pass, fleet-wide.
        let admitted = admitted_alternating(&mut conns, ws, 30);
        assert_eq!(admitted, 10, "{ws}: the fleet admits its limit, no more");
    }
    for kg in &sidecars {
        assert_eq!(fleet_decisions(kg, "outage"), 0.0);
        assert_eq!(
            kg.metric(r#"keygate_fleet_redis_calls_total{result="error"}"#),
            Some(0.0)
        );
        assert_eq!(kg.metric("keygate_fleet_backend_up"), Some(1.0));
    }
    // The workspaces' keys are spread over every shard, each workspace's on one.
    for node in &cluster.nodes {
        let keys = node.cli(&["--scan", "--pattern", "keygate:*"]);
        assert!(
            keys.lines().count() >= 3,
            "a shard with no workspace: {keys:?}"
        );
    }
}

/// `redis.nodes`: with `url`'s node not answering (here a port nothing listens on), keygate
/// reaches the cluster through the other nodes given, and holds a workspace to its limit across
/// two sidecars. With `url` alone it stays degraded, and says so.
#[test]
fn a_cluster_is_reached_through_the_other_nodes_given_when_urls_node_is_down() {
    let cluster = RedisCluster::start();
    let up = Echo::start();
    let keys = keys_for(&[("ws_nodes", 10, 10)]);
    let down = format!("redis://127.0.0.1:{}/0", common::http::free_port());
    let sidecar = |nodes: Option<Vec<String>>| {
        let mut global = fleet(down.clone(), OnOutage::Deny, 0.5);
        global.redis.cluster = Some(true);
        global.redis.nodes = nodes;
        start(&up, &keys, global)
    };
    let others: Vec<String> = cluster.nodes[1..].iter().map(|n| n.url()).collect();
    let sidecars: Vec<Keygate> = (0..2).map(|_| sidecar(Some(others.clone()))).collect();
    let alone = sidecar(None);
    let mut conns = once_connected(&sidecars);
    // 30 requests, alternating sidecars: at most 10 a minute may pass, fleet-wide.
    let admitted = admitted_alternating(&mut conns, "ws_nodes", 30);
    assert_eq!(admitted, 10, "the fleet admits its limit, no more");
    // `url` alone is no way in: degraded, and on_outage (deny) decides.
    let r = alone.get_with_key("/v1/me", &secret_of("ws_nodes"));
    assert_eq!(r.status, 429);
    assert!(r.text().contains("limits_unavailable"), "{}", r.text());
    assert_eq!(fleet_state(&alone), "degraded");
}

/// One primary of a Redis Cluster SIGKILLed: its shard's workspaces are decided by `on_outage`
/// (here `allow`, so that each such decision shows as a 200 the limit would have refused), each
/// request waiting at most `command_timeout`; the other shards' workspaces stay held exactly,
/// and the backend stays up. The node back (empty, as after a crash), its workspaces are held
/// again within 2 s. Run well inside the cluster's node timeout (15 s): past it, a cluster that
/// requires full coverage stops answering for every shard (README).
#[test]
fn a_cluster_shard_down_affects_only_its_own_workspaces() {
    let mut cluster = RedisCluster::start();
    let up = Echo::start();
    let workspaces: Vec<String> = (0..9).map(|i| format!("ws_shard{i}")).collect();
    let limits: Vec<(&str, u32, u32)> =
        workspaces.iter().map(|w| (w.as_str(), 10, 1_000)).collect();
    let keys = keys_for(&limits);
    let mut global = fleet(cluster.url(), OnOutage::Allow, 1.0);
    global.redis.cluster = Some(true);
    let kg = start(&up, &keys, global);
    assert!(within(secs(3.0), || fleet_state(&kg) == "connected").is_some());
    let mut conn = Connection::open(kg.addr).unwrap();
    // 20 requests at once for `ws`: how many were admitted, and the slowest.
    let mut burst = |ws: &str| {
        let auth = bearer(&secret_of(ws));
        let (mut admitted, mut slowest) = (0, Duration::ZERO);
        for _ in 0..20 {
            let sent = Instant::now();
            let r = conn
                .send(&Request::get("/v1/me").header("Authorization", &auth))
                .unwrap();
            slowest = slowest.max(sent.elapsed());
            match r.status {
                200 => admitted += 1,
                429 => {}
                other => panic!("{ws}: {other} {}", r.text()),
            }
        }
        (admitted, slowest)
    };
    for ws in &workspaces {
        assert_eq!(burst(ws).0, 10, "{ws}: held before the kill");
    }
    // Which workspaces the node to kill holds (not the one the url names).
    let victim = 1;
    let held = cluster.nodes[victim].cli(&["--scan", "--pattern", "keygate:*"]);
    let (lost, kept): (Vec<&String>, Vec<&String>) = workspaces
        .iter()
        .partition(|ws| held.contains(&format!("{{ws:{ws}}}")));
    assert!(
        !lost.is_empty() && !kept.is_empty(),
        "the node to kill holds {lost:?}"
    );
    cluster.nodes[victim].kill();
    // Past the burst window of the requests above.
    std::thread::sleep(Duration::from_millis(1_100));
    for ws in &kept {
        assert_eq!(burst(ws).0, 10, "{ws}: its shard is up: held exactly");
    }
    for ws in &lost {
        let (admitted, slowest) = burst(ws);
        assert_eq!(admitted, 20, "{ws}: its shard is down: on_outage (allow)");
        assert!(
            slowest < Duration::from_millis(50 + 150),
            "{ws}: a request waited {slowest:?}, past command_timeout (50 ms)"
        );
    }
    assert!(fleet_decisions(&kg, "outage") >= 10.0 * lost.len() as f64);
    assert_eq!(kg.metric("keygate_fleet_backend_up"), Some(1.0));
    assert_eq!(fleet_state(&kg), "connected");

    cluster.nodes[victim].restart();
    std::thread::sleep(Duration::from_millis(2_000));
    for ws in &workspaces {
        assert_eq!(burst(ws).0, 10, "{ws}: held again once its shard is back");
    }
}

fn fleet_state(kg: &Keygate) -> String {
    kg.admin_get("/status").json()["limiter"]["fleet"]["state"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Bar 4: Redis SIGKILLed under load, then back, then restarted empty.
#[test]
fn a_redis_outage_falls_back_to_the_local_share_and_recovers() {
    let mut redis = Redis::start();
    let up = Echo::start();
    let keys = keys_for(&[("ws_outage", 20, 1_000_000)]);
    let kg = Arc::new(start(&up, &keys, fleet(redis.url(), OnOutage::Local, 0.5)));
    // 40/s, twice the burst limit, for 14 s, from two threads.
    let load = {
        let kg = kg.clone();
        std::thread::spawn(move || {
            run_loads(
                std::slice::from_ref(&*kg),
                vec![
                    (0, "ws_outage", vec![(secs(14.0), 20.0)]),
                    (0, "ws_outage", vec![(secs(14.0), 20.0)]),
                ],
            )
        })
    };
    let t0 = Instant::now();
    std::thread::sleep(secs(3.2));
    redis.kill();
    let killed = t0.elapsed();
    let degraded = within(secs(1.0), || fleet_state(&kg) == "degraded");
    assert!(degraded.is_some(), "not degraded within 1 s of the kill");
    std::thread::sleep(secs(6.2).saturating_sub(t0.elapsed()));
    redis.restart();
    let restarted = t0.elapsed();
    let back = within(secs(2.0), || fleet_state(&kg) == "connected");
    assert!(back.is_some(), "fleet limits did not resume within 2 s");
    let outage_decisions = fleet_decisions(&kg, "outage");
    assert!(outage_decisions > 0.0);
    std::thread::sleep(secs(10.2).saturating_sub(t0.elapsed()));
    // Restarted empty mid-window: Redis has forgotten the window.
    redis.restart();
    let emptied = t0.elapsed();
    let samples = load.join().unwrap().remove("ws_outage").unwrap();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0 - 200.0;
    let between = |from: f64, to: f64| -> Vec<Sample> {
        samples
            .iter()
            .copied()
            .filter(|s| s.sent_ms >= from && s.sent_ms < to)
            .collect()
    };
    let report = format!(
        "killed at {:.0} ms, restarted at {:.0} ms, emptied at {:.0} ms; {} sent, {} admitted, \
         {} refused; slowest {:?}",
        ms(killed),
        ms(restarted),
        ms(emptied),
        samples.len(),
        count(&samples, 200),
        count(&samples, 429),
        samples.iter().map(|s| s.latency).max()
    );
    eprintln!("{report}");
    // No 5xx, no connection failure, and no request held longer than the command timeout
    // (50 ms) plus what a loaded 2-core machine adds to any request.
    assert!(
        samples.iter().all(|s| s.status == 200 || s.status == 429),
        "{report}"
    );
    assert!(
        samples
            .iter()
            .all(|s| s.latency < Duration::from_millis(250)),
        "{report}"
    );
    // Before the kill: the fleet's limit.
    assert!(
        most_certainly_in_a_window(&between(0.0, ms(killed)), 1000.0) <= 20,
        "{report}"
    );
    // A second into the outage, leases have run out and the local share (10/s) holds.
    let outage = between(ms(killed) + 1000.0, ms(restarted));
    assert!(
        most_certainly_in_a_window(&outage, 1000.0) <= 10,
        "{report}"
    );
    assert!(
        count(&outage, 200) >= 10,
        "the outage mode admits: {report}"
    );
    // Back: the fleet's limit again, once the local window of the outage has passed.
    let back = between(ms(restarted) + 1000.0, ms(emptied));
    assert!(most_certainly_in_a_window(&back, 1000.0) <= 20, "{report}");
    // Restarted empty (README: the window starts over; the outage between kill and start
    // admits on its own): at most the limit twice, plus the local share, in any second.
    let after = between(ms(emptied) - 1000.0, ms(emptied) + 2000.0);
    assert!(
        most_certainly_in_a_window(&after, 1000.0) <= 2 * 20 + 10,
        "{report}"
    );
    assert!(fleet_decisions(&kg, "lease") + fleet_decisions(&kg, "waited") > 0.0);
}

/// Bar 4's last case and the other outage modes: a keygate started while Redis is unreachable
/// serves, degraded, says so, and connects when Redis appears.
#[test]
fn started_without_redis_keygate_serves_degraded_by_its_outage_mode() {
    let up = Echo::start();
    let keys = keys_for(&[("ws_a", 2, 1000)]);
    let port = common::http::free_port();
    let url = format!("redis://127.0.0.1:{port}/0");

    let local = start(&up, &keys, fleet(url.clone(), OnOutage::Local, 0.5));
    let statuses: Vec<u16> = (0..3)
        .map(|_| local.get_with_key("/v1/me", &secret_of("ws_a")).status)
        .collect();
    // The local share of a burst of 2 is 1.
    assert_eq!(statuses, [200, 429, 429]);
    assert_eq!(fleet_state(&local), "degraded");
    assert_eq!(local.metric("keygate_fleet_backend_up"), Some(0.0));
    assert_eq!(
        local.admin_get("/readyz").status,
        200,
        "degraded is still ready"
    );

    let deny = start(&up, &keys, fleet(url.clone(), OnOutage::Deny, 1.0));
    let r = deny.get_with_key("/v1/me", &secret_of("ws_a"));
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["code"], "limits_unavailable");
    assert_eq!(r.header("retry-after"), Some("1"));

    let allow = start(&up, &keys, fleet(url.clone(), OnOutage::Allow, 1.0));
    for _ in 0..5 {
        assert_eq!(allow.get_with_key("/v1/me", &secret_of("ws_a")).status, 200);
    }

    // Redis appears on that port: the fleet's limits are in force within 2 s.
    let redis = Redis::start_on(port);
    assert!(within(secs(2.0), || fleet_state(&deny) == "connected").is_some());
    assert_eq!(deny.get_with_key("/v1/me", &secret_of("ws_a")).status, 200);
    drop(redis);
}

/// Bar 5: whatever a "Redis" answers, keygate neither panics nor fails a request; it degrades.
#[test]
fn garbage_from_redis_degrades_and_never_fails_a_request() {
    let up = Echo::start();
    let keys = keys_for(&[("ws_a", 100, 10_000)]);
    for garbage in [
        // A status where an array of integers is expected (PING passes).
        &b"+PONG\r\n"[..],
        // The right shape, with negative and huge numbers.
        b"*7\r\n:-1\r\n:99999999999\r\n:0\r\n:0\r\n:0\r\n:0\r\n:0\r\n",
        // Not RESP at all.
        b"\x00\xff\xfe garbage \x01\r\n",
    ] {
        let fake = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = fake.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in fake.incoming() {
                let Ok(mut stream) = stream else { return };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 || stream.write_all(garbage).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let kg = start(
            &up,
            &keys,
            fleet(format!("redis://{addr}/0"), OnOutage::Local, 1.0),
        );
        for _ in 0..20 {
            let r = kg.get_with_key("/v1/me", &secret_of("ws_a"));
            assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(garbage));
        }
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(kg.get_with_key("/v1/me", &secret_of("ws_a")).status, 200);
        assert!(!kg.log().contains("panicked"), "{}", kg.log());
        assert_eq!(fleet_state(&kg), "degraded");
    }
}

/// Redis's password comes from the environment, reaches Redis, and is never printed.
#[test]
fn a_password_protected_redis_is_reached_and_its_password_never_printed() {
    const PASSWORD: &str = "redis-pass-0123456789-secret";
    let redis = Redis::start_with(common::http::free_port(), &["--requirepass", PASSWORD]);
    let up = Echo::start();
    let keys = keys_for(&[("ws_a", 10, 100)]);
    let with_password = |var: &'static str, value: &str| {
        Keygate::start(Setup {
            env: vec![(var, value.to_owned())],
            log_filter: "trace",
            ..Setup::new(&up, &keys).config(|c| {
                c.limits.enabled = Some(true);
                let mut global = fleet(redis.url(), OnOutage::Local, 1.0);
                global.redis.password_env = Some(var.into());
                c.limits.global = Some(global);
            })
        })
    };
    let good = with_password("KEYGATE_REDIS_PASSWORD", PASSWORD);
    assert!(within(secs(2.0), || fleet_state(&good) == "connected").is_some());
    assert_eq!(good.get_with_key("/v1/me", &secret_of("ws_a")).status, 200);
    let wrong = with_password("KEYGATE_REDIS_PASSWORD", "not-the-password-at-all");
    assert_eq!(wrong.get_with_key("/v1/me", &secret_of("ws_a")).status, 200);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(fleet_state(&wrong), "degraded");
    for kg in [&good, &wrong] {
        let seen = format!(
            "{}{}{}",
            kg.log(),
            kg.admin_get("/status").text(),
            kg.metrics()
        );
        assert!(!seen.contains(PASSWORD) && !seen.contains("not-the-password"));
    }
}

/// The lease script itself, run by a real Redis: the running totals it keeps per window follow
/// its buckets as they leave the window, charge unreturned leases at their expiry, and survive a
/// corrupted total. (The three-sidecar test checks the bound end to end; this one pins the
/// bookkeeping that bound rests on.)
#[test]
fn the_lease_scripts_running_totals_follow_the_window() {
    const SCRIPT: &str = include_str!("../src/limits/fleet/lease.lua");
    let redis = Redis::start();
    // granted, burst count, sustained count (the first three numbers of the answer).
    let call = |lease: &str, need: u32, lifetime_ms: u32, release: &[&str]| -> Vec<i64> {
        let (need, lifetime) = (need.to_string(), lifetime_ms.to_string());
        let mut args = vec![
            "EVAL", SCRIPT, "3", "{w}:b", "{w}:s", "{w}:l", "30", "300", lease, &need, &need, "0",
            &lifetime, "3000",
        ];
        args.extend_from_slice(release);
        let out = redis.cli(&args);
        let numbers: Vec<i64> = out.lines().filter_map(|l| l.trim().parse().ok()).collect();
        assert_eq!(numbers.len(), 7, "the script answered {out:?}");
        numbers[..3].to_vec()
    };
    // 10 leased: counted in both windows while outstanding.
    assert_eq!(call("a", 10, 1_000, &[]), [10, 10, 10]);
    // Returned having used 4 just now: 4 charged, 6 free again.
    assert_eq!(call("", 0, 1_000, &["a", "4", "0:4"]), [0, 4, 4]);
    // 5 leased for 100 ms and never returned: charged in full at their expiry.
    assert_eq!(call("b", 5, 100, &[]), [5, 9, 9]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(call("", 0, 1_000, &[]), [0, 9, 9]);
    // A second later, all of it has left the burst window, none of it the sustained one.
    std::thread::sleep(Duration::from_millis(1_100));
    assert_eq!(call("", 0, 1_000, &[]), [0, 0, 9]);
    // A window that is not ours (a stray write, or a key of another type) starts afresh, with
    // no error; with nothing charged to it, it is dropped.
    redis.cli(&["SET", "{w}:s", "garbage"]);
    redis.cli(&["DEL", "{w}:b"]);
    redis.cli(&["HSET", "{w}:b", "t", "1"]);
    assert_eq!(call("c", 2, 1_000, &[]), [2, 2, 2]);
    assert_eq!(redis.cli(&["EXISTS", "{w}:b", "{w}:s"]).trim(), "0");
    // Nor is one of the right length whose end is not a bucket index: far in the future ("a"
    // is 0x61: about 2^535), or not a whole number, half a bucket before now. Read as ours,
    // their counts (0x61616161, or 1,000 each) would leave no room.
    redis.cli(&["SET", "{w}:b", &"a".repeat(172)]);
    assert_eq!(call("", 0, 1_000, &[]), [0, 2, 2]);
    redis.cli(&[
        "EVAL",
        "local t = redis.call('TIME') \
         local b = math.floor((t[1] * 1000 + math.floor(t[2] / 1000)) / 25) - 0.5 \
         local c = {} for i = 1, 41 do c[i] = 1000 end \
         return redis.call('SET', KEYS[1], struct.pack('<d' .. string.rep('I4', 41), b, unpack(c)))",
        "1",
        "{w}:b",
    ]);
    assert_eq!(call("", 0, 1_000, &[]), [0, 2, 2]);
    // Returned, one unused and one used once: only the use stays counted.
    assert_eq!(call("d", 1, 1_000, &[]), [1, 3, 3]);
    assert_eq!(
        call("", 0, 1_000, &["c", "0", "", "d", "1", "0:1"]),
        [0, 1, 1]
    );
    // Runs that place nothing (not "age:count", or negative) fail nothing: what the lease used,
    // no more than it held, is charged now.
    for runs in ["0,2", "garbage", "-5:-3", ":", "1:", "{\"a\":1}"] {
        redis.cli(&["DEL", "{w}:b", "{w}:s"]);
        assert_eq!(call("e", 2, 1_000, &[]), [2, 2, 2], "{runs}");
        assert_eq!(call("", 0, 1_000, &["e", "5", runs]), [0, 2, 2], "{runs}");
    }
    // A run 2 s old lies outside the burst window, inside the sustained one.
    redis.cli(&["DEL", "{w}:b", "{w}:s"]);
    assert_eq!(call("g", 3, 1_000, &[]), [3, 3, 3]);
    assert_eq!(call("", 0, 1_000, &["g", "3", "2000:2,0:1"]), [0, 1, 3]);
    // Each window is one packed string: 8 bytes for where it ends, 4 per bucket.
    assert_eq!(redis.cli(&["STRLEN", "{w}:b"]).trim(), "172");
    assert_eq!(redis.cli(&["STRLEN", "{w}:s"]).trim(), "252");
}

/// A Redis that speaks only TLS, its certificate signed by a CA made in `dir`, with
/// `tls-auth-clients` set to `auth_clients`: the server, its `rediss://` url and the CA's file.
fn redis_over_tls(
    dir: &std::path::Path,
    auth_clients: &str,
) -> (Redis, String, std::path::PathBuf) {
    let (ca, cert, key) = keygate_test_support::tls::make_ca_and_leaf(dir, "IP:127.0.0.1");
    let port = common::http::free_port();
    let path = |p: &std::path::Path| p.display().to_string();
    let redis = Redis::start_with(
        port,
        &[
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &path(&cert),
            "--tls-key-file",
            &path(&key),
            "--tls-ca-cert-file",
            &path(&ca),
            "--tls-auth-clients",
            auth_clients,
        ],
    );
    let url = redis.url().replacen("redis://", "rediss://", 1);
    (redis, url, ca)
}

/// A Redis that asks every client for a certificate (`tls-auth-clients yes`): keygate with
/// `cert_file` and `key_file` is let in and limits through it; without them its handshake is
/// refused and it serves degraded, saying so.
#[test]
fn redis_that_asks_for_a_client_certificate_gets_keygates() {
    let certs = tempfile::tempdir().unwrap();
    let (_redis, url, ca) = redis_over_tls(certs.path(), "yes");
    let (client_cert, client_key) =
        keygate_test_support::tls::sign_leaf(certs.path(), "keygate", "DNS:keygate");
    let up = Echo::start();
    let keys = keys_for(&[("ws_a", 10, 100)]);
    let with_identity = |identity: bool| {
        let mut global = fleet(url.clone(), OnOutage::Local, 1.0);
        global.redis.ca_file = Some(ca.clone());
        if identity {
            global.redis.cert_file = Some(client_cert.clone());
            global.redis.key_file = Some(client_key.clone());
        }
        start(&up, &keys, global)
    };
    let known = with_identity(true);
    assert!(
        within(secs(3.0), || fleet_state(&known) == "connected").is_some(),
        "{}",
        known.log()
    );
    let statuses: Vec<u16> = (0..12)
        .map(|_| known.get_with_key("/v1/me", &secret_of("ws_a")).status)
        .collect();
    // The burst limit of 10, held through Redis.
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        10,
        "{statuses:?}"
    );
    assert!(known.metric(r#"keygate_fleet_redis_calls_total{result="ok"}"#) > Some(0.0));
    assert_eq!(
        known.metric(r#"keygate_fleet_decisions_total{path="outage"}"#),
        Some(0.0)
    );

    let stranger = with_identity(false);
    assert_eq!(
        stranger.get_with_key("/v1/me", &secret_of("ws_a")).status,
        200
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(fleet_state(&stranger), "degraded");
    assert_eq!(stranger.metric("keygate_fleet_backend_up"), Some(0.0));
    // The key stays out of what keygate says about it.
    let key_pem = std::fs::read_to_string(&client_key).unwrap();
    let key_body = key_pem.lines().nth(1).unwrap();
    assert!(!known.log().contains(key_body));
}

/// Redis over TLS (`rediss://`): reached and used with the CA that signs its certificate, and
/// refused without it (the system's roots do not know a private CA), degrading to the outage
/// mode rather than talking to an unverified server.
#[test]
fn redis_over_tls_is_verified_against_its_ca() {
    let certs = tempfile::tempdir().unwrap();
    let (_redis, url, ca) = redis_over_tls(certs.path(), "no");
    let up = Echo::start();
    let keys = keys_for(&[("ws_a", 10, 100)]);
    let with_ca = |ca_file: Option<&std::path::Path>| {
        let mut global = fleet(url.clone(), OnOutage::Local, 1.0);
        global.redis.ca_file = ca_file.map(|p| p.to_path_buf());
        start(&up, &keys, global)
    };
    let trusted = with_ca(Some(&ca));
    assert!(
        within(secs(3.0), || fleet_state(&trusted) == "connected").is_some(),
        "{}",
        trusted.log()
    );
    for _ in 0..3 {
        assert_eq!(
            trusted.get_with_key("/v1/me", &secret_of("ws_a")).status,
            200
        );
    }
    assert!(trusted.metric(r#"keygate_fleet_redis_calls_total{result="ok"}"#) > Some(0.0));
    assert_eq!(trusted.metric("keygate_fleet_backend_up"), Some(1.0));

    let untrusted = with_ca(None);
    assert_eq!(
        untrusted.get_with_key("/v1/me", &secret_of("ws_a")).status,
        200
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(fleet_state(&untrusted), "degraded");
    assert_eq!(untrusted.metric("keygate_fleet_backend_up"), Some(0.0));
}

//! Fleet-wide limits (`limits.global`): a workspace's burst and sustained limits held across
//! every sidecar, through Redis, without a round trip on most requests.
//!
//! # The algorithm: leases of admissions, charged when Redis learns of them
//!
//! Redis keeps, per subject, bucketed windows like the local limiter's (41 buckets of 25 ms for
//! the burst limit, finer than the local 50 ms because leases add their own slack; 61 of 1 s for
//! the sustained one) and the **leases** outstanding. A
//! sidecar takes a lease of `k` admissions in one atomic script call and admits locally against
//! it; when it is done with the lease (used up, idle, or near its end) it returns it and says how
//! many it used, and when, to within 5 ms (as ages: "3 used 120 ms ago"; uses over 1.1 s old,
//! which only the sustained window's 1 s buckets can still hold, to within a second). Redis charges
//! each to the bucket of its last use in that run, which by Redis's clock is never before the use
//! (the age is measured before the call is sent), and charges a lease never returned in full at
//! its expiry. A grant is made only while
//! `admissions in the window + every outstanding lease + k ≤ limit`.
//!
//! **The bound.** Take any window `[a, a + W)` and the last grant `g` whose tokens were used in
//! it, made at `t ≤ a + W`. An admission in `[a, t]` was either returned before `t` (and charged
//! between its use and `t`, so inside the buckets Redis summed at `t`), or its lease was still
//! outstanding at `t` (and counted in full). An admission after `t` comes from a lease granted
//! no later than `t`, so outstanding at `t`, or from `g` itself. So every admission in the window
//! was counted when `g` was granted, and the fleet never admits more than the limit in any
//! window of length W, as the local limiter does on one host. A sidecar stops using a lease at
//! `sent + lifetime` by its own monotonic clock, which is no later than Redis's expiry
//! (`Redis's now + lifetime`, and Redis's now is after the send).
//!
//! Redis keeps each window as one packed string, its buckets in a ring, read and written once a
//! call: no bucket is written out as text, which was most of a call's cost. A charge to a
//! bucket already out of the window is dropped: it lies more than W before Redis's now, so in
//! no window that a grant made now could touch.
//!
//! **What it costs.** Leases are sized to the sidecar's own rate and refilled ahead of need, so
//! a busy workspace costs each sidecar a few Redis calls per second and its requests never
//! wait. Far from both limits (the fleet's count at most half of each) a lease lives 30 s, covers
//! about 15 s of traffic within a quarter of the room left, is kept while idle, and once spent
//! goes back with the call that takes the lease after next (one call per lease); nearer, it
//! lives 1 s, covers about 100 ms, goes back when idle, and once spent goes back with the
//! next call, 150 ms before its end at the latest (again one call per lease). Near the limit, tokens held by one sidecar would refuse
//! another's requests, so a lease beyond what is needed now is granted only while a fifth of the
//! burst limit stays free; past that, a request with no token waits for Redis (one round trip,
//! at most `command_timeout`) and takes exactly one admission. Exactness costs a round trip
//! only at the margin.
//!
//! **Outage.** When Redis does not answer, tokens already leased are still used (Redis counted
//! them), and requests beyond them are decided by `on_outage`: `local` (each sidecar enforces
//! `local_share` of each limit on its own), `allow` (admitted), or `deny` (429
//! `limits_unavailable`). A waiting request never waits past `command_timeout`.

mod worker;

pub use worker::FleetWorker;

use super::window::Standing;
use super::{Clock, Millis, Policy, Slot, Usage};
use crate::config::Secret;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};

/// A lease's lifetime in Redis near a limit. The sidecar stops using one a little earlier (see
/// [`LOCAL_MARGIN_MS`]) and returns it sooner when it goes idle.
pub const LEASE_LIFETIME_MS: Millis = 1_000;
/// A lease's lifetime far from both limits, where tokens parked on a sidecar refuse no one: a
/// workspace whose limits are far above its rate then costs each sidecar one Redis call about
/// every 10 s. Longer would cost little more (an outstanding lease counts in full, so the bound
/// does not depend on it), but a sidecar that dies would hold its tokens back for as long.
pub const RELAXED_LEASE_LIFETIME_MS: Millis = 30_000;
/// How much earlier than `sent + lifetime` a sidecar stops using a lease: slack for the clocks
/// of two processes ticking at slightly different rates.
const LOCAL_MARGIN_MS: Millis = 25;
/// A lease unused for this long is returned, so that idle sidecars hold nothing back.
const IDLE_RETURN_MS: Millis = 150;
/// How much traffic a lease is sized for near a limit...
const HORIZON_MS: f64 = 100.0;
/// ...and far from both limits, within a quarter of the room left (so that leases alone never
/// fill the window): half a relaxed lease's lifetime. A lease is then used up while the next one
/// is, and goes back with the call for the one after, which comes before Redis would charge it
/// in full at its expiry: one call per lease, not one to take it and another to return it.
const RELAXED_HORIZON_MS: f64 = 14_900.0;
// Taken a third before its predecessor runs out, a lease is spent by 4/3 of a horizon after
// its grant, and the call that returns it goes out 2 horizons after (plus up to one 50 ms round
// of the worker, and 50 ms for the call): before its end here.
const _: () = assert!(
    2 * (RELAXED_HORIZON_MS as Millis) + LOCAL_MARGIN_MS + 50 + 50 <= RELAXED_LEASE_LIFETIME_MS
);
/// How long a subject whose exchange brought no answer is decided by `on_outage` without
/// waiting, before one of its requests waits on Redis again: as long as between two attempts to
/// reach a lost Redis.
pub(super) const UNANSWERED_FOR_MS: Millis = 200;
/// A lease this close to its end is replaced ahead of time while the subject is active, so
/// that its requests do not wait for the next.
const RENEW_BEFORE_END_MS: Millis = 150;
/// The same far from the limits. Relaxed leases taken together (at a start, or when traffic
/// comes back after a quiet spell) end together, 30 s later, when every subject still holding
/// tokens renews at once: one call each, in pipelines of 128 at about 150–200 µs of Redis's
/// time per call on a small VM, so a thousand subjects need about 0.2 s. With 150 ms, the load
/// benchmark saw up to 224 requests in 8 s wait on Redis at such a moment; 2 s leaves room for
/// about ten thousand subjects per sidecar, and costs no call: the lease is renewed once either
/// way, and the old one is still used first until its end.
const RELAXED_RENEW_BEFORE_END_MS: Millis = 2_000;
/// Far from the limits, each lease is renewed a little earlier than the last moment by a random
/// share of this (and of a sixth of its tokens, see [`Held::spread`]). Leases taken together by
/// subjects at the same rate (every workspace after a restart, or a benchmark's evenly spread
/// keys) would otherwise run low together, generation after generation: under the load
/// benchmark's even load, 1,000 workspaces made up to 838 calls in one second and 256 in 100 ms,
/// every 14 s (`scripts/lease-waves.sh`); spread, 113 at most in 100 ms, and each wave wider
/// than the last. Their renewals drift apart at no cost in calls: each lease is still renewed
/// once, and returned with the call two leases later, as the horizon's proof above needs (a
/// lease is spent by `(1 + f)` horizons after its grant for a renewal at `f` of its tokens left,
/// and the call that returns it goes out two horizons after its grant whatever `f` is).
const RELAXED_RENEW_SPREAD_MS: Millis = 3_000;
const _: () =
    assert!(RELAXED_RENEW_BEFORE_END_MS + RELAXED_RENEW_SPREAD_MS < RELAXED_LEASE_LIFETIME_MS / 4);

/// What happens to a request with no leased token while Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnOutage {
    /// Each sidecar enforces `local_share` of each limit by itself.
    #[default]
    Local,
    /// Admitted: availability over limits.
    Allow,
    /// Refused with 429 `limits_unavailable`.
    Deny,
}

impl OnOutage {
    pub fn as_str(self) -> &'static str {
        match self {
            OnOutage::Local => "local",
            OnOutage::Allow => "allow",
            OnOutage::Deny => "deny",
        }
    }
}

/// `limits.global`, validated.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// `redis://host:port/db` or `rediss://…` (TLS), without credentials.
    pub url: String,
    pub password: Option<Secret>,
    /// With `rediss://`: the CA certificates (PEM) Redis's certificate must chain to; `None`:
    /// the system's roots.
    pub tls_ca: Option<Vec<u8>>,
    /// With `rediss://`: the certificate and key keygate presents, for a Redis that asks for
    /// one (`tls-auth-clients yes`).
    pub tls_client: Option<TlsClientIdentity>,
    /// `url` is one node of a Redis Cluster.
    pub cluster: bool,
    /// More nodes of that cluster to start from, beside `url`.
    pub nodes: Vec<String>,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub on_outage: OnOutage,
    pub local_share: f64,
}

/// A client certificate and its private key, as PEM. `Debug` shows neither.
#[derive(Clone)]
pub struct TlsClientIdentity {
    pub(super) cert_pem: Vec<u8>,
    pub(super) key_pem: Vec<u8>,
}

impl TlsClientIdentity {
    pub fn new(cert_pem: Vec<u8>, key_pem: Vec<u8>) -> TlsClientIdentity {
        TlsClientIdentity { cert_pem, key_pem }
    }
}

impl std::fmt::Debug for TlsClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClientIdentity").finish_non_exhaustive()
    }
}

impl FleetConfig {
    /// The limits a sidecar enforces alone during an outage in `local` mode.
    pub fn local_policy(&self, p: Policy) -> Policy {
        let share = |limit: u32| ((f64::from(limit) * self.local_share).floor() as u32).max(1);
        Policy {
            burst_per_second: share(p.burst_per_second),
            sustained_per_minute: share(p.sustained_per_minute),
        }
    }
}

/// How a request's fleet-wide decision was made: the `path` label of
/// `keygate_fleet_decisions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionPath {
    /// From a token already leased: no wait.
    Lease,
    /// After waiting for Redis.
    Waited,
    /// Refused: the fleet is at its limit.
    Refused,
    /// By `on_outage`: Redis unreachable, or too slow for this request.
    Outage,
}

impl DecisionPath {
    const ALL: [DecisionPath; 4] = [
        DecisionPath::Lease,
        DecisionPath::Waited,
        DecisionPath::Refused,
        DecisionPath::Outage,
    ];

    fn as_str(self) -> &'static str {
        match self {
            DecisionPath::Lease => "lease",
            DecisionPath::Waited => "waited",
            DecisionPath::Refused => "refused",
            DecisionPath::Outage => "outage",
        }
    }
}

/// What the fleet-wide limits export.
pub struct FleetMetrics {
    pub up: IntGauge,
    calls: [IntCounter; 3],
    pub call_duration: Histogram,
    pub leases: IntCounter,
    pub leased_tokens: IntCounter,
    decisions: [IntCounter; 4],
    /// Subjects the worker's rounds looked at.
    visits: IntCounter,
}

impl FleetMetrics {
    pub fn register(registry: &Registry) -> FleetMetrics {
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let vec = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let up = IntGauge::new(
            "keygate_fleet_backend_up",
            "1 while Redis answers; 0 while fleet-wide limits are degraded to on_outage.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(up.clone()))
            .expect("unique metric");
        let calls = vec(
            "keygate_fleet_redis_calls_total",
            "Redis calls by result: ok, error, timeout.",
            "result",
        );
        let call_duration = Histogram::with_opts(
            HistogramOpts::new(
                "keygate_fleet_redis_call_duration_seconds",
                "Time of one batch of Redis calls.",
            )
            .buckets(prometheus::exponential_buckets(0.000_05, 2.0, 14).expect("valid buckets")),
        )
        .expect("valid metric");
        registry
            .register(Box::new(call_duration.clone()))
            .expect("unique metric");
        let decisions = vec(
            "keygate_fleet_decisions_total",
            "Fleet-limited requests by how they were decided: lease (no wait), waited, refused, outage.",
            "path",
        );
        FleetMetrics {
            up,
            calls: ["ok", "error", "timeout"].map(|r| calls.with_label_values(&[r])),
            call_duration,
            leases: counter(
                "keygate_fleet_leases_total",
                "Leases of admissions granted by Redis.",
            ),
            leased_tokens: counter(
                "keygate_fleet_leased_tokens_total",
                "Admissions granted in leases.",
            ),
            decisions: DecisionPath::ALL.map(|p| decisions.with_label_values(&[p.as_str()])),
            visits: counter(
                "keygate_fleet_worker_visits_total",
                "Subjects the fleet worker's rounds looked at (a lease ending, going idle, due for renewal): it grows with activity, not with the subjects held.",
            ),
        }
    }

    pub fn decided(&self, path: DecisionPath) {
        self.decisions[path as usize].inc();
    }

    fn call(&self, result: CallResult) {
        self.calls[result as usize].inc();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallResult {
    Ok,
    Error,
    Timeout,
}

/// The fleet-wide limits as the request path sees them: whether Redis answers, the queue to the
/// worker that talks to it, and the signal that an exchange has ended.
pub struct Fleet {
    pub config: FleetConfig,
    /// The limiter's clock: leases end by it.
    clock: Arc<dyn Clock>,
    up: AtomicBool,
    /// Needs the worker acts on at once: sending wakes it.
    queue: mpsc::UnboundedSender<Need>,
    /// Renewals far from the limits, which wait for the worker's next round anyway: it takes
    /// them up there, so that they do not wake it (and, on a busy host, take a core from the
    /// proxy's threads) once each. About one a lease, every 10 s or so per busy subject.
    renewals: Mutex<Vec<Need>>,
    exchanged: Notify,
    /// Lease ids: unique per process; the process id and start time make them unique per fleet.
    next_lease: AtomicU64,
    instance: String,
    pub metrics: FleetMetrics,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("up", &self.is_up())
            .field("on_outage", &self.config.on_outage)
            .finish_non_exhaustive()
    }
}

/// A subject whose leases need an exchange with Redis.
struct Need {
    slot: Arc<Slot>,
    /// The subject's Redis key prefix, hash-tagged: `keygate:{ws:<id>}`.
    key: Arc<str>,
    policy: Policy,
}

impl Fleet {
    /// The fleet handle and the worker to run as a background service.
    pub fn new(
        config: FleetConfig,
        clock: Arc<dyn Clock>,
        metrics: FleetMetrics,
    ) -> (Arc<Fleet>, FleetWorker) {
        let (queue, needs) = mpsc::unbounded_channel();
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let fleet = Arc::new(Fleet {
            config,
            clock,
            up: AtomicBool::new(false),
            queue,
            renewals: Mutex::new(Vec::new()),
            exchanged: Notify::new(),
            next_lease: AtomicU64::new(1),
            instance: format!("{}-{started}", std::process::id()),
            metrics,
        });
        fleet.metrics.up.set(0);
        let worker = FleetWorker::new(fleet.clone(), needs);
        (fleet, worker)
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    fn set_up(&self, up: bool) {
        if self.up.swap(up, Ordering::AcqRel) != up {
            self.metrics.up.set(i64::from(up));
            if up {
                tracing::info!("fleet-wide limits: Redis answers; limits are fleet-wide again");
            } else {
                tracing::warn!(
                    on_outage = self.config.on_outage.as_str(),
                    "fleet-wide limits degraded: Redis does not answer"
                );
            }
        }
    }

    fn lease_id(&self) -> String {
        format!(
            "{}-{}",
            self.instance,
            self.next_lease.fetch_add(1, Ordering::Relaxed)
        )
    }
}

/// One lease this sidecar holds.
#[derive(Debug)]
struct Held {
    id: String,
    granted: u32,
    left: u32,
    granted_at: Millis,
    /// When this sidecar stops using it (its own clock).
    until: Millis,
    uses: Uses,
    /// Far from the limits, how much earlier than the last moment this lease is renewed, from 0
    /// (with a third of its tokens left, or 2 s before its end) to 1 (with a half left, or 5 s
    /// before): drawn at its grant, so that leases taken together are not renewed together.
    spread: f64,
}

/// When a lease's tokens were used, in runs of 5 ms: `(last use, count)`. Redis charges each run
/// at its last use (never before any use in it), so the windows it sums see admissions within
/// 5 ms of when they happened, not when the lease came back: a later charge would stretch the
/// window a steady client is measured over, and refuse it below its limit.
#[derive(Debug, Default, Clone)]
pub(super) struct Uses(Vec<(Millis, u32)>);

/// Runs at least this old when a lease goes back lie before the burst window (41 × 25 ms) by the
/// time Redis applies them, so only the sustained window's 1 s buckets can hold them: they go
/// back merged by the second, each group at its last use. A relaxed lease covers about 15 s of
/// traffic and goes back seconds after it is spent, so this turns up to a few hundred runs into
/// about 15, and the script's cost per call with them.
const MERGE_OLDER_THAN_MS: Millis = 1_100;

/// How many runs a lease keeps before it merges its old ones as [`Uses::encode`] would: a busy
/// relaxed lease would otherwise hold a run per 5 ms of its 30 s, 6,000 of them. Merged, at most
/// one per second of the lease plus the last 1.1 s's 220 remain.
const RUNS_BEFORE_MERGING: usize = 512;

impl Uses {
    fn record(&mut self, now: Millis) {
        match self.0.last_mut() {
            Some((last, n)) if *last / 5 == now / 5 => {
                *last = now;
                *n += 1;
            }
            _ => {
                if self.0.len() >= RUNS_BEFORE_MERGING {
                    self.merge_old(now);
                }
                self.0.push((now, 1));
            }
        }
    }

    /// Merges the runs at least `MERGE_OLDER_THAN_MS` old by the second, each group at its last
    /// use. They are older still when the lease goes back, so `encode` sends the same. In place:
    /// this runs on the request path, once per a few hundred runs.
    fn merge_old(&mut self, now: Millis) {
        let runs = &mut self.0;
        let mut kept = 0;
        for i in 0..runs.len() {
            let (at, n) = runs[i];
            let old = now.saturating_sub(at) >= MERGE_OLDER_THAN_MS;
            if kept > 0 && old && runs[kept - 1].0 / 1_000 == at / 1_000 {
                runs[kept - 1] = (at, runs[kept - 1].1 + n);
            } else {
                runs[kept] = (at, n);
                kept += 1;
            }
        }
        runs.truncate(kept);
    }

    /// `age:count,…` with ages in ms before `now`, oldest first, as `lease.lua` reads them.
    pub(super) fn encode(&self, now: Millis) -> String {
        use std::fmt::Write;
        let mut out = String::with_capacity(self.0.len().min(32) * 8);
        let mut emit = |at: Millis, n: u32| {
            if !out.is_empty() {
                out.push(',');
            }
            let _ = write!(out, "{}:{n}", now.saturating_sub(at));
        };
        // The run waiting to be written, which later runs of the same second join while they
        // are old (runs are in time order: once one is recent, so are all after it).
        let mut pending: Option<(Millis, u32)> = None;
        for &(at, n) in &self.0 {
            let old = now.saturating_sub(at) >= MERGE_OLDER_THAN_MS;
            match &mut pending {
                Some((last, count)) if old && *last / 1_000 == at / 1_000 => {
                    *last = at;
                    *count += n;
                }
                _ => {
                    if let Some((last, count)) = pending.replace((at, n)) {
                        emit(last, count);
                    }
                }
            }
        }
        if let Some((last, count)) = pending {
            emit(last, count);
        }
        out
    }
}

/// A lease this sidecar is done with, to return on the next exchange.
#[derive(Debug)]
pub(super) struct Returned {
    pub(super) id: String,
    pub(super) used: u32,
    pub(super) uses: Uses,
}

impl Held {
    fn returned(self) -> Returned {
        Returned {
            id: self.id,
            used: self.granted - self.left,
            uses: self.uses,
        }
    }
}

/// The fleet as Redis last described it to this sidecar, in this sidecar's clock.
#[derive(Debug, Default, Clone, Copy)]
struct FleetView {
    burst: u32,
    sustained: u32,
    burst_retry_at: Millis,
    sustained_retry_at: Millis,
    burst_reset_at: Millis,
    sustained_reset_at: Millis,
}

/// A subject's leases on this sidecar, kept beside its local windows.
#[derive(Debug, Default)]
pub(super) struct LeaseBook {
    held: Vec<Held>,
    /// Leases this sidecar is done with, to return on the next exchange.
    done: Vec<Returned>,
    view: FleetView,
    /// Until when the fleet is known to have no room, even for a waiting request.
    full_until: Millis,
    /// Until when Redis is taken to be out for this subject: its last exchange brought no
    /// answer (a slow call, or its shard of a cluster down) while others may have. Requests
    /// with no token are decided by `on_outage` without waiting until then.
    unanswered_until: Millis,
    /// Requests waiting for the next exchange.
    waiting: u32,
    /// Handed to the worker, not yet prepared: a later need joins it.
    pub(super) queued: bool,
    /// An exchange is on its way: a need that arises now waits for the one after.
    pub(super) in_flight: bool,
    /// Far from the limits, running low: the next round renews the lease, in one batch with
    /// every other subject's, instead of a call of its own now.
    pub(super) renew_due: bool,
    /// Bumped at the end of every exchange, answered or not.
    generation: u64,
    /// Admissions since `rate_since`, and the rate they smooth into: the next lease's size.
    admitted: u32,
    rate_since: Millis,
    rate_per_ms: f64,
    last_take: Millis,
    /// Redis's last answer put the fleet below half of both limits.
    relaxed: bool,
}

/// Which decision of a request this is: fleet-wide limits may make it wait for Redis once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// May wait for Redis.
    First,
    /// After waiting, with Redis's answer in: no token now means no room.
    Answered,
    /// After waiting `command_timeout` in vain: `on_outage` decides.
    TimedOut,
}

/// What taking a token asks of the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refill {
    /// Nothing: tokens enough, or an exchange already coming.
    No,
    /// Running low near the limits: an exchange now.
    Now,
    /// Running low far from them: a renewal on the worker's next round.
    NextRound,
}

/// What a request with no token of its own does next.
pub(super) enum Shortfall {
    /// The fleet is full: refuse, with the fleet's view.
    Full,
    /// Wait for the exchange that will bring tokens (the generation to wait for).
    Wait(u64),
    /// Decide by `on_outage`.
    Outage,
}

impl LeaseBook {
    fn tokens_left(&self) -> u32 {
        self.held.iter().map(|h| h.left).sum()
    }

    /// Retires leases past their time, or idle too long, and spent ones near their end: they
    /// are returned on the next exchange. A spent lease holds nothing back from anyone: Redis
    /// counts its tokens in full while it is out, as it would count its uses once charged, for
    /// they all lie in both windows until its end. So it waits for an exchange that happens
    /// anyway ([`LeaseBook::hand_back_spent`]) rather than making one of its own: one call per
    /// lease, not two. Near the limits it goes back on its own `RENEW_BEFORE_END_MS` before its
    /// end at the latest, so that Redis charges its uses when they happened, not at its expiry.
    fn retire(&mut self, now: Millis) {
        let mut i = 0;
        while i < self.held.len() {
            let h = &self.held[i];
            let idle = !self.relaxed
                && now.saturating_sub(self.last_take.max(h.granted_at)) >= IDLE_RETURN_MS;
            let spent =
                h.left == 0 && !self.relaxed && h.until.saturating_sub(now) <= RENEW_BEFORE_END_MS;
            if h.until <= now || spent || idle {
                let h = self.held.remove(i);
                self.done.push(h.returned());
            } else {
                i += 1;
            }
        }
    }

    /// Moves spent leases to the returns of an exchange that is going out anyway.
    fn hand_back_spent(&mut self) {
        let mut i = 0;
        while i < self.held.len() {
            if self.held[i].left == 0 {
                let h = self.held.remove(i);
                self.done.push(h.returned());
            } else {
                i += 1;
            }
        }
    }

    /// Takes one token, oldest lease first. Returns what the worker should be told: nothing, or
    /// that the tokens are running low. Far from the limits a third of a lease lasts seconds, so
    /// the renewal waits for the worker's next round (at most 50 ms) and goes out in one
    /// pipelined batch with every other subject's: Redis and the worker then wake about 20 times
    /// a second, not once per lease.
    pub(super) fn take(&mut self, now: Millis) -> Option<Refill> {
        self.retire_expired(now);
        let h = self.held.iter_mut().find(|h| h.left > 0)?;
        h.left -= 1;
        h.uses.record(now);
        self.admitted += 1;
        self.last_take = now;
        if self.queued || self.in_flight || !self.running_low(now) {
            return Some(Refill::No);
        }
        if self.relaxed {
            // Told once: the worker's round takes it up.
            let first = !self.renew_due;
            self.renew_due = true;
            return Some(if first { Refill::NextRound } else { Refill::No });
        }
        self.queued = true;
        Some(Refill::Now)
    }

    /// When the worker should next look at this subject if no request calls for it sooner: the
    /// first moment [`LeaseBook::retire`] could act (a lease's end; near the limits, also a spent
    /// lease nearing its end, or idleness), or at once when something is owed or nothing is
    /// held. A request only ever makes these moments later (a take puts idleness off), except
    /// for a renewal, which it signals ([`Refill::NextRound`]).
    pub(super) fn next_visit(&self, now: Millis) -> Millis {
        let owed = self.waiting > 0 || self.renew_due || !self.done.is_empty();
        if owed || self.queued || self.in_flight || self.held.is_empty() {
            return now;
        }
        let retire_at = |h: &Held| {
            if self.relaxed {
                h.until
            } else {
                let idle_at = self.last_take.max(h.granted_at) + IDLE_RETURN_MS;
                idle_at.min(h.until.saturating_sub(RENEW_BEFORE_END_MS))
            }
        };
        self.held
            .iter()
            .map(retire_at)
            .min()
            .unwrap_or(now)
            .max(now)
    }

    /// Refill ahead of need: when a third of the newest lease is left, or it nears its end (far
    /// from the limits, a third to a half, and 2 to 5 s: see [`Held::spread`]).
    fn running_low(&self, now: Millis) -> bool {
        let Some(newest) = self.held.last() else {
            return true;
        };
        // By the lease's own lifetime, not the subject's mode now: a 1 s lease is always within
        // 2 s of its end, and would be renewed on every round.
        let (renew_before, low) = if newest.until.saturating_sub(newest.granted_at)
            > LEASE_LIFETIME_MS
        {
            let spread = newest.spread.clamp(0.0, 1.0);
            (
                RELAXED_RENEW_BEFORE_END_MS + (RELAXED_RENEW_SPREAD_MS as f64 * spread) as Millis,
                // From a third to a half of its tokens.
                (f64::from(newest.granted) * (2.0 + spread) / 6.0) as u32,
            )
        } else {
            (RENEW_BEFORE_END_MS, newest.granted / 3)
        };
        self.tokens_left() <= low || newest.until.saturating_sub(now) <= renew_before
    }

    /// How long without a request before the subject counts as idle: no lease is renewed for
    /// it ahead of need.
    pub(super) fn idle_after(&self) -> Millis {
        if self.relaxed {
            LEASE_LIFETIME_MS
        } else {
            IDLE_RETURN_MS
        }
    }

    /// The lifetime to ask for a new lease.
    pub(super) fn lifetime(&self) -> Millis {
        if self.relaxed {
            RELAXED_LEASE_LIFETIME_MS
        } else {
            LEASE_LIFETIME_MS
        }
    }

    fn retire_expired(&mut self, now: Millis) {
        if self.held.iter().any(|h| h.until <= now) {
            let mut i = 0;
            while i < self.held.len() {
                if self.held[i].until <= now {
                    let h = self.held.remove(i);
                    self.done.push(h.returned());
                } else {
                    i += 1;
                }
            }
        }
    }

    /// A request found no token: what it should do, registering it as waiting when it may.
    pub(super) fn shortfall(
        &mut self,
        now: Millis,
        up: bool,
        attempt: Attempt,
    ) -> (Shortfall, bool) {
        // The exchange a request waited for may have ended without an answer for this subject
        // alone (the others answered, so Redis counts as up): on_outage, never a refusal.
        if !up || attempt == Attempt::TimedOut || now < self.unanswered_until {
            return (Shortfall::Outage, false);
        }
        // Told there is no room a moment ago, or just answered and still without a token (the
        // answer held none for this request): no room.
        if now < self.full_until || attempt == Attempt::Answered {
            return (Shortfall::Full, false);
        }
        self.waiting += 1;
        // An exchange already on its way was sent without this request's need: wait for the next.
        let target = self.generation + if self.in_flight { 2 } else { 1 };
        let start = !self.queued && !self.in_flight;
        self.queued |= start;
        (Shortfall::Wait(target), start)
    }

    /// Where the limits stand as this sidecar knows the fleet: the count Redis reported at the
    /// last exchange (every sidecar's outstanding leases counted as spent), less the tokens this
    /// sidecar still holds.
    pub(super) fn usage(&self, now: Millis, p: Policy) -> Usage {
        let left = self.tokens_left();
        let standing = |limit: u32, count: u32, retry_at: Millis, reset_at: Millis| Standing {
            limit,
            remaining: limit.saturating_sub(count).saturating_add(left).min(limit),
            reset_ms: reset_at.saturating_sub(now),
            retry_ms: retry_at.saturating_sub(now),
        };
        let v = &self.view;
        Usage {
            burst: standing(
                p.burst_per_second,
                v.burst,
                v.burst_retry_at,
                v.burst_reset_at,
            ),
            sustained: standing(
                p.sustained_per_minute,
                v.sustained,
                v.sustained_retry_at,
                v.sustained_reset_at,
            ),
        }
    }

    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    /// Nothing held, owed or on its way: the subject's state may be dropped.
    pub(super) fn is_idle(&self) -> bool {
        self.held.is_empty()
            && self.done.is_empty()
            && self.waiting == 0
            && !self.in_flight
            && !self.queued
    }

    /// Folds the admissions since the last exchange into the smoothed rate.
    fn rate_sample(&mut self, now: Millis) {
        let elapsed = now.saturating_sub(self.rate_since);
        if elapsed >= 50 {
            let sample = f64::from(self.admitted) / elapsed as f64;
            self.rate_per_ms = if self.rate_since == 0 {
                sample
            } else {
                0.5 * self.rate_per_ms + 0.5 * sample
            };
            self.admitted = 0;
            self.rate_since = now;
        }
    }

    /// How many tokens to ask for: what waiting requests need, plus about `HORIZON_MS` of this
    /// sidecar's recent rate (a lease's lifetime of it when relaxed); never more than half a
    /// limit.
    fn want(&self, now: Millis, p: Policy) -> u32 {
        let elapsed = now.saturating_sub(self.rate_since).max(50) as f64;
        let recent = f64::from(self.admitted) / elapsed;
        let horizon = if self.relaxed {
            RELAXED_HORIZON_MS
        } else {
            HORIZON_MS
        };
        let mut ahead = (recent.max(self.rate_per_ms) * horizon).ceil() as u32;
        if self.relaxed {
            let room = |limit: u32, count: u32| limit.saturating_sub(count) / 4;
            ahead = ahead
                .min(room(p.burst_per_second, self.view.burst))
                .min(room(p.sustained_per_minute, self.view.sustained));
        }
        let cap = (p.burst_per_second / 2)
            .min(p.sustained_per_minute / 4)
            .max(1);
        (self.waiting + ahead.max(1)).min(cap.max(self.waiting))
    }
}

/// Who waits for an exchange with Redis, and for which one.
#[derive(Clone)]
pub struct Waiter {
    fleet: Arc<Fleet>,
    slot: Arc<Slot>,
    generation: u64,
}

impl std::fmt::Debug for Waiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiter")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Waiter {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.slot, &other.slot) && self.generation == other.generation
    }
}

impl Eq for Waiter {}

impl Waiter {
    /// Waits until the exchange this request needs has ended, at most `command_timeout`.
    /// Returns whether it ended in time.
    pub async fn wait(&self) -> bool {
        let deadline = tokio::time::Instant::now() + self.fleet.config.command_timeout;
        loop {
            let notified = self.fleet.exchanged.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.slot.generation() >= self.generation {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.slot.generation() >= self.generation;
            }
        }
    }
}

/// Builds what the request path hands the worker.
pub(super) fn need(
    fleet: &Fleet,
    slot: &Arc<Slot>,
    kind: &str,
    id: &[u8],
    policy: Policy,
    refill: Refill,
) {
    let need = Need {
        slot: slot.clone(),
        key: format!("keygate:{{{kind}:{}}}", String::from_utf8_lossy(id)).into(),
        policy,
    };
    if refill == Refill::NextRound {
        fleet
            .renewals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(need);
    } else {
        // Fails only once the worker has stopped, at shutdown.
        let _ = fleet.queue.send(need);
    }
}

pub(super) fn waiter(fleet: &Arc<Fleet>, slot: &Arc<Slot>, generation: u64) -> Waiter {
    Waiter {
        fleet: fleet.clone(),
        slot: slot.clone(),
        generation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Policy = Policy {
        burst_per_second: 30,
        sustained_per_minute: 300,
    };

    fn book_with(tokens: u32, now: Millis) -> LeaseBook {
        let mut book = LeaseBook::default();
        book.held.push(Held {
            id: "l1".into(),
            granted: tokens,
            left: tokens,
            granted_at: now,
            until: now + 900,
            uses: Uses::default(),
            spread: 0.0,
        });
        book
    }

    /// The worker looks at a subject only at [`LeaseBook::next_visit`]: nothing may fall due for
    /// return before then, in any state a book is in between exchanges.
    #[test]
    fn no_lease_falls_due_before_the_workers_next_visit_and_one_does_at_it() {
        for relaxed in [false, true] {
            for left in [0, 3] {
                for last_take in [0, 1_100, 1_450] {
                    for second in [false, true] {
                        let make = || {
                            let lifetime = if relaxed { 30_000 } else { 900 };
                            let mut book = book_with(5, 1_000);
                            book.held[0].until = 1_000 + lifetime;
                            book.held[0].left = left;
                            if second {
                                let mut newer = book_with(5, 1_300).held.remove(0);
                                newer.until = 1_300 + lifetime;
                                book.held.push(newer);
                            }
                            book.relaxed = relaxed;
                            book.last_take = last_take;
                            book
                        };
                        let case = format!(
                            "relaxed {relaxed}, {left} left, last take {last_take}, two leases {second}"
                        );
                        let now = 1_460;
                        let visit = make().next_visit(now);
                        assert!(visit >= now, "{case}: visit at {visit}");
                        for t in now..visit {
                            let mut book = make();
                            book.retire(t);
                            assert!(book.done.is_empty(), "{case}: due at {t}, visit at {visit}");
                        }
                        // Not a visit for nothing: a lease goes at it.
                        let mut book = make();
                        book.retire(visit);
                        assert!(!book.done.is_empty(), "{case}: nothing at {visit}");
                    }
                }
            }
        }
        let mut owed = book_with(5, 1_000);
        owed.renew_due = true;
        assert_eq!(owed.next_visit(1_010), 1_010, "a renewal due: at once");
        assert_eq!(
            LeaseBook::default().next_visit(7),
            7,
            "nothing held: dropped at once"
        );
    }

    /// Far from the limits, a lease's spread (drawn at its grant) sets when it runs low: with a
    /// third to a half of its tokens left, or 2 to 5 s before its end.
    #[test]
    fn far_from_the_limits_leases_taken_together_are_renewed_apart_by_their_spread() {
        let lease = |spread: f64| {
            let mut book = book_with(120, 1_000);
            book.relaxed = true;
            book.held[0].until = 1_000 + RELAXED_LEASE_LIFETIME_MS;
            book.held[0].spread = spread;
            book
        };
        // Tokens left when the worker is first told, one taken every 10 ms.
        let left_when_low = |spread: f64| {
            let mut book = lease(spread);
            (0..120u64)
                .find(|i| book.take(1_000 + i * 10) == Some(Refill::NextRound))
                .map(|_| book.tokens_left())
        };
        assert_eq!(left_when_low(0.0), Some(40), "a third");
        assert_eq!(left_when_low(0.5), Some(50));
        assert_eq!(left_when_low(1.0), Some(60), "a half");
        let book = lease(0.0);
        assert!(
            !book.running_low(28_999) && book.running_low(29_000),
            "2 s before its end"
        );
        let book = lease(1.0);
        assert!(
            !book.running_low(25_999) && book.running_low(26_000),
            "5 s before its end"
        );
        // Near a limit, no spread: a third, 150 ms.
        let mut book = book_with(120, 1_000);
        book.held[0].spread = 1.0;
        assert!(!book.running_low(1_749) && book.running_low(1_750));
    }

    #[test]
    fn tokens_are_taken_until_gone_and_a_refill_is_asked_for_once() {
        let mut book = book_with(6, 1_000);
        let refills: Vec<Refill> = (0..6).map(|i| book.take(1_000 + i).unwrap()).collect();
        // A third of 6 left after the fourth take: one refill, not one per request.
        use Refill::{No, Now};
        assert_eq!(refills, [No, No, No, Now, No, No]);
        assert!(book.take(1_010).is_none(), "no token left");
        assert_eq!(book.tokens_left(), 0);
    }

    #[test]
    fn a_lease_is_not_used_past_its_end_and_is_returned_with_when_it_was_used() {
        let mut book = book_with(5, 1_000);
        book.take(1_000);
        book.take(1_003);
        book.take(1_020);
        assert!(book.take(1_900).is_none(), "expired at 1900");
        let returned = &book.done[0];
        assert_eq!((returned.id.as_str(), returned.used), ("l1", 3));
        // Two runs: 1000–1003 (charged at 1003) and 1020.
        assert_eq!(returned.uses.encode(1_100), "97:2,80:1");
    }

    #[test]
    fn far_from_the_limits_a_renewal_waits_for_the_round_instead_of_a_call_of_its_own() {
        let mut book = book_with(6, 1_000);
        book.relaxed = true;
        let refills: Vec<Refill> = (0..6).map(|i| book.take(1_000 + i).unwrap()).collect();
        use Refill::{NextRound, No};
        assert_eq!(
            refills,
            [No, No, No, NextRound, No, No],
            "no exchange started from the request path: the worker told once"
        );
        assert!(book.renew_due, "running low: due on the next round");
        assert!(!book.queued);
    }

    #[test]
    fn old_runs_go_back_merged_by_the_second_and_never_charged_before_a_use_in_them() {
        let mut uses = Uses::default();
        // 10 req/s from 1,000 to 3,950, then returned at 4,000.
        for at in (1_000..4_000).step_by(100) {
            uses.record(at);
        }
        let encoded = uses.encode(4_000);
        // Older than 1,100 ms: one run per second at its last use (ages 2,100, 1,100); newer:
        // each run as it was.
        assert_eq!(
            encoded,
            "2100:10,1100:10,1000:1,900:1,800:1,700:1,600:1,500:1,400:1,300:1,200:1,100:1"
        );
        let total: u32 = encoded
            .split(',')
            .map(|r| r.split_once(':').unwrap().1.parse::<u32>().unwrap())
            .sum();
        assert_eq!(total, 30, "nothing lost");
        assert_eq!(Uses::default().encode(4_000), "");
    }

    #[test]
    fn a_busy_lease_keeps_a_bounded_list_of_runs_and_returns_the_same() {
        // A use every millisecond for 30 s: 6,000 runs of 5 ms unmerged.
        let mut uses = Uses::default();
        let mut unmerged: Vec<(Millis, u32)> = Vec::new();
        let mut longest = 0;
        for at in 1_000..31_000 {
            uses.record(at);
            match unmerged.last_mut() {
                Some((last, n)) if *last / 5 == at / 5 => {
                    *last = at;
                    *n += 1;
                }
                _ => unmerged.push((at, 1)),
            }
            longest = longest.max(uses.0.len());
        }
        assert_eq!(unmerged.len(), 6_000);
        assert!(longest <= RUNS_BEFORE_MERGING, "{longest} runs kept");
        for returned_at in [31_000, 31_400, 33_000] {
            assert_eq!(
                uses.encode(returned_at),
                Uses(unmerged.clone()).encode(returned_at),
                "returned at {returned_at}"
            );
        }
    }

    #[test]
    fn an_idle_lease_goes_back_early() {
        let mut book = book_with(5, 1_000);
        book.take(1_000);
        book.retire(1_100);
        assert_eq!(book.held.len(), 1, "idle for 100 ms: kept");
        book.retire(1_000 + IDLE_RETURN_MS);
        assert!(book.held.is_empty());
        assert_eq!(book.done[0].used, 1);
    }

    #[test]
    fn without_a_token_a_request_waits_once_then_is_refused_or_falls_to_the_outage_mode() {
        use Attempt::*;
        let mut book = LeaseBook::default();
        let wait = |s: (Shortfall, bool)| match s {
            (Shortfall::Wait(g), start) => Some((g, start)),
            _ => None,
        };
        // Redis up, first wait: the request starts the exchange and waits for the next generation.
        assert_eq!(wait(book.shortfall(0, true, First)), Some((1, true)));
        // A second request joins the queued exchange.
        assert_eq!(wait(book.shortfall(0, true, First)), Some((1, false)));
        assert_eq!(book.waiting, 2);
        // One arriving while an exchange is in flight waits for the one after.
        book.queued = false;
        book.in_flight = true;
        assert_eq!(wait(book.shortfall(0, true, First)), Some((2, false)));
        // Answered without a token for it: no room, whatever the time.
        assert!(matches!(
            book.shortfall(0, true, Answered).0,
            Shortfall::Full
        ));
        // A wait in vain, or Redis down: the outage mode.
        assert!(matches!(
            book.shortfall(0, true, TimedOut).0,
            Shortfall::Outage
        ));
        assert!(matches!(
            book.shortfall(0, false, First).0,
            Shortfall::Outage
        ));
        // The exchange waited for ended with no answer for this subject while Redis answered
        // others: the outage mode, not a refusal, and no new wait for a moment.
        book.unanswered_until = 200;
        assert!(matches!(
            book.shortfall(0, true, Answered).0,
            Shortfall::Outage
        ));
        assert!(matches!(
            book.shortfall(199, true, First).0,
            Shortfall::Outage
        ));
        book.unanswered_until = 0;
        // The fleet said it is full: refused without asking again, for a moment.
        book.full_until = 50;
        assert!(matches!(book.shortfall(10, true, First).0, Shortfall::Full));
        assert!(wait(book.shortfall(50, true, First)).is_some());
    }

    #[test]
    fn remaining_is_the_fleets_count_less_the_tokens_this_sidecar_holds() {
        let mut book = book_with(4, 1_000);
        book.view = FleetView {
            burst: 20,
            sustained: 100,
            burst_reset_at: 1_800,
            sustained_reset_at: 60_000,
            ..FleetView::default()
        };
        book.take(1_000);
        let u = book.usage(1_000, P);
        // 20 counted (this sidecar's 4 among them), 3 of those 4 still here to use.
        assert_eq!((u.burst.remaining, u.sustained.remaining), (13, 203));
        assert_eq!((u.burst.reset_ms, u.burst.retry_ms), (800, 0));
    }

    #[test]
    fn a_lease_is_sized_to_the_recent_rate_and_never_more_than_half_a_limit() {
        let mut book = LeaseBook::default();
        assert_eq!(book.want(0, P), 1, "no history: one");
        book.rate_since = 1_000;
        book.admitted = 100;
        // 100 in 1 s: 10 in the next 100 ms...
        assert_eq!(book.want(2_000, P), 10);
        // ...but never more than half the burst limit, however fast.
        book.admitted = 10_000;
        assert_eq!(book.want(2_000, P), 15);
        book.waiting = 40;
        assert_eq!(
            book.want(2_000, P),
            40,
            "every waiting request gets its token"
        );
    }

    #[test]
    fn far_from_the_limits_a_lease_covers_its_lifetime_stays_while_idle_and_is_renewed_before_its_end()
     {
        let mut book = book_with(20, 1_000);
        book.relaxed = true;
        book.rate_since = 1_000;
        book.admitted = 10;
        // 10 in 1 s: half a lifetime's worth (5,900 ms: 59), not 100 ms's (1), within a quarter of
        // the room the fleet has left (30 of the burst limit: 7)...
        assert_eq!(book.want(2_000, P), 7);
        // ...which shrinks as the fleet's count grows.
        book.view.burst = 10;
        assert_eq!(book.want(2_000, P), 5);
        book.held[0].until = 1_000 + RELAXED_LEASE_LIFETIME_MS;
        book.take(1_000);
        book.retire(1_000 + IDLE_RETURN_MS);
        assert_eq!(book.held.len(), 1, "idle, but relaxed: kept");
        assert!(!book.running_low(28_999), "19 of 20 left, 2,001 ms to go");
        assert!(book.running_low(29_000), "2 s before its end: renew");
        // A 1 s lease, 150 ms before its end, whatever the mode.
        book.held[0].until = 1_900;
        assert!(!book.running_low(1_749) && book.running_low(1_750));
        book.held[0].until = 1_000 + RELAXED_LEASE_LIFETIME_MS;
        book.relaxed = false;
        book.retire(1_000 + IDLE_RETURN_MS);
        assert!(
            book.held.is_empty(),
            "near a limit, an idle lease goes back"
        );
    }

    #[test]
    fn a_spent_lease_waits_for_the_next_exchange_and_near_the_limits_for_its_end_or_idleness_at_most()
     {
        let mut book = book_with(2, 1_000);
        book.relaxed = true;
        book.take(1_000);
        book.take(1_001);
        book.retire(1_050);
        assert_eq!(
            (book.held.len(), book.done.len()),
            (1, 0),
            "spent, but relaxed: no call of its own"
        );
        book.hand_back_spent();
        assert_eq!((book.held.len(), book.done.len()), (0, 1));
        assert_eq!(book.done[0].used, 2, "returned with its uses");

        // Near a limit (book_with: its end is at 1,900), too...
        let mut book = book_with(1, 1_000);
        book.take(1_000);
        book.retire(1_001);
        assert_eq!((book.held.len(), book.done.len()), (1, 0), "spent: waits");
        book.hand_back_spent();
        assert_eq!((book.held.len(), book.done.len()), (0, 1));
        // ...but no longer than the subject stays active...
        let mut book = book_with(1, 1_000);
        book.take(1_000);
        book.retire(1_000 + IDLE_RETURN_MS - 1);
        assert_eq!(book.done.len(), 0);
        book.retire(1_000 + IDLE_RETURN_MS);
        assert_eq!(book.done.len(), 1, "idle: returned");
        // ...and, while others keep it active, until RENEW_BEFORE_END_MS before its end.
        let mut book = book_with(1, 1_000);
        book.take(1_000);
        book.held.push(Held {
            id: "l2".into(),
            granted: 20,
            left: 20,
            granted_at: 1_100,
            until: 2_000,
            uses: Uses::default(),
            spread: 0.0,
        });
        for now in (1_100..1_900 - RENEW_BEFORE_END_MS).step_by(50) {
            book.take(now);
            book.retire(now);
            assert_eq!(book.done.len(), 0, "at {now}");
        }
        book.retire(1_900 - RENEW_BEFORE_END_MS);
        assert_eq!(book.done.len(), 1, "near its end: returned");
        assert_eq!(book.done[0].id, "l1");
    }

    #[test]
    fn the_local_share_is_floored_and_never_zero() {
        let config = FleetConfig {
            url: String::new(),
            password: None,
            tls_ca: None,
            tls_client: None,
            cluster: false,
            nodes: Vec::new(),
            connect_timeout: Duration::from_millis(1),
            command_timeout: Duration::from_millis(1),
            on_outage: OnOutage::Local,
            local_share: 0.34,
        };
        assert_eq!(
            config.local_policy(P),
            Policy {
                burst_per_second: 10,
                sustained_per_minute: 102
            }
        );
        let tiny = Policy {
            burst_per_second: 1,
            sustained_per_minute: 2,
        };
        // 0.34 of 1 and of 2 floor to 0: one request is still allowed, never none.
        assert_eq!(
            config.local_policy(tiny),
            Policy {
                burst_per_second: 1,
                sustained_per_minute: 1
            }
        );
    }
}

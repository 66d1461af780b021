//! The one task that talks to Redis for the fleet-wide limits: it takes the subjects whose
//! leases need an exchange (from the request path, and from its own rounds every 50 ms), sends
//! one script call per subject over one multiplexed connection, and hands the answers back. The
//! request path never does I/O; at most it waits for this task, bounded by `command_timeout`.

use super::{
    CallResult, Fleet, FleetView, Held, LOCAL_MARGIN_MS, LeaseBook, Need,
    RELAXED_LEASE_LIFETIME_MS, Returned, UNANSWERED_FOR_MS, Uses,
};
use crate::limits::{Millis, Policy, Slot, lock};
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const SCRIPT: &str = include_str!("lease.lua");
/// How often held leases are looked at (returned when idle or old) and a lost Redis is retried.
const ROUND: Duration = Duration::from_millis(50);
/// Between two connection attempts while Redis is unreachable.
const RECONNECT_EVERY: Duration = Duration::from_millis(200);
/// The most calls pipelined at once. Redis answers a pipeline in order, and each call has
/// `command_timeout` from its send: the tail of a longer one (a thousand workspaces renewing in
/// the same round on a busy machine) would time out, and the requests waiting on it fall to the
/// outage mode.
const BATCH: usize = 128;
/// The most subjects a round takes up with nothing waiting on them (renewals ahead of need,
/// returns): the rest wait for the next rounds, so that leases granted together, and so due
/// together, spread out instead of making one long batch every few seconds.
const UNHURRIED_PER_ROUND: usize = 128;

pub struct FleetWorker {
    fleet: Arc<Fleet>,
    needs: Mutex<Option<mpsc::UnboundedReceiver<Need>>>,
    script: redis::Script,
}

/// A subject the worker keeps on its rounds while it holds or owes anything.
struct Tracked {
    slot: Arc<Slot>,
    policy: Policy,
    /// When a round next looks at it (the one entry of [`Rounds::schedule`] that counts; an
    /// atomic only so that exchanges, which borrow the map across awaits, stay `Send`).
    visit_at: AtomicU64,
}

/// What the rounds look at: the subjects whose time has come, not every subject held. A
/// sidecar with leases for ten thousand quiet workspaces does no work for them until one of
/// their leases ends.
#[derive(Default)]
struct Rounds {
    /// Visit times; an entry whose time is no longer its subject's `visit_at` is stale, and
    /// skipped.
    schedule: BinaryHeap<Reverse<(Millis, Arc<str>)>>,
    /// For the next round: renewals the request path asked for, and subjects a full round left.
    next: Vec<Arc<str>>,
}

/// One call prepared under the subject's lock.
struct Call {
    key: Arc<str>,
    lease_id: String,
    need: u32,
    /// `need` plus what is asked for ahead of need.
    want: u32,
    releases: Vec<Returned>,
    sent: Millis,
    /// The new lease's lifetime in Redis.
    lifetime: Millis,
}

/// What Redis answered: see `lease.lua`.
#[derive(Debug, Clone, Copy)]
struct Answer {
    granted: u32,
    burst: u32,
    sustained: u32,
    burst_retry_ms: u64,
    sustained_retry_ms: u64,
    burst_reset_ms: u64,
    sustained_reset_ms: u64,
}

impl Answer {
    /// Anything but seven non-negative integers is a broken answer, never a panic.
    fn parse(v: Vec<i64>) -> Option<Answer> {
        let [g, b, s, br, sr, bz, sz] = <[i64; 7]>::try_from(v).ok()?;
        let n = |x: i64| u32::try_from(x).ok();
        let ms = |x: i64| u64::try_from(x).ok();
        Some(Answer {
            granted: n(g)?,
            burst: n(b)?,
            sustained: n(s)?,
            burst_retry_ms: ms(br)?,
            sustained_retry_ms: ms(sr)?,
            burst_reset_ms: ms(bz)?,
            sustained_reset_ms: ms(sz)?,
        })
    }
}

struct Connection {
    conn: Option<RedisConn>,
    last_attempt: Option<Instant>,
    /// When a call last brought an answer.
    last_answer: Option<Instant>,
}

/// A cluster counts as lost when no shard has answered for this long: one shard down (and the
/// rounds that call only it) is not an outage of the others.
const CLUSTER_SILENT_FOR: Duration = Duration::from_secs(1);

/// One Redis, or a Redis Cluster whose slots the client follows (each call goes to the shard
/// that holds its workspace's hash tag; the script is loaded on every primary).
#[derive(Clone)]
enum RedisConn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(cmd, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

impl FleetWorker {
    pub(super) fn new(fleet: Arc<Fleet>, needs: mpsc::UnboundedReceiver<Need>) -> FleetWorker {
        FleetWorker {
            fleet,
            needs: Mutex::new(Some(needs)),
            script: redis::Script::new(SCRIPT),
        }
    }

    fn now(&self) -> Millis {
        self.fleet.clock.now_ms()
    }

    /// A connection, opening one if there is none and the last attempt is old enough.
    async fn connection(&self, c: &mut Connection) -> Option<RedisConn> {
        if let Some(conn) = &c.conn {
            return Some(conn.clone());
        }
        if c.last_attempt
            .is_some_and(|t| t.elapsed() < RECONNECT_EVERY)
        {
            return None;
        }
        c.last_attempt = Some(Instant::now());
        let config = &self.fleet.config;
        let opened = async {
            let with_password = |url: &str| {
                let info = redis::IntoConnectionInfo::into_connection_info(url)?;
                Ok::<_, redis::RedisError>(match &config.password {
                    Some(password) => {
                        let settings = info
                            .redis_settings()
                            .clone()
                            .set_password(password.expose());
                        info.set_redis_settings(settings)
                    }
                    None => info,
                })
            };
            let info = with_password(&config.url)?;
            // rediss:// with its own CAs (otherwise the system's roots) and a client
            // certificate when Redis asks for one; or plain TCP.
            let certificates =
                (config.tls_ca.is_some() || config.tls_client.is_some()).then(|| {
                    redis::TlsCertificates {
                        client_tls: config.tls_client.as_ref().map(|id| redis::ClientTlsConfig {
                            client_cert: id.cert_pem.clone(),
                            client_key: id.key_pem.clone(),
                        }),
                        root_cert: config.tls_ca.clone(),
                    }
                });
            let mut conn = if config.cluster {
                // Every node given is a way in: the client connects through any that answers,
                // and comes back through them when it has lost every connection.
                let mut nodes = vec![info];
                for node in &config.nodes {
                    nodes.push(with_password(node)?);
                }
                let mut builder = redis::cluster::ClusterClientBuilder::new(nodes)
                    .connection_timeout(config.connect_timeout)
                    .response_timeout(config.command_timeout);
                if let Some(certificates) = certificates {
                    builder = builder.certs(certificates);
                }
                RedisConn::Cluster(builder.build()?.get_async_connection().await?)
            } else {
                let client = match certificates {
                    Some(certificates) => redis::Client::build_with_tls(info, certificates)?,
                    None => redis::Client::open(info)?,
                };
                let settings = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(config.connect_timeout))
                    .set_response_timeout(Some(config.command_timeout));
                RedisConn::Single(
                    client
                        .get_multiplexed_async_connection_with_config(&settings)
                        .await?,
                )
            };
            // Loaded now (on every primary of a cluster), the script is there for the first
            // calls: each would otherwise pay a NOSCRIPT answer and a load inside its
            // `command_timeout`. This is also the check that Redis answers.
            self.script.load_async(&mut conn).await?;
            Ok::<_, redis::RedisError>(conn)
        };
        match tokio::time::timeout(config.connect_timeout + config.command_timeout, opened).await {
            Ok(Ok(conn)) => {
                c.conn = Some(conn.clone());
                self.fleet.set_up(true);
                Some(conn)
            }
            Ok(Err(e)) => {
                tracing::debug!("fleet-wide limits: cannot connect to Redis: {e}");
                self.fleet.set_up(false);
                None
            }
            Err(_) => {
                tracing::debug!("fleet-wide limits: connecting to Redis timed out");
                self.fleet.set_up(false);
                None
            }
        }
    }

    /// Prepares a subject's call under its lock; `None` when it has nothing to send.
    fn prepare(&self, key: &Arc<str>, t: &Tracked, now: Millis) -> Option<Call> {
        let mut state = lock(&t.slot.state);
        let book = state.lease.get_or_insert_with(Box::default);
        book.queued = false;
        book.renew_due = false;
        if book.in_flight {
            return None;
        }
        book.retire(now);
        let need = book.waiting;
        let active = now.saturating_sub(book.last_take) < book.idle_after();
        let low = book.running_low(now);
        let want = if need > 0 || (active && low) {
            book.want(now, t.policy)
        } else {
            0
        };
        if want == 0 && book.done.is_empty() {
            return None;
        }
        book.hand_back_spent();
        book.waiting = 0;
        book.in_flight = true;
        book.rate_sample(now);
        Some(Call {
            key: key.clone(),
            lease_id: if want > 0 {
                self.fleet.lease_id()
            } else {
                String::new()
            },
            need,
            want: want.max(need),
            releases: std::mem::take(&mut book.done),
            sent: now,
            lifetime: book.lifetime(),
        })
    }

    async fn invoke(
        &self,
        conn: &mut RedisConn,
        call: &Call,
        policy: Policy,
    ) -> Result<Answer, Failure> {
        // Tokens ahead of need only while a fifth of the burst limit stays free: near the
        // limit, tokens parked on one sidecar would refuse another's requests.
        let reserve = policy.burst_per_second.div_ceil(5).max(1);
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(format!("{}:b", call.key))
            .key(format!("{}:s", call.key))
            .key(format!("{}:l", call.key))
            .arg(policy.burst_per_second)
            .arg(policy.sustained_per_minute)
            .arg(&call.lease_id)
            .arg(call.need)
            .arg(call.want)
            .arg(reserve)
            .arg(call.lifetime)
            .arg(RELAXED_LEASE_LIFETIME_MS);
        for r in &call.releases {
            invocation
                .arg(&r.id)
                .arg(r.used)
                .arg(r.uses.encode(self.now()));
        }
        match tokio::time::timeout(
            self.fleet.config.command_timeout,
            invocation.invoke_async::<Vec<i64>>(conn),
        )
        .await
        {
            Err(_) => Err(Failure {
                result: CallResult::Timeout,
                broken: false,
            }),
            Ok(Err(e)) => {
                tracing::debug!("fleet-wide limits: Redis call failed: {e}");
                Err(Failure {
                    result: if e.is_timeout() {
                        CallResult::Timeout
                    } else {
                        CallResult::Error
                    },
                    broken: e.is_io_error()
                        || e.is_connection_dropped()
                        || e.is_unrecoverable_error(),
                })
            }
            Ok(Ok(v)) => Answer::parse(v).ok_or_else(|| {
                tracing::warn!("fleet-wide limits: Redis answered something unexpected");
                Failure {
                    result: CallResult::Error,
                    broken: false,
                }
            }),
        }
    }

    /// Exchanges for `keys`; subjects that gained waiting requests meanwhile go round again at
    /// once.
    async fn exchange_keys(
        &self,
        c: &mut Connection,
        tracked: &HashMap<Arc<str>, Tracked>,
        keys: &mut Vec<Arc<str>>,
    ) {
        // Bounded: each pass either answers the waiting requests or fails them into on_outage.
        for _ in 0..4 {
            if keys.is_empty() {
                return;
            }
            let now = self.now();
            let mut calls: Vec<(Call, &Tracked)> = keys
                .drain(..)
                .filter_map(|k| {
                    let t = tracked.get(&k)?;
                    Some((self.prepare(&k, t, now)?, t))
                })
                .collect();
            if calls.is_empty() {
                return;
            }
            // Calls that requests wait on go first.
            calls.sort_by_key(|(call, _)| call.need == 0);
            let conn = self.connection(c).await;
            let started = Instant::now();
            let answers: Vec<Result<Answer, Failure>> = match conn {
                // Polled together on one multiplexed connection, a batch's calls are pipelined.
                Some(conn) => {
                    let mut answers = Vec::with_capacity(calls.len());
                    for batch in calls.chunks(BATCH) {
                        answers.extend(
                            futures_util::future::join_all(batch.iter().map(|(call, t)| {
                                let mut conn = conn.clone();
                                async move { self.invoke(&mut conn, call, t.policy).await }
                            }))
                            .await,
                        );
                    }
                    answers
                }
                None => calls
                    .iter()
                    .map(|_| {
                        Err(Failure {
                            result: CallResult::Error,
                            broken: true,
                        })
                    })
                    .collect(),
            };
            if c.conn.is_some() {
                self.fleet
                    .metrics
                    .call_duration
                    .observe(started.elapsed().as_secs_f64());
            }
            let received = self.now();
            let (mut failed, mut answered, mut broken) = (false, false, false);
            for ((call, t), answer) in calls.into_iter().zip(answers) {
                let mut state = lock(&t.slot.state);
                let book = state.lease.get_or_insert_with(Box::default);
                book.in_flight = false;
                book.generation += 1;
                match answer {
                    Ok(a) => {
                        self.fleet.metrics.call(CallResult::Ok);
                        apply(book, &call, a, t.policy, received, &self.fleet);
                        answered = true;
                    }
                    Err(f) => {
                        if c.conn.is_some() {
                            self.fleet.metrics.call(f.result);
                        }
                        failed = true;
                        broken |= f.broken;
                        book.unanswered_until = received + UNANSWERED_FOR_MS;
                        // Returned again next time: an id Redis has already seen is ignored.
                        book.done.extend(call.releases);
                    }
                }
                if book.waiting > 0 {
                    keys.push(call.key.clone());
                }
            }
            // One slow call among many answered (a busy moment) keeps the connection; a lost
            // connection, or a round with no answer at all, is an outage. A cluster connection
            // is one per node, kept and reconnected by the client: a call lost with one node
            // (its shard down) leaves the others', and only that shard's subjects go to
            // on_outage (each book's `unanswered_until`); the cluster is lost only when no
            // shard has answered for a while.
            if answered {
                c.last_answer = Some(Instant::now());
            }
            let lost = if matches!(c.conn, Some(RedisConn::Cluster(_))) {
                failed
                    && !answered
                    && c.last_answer
                        .is_none_or(|t| t.elapsed() >= CLUSTER_SILENT_FOR)
            } else {
                broken || (failed && !answered)
            };
            if lost {
                c.conn = None;
                self.fleet.set_up(false);
            } else if c.conn.is_some() {
                self.fleet.set_up(true);
            }
            self.fleet.exchanged.notify_waiters();
            if failed {
                // Waiting requests have been told; those whose call failed fall to on_outage
                // without another try.
                return;
            }
        }
    }

    /// The round every 50 ms, over the subjects due: leases gone idle or old are returned,
    /// leases far from the limits and running low are renewed (at most [`UNHURRIED_PER_ROUND`]
    /// of these two a round; a subject with requests waiting always goes), subjects with nothing
    /// left are dropped. Returns the subjects to exchange for.
    fn sweep(
        &self,
        tracked: &mut HashMap<Arc<str>, Tracked>,
        rounds: &mut Rounds,
    ) -> Vec<Arc<str>> {
        let now = self.now();
        let mut visits = std::mem::take(&mut rounds.next);
        while let Some(Reverse((at, _))) = rounds.schedule.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, key))) = rounds.schedule.pop() else {
                break;
            };
            // Taken: whatever comes of the visit plans the next one afresh.
            if tracked.get(&key).is_some_and(|t| {
                t.visit_at
                    .compare_exchange(at, Millis::MAX, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            }) {
                visits.push(key);
            }
        }
        visits.sort_unstable();
        visits.dedup();
        self.fleet.metrics.visits.inc_by(visits.len() as u64);
        let mut due = Vec::new();
        let mut unhurried = 0;
        for key in visits {
            let Some(t) = tracked.get(&key) else {
                continue;
            };
            let mut state = lock(&t.slot.state);
            let Some(book) = state.lease.as_mut() else {
                drop(state);
                tracked.remove(&key);
                continue;
            };
            book.retire(now);
            let waited_on = book.waiting > 0;
            let owed = !book.done.is_empty() || book.renew_due;
            if waited_on || (owed && unhurried < UNHURRIED_PER_ROUND) {
                unhurried += usize::from(!waited_on);
                book.queued = true;
                due.push(key);
            } else if owed {
                rounds.next.push(key);
            } else if book.is_idle() {
                drop(state);
                tracked.remove(&key);
            } else {
                let at = book.next_visit(now);
                drop(state);
                plan(t, &key, at, rounds);
            }
        }
        due
    }

    /// Exchanges for `keys`, then plans when each of them is next due.
    async fn exchange(
        &self,
        c: &mut Connection,
        tracked: &HashMap<Arc<str>, Tracked>,
        keys: Vec<Arc<str>>,
        rounds: &mut Rounds,
    ) {
        let mut pending = keys.clone();
        self.exchange_keys(c, tracked, &mut pending).await;
        let now = self.now();
        for key in &keys {
            if let Some(t) = tracked.get(key) {
                let at = lock(&t.slot.state)
                    .lease
                    .as_ref()
                    .map_or(now, |book| book.next_visit(now));
                plan(t, key, at, rounds);
            }
        }
    }

    /// At shutdown: every lease goes back, so that the rest of the fleet can use what this
    /// sidecar will not.
    async fn return_all(&self, c: &mut Connection, tracked: &mut HashMap<Arc<str>, Tracked>) {
        let mut keys = Vec::new();
        for (key, t) in tracked.iter() {
            let mut state = lock(&t.slot.state);
            if let Some(book) = state.lease.as_mut() {
                book.retire(Millis::MAX);
                book.waiting = 0;
                book.last_take = 0;
                if !book.done.is_empty() {
                    keys.push(key.clone());
                }
            }
        }
        if !keys.is_empty() && self.fleet.is_up() {
            self.exchange_keys(c, tracked, &mut keys).await;
        }
    }
}

/// Puts a subject's next visit at `at`, unless it is there already.
fn plan(t: &Tracked, key: &Arc<str>, at: Millis, rounds: &mut Rounds) {
    if t.visit_at.swap(at, Ordering::Relaxed) != at {
        rounds.schedule.push(Reverse((at, key.clone())));
    }
}

/// Tracks the subject of `need` (its slot, and its policy as the request saw it); returns its key.
fn track(tracked: &mut HashMap<Arc<str>, Tracked>, need: Need) -> Arc<str> {
    let t = tracked.entry(need.key.clone()).or_insert_with(|| Tracked {
        slot: need.slot,
        policy: need.policy,
        visit_at: AtomicU64::new(Millis::MAX),
    });
    t.policy = need.policy;
    need.key
}

/// Why a call brought no answer: its metric label, and whether the connection is lost with it.
struct Failure {
    result: CallResult,
    broken: bool,
}

/// Applies an answer to the subject's book.
fn apply(
    book: &mut LeaseBook,
    call: &Call,
    a: Answer,
    policy: Policy,
    received: Millis,
    fleet: &Fleet,
) {
    book.unanswered_until = 0;
    book.view = FleetView {
        burst: a.burst,
        sustained: a.sustained,
        burst_retry_at: received + a.burst_retry_ms,
        sustained_retry_at: received + a.sustained_retry_ms,
        burst_reset_at: received + a.burst_reset_ms,
        sustained_reset_at: received + a.sustained_reset_ms,
    };
    // Far from both limits (the counts include every outstanding lease), tokens parked here
    // cannot refuse anyone: leases may cover their whole lifetime and stay while idle.
    book.relaxed = u64::from(a.burst) * 2 <= u64::from(policy.burst_per_second)
        && u64::from(a.sustained) * 2 <= u64::from(policy.sustained_per_minute);
    if a.granted > 0 {
        fleet.metrics.leases.inc();
        fleet.metrics.leased_tokens.inc_by(u64::from(a.granted));
        book.held.push(Held {
            id: call.lease_id.clone(),
            granted: a.granted,
            left: a.granted,
            granted_at: received,
            until: call.sent + call.lifetime - LOCAL_MARGIN_MS,
            uses: Uses::default(),
            spread: rand::random(),
        });
    }
    if call.need > 0 && a.granted < call.need {
        // No room even for the requests that waited: say so for a moment instead of asking
        // again for each of them. A moment is at most one burst bucket: a bucket leaving the
        // window, or a lease coming back, makes room again.
        let retry = a.burst_retry_ms.max(a.sustained_retry_ms).clamp(1, 25);
        book.full_until = received + retry;
    }
}

#[async_trait]
impl BackgroundService for FleetWorker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut needs) = self.needs.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let mut c = Connection {
            conn: None,
            last_attempt: None,
            last_answer: None,
        };
        let mut tracked: HashMap<Arc<str>, Tracked> = HashMap::new();
        let mut rounds = Rounds::default();
        self.connection(&mut c).await;
        let mut round = tokio::time::interval(ROUND);
        round.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    self.return_all(&mut c, &mut tracked).await;
                    return;
                }
                need = needs.recv() => {
                    let Some(first) = need else { return };
                    let mut keys = Vec::new();
                    for n in std::iter::once(first).chain(std::iter::from_fn(|| needs.try_recv().ok())) {
                        keys.push(track(&mut tracked, n));
                    }
                    keys.sort_unstable();
                    keys.dedup();
                    self.exchange(&mut c, &tracked, keys, &mut rounds).await;
                }
                _ = round.tick() => {
                    let renewals = std::mem::take(
                        &mut *self.fleet.renewals.lock().unwrap_or_else(|e| e.into_inner()),
                    );
                    for n in renewals {
                        let key = track(&mut tracked, n);
                        rounds.next.push(key);
                    }
                    let due = self.sweep(&mut tracked, &mut rounds);
                    if !due.is_empty() {
                        self.exchange(&mut c, &tracked, due, &mut rounds).await;
                    } else if !self.fleet.is_up() {
                        self.connection(&mut c).await;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Answer;

    #[test]
    fn only_seven_non_negative_integers_make_an_answer() {
        let a = Answer::parse(vec![3, 20, 100, 0, 0, 800, 59_000]).unwrap();
        assert_eq!((a.granted, a.burst, a.sustained_reset_ms), (3, 20, 59_000));
        for bad in [
            vec![],
            vec![1, 2, 3],
            vec![1, 2, 3, 4, 5, 6, 7, 8],
            vec![-1, 0, 0, 0, 0, 0, 0],
            vec![0, i64::MAX, 0, 0, 0, 0, 0],
            vec![0, 0, 0, -5, 0, 0, 0],
        ] {
            assert!(Answer::parse(bad.clone()).is_none(), "{bad:?}");
        }
    }
}

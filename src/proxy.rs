//! The Pingora `ProxyHttp` implementation: thin glue that asks the gate, acts on its answer and
//! records what happened.

use crate::browser::{self, Carrier};
use crate::client_address::{ClientAddress, ClientAddressConfig};
use crate::config::{AccessLogConfig, UpstreamConfig};
use crate::connections;
use crate::forward;
use crate::gate::{Decision, Gate, Identity, Incoming, Rejection, Verdict};
use crate::headers;
use crate::limits::{self, Attempt, InFlight, Usage, Waiter};
use crate::metrics::{Metrics, Outcome};
use crate::observe::{self, Finish, RequestRecord};
use crate::respond::{self, Answer};
use crate::snapshot::Owner;
use crate::sync::SnapshotStore;
use crate::target;
use crate::usage::UsageTracker;
use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{ErrorSource, ErrorType};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub struct Keygate {
    store: Arc<SnapshotStore>,
    gate: Gate,
    upstream: UpstreamConfig,
    client_keepalive_secs: u64,
    max_staleness: Option<Duration>,
    metrics: Arc<Metrics>,
    usage: Option<Arc<UsageTracker>>,
    access_log: Option<AccessLogConfig>,
    client_address: ClientAddressConfig,
}

/// Per-request state carried from the decision to the upstream request and the log.
#[derive(Default)]
pub struct RequestCtx {
    identity: Option<Identity>,
    /// Who sent the request (`None` on a socket with no IP peer).
    client: Option<ClientAddress>,
    /// Where the caller's limits stand, for the response headers.
    rate: Option<Usage>,
    record: RequestRecord,
    /// The caller's place among its requests in flight, given back when the context is dropped:
    /// after the response and the log.
    _slot: Option<InFlight>,
}

/// What `Keygate` needs besides the decision itself.
pub struct Observers {
    pub metrics: Arc<Metrics>,
    pub usage: Option<Arc<UsageTracker>>,
    pub access_log: Option<AccessLogConfig>,
}

/// How a request reaches the upstream.
pub struct Forwarding {
    pub upstream: UpstreamConfig,
    pub client_address: ClientAddressConfig,
}

impl Keygate {
    pub fn new(
        store: Arc<SnapshotStore>,
        gate: Gate,
        forwarding: Forwarding,
        client_keepalive: Duration,
        max_staleness: Option<Duration>,
        observers: Observers,
    ) -> Self {
        Keygate {
            store,
            gate,
            upstream: forwarding.upstream,
            client_address: forwarding.client_address,
            client_keepalive_secs: client_keepalive.as_secs().max(1),
            max_staleness,
            metrics: observers.metrics,
            usage: observers.usage,
            access_log: observers.access_log,
        }
    }

    /// The synchronous half of `request_filter`: the snapshot guard lives only in here, never
    /// across an `.await`. Returns how the request must be rewritten before it is forwarded
    /// (when the bytes Pingora would send are not the canonical target), the answer, or (with
    /// fleet-wide limits) that it must wait for Redis and be decided again.
    fn decide(&self, req: &RequestHeader, ctx: &mut RequestCtx, attempt: Attempt) -> Decided {
        let snapshot = self.store.load();
        // Fail closed on a snapshot too old to trust (when a maximum is configured).
        let snapshot = match self.max_staleness {
            Some(_) if !self.store.fresh(self.max_staleness) => None,
            _ => snapshot.as_deref(),
        };
        let target = target::of(req);
        let decision = match &target {
            Ok(t) => self.gate.decide_with(
                snapshot,
                Incoming {
                    method: req.method.as_str(),
                    raw_path: t.path,
                    query: t.query,
                    headers: &req.headers,
                    client: ctx.client.map(|c| c.client),
                },
                unix_now(),
                attempt,
            ),
            Err(e) => Decision::rejected(Rejection::BadPath(*e)),
        };
        ctx.rate = decision.rate;
        let record = &mut ctx.record;
        record.route = decision.route.map(|r| r.index());
        if let Some(key) = &decision.key
            && let Owner::Workspace(w) = &key.owner
        {
            record.workspace = Some(Arc::clone(w));
        }
        record.key = decision.key;
        match decision.verdict {
            Verdict::Wait(waiter) => Decided::Wait(waiter),
            Verdict::Reject(r) => {
                let (outcome, reason) = observe::classify(&r, &self.metrics);
                record.outcome = outcome;
                record.reason = Some(reason);
                Decided::Answer(respond::for_rejection(&r))
            }
            Verdict::Forward {
                identity,
                path,
                slot,
                strip,
            } => {
                if let Some(id) = &identity {
                    record.workspace = Some(Arc::clone(&id.workspace));
                }
                ctx.identity = identity;
                ctx._slot = slot;
                // A forwarded request always has a target that passed `target::of`.
                let Ok(target) = target else {
                    return Decided::Answer(respond::for_proxy_failure(400));
                };
                let mut rewrite = match strip {
                    Some(Carrier::Query) => {
                        let query = target.query.and_then(browser::strip_query);
                        Rewrite::to(&path, query.as_deref(), target.authority)
                    }
                    _ if target.forwards_as(req, &path) => Ok(Rewrite::default()),
                    _ => Rewrite::to(&path, target.query, target.authority),
                };
                if let (Some(Carrier::WebSocketProtocol), Ok(r)) = (strip, &mut rewrite) {
                    r.protocol = Some(browser::strip_protocol(&req.headers));
                }
                match rewrite {
                    Ok(rewrite) => Decided::Forward(rewrite),
                    Err(answer) => Decided::Answer(answer),
                }
            }
        }
    }
}

/// What `Keygate::decide` concluded.
enum Decided {
    /// Forward, rewritten first where the request must be.
    Forward(Rewrite),
    Answer(Answer),
    /// Wait for Redis (fleet-wide limits), then decide again.
    Wait(Waiter),
}

/// What the forwarded request needs so that the upstream receives the path keygate matched, in
/// origin-form, and no client token from the URL or the subprotocols. The default changes
/// nothing.
#[derive(Default)]
struct Rewrite {
    uri: Option<http::Uri>,
    /// For an absolute-form target: its authority, which RFC 9112 §3.2.2 makes the request's
    /// host whatever `Host` said.
    host: Option<http::HeaderValue>,
    /// `Sec-WebSocket-Protocol` without the client token: the other subprotocols, or nothing.
    protocol: Option<Option<http::HeaderValue>>,
}

impl Rewrite {
    fn to(path: &str, query: Option<&str>, authority: Option<&str>) -> Result<Rewrite, Answer> {
        let bad = |_| respond::for_proxy_failure(400);
        let uri = match query {
            Some(q) => format!("{path}?{q}"),
            None => path.to_owned(),
        };
        Ok(Rewrite {
            uri: Some(uri.parse().map_err(bad)?),
            host: authority
                .map(|a| {
                    http::HeaderValue::from_str(a).map_err(|_| respond::for_proxy_failure(400))
                })
                .transpose()?,
            protocol: None,
        })
    }

    fn apply(self, req: &mut RequestHeader) -> Result<()> {
        if let Some(uri) = self.uri {
            req.set_uri(uri);
        }
        if let Some(host) = self.host {
            req.insert_header(http::header::HOST, host)?;
        }
        match self.protocol {
            None => {}
            Some(None) => {
                req.remove_header(&http::header::SEC_WEBSOCKET_PROTOCOL);
            }
            Some(Some(kept)) => {
                req.insert_header(http::header::SEC_WEBSOCKET_PROTOCOL, kept)?;
            }
        }
        Ok(())
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[async_trait]
impl ProxyHttp for Keygate {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        // Pingora keeps an idle client connection open forever unless given a timeout. Where it
        // has already decided to close (HTTP/1.0 without keep-alive; Content-Length beside
        // Transfer-Encoding, RFC 9112 §6.1), the decision stands: the rest of such a request's
        // bytes must never be read as a new request.
        let (pressure, proxied) = match connections::of(session) {
            Some(connection) => {
                connection.head_done();
                (connection.under_pressure(), connection.proxied_client())
            }
            None => (false, None),
        };
        if session.get_keepalive().is_some() {
            // Short of connections, none is kept idle: this one closes after its response. While
            // another process takes over the sockets (a reload), every connection closes after
            // its response, so that its client's next request goes to the new process.
            let keep = !pressure && !crate::upgrade::draining();
            session.set_keepalive(keep.then_some(self.client_keepalive_secs));
        }
        let started = Instant::now();
        // The peer: the socket's, or the client a PROXY protocol header named for it.
        let peer = proxied.or_else(|| session.client_addr().and_then(|a| a.as_inet()).copied());
        ctx.client = peer.map(|peer| {
            self.client_address
                .resolve(peer.ip(), &session.req_header().headers)
        });
        let mut decided = self.decide(session.req_header(), ctx, Attempt::First);
        if let Decided::Wait(waiter) = decided {
            // Bounded by `command_timeout`; then the request is decided without waiting again.
            let attempt = if waiter.wait().await {
                Attempt::Answered
            } else {
                Attempt::TimedOut
            };
            decided = self.decide(session.req_header(), ctx, attempt);
        }
        self.metrics
            .decision_duration
            .observe(started.elapsed().as_secs_f64());
        match decided {
            Decided::Forward(rewrite) => {
                rewrite.apply(session.req_header_mut())?;
                Ok(false)
            }
            Decided::Wait(_) => {
                // A second attempt never asks to wait; answer as an outage would, to be safe.
                respond::send(
                    session,
                    respond::for_rejection(&Rejection::LimitsUnavailable),
                    None,
                    self.gate.rate_headers(),
                )
                .await?;
                Ok(true)
            }
            Decided::Answer(answer) => {
                respond::send(session, answer, ctx.rate.as_ref(), self.gate.rate_headers()).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        Ok(Box::new(self.upstream.peer()))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        forward::prepare(
            upstream_request,
            ctx.identity.as_ref(),
            ctx.client.as_ref(),
            &self.upstream,
        )
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        ctx.record.upstream_status = Some(status);
        self.metrics.upstream_status(status);
        let (rate, which) = (ctx.rate.as_ref(), self.gate.rate_headers());
        if self.upstream.preserve_header_case {
            if let Some(usage) = rate {
                limits::add_rate_headers(upstream_response, usage, which)?;
            }
        } else {
            // Every passed-back response loses its case map, not only those given headers: the
            // same names go out the same way on every response.
            headers::response_without_case(upstream_response, |map| match rate {
                Some(usage) => limits::add_rate_headers(map, usage, which),
                None => Ok(()),
            })?;
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &pingora::Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = status_for(e);
        if matches!(e.esource(), ErrorSource::Upstream) {
            ctx.record.outcome = Outcome::UpstreamError;
            ctx.record.reason = Some(if code == 504 {
                "upstream_timeout"
            } else {
                "upstream_unavailable"
            });
        }
        // Once the upstream's response has started, the client can only be cut off.
        if code != 0 && session.response_written().is_none() {
            // The connection is not reused after a failure (below): the answer must say so.
            session.set_keepalive(None);
            let answer = respond::for_proxy_failure(code);
            if let Err(write_error) =
                respond::send(session, answer, ctx.rate.as_ref(), self.gate.rate_headers()).await
            {
                tracing::debug!("could not send the error response: {write_error}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(
        &self,
        session: &mut Session,
        _e: Option<&pingora::Error>,
        ctx: &mut RequestCtx,
    ) {
        connections::request_done(session);
        let req = session.req_header();
        let client = session.client_addr().and_then(|a| a.as_inet()).copied();
        Finish {
            metrics: &self.metrics,
            usage: self.usage.as_deref(),
            access_log: self.access_log.as_ref(),
            route_name: ctx.record.route.map(|i| self.gate.route_name(i)),
            method: req.method.as_str(),
            path: req.uri.path(),
            status: session.response_written().map_or(0, |r| r.status.as_u16()),
            client,
            // Logged when it is not the socket's peer: behind a trusted proxy, or named by a
            // PROXY protocol header.
            client_ip: ctx
                .client
                .map(|c| c.client)
                .filter(|ip| client.is_none_or(|peer| peer.ip() != *ip)),
        }
        .record(&ctx.record);
    }
}

/// Pingora's own classification, except that upstream timeouts are 504 rather than 502.
fn status_for(e: &pingora::Error) -> u16 {
    use ErrorType::*;
    match (e.etype(), e.esource()) {
        (HTTPStatus(code), _) => *code,
        (ConnectTimedout | ReadTimedout | WriteTimedout, ErrorSource::Upstream) => 504,
        (_, ErrorSource::Upstream) => 502,
        (WriteError | ReadError | ConnectionClosed, ErrorSource::Downstream) => 0,
        (_, ErrorSource::Downstream) => 400,
        _ => 500,
    }
}

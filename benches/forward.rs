//! What rewriting one forwarded request costs: the request as Pingora hands it to
//! `upstream_request_filter` (a clone of the client's head, case-preserving: `Host`,
//! `User-Agent`, `Accept`, `Authorization`), `forward::prepare` run on it (`Authorization`
//! removed; five identity headers, `X-Forwarded-For` and `X-Client-IP` set), and the head written
//! out as HTTP/1 bytes. Both ways of writing headers are timed and their heap allocations
//! counted (a wrapping allocator over mimalloc): through Pingora's header API
//! (`upstream.preserve_header_case: true`) and into the value map (the default).
//!
//! Run: `cargo bench --bench forward`, then `scripts/bench-medians.py`.

use bytes::BytesMut;
use criterion::Criterion;
use http::HeaderMap;
use keygate::client_address::ClientAddress;
use keygate::config::{Config, UpstreamConfig};
use keygate::forward;
use keygate::gate::{Gate, Identity, Verdict};
use keygate::secret::KeyHash;
use keygate::snapshot::{self, Format};
use mimalloc::MiMalloc;
use pingora::http::RequestHeader;
use stats_alloc::StatsAlloc;
use std::hint::black_box;
use std::path::Path;

#[global_allocator]
static ALLOC: StatsAlloc<MiMalloc> = StatsAlloc::new(MiMalloc);

fn allocations() -> usize {
    let stats = ALLOC.stats();
    stats.allocations + stats.reallocations
}

const SECRET: &str = "sk_live_BENCHforward00000000000000000001";
const PATH: &str = "/v1/products/42";

const CONFIG: &str = "
listen: { addresses: ['127.0.0.1:8080'] }
upstream: { address: '127.0.0.1:9000' }
snapshot: { file: keys.yaml }
routes:
  - { name: products-read, methods: [GET], path: /v1/products/**, scopes: [products:read] }
";

/// The identity keygate decides for a live key with two scopes, as it is forwarded.
fn identity(conf: &Config) -> Identity {
    let doc = format!(
        "version: 1
workspaces:
  - {{ id: ws_bench, type: live }}
keys:
  - {{ id: key_bench, hash: {}, workspace: ws_bench, scopes: [products:read, orders:read] }}
",
        KeyHash::of(SECRET).to_hex()
    );
    let snap = snapshot::parse(doc.as_bytes(), Format::Yaml, "bench").unwrap();
    let gate = Gate::new(conf.routes.clone(), conf.unmatched, None);
    let mut headers = HeaderMap::new();
    let bearer = format!("Bearer {SECRET}");
    headers.insert(http::header::AUTHORIZATION, bearer.parse().unwrap());
    match gate.decide(Some(&snap), "GET", PATH, &headers, 0).verdict {
        Verdict::Forward {
            identity: Some(id), ..
        } => id,
        other => panic!("the bench key must be forwarded: {other:?}"),
    }
}

/// wrk's request as Pingora's HTTP/1 server builds it (case-preserving).
fn client_request() -> RequestHeader {
    let mut req = RequestHeader::build("GET", PATH.as_bytes(), Some(4)).unwrap();
    let bearer = format!("Bearer {SECRET}");
    for (name, value) in [
        ("Host", "127.0.0.1:8080"),
        ("User-Agent", "wrk"),
        ("Accept", "*/*"),
        ("Authorization", bearer.as_str()),
    ] {
        req.append_header(name, value).unwrap();
    }
    req
}

/// One forwarded request: cloned as Pingora does, rewritten, written out.
fn forward_one(
    client: &RequestHeader,
    identity: &Identity,
    address: &ClientAddress,
    upstream: &UpstreamConfig,
    wire: &mut BytesMut,
) {
    let mut req = client.clone();
    forward::prepare(&mut req, Some(identity), Some(address), upstream).unwrap();
    wire.clear();
    req.header_to_h1_wire(wire);
    black_box(&wire);
}

fn main() {
    let conf = Config::from_yaml(CONFIG, Path::new("keygate.yaml")).unwrap();
    let identity = identity(&conf);
    let address = ClientAddress {
        peer: "192.0.2.10".parse().unwrap(),
        client: "192.0.2.10".parse().unwrap(),
        peer_trusted: false,
    };
    let client = client_request();
    let mut wire = BytesMut::with_capacity(4096);
    let ways = [
        (
            "through Pingora's header API (preserve_header_case: true)",
            true,
        ),
        ("into the value map (the default)", false),
    ];
    for (name, preserve) in ways {
        let upstream = UpstreamConfig {
            preserve_header_case: preserve,
            ..conf.upstream.clone()
        };
        forward_one(&client, &identity, &address, &upstream, &mut wire);
        let before = allocations();
        for _ in 0..10_000 {
            forward_one(&client, &identity, &address, &upstream, &mut wire);
        }
        let per = (allocations() - before) as f64 / 10_000.0;
        println!(
            "{name}: {} bytes of head, allocations per request: {per}",
            wire.len()
        );
    }

    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("forward");
    group.bench_function("the clone and the write alone", |b| {
        b.iter(|| {
            let req = client.clone();
            wire.clear();
            req.header_to_h1_wire(&mut wire);
            black_box(&wire);
        })
    });
    for (name, preserve) in ways {
        let upstream = UpstreamConfig {
            preserve_header_case: preserve,
            ..conf.upstream.clone()
        };
        group.bench_function(name, |b| {
            b.iter(|| forward_one(&client, &identity, &address, &upstream, &mut wire))
        });
    }
    group.finish();
    c.final_summary();
}

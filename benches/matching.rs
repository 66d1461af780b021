//! The two matchers of the decision on their own.
//!
//! Scope matching: whether a key's scopes grant a route's required scope.
//!
//! | case                                | key holds            | route requires   |
//! |-------------------------------------|----------------------|------------------|
//! | exact hit                           | `products:read`      | `products:read`  |
//! | wildcard hit, resource star         | `products:*`         | `products:write` |
//! | wildcard hit, star read             | `*:read`             | `products:read`  |
//! | wildcard hit, lone star             | `*`                  | `products:read`  |
//! | exact hit, 3 segments               | `data:geo:read`      | `data:geo:read`  |
//! | wildcard hit, star read, 3 segments | `*:read`             | `data:geo:read`  |
//! | hit on the 10th of 10 scopes        | [`TEN_SCOPES`]       | `customers:list` |
//! | miss against 10 scopes              | [`TEN_SCOPES`]       | `invoices:write` |
//!
//! Route matching: the most specific route for a method and a (normalised) path, in a table of
//! 200 routes (see [`route_table`]): `GET` on an item of the last resource configured (its
//! `/v1/{r}/*` route), `DELETE` on the same item (which that route does not allow: it falls back
//! to `/v1/{r}/**`), `POST` four segments deep below a resource (`/v1/{r}/**`), and a path no
//! route matches (a 404).
//!
//! Token shape: `secret::parse_token` on a first-format secret (`sk_live_` and 40 characters), a
//! checksummed one (CRC32 checked), and a checksummed one with a wrong checksum; beside them,
//! the SHA-256 every well-formed token then costs, for scale.
//!
//! Case names spell out `*` and `:` because criterion turns them into `_` in its directory
//! names, which `scripts/bench-medians.py` prints. Every case is checked once (granted or not,
//! which route) before it is timed.
//!
//! Run: `cargo bench --bench matching`, then `scripts/bench-medians.py`.

use criterion::{Criterion, criterion_group, criterion_main};
use keygate::config::RouteAuth;
use keygate::routes::{RouteSpec, RouteTable};
use keygate::scopes::{KeyScopes, RequiredScope};
use std::hint::black_box;

/// Ten scopes of a broad integration key; none of them grants `invoices:write`.
const TEN_SCOPES: [&str; 10] = [
    "products:read",
    "products:write",
    "orders:read",
    "orders:write",
    "bookings:*",
    "data:geo:read",
    "data:seo:read",
    "reports:read",
    "reports:export",
    "*:list",
];

fn scopes(c: &mut Criterion) {
    // (name, the key's scopes, the route's required scope, granted)
    let cases: [(&str, &[&str], &str, bool); 8] = [
        ("exact hit", &["products:read"], "products:read", true),
        (
            "wildcard hit, resource star",
            &["products:*"],
            "products:write",
            true,
        ),
        (
            "wildcard hit, star read",
            &["*:read"],
            "products:read",
            true,
        ),
        ("wildcard hit, lone star", &["*"], "products:read", true),
        (
            "exact hit, 3 segments",
            &["data:geo:read"],
            "data:geo:read",
            true,
        ),
        (
            "wildcard hit, star read, 3 segments",
            &["*:read"],
            "data:geo:read",
            true,
        ),
        (
            "hit on the 10th of 10 scopes",
            &TEN_SCOPES,
            "customers:list",
            true,
        ),
        (
            "miss against 10 scopes",
            &TEN_SCOPES,
            "invoices:write",
            false,
        ),
    ];
    let mut group = c.benchmark_group("scope matching");
    for (name, held, required, granted) in cases {
        let key = KeyScopes::parse_list(held).unwrap();
        // As a route holds them: the gate asks whether the key grants all of a route's scopes.
        let required = [RequiredScope::parse(required).unwrap()];
        assert_eq!(key.grants_all(&required), granted, "{name}");
        group.bench_function(name, |b| {
            b.iter(|| black_box(&key).grants_all(black_box(&required)))
        });
    }
    group.finish();
}

/// Fifty resources of a public API, each given four routes below.
const RESOURCES: [&str; 50] = [
    "accounts",
    "addresses",
    "alerts",
    "api-keys",
    "applications",
    "attachments",
    "audit-events",
    "balances",
    "bookings",
    "campaigns",
    "carts",
    "catalogs",
    "categories",
    "channels",
    "charges",
    "checkouts",
    "comments",
    "contacts",
    "coupons",
    "customers",
    "datasets",
    "deliveries",
    "devices",
    "disputes",
    "documents",
    "domains",
    "events",
    "exports",
    "files",
    "fulfillments",
    "imports",
    "integrations",
    "inventory",
    "invoices",
    "locations",
    "messages",
    "notes",
    "notifications",
    "orders",
    "payments",
    "payouts",
    "plans",
    "prices",
    "products",
    "refunds",
    "reports",
    "reviews",
    "shipments",
    "subscriptions",
    "webhooks",
];

fn scoped(scope: &str) -> RouteAuth {
    RouteAuth::Scopes(Box::new([RequiredScope::parse(scope).unwrap()]))
}

/// 200 routes, four per resource, as a configuration would list them:
/// `GET, HEAD /v1/{r}` (list), `POST /v1/{r}` (create), `GET, HEAD /v1/{r}/*` (one item), and
/// `/v1/{r}/**` for any method (writes and sub-resources).
fn route_table() -> RouteTable<RouteAuth> {
    let mut specs = Vec::with_capacity(RESOURCES.len() * 4);
    let methods = |m: &[&str]| Some(m.iter().map(|s| s.to_string()).collect());
    for r in RESOURCES {
        let (read, write) = (format!("{r}:read"), format!("{r}:write"));
        specs.push(RouteSpec {
            name: format!("{r}-list"),
            methods: methods(&["GET", "HEAD"]),
            path: format!("/v1/{r}"),
            auth: scoped(&read),
        });
        specs.push(RouteSpec {
            name: format!("{r}-create"),
            methods: methods(&["POST"]),
            path: format!("/v1/{r}"),
            auth: scoped(&write),
        });
        specs.push(RouteSpec {
            name: format!("{r}-get"),
            methods: methods(&["GET", "HEAD"]),
            path: format!("/v1/{r}/*"),
            auth: scoped(&read),
        });
        specs.push(RouteSpec {
            name: format!("{r}-write"),
            methods: None,
            path: format!("/v1/{r}/**"),
            auth: scoped(&write),
        });
    }
    RouteTable::build(specs).unwrap()
}

fn routes(c: &mut Criterion) {
    let table = route_table();
    assert_eq!(table.routes().len(), 200);
    // (name, method, path, the route expected: None is a 404)
    let cases = [
        (
            "hit, last resource, star segment",
            "GET",
            "/v1/webhooks/wh_01J9ZK3M",
            Some("webhooks-get"),
        ),
        (
            "hit, method falls back to the subtree route",
            "DELETE",
            "/v1/webhooks/wh_01J9ZK3M",
            Some("webhooks-write"),
        ),
        (
            "hit, deep in a subtree",
            "POST",
            "/v1/subscriptions/sub_42/items/7/usage",
            Some("subscriptions-write"),
        ),
        ("miss (404)", "GET", "/v1/widgets/42", None),
    ];
    let mut group = c.benchmark_group("route matching, 200 routes");
    for (name, method, path, expected) in cases {
        assert_eq!(
            table.find(method, path).map(|r| r.name()),
            expected,
            "{name}"
        );
        group.bench_function(name, |b| {
            b.iter(|| {
                black_box(&table)
                    .find(black_box(method), black_box(path))
                    .map(|r| r.index())
            })
        });
    }
    group.finish();
}

fn token_shape(c: &mut Criterion) {
    use keygate::secret::{Env, KeyHash, generate, parse_token};
    let checksummed = generate(Env::Live);
    let mut wrong = checksummed.clone().into_bytes();
    let last = wrong.len() - 1;
    wrong[last] = if wrong[last] == b'0' { b'1' } else { b'0' };
    let wrong = String::from_utf8(wrong).unwrap();
    let first_format = format!("sk_live_{}", "Ab3".repeat(13) + "x");
    let cases = [
        ("first format", first_format.as_str(), true),
        ("checksummed", checksummed.as_str(), true),
        ("checksummed, wrong checksum", wrong.as_str(), false),
    ];
    let mut group = c.benchmark_group("token shape");
    for (name, token, good) in cases {
        assert_eq!(parse_token(token).is_some(), good, "{name}");
        group.bench_function(name, |b| b.iter(|| parse_token(black_box(token))));
    }
    group.bench_function("sha-256 of a checksummed secret", |b| {
        b.iter(|| KeyHash::of(black_box(&checksummed)))
    });
    group.finish();
}

/// A key's restrictions on their own, hot in cache: the decision bench's set (50 blocks, three
/// referrer patterns) checked against its allowed request, and each check alone.
fn restrictions(c: &mut Criterion) {
    use http::{HeaderMap, HeaderValue};
    use keygate::restrictions::KeyRestrictions;
    use keygate::snapshot::RestrictionsDoc;
    let ips: Vec<String> = (0..50).map(|b| format!("10.{b}.0.0/16")).collect();
    let referrers = vec![
        "https://app.example.com".to_owned(),
        "https://*.example.org".to_owned(),
        "https://docs.example.net/guide".to_owned(),
    ];
    let compile = |ips: Vec<String>, referrers: Vec<String>| {
        KeyRestrictions::compile(RestrictionsDoc {
            ips,
            referrers,
            endpoints: vec![],
        })
        .unwrap()
    };
    let both = compile(ips.clone(), referrers.clone());
    let ip_only = compile(ips, vec![]);
    let referrer_only = compile(vec![], referrers);
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        HeaderValue::from_static("Bearer sk_live_x"),
    );
    headers.insert(
        "referer",
        HeaderValue::from_static("https://shop.example.org/cart"),
    );
    let client = Some(std::net::IpAddr::from([10, 42, 7, 7]));
    let mut group = c.benchmark_group("restrictions");
    for (name, r) in [
        ("ip and referrer", &both),
        ("ip (50 blocks)", &ip_only),
        ("referrer (*. pattern)", &referrer_only),
    ] {
        assert_eq!(r.check(client, &headers, Some("products")), Ok(()));
        group.bench_function(name, |b| {
            b.iter(|| r.check(black_box(client), black_box(&headers), Some("products")))
        });
    }
    group.finish();
}

criterion_group!(benches, scopes, routes, token_shape, restrictions);
criterion_main!(benches);

//! Rate limits through the real proxy: 429s, their headers, and live changes to the limits.

mod common;

use common::http::{Connection, Echo, Request};
use common::*;
use std::time::{Duration, Instant};

const SANDBOX: &str = "sk_test_LIMITSsandbox0000000000000000001";
const SANDBOX_NOSCOPE: &str = "sk_test_LIMITSnoscope0000000000000000001";
const LIVE: &str = "sk_live_LIMITSlive00000000000000000000001";
const INTERNAL: &str = "sk_live_LIMITSinternal000000000000000001";

/// The test keys, in workspaces whose limits are overridden as given (`None`: the defaults).
fn keys(sandbox_limits: Option<LimitsDoc>, live_limits: Option<LimitsDoc>) -> Keys {
    Keys::new(1)
        .workspace_with_limits("ws_sandbox", WorkspaceKind::Sandbox, sandbox_limits)
        .workspace_with_limits("ws_live", WorkspaceKind::Live, live_limits)
        .key(
            "key_sandbox",
            SANDBOX,
            Some("ws_sandbox"),
            Some(&["products:read"]),
        )
        .key(
            "key_noscope",
            SANDBOX_NOSCOPE,
            Some("ws_sandbox"),
            Some(&[]),
        )
        .key("key_live", LIVE, Some("ws_live"), None)
        .key("key_internal", INTERNAL, None, Some(&["*"]))
}

/// keygate with limits on, at their defaults.
fn start(up: &Echo, keys: &Keys) -> Keygate {
    Keygate::start(Setup::new(up, keys).config(|c| c.limits.enabled = Some(true)))
}

#[test]
fn a_sandbox_keys_sixth_request_in_a_second_gets_429() {
    let up = Echo::start();
    let keys = keys(None, None);
    let kg = start(&up, &keys);
    let started = Instant::now();
    let mut remaining = Vec::new();
    for _ in 0..5 {
        let r = kg.get_with_key("/v1/products", SANDBOX);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-ratelimit-limit"), Some("5"));
        // Up to 1.05 s until the request leaves the ring (one 50 ms bucket of slack), rounded up.
        assert!(
            matches!(r.header("x-ratelimit-reset"), Some("1" | "2")),
            "{:?}",
            r.header("x-ratelimit-reset")
        );
        assert_eq!(
            r.header("ratelimit-policy"),
            Some("\"burst\";q=5;w=1, \"sustained\";q=100;w=60")
        );
        remaining.push(r.header("x-ratelimit-remaining").unwrap().to_owned());
    }
    assert_eq!(remaining, ["4", "3", "2", "1", "0"]);
    let r = kg.get_with_key("/v1/products", SANDBOX);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "too slow to test a 1 s limit"
    );
    assert_eq!(r.status, 429, "{}", r.text());
    let body = r.json();
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(body["limit"], "burst");
    let retry = body["retry_after"].as_u64().unwrap();
    assert_eq!(r.header("retry-after"), Some(retry.to_string().as_str()));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    assert!(
        r.header("ratelimit")
            .unwrap()
            .starts_with("\"burst\";r=0;t=")
    );
    assert_eq!(
        up.requests_seen(),
        5,
        "a limited request reached the upstream"
    );

    // Waiting as told is enough.
    std::thread::sleep(Duration::from_secs(retry));
    let r = kg.get_with_key("/v1/products", SANDBOX);
    assert_eq!(
        r.status,
        200,
        "refused after waiting Retry-After {retry}s: {}",
        r.text()
    );
}

#[test]
fn a_live_keys_3001st_request_in_a_minute_gets_429_sustained() {
    let up = Echo::start();
    // Lift the burst limit for this workspace so 3,000 requests fit in a few seconds.
    let keys = keys(
        None,
        Some(LimitsDoc {
            burst_per_second: Some(100_000),
            sustained_per_minute: None,
            concurrent_requests: None,
        }),
    );
    let kg = start(&up, &keys);
    let auth = bearer(LIVE);
    let mut conn = Connection::open(kg.addr).unwrap();
    let started = Instant::now();
    for i in 1..=3000 {
        let r = conn
            .send(&Request::get("/v1/me").header("Authorization", &auth))
            .unwrap();
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        if i == 2990 {
            // The sustained limit is now the closest to binding.
            assert_eq!(r.header("x-ratelimit-limit"), Some("3000"));
            assert_eq!(r.header("x-ratelimit-remaining"), Some("10"));
        }
    }
    let r = conn
        .send(&Request::get("/v1/me").header("Authorization", &auth))
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(50),
        "too slow to test a minute limit"
    );
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["limit"], "sustained");
    let retry = r.json()["retry_after"].as_u64().unwrap();
    assert!((1..=61).contains(&retry), "{retry}");
    assert_eq!(up.requests_seen(), 3000);
}

#[test]
fn every_authenticated_answer_carries_the_headers_and_counts() {
    let up = Echo::start();
    let keys = keys(None, None);
    let kg = start(&up, &keys);
    // 403s count against the workspace too.
    for expected in ["4", "3"] {
        let r = kg.get_with_key("/v1/products", SANDBOX_NOSCOPE);
        assert_eq!(r.status, 403);
        assert_eq!(r.header("x-ratelimit-remaining"), Some(expected));
    }
    // Same workspace, another key: the budget is the workspace's.
    let r = kg.get_with_key("/v1/products", SANDBOX);
    assert_eq!(r.header("x-ratelimit-remaining"), Some("2"));
    // Unauthenticated answers say nothing about any workspace's limits.
    for r in [
        kg.get("/v1/products", &[]),
        kg.get_with_key(
            "/v1/products",
            "sk_test_NOPE0000000000000000000000000000001",
        ),
    ] {
        assert_eq!(r.status, 401);
        assert_eq!(r.header("x-ratelimit-remaining"), None);
    }
    assert_eq!(kg.get("/health", &[]).header("x-ratelimit-limit"), None);
}

#[test]
fn internal_keys_are_not_throttled_unless_configured() {
    let up = Echo::start();
    let keys = keys(None, None);
    let kg = start(&up, &keys);
    let auth = bearer(INTERNAL);
    for _ in 0..40 {
        let r = kg.get(
            "/v1/products",
            &[("Authorization", &auth), ("x-workspace-id", "ws_sandbox")],
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-ratelimit-limit"), None);
    }
    // ...and do not use up the customer's budget.
    assert_eq!(
        kg.get_with_key("/v1/products", SANDBOX)
            .header("x-ratelimit-remaining"),
        Some("4")
    );

    let kg = Keygate::start(Setup::new(&up, &keys).config(|c| {
        c.limits = LimitsFile {
            internal: policy(Some(3), Some(1000)),
            ..LimitsFile::default()
        }
    }));
    let statuses: Vec<u16> = (0..4)
        .map(|_| {
            kg.get(
                "/v1/products",
                &[("Authorization", &auth), ("x-workspace-id", "ws_live")],
            )
            .status
        })
        .collect();
    assert_eq!(statuses, [200, 200, 200, 429]);
}

#[test]
fn a_limit_override_in_the_snapshot_applies_without_a_restart() {
    let up = Echo::start();
    let keys_before = keys(None, None);
    let kg = start(&up, &keys_before);
    assert_eq!(
        kg.get_with_key("/v1/products", SANDBOX)
            .header("x-ratelimit-limit"),
        Some("5")
    );
    kg.replace_keys(
        &keys(
            Some(LimitsDoc {
                burst_per_second: Some(40),
                sustained_per_minute: Some(500),
                concurrent_requests: None,
            }),
            None,
        )
        .yaml(),
    );
    let applied = within(Duration::from_secs(1), || {
        kg.get_with_key("/v1/me", SANDBOX_NOSCOPE)
            .header("ratelimit-policy")
            == Some("\"burst\";q=40;w=1, \"sustained\";q=500;w=60")
    });
    assert!(applied.is_some(), "the new limits were not applied");
    // The count so far survived the swap: the state is the workspace's, not the snapshot's.
    let r = kg.get_with_key("/v1/products", SANDBOX);
    let remaining: u32 = r.header("x-ratelimit-remaining").unwrap().parse().unwrap();
    assert!(remaining < 40 - 1, "{remaining}");
    for _ in 0..20 {
        assert_eq!(kg.get_with_key("/v1/products", SANDBOX).status, 200);
    }
}

#[test]
fn limits_can_be_turned_off() {
    let up = Echo::start();
    let keys = keys(None, None);
    let kg = Keygate::start(Setup::new(&up, &keys));
    for _ in 0..20 {
        let r = kg.get_with_key("/v1/products", SANDBOX);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-ratelimit-limit"), None);
    }
}

#[test]
fn limits_headers_chooses_the_rate_limit_headers_and_429_keeps_retry_after() {
    let up = Echo::start();
    let keys = keys(None, None);
    let names = ["x-ratelimit-limit", "ratelimit-policy", "ratelimit"];
    for (headers, present) in [
        ("ietf", [false, true, true]),
        ("x-ratelimit", [true, false, false]),
        ("none", [false, false, false]),
    ] {
        let kg = Keygate::start(Setup::new(&up, &keys).config(|c| {
            c.limits.enabled = Some(true);
            c.limits.headers = Some(headers.into());
        }));
        let r = kg.get_with_key("/v1/products", SANDBOX);
        assert_eq!(r.status, 200);
        for (name, want) in names.iter().zip(present) {
            assert_eq!(r.header(name).is_some(), want, "{headers}: {name}");
        }
        // Over the limit: Retry-After whatever the choice, the rest as chosen.
        let refused = (0..10)
            .map(|_| kg.get_with_key("/v1/products", SANDBOX))
            .find(|r| r.status == 429)
            .expect("a 429 within 10 requests at 5/s");
        assert!(refused.header("retry-after").is_some(), "{headers}");
        for (name, want) in names.iter().zip(present) {
            assert_eq!(
                refused.header(name).is_some(),
                want,
                "429, {headers}: {name}"
            );
        }
    }
}

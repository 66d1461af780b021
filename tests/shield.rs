//! The failed-authentication shield through the real binary. Addresses other than loopback come
//! from a trusted proxy's X-Forwarded-For (the peer, 127.0.0.1, is trusted).

mod common;

use common::http::{Echo, Response};
use common::*;
use keygate::config::file::ClientAddressFile;
use std::thread::sleep;
use std::time::Duration;

const GOOD: &str = "sk_live_SHIELDGOODKEY0000000000000000000001";
const BAD: &str = "sk_live_SHIELDWRONGKEY000000000000000000001";

fn start(up: &Echo, failures_per_minute: u32, exempt: &[&str]) -> Keygate {
    let keys = Keys::new(1).workspace("ws", WorkspaceKind::Live).key(
        "key_good",
        GOOD,
        Some("ws"),
        Some(&["*"]),
    );
    let exempt: Vec<String> = exempt.iter().map(|s| s.to_string()).collect();
    Keygate::start(Setup::new(up, &keys).config(|c| {
        c.client_address = ClientAddressFile {
            trusted_proxies: vec!["127.0.0.1".into()],
            from: None,
        };
        c.shield = ShieldFile {
            enabled: Some(true),
            failures_per_minute: Some(failures_per_minute),
            cooldown: Some(Duration::from_secs(2)),
            exempt,
        };
    }))
}

fn from(kg: &Keygate, addr: &str, key: &str) -> Response {
    let auth = format!("Bearer {key}");
    kg.get(
        "/v1/me",
        &[("Authorization", auth.as_str()), ("X-Forwarded-For", addr)],
    )
}

#[test]
fn a_flooding_address_is_refused_with_its_valid_keys_then_recovers_and_others_are_unaffected() {
    let up = Echo::start();
    let kg = start(&up, 5, &[]);
    let attacker = "203.0.113.9";
    for i in 0..5 {
        assert_eq!(from(&kg, attacker, BAD).status, 401, "failure {i}");
    }
    // Shielded: a valid key from there gets the same 429 as a bad one, without a lookup.
    let refused = from(&kg, attacker, GOOD);
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert_eq!(refused.json()["code"], "too_many_failures");
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=3).contains(&retry), "Retry-After {retry}");
    assert_eq!(from(&kg, attacker, BAD).body, refused.body);
    let unknown_before = kg
        .metric(r#"keygate_auth_failures_total{reason="unknown"}"#)
        .unwrap_or(0.0);
    from(&kg, attacker, BAD);
    assert_eq!(
        kg.metric(r#"keygate_auth_failures_total{reason="unknown"}"#)
            .unwrap_or(0.0),
        unknown_before,
        "a shielded request is not looked up"
    );
    // A neighbour, and an IPv6 client, are unaffected.
    assert_eq!(from(&kg, "203.0.113.10", GOOD).status, 200);
    assert_eq!(from(&kg, "2001:db8::1", GOOD).status, 200);
    assert_eq!(kg.metric("keygate_shielded_addresses"), Some(1.0));
    assert_eq!(kg.metric("keygate_shield_trips_total"), Some(1.0));
    assert!(kg.metric("keygate_shield_refusals_total").unwrap() >= 3.0);
    // After the cool-down, the valid key works again.
    sleep(Duration::from_millis(2_100));
    let r = from(&kg, attacker, GOOD);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.requests_seen(), 3);
}

#[test]
fn an_exempt_address_is_never_shielded_and_ipv6_counts_by_its_64() {
    let up = Echo::start();
    let kg = start(&up, 3, &["198.51.100.0/24"]);
    for _ in 0..20 {
        assert_eq!(from(&kg, "198.51.100.7", BAD).status, 401);
    }
    assert_eq!(from(&kg, "198.51.100.7", GOOD).status, 200);
    // Three failures spread over one /64 shield all of it; the next /64 is unaffected.
    for host in ["2001:db8:0:1::1", "2001:db8:0:1::2", "2001:db8:0:1::3"] {
        assert_eq!(from(&kg, host, BAD).status, 401);
    }
    assert_eq!(from(&kg, "2001:db8:0:1::99", GOOD).status, 429);
    assert_eq!(from(&kg, "2001:db8:0:2::1", GOOD).status, 200);
}

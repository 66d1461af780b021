//! Key restrictions through the real binary: IP addresses and blocks (directly and behind a
//! trusted proxy), referrers, endpoints; what the refusal says, what it counts, and where it
//! falls among the other checks.

mod common;

use common::http::{Echo, Response};
use common::*;
use keygate::config::file::ClientAddressFile;
use std::time::Duration;

const BY_IP: &str = "sk_live_RESTRICTEDBYIP000000000000000000001";
const LOOPBACK_ONLY: &str = "sk_live_RESTRICTEDLOOPBACK00000000000000001";
const BY_REFERRER: &str = "sk_live_RESTRICTEDBYREFERRER0000000000000001";
const BY_ENDPOINT: &str = "sk_live_RESTRICTEDBYENDPOINT0000000000000001";
const BY_IP_NO_SCOPE: &str = "sk_live_RESTRICTEDNOSCOPE00000000000000001";

fn keys() -> Keys {
    Keys::new(1)
        .workspace("ws", WorkspaceKind::Live)
        .key("key_by_ip", BY_IP, Some("ws"), Some(&["*"]))
        .restricted(
            &["203.0.113.0/24", "198.51.100.7", "2001:db8::/32"],
            &[],
            &[],
        )
        .key("key_loopback", LOOPBACK_ONLY, Some("ws"), Some(&["*"]))
        .restricted(&["127.0.0.1"], &[], &[])
        .key("key_by_referrer", BY_REFERRER, Some("ws"), Some(&["*"]))
        .restricted(
            &[],
            &["https://app.example.com", "https://*.example.org"],
            &[],
        )
        .key("key_by_endpoint", BY_ENDPOINT, Some("ws"), Some(&["*"]))
        .restricted(&[], &[], &["products-read"])
        .key(
            "key_no_scope",
            BY_IP_NO_SCOPE,
            Some("ws"),
            Some(&["orders:read"]),
        )
        .restricted(&["203.0.113.0/24"], &[], &[])
}

fn start(up: &Echo, trusted: &[&str]) -> Keygate {
    let trusted: Vec<String> = trusted.iter().map(|s| s.to_string()).collect();
    Keygate::start(Setup::new(up, &keys()).config(|c| {
        c.client_address = ClientAddressFile {
            trusted_proxies: trusted,
            from: None,
        };
    }))
}

fn get(kg: &Keygate, key: &str, headers: &[(&str, &str)]) -> Response {
    get_path(kg, "/v1/products", key, headers)
}

fn get_path(kg: &Keygate, path: &str, key: &str, headers: &[(&str, &str)]) -> Response {
    let auth = format!("Bearer {key}");
    let mut all = vec![("Authorization", auth.as_str())];
    all.extend_from_slice(headers);
    kg.get(path, &all)
}

/// A 403 `key_restricted` naming `kind`, and nothing of what the key allows.
#[track_caller]
fn assert_restricted(r: &Response, kind: &str) {
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = r.json();
    assert_eq!(body["code"], "key_restricted", "{body}");
    assert_eq!(body["restriction"], kind, "{body}");
    for allowed in [
        "203.0.113",
        "198.51.100",
        "2001:db8",
        "example",
        "products-read",
    ] {
        assert!(
            !r.text().contains(allowed),
            "the answer shows {allowed}: {}",
            r.text()
        );
    }
}

#[test]
fn an_ip_restricted_key_works_only_from_its_addresses() {
    let up = Echo::start();
    // No trusted proxy: the peer (127.0.0.1) is the client.
    let kg = start(&up, &[]);
    assert_restricted(&get(&kg, BY_IP, &[]), "ip");
    assert_eq!(get(&kg, LOOPBACK_ONLY, &[]).status, 200);
    // A forwarding header from an untrusted peer never unlocks a key.
    for spoof in ["203.0.113.9", "198.51.100.7", "2001:db8::1"] {
        let r = get(&kg, BY_IP, &[("X-Forwarded-For", spoof)]);
        assert_restricted(&r, "ip");
        let r = get(&kg, BY_IP, &[("Forwarded", &format!("for=\"{spoof}\""))]);
        assert_restricted(&r, "ip");
    }
    assert_eq!(up.requests_seen(), 1);
}

#[test]
fn behind_a_trusted_proxy_the_forwarded_client_is_checked() {
    let up = Echo::start();
    let kg = start(&up, &["127.0.0.1"]);
    for allowed in [
        "203.0.113.9",        // in a listed block
        "198.51.100.7",       // a listed address
        "2001:db8:1::5",      // IPv6, in a listed block
        "::ffff:203.0.113.9", // IPv4-mapped IPv6
        "[2001:db8::7]:4711", // with a port
    ] {
        let r = get(&kg, BY_IP, &[("X-Forwarded-For", allowed)]);
        assert_eq!(r.status, 200, "{allowed}: {}", r.text());
    }
    for refused in ["198.51.100.8", "192.0.2.1", "2001:db9::1"] {
        assert_restricted(&get(&kg, BY_IP, &[("X-Forwarded-For", refused)]), "ip");
    }
    // The client's own claim, left of what the trusted proxy appended, is not read.
    let r = get(&kg, BY_IP, &[("X-Forwarded-For", "203.0.113.9, 192.0.2.1")]);
    assert_restricted(&r, "ip");
    // Now the peer is a proxy, not the client: the loopback-only key no longer passes from
    // behind it.
    let r = get(&kg, LOOPBACK_ONLY, &[("X-Forwarded-For", "192.0.2.1")]);
    assert_restricted(&r, "ip");
}

#[test]
fn a_referrer_restricted_key_needs_a_listed_referer_or_origin() {
    let up = Echo::start();
    let kg = start(&up, &[]);
    for (name, value) in [
        ("Referer", "https://app.example.com/dashboard?tab=2"),
        ("Referer", "https://shop.example.org/"),
        ("Origin", "https://app.example.com"),
    ] {
        let r = get(&kg, BY_REFERRER, &[(name, value)]);
        assert_eq!(r.status, 200, "{name}: {value}: {}", r.text());
    }
    for (name, value) in [
        ("Referer", "https://app.example.com.evil.test/"),
        ("Referer", "http://app.example.com/"),
        ("Referer", "https://example.org/"),
        ("Origin", "https://evil.test"),
    ] {
        assert_restricted(&get(&kg, BY_REFERRER, &[(name, value)]), "referrer");
    }
    // Neither header: refused.
    assert_restricted(&get(&kg, BY_REFERRER, &[]), "referrer");
}

#[test]
fn an_endpoint_restricted_key_calls_only_its_routes() {
    let up = Echo::start();
    let kg = start(&up, &[]);
    assert_eq!(get(&kg, BY_ENDPOINT, &[]).status, 200);
    let r = kg.send(
        &common::http::Request::post("/v1/products", b"{}")
            .header("Authorization", &format!("Bearer {BY_ENDPOINT}")),
    );
    assert_restricted(&r, "endpoint");
    assert_restricted(
        &get_path(&kg, "/v1/data/geo/fr", BY_ENDPOINT, &[]),
        "endpoint",
    );
}

#[test]
fn refusals_are_counted_by_kind_logged_with_the_key_and_come_before_scopes() {
    let up = Echo::start();
    let kg = start(&up, &[]);
    // Lacking the route's scope and used from the wrong address: the restriction answers,
    // so a misused key learns nothing about its scopes.
    assert_restricted(&get(&kg, BY_IP_NO_SCOPE, &[]), "ip");
    assert_restricted(&get(&kg, BY_IP, &[]), "ip");
    assert_restricted(&get(&kg, BY_REFERRER, &[]), "referrer");
    let count = |kind: &str| {
        kg.metric(&format!(
            r#"keygate_key_restricted_total{{restriction="{kind}"}}"#
        ))
        .unwrap_or(0.0)
    };
    assert_eq!(
        (count("ip"), count("referrer"), count("endpoint")),
        (2.0, 1.0, 0.0)
    );
    let logged = within(Duration::from_secs(2), || kg.access_log().len() == 3);
    assert!(logged.is_some(), "{}", kg.access_log_text());
    // Each line is logged once its response is sent, by the thread that served it: lines of
    // requests on different connections may come in either order.
    let log = kg.access_log();
    let line = log
        .iter()
        .find(|l| l["key_id"] == "key_by_ip")
        .expect("the refused key's line names it");
    assert_eq!(line["status"], 403);
    assert_eq!(line["reason"], "restricted_ip");
}

#[test]
fn restricted_requests_count_against_the_workspaces_limits() {
    let up = Echo::start();
    let keys = keys();
    let kg = Keygate::start(Setup::new(&up, &keys).config(|c| {
        c.limits = LimitsFile {
            enabled: Some(true),
            live: policy(Some(3), Some(100)),
            ..LimitsFile::default()
        };
    }));
    for _ in 0..3 {
        assert_restricted(&get(&kg, BY_REFERRER, &[]), "referrer");
    }
    // The burst of 3 is spent by the refusals: a request that passes its restriction is 429.
    let r = get(&kg, BY_REFERRER, &[("Referer", "https://app.example.com/")]);
    assert_eq!(r.status, 429, "{}", r.text());
}

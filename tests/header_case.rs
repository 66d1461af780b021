//! Header names' letter case on the wire, both ways through the real proxy: by default the
//! names keygate forwards and passes back go out in lower case (a few common ones, such as
//! `Host` and `Content-Type`, titled); with `upstream.preserve_header_case: true` each keeps its
//! sender's spelling. Either way the same headers arrive, and a client's spoofed identity never
//! does.

mod common;

use common::http::{Echo, Request, Response};
use common::*;

const KEY: &str = "sk_live_HEADERCASE000000000000000000000001";

fn keys() -> Keys {
    Keys::new(1).workspace("ws_case", WorkspaceKind::Live).key(
        "key_case",
        KEY,
        Some("ws_case"),
        Some(&["products:read"]),
    )
}

/// One authenticated request with headers of the client's own spelling, through keygate with
/// limits on (so the response carries the rate-limit headers). Returns what the client got and
/// the headers the upstream saw, names as each received them.
fn exchange(preserve_header_case: bool) -> (Response, Vec<(String, String)>) {
    let up = Echo::start();
    let keys = keys();
    let kg = Keygate::start(Setup::new(&up, &keys).config(|c| {
        c.limits.enabled = Some(true);
        c.upstream.preserve_header_case = preserve_header_case;
    }));
    let bearer = bearer(KEY);
    let req = Request::get("/v1/products/1")
        .header("Authorization", &bearer)
        .header("X-Custom-Thing", "kept")
        .header("X_Workspace_Id", "ws_spoofed")
        .header("X-API-KEY-ID", "key_spoofed");
    let r = kg.send(&req);
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = upstream_headers(&r);
    (r, seen)
}

fn names(headers: &[(String, String)]) -> Vec<&str> {
    headers.iter().map(|(n, _)| n.as_str()).collect()
}

/// The same headers, whatever their case: identity set once, the spoofed copies and the key gone.
fn assert_same_headers_arrive(r: &Response, seen: &[(String, String)]) {
    let value = |name: &str| -> Vec<&str> {
        seen.iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(value("x-workspace-id"), ["ws_case"], "{seen:?}");
    assert_eq!(value("x-api-key-id"), ["key_case"], "{seen:?}");
    assert_eq!(value("x-api-key-scopes"), ["products:read"], "{seen:?}");
    assert_eq!(value("x-client-ip"), ["127.0.0.1"], "{seen:?}");
    assert_eq!(value("x-forwarded-for"), ["127.0.0.1"], "{seen:?}");
    assert_eq!(value("x-custom-thing"), ["kept"], "{seen:?}");
    assert!(value("authorization").is_empty(), "{seen:?}");
    assert!(
        !names(seen).iter().any(|n| n.contains('_')),
        "an underscore spelling got through: {seen:?}"
    );
    assert_eq!(r.header("x-served-by"), Some("echo"));
    assert_eq!(r.header("x-ratelimit-limit"), Some("30"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("29"));
    assert!(r.header("ratelimit-policy").is_some(), "{:?}", r.headers);
    assert!(r.header("ratelimit").is_some(), "{:?}", r.headers);
}

#[test]
fn by_default_forwarded_and_passed_back_names_go_out_in_lower_case() {
    let (r, seen) = exchange(false);
    assert_same_headers_arrive(&r, &seen);
    let upstream_saw = names(&seen);
    assert!(upstream_saw.contains(&"x-custom-thing"), "{upstream_saw:?}");
    assert!(upstream_saw.contains(&"Host"), "{upstream_saw:?}");
    for name in &upstream_saw {
        assert!(
            *name == "Host" || *name == name.to_ascii_lowercase(),
            "{name} kept its case: {upstream_saw:?}"
        );
    }
    let client_got = names(&r.headers);
    for want in [
        "x-served-by",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "ratelimit-policy",
        "ratelimit",
        "Content-Type",
    ] {
        assert!(client_got.contains(&want), "{want}: {client_got:?}");
    }
}

#[test]
fn preserve_header_case_keeps_each_senders_spelling() {
    let (r, seen) = exchange(true);
    assert_same_headers_arrive(&r, &seen);
    let upstream_saw = names(&seen);
    for want in [
        "X-Custom-Thing",
        "Host",
        "x-workspace-id",
        "x-forwarded-for",
    ] {
        assert!(upstream_saw.contains(&want), "{want}: {upstream_saw:?}");
    }
    let client_got = names(&r.headers);
    for want in [
        "X-Served-By",
        "X-RateLimit-Limit",
        "X-RateLimit-Remaining",
        "X-RateLimit-Reset",
        "RateLimit-Policy",
        "RateLimit",
        "Content-Type",
    ] {
        assert!(client_got.contains(&want), "{want}: {client_got:?}");
    }
}

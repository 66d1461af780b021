//! The request path through the real binary: credentials, scopes, routes, workspaces, headers.

mod common;

use common::http::{Echo, Request};
use common::*;

const READER: &str = "sk_test_READER000000000000000000000000001";
const WRITER: &str = "sk_live_WRITER000000000000000000000000001";
const LEGACY: &str = "sk_live_LEGACY000000000000000000000000001";
const BASIC: &str = "sk_live_BASIC0000000000000000000000000001";
const REVOKED: &str = "sk_live_REVOKED00000000000000000000000001";
const EXPIRED: &str = "sk_live_EXPIRED00000000000000000000000001";
const FUTURE: &str = "sk_live_FUTURE000000000000000000000000001";
const INTERNAL: &str = "sk_live_INTERNAL0000000000000000000000001";
const INTERNAL_TEST: &str = "sk_test_INTERNAL0000000000000000000000001";
const WRONG_ENV: &str = "sk_live_WRONGENV0000000000000000000000001";
const UNKNOWN: &str = "sk_live_UNKNOWN00000000000000000000000001";

fn keys() -> Keys {
    Keys::new(7)
        .workspace("ws_sandbox", WorkspaceKind::Sandbox)
        .workspace("ws_live", WorkspaceKind::Live)
        .workspace("ws_other", WorkspaceKind::Live)
        .key(
            "key_reader",
            READER,
            Some("ws_sandbox"),
            Some(&["products:read"]),
        )
        .key(
            "key_writer",
            WRITER,
            Some("ws_live"),
            Some(&["products:*", "*:read"]),
        )
        .key("key_legacy", LEGACY, Some("ws_live"), None)
        .key("key_basic", BASIC, Some("ws_live"), Some(&[]))
        .key("key_revoked", REVOKED, Some("ws_live"), Some(&["*"]))
        .revoked()
        .key("key_expired", EXPIRED, Some("ws_live"), Some(&["*"]))
        .expires_at("2020-01-01T00:00:00Z")
        .key("key_future", FUTURE, Some("ws_live"), Some(&["*"]))
        .expires_at("2999-01-01T00:00:00Z")
        .key("key_internal", INTERNAL, None, Some(&["*"]))
        .key("key_internal_test", INTERNAL_TEST, None, Some(&["*"]))
        // An sk_live_ secret registered to a sandbox workspace.
        .key("key_wrong_env", WRONG_ENV, Some("ws_sandbox"), Some(&["*"]))
}

fn start(upstream: &Echo) -> Keygate {
    Keygate::start(Setup::new(upstream, &keys()))
}

#[test]
fn a_valid_key_is_forwarded_with_its_identity_and_without_the_key() {
    let up = Echo::start();
    let kg = start(&up);
    let r = kg.get_with_key("/v1/products/42?expand=1", READER);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["path"], "/v1/products/42?expand=1");
    assert_eq!(
        upstream_header(&r, "x-workspace-id").as_deref(),
        Some("ws_sandbox")
    );
    assert_eq!(
        upstream_header(&r, "x-workspace-type").as_deref(),
        Some("sandbox")
    );
    assert_eq!(
        upstream_header(&r, "x-api-key-id").as_deref(),
        Some("key_reader")
    );
    assert_eq!(
        upstream_header(&r, "x-api-key-scopes").as_deref(),
        Some("products:read")
    );
    assert_eq!(upstream_header(&r, "authorization"), None);
    assert_eq!(up.requests_seen(), 1);
}

#[test]
fn refused_credentials_get_401_and_look_alike() {
    let up = Echo::start();
    let kg = start(&up);

    let missing = kg.get("/v1/products", &[]);
    assert_eq!(missing.status, 401);
    assert_eq!(missing.header("www-authenticate"), Some("Bearer"));
    assert_eq!(missing.header("content-type"), Some("application/json"));
    assert_eq!(missing.json()["error"], "Unauthorized");
    assert_eq!(missing.json()["code"], "missing_credentials");

    let refused = [
        ("malformed", "Bearer not-a-key".to_string()),
        ("wrong scheme", format!("Basic {READER}")),
        ("unknown", bearer(UNKNOWN)),
        ("revoked", bearer(REVOKED)),
        ("expired", bearer(EXPIRED)),
        ("wrong environment", bearer(WRONG_ENV)),
    ];
    let mut bodies = Vec::new();
    for (what, auth) in &refused {
        let r = kg.get("/v1/products", &[("Authorization", auth)]);
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        let challenge = r.header("www-authenticate").unwrap_or_default();
        assert!(challenge.starts_with("Bearer"), "{what}: {challenge}");
        assert_eq!(r.json()["code"], "invalid_credentials", "{what}");
        bodies.push((what, r.body));
    }
    for (what, body) in &bodies {
        assert_eq!(body, &bodies[0].1, "{what} differs from {}", bodies[0].0);
    }
    assert_eq!(
        up.requests_seen(),
        0,
        "a refused request reached the upstream"
    );

    // The expiry is checked against the clock, not merely for presence.
    assert_eq!(kg.get_with_key("/v1/products", FUTURE).status, 200);
}

#[test]
fn a_checksummed_key_works_and_one_changed_character_is_refused_before_lookup() {
    use keygate::secret::{Env, generate};
    let checksummed = generate(Env::Live);
    // The same secret with one random character changed, registered as a key of its own: a
    // lookup would find it, so only the checksum can refuse it.
    let mut altered = checksummed.clone().into_bytes();
    altered[20] = if altered[20] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    let keys = keys()
        .key(
            "key_checksummed",
            &checksummed,
            Some("ws_live"),
            Some(&["*"]),
        )
        .key("key_altered", &altered, Some("ws_live"), Some(&["*"]));
    let up = Echo::start();
    let kg = Keygate::start(Setup::new(&up, &keys));
    let failures = |reason: &str| {
        kg.metric(&format!(
            r#"keygate_auth_failures_total{{reason="{reason}"}}"#
        ))
        .unwrap_or(0.0)
    };

    let r = kg.get_with_key("/v1/products", &checksummed);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        upstream_header(&r, "x-api-key-id").as_deref(),
        Some("key_checksummed")
    );
    assert_eq!(
        kg.get_with_key("/v1/products", WRITER).status,
        200,
        "a key of the first format still works"
    );

    let (malformed, unknown) = (failures("malformed"), failures("unknown"));
    let refused = kg.get_with_key("/v1/products", &altered);
    assert_eq!(refused.status, 401, "{}", refused.text());
    let unknown_key = kg.get_with_key("/v1/products", UNKNOWN);
    assert_eq!(
        refused.body, unknown_key.body,
        "the same 401 as any refused key"
    );
    assert_eq!(
        failures("malformed"),
        malformed + 1.0,
        "counted as malformed"
    );
    assert_eq!(
        failures("unknown"),
        unknown + 1.0,
        "only the unknown key was looked up"
    );
    assert_eq!(up.requests_seen(), 2);
}

#[test]
fn scheme_is_case_insensitive() {
    let up = Echo::start();
    let kg = start(&up);
    for scheme in ["bearer", "BEARER", "BeArEr"] {
        let auth = format!("{scheme} {READER}");
        assert_eq!(
            kg.get("/v1/products", &[("Authorization", &auth)]).status,
            200,
            "{scheme}"
        );
    }
}

#[test]
fn a_missing_scope_gets_403_naming_it() {
    let up = Echo::start();
    let kg = start(&up);
    let r = kg.send(&Request::post("/v1/products", b"{}").header("Authorization", &bearer(READER)));
    assert_eq!(r.status, 403, "{}", r.text());
    let body = r.json();
    assert_eq!(body["error"], "Forbidden");
    assert_eq!(body["code"], "insufficient_scope");
    assert_eq!(
        body["missing_scopes"],
        serde_json::json!(["products:write"])
    );
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer error="insufficient_scope", scope="products:write""#)
    );
    // Wildcards: products:* writes, *:read reads geo data; the reader holds neither.
    let w = kg.send(&Request::post("/v1/products", b"{}").header("Authorization", &bearer(WRITER)));
    assert_eq!(w.status, 200, "{}", w.text());
    assert_eq!(kg.get_with_key("/v1/data/geo/fr", WRITER).status, 200);
    assert_eq!(kg.get_with_key("/v1/data/geo/fr", READER).status, 403);
    assert_eq!(up.requests_seen(), 2);
}

#[test]
fn legacy_and_base_only_keys() {
    let up = Echo::start();
    let kg = start(&up);
    // No scopes field: everything.
    let r = kg.get_with_key("/v1/data/geo/x", LEGACY);
    assert_eq!(r.status, 200);
    assert_eq!(
        upstream_header(&r, "x-api-key-scopes").as_deref(),
        Some("*")
    );
    assert_eq!(kg.get_with_key("/v1/me", LEGACY).status, 200);
    // `scopes: []`: only routes that name no scope.
    let me = kg.get_with_key("/v1/me", BASIC);
    assert_eq!(me.status, 200);
    assert_eq!(
        upstream_header(&me, "x-api-key-scopes").as_deref(),
        Some("")
    );
    assert_eq!(kg.get_with_key("/v1/products", BASIC).status, 403);
}

#[test]
fn public_routes_need_no_key_and_never_forward_one() {
    let up = Echo::start();
    let kg = start(&up);
    assert_eq!(kg.get("/health", &[]).status, 200);
    let r = kg.get(
        "/health",
        &[
            ("Authorization", &bearer(READER)),
            ("X-Workspace-Id", "ws_other"),
        ],
    );
    assert_eq!(r.status, 200);
    assert_eq!(upstream_header(&r, "authorization"), None);
    assert_eq!(upstream_header(&r, "x-workspace-id"), None);
    // The route is GET only: a POST to it matches nothing.
    assert_eq!(kg.send(&Request::post("/health", b"")).status, 404);
}

#[test]
fn unmatched_requests_get_the_configured_default() {
    let up = Echo::start();
    let deny = start(&up);
    let r = deny.get_with_key("/v2/anything", LEGACY);
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["code"], "no_route");

    let keys = keys();
    let auth =
        Keygate::start(Setup::new(&up, &keys).config(|c| c.unmatched = Unmatched::Authenticate));
    assert_eq!(auth.get("/v2/anything", &[]).status, 401);
    assert_eq!(auth.get_with_key("/v2/anything", UNKNOWN).status, 401);
    let r = auth.get_with_key("/v2/anything", BASIC);
    assert_eq!(r.status, 200);
    assert_eq!(
        upstream_header(&r, "x-api-key-id").as_deref(),
        Some("key_basic")
    );
}

#[test]
fn internal_keys_name_their_workspace() {
    let up = Echo::start();
    let kg = start(&up);
    let auth = bearer(INTERNAL);
    let r = kg.get(
        "/v1/products",
        &[("Authorization", &auth), ("x-workspace-id", "ws_other")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        upstream_header(&r, "x-workspace-id").as_deref(),
        Some("ws_other")
    );
    assert_eq!(
        upstream_header(&r, "x-workspace-type").as_deref(),
        Some("live")
    );

    let none = kg.get("/v1/products", &[("Authorization", &auth)]);
    assert_eq!(none.status, 400);
    assert_eq!(none.json()["code"], "workspace_required");
    let empty = kg.get(
        "/v1/products",
        &[("Authorization", &auth), ("x-workspace-id", "")],
    );
    assert_eq!(empty.status, 400);
    let unknown = kg.get(
        "/v1/products",
        &[("Authorization", &auth), ("X-Workspace-Id", "ws_nope")],
    );
    assert_eq!(unknown.status, 403);
    assert_eq!(unknown.json()["code"], "unknown_workspace");
    // Only the canonical header names a workspace; an underscore spelling does not.
    let underscore = kg.get(
        "/v1/products",
        &[("Authorization", &auth), ("x_workspace_id", "ws_other")],
    );
    assert_eq!(underscore.status, 400);

    // A test credential never reaches live data: an internal sk_test_ key names sandbox
    // workspaces only, and a live one is unknown to it.
    let test_auth = bearer(INTERNAL_TEST);
    let named = |id| {
        kg.get(
            "/v1/products",
            &[("Authorization", &test_auth), ("x-workspace-id", id)],
        )
    };
    assert_eq!(named("ws_sandbox").status, 200);
    let live = named("ws_live");
    assert_eq!(live.status, 403, "{}", live.text());
    assert_eq!(live.json()["code"], "unknown_workspace");
}

#[test]
fn spoofed_identity_headers_are_replaced_in_every_spelling() {
    let up = Echo::start();
    let kg = start(&up);
    let auth = bearer(READER);
    let spoofed = [
        "x-workspace-id",
        "X-Workspace-Id",
        "X-WORKSPACE-ID",
        "x_workspace_id",
        "X_Workspace_Id",
        "x-workspace_id",
        "x-api-key-id",
        "X_API_KEY_ID",
        "x-api-key-scopes",
        "X_Api_Key_Scopes",
        "x-workspace-type",
        "X_WORKSPACE_TYPE",
        "x-client-ip",
        "X_Client_IP",
        "x-auth-type",
        "X_Auth_Type",
        "X-Forwarded-For",
        "x_forwarded_for",
    ];
    let mut req = Request::get("/v1/products").header("Authorization", &auth);
    for name in spoofed {
        req = req.header(name, "spoofed");
    }
    let r = kg.send(&req);
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = upstream_headers(&r);
    for (name, value) in &seen {
        assert_ne!(value, "spoofed", "{name} reached the upstream");
    }
    let identity: Vec<_> = seen
        .iter()
        .filter(|(n, _)| n.to_ascii_lowercase().replace('_', "-").starts_with("x-"))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
        .collect();
    assert_eq!(
        identity,
        vec![
            ("x-workspace-id".into(), "ws_sandbox".into()),
            ("x-workspace-type".into(), "sandbox".into()),
            ("x-api-key-id".into(), "key_reader".into()),
            ("x-api-key-scopes".into(), "products:read".into()),
            ("x-auth-type".into(), "api_key".into()),
            // With no trusted proxy configured, the peer is the client (tests/client_address.rs).
            ("x-forwarded-for".into(), "127.0.0.1".into()),
            ("x-client-ip".into(), "127.0.0.1".into()),
        ]
    );
}

#[test]
fn every_spelling_of_a_path_hits_its_route() {
    let up = Echo::start();
    let kg = start(&up);
    // BASIC holds no scope: a 403 proves the scoped route was found; the reader then shows the
    // upstream receives the canonical path.
    for spelling in [
        "/v1/products",
        "/v1//products",
        "/v1/./products",
        "/v1/%70roducts",
        "/v1/%70%72oducts/",
        "/v1/me/../products",
        "/v1/me/%2e%2e/products",
        "//v1///products",
    ] {
        assert_eq!(kg.get_with_key(spelling, BASIC).status, 403, "{spelling}");
        let r = kg.get_with_key(spelling, READER);
        assert_eq!(r.status, 200, "{spelling}");
        let forwarded = r.json()["path"].as_str().unwrap().to_owned();
        assert!(
            forwarded == "/v1/products" || forwarded == "/v1/products/",
            "{spelling} forwarded as {forwarded}"
        );
    }
    // Geo data stays behind its scope however the path is dressed up.
    for spelling in [
        "/v1/data/geo/fr",
        "/v1/data//geo/fr",
        "/v1/data/x/../geo/fr",
        "/v1/dat%61/geo/fr",
    ] {
        assert_eq!(kg.get_with_key(spelling, READER).status, 403, "{spelling}");
    }
    // Encoded separators would let an upstream see another path than the one matched.
    for spelling in [
        "/v1/products%2Fx",
        "/v1%2fproducts",
        "/v1/products%5C..",
        "/v1/%00",
    ] {
        let r = kg.get_with_key(spelling, READER);
        assert_eq!(r.status, 400, "{spelling}");
        assert_eq!(r.json()["code"], "invalid_path");
    }
}

#[test]
fn odd_requests_get_answers_and_never_crash_keygate() {
    let up = Echo::start();
    let mut kg = start(&up);
    let long_token = format!("Bearer sk_live_{}", "a".repeat(10_000));
    let long_path = format!("/v1/products/{}", "a/".repeat(2_000));
    let cases: Vec<(String, Vec<(&str, String)>)> = vec![
        (
            "/v1/products".into(),
            vec![("Authorization", long_token.clone())],
        ),
        (
            "/v1/products".into(),
            vec![("Authorization", "Bearer".into())],
        ),
        (
            "/v1/products".into(),
            vec![("Authorization", "Bearer  ".into())],
        ),
        (
            "/v1/products".into(),
            vec![
                ("Authorization", bearer(READER)),
                ("Authorization", bearer(READER)),
            ],
        ),
        (long_path, vec![("Authorization", bearer(READER))]),
        ("/%".into(), vec![]),
        ("/%zz".into(), vec![]),
        ("/v1/../../../etc/passwd".into(), vec![]),
    ];
    for (path, headers) in &cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = kg.get(path, &headers);
        assert!(
            (200..500).contains(&r.status),
            "{path}: {} {}",
            r.status,
            r.text()
        );
    }
    let raw: [&[u8]; 3] = [
        b"GET /v1/products HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\nConnection: close\r\n\r\n",
        b"GET /v1/products HTTP/1.1\r\nHost: x\r\nx-workspace-id: \xff\r\nAuthorization: Bearer sk_live_INTERNAL0000000000000000000000001\r\nConnection: close\r\n\r\n",
        b"GET v1/products HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ];
    for bytes in raw {
        if let Ok(r) = common::http::send_raw(kg.addr, bytes) {
            assert!((400..500).contains(&r.status), "{}", r.status);
        }
    }
    assert!(kg.is_running(), "keygate exited");
    assert!(!kg.log().contains("panicked"), "{}", kg.log());
    assert_eq!(kg.get_with_key("/v1/products", READER).status, 200);
}

#[test]
fn refusals_keep_the_client_connection_usable() {
    let up = Echo::start();
    let kg = start(&up);
    let reader = bearer(READER);
    let responses = common::http::send_many(
        kg.addr,
        &[
            Request::get("/v1/products"),
            Request::get("/nowhere"),
            Request::get("/v1/data/geo/fr").header("Authorization", &reader),
            Request::get("/v1/products").header("Authorization", &reader),
            Request::post("/v1/products", b"{\"a\":1}").header("Authorization", &bearer(WRITER)),
        ],
    );
    let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![401, 404, 403, 200, 200]);
    for r in &responses[..3] {
        assert_eq!(r.header("connection"), Some("keep-alive"));
    }
    assert_eq!(responses[4].json()["body"], "{\"a\":1}");
    assert_eq!(up.requests_seen(), 2);

    // A refused request whose body was never read: keygate does not read a stranger's body,
    // and says the connection closes rather than leaving the client to find out.
    let mut conn = common::http::Connection::open(kg.addr).unwrap();
    let r = conn
        .send(&Request::post("/v1/products", b"{\"a\":1}").header("Authorization", &reader))
        .unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(r.header("connection"), Some("close"));
}

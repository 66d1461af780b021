//! Browser client tokens (`POST /v1/client-tokens`) through the real control-plane binary: what
//! a token says (header and claims read with base64, the signature checked with the published
//! key), its lifetime, the scopes a key may hand on, and every credential that is refused.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, Validation};
use keygate_protocol::secret::{self, Env};
use keygate_protocol::tokens::{AccessClaims, decoding_key, install_provider};
use keygate_test_support::cp::{ADMIN_TOKEN, ControlPlane, SYNC_TOKEN};
use keygate_test_support::http::Response;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const BIN: &str = env!("CARGO_BIN_EXE_keygate-control-plane");
const PATH: &str = "/v1/client-tokens";
const INVALID_TOKEN: &str = r#"Bearer error="invalid_token""#;

fn start() -> ControlPlane {
    let cp = ControlPlane::start(BIN);
    cp.create_workspace("ws_acme", "live");
    cp
}

/// A live key of `ws_acme` with `scopes`: `(id, secret)`.
fn key(cp: &ControlPlane, scopes: &[&str]) -> (String, String) {
    cp.create_key_in("ws_acme", "live", scopes)
}

/// A key from `body`: `(id, secret)`.
fn key_from(cp: &ControlPlane, body: Value) -> (String, String) {
    let (_, data) = cp.create_key(body);
    (
        data["id"].as_str().unwrap().to_owned(),
        data["secret"].as_str().unwrap().to_owned(),
    )
}

/// `POST /v1/client-tokens` with `secret` as the bearer token.
fn mint(cp: &ControlPlane, secret: &str, body: Value) -> Response {
    cp.call("POST", PATH, Some(secret), Some(&body))
}

/// A mint that must succeed: the answer's JSON.
fn minted(cp: &ControlPlane, secret: &str, body: Value) -> Value {
    let r = mint(cp, secret, body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    r.json()
}

/// The JWT's header and payload, read with base64 alone.
fn parts(token: &str) -> (Value, Value) {
    let mut it = token.split('.');
    let mut part = || {
        let bytes = URL_SAFE_NO_PAD
            .decode(it.next().expect("a JWT part"))
            .unwrap();
        serde_json::from_slice::<Value>(&bytes).unwrap()
    };
    let (header, payload) = (part(), part());
    assert_eq!(token.split('.').count(), 3, "{token}");
    (header, payload)
}

fn time_of(s: &str) -> i64 {
    OffsetDateTime::parse(s, &Rfc3339).unwrap().unix_timestamp()
}

/// A refusal: its status, the API's error shape, and the message.
fn refused(r: &Response, status: u16) -> String {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let body = r.json();
    assert_eq!(body["success"], false, "{body}");
    body["error"].as_str().expect("an error message").to_owned()
}

#[test]
fn a_client_token_names_its_key_workspace_and_scopes_and_verifies() {
    let cp = ControlPlane::builder(BIN)
        .token_issuer("https://cp.example")
        .token_audience("shop-api")
        .start();
    cp.create_workspace("ws_acme", "live");
    let (id, secret) = key(&cp, &["products:read", "orders:*"]);

    let body = minted(
        &cp,
        &secret,
        json!({"scopes": ["products:read", "orders:write", "products:read"], "ttl": 120}),
    );
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 120);
    assert_eq!(body["scope"], "products:read orders:write");
    assert_eq!(body["workspace"], "ws_acme");
    assert_eq!(body["key_id"], id.as_str());
    let fields: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(fields.len(), 6, "{body}");

    let token = body["token"].as_str().unwrap();
    let (header, claims) = parts(token);
    assert_eq!(header["typ"], "client+jwt");
    assert_eq!(header["alg"], "EdDSA");
    let keys = cp.admin("GET", "/v1/signing-keys", None).json();
    let current = keys["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["state"] == "current")
        .expect("a current signing key")
        .clone();
    assert_eq!(header["kid"], current["kid"]);
    assert_eq!(claims["sub"], id.as_str());
    assert_eq!(claims["client_id"], id.as_str());
    assert_eq!(claims["workspace"], "ws_acme");
    assert_eq!(claims["scope"], "products:read orders:write");
    assert_eq!(claims["iss"], "https://cp.example");
    assert_eq!(claims["aud"], "shop-api");
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert_eq!(exp - iat, 120);
    assert_eq!(claims["nbf"], claims["iat"]);
    assert!((iat - OffsetDateTime::now_utc().unix_timestamp()).abs() <= 5);
    assert!(
        claims["jti"].as_str().unwrap().starts_with("jti_"),
        "{claims}"
    );

    // Signed with the published current key.
    install_provider();
    let mut v = Validation::new(Algorithm::EdDSA);
    v.set_issuer(&["https://cp.example"]);
    v.set_audience(&["shop-api"]);
    let public = decoding_key(current["public_key"].as_str().unwrap()).unwrap();
    let verified = jsonwebtoken::decode::<AccessClaims>(token, &public, &v)
        .unwrap()
        .claims;
    assert_eq!(verified.client_id, id);

    // Every token has its own jti; nothing secret reaches the log, the key's id does.
    let again = minted(&cp, &secret, json!({"scopes": ["products:read"]}));
    assert_ne!(
        parts(again["token"].as_str().unwrap()).1["jti"],
        claims["jti"]
    );
    let log = cp.log();
    assert!(
        log.contains("client token issued") && log.contains(&id),
        "{log}"
    );
    assert!(!log.contains(&secret) && !log.contains(token), "{log}");
}

#[test]
fn the_default_lifetime_is_ten_minutes_and_a_ttl_runs_from_a_second_to_an_hour() {
    let cp = start();
    let (_, secret) = key(&cp, &["products:read"]);
    let body = minted(&cp, &secret, json!({"scopes": ["products:read"]}));
    assert_eq!(body["expires_in"], 600);
    let (_, claims) = parts(body["token"].as_str().unwrap());
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        600
    );

    for ttl in [1, 3600] {
        let body = minted(
            &cp,
            &secret,
            json!({"scopes": ["products:read"], "ttl": ttl}),
        );
        assert_eq!(body["expires_in"], ttl);
        let (_, c) = parts(body["token"].as_str().unwrap());
        assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), ttl);
    }
    for ttl in [json!(0), json!(3601), json!(-5), json!("600"), json!(60.5)] {
        let r = mint(
            &cp,
            &secret,
            json!({"scopes": ["products:read"], "ttl": ttl}),
        );
        let e = refused(&r, 400);
        assert!(
            e.contains("ttl") || e.contains("invalid JSON"),
            "{ttl}: {e}"
        );
    }
    let e = refused(
        &mint(
            &cp,
            &secret,
            json!({"scopes": ["products:read"], "ttl": 3601}),
        ),
        400,
    );
    assert!(e.starts_with("ttl:") && e.contains("3600"), "{e}");
}

#[test]
fn a_token_never_outlives_the_key_that_minted_it() {
    let cp = start();
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let expires_at = OffsetDateTime::from_unix_timestamp(now + 120)
        .unwrap()
        .format(&Rfc3339)
        .unwrap();
    let (_, secret) = key_from(
        &cp,
        json!({"workspace": "ws_acme", "scopes": ["products:read"], "expires_at": expires_at}),
    );
    let body = minted(
        &cp,
        &secret,
        json!({"scopes": ["products:read"], "ttl": 3600}),
    );
    let (_, claims) = parts(body["token"].as_str().unwrap());
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert_eq!(exp, time_of(&expires_at), "capped at the key's expiry");
    assert_eq!(body["expires_in"], exp - iat);
    assert!((100..=120).contains(&(exp - iat)), "{body}");

    // A ttl that ends before the key does is kept.
    let body = minted(
        &cp,
        &secret,
        json!({"scopes": ["products:read"], "ttl": 30}),
    );
    assert_eq!(body["expires_in"], 30);
}

#[test]
fn scopes_are_required_and_never_wider_than_the_key() {
    let cp = start();
    let (_, narrow) = key(&cp, &["products:read"]);
    let (_, reader) = key(&cp, &["*:read"]);

    for (body, names) in [
        (json!({}), "scopes"),
        (json!({"ttl": 60}), "scopes"),
        (json!({"scopes": null}), "scopes"),
        (json!({"scopes": []}), "scopes"),
        (json!({"scopes": ["products:read", "a::b"]}), "scopes[1]"),
        (json!({"scopes": "products:read"}), "invalid JSON"),
        (json!({"scope": ["products:read"]}), "unknown field `scope`"),
    ] {
        let e = refused(&mint(&cp, &narrow, body.clone()), 400);
        assert!(e.contains(names), "{body}: {e}");
    }
    let r = cp.request(
        "POST",
        PATH,
        &[("Authorization", &format!("Bearer {narrow}"))],
        Some(b"{\"scopes\": [\"products:read\""),
    );
    assert!(refused(&r, 400).contains("invalid JSON"));

    // Wider than the key: 403 insufficient_scope, naming the scope at fault.
    for (secret, body, at) in [
        (&narrow, json!({"scopes": ["products:*"]}), "scopes[0]"),
        (
            &narrow,
            json!({"scopes": ["products:read", "orders:read"]}),
            "scopes[1]",
        ),
        (&reader, json!({"scopes": ["*"]}), "scopes[0]"),
        (
            &reader,
            json!({"scopes": ["products:read", "products:*"]}),
            "scopes[1]",
        ),
        (&reader, json!({"scopes": ["products:write"]}), "scopes[0]"),
    ] {
        let r = mint(&cp, secret, body.clone());
        let e = refused(&r, 403);
        assert!(
            e.starts_with(at) && e.contains("may not hold"),
            "{body}: {e}"
        );
        assert_eq!(
            r.header("www-authenticate"),
            Some(r#"Bearer error="insufficient_scope""#)
        );
    }
    // What the key grants without a wildcard, or holds as written, is fine.
    let body = minted(&cp, &reader, json!({"scopes": ["products:read", "*:read"]}));
    assert_eq!(body["scope"], "products:read *:read");
    // A key with no scopes may hand on none.
    let (_, none) = key(&cp, &[]);
    refused(&mint(&cp, &none, json!({"scopes": ["products:read"]})), 403);
}

#[test]
fn a_legacy_key_may_mint_any_scope() {
    let cp = start();
    let (id, secret) = key_from(&cp, json!({"workspace": "ws_acme", "legacy": true}));
    let body = minted(&cp, &secret, json!({"scopes": ["*", "orders:delete"]}));
    assert_eq!(body["scope"], "* orders:delete");
    assert_eq!(body["key_id"], id.as_str());
}

#[test]
fn unknown_revoked_expired_and_malformed_credentials_get_401() {
    let cp = start();
    let good = json!({"scopes": ["products:read"]});
    let (revoked_id, revoked) = key(&cp, &["products:read"]);
    let (rotated_id, rotated) = key(&cp, &["products:read"]);
    let (_, live) = key(&cp, &["products:read"]);
    // Each works until it is revoked, or rotated away at once.
    for secret in [&revoked, &rotated] {
        minted(&cp, secret, good.clone());
    }
    cp.revoke(&revoked_id);
    let r = cp.admin(
        "POST",
        &format!("/v1/api-keys/{rotated_id}/rotate"),
        Some(json!({"expires_in_seconds": 0})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let unknown = secret::generate(Env::Live);

    let mut messages = Vec::new();
    for secret in [&unknown, &revoked, &rotated] {
        let r = mint(&cp, secret, good.clone());
        messages.push(refused(&r, 401));
        assert_eq!(r.header("www-authenticate"), Some(INVALID_TOKEN));
    }
    assert!(
        messages.iter().all(|m| *m == messages[0]),
        "one answer for unknown, revoked and expired keys: {messages:?}"
    );

    // No key at all: no header, another scheme, not a key, the admin and sync tokens.
    let bearer = |t: &str| format!("Bearer {t}");
    let mut typo = live.clone();
    let last = typo.pop().unwrap();
    typo.push(if last == 'A' { 'B' } else { 'A' });
    let headers: Vec<Vec<(&str, String)>> = vec![
        vec![],
        vec![("Authorization", format!("Basic {live}"))],
        vec![("Authorization", "Bearer".into())],
        vec![("Authorization", bearer("not-an-api-key"))],
        vec![("Authorization", bearer(&typo))],
        vec![("Authorization", bearer(ADMIN_TOKEN))],
        vec![("Authorization", bearer(SYNC_TOKEN))],
    ];
    let body = good.to_string();
    for h in &headers {
        let h: Vec<(&str, &str)> = h.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let r = cp.request("POST", PATH, &h, Some(body.as_bytes()));
        refused(&r, 401);
        assert_eq!(r.header("www-authenticate"), Some(INVALID_TOKEN), "{h:?}");
    }
    // Authentication comes first: a bad body without a good key is still a 401.
    refused(&mint(&cp, &revoked, json!({"nonsense": true})), 401);
    refused(&cp.call("POST", PATH, None, Some(&json!({}))), 401);
    // The live key still mints; the endpoint takes POST only.
    minted(&cp, &live, good.clone());
    let r = cp.call("GET", PATH, Some(&live), None);
    assert_eq!(r.status, 405, "{}", r.text());
    assert_eq!(r.header("allow"), Some("POST"));
}

#[test]
fn an_internal_key_gets_403() {
    let cp = start();
    let (_, secret) = key_from(
        &cp,
        json!({"internal": true, "environment": "live", "scopes": ["*"]}),
    );
    let r = mint(&cp, &secret, json!({"scopes": ["products:read"]}));
    let e = refused(&r, 403);
    assert_eq!(
        e,
        "internal keys cannot mint client tokens; use a workspace key"
    );
}

#[test]
fn a_sandbox_key_mints_for_its_sandbox_workspace() {
    let cp = start();
    cp.create_workspace("ws_sandbox", "sandbox");
    let (id, secret) = cp.create_key_in("ws_sandbox", "test", &["products:read"]);
    assert!(secret.starts_with("sk_test_"), "{}", &secret[..8]);
    let body = minted(&cp, &secret, json!({"scopes": ["products:read"]}));
    assert_eq!(body["workspace"], "ws_sandbox");
    let (_, claims) = parts(body["token"].as_str().unwrap());
    assert_eq!(claims["workspace"], "ws_sandbox");
    assert_eq!(claims["sub"], id.as_str());
}

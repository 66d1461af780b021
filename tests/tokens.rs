//! OAuth access tokens through the real binary, with the signing keys and clients in a keys file:
//! what a good token gets (and what the upstream learns of it), and what every forgery gets.
//! The tokens are minted here with the protocol's own signer, or forged byte by byte.
//! `tests/oauth.rs` runs the same path from the reference control plane's token endpoint.

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::http::Response;
use common::*;
use keygate_protocol::tokens::{AccessClaims, TokenSigner};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const ISSUER: &str = "https://cp.example.test";
const AUDIENCE: &str = "keygate";
const API_KEY: &str = "sk_live_TOKENSAPIKEY0000000000000000000001";

fn signer(kid: &str, seed: u8) -> TokenSigner {
    TokenSigner::new(kid, &STANDARD.encode([seed; 32])).unwrap()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims(scope: &str) -> AccessClaims {
    let now = now();
    AccessClaims {
        iss: ISSUER.into(),
        sub: "oc_reader".into(),
        aud: AUDIENCE.into(),
        exp: now + 600,
        nbf: now,
        iat: now,
        jti: format!("jti_{}", rand_tag()),
        client_id: "oc_reader".into(),
        scope: scope.into(),
        workspace: "ws_live".into(),
    }
}

fn rand_tag() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The keys file: one live workspace with an API key, the signing key `kid_1` (seed 1), an
/// active client and a revoked one.
fn keys() -> Keys {
    Keys::new(1)
        .workspace("ws_live", WorkspaceKind::Live)
        .workspace("ws_other", WorkspaceKind::Sandbox)
        .key("key_plain", API_KEY, Some("ws_live"), Some(&["*"]))
        .signing_key("kid_1", signer("kid_1", 1).public_key())
        .client("oc_reader", "ws_live", KeyStatus::Active)
        .client("oc_revoked", "ws_live", KeyStatus::Revoked)
}

fn start(keys: &Keys, up: &http::Echo) -> Keygate {
    Keygate::start(Setup::new(up, keys).config(|c| {
        c.tokens = Some(TokensFile {
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            leeway: Some(Duration::from_secs(30)),
            cache_entries: None,
        })
    }))
}

fn get(kg: &Keygate, path: &str, token: &str) -> Response {
    kg.get(path, &[("authorization", &bearer(token))])
}

/// A token signed with `signer` over claims given as JSON, with a header given as JSON: for the
/// forgeries the typed claims cannot express.
fn sign_raw(signer_seed: u8, header: Value, claims: Value) -> String {
    use ed25519_dalek::Signer as _;
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let key = ed25519_dalek::SigningKey::from_bytes(&[signer_seed; 32]);
    let sig = key.sign(message.as_bytes());
    format!("{message}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
}

fn header(kid: &str) -> Value {
    json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid})
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |b: u8| k.iter().map(|x| x ^ b).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

fn assert_refused(r: &Response, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", r.text());
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer error="invalid_token""#),
        "{what}"
    );
    assert_eq!(r.json()["code"], "invalid_credentials", "{what}");
}

#[test]
fn a_token_acts_as_its_client_in_its_workspace_with_its_scopes_only() {
    let up = http::Echo::start();
    let kg = start(&keys(), &up);
    let token = signer("kid_1", 1).sign(&claims("products:read"));
    let status = kg.admin_get("/status").json();
    assert_eq!(status["snapshot"]["signing_keys"], 1);
    assert_eq!(status["snapshot"]["clients"], 2);

    let r = kg.get(
        "/v1/products/7",
        &[
            ("authorization", &bearer(&token)),
            ("x-auth-type", "api_key"),
            ("x-api-key-id", "key_plain"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        upstream_header(&r, "x-workspace-id").as_deref(),
        Some("ws_live")
    );
    assert_eq!(
        upstream_header(&r, "x-api-key-id").as_deref(),
        Some("oc_reader")
    );
    assert_eq!(
        upstream_header(&r, "x-api-key-scopes").as_deref(),
        Some("products:read")
    );
    // The client's own copies are gone: the only ones are keygate's.
    let sent = upstream_headers(&r);
    let auth_types: Vec<_> = sent.iter().filter(|(n, _)| n == "x-auth-type").collect();
    assert_eq!(auth_types.len(), 1, "{sent:?}");
    assert_eq!(auth_types[0].1, "oauth");

    // Scopes are the token's, with the API key's semantics.
    let write = kg.send(
        &http::Request::new("DELETE", "/v1/products/7").header("authorization", &bearer(&token)),
    );
    assert_eq!(write.status, 403, "{}", write.text());
    assert_eq!(write.json()["missing_scopes"], json!(["products:write"]));
    assert_eq!(get(&kg, "/v1/data/geo/1", &token).status, 403);
    let wide = signer("kid_1", 1).sign(&claims("products:* data:*:read"));
    assert_eq!(get(&kg, "/v1/data/geo/1", &wide).status, 200);
    let none = signer("kid_1", 1).sign(&claims(""));
    assert_eq!(get(&kg, "/v1/products/7", &none).status, 403);
    assert_eq!(
        get(&kg, "/v1/me", &none).status,
        200,
        "any credential route"
    );

    // The same token again (from the cache) decides the same, and an API key says what it is.
    assert_eq!(get(&kg, "/v1/products/7", &token).status, 200);
    let r = kg.get_with_key("/v1/products/7", API_KEY);
    assert_eq!(
        upstream_header(&r, "x-auth-type").as_deref(),
        Some("api_key")
    );
    // Never in the access log; the client id is its key id there.
    let logged = within(Duration::from_secs(5), || {
        kg.access_log_text().contains("\"key_id\":\"oc_reader\"")
    });
    assert!(logged.is_some(), "{}", kg.access_log_text());
    let log = kg.access_log_text();
    assert!(
        !log.contains(&token[20..60]),
        "the token reached the access log"
    );
    assert!(
        !kg.log().contains(&token[20..60]),
        "the token reached the application log"
    );
}

#[test]
fn every_forgery_is_refused_with_invalid_token() {
    let up = http::Echo::start();
    let kg = start(&keys(), &up);
    let good = serde_json::to_value(claims("products:read")).unwrap();
    let with = |change: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        change(&mut c);
        c
    };
    let public_key = signer("kid_1", 1).public_key().to_owned();
    let none_token = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "at+jwt", "kid": "kid_1"}).to_string()),
        URL_SAFE_NO_PAD.encode(good.to_string())
    );
    let hs256 = {
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD
                .encode(json!({"alg": "HS256", "typ": "at+jwt", "kid": "kid_1"}).to_string()),
            URL_SAFE_NO_PAD.encode(good.to_string())
        );
        let mac = hmac_sha256(public_key.as_bytes(), message.as_bytes());
        format!("{message}.{}", URL_SAFE_NO_PAD.encode(mac))
    };
    let tampered = {
        let token = sign_raw(1, header("kid_1"), good.clone());
        let parts: Vec<&str> = token.split('.').collect();
        let wider = with(&|c| c["scope"] = json!("*"));
        format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(wider.to_string()),
            parts[2]
        )
    };
    let t = now();
    let cases: Vec<(&str, String, &str)> = vec![
        ("alg none", none_token, "invalid_token"),
        ("HS256 keyed with the public key", hs256, "invalid_token"),
        (
            "unknown kid",
            sign_raw(1, header("kid_9"), good.clone()),
            "unknown_signing_key",
        ),
        (
            "another deployment's key under our kid",
            sign_raw(2, header("kid_1"), good.clone()),
            "invalid_token",
        ),
        ("tampered payload", tampered, "invalid_token"),
        (
            "expired",
            sign_raw(1, header("kid_1"), with(&|c| c["exp"] = json!(t - 120))),
            "expired",
        ),
        (
            "nbf in the future",
            sign_raw(1, header("kid_1"), with(&|c| c["nbf"] = json!(t + 300))),
            "invalid_token",
        ),
        (
            "wrong iss",
            sign_raw(
                1,
                header("kid_1"),
                with(&|c| c["iss"] = json!("https://evil.test")),
            ),
            "invalid_token",
        ),
        (
            "wrong aud",
            sign_raw(
                1,
                header("kid_1"),
                with(&|c| c["aud"] = json!("another-api")),
            ),
            "invalid_token",
        ),
        (
            "no scope claim",
            sign_raw(
                1,
                header("kid_1"),
                with(&|c| {
                    c.as_object_mut().unwrap().remove("scope");
                }),
            ),
            "invalid_token",
        ),
        (
            "string exp",
            sign_raw(
                1,
                header("kid_1"),
                with(&|c| c["exp"] = json!("99999999999")),
            ),
            "invalid_token",
        ),
        (
            "no exp",
            sign_raw(
                1,
                header("kid_1"),
                with(&|c| {
                    c.as_object_mut().unwrap().remove("exp");
                }),
            ),
            "invalid_token",
        ),
        (
            "no nbf",
            sign_raw(
                1,
                header("kid_1"),
                with(&|c| {
                    c.as_object_mut().unwrap().remove("nbf");
                }),
            ),
            "invalid_token",
        ),
        (
            "key material in the header",
            sign_raw(
                2,
                json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "kid_1",
            "jwk": {"kty": "OKP", "crv": "Ed25519", "x": signer("kid_1", 2).public_key()}}),
                good.clone(),
            ),
            "invalid_token",
        ),
        (
            "jku in the header",
            sign_raw(
                1,
                json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "kid_1", "jku": "https://evil.test/jwks"}),
                good.clone(),
            ),
            "invalid_token",
        ),
        (
            "not an access token (no typ)",
            sign_raw(1, json!({"alg": "EdDSA", "kid": "kid_1"}), good.clone()),
            "invalid_token",
        ),
        (
            "sub is not the client",
            sign_raw(1, header("kid_1"), with(&|c| c["sub"] = json!("oc_other"))),
            "invalid_token",
        ),
        (
            "another workspace than the client's",
            sign_raw(
                1,
                header("kid_1"),
                with(&|c| c["workspace"] = json!("ws_other")),
            ),
            "invalid_token",
        ),
        (
            "unknown client",
            sign_raw(
                1,
                header("kid_1"),
                with(&|c| {
                    c["sub"] = json!("oc_nobody");
                    c["client_id"] = json!("oc_nobody");
                }),
            ),
            "unknown",
        ),
        (
            "revoked client",
            sign_raw(
                1,
                header("kid_1"),
                with(&|c| {
                    c["sub"] = json!("oc_revoked");
                    c["client_id"] = json!("oc_revoked");
                }),
            ),
            "revoked",
        ),
        (
            "bad scope grammar",
            sign_raw(
                1,
                header("kid_1"),
                with(&|c| c["scope"] = json!("products:*:*:")),
            ),
            "invalid_token",
        ),
        (
            "three parts of garbage",
            "eyJhbGciOi.eyJzdWIi.AAAA".to_owned(),
            "invalid_token",
        ),
    ];
    for (what, token, _) in &cases {
        assert_refused(&get(&kg, "/v1/products/7", token), what);
    }
    // Each refusal is counted under its reason.
    kg.settle(cases.len() as u64);
    let metrics = kg.metrics();
    for reason in [
        "invalid_token",
        "unknown_signing_key",
        "expired",
        "unknown",
        "revoked",
    ] {
        let want = cases.iter().filter(|(_, _, r)| *r == reason).count();
        let series = format!("keygate_auth_failures_total{{reason=\"{reason}\"}} {want}");
        assert!(metrics.contains(&series), "{series} in\n{metrics}");
    }
    // A token just past its expiry but within the leeway still works; the good one does.
    let late = sign_raw(1, header("kid_1"), with(&|c| c["exp"] = json!(t - 5)));
    assert_eq!(get(&kg, "/v1/products/7", &late).status, 200);
    assert_eq!(
        get(
            &kg,
            "/v1/products/7",
            &sign_raw(1, header("kid_1"), good.clone())
        )
        .status,
        200
    );
}

#[test]
fn without_a_tokens_section_a_token_is_a_malformed_credential() {
    let up = http::Echo::start();
    let kg = Keygate::start(Setup::new(&up, &keys()));
    let token = signer("kid_1", 1).sign(&claims("products:read"));
    assert_refused(&get(&kg, "/v1/products/7", &token), "tokens off");
    kg.settle(1);
    assert_eq!(
        kg.metric(r#"keygate_auth_failures_total{reason="malformed"}"#),
        Some(1.0)
    );
}

#[test]
fn revoking_the_client_or_retiring_its_signing_key_stops_a_cached_token() {
    let up = http::Echo::start();
    let kg = start(&keys(), &up);
    let token = signer("kid_1", 1).sign(&claims("products:read"));
    let ok = |kg: &Keygate| get(kg, "/v1/products/7", &token).status == 200;
    assert!(ok(&kg), "accepted, and now cached");

    let changes: [(&str, Keys); 3] = [
        (
            "client revoked",
            Keys::new(2)
                .workspace("ws_live", WorkspaceKind::Live)
                .signing_key("kid_1", signer("kid_1", 1).public_key())
                .client("oc_reader", "ws_live", KeyStatus::Revoked),
        ),
        (
            "signing key retired",
            Keys::new(3)
                .workspace("ws_live", WorkspaceKind::Live)
                .signing_key("kid_2", signer("kid_2", 2).public_key())
                .client("oc_reader", "ws_live", KeyStatus::Active),
        ),
        (
            "kid now names another key",
            Keys::new(4)
                .workspace("ws_live", WorkspaceKind::Live)
                .signing_key("kid_1", signer("kid_1", 3).public_key())
                .client("oc_reader", "ws_live", KeyStatus::Active),
        ),
    ];
    for (what, change) in changes {
        kg.replace_keys(&keys().yaml());
        assert!(
            within(Duration::from_secs(2), || ok(&kg)).is_some(),
            "{what}: back"
        );
        kg.replace_keys(&change.yaml());
        let took = within(Duration::from_secs(2), || {
            get(&kg, "/v1/products/7", &token).status == 401
        });
        assert!(took.is_some(), "{what}: still accepted");
    }
    // A workspace whose limits change keeps its tokens (the entry follows the new workspace).
    kg.replace_keys(&keys().yaml());
    assert!(within(Duration::from_secs(2), || ok(&kg)).is_some());
    let limited = Keys::new(9)
        .workspace_with_limits(
            "ws_live",
            WorkspaceKind::Live,
            Some(LimitsDoc {
                burst_per_second: Some(5),
                sustained_per_minute: None,
                concurrent_requests: None,
            }),
        )
        .signing_key("kid_1", signer("kid_1", 1).public_key())
        .client("oc_reader", "ws_live", KeyStatus::Active);
    kg.replace_keys(&limited.yaml());
    std::thread::sleep(Duration::from_millis(300));
    assert!(ok(&kg), "a replaced workspace keeps its tokens");
}

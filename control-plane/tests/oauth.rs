//! OAuth clients, the token endpoint and signing keys through the real control-plane binary:
//! every RFC 6749 §5.2 error, the token's claims checked with the published key, and what the
//! snapshot and its deltas say about clients and keys.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::{Algorithm, Validation};
use keygate_protocol::tokens::{AccessClaims, decoding_key, install_provider};
use keygate_test_support::cp::ControlPlane;
use keygate_test_support::http::{self, Response};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_keygate-control-plane");
const FORM: &str = "application/x-www-form-urlencoded";

fn start() -> ControlPlane {
    let cp = ControlPlane::start(BIN);
    cp.create_workspace("ws_acme", "live");
    cp
}

/// A client: its id and secret.
fn client(cp: &ControlPlane, body: Value) -> (String, String) {
    let r = cp.admin("POST", "/v1/oauth-clients", Some(body));
    assert_eq!(r.status, 201, "{}", r.text());
    let data = &r.json()["data"];
    (
        data["id"].as_str().unwrap().to_owned(),
        data["secret"].as_str().unwrap().to_owned(),
    )
}

fn post_token(cp: &ControlPlane, headers: &[(&str, &str)], form: &str) -> Response {
    http::request(
        cp.addr,
        "POST",
        "/oauth/token",
        headers,
        Some(form.as_bytes()),
    )
}

fn basic(id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
}

fn with_basic(cp: &ControlPlane, id: &str, secret: &str, form: &str) -> Response {
    let auth = basic(id, secret);
    post_token(
        cp,
        &[("Authorization", &auth), ("Content-Type", FORM)],
        form,
    )
}

/// The claims of `token`, verified with the key the control plane publishes under its `kid`.
fn claims(cp: &ControlPlane, token: &str) -> (String, AccessClaims) {
    install_provider();
    let kid = jsonwebtoken::decode_header(token).unwrap().kid.unwrap();
    let keys = cp.admin("GET", "/v1/signing-keys", None).json();
    let key = keys["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .expect("the token's kid is listed");
    let mut v = Validation::new(Algorithm::EdDSA);
    v.set_issuer(&["keygate-control-plane"]);
    v.set_audience(&["keygate"]);
    let key = decoding_key(key["public_key"].as_str().unwrap()).unwrap();
    let claims = jsonwebtoken::decode::<AccessClaims>(token, &key, &v)
        .unwrap()
        .claims;
    (kid, claims)
}

#[test]
fn a_token_carries_the_clients_identity_and_the_scopes_it_asked_for() {
    let cp = start();
    let (id, secret) = client(
        &cp,
        json!({"workspace": "ws_acme", "name": "billing", "scopes": ["products:*", "orders:read"]}),
    );
    assert!(secret.starts_with("cs_") && secret.len() == 43, "{secret}");

    // HTTP Basic, all of the client's scopes.
    let r = with_basic(&cp, &id, &secret, "grant_type=client_credentials");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("pragma"), Some("no-cache"));
    let body = r.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["scope"], "products:* orders:read");
    let (kid, c) = claims(&cp, body["access_token"].as_str().unwrap());
    assert!(kid.starts_with("kid_"));
    assert_eq!(
        (c.sub.as_str(), c.client_id.as_str()),
        (id.as_str(), id.as_str())
    );
    assert_eq!(c.workspace, "ws_acme");
    assert_eq!(c.scope, "products:* orders:read");
    assert_eq!(c.exp - c.iat, 3600);
    assert_eq!(c.nbf, c.iat);
    let header = jsonwebtoken::decode_header(body["access_token"].as_str().unwrap()).unwrap();
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));

    // Form fields, narrowed: a scope the client's wildcard grants, and one it holds as written.
    let form = format!(
        "grant_type=client_credentials&client_id={id}&client_secret={secret}&scope=products%3Aread+orders:read"
    );
    let r = post_token(&cp, &[("Content-Type", FORM)], &form);
    assert_eq!(r.status, 200, "{}", r.text());
    let token = r.json()["access_token"].as_str().unwrap().to_owned();
    let (_, narrowed) = claims(&cp, &token);
    assert_eq!(narrowed.scope, "products:read orders:read");
    assert_ne!(narrowed.jti, c.jti, "every token has its own jti");

    // The list never shows the secret or its hash.
    let list = cp.admin("GET", "/v1/oauth-clients?workspace=ws_acme", None);
    let text = list.text();
    assert!(
        !text.contains(&secret) && !text.contains(&secret[10..]),
        "{text}"
    );
    assert_eq!(
        list.json()["data"][0]["scopes"],
        json!(["products:*", "orders:read"])
    );
    assert_eq!(list.json()["data"][0]["status"], "active");
    assert_eq!(list.json()["data"][0]["secret_prefix"], &secret[..7]);
}

#[test]
fn every_rfc_6749_error_of_the_token_endpoint() {
    let cp = start();
    let (id, secret) = client(&cp, json!({"workspace": "ws_acme", "scopes": ["a:read"]}));
    let (revoked, revoked_secret) = client(&cp, json!({"workspace": "ws_acme", "scopes": []}));
    assert!(
        cp.admin("DELETE", &format!("/v1/oauth-clients/{revoked}"), None)
            .status
            < 300
    );
    let (rotated, old_secret) = client(&cp, json!({"workspace": "ws_acme", "scopes": []}));
    let r = cp.admin(
        "POST",
        &format!("/v1/oauth-clients/{rotated}/rotate-secret"),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let new_secret = r.json()["data"]["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, old_secret);
    assert_eq!(
        with_basic(&cp, &rotated, &new_secret, "grant_type=client_credentials").status,
        200
    );

    let good = basic(&id, &secret);
    let both = format!("grant_type=client_credentials&client_secret={secret}");
    let repeated = "grant_type=client_credentials&grant_type=client_credentials";
    // What, the request's headers and form, then the status and `error` it must get.
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, String, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "no grant_type",
            vec![("Authorization", &good), ("Content-Type", FORM)],
            "scope=a:read".into(),
            400,
            "invalid_request",
        ),
        (
            "a repeated parameter",
            vec![("Authorization", &good), ("Content-Type", FORM)],
            repeated.into(),
            400,
            "invalid_request",
        ),
        (
            "two ways of authenticating",
            vec![("Authorization", &good), ("Content-Type", FORM)],
            both,
            400,
            "invalid_request",
        ),
        (
            "JSON, not a form",
            vec![
                ("Authorization", &good),
                ("Content-Type", "application/json"),
            ],
            r#"{"grant_type":"client_credentials"}"#.into(),
            400,
            "invalid_request",
        ),
        (
            "no client authentication",
            vec![("Content-Type", FORM)],
            "grant_type=client_credentials".into(),
            401,
            "invalid_client",
        ),
        (
            "an unknown client",
            vec![("Content-Type", FORM)],
            "grant_type=client_credentials&client_id=oc_nobody&client_secret=x".into(),
            401,
            "invalid_client",
        ),
        (
            "a wrong secret",
            vec![("Content-Type", FORM)],
            format!("grant_type=client_credentials&client_id={id}&client_secret=cs_wrong"),
            401,
            "invalid_client",
        ),
        (
            "a revoked client",
            vec![("Content-Type", FORM)],
            format!(
                "grant_type=client_credentials&client_id={revoked}&client_secret={revoked_secret}"
            ),
            401,
            "invalid_client",
        ),
        (
            "a rotated-away secret",
            vec![("Content-Type", FORM)],
            format!("grant_type=client_credentials&client_id={rotated}&client_secret={old_secret}"),
            401,
            "invalid_client",
        ),
        (
            "another grant",
            vec![("Authorization", &good), ("Content-Type", FORM)],
            "grant_type=password&username=a&password=b".into(),
            400,
            "unsupported_grant_type",
        ),
        (
            "a scope the client lacks",
            vec![("Authorization", &good), ("Content-Type", FORM)],
            "grant_type=client_credentials&scope=b:read".into(),
            400,
            "invalid_scope",
        ),
        (
            "a wider scope",
            vec![("Authorization", &good), ("Content-Type", FORM)],
            "grant_type=client_credentials&scope=a:*".into(),
            400,
            "invalid_scope",
        ),
        (
            "an empty scope",
            vec![("Authorization", &good), ("Content-Type", FORM)],
            "grant_type=client_credentials&scope=".into(),
            400,
            "invalid_scope",
        ),
    ];
    let mut invalid_client_bodies = vec![];
    for (what, headers, form, status, error) in &cases {
        let r = post_token(&cp, headers, form);
        assert_eq!(r.status, *status, "{what}: {}", r.text());
        assert_eq!(r.json()["error"], *error, "{what}");
        assert!(r.json()["error_description"].is_string(), "{what}");
        assert_eq!(r.header("cache-control"), Some("no-store"), "{what}");
        if *status == 401 {
            assert_eq!(
                r.header("www-authenticate"),
                Some(r#"Basic realm="keygate-control-plane""#),
                "{what}"
            );
            invalid_client_bodies.push(r.body);
        }
    }
    // One answer for every client-authentication failure: no oracle for ids or secrets.
    invalid_client_bodies.dedup();
    assert_eq!(invalid_client_bodies.len(), 1);
}

#[test]
fn clients_and_signing_keys_reach_the_snapshot_and_its_deltas() {
    let mut cp = start();
    let v0 = cp.version();
    let (id, _) = client(
        &cp,
        json!({"workspace": "ws_acme", "template": "read-only", "expires_at": "2099-01-01T00:00:00Z"}),
    );
    let snap = cp.snapshot();
    assert_eq!(
        snap["clients"],
        json!([{"id": id, "workspace": "ws_acme", "status": "active", "expires_at": "2099-01-01T00:00:00Z"}])
    );
    assert_eq!(
        cp.admin("GET", &format!("/v1/oauth-clients/{id}"), None)
            .json()["data"]["scopes"],
        json!(["*:read"])
    );
    let first = snap["signing_keys"][0]["kid"].as_str().unwrap().to_owned();

    // A revocation is a client upsert; a repeat changes nothing.
    let v1 = cp.version();
    assert!(
        cp.admin("DELETE", &format!("/v1/oauth-clients/{id}"), None)
            .status
            < 300
    );
    assert!(
        cp.admin("DELETE", &format!("/v1/oauth-clients/{id}"), None)
            .status
            < 300
    );
    assert_eq!(cp.version(), v1 + 1);
    let delta = cp.sync_get(&format!("/v1/snapshot?since={v1}"), &[]).json();
    assert_eq!(delta["clients"]["upsert"][0]["status"], "revoked");
    assert!(delta.get("signing_keys").is_none(), "{delta}");
    assert!(delta.get("keys").is_some() && delta["keys"]["upsert"] == json!([]));

    // Rotation publishes both keys (the overlap); the delta carries the whole set.
    let v2 = cp.version();
    let r = cp.admin("POST", "/v1/signing-keys/rotate", None);
    assert_eq!(r.status, 200, "{}", r.text());
    let second = r.json()["data"]["kid"].as_str().unwrap().to_owned();
    let delta = cp.sync_get(&format!("/v1/snapshot?since={v2}"), &[]).json();
    let kids: Vec<&str> = delta["signing_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    let mut want = vec![first.as_str(), second.as_str()];
    want.sort();
    assert_eq!(kids, want);
    let listed = cp.admin("GET", "/v1/signing-keys", None).text();
    assert!(!listed.contains("seed"), "{listed}");

    // The current key cannot be retired; the previous one can, once.
    let r = cp.admin("DELETE", &format!("/v1/signing-keys/{second}"), None);
    assert_eq!(r.status, 409, "{}", r.text());
    let v3 = cp.version();
    assert!(
        cp.admin("DELETE", &format!("/v1/signing-keys/{first}"), None)
            .status
            < 300
    );
    let delta = cp.sync_get(&format!("/v1/snapshot?since={v3}"), &[]).json();
    assert_eq!(delta["signing_keys"].as_array().unwrap().len(), 1);
    assert_eq!(delta["signing_keys"][0]["kid"], second.as_str());

    // A workspace with clients cannot be deleted; everything survives a restart.
    let r = cp.admin("DELETE", "/v1/workspaces/ws_acme", None);
    assert_eq!(r.status, 409, "{}", r.text());
    let before = cp.snapshot();
    cp.stop();
    cp.restart();
    assert_eq!(cp.snapshot(), before);
    assert!(cp.version() > v0);
}

/// `token`'s claims verified with `public_key` for issuer `iss` and audience `aud`; `None` when
/// it does not verify.
fn verify_with(token: &str, public_key: &str, iss: &str, aud: &str) -> Option<AccessClaims> {
    install_provider();
    let mut v = Validation::new(Algorithm::EdDSA);
    v.set_issuer(&[iss]);
    v.set_audience(&[aud]);
    let key = decoding_key(public_key).unwrap();
    jsonwebtoken::decode::<AccessClaims>(token, &key, &v)
        .ok()
        .map(|d| d.claims)
}

/// The public key the snapshot publishes under `kid`, if it does.
fn published(cp: &ControlPlane, kid: &str) -> Option<String> {
    cp.snapshot()["signing_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .map(|k| {
            assert_eq!(k["alg"], "EdDSA");
            k["public_key"].as_str().unwrap().to_owned()
        })
}

fn token_of(r: &Response) -> String {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["access_token"].as_str().unwrap().to_owned()
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

#[test]
fn the_client_admin_api_shows_a_secret_once_and_never_its_hash() {
    let cp = start();
    cp.create_workspace("ws_other", "sandbox");
    let v0 = cp.version();
    let r = cp.admin(
        "POST",
        "/v1/oauth-clients",
        Some(json!({"workspace": "ws_acme", "name": "billing", "scopes": ["invoices:*"]})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["version"], v0 + 1);
    let made = r.json()["data"].clone();
    let id = made["id"].as_str().unwrap().to_owned();
    let secret = made["secret"].as_str().unwrap().to_owned();
    assert!(id.starts_with("oc_"), "{id}");
    assert_eq!(
        r.header("location"),
        Some(format!("/v1/oauth-clients/{id}").as_str())
    );
    assert_eq!(made["name"], "billing");
    assert_eq!(made["workspace"], "ws_acme");
    assert_eq!(made["scopes"], json!(["invoices:*"]));
    assert_eq!(made["status"], "active");
    assert_eq!(made["expires_at"], Value::Null);
    let hash = {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(secret.as_bytes());
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };

    // Neither the secret nor its hash is ever read back: not one, not the list, not the
    // snapshot.
    let one = cp.admin("GET", &format!("/v1/oauth-clients/{id}"), None);
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["data"]["id"], id.as_str());
    assert!(one.json()["data"].get("secret").is_none());
    for text in [
        one.text(),
        cp.admin("GET", "/v1/oauth-clients", None).text(),
        cp.sync_get("/v1/snapshot", &[]).text(),
    ] {
        assert!(
            !text.contains(&secret[7..]) && !text.contains(&hash),
            "{text}"
        );
        assert!(!text.contains("secret_hash"), "{text}");
    }
    // The database holds the hash, never the secret.
    let mut stored = Vec::new();
    for suffix in ["", "-wal"] {
        let path = format!("{}{suffix}", cp.db.display());
        stored.extend(std::fs::read(path).unwrap_or_default());
    }
    let stored = String::from_utf8_lossy(&stored);
    assert!(stored.contains(&hash));
    assert!(!stored.contains(&secret));

    // The list filters by workspace.
    let list = |q: &str| {
        let r = cp.admin("GET", &format!("/v1/oauth-clients{q}"), None);
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["data"].as_array().unwrap().len()
    };
    assert_eq!(
        (
            list(""),
            list("?workspace=ws_acme"),
            list("?workspace=ws_other")
        ),
        (1, 1, 0)
    );

    // A new secret, shown once; the old one stops at once. Not a snapshot change.
    let v1 = cp.version();
    let r = cp.admin(
        "POST",
        &format!("/v1/oauth-clients/{id}/rotate-secret"),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let new_secret = r.json()["data"]["secret"].as_str().unwrap().to_owned();
    assert!(new_secret.starts_with("cs_") && new_secret != secret);
    assert!(r.json()["data"]["secret_rotated_at"].is_string());
    assert_eq!(cp.version(), v1);
    assert_eq!(
        with_basic(&cp, &id, &secret, "grant_type=client_credentials").status,
        401
    );
    token_of(&with_basic(
        &cp,
        &id,
        &new_secret,
        "grant_type=client_credentials",
    ));
    let listed = cp
        .admin("GET", &format!("/v1/oauth-clients/{id}"), None)
        .text();
    assert!(!listed.contains(&new_secret[7..]), "{listed}");

    // What is refused.
    for (body, status) in [
        (json!({"workspace": "ws_nope", "scopes": []}), 400),
        (json!({"workspace": "ws_acme"}), 400),
        (
            json!({"workspace": "ws_acme", "scopes": ["a:read"], "template": "read-only"}),
            400,
        ),
        (
            json!({"workspace": "ws_acme", "scopes": ["bad scope"]}),
            400,
        ),
        (
            json!({"workspace": "ws_acme", "scopes": [], "secret": "mine"}),
            400,
        ),
    ] {
        let r = cp.admin("POST", "/v1/oauth-clients", Some(body.clone()));
        assert_eq!(r.status, status, "{body}: {}", r.text());
    }
    assert_eq!(
        cp.admin("GET", "/v1/oauth-clients/oc_nope", None).status,
        404
    );
    assert_eq!(
        cp.admin("DELETE", "/v1/oauth-clients/oc_nope", None).status,
        404
    );
    assert_eq!(cp.call("GET", "/v1/oauth-clients", None, None).status, 401);
    assert_eq!(
        cp.call(
            "GET",
            "/v1/oauth-clients",
            Some(keygate_test_support::cp::SYNC_TOKEN),
            None
        )
        .status,
        401
    );
    assert_eq!(cp.version(), v1, "refused requests change nothing");

    // Revoked: no new secret for it, and it shows as revoked.
    assert_eq!(
        cp.admin("DELETE", &format!("/v1/oauth-clients/{id}"), None)
            .status,
        200
    );
    let r = cp.admin(
        "POST",
        &format!("/v1/oauth-clients/{id}/rotate-secret"),
        None,
    );
    assert_eq!(r.status, 409, "{}", r.text());
    let one = cp
        .admin("GET", &format!("/v1/oauth-clients/{id}"), None)
        .json();
    assert_eq!(one["data"]["status"], "revoked");
    assert!(one["data"]["revoked_at"].is_string());

    // The token endpoint takes POST only.
    let r = http::request(cp.addr, "GET", "/oauth/token", &[], None);
    assert_eq!(r.status, 405, "{}", r.text());
}

#[test]
fn a_token_narrows_to_a_subset_of_the_clients_scopes() {
    let cp = start();
    let (id, secret) = client(
        &cp,
        json!({"workspace": "ws_acme", "scopes": ["a:read", "b:write"]}),
    );
    let scope_of = |form: &str| {
        let r = with_basic(&cp, &id, &secret, form);
        (r.status, r.json())
    };
    let (status, body) = scope_of("grant_type=client_credentials&scope=a%3Aread");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "a:read");
    assert_eq!(
        claims(&cp, body["access_token"].as_str().unwrap()).1.scope,
        "a:read"
    );
    let (_, body) = scope_of("grant_type=client_credentials&scope=b:write+a:read+b:write");
    assert_eq!(body["scope"], "b:write a:read");
    let (_, body) = scope_of("grant_type=client_credentials");
    assert_eq!(body["scope"], "a:read b:write");
    for refused in [
        "c:read",
        "a:read+c:read",
        "a:write",
        "a:*",
        "a%3A%3Aread",
        "+",
    ] {
        let (status, body) = scope_of(&format!("grant_type=client_credentials&scope={refused}"));
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_scope")),
            "{refused}: {body}"
        );
    }

    // A client may hold no scopes: its tokens carry none.
    let (bare, bare_secret) = client(&cp, json!({"workspace": "ws_acme", "scopes": []}));
    let r = with_basic(&cp, &bare, &bare_secret, "grant_type=client_credentials");
    assert_eq!(r.json()["scope"], "");
    assert_eq!(claims(&cp, &token_of(&r)).1.scope, "");
}

#[test]
fn an_expiring_client_caps_its_tokens_and_then_gets_none() {
    let cp = start();
    let expires = time::OffsetDateTime::now_utc().unix_timestamp() + 3;
    let at = time::OffsetDateTime::from_unix_timestamp(expires)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let (id, secret) = client(
        &cp,
        json!({"workspace": "ws_acme", "scopes": ["a:read"], "expires_at": at}),
    );
    let r = with_basic(&cp, &id, &secret, "grant_type=client_credentials");
    let token = token_of(&r);
    let (_, c) = claims(&cp, &token);
    assert_eq!(c.exp, expires, "never past the client's own expiry");
    assert_eq!(r.json()["expires_in"], c.exp - c.iat);
    assert!(c.exp - c.iat <= 3);
    assert_eq!(cp.snapshot()["clients"][0]["expires_at"], at.as_str());

    std::thread::sleep(std::time::Duration::from_millis(
        u64::try_from(expires + 1 - time::OffsetDateTime::now_utc().unix_timestamp()).unwrap_or(0)
            * 1000,
    ));
    let r = with_basic(&cp, &id, &secret, "grant_type=client_credentials");
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["error"], "invalid_client");
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Basic realm="keygate-control-plane""#)
    );
    let listed = cp
        .admin("GET", &format!("/v1/oauth-clients/{id}"), None)
        .json();
    assert_eq!(listed["data"]["status"], "expired");
}

#[test]
fn tokens_signed_before_a_rotation_verify_until_their_key_is_retired() {
    let mut cp = start();
    let (id, secret) = client(&cp, json!({"workspace": "ws_acme", "scopes": ["a:read"]}));
    let before = token_of(&with_basic(
        &cp,
        &id,
        &secret,
        "grant_type=client_credentials",
    ));
    let old = kid_of(&before);
    let old_key = published(&cp, &old).expect("the signing key is published");
    assert!(verify_with(&before, &old_key, "keygate-control-plane", "keygate").is_some());

    // The key survives a restart: tokens go on being signed with it.
    cp.stop();
    cp.restart();
    let again = token_of(&with_basic(
        &cp,
        &id,
        &secret,
        "grant_type=client_credentials",
    ));
    assert_eq!(kid_of(&again), old);

    let v = cp.version();
    let r = cp.admin("POST", "/v1/signing-keys/rotate", None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["version"], v + 1);
    let new = r.json()["data"]["kid"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    let after = token_of(&with_basic(
        &cp,
        &id,
        &secret,
        "grant_type=client_credentials",
    ));
    assert_eq!(
        kid_of(&after),
        new,
        "tokens are signed with the new key at once"
    );

    // The overlap: both keys are published, and the token minted before verifies with the old.
    let old_key = published(&cp, &old).expect("the previous key stays published");
    let new_key = published(&cp, &new).expect("the current key is published");
    assert!(verify_with(&before, &old_key, "keygate-control-plane", "keygate").is_some());
    assert!(verify_with(&before, &new_key, "keygate-control-plane", "keygate").is_none());
    assert!(verify_with(&after, &new_key, "keygate-control-plane", "keygate").is_some());
    let states: Vec<(String, String)> = cp.admin("GET", "/v1/signing-keys", None).json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["kid"].as_str().unwrap().to_owned(),
                k["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            (old.clone(), "previous".to_owned()),
            (new.clone(), "current".to_owned())
        ]
    );

    // The current key cannot be retired; the previous can, once.
    let v = cp.version();
    let r = cp.admin("DELETE", &format!("/v1/signing-keys/{new}"), None);
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("current"), "{}", r.text());
    assert_eq!(
        cp.admin("DELETE", "/v1/signing-keys/kid_nope", None).status,
        404
    );
    assert_eq!(cp.version(), v);
    let r = cp.admin("DELETE", &format!("/v1/signing-keys/{old}"), None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"]["state"], "retired");
    assert_eq!(cp.version(), v + 1);
    let r = cp.admin("DELETE", &format!("/v1/signing-keys/{old}"), None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(cp.version(), v + 1, "retiring again changes nothing");
    assert_eq!(
        published(&cp, &old),
        None,
        "a retired key is no longer published"
    );
    assert_eq!(cp.snapshot()["signing_keys"].as_array().unwrap().len(), 1);
    let listed = cp.admin("GET", "/v1/signing-keys", None).json();
    assert_eq!(listed["data"][0]["state"], "retired");
    assert!(listed["data"][0]["retired_at"].is_string());
}

#[test]
fn token_settings_shape_the_claims_and_bad_ones_stop_the_start() {
    let cp = ControlPlane::builder(BIN)
        .token_issuer("https://auth.example.com")
        .token_audience("orders-api")
        .token_lifetime("10m")
        .start();
    cp.create_workspace("ws_acme", "live");
    let (id, secret) = client(&cp, json!({"workspace": "ws_acme", "scopes": []}));
    let r = with_basic(&cp, &id, &secret, "grant_type=client_credentials");
    assert_eq!(r.json()["expires_in"], 600);
    let token = token_of(&r);
    let key = published(&cp, &kid_of(&token)).unwrap();
    assert!(verify_with(&token, &key, "keygate-control-plane", "keygate").is_none());
    let c = verify_with(&token, &key, "https://auth.example.com", "orders-api").unwrap();
    assert_eq!(c.exp - c.iat, 600);

    let dir = tempfile::tempdir().unwrap();
    for (lifetime, why) in [
        ("25h", "between 1m and 24h"),
        ("30s", "between 1m and 24h"),
        ("soon", ""),
    ] {
        let out = std::process::Command::new(BIN)
            .arg("--db")
            .arg(dir.path().join("cp.sqlite"))
            .args(["--listen", "127.0.0.1:1", "--token-lifetime", lifetime])
            .env(
                "KEYGATE_CP_ADMIN_TOKEN",
                keygate_test_support::cp::ADMIN_TOKEN,
            )
            .env(
                "KEYGATE_CP_SYNC_TOKEN",
                keygate_test_support::cp::SYNC_TOKEN,
            )
            .env_remove("KEYGATE_CP_SIGNING_KEY")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{lifetime}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("token-lifetime") && stderr.contains(why),
            "{lifetime}: {stderr}"
        );
    }
}

//! Browser client tokens through the real binary, with the minting key and the signing key in a
//! keys file: where a client token is accepted (Authorization anywhere; the `access_token` query
//! parameter and the `Sec-WebSocket-Protocol` entry only on `browser: true` routes), that it
//! never reaches the upstream or the logs, and that it can never do more than its key can now.
//! The tokens are signed here with the protocol's signer, as a control plane signs them;
//! `tests/oauth.rs` mints them from the reference control plane, and `tests/websocket.rs` opens
//! WebSockets with them.

mod common;

use common::http::Response;
use common::*;
use keygate_protocol::tokens::AccessClaims;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const ISSUER: &str = "https://cp.example.test";
const AUDIENCE: &str = "keygate";
const MINTER: &str = "sk_live_CLIENTTOKENMINTER00000000000000000001";
const OTHER: &str = "sk_live_CLIENTTOKENOTHER000000000000000001";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A client token for `key_id` in `workspace`, as the control plane mints one.
fn claims(key_id: &str, workspace: &str, scope: &str) -> AccessClaims {
    let now = now();
    AccessClaims {
        iss: ISSUER.into(),
        sub: key_id.into(),
        aud: AUDIENCE.into(),
        exp: now + 600,
        nbf: now,
        iat: now,
        jti: format!("jti_{key_id}_{scope}_{}", now),
        client_id: key_id.into(),
        scope: scope.into(),
        workspace: workspace.into(),
    }
}

fn client_token(scope: &str) -> String {
    token_signer("kid_1", 1).sign_client_token(&claims("key_minter", "ws_live", scope))
}

/// The minting key as `minter` says (scopes, status, restrictions), and an unrelated key.
fn keys_with(minter: impl FnOnce(Keys) -> Keys) -> Keys {
    let keys = Keys::new(1)
        .workspace("ws_live", WorkspaceKind::Live)
        .workspace("ws_other", WorkspaceKind::Live)
        .signing_key("kid_1", token_signer("kid_1", 1).public_key())
        .client("oc_reader", "ws_live", KeyStatus::Active);
    minter(keys).key("key_other", OTHER, Some("ws_other"), Some(&["*"]))
}

fn minter(scopes: &'static [&'static str]) -> impl FnOnce(Keys) -> Keys {
    move |k: Keys| k.key("key_minter", MINTER, Some("ws_live"), Some(scopes))
}

fn start(keys: &Keys, up: &http::Echo) -> Keygate {
    Keygate::start(Setup::new(up, keys).config(|c| {
        accept_client_tokens(c, ISSUER);
    }))
}

fn assert_misplaced(r: &Response, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", r.text());
    assert_eq!(r.json()["code"], "invalid_credentials", "{what}");
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("routes marked for browsers"),
        "{what}: {}",
        r.text()
    );
}

#[test]
fn a_client_token_in_the_query_of_a_browser_route_acts_as_its_key_and_is_not_forwarded() {
    let up = http::Echo::start();
    let kg = start(&keys_with(minter(&["products:*"])), &up);
    let token = client_token("products:read");

    let r = kg.get(
        &format!("/v1/live/feed?room=7&access_token={token}&x=%20y"),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["path"], "/v1/live/feed?room=7&x=%20y");
    assert_eq!(
        upstream_header(&r, "x-auth-type").as_deref(),
        Some("client_token")
    );
    assert_eq!(
        upstream_header(&r, "x-api-key-id").as_deref(),
        Some("key_minter")
    );
    assert_eq!(
        upstream_header(&r, "x-workspace-id").as_deref(),
        Some("ws_live")
    );
    assert_eq!(
        upstream_header(&r, "x-api-key-scopes").as_deref(),
        Some("products:read")
    );
    assert!(!r.text().contains(&token), "the token reached the upstream");

    // The only parameter, spelt percent-encoded: the query goes altogether.
    let r = kg.get(&format!("/v1/live/feed?access%5Ftoken={token}"), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["path"], "/v1/live/feed");

    // In Authorization a client token works on any route its scopes grant.
    let r = kg.get("/v1/products/1", &[("authorization", &bearer(&token))]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        upstream_header(&r, "x-auth-type").as_deref(),
        Some("client_token")
    );
    // And only those (a token holding a scope its key lacks is refused outright: below).
    let r = kg.get(
        "/v1/products/1",
        &[("authorization", &bearer(&client_token("products:write")))],
    );
    assert_eq!(r.status, 403, "{}", r.text());

    kg.settle(4);
    // The access log tells a client token from its key, which shares its `key_id` (its writer
    // batches lines, so they are awaited).
    let by_token = || {
        kg.access_log()
            .iter()
            .filter(|l| l["key_id"] == "key_minter" && l["auth_type"] == "client_token")
            .count()
    };
    let logged = within(Duration::from_secs(2), || by_token() == 4);
    assert!(logged.is_some(), "{}", kg.access_log_text());
    for log in [kg.access_log_text(), kg.log()] {
        assert!(!log.contains(&token), "the token was logged");
        assert!(
            !log.contains(&token[token.len() - 20..]),
            "the token was logged"
        );
    }
}

#[test]
fn a_client_token_in_the_subprotocols_is_taken_out_and_the_others_kept() {
    let up = http::Echo::start();
    let kg = start(&keys_with(minter(&["products:*"])), &up);
    let token = client_token("products:read");
    let r = kg.get(
        "/v1/live/feed",
        &[(
            "sec-websocket-protocol",
            &format!("chat.v2, access_token.{token}, json"),
        )],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        upstream_header(&r, "sec-websocket-protocol").as_deref(),
        Some("chat.v2, json")
    );
    assert!(!r.text().contains(&token), "the token reached the upstream");
    let r = kg.get(
        "/v1/live/feed",
        &[("sec-websocket-protocol", &format!("access_token.{token}"))],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(upstream_header(&r, "sec-websocket-protocol"), None);
}

#[test]
fn outside_a_browser_route_a_credential_in_the_url_or_subprotocols_is_refused() {
    let up = http::Echo::start();
    let kg = start(&keys_with(minter(&["products:*"])), &up);
    let token = client_token("products:read");
    let query = kg.get(&format!("/v1/products/1?access_token={token}"), &[]);
    assert_misplaced(&query, "client token in the query of a plain route");
    let protocol = kg.get(
        "/v1/products/1",
        &[("sec-websocket-protocol", &format!("access_token.{token}"))],
    );
    assert_misplaced(
        &protocol,
        "client token in the subprotocols of a plain route",
    );
    // Even beside a good key in Authorization: the URL would carry the token upstream.
    let both = kg.get(
        &format!("/v1/products/1?access_token={token}"),
        &[("authorization", &bearer(MINTER))],
    );
    assert_misplaced(&both, "client token in the query beside a key");
    assert_eq!(
        kg.metric(r#"keygate_auth_failures_total{reason="misplaced"}"#),
        Some(3.0)
    );
}

#[test]
fn only_a_client_token_is_taken_from_the_url_and_only_one_credential() {
    let up = http::Echo::start();
    let kg = start(&keys_with(minter(&["products:*"])), &up);
    let token = client_token("products:read");
    // An API key is refused from the query, good or not, without being looked up.
    assert_misplaced(
        &kg.get(&format!("/v1/live/x?access_token={MINTER}"), &[]),
        "API key in the query",
    );
    // An OAuth access token is not a browser token.
    let oauth = token_signer("kid_1", 1).sign(&claims("oc_reader", "ws_live", "products:read"));
    assert_eq!(
        kg.get("/v1/products/1", &[("authorization", &bearer(&oauth))])
            .status,
        200,
        "the OAuth token itself is good"
    );
    assert_misplaced(
        &kg.get(&format!("/v1/live/x?access_token={oauth}"), &[]),
        "OAuth token in the query",
    );
    // Two credentials, in any two places, are refused rather than one picked.
    for (what, query, headers) in [
        (
            "query twice",
            format!("access_token={token}&access_token={token}"),
            vec![],
        ),
        (
            "query and Authorization",
            format!("access_token={token}"),
            vec![("authorization", bearer(MINTER))],
        ),
        (
            "query and subprotocol",
            format!("access_token={token}"),
            vec![("sec-websocket-protocol", format!("access_token.{token}"))],
        ),
    ] {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let r = kg.get(&format!("/v1/live/x?{query}"), &headers);
        assert_eq!(r.status, 401, "{what}: {}", r.text());
    }
    // Junk in the parameter is a malformed credential, not a missing one.
    assert_eq!(kg.get("/v1/live/x?access_token=nope", &[]).status, 401);
    // Without any credential, the usual 401.
    let r = kg.get("/v1/live/x?room=1", &[]);
    assert_eq!(r.json()["code"], "missing_credentials", "{}", r.text());
}

#[test]
fn a_client_token_never_outlives_or_outgrows_its_key() {
    let up = http::Echo::start();
    let kg = start(&keys_with(minter(&["products:*"])), &up);
    let token = client_token("products:read");
    let wide = client_token("products:*");
    let get = |t: &str| {
        kg.get(&format!("/v1/live/feed?access_token={t}"), &[])
            .status
    };
    assert_eq!(get(&token), 200);
    assert_eq!(get(&wide), 200);

    // Narrowing the key takes back what its tokens held beyond it.
    kg.replace_keys(&keys_with(minter(&["products:read"])).yaml());
    assert!(within(Duration::from_secs(1), || get(&wide) == 401).is_some());
    assert_eq!(get(&token), 200);

    // The key's endpoint restriction binds its tokens; its address restriction does not
    // (browsers call from elsewhere).
    let restricted = |k: Keys| minter(&["products:*"])(k).restricted(&["10.9.9.9"], &[], &["live"]);
    kg.replace_keys(&keys_with(restricted).yaml());
    let r = kg.get("/v1/products/1", &[("authorization", &bearer(&token))]);
    assert!(
        within(Duration::from_secs(1), || {
            kg.get("/v1/products/1", &[("authorization", &bearer(&token))])
                .status
                == 403
        })
        .is_some(),
        "{}",
        r.text()
    );
    assert_eq!(get(&token), 200, "the address restriction was applied");

    // Revoking the key stops its tokens within the revocation bound.
    let revoked = |k: Keys| minter(&["products:*"])(k).revoked();
    kg.replace_keys(&keys_with(revoked).yaml());
    let took = within(Duration::from_secs(1), || get(&token) == 401);
    assert!(took.is_some(), "a revoked key's token still works");
}

#[test]
fn a_token_claiming_another_key_or_workspace_or_more_than_its_key_is_refused() {
    let up = http::Echo::start();
    let kg = start(&keys_with(minter(&["products:read"])), &up);
    let signer = token_signer("kid_1", 1);
    let cases = [
        (
            "a key of another workspace",
            claims("key_other", "ws_live", "products:read"),
        ),
        (
            "a workspace that is not its key's",
            claims("key_minter", "ws_other", "products:read"),
        ),
        (
            "an unknown key",
            claims("key_nobody", "ws_live", "products:read"),
        ),
        (
            "more than the key",
            claims("key_minter", "ws_live", "products:*"),
        ),
        (
            "a key id as an OAuth client",
            claims("key_minter", "ws_live", "products:read"),
        ),
    ];
    for (i, (what, c)) in cases.into_iter().enumerate() {
        // The last case is signed as an access token: the key is no OAuth client.
        let t = if i == 4 {
            signer.sign(&c)
        } else {
            signer.sign_client_token(&c)
        };
        let r = kg.get("/v1/products/1", &[("authorization", &bearer(&t))]);
        assert_eq!(r.status, 401, "{what}: {}", r.text());
    }
}

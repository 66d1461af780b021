//! The reference control plane, end to end: the real `keygate-control-plane` binary on a
//! temporary SQLite file, driven over real HTTP on loopback.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use keygate::secret::{self, KeyHash};
use keygate_test_support::cp::{ADMIN_TOKEN, ControlPlane, SYNC_TOKEN};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_keygate-control-plane");

fn ids(list: &Value) -> Vec<String> {
    let mut v: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|x| match x {
            Value::String(s) => s.clone(),
            other => other["id"].as_str().unwrap().to_owned(),
        })
        .collect();
    v.sort();
    v
}

fn find<'a>(list: &'a Value, id: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .unwrap_or_else(|| panic!("{id} not in {list}"))
}

#[test]
fn full_snapshot_has_the_schema_an_etag_and_answers_304() {
    let cp = ControlPlane::start(BIN);
    let r = cp.sync_get("/v1/snapshot", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("etag"), Some("\"0\""));
    // A new database holds nothing but the first signing key of access tokens.
    let listed = cp.admin("GET", "/v1/signing-keys", None).json()["data"][0].clone();
    assert_eq!(listed["state"], "current");
    assert_eq!(
        r.json(),
        json!({"version": 0, "workspaces": [], "keys": [], "signing_keys": [
            {"kid": listed["kid"], "alg": "EdDSA", "public_key": listed["public_key"]}
        ]})
    );

    let r = cp.admin(
        "POST",
        "/v1/workspaces",
        Some(json!({"id": "ws_acme", "type": "live", "limits": {"burst_per_second": 50, "sustained_per_minute": 5000, "concurrent_requests": 8}})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["version"], 1);
    assert_eq!(cp.create_workspace("ws_sandbox", "sandbox"), 2);
    let (_, scoped) = cp.create_key(json!({
        "name": "acme prod", "workspace": "ws_acme", "environment": "live",
        "scopes": ["products:read", "orders:*"], "expires_at": "2099-01-31T00:00:00Z"
    }));
    let (_, legacy) = cp.create_key(json!({"workspace": "ws_acme", "legacy": true}));
    let (_, bare) = cp.create_key(json!({"workspace": "ws_sandbox", "environment": "test"}));
    let (v, internal) = cp.create_key(
        json!({"name": "platform", "internal": true, "environment": "live", "scopes": ["*"]}),
    );
    assert_eq!(v, 6);

    let r = cp.sync_get("/v1/snapshot", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("etag"), Some("\"6\""));
    assert_eq!(r.header("content-type"), Some("application/json"));
    // keygate's own parser takes it whole.
    let parsed = keygate::snapshot::parse(&r.body, keygate::snapshot::Format::Json, "cp").unwrap();
    assert_eq!(
        (
            parsed.version(),
            parsed.key_count(),
            parsed.workspace_count(),
            parsed.skipped_count()
        ),
        (6, 4, 2, 0)
    );
    let snap = r.json();
    assert_eq!(
        snap["workspaces"],
        json!([
            {"id": "ws_acme", "type": "live", "limits": {"burst_per_second": 50, "sustained_per_minute": 5000, "concurrent_requests": 8}},
            {"id": "ws_sandbox", "type": "sandbox"},
        ])
    );
    let keys = &snap["keys"];
    let secret = |k: &Value| k["secret"].as_str().unwrap().to_owned();
    assert_eq!(
        find(keys, scoped["id"].as_str().unwrap()),
        &json!({
            "id": scoped["id"], "name": "acme prod", "hash": KeyHash::of(&secret(&scoped)).to_hex(),
            "workspace": "ws_acme", "scopes": ["products:read", "orders:*"], "status": "active",
            "expires_at": "2099-01-31T00:00:00Z"
        })
    );
    // Legacy: no scopes field at all. No name: no name field.
    assert_eq!(
        find(keys, legacy["id"].as_str().unwrap()),
        &json!({"id": legacy["id"], "hash": KeyHash::of(&secret(&legacy)).to_hex(), "workspace": "ws_acme", "status": "active"})
    );
    assert_eq!(
        find(keys, bare["id"].as_str().unwrap())["scopes"],
        json!([])
    );
    assert!(secret(&bare).starts_with("sk_test_"));
    assert!(secret(&scoped).starts_with("sk_live_"));
    assert_eq!(
        find(keys, internal["id"].as_str().unwrap()),
        &json!({"id": internal["id"], "name": "platform", "hash": KeyHash::of(&secret(&internal)).to_hex(),
                "internal": true, "scopes": ["*"], "status": "active"})
    );

    // Conditional requests.
    let r = cp.sync_get("/v1/snapshot", &[("If-None-Match", "\"6\"")]);
    assert_eq!(r.status, 304);
    assert_eq!(r.header("etag"), Some("\"6\""));
    assert!(r.body.is_empty());
    let r = cp.sync_get("/v1/snapshot", &[("If-None-Match", "\"5\"")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), snap);
    // Without If-None-Match, a second read is the same bytes (served from the cache).
    assert_eq!(cp.sync_get("/v1/snapshot", &[]).json(), snap);
}

#[test]
fn writes_bump_the_version_by_one_and_deltas_carry_exactly_the_changes() {
    let cp = ControlPlane::start(BIN);
    assert_eq!(cp.create_workspace("ws_a", "live"), 1);
    let (_, a) = cp.create_key(json!({"name": "a", "workspace": "ws_a", "scopes": ["x:read"]}));
    let (v, b) = cp.create_key(json!({"name": "b", "workspace": "ws_a"}));
    assert_eq!(v, 3);
    let (a_id, b_id) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());

    let r = cp.admin("DELETE", &format!("/v1/api-keys/{a_id}"), None);
    assert_eq!(
        (r.status, r.json()),
        (200, json!({"success": true, "version": 4}))
    );
    // Revoking again changes nothing: no new version.
    let r = cp.admin("DELETE", &format!("/v1/api-keys/{a_id}"), None);
    assert_eq!((r.status, r.json()["version"].clone()), (200, json!(4)));
    let (v, c) = cp.create_key(json!({"name": "c", "workspace": "ws_a"}));
    assert_eq!(v, 5);
    assert_eq!(cp.create_workspace("ws_gone", "sandbox"), 6);
    let r = cp.admin("DELETE", "/v1/workspaces/ws_gone", None);
    assert_eq!((r.status, r.json()["version"].clone()), (200, json!(7)));
    let r = cp.admin("DELETE", &format!("/v1/api-keys/{b_id}?purge=true"), None);
    assert_eq!((r.status, r.json()["version"].clone()), (200, json!(8)));
    let r = cp.admin(
        "PUT",
        "/v1/workspaces/ws_a",
        Some(json!({"limits": {"burst_per_second": 9, "concurrent_requests": 4}})),
    );
    assert_eq!(
        (r.status, r.json()["version"].clone()),
        (200, json!(9)),
        "{}",
        r.text()
    );
    // The same update again changes nothing.
    let r = cp.admin(
        "PUT",
        "/v1/workspaces/ws_a",
        Some(json!({"limits": {"burst_per_second": 9, "concurrent_requests": 4}})),
    );
    assert_eq!(r.json()["version"], 9);

    let r = cp.sync_get("/v1/snapshot?since=3", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("etag"), Some("\"9\""));
    let d = r.json();
    assert_eq!(
        (d["from"].clone(), d["version"].clone()),
        (json!(3), json!(9))
    );
    assert_eq!(
        d["workspaces"],
        json!({"upsert": [{"id": "ws_a", "type": "live", "limits": {"burst_per_second": 9, "concurrent_requests": 4}}], "remove": ["ws_gone"]})
    );
    let mut expected_keys = vec![a_id.to_owned(), c["id"].as_str().unwrap().to_owned()];
    expected_keys.sort();
    assert_eq!(ids(&d["keys"]["upsert"]), expected_keys);
    assert_eq!(find(&d["keys"]["upsert"], a_id)["status"], "revoked");
    assert_eq!(d["keys"]["remove"], json!([b_id]));
    // The upserts are exactly the entries of the full snapshot.
    let full = cp.snapshot();
    for k in d["keys"]["upsert"].as_array().unwrap() {
        assert_eq!(find(&full["keys"], k["id"].as_str().unwrap()), k);
    }

    // Just the last change.
    let d = cp.sync_get("/v1/snapshot?since=8", &[]).json();
    assert_eq!(d["keys"], json!({"upsert": [], "remove": []}));
    assert_eq!(ids(&d["workspaces"]["upsert"]), vec!["ws_a"]);
    // Current: 304. Future: 410.
    let r = cp.sync_get("/v1/snapshot?since=9", &[]);
    assert_eq!((r.status, r.header("etag")), (304, Some("\"9\"")));
    let r = cp.sync_get("/v1/snapshot?since=10", &[]);
    assert_eq!(r.status, 410);
    assert_eq!(r.json()["success"], false);
    // since=0 is everything ever done, still in the log.
    let d = cp.sync_get("/v1/snapshot?since=0", &[]).json();
    assert_eq!(d["from"], 0);
    assert_eq!(ids(&d["keys"]["remove"]), vec![b_id.to_owned()]);

    // A rotation is one version with both keys.
    let c_id = c["id"].as_str().unwrap();
    let r = cp.admin(
        "POST",
        &format!("/v1/api-keys/{c_id}/rotate"),
        Some(json!({"expires_in_seconds": 3600})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let rotated = r.json();
    assert_eq!(rotated["version"], 10);
    let new_id = rotated["data"]["id"].as_str().unwrap();
    let d = cp.sync_get("/v1/snapshot?since=9", &[]).json();
    let mut both = vec![c_id.to_owned(), new_id.to_owned()];
    both.sort();
    assert_eq!(ids(&d["keys"]["upsert"]), both);
}

#[test]
fn a_since_older_than_the_history_is_gone() {
    let cp = ControlPlane::builder(BIN).history(5).start();
    for i in 0..8 {
        cp.create_workspace(&format!("ws_{i}"), "live");
    }
    // Version 8; versions 4..=8 are in the log, so deltas from 3 on can be built.
    for old in [0, 1, 2] {
        let r = cp.sync_get(&format!("/v1/snapshot?since={old}"), &[]);
        assert_eq!(r.status, 410, "since={old}: {}", r.text());
        assert_eq!(r.json()["version"], 8);
    }
    let d = cp.sync_get("/v1/snapshot?since=3", &[]).json();
    assert_eq!(
        ids(&d["workspaces"]["upsert"]),
        vec!["ws_3", "ws_4", "ws_5", "ws_6", "ws_7"]
    );
    // The full snapshot always works.
    assert_eq!(cp.snapshot()["workspaces"].as_array().unwrap().len(), 8);
}

#[test]
fn a_long_poll_returns_right_after_a_revocation_and_304_when_nothing_changes() {
    let cp = Arc::new(ControlPlane::start(BIN));
    cp.create_workspace("ws", "live");
    let (v, key) = cp.create_key(json!({"workspace": "ws", "scopes": ["a:b"]}));
    let id = key["id"].as_str().unwrap().to_owned();

    // Nothing changes: 304 once the wait is over, not before.
    let t = Instant::now();
    let r = cp.sync_get(&format!("/v1/snapshot?since={v}&wait=300ms"), &[]);
    let waited = t.elapsed();
    assert_eq!(r.status, 304);
    assert!(
        waited >= Duration::from_millis(290) && waited < Duration::from_secs(2),
        "{waited:?}"
    );

    // A revocation from another thread wakes the poll at once.
    let revoker = {
        let cp = cp.clone();
        let id = id.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            let sent = Instant::now();
            let r = cp.admin("DELETE", &format!("/v1/api-keys/{id}"), None);
            assert_eq!(r.status, 200);
            sent
        })
    };
    let r = cp.sync_get(&format!("/v1/snapshot?since={v}&wait=30s"), &[]);
    let returned = Instant::now();
    let sent = revoker.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let d = r.json();
    assert_eq!(d["version"], v + 1);
    assert_eq!(d["keys"]["upsert"][0]["status"], "revoked");
    let latency = returned.saturating_duration_since(sent);
    eprintln!("revocation reached the long-poll in {latency:?}");
    assert!(latency < Duration::from_secs(1), "{latency:?}");

    // The full form long-polls on If-None-Match.
    let etag = format!("\"{}\"", v + 1);
    let creator = {
        let cp = cp.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            let sent = Instant::now();
            cp.create_key(json!({"workspace": "ws"}));
            sent
        })
    };
    let r = cp.sync_get("/v1/snapshot?wait=30s", &[("If-None-Match", &etag)]);
    let returned = Instant::now();
    let sent = creator.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["version"], v + 2);
    assert!(returned.saturating_duration_since(sent) < Duration::from_secs(1));
    let r = cp.sync_get(
        "/v1/snapshot?wait=300ms",
        &[("If-None-Match", &format!("\"{}\"", v + 2))],
    );
    assert_eq!(r.status, 304);

    // A version already behind answers at once, waiting or not.
    let t = Instant::now();
    let r = cp.sync_get(&format!("/v1/snapshot?since={v}&wait=30s"), &[]);
    assert_eq!(r.status, 200);
    assert!(t.elapsed() < Duration::from_secs(1));
}

#[test]
fn many_long_polls_all_wake_on_one_change() {
    let cp = Arc::new(ControlPlane::start(BIN));
    let v = cp.create_workspace("ws", "live");
    let start = Arc::new(Barrier::new(21));
    let polls: Vec<_> = (0..20)
        .map(|_| {
            let (cp, start) = (cp.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                let r = cp.sync_get(&format!("/v1/snapshot?since={v}&wait=20s"), &[]);
                (r.status, Instant::now())
            })
        })
        .collect();
    start.wait();
    std::thread::sleep(Duration::from_millis(500));
    let sent = Instant::now();
    cp.create_key(json!({"workspace": "ws"}));
    for p in polls {
        let (status, at) = p.join().unwrap();
        assert_eq!(status, 200);
        assert!(at.saturating_duration_since(sent) < Duration::from_secs(1));
    }
}

#[test]
fn state_survives_a_restart_and_a_kill() {
    let mut cp = ControlPlane::start(BIN);
    cp.create_workspace("ws", "sandbox");
    let (_, k1) = cp.create_key(json!({"name": "one", "workspace": "ws", "scopes": ["a:*"]}));
    let (_, k2) = cp.create_key(json!({"name": "two", "workspace": "ws"}));
    cp.admin(
        "DELETE",
        &format!("/v1/api-keys/{}", k2["id"].as_str().unwrap()),
        None,
    );
    let before = cp.sync_get("/v1/snapshot", &[]);
    assert_eq!(before.header("etag"), Some("\"4\""));

    cp.stop();
    cp.restart();
    let after = cp.sync_get("/v1/snapshot", &[]);
    assert_eq!(after.header("etag"), Some("\"4\""));
    assert_eq!(after.body, before.body);
    // The change log survives too.
    let d = cp.sync_get("/v1/snapshot?since=1", &[]).json();
    assert_eq!(ids(&d["keys"]["upsert"]).len(), 2);
    assert_eq!(cp.sync_get("/v1/snapshot?since=4", &[]).status, 304);
    let listed = cp.admin("GET", "/v1/api-keys", None).json();
    assert_eq!(
        find(&listed["data"], k1["id"].as_str().unwrap())["name"],
        "one"
    );

    // A write acknowledged just before SIGKILL is there after the restart.
    let (v, k3) = cp.create_key(json!({"name": "three", "workspace": "ws"}));
    assert_eq!(v, 5);
    cp.kill();
    cp.restart();
    let snap = cp.snapshot();
    assert_eq!(snap["version"], 5);
    find(&snap["keys"], k3["id"].as_str().unwrap());
    // Versions go on from there.
    assert_eq!(cp.create_workspace("ws2", "live"), 6);
}

#[test]
fn fifty_concurrent_creations_from_ten_threads_get_distinct_versions() {
    let cp = Arc::new(ControlPlane::start(BIN));
    let base = cp.create_workspace("ws", "live");
    let start = Arc::new(Barrier::new(10));
    let threads: Vec<_> = (0..10)
        .map(|t| {
            let (cp, start) = (cp.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                (0..5)
                    .map(|i| {
                        let (v, data) = cp.create_key(json!({
                            "name": format!("t{t}-{i}"), "workspace": "ws", "scopes": ["a:read"]
                        }));
                        (v, data["id"].as_str().unwrap().to_owned())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let made: Vec<(u64, String)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(made.len(), 50);
    let versions: HashSet<u64> = made.iter().map(|(v, _)| *v).collect();
    assert_eq!(versions.len(), 50, "versions repeat");
    assert_eq!(
        versions,
        (base + 1..=base + 50).collect::<HashSet<u64>>(),
        "versions skip"
    );
    let snap = cp.snapshot();
    assert_eq!(snap["version"], base + 50);
    assert_eq!(snap["keys"].as_array().unwrap().len(), 50);
    // Each version's delta names exactly the key made in it.
    for (v, id) in made.iter().take(5) {
        let d = cp
            .sync_get(&format!("/v1/snapshot?since={}", v - 1), &[])
            .json();
        if *v == base + 50 {
            assert_eq!(ids(&d["keys"]["upsert"]), vec![id.clone()]);
        } else {
            assert!(ids(&d["keys"]["upsert"]).contains(id));
        }
    }
}

#[test]
fn the_admin_api_and_the_sync_api_take_only_their_own_token() {
    let cp = ControlPlane::start(BIN);
    cp.create_workspace("ws", "live");
    for (method, path, body) in [
        ("GET", "/v1/workspaces", None),
        (
            "POST",
            "/v1/workspaces",
            Some(json!({"id": "ws2", "type": "live"})),
        ),
        ("GET", "/v1/api-keys", None),
        ("POST", "/v1/api-keys", Some(json!({"workspace": "ws"}))),
        ("DELETE", "/v1/api-keys/key_x", None),
    ] {
        // The admin token but its last character.
        for token in [
            Some(SYNC_TOKEN),
            None,
            Some(&ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1]),
        ] {
            let r = cp.call(method, path, token, body.as_ref());
            assert_eq!(r.status, 401, "{method} {path} with {token:?}");
            assert_eq!(r.json()["success"], false);
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        }
    }
    for token in [
        Some(ADMIN_TOKEN),
        None,
        Some(&SYNC_TOKEN[..SYNC_TOKEN.len() - 1]),
    ] {
        let r = cp.call("GET", "/v1/snapshot", token, None);
        assert_eq!(r.status, 401);
        assert_eq!(r.json()["success"], false);
        let r = cp.call("POST", "/v1/usage", token, Some(&json!({"usage": []})));
        assert_eq!(r.status, 401);
    }
    // Nothing was created by the refused requests.
    assert_eq!(cp.version(), 1);
    // The scheme is case-insensitive.
    let auth = format!("bearer {SYNC_TOKEN}");
    let r = cp.request("GET", "/v1/snapshot", &[("Authorization", &auth)], None);
    assert_eq!(r.status, 200);
}

#[test]
fn snapshots_and_deltas_are_signed_with_the_printed_public_key() {
    let seed = STANDARD.encode([42u8; 32]);
    let out = Command::new(BIN)
        .arg("--print-public-key")
        .env("KEYGATE_CP_SIGNING_KEY", &seed)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = String::from_utf8(out.stdout).unwrap();
    let public: [u8; 32] = STANDARD.decode(public.trim()).unwrap().try_into().unwrap();
    let public = VerifyingKey::from_bytes(&public).unwrap();
    let verify = |body: &[u8], sig: Option<&str>| -> bool {
        let sig: [u8; 64] = STANDARD
            .decode(sig.expect("no signature header"))
            .unwrap()
            .try_into()
            .unwrap();
        public.verify(body, &Signature::from_bytes(&sig)).is_ok()
    };

    let cp = ControlPlane::builder(BIN).signing_key(seed).start();
    cp.create_workspace("ws", "live");
    cp.create_key(json!({"workspace": "ws"}));
    for path in [
        "/v1/snapshot",
        "/v1/snapshot?since=1",
        "/v1/snapshot?since=0",
    ] {
        let r = cp.sync_get(path, &[]);
        assert_eq!(r.status, 200);
        let sig = r.header("x-keygate-signature");
        assert!(verify(&r.body, sig), "{path}");
        let mut tampered = r.body.clone();
        tampered[2] ^= 1;
        assert!(!verify(&tampered, sig));
    }
    let r = cp.sync_get("/v1/snapshot", &[("If-None-Match", "\"2\"")]);
    assert_eq!(r.status, 304);
    assert_eq!(r.header("x-keygate-signature"), None);

    // Without a key: no header; --print-public-key fails.
    let plain = ControlPlane::start(BIN);
    assert_eq!(
        plain
            .sync_get("/v1/snapshot", &[])
            .header("x-keygate-signature"),
        None
    );
    let out = Command::new(BIN)
        .arg("--print-public-key")
        .env_remove("KEYGATE_CP_SIGNING_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn the_secret_is_shown_once_and_never_stored() {
    let mut cp = ControlPlane::start(BIN);
    cp.create_workspace("ws", "live");
    let mut secrets = Vec::new();
    for i in 0..5 {
        let (_, data) = cp
            .create_key(json!({"name": format!("k{i}"), "workspace": "ws", "scopes": ["p:read"]}));
        let secret = data["secret"].as_str().unwrap().to_owned();
        // Checksummed, and shown as its format and 4 random characters.
        assert!(secret.starts_with("sk_live_kg_"), "{}", &secret[..11]);
        assert_eq!(secret::parse_token(&secret), Some(secret::Env::Live));
        assert_eq!(data["prefix"], secret[..15]);
        secrets.push((data["id"].as_str().unwrap().to_owned(), secret));
    }
    let (id, _) = &secrets[0];
    let r = cp.admin(
        "POST",
        &format!("/v1/api-keys/{id}/rotate"),
        Some(json!({"expires_in_seconds": 0})),
    );
    assert_eq!(r.status, 201);
    let data = r.json()["data"].clone();
    secrets.push((
        data["id"].as_str().unwrap().to_owned(),
        data["secret"].as_str().unwrap().to_owned(),
    ));

    let listed = cp.admin("GET", "/v1/api-keys", None);
    assert_eq!(listed.status, 200);
    let snapshot = cp.sync_get("/v1/snapshot", &[]).text();
    for (id, secret) in &secrets {
        let one = cp.admin("GET", &format!("/v1/api-keys/{id}"), None).text();
        for text in [&listed.text(), &one, &snapshot] {
            assert!(!text.contains(secret.as_str()));
            assert!(!text.contains(&secret[15..]));
        }
        assert!(one.contains(&secret[..15]), "the prefix is listed");
        assert!(snapshot.contains(&KeyHash::of(secret).to_hex()));
    }
    let item = find(&listed.json()["data"], &secrets[1].0).clone();
    for field in [
        "id",
        "name",
        "prefix",
        "scopes",
        "created_at",
        "last_used",
        "status",
        "expires_at",
        "workspace",
    ] {
        assert!(item.get(field).is_some(), "{field} missing from {item}");
    }
    assert!(item.get("secret").is_none() && item.get("hash").is_none());

    // Not in the database, its WAL or its shared memory: neither while running nor after.
    let scan = |cp: &ControlPlane| {
        let mut files = 0;
        for suffix in ["", "-wal", "-shm"] {
            let path = format!("{}{suffix}", cp.db.display());
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            files += 1;
            for (_, secret) in &secrets {
                let body = &secret.as_bytes()[15..];
                assert!(
                    !bytes.windows(body.len()).any(|w| w == body),
                    "a secret is in {path}"
                );
            }
        }
        assert!(files >= 1);
    };
    scan(&cp);
    cp.stop();
    scan(&cp);
}

#[test]
fn bad_requests_get_precise_json_errors() {
    let cp = ControlPlane::start(BIN);
    cp.create_workspace("ws_live", "live");
    cp.create_workspace("ws_sb", "sandbox");
    let (_, key) = cp.create_key(json!({"workspace": "ws_sb"}));
    let key_id = key["id"].as_str().unwrap();
    let cases: Vec<(&str, String, Option<Value>, u16, &str)> = vec![
        (
            "POST",
            "/v1/api-keys".into(),
            Some(json!({"workspace": "ws_live", "environment": "test"})),
            400,
            "does not match",
        ),
        (
            "POST",
            "/v1/api-keys".into(),
            Some(json!({"workspace": "ws_sb", "environment": "live"})),
            400,
            "does not match",
        ),
        (
            "POST",
            "/v1/api-keys".into(),
            Some(json!({"workspace": "ws_nope"})),
            400,
            "does not exist",
        ),
        (
            "POST",
            "/v1/api-keys".into(),
            Some(json!({"workspace": "ws_live", "scopes": ["a::b"]})),
            400,
            "empty segment",
        ),
        (
            "POST",
            "/v1/api-keys".into(),
            Some(json!({"workspace": "ws_live", "scopes": ["prod*"]})),
            400,
            "invalid scope",
        ),
        (
            "POST",
            "/v1/api-keys".into(),
            Some(json!({"workspace": "ws_live", "scopes": null})),
            400,
            "must be a list",
        ),
        (
            "POST",
            "/v1/api-keys".into(),
            Some(json!({"workspace": "ws_live", "scope": ["a:b"]})),
            400,
            "unknown field",
        ),
        (
            "POST",
            "/v1/api-keys".into(),
            Some(json!({"workspace": "ws_live", "legacy": true, "scopes": []})),
            400,
            "legacy",
        ),
        (
            "POST",
            "/v1/api-keys".into(),
            Some(json!({"workspace": "ws_live", "expires_at": "next week"})),
            400,
            "RFC 3339",
        ),
        (
            "POST",
            "/v1/api-keys".into(),
            Some(json!({"workspace": "ws_live", "expires_at": "2001-01-01T00:00:00Z"})),
            400,
            "future",
        ),
        (
            "POST",
            "/v1/api-keys".into(),
            Some(json!({"internal": true})),
            400,
            "environment",
        ),
        (
            "POST",
            "/v1/api-keys".into(),
            Some(json!({"internal": true, "workspace": "ws_live", "environment": "live"})),
            400,
            "not both",
        ),
        ("POST", "/v1/api-keys".into(), None, 400, "body"),
        (
            "POST",
            "/v1/workspaces".into(),
            Some(json!({"id": "ws_live", "type": "live"})),
            409,
            "already exists",
        ),
        (
            "POST",
            "/v1/workspaces".into(),
            Some(json!({"id": "bad id", "type": "live"})),
            400,
            "invalid workspace id",
        ),
        (
            "POST",
            "/v1/workspaces".into(),
            Some(json!({"id": "ws3", "type": "prod"})),
            400,
            "unknown variant",
        ),
        (
            "POST",
            "/v1/workspaces".into(),
            Some(json!({"id": "ws3", "type": "live", "limits": {"burst_per_second": 0}})),
            400,
            "at least 1",
        ),
        (
            "POST",
            "/v1/workspaces".into(),
            Some(json!({"id": "ws3", "type": "live", "limits": {"concurrent_requests": 0}})),
            400,
            "at least 1",
        ),
        (
            "PUT",
            "/v1/workspaces/ws_sb".into(),
            Some(json!({"type": "live"})),
            409,
            "key",
        ),
        (
            "PUT",
            "/v1/workspaces/ws_nope".into(),
            Some(json!({"type": "live"})),
            404,
            "no workspace",
        ),
        ("DELETE", "/v1/workspaces/ws_sb".into(), None, 409, "purge"),
        (
            "DELETE",
            "/v1/api-keys/key_unknown".into(),
            None,
            404,
            "no API key",
        ),
        (
            "GET",
            "/v1/api-keys/key_unknown".into(),
            None,
            404,
            "no API key",
        ),
        (
            "POST",
            "/v1/api-keys/key_unknown/rotate".into(),
            Some(json!({"expires_in_seconds": 1})),
            404,
            "no API key",
        ),
        (
            "POST",
            format!("/v1/api-keys/{key_id}/rotate"),
            Some(json!({})),
            400,
            "exactly one",
        ),
        (
            "GET",
            "/v1/api-keys/bad%20id".into(),
            None,
            400,
            "invalid key id",
        ),
        ("PATCH", "/v1/api-keys".into(), None, 405, "allowed"),
        ("GET", "/v1/nothing".into(), None, 404, "no such endpoint"),
    ];
    for (method, path, body, status, needle) in cases {
        let r = cp.admin(method, &path, body.clone());
        assert_eq!(r.status, status, "{method} {path} {body:?}: {}", r.text());
        let v = r.json();
        assert_eq!(v["success"], false, "{v}");
        let msg = v["error"].as_str().unwrap();
        assert!(
            msg.contains(needle),
            "{method} {path}: {msg:?} lacks {needle:?}"
        );
    }
    let r = cp.admin("PATCH", "/v1/api-keys", None);
    assert_eq!(r.header("allow"), Some("GET, POST"));
    for (path, needle) in [
        ("/v1/snapshot?sinse=1", "unknown query parameter"),
        ("/v1/snapshot?since=x", "version number"),
        ("/v1/snapshot?since=1&wait=soon", "duration"),
    ] {
        let r = cp.sync_get(path, &[]);
        assert_eq!(r.status, 400, "{path}");
        assert!(r.json()["error"].as_str().unwrap().contains(needle));
    }
    // None of the refused writes changed anything.
    assert_eq!(cp.version(), 3);
}

#[test]
fn rotation_keeps_name_scopes_and_owner_and_shortens_the_old_key() {
    let cp = ControlPlane::start(BIN);
    cp.create_workspace("ws", "live");
    let (_, old) =
        cp.create_key(json!({"name": "svc", "workspace": "ws", "scopes": ["a:read", "b:*"]}));
    let old_id = old["id"].as_str().unwrap();
    let t = keygate_now();
    let r = cp.admin(
        "POST",
        &format!("/v1/api-keys/{old_id}/rotate"),
        Some(json!({"expires_in_seconds": 3600})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    assert_eq!(v["version"], 3);
    let new = &v["data"];
    assert_ne!(new["id"], old["id"]);
    assert_ne!(new["secret"], old["secret"]);
    assert_eq!(
        (&new["name"], &new["workspace"], &new["scopes"]),
        (&json!("svc"), &json!("ws"), &json!(["a:read", "b:*"]))
    );
    assert_eq!(v["data"]["rotated_from"]["id"], old["id"]);
    let snap = cp.snapshot();
    let old_exp = find(&snap["keys"], old_id)["expires_at"]
        .as_str()
        .unwrap()
        .to_owned();
    let old_exp =
        time::OffsetDateTime::parse(&old_exp, &time::format_description::well_known::Rfc3339)
            .unwrap()
            .unix_timestamp();
    assert!(
        (t + 3599..=t + 3601 + 5).contains(&old_exp),
        "{old_exp} vs {t}"
    );
    assert!(
        find(&snap["keys"], new["id"].as_str().unwrap())
            .get("expires_at")
            .is_none()
    );

    // A second rotation of the old key cannot push its expiry later.
    let r = cp.admin(
        "POST",
        &format!("/v1/api-keys/{old_id}/rotate"),
        Some(json!({"old_expires_at": "2099-01-01T00:00:00Z"})),
    );
    assert_eq!(r.status, 201);
    let again = cp
        .admin("GET", &format!("/v1/api-keys/{old_id}"), None)
        .json();
    let exp = again["data"]["expires_at"].as_str().unwrap();
    assert!(exp.starts_with(&format_year(t)), "{exp}");

    // Expire at once, then rotating it again is a conflict; so is rotating a revoked key.
    let new_id = new["id"].as_str().unwrap();
    let r = cp.admin(
        "POST",
        &format!("/v1/api-keys/{new_id}/rotate"),
        Some(json!({"expires_in_seconds": 0})),
    );
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["data"]["rotated_from"]["status"], "expired");
    let r = cp.admin(
        "POST",
        &format!("/v1/api-keys/{new_id}/rotate"),
        Some(json!({"expires_in_seconds": 0})),
    );
    assert_eq!(r.status, 409, "{}", r.text());
    let (_, legacy) = cp.create_key(json!({"workspace": "ws", "legacy": true}));
    let legacy_id = legacy["id"].as_str().unwrap();
    cp.admin("DELETE", &format!("/v1/api-keys/{legacy_id}"), None);
    let r = cp.admin(
        "POST",
        &format!("/v1/api-keys/{legacy_id}/rotate"),
        Some(json!({"expires_in_seconds": 0})),
    );
    assert_eq!(r.status, 409);
}

fn keygate_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn format_year(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .unwrap()
        .year()
        .to_string()
}

#[test]
fn usage_reports_count_requests_without_a_new_version() {
    let cp = ControlPlane::start(BIN);
    cp.create_workspace("ws", "live");
    let (v, key) = cp.create_key(json!({"workspace": "ws"}));
    let id = key["id"].as_str().unwrap();
    let listed = cp.admin("GET", &format!("/v1/api-keys/{id}"), None).json();
    assert_eq!(listed["data"]["last_used"], Value::Null);
    let report = |body: Value| {
        let r = cp.call("POST", "/v1/usage", Some(SYNC_TOKEN), Some(&body));
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    };
    let out = report(json!({"usage": [
        {"key_id": id, "requests": 5, "last_used": "2026-01-02T03:04:05Z"},
        {"key_id": "key_unknown", "requests": 1, "last_used": "2026-01-02T03:04:05Z"},
    ]}));
    assert_eq!(
        out["data"],
        json!({"updated": 1, "unknown": ["key_unknown"]})
    );
    // An older report adds its count but does not move last_used back.
    report(json!({"usage": [{"key_id": id, "requests": 3, "last_used": "2025-01-01T00:00:00Z"}]}));
    let k = cp.admin("GET", &format!("/v1/api-keys/{id}"), None).json();
    assert_eq!(k["data"]["requests"], 8);
    assert_eq!(k["data"]["last_used"], "2026-01-02T03:04:05Z");
    assert_eq!(cp.version(), v);
    let r = cp.call(
        "POST",
        "/v1/usage",
        Some(SYNC_TOKEN),
        Some(&json!({"usage": [{"key_id": id, "last_used": "yesterday"}]})),
    );
    assert_eq!(r.status, 400);
}

#[test]
fn bad_settings_stop_the_start_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cp.sqlite");
    let run = |admin: Option<&str>, sync: Option<&str>, signing: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.arg("--db")
            .arg(&db)
            .args(["--listen", "127.0.0.1:1"])
            .env_remove("KEYGATE_CP_ADMIN_TOKEN")
            .env_remove("KEYGATE_CP_SYNC_TOKEN")
            .env_remove("KEYGATE_CP_SIGNING_KEY");
        for (name, value) in [
            ("KEYGATE_CP_ADMIN_TOKEN", admin),
            ("KEYGATE_CP_SYNC_TOKEN", sync),
            ("KEYGATE_CP_SIGNING_KEY", signing),
        ] {
            if let Some(v) = value {
                cmd.env(name, v);
            }
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(run(None, Some(SYNC_TOKEN), None).contains("KEYGATE_CP_ADMIN_TOKEN is not set"));
    assert!(run(Some(ADMIN_TOKEN), None, None).contains("KEYGATE_CP_SYNC_TOKEN is not set"));
    assert!(run(Some(SYNC_TOKEN), Some(SYNC_TOKEN), None).contains("must differ"));
    assert!(run(Some("short"), Some(SYNC_TOKEN), None).contains("at least 16"));
    assert!(run(Some(ADMIN_TOKEN), Some(SYNC_TOKEN), Some("AAAA")).contains("32-byte"));
}

#[test]
fn restrictions_are_validated_stored_listed_served_updated_and_kept_by_rotation() {
    let cp = ControlPlane::start(BIN);
    cp.create_workspace("ws", "live");
    let restrictions = json!({
        "ips": ["203.0.113.0/24", "2001:db8::/32"],
        "referrers": ["https://app.example.com", "https://*.example.org"],
        "endpoints": ["products-read"],
    });
    let (_, data) = cp.create_key(
        json!({"name": "r", "workspace": "ws", "scopes": ["*"], "restrictions": restrictions}),
    );
    let id = data["id"].as_str().unwrap().to_owned();
    assert_eq!(data["restrictions"], restrictions);
    let listed = cp.admin("GET", &format!("/v1/api-keys/{id}"), None).json();
    assert_eq!(listed["data"]["restrictions"], restrictions);
    assert_eq!(
        find(&cp.snapshot()["keys"], &id)["restrictions"],
        restrictions
    );

    // Refused by the rules keygate enforces, naming the list.
    for (bad, says) in [
        (json!({"ips": ["10.0.0.0/33"]}), "restrictions.ips"),
        (json!({"ips": ["not-an-ip"]}), "restrictions.ips"),
        (
            json!({"referrers": ["app.example.com"]}),
            "restrictions.referrers",
        ),
        (json!({"endpoints": [" "]}), "empty referrer or endpoint"),
        (json!({"hosts": ["x"]}), "unknown field"),
    ] {
        let r = cp.admin(
            "POST",
            "/v1/api-keys",
            Some(json!({"name": "bad", "workspace": "ws", "restrictions": bad})),
        );
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert!(r.text().contains(says), "{bad}: {}", r.text());
    }

    // Updated in place: one new version, served in the delta.
    let before = cp.version();
    let narrowed = json!({"ips": ["198.51.100.7"]});
    let r = cp.admin(
        "PATCH",
        &format!("/v1/api-keys/{id}"),
        Some(json!({"restrictions": narrowed})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"]["restrictions"], narrowed);
    assert_eq!(cp.version(), before + 1);
    let delta = cp
        .sync_get(&format!("/v1/snapshot?since={before}"), &[])
        .json();
    assert_eq!(
        find(&delta["keys"]["upsert"], &id)["restrictions"],
        narrowed
    );
    // The same again changes nothing; a bad one changes nothing either.
    let same = cp.admin(
        "PATCH",
        &format!("/v1/api-keys/{id}"),
        Some(json!({"restrictions": narrowed})),
    );
    assert_eq!(same.status, 200);
    let bad = cp.admin(
        "PATCH",
        &format!("/v1/api-keys/{id}"),
        Some(json!({"restrictions": {"ips": ["300.0.0.1"]}})),
    );
    assert_eq!(bad.status, 400);
    assert_eq!(cp.version(), before + 1);
    let empty = cp.admin("PATCH", &format!("/v1/api-keys/{id}"), Some(json!({})));
    assert_eq!(empty.status, 400, "{}", empty.text());

    // A rotated key keeps them.
    let r = cp.admin(
        "POST",
        &format!("/v1/api-keys/{id}/rotate"),
        Some(json!({"expires_in_seconds": 0})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let new_id = r.json()["data"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        find(&cp.snapshot()["keys"], &new_id)["restrictions"],
        narrowed
    );

    // Removed with null: the key is unrestricted again.
    let r = cp.admin(
        "PATCH",
        &format!("/v1/api-keys/{new_id}"),
        Some(json!({"restrictions": null})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["data"]["restrictions"].is_null());
    assert!(
        find(&cp.snapshot()["keys"], &new_id)
            .get("restrictions")
            .is_none()
    );
}

#[test]
fn keys_are_made_from_scope_templates_built_in_or_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("templates.json");
    std::fs::write(
        &file,
        r#"{"support": ["tickets:*", "customers:read"], "read-only": ["products:read"]}"#,
    )
    .unwrap();
    let builtin = ControlPlane::start(BIN);
    let custom = ControlPlane::builder(BIN).scope_templates(&file).start();
    for cp in [&builtin, &custom] {
        cp.create_workspace("ws", "live");
    }
    let scopes_of = |cp: &ControlPlane, template: &str| {
        let (_, key) = cp.create_key(json!({"workspace": "ws", "template": template}));
        key["scopes"].clone()
    };
    assert_eq!(scopes_of(&builtin, "read-only"), json!(["*:read"]));
    assert_eq!(scopes_of(&builtin, "full-access"), json!(["*"]));
    assert_eq!(
        scopes_of(&builtin, "booking-management"),
        json!(["bookings:*", "customers:*", "payments:read"])
    );
    assert_eq!(
        scopes_of(&builtin, "product-catalog"),
        json!(["products:*", "inventory:*", "media:*", "drafts:*"])
    );
    // A file adds templates and redefines built-in ones.
    assert_eq!(
        scopes_of(&custom, "support"),
        json!(["tickets:*", "customers:read"])
    );
    assert_eq!(scopes_of(&custom, "read-only"), json!(["products:read"]));
    // The snapshot carries the expanded scopes: keygate knows nothing of templates.
    let snap = builtin.snapshot();
    let served: Vec<&Value> = snap["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| &k["scopes"])
        .collect();
    assert!(served.contains(&&json!(["*:read"])), "{served:?}");

    let r = custom.admin("GET", "/v1/scope-templates", None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["data"]["support"],
        json!(["tickets:*", "customers:read"])
    );
    assert_eq!(r.json()["data"]["full-access"], json!(["*"]));

    for (body, says) in [
        (
            json!({"workspace": "ws", "template": "nope"}),
            "known: booking-management",
        ),
        (
            json!({"workspace": "ws", "template": "read-only", "scopes": ["a:b"]}),
            "not both",
        ),
        (
            json!({"workspace": "ws", "template": "read-only", "legacy": true}),
            "not both",
        ),
    ] {
        let r = builtin.admin("POST", "/v1/api-keys", Some(body.clone()));
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert!(r.text().contains(says), "{body}: {}", r.text());
    }

    // A bad templates file stops the start, naming the file.
    std::fs::write(&file, r#"{"x": ["not a scope!"]}"#).unwrap();
    let out = Command::new(BIN)
        .arg("--db")
        .arg(dir.path().join("cp.sqlite"))
        .args(["--listen", "127.0.0.1:1", "--scope-templates"])
        .arg(&file)
        .env("KEYGATE_CP_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("KEYGATE_CP_SYNC_TOKEN", SYNC_TOKEN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("templates.json") && stderr.contains("template \"x\""),
        "{stderr}"
    );
}

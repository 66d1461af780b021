//! keygate ↔ the reference control plane, both real, on loopback: sync, revocation latency,
//! outages, the disk cache, and rejected snapshots.

mod common;

use common::cp::{ControlPlane, SYNC_TOKEN};
use common::http::Echo;
use common::*;
use std::time::{Duration, Instant};

/// keygate syncing from `cp`, its `snapshot:` section changed by `change`.
fn start_keygate(
    up: &Echo,
    cp: &ControlPlane,
    change: impl FnOnce(&mut SnapshotFile),
    port: Option<u16>,
) -> Keygate {
    let keys = Keys::new(0);
    Keygate::start(Setup {
        env: vec![("KEYGATE_CP_TOKEN", SYNC_TOKEN.to_owned())],
        port,
        ..Setup::new(up, &keys).config(|c| {
            c.snapshot = from_control_plane(cp.url());
            change(&mut c.snapshot);
        })
    })
}

/// The control-plane part of a `snapshot:` section.
fn cp_section(s: &mut SnapshotFile) -> &mut ControlPlaneFile {
    s.control_plane.as_mut().unwrap()
}

fn wait_ready(kg: &Keygate) {
    let ready = within(Duration::from_secs(10), || {
        kg.admin_get("/readyz").status == 200
    });
    assert!(ready.is_some(), "keygate never became ready:\n{}", kg.log());
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn initial_sync_serves_the_control_planes_keys() {
    let cp = control_plane().start();
    cp.create_workspace("ws_acme", "live");
    let (_, secret) = cp.create_key_in("ws_acme", "live", &["products:read"]);
    let up = Echo::start();
    let kg = start_keygate(&up, &cp, |_| {}, None);
    wait_ready(&kg);
    let r = kg.get_with_key("/v1/products", &secret);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        upstream_header(&r, "x-workspace-id").as_deref(),
        Some("ws_acme")
    );
    let status = kg.admin_get("/status").json();
    assert_eq!(status["snapshot"]["source"], "control_plane");
    assert_eq!(status["snapshot"]["keys"], 1);
    // A key created afterwards arrives as a delta, without a restart.
    let (_, second) = cp.create_key_in("ws_acme", "live", &[]);
    assert!(
        within(Duration::from_secs(2), || kg
            .get_with_key("/v1/me", &second)
            .status
            == 200)
        .is_some()
    );
    assert!(
        kg.metric(r#"keygate_sync_responses_total{kind="delta",status="200"}"#)
            .unwrap()
            >= 1.0
    );
    assert!(
        kg.metric(r#"keygate_sync_responses_total{kind="full",status="200"}"#)
            .unwrap()
            >= 1.0
    );
}

#[test]
fn before_the_first_snapshot_requests_fail_closed() {
    let port = common::http::free_port();
    let up = Echo::start();
    // Nothing listens on the control plane's port yet.
    let placeholder = ControlPlaneAddr(port);
    let kg = {
        let keys = Keys::new(0);
        Keygate::start(Setup {
            env: vec![("KEYGATE_CP_TOKEN", SYNC_TOKEN.to_owned())],
            ..Setup::new(&up, &keys).config(|c| {
                c.snapshot = from_control_plane(format!("http://127.0.0.1:{}", placeholder.0))
            })
        })
    };
    let r = kg.get(
        "/v1/products",
        &[(
            "Authorization",
            "Bearer sk_live_00000000000000000000000000000000",
        )],
    );
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["code"], "no_snapshot");
    assert_eq!(kg.admin_get("/readyz").status, 503);
    assert_eq!(up.requests_seen(), 0);
    // Public routes do not need keys and stay open.
    assert_eq!(kg.get("/health", &[]).status, 200);

    // The control plane comes up: keygate syncs (after its backoff) and serves.
    let cp = control_plane().port(port).start();
    cp.create_workspace("ws", "sandbox");
    let (_, secret) = cp.create_key_in("ws", "test", &[]);
    wait_ready(&kg);
    assert!(
        within(Duration::from_secs(5), || kg
            .get_with_key("/v1/me", &secret)
            .status
            == 200)
        .is_some()
    );
    assert!(
        kg.metric(r#"keygate_sync_errors_total{source="control_plane"}"#)
            .unwrap()
            >= 1.0
    );
}

struct ControlPlaneAddr(u16);

/// The issue's measurement: from the DELETE's response to the first 401, over 100 revocations.
#[test]
fn revocations_reach_keygate_within_a_second() {
    let cp = control_plane().start();
    cp.create_workspace("ws", "live");
    let keys: Vec<(String, String)> = (0..100)
        .map(|_| cp.create_key_in("ws", "live", &[]))
        .collect();
    let up = Echo::start();
    let kg = start_keygate(&up, &cp, |_| {}, None);
    wait_ready(&kg);
    let mut latencies = Vec::new();
    for (id, secret) in &keys {
        assert_eq!(kg.get_with_key("/v1/me", secret).status, 200);
        cp.revoke(id);
        let revoked_at = Instant::now();
        let took = within(Duration::from_secs(5), || {
            kg.get_with_key("/v1/me", secret).status == 401
        })
        .map(|_| revoked_at.elapsed())
        .unwrap_or_else(|| panic!("{id} still accepted 5 s after its revocation"));
        latencies.push(took);
    }
    latencies.sort();
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    println!(
        "revocation → first 401, watch (long-poll), 100 revocations: p50 {p50:?}, p99 {p99:?}, max {:?}",
        latencies[99]
    );
    assert!(p99 <= Duration::from_secs(1), "p99 {p99:?}");
}

#[test]
fn without_watch_revocations_take_at_most_the_poll_interval() {
    let cp = control_plane().start();
    cp.create_workspace("ws", "live");
    let keys: Vec<(String, String)> = (0..10)
        .map(|_| cp.create_key_in("ws", "live", &[]))
        .collect();
    let up = Echo::start();
    let kg = start_keygate(
        &up,
        &cp,
        |s| {
            cp_section(s).watch = Some(false);
            cp_section(s).poll_interval = Some(Duration::from_secs(1));
        },
        None,
    );
    wait_ready(&kg);
    let mut latencies = Vec::new();
    for (id, secret) in &keys {
        assert_eq!(kg.get_with_key("/v1/me", secret).status, 200);
        cp.revoke(id);
        let t = Instant::now();
        within(Duration::from_secs(5), || {
            kg.get_with_key("/v1/me", secret).status == 401
        })
        .unwrap_or_else(|| panic!("{id} still accepted"));
        latencies.push(t.elapsed());
    }
    latencies.sort();
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    println!("revocation → first 401, polling every 1 s, 10 revocations: p50 {p50:?}, p99 {p99:?}");
    assert!(
        p99 <= Duration::from_secs(2),
        "p99 {p99:?} > poll interval + 1 s"
    );
}

#[test]
fn a_control_plane_outage_changes_nothing_and_the_cache_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut cp = control_plane().start();
    cp.create_workspace("ws", "live");
    let (_, good) = cp.create_key_in("ws", "live", &[]);
    let (revoked_id, revoked) = cp.create_key_in("ws", "live", &[]);
    cp.revoke(&revoked_id);
    let cache = dir.path().join("snapshot-cache.json");
    let with_cache = |s: &mut SnapshotFile| s.cache_file = Some(cache.clone());
    let up = Echo::start();
    let mut kg = start_keygate(&up, &cp, with_cache, None);
    wait_ready(&kg);
    assert!(
        within(Duration::from_secs(5), || cache.exists()).is_some(),
        "no cache written"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777,
        0o600
    );

    cp.kill();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(kg.get_with_key("/v1/me", &good).status, 200);
    assert_eq!(kg.get_with_key("/v1/me", &revoked).status, 401);
    assert_eq!(
        kg.admin_get("/readyz").status,
        200,
        "no max_staleness: still ready"
    );

    // Restart keygate while the control plane is down: it serves from the cache.
    let port = kg.addr.port();
    drop(kg);
    kg = start_keygate(&up, &cp, with_cache, Some(port));
    wait_ready(&kg);
    assert_eq!(kg.get_with_key("/v1/me", &good).status, 200);
    assert_eq!(kg.get_with_key("/v1/me", &revoked).status, 401);
    assert_eq!(
        kg.admin_get("/status").json()["snapshot"]["source"],
        "disk_cache"
    );
    assert!(kg.is_running());

    // The control plane returns: keygate takes up syncing again.
    cp.restart();
    let (_, later) = cp.create_key_in("ws", "live", &[]);
    assert!(
        within(Duration::from_secs(10), || kg
            .get_with_key("/v1/me", &later)
            .status
            == 200)
        .is_some()
    );
}

#[test]
fn a_corrupt_cache_is_reported_and_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane().start();
    cp.create_workspace("ws", "live");
    let (_, secret) = cp.create_key_in("ws", "live", &[]);
    let cache = dir.path().join("cache.json");
    std::fs::write(&cache, b"{\"version\": 1, \"keys\": [trunc").unwrap();
    let up = Echo::start();
    let kg = start_keygate(&up, &cp, |s| s.cache_file = Some(cache.clone()), None);
    wait_ready(&kg);
    assert_eq!(kg.get_with_key("/v1/me", &secret).status, 200);
    assert!(
        kg.log().contains("ignoring the snapshot cache"),
        "{}",
        kg.log()
    );
    assert_eq!(
        kg.metric(r#"keygate_snapshot_reloads_total{result="rejected",source="disk_cache"}"#),
        Some(1.0)
    );
}

#[test]
fn max_staleness_fails_closed_when_the_control_plane_is_gone_too_long() {
    let mut cp = control_plane().start();
    cp.create_workspace("ws", "live");
    let (_, secret) = cp.create_key_in("ws", "live", &[]);
    let up = Echo::start();
    let kg = start_keygate(
        &up,
        &cp,
        |s| {
            cp_section(s).wait = Some(Duration::from_millis(500));
            s.max_staleness = Some(Duration::from_secs(2));
        },
        None,
    );
    wait_ready(&kg);
    assert_eq!(kg.get_with_key("/v1/me", &secret).status, 200);
    cp.kill();
    let closed = within(Duration::from_secs(6), || {
        kg.get_with_key("/v1/me", &secret).status == 503
    });
    assert!(closed.is_some(), "still serving with a stale snapshot");
    assert_eq!(kg.admin_get("/readyz").status, 503);
    cp.restart();
    assert!(
        within(Duration::from_secs(10), || kg
            .get_with_key("/v1/me", &secret)
            .status
            == 200)
        .is_some()
    );
}

#[test]
fn a_rollback_is_rejected_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut cp = control_plane().start();
    cp.create_workspace("ws", "live");
    let (_, old) = cp.create_key_in("ws", "live", &[]);
    // Keep the database as it is now (an "old backup").
    cp.kill();
    let backup = dir.path().join("backup.sqlite");
    std::fs::copy(&cp.db, &backup).unwrap();
    cp.restart();
    let (_, newer) = cp.create_key_in("ws", "live", &[]);
    let up = Echo::start();
    let kg = start_keygate(&up, &cp, |_| {}, None);
    wait_ready(&kg);
    assert_eq!(kg.get_with_key("/v1/me", &newer).status, 200);

    // The control plane is restored from the old backup: its version goes backwards.
    cp.kill();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", cp.db.display()));
    }
    std::fs::copy(&backup, &cp.db).unwrap();
    cp.restart();
    let counted = within(Duration::from_secs(10), || {
        kg.metric(r#"keygate_snapshot_reloads_total{result="rejected",source="control_plane"}"#)
            .is_some_and(|n| n >= 1.0)
    });
    assert!(counted.is_some(), "rollback not rejected:\n{}", kg.log());
    assert!(kg.log().contains("rollback"), "{}", kg.log());
    // The newer snapshot keeps serving.
    assert_eq!(kg.get_with_key("/v1/me", &newer).status, 200);
    assert_eq!(kg.get_with_key("/v1/me", &old).status, 200);
}

#[test]
fn signatures_are_checked_when_a_public_key_is_configured() {
    use base64::Engine;
    let seed = [7u8; 32];
    let b64 = base64::engine::general_purpose::STANDARD;
    let public = b64.encode(
        ed25519_dalek::SigningKey::from_bytes(&seed)
            .verifying_key()
            .to_bytes(),
    );
    let other = b64.encode(
        ed25519_dalek::SigningKey::from_bytes(&[9u8; 32])
            .verifying_key()
            .to_bytes(),
    );
    let cp = control_plane().signing_key(b64.encode(seed)).start();
    cp.create_workspace("ws", "live");
    let (_, secret) = cp.create_key_in("ws", "live", &[]);
    let up = Echo::start();

    let good = start_keygate(
        &up,
        &cp,
        |s| cp_section(s).public_key = Some(public.clone()),
        None,
    );
    wait_ready(&good);
    assert_eq!(good.get_with_key("/v1/me", &secret).status, 200);

    let wrong = start_keygate(
        &up,
        &cp,
        |s| cp_section(s).public_key = Some(other.clone()),
        None,
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        wrong.admin_get("/readyz").status,
        503,
        "accepted a snapshot signed by another key"
    );
    assert_eq!(wrong.get_with_key("/v1/me", &secret).status, 503);
    assert!(
        wrong.log().contains("signature does not match"),
        "{}",
        wrong.log()
    );
}

#[test]
fn the_control_plane_token_is_never_logged() {
    let cp = control_plane().start();
    cp.create_workspace("ws", "live");
    let up = Echo::start();
    let keys = Keys::new(0);
    let kg = Keygate::start(Setup {
        env: vec![("KEYGATE_CP_TOKEN", SYNC_TOKEN.to_owned())],
        log_filter: "trace",
        ..Setup::new(&up, &keys).config(|c| c.snapshot = from_control_plane(cp.url()))
    });
    wait_ready(&kg);
    cp.create_key_in("ws", "live", &[]);
    std::thread::sleep(Duration::from_millis(500));
    // And a wrong token: refused, logged as refused, still not printed.
    let bad = Keygate::start(Setup {
        env: vec![("KEYGATE_CP_TOKEN", "wrong-token-value-123".to_owned())],
        log_filter: "trace",
        ..Setup::new(&up, &keys).config(|c| c.snapshot = from_control_plane(cp.url()))
    });
    let refused = within(Duration::from_secs(5), || {
        bad.log().contains("refused the token")
    });
    assert!(refused.is_some(), "{}", bad.log());
    for log in [kg.log(), bad.log(), kg.admin_get("/status").text()] {
        assert!(
            !log.contains(SYNC_TOKEN) && !log.contains("wrong-token-value-123"),
            "token in:\n{log}"
        );
        assert!(log.lines().count() > 0);
    }
}

#[test]
fn key_usage_reaches_the_control_plane_on_an_interval_and_at_every_kind_of_stop() {
    let cp = control_plane().start();
    cp.create_workspace("ws", "live");
    let (id, secret) = cp.create_key_in("ws", "live", &[]);
    let usage_of = |cp: &ControlPlane| {
        let keys = cp.list_keys();
        keys["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["id"] == id.as_str())
            .cloned()
            .unwrap()
    };
    assert!(usage_of(&cp)["last_used"].is_null());
    let up = Echo::start();
    let keys = Keys::new(0);
    let start = |flush: &str| {
        Keygate::start(Setup {
            env: vec![("KEYGATE_CP_TOKEN", SYNC_TOKEN.to_owned())],
            ..Setup::new(&up, &keys).config(|c| {
                c.snapshot = from_control_plane(cp.url());
                c.usage.flush_interval = Some(if flush == "fast" {
                    Duration::from_millis(200)
                } else {
                    Duration::from_secs(3600)
                });
            })
        })
    };
    let kg = start("fast");
    wait_ready(&kg);
    for _ in 0..3 {
        assert_eq!(kg.get_with_key("/v1/me", &secret).status, 200);
    }
    let reported = within(Duration::from_secs(5), || usage_of(&cp)["requests"] == 3);
    assert!(reported.is_some(), "{}", usage_of(&cp));
    assert!(
        usage_of(&cp)["last_used"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    drop(kg);

    // An hour-long interval: only the report at shutdown can deliver these two.
    let mut kg = start("slow");
    wait_ready(&kg);
    for _ in 0..2 {
        assert_eq!(kg.get_with_key("/v1/me", &secret).status, 200);
    }
    kg.settle(2);
    assert!(kg.terminate(), "keygate did not stop on SIGTERM");
    assert_eq!(usage_of(&cp)["requests"], 5, "{}", usage_of(&cp));

    // SIGINT skips the grace period, not the last report.
    let mut kg = start("slow");
    wait_ready(&kg);
    assert_eq!(kg.get_with_key("/v1/me", &secret).status, 200);
    kg.settle(1);
    assert!(kg.interrupt(), "keygate did not stop on SIGINT");
    assert_eq!(usage_of(&cp)["requests"], 6, "{}", usage_of(&cp));
}

/// "Nothing changed" answers (304) to delta requests keep the snapshot and confirm it fresh, in
/// both modes: a long-poll that ends without a change, and a plain poll.
#[test]
fn not_modified_answers_keep_the_snapshot_and_its_freshness() {
    let cp = control_plane().start();
    cp.create_workspace("ws_acme", "live");
    let (_, secret) = cp.create_key_in("ws_acme", "live", &["products:read"]);
    let up = Echo::start();
    for (mode, poll) in [("long-poll", false), ("poll", true)] {
        let kg = start_keygate(
            &up,
            &cp,
            |s| {
                let cp = cp_section(s);
                if poll {
                    cp.watch = Some(false);
                    cp.poll_interval = Some(Duration::from_millis(200));
                } else {
                    cp.wait = Some(Duration::from_millis(300));
                }
            },
            None,
        );
        wait_ready(&kg);
        let version = kg.metric("keygate_snapshot_version");
        let series = r#"keygate_sync_responses_total{kind="delta",status="304"}"#;
        // Eight answers: 1.6 s or more after the load, so an unconfirmed snapshot would be older
        // than the bound below.
        let answered = within(Duration::from_secs(10), || {
            kg.metric(series).unwrap_or(0.0) >= 8.0
        });
        assert!(answered.is_some(), "{mode}: {}", kg.metrics());
        let age = kg.metric("keygate_snapshot_age_seconds").unwrap();
        assert!(age < 1.0, "{mode}: snapshot age {age}");
        assert_eq!(kg.metric("keygate_snapshot_version"), version, "{mode}");
        assert_eq!(
            kg.get_with_key("/v1/products", &secret).status,
            200,
            "{mode}"
        );
    }
}

/// Restrictions made and changed in the control plane reach a syncing keygate like any change:
/// a key restricted elsewhere is refused, widened in place it works, removed it works anywhere.
#[test]
fn restrictions_changed_in_the_control_plane_are_enforced_within_a_second() {
    let cp = control_plane().start();
    cp.create_workspace("ws", "live");
    let (_, created) = cp.create_key(serde_json::json!({
        "name": "restricted", "workspace": "ws", "scopes": ["*"],
        "restrictions": {"ips": ["192.0.2.0/24"]},
    }));
    let (id, secret) = (
        created["id"].as_str().unwrap().to_owned(),
        created["secret"].as_str().unwrap().to_owned(),
    );
    let up = Echo::start();
    let kg = start_keygate(&up, &cp, |_| {}, None);
    wait_ready(&kg);
    let r = kg.get_with_key("/v1/me", &secret);
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["restriction"], "ip");

    let patch = |restrictions: serde_json::Value| {
        let r = cp.admin(
            "PATCH",
            &format!("/v1/api-keys/{id}"),
            Some(serde_json::json!({ "restrictions": restrictions })),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    };
    patch(serde_json::json!({"ips": ["127.0.0.1"], "endpoints": ["whoami"]}));
    let allowed = within(Duration::from_secs(1), || {
        kg.get_with_key("/v1/me", &secret).status == 200
    });
    assert!(
        allowed.is_some(),
        "the widened restriction did not arrive within 1 s"
    );
    let r = kg.get_with_key("/v1/products", &secret);
    assert_eq!(
        (r.status, r.json()["restriction"].clone()),
        (403, "endpoint".into())
    );

    patch(serde_json::Value::Null);
    let unrestricted = within(Duration::from_secs(1), || {
        kg.get_with_key("/v1/products", &secret).status == 200
    });
    assert!(
        unrestricted.is_some(),
        "removing the restrictions did not arrive within 1 s"
    );
}

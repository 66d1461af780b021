//! The keys file is watched: good edits apply without a restart, bad ones change nothing.

mod common;

use common::http::Echo;
use common::*;
use std::time::Duration;

const KEY: &str = "sk_live_RELOAD000000000000000000000000001";
const OTHER: &str = "sk_live_OTHER0000000000000000000000000001";
const NEW: &str = "sk_live_NEW000000000000000000000000000001";

/// Two keys in one workspace; `key_a` as `status` says.
fn keys(status: KeyStatus) -> Keys {
    let keys = Keys::new(1).workspace("ws", WorkspaceKind::Live).key(
        "key_a",
        KEY,
        Some("ws"),
        Some(&["*"]),
    );
    let keys = match status {
        KeyStatus::Active => keys,
        KeyStatus::Revoked => keys.revoked(),
    };
    keys.key("key_b", OTHER, Some("ws"), Some(&["*"]))
}

/// The bar: a revocation is in force within 1 s, without a restart.
const REVOCATION_BOUND: Duration = Duration::from_secs(1);

#[test]
fn a_revocation_edited_into_the_file_applies_within_a_second() {
    let up = Echo::start();
    let kg = Keygate::start(Setup::new(&up, &keys(KeyStatus::Active)));
    assert_eq!(kg.get_with_key("/v1/me", KEY).status, 200);

    kg.replace_keys(&keys(KeyStatus::Revoked).yaml());
    let took = within(REVOCATION_BOUND, || {
        kg.get_with_key("/v1/me", KEY).status == 401
    });
    assert!(
        took.is_some(),
        "still accepted {REVOCATION_BOUND:?} after the revocation"
    );
    assert_eq!(kg.get_with_key("/v1/me", OTHER).status, 200);

    // An in-place overwrite (no rename) is seen too: the key comes back.
    kg.overwrite_keys(&keys(KeyStatus::Active).yaml());
    assert!(
        within(REVOCATION_BOUND, || kg.get_with_key("/v1/me", KEY).status
            == 200)
        .is_some()
    );
}

#[test]
fn a_new_key_works_without_a_restart() {
    let up = Echo::start();
    let kg = Keygate::start(Setup::new(&up, &keys(KeyStatus::Active)));
    assert_eq!(kg.get_with_key("/v1/me", NEW).status, 401);
    let added = keys(KeyStatus::Active).key("key_new", NEW, Some("ws"), Some(&[]));
    kg.replace_keys(&added.yaml());
    assert!(
        within(REVOCATION_BOUND, || kg.get_with_key("/v1/me", NEW).status
            == 200)
        .is_some()
    );
}

#[test]
fn a_broken_edit_keeps_the_last_good_snapshot_and_says_why() {
    let up = Echo::start();
    let kg = Keygate::start(Setup::new(&up, &keys(KeyStatus::Active)));
    for (what, broken) in [
        ("not YAML", "version: [1\nkeys: {".to_string()),
        (
            "unknown top-level field",
            format!("{}extra_field: 1\n", keys(KeyStatus::Revoked).yaml()),
        ),
        ("no version", "keys: []\n".to_string()),
    ] {
        kg.replace_keys(&broken);
        // Several watch intervals (50 ms in tests) pass; the old snapshot must still serve.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(kg.get_with_key("/v1/me", KEY).status, 200, "{what}");
        assert_eq!(kg.get_with_key("/v1/me", OTHER).status, 200, "{what}");
    }
    let log = kg.log();
    assert!(
        log.contains("keys file rejected, keeping the current snapshot"),
        "{log}"
    );
    assert!(log.contains("unknown field `extra_field`"), "{log}");
    assert!(log.contains("missing field `version`"), "{log}");

    // The file disappearing is no reason to forget the keys either.
    std::fs::remove_file(&kg.keys_path).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(kg.get_with_key("/v1/me", KEY).status, 200);

    // And the next good edit is taken.
    kg.replace_keys(&keys(KeyStatus::Revoked).yaml());
    assert!(
        within(REVOCATION_BOUND, || kg.get_with_key("/v1/me", KEY).status
            == 401)
        .is_some()
    );
}

#[test]
fn a_malformed_entry_is_skipped_and_the_rest_load() {
    let up = Echo::start();
    let bad = keys(KeyStatus::Active)
        .raw_key("  - id: key_typo\n    hash: 00\n    workspace: ws\n")
        .raw_key("  - id: key_scope_typo\n    hash: a111111111111111111111111111111111111111111111111111111111111111\n    workspace: ws\n    scope: [a]\n")
        .raw_key("  - id: key_bad_scope\n    hash: a222222222222222222222222222222222222222222222222222222222222222\n    workspace: ws\n    scopes: [\"a::b\"]\n")
        .raw_key("  - id: key_null_scopes\n    hash: a333333333333333333333333333333333333333333333333333333333333333\n    workspace: ws\n    scopes:\n")
        .raw_key("  - id: key_no_ws\n    hash: a444444444444444444444444444444444444444444444444444444444444444\n    workspace: ws_missing\n")
        .raw_key("  - name: no id at all\n");
    let kg = Keygate::start(Setup::new(&up, &bad));
    assert_eq!(kg.get_with_key("/v1/me", KEY).status, 200);
    assert_eq!(kg.get_with_key("/v1/me", OTHER).status, 200);
    let log = kg.log();
    assert!(log.contains("skipped=6"), "{log}");
    for needle in [
        "key key_typo: hash must be 64 lowercase hex digits",
        "key key_scope_typo: unknown field `scope`",
        "key key_bad_scope: invalid scope \"a::b\": empty segment",
        "key key_null_scopes: scopes is null",
        "key key_no_ws: workspace \"ws_missing\" is not in the snapshot",
        "key #7 (no id): missing field `id`",
    ] {
        assert!(log.contains(needle), "log lacks {needle:?}:\n{log}");
    }
}

//! The command line: `check` on good and bad configs, and `keys new` / `keys hash`.

mod common;

use common::http::Echo;
use common::*;
use std::io::Write;
use std::process::{Command, Stdio};

fn check(dir: &std::path::Path, config: &str, keys: &str) -> (i32, String) {
    std::fs::write(dir.join("keys.yaml"), keys).unwrap();
    let path = dir.join("keygate.yaml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

const GOOD: &str = "listen:\n  addresses: [\"127.0.0.1:8080\"]\nupstream:\n  address: 127.0.0.1:9000\nsnapshot:\n  file: keys.yaml\nroutes:\n  - name: all\n    path: /**\n    scopes: [a:read]\n";
const KEYS: &str = "version: 3\nworkspaces: [{ id: ws, type: live }]\nkeys: []\n";

#[test]
fn check_accepts_the_shipped_config() {
    let out = Command::new(BIN)
        .args(["check", "-c", "conf/keygate.yaml"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("ok: 5 routes"), "{text}");
}

#[test]
fn check_names_the_file_and_field_of_each_error() {
    let dir = tempfile::tempdir().unwrap();
    let (code, text) = check(dir.path(), GOOD, KEYS);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("version 3: 0 keys, 1 workspaces, 0 signing keys, 0 clients"),
        "{text}"
    );

    let cases = [
        // An unknown field (a typo) is an error, with the allowed names.
        (
            GOOD.replace("    scopes:", "    scope:"),
            "routes[0]: unknown field `scope`, expected one of",
        ),
        // A wrong type.
        (
            GOOD.replace("addresses: [\"127.0.0.1:8080\"]", "addresses: 8080"),
            "listen.addresses: invalid type: integer `8080`, expected a sequence",
        ),
        // An invalid value in a well-typed field.
        (
            GOOD.replace("[a:read]", "[\"a::read\"]"),
            "routes[0] (\"all\").scopes[0]: invalid scope \"a::read\": empty segment",
        ),
        (
            GOOD.replace("127.0.0.1:8080", "localhost"),
            "listen.addresses[0]: \"localhost\" is not an IP address and port",
        ),
        (
            GOOD.replace("    scopes: [a:read]\n", ""),
            "routes[0] (\"all\").scopes: missing; give `scopes: [...]`",
        ),
        (
            GOOD.replace("path: /**", "path: /**/x"),
            "\"**\" may only be the last segment",
        ),
        (
            format!("{GOOD}server:\n  threads: 0\n"),
            "server.threads: must be between 1 and 1024",
        ),
        (
            format!("{GOOD}upstream_timeout: 1s\n"),
            "unknown field `upstream_timeout`",
        ),
        (
            format!("{GOOD}limits:\n  headers: all\n"),
            "limits.headers: \"all\" is not one of both, ietf, x-ratelimit, none",
        ),
        (
            GOOD.replace(
                "address: 127.0.0.1:9000",
                "address: 127.0.0.1:9000\n  read_timeout: soon",
            ),
            "upstream.read_timeout: invalid duration \"soon\"",
        ),
        (
            GOOD.replace(
                "addresses: [\"127.0.0.1:8080\"]",
                "addresses: [\"127.0.0.1:8080\"]\n  max_connections: 0",
            ),
            "listen.max_connections: must be at least 1",
        ),
        (
            GOOD.replace(
                "addresses: [\"127.0.0.1:8080\"]",
                "addresses: [\"127.0.0.1:8080\"]\n  max_request_head_bytes: 2000000",
            ),
            "listen.max_request_head_bytes: must be between 1024 and 1048576",
        ),
        (
            GOOD.replace(
                "addresses: [\"127.0.0.1:8080\"]",
                "addresses: [\"127.0.0.1:8080\"]\n  request_head_timeout: 0s",
            ),
            "listen.request_head_timeout: must be more than 0s",
        ),
        (
            GOOD.replace(
                "path: /**\n    scopes: [a:read]\n",
                "path: /v1/x\n    scopes: [a:read]\n  - name: b\n    path: /V1/X\n    scopes: [a:read]\n",
            ),
            "differs from routes[0] (\"all\") only in letter case",
        ),
    ];
    for (config, expected) in &cases {
        let (code, text) = check(dir.path(), config, KEYS);
        assert_eq!(code, 1, "accepted:\n{config}");
        let file = dir.path().join("keygate.yaml").display().to_string();
        assert!(text.contains(&file), "no file name in: {text}");
        assert!(text.contains(expected), "expected {expected:?} in: {text}");
    }
}

#[test]
fn check_fails_on_a_bad_keys_file() {
    let dir = tempfile::tempdir().unwrap();
    let (code, text) = check(
        dir.path(),
        GOOD,
        "version: 1\nkeys: [{ id: k1, hash: nope, workspace: ws }]\nworkspaces: [{ id: ws, type: live }]\n",
    );
    assert_eq!(code, 1);
    assert!(
        text.contains("skipped key k1: hash must be 64 lowercase hex digits"),
        "{text}"
    );
    let (code, text) = check(dir.path(), GOOD, "version: -1\n");
    assert_eq!(code, 1);
    assert!(text.contains("keys.yaml: invalid snapshot"), "{text}");
    std::fs::remove_file(dir.path().join("keys.yaml")).unwrap();
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(dir.path().join("keygate.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the snapshot"));
}

#[test]
fn run_refuses_to_start_on_a_bad_config_or_keys_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keys.yaml"), "not: [a snapshot").unwrap();
    let path = dir.path().join("keygate.yaml");
    std::fs::write(&path, GOOD).unwrap();
    let out = Command::new(BIN)
        .args(["run", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid snapshot"));
}

#[test]
fn keys_hash_matches_the_library_and_keeps_quiet_about_the_secret() {
    let secret = "sk_live_HASHME00000000000000000000000000001";
    let mut child = Command::new(BIN)
        .args(["keys", "hash"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{secret}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        printed.trim(),
        keygate::secret::KeyHash::of(secret).to_hex()
    );
    assert!(!printed.contains(secret));
}

/// The whole operator workflow: make a key, paste its entry into the keys file, call with it.
#[test]
fn a_key_from_keys_new_works_once_pasted() {
    let out = Command::new(BIN)
        .args([
            "keys",
            "new",
            "--workspace",
            "ws",
            "--env",
            "live",
            "--scopes",
            "a:read,b:*",
            "--name",
            "ci",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let secret = text
        .split_whitespace()
        .find(|w| w.starts_with("sk_live_"))
        .expect("no secret printed")
        .to_owned();
    // Checksummed: the format's prefix and a valid checksum (any one character changed fails:
    // keygate-protocol's tests; refused before lookup: tests/request_path.rs).
    assert!(secret.starts_with("sk_live_kg_"), "{}", &secret[..11]);
    assert_eq!(secret.len(), keygate::secret::CHECKSUMMED_LEN);
    assert_eq!(
        keygate::secret::parse_token(&secret),
        Some(keygate::secret::Env::Live)
    );
    let entry = &text[text.find("- id:").expect("no entry printed")..];
    assert!(!entry.contains(&secret), "the entry holds the secret");
    let keys_yaml = format!(
        "version: 1\nworkspaces: [{{ id: ws, type: live }}]\nkeys:\n{}",
        entry
            .lines()
            .map(|l| format!("  {l}\n"))
            .collect::<String>()
    );

    let up = Echo::start();
    let keys = Keys::new(0);
    let kg = Keygate::start(Setup::new(&up, &keys).config(|c| {
        c.routes = vec![
            route("a", &[], "/a", &["a:read"]),
            route("c", &[], "/c", &["c:read"]),
        ]
    }));
    kg.replace_keys(&keys_yaml);
    assert!(
        within(std::time::Duration::from_secs(1), || kg
            .get_with_key("/a", &secret)
            .status
            == 200)
        .is_some(),
        "{keys_yaml}"
    );
    assert_eq!(kg.get_with_key("/c", &secret).status, 403);
    // Two calls never make the same secret.
    let again = Command::new(BIN)
        .args(["keys", "new", "--internal", "--env", "test"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&again.stdout).contains(&secret));
    assert!(String::from_utf8_lossy(&again.stdout).contains("internal: true"));
}

#[test]
fn server_defaults_suit_a_sidecar() {
    // Measured in the README's Performance section: on cores shared with the application,
    // work stealing costs more CPU per request than it saves.
    let config =
        keygate::config::Config::from_yaml(GOOD, std::path::Path::new("keygate.yaml")).unwrap();
    assert_eq!(config.server.threads, 2);
    assert!(!config.server.work_stealing);
    assert_eq!(config.server.listener_tasks_per_fd, 1);
    assert_eq!(config.server.upstream_keepalive_pool_size, 128);
}

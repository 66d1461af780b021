//! No key, and no run of its hash, reaches keygate's logs (application log and access log),
//! even at the most verbose level.

mod common;

use common::http::{Echo, Request};
use common::*;
use keygate::secret::KeyHash;
use std::time::Duration;

const GOOD: &str = "sk_live_LEAKCHECKgood00000000000000000000001";
const REVOKED: &str = "sk_live_LEAKCHECKrevoked000000000000000001";
const UNKNOWN: &str = "sk_live_LEAKCHECKunknown000000000000000001";
const SKIPPED: &str = "sk_live_LEAKCHECKskipped000000000000000001";

#[test]
fn secrets_and_hashes_never_appear_in_the_log() {
    let keys = Keys::new(1)
        .workspace("ws", WorkspaceKind::Live)
        .key("key_good", GOOD, Some("ws"), Some(&["products:read"]))
        .key("key_revoked", REVOKED, Some("ws"), None)
        .revoked()
        // Skipped at load (bad scope): its hash is in the file and must not be echoed.
        .key("key_skipped", SKIPPED, Some("ws"), Some(&["a::b"]));
    let up = Echo::start();
    let kg = Keygate::start(Setup {
        log_filter: "trace",
        ..Setup::new(&up, &keys).config(|c| c.upstream.forward_authorization = true)
    });
    for secret in [GOOD, REVOKED, UNKNOWN, SKIPPED] {
        let auth = bearer(secret);
        kg.get("/v1/products", &[("Authorization", &auth)]);
        kg.send(&Request::post("/v1/products", b"{}").header("Authorization", &auth));
        kg.get("/nowhere", &[("Authorization", &auth)]);
        kg.get("/v1/%2F", &[("Authorization", &auth)]);
    }
    // Malformed heads carrying a key, on both listeners: Pingora quotes the raw bytes of a head
    // it cannot parse in its error, and logs that error at ERROR on the admin listener.
    let auth = bearer(GOOD);
    let many_headers: String = (0..300).map(|i| format!("X-H{i}: v\r\n")).collect();
    for addr in [kg.addr, kg.admin] {
        for raw in [
            format!("GET /metrics HTTP/1.1\r\nBad Header: x\r\nAuthorization: {auth}\r\n\r\n"),
            format!("GET /metrics HTTP/1.1\r\nAuthorization: {auth}\r\n{many_headers}\r\n"),
            format!("GET /v1/products HTTP/1.1\r\nAuthorization:\r\n {auth}\r\nX\0: y\r\n\r\n"),
            format!("GET /v1/products HTTP/9.9\r\nAuthorization: {auth}\r\n\r\n"),
        ] {
            let _ = common::http::send_raw(addr, raw.as_bytes());
        }
    }
    // A rejected edit logs its parse error; it must not quote the hashes around the error.
    kg.replace_keys(&format!("{}\n  - {{ broken", keys.yaml()));
    std::thread::sleep(Duration::from_millis(300));
    drop(up);
    kg.get("/v1/products", &[("Authorization", &bearer(GOOD))]);

    let log = kg.log();
    assert!(
        log.contains("keys file rejected"),
        "the rejected edit was not logged:\n{log}"
    );
    assert!(log.lines().count() > 5, "suspiciously quiet log:\n{log}");
    // The admin listener's parse errors were logged, with the raw request taken out.
    assert!(
        log.contains("buf: <redacted>"),
        "the malformed admin requests were not logged (or not redacted):\n{log}"
    );
    for secret in [GOOD, REVOKED, UNKNOWN, SKIPPED] {
        let body = secret.split('_').nth(2).unwrap();
        assert!(!log.contains(body), "secret {secret} in the log:\n{log}");
        let hash = KeyHash::of(secret).to_hex();
        for window in hash.as_bytes().windows(8) {
            let run = std::str::from_utf8(window).unwrap();
            assert!(
                !log.contains(run),
                "8 characters of a hash ({run}) in the log:\n{log}"
            );
        }
    }
}

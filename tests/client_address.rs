//! Who the client is, through the real binary: the peer, or behind a trusted proxy the address
//! that proxy forwards for; and what the upstream is told.

mod common;

use common::http::{Echo, Response};
use common::*;
use keygate::client_address::ForwardedFrom;
use keygate::config::file::ClientAddressFile;
use std::time::Duration;

const KEY: &str = "sk_live_CLIENTADDRESS00000000000000000001";

fn keys() -> Keys {
    Keys::new(1).workspace("ws", WorkspaceKind::Live).key(
        "key_client",
        KEY,
        Some("ws"),
        Some(&["*"]),
    )
}

fn start_with(up: &Echo, trusted: &[&str], from: Option<ForwardedFrom>) -> Keygate {
    let trusted: Vec<String> = trusted.iter().map(|s| s.to_string()).collect();
    Keygate::start(Setup::new(up, &keys()).config(|c| {
        c.client_address = ClientAddressFile {
            trusted_proxies: trusted,
            from,
        };
    }))
}

fn get(kg: &Keygate, headers: &[(&str, &str)]) -> Response {
    let auth = format!("Bearer {KEY}");
    let mut all = vec![("Authorization", auth.as_str())];
    all.extend_from_slice(headers);
    let r = kg.get("/v1/products", &all);
    assert_eq!(r.status, 200, "{}", r.text());
    r
}

/// Every header the upstream saw with this name, in any spelling (`-` or `_`, any case).
fn all_spellings(r: &Response, name: &str) -> Vec<(String, String)> {
    upstream_headers(r)
        .into_iter()
        .filter(|(n, _)| n.replace('_', "-").eq_ignore_ascii_case(name))
        .collect()
}

#[test]
fn a_client_not_behind_a_trusted_proxy_cannot_name_its_own_address() {
    let up = Echo::start();
    let kg = start_with(&up, &[], None);
    let r = get(
        &kg,
        &[
            ("X-Forwarded-For", "203.0.113.9"),
            ("X_Forwarded_For", "203.0.113.10"),
            ("Forwarded", "for=203.0.113.11"),
            ("X-Client-IP", "203.0.113.12"),
            ("x_client_ip", "203.0.113.13"),
        ],
    );
    assert_eq!(
        all_spellings(&r, "x-client-ip"),
        [("x-client-ip".to_string(), "127.0.0.1".to_string())]
    );
    assert_eq!(
        all_spellings(&r, "x-forwarded-for"),
        [("x-forwarded-for".to_string(), "127.0.0.1".to_string())]
    );
    assert!(all_spellings(&r, "forwarded").is_empty());
}

#[test]
fn behind_a_trusted_proxy_the_rightmost_untrusted_hop_is_the_client() {
    let up = Echo::start();
    let kg = start_with(&up, &["127.0.0.0/8", "10.0.0.0/8"], None);
    // The client wrote 6.6.6.6 itself; the trusted proxies appended 203.0.113.9 and 10.0.0.2.
    let r = get(
        &kg,
        &[
            ("X-Forwarded-For", "6.6.6.6, 203.0.113.9"),
            ("X-Forwarded-For", "10.0.0.2"),
        ],
    );
    assert_eq!(
        upstream_header(&r, "x-client-ip").as_deref(),
        Some("203.0.113.9")
    );
    assert_eq!(
        all_spellings(&r, "x-forwarded-for"),
        [(
            "x-forwarded-for".to_string(),
            "6.6.6.6, 203.0.113.9, 10.0.0.2, 127.0.0.1".to_string()
        )],
        "the proxies' chain, then the peer, as one line"
    );
    // IPv4-mapped IPv6 is the IPv4 address.
    let r = get(&kg, &[("X-Forwarded-For", "::ffff:198.51.100.9")]);
    assert_eq!(
        upstream_header(&r, "x-client-ip").as_deref(),
        Some("198.51.100.9")
    );
    // Without a header, the trusted peer itself.
    let r = get(&kg, &[]);
    assert_eq!(
        upstream_header(&r, "x-client-ip").as_deref(),
        Some("127.0.0.1")
    );
    // The access log names the client behind the proxy beside the peer.
    let logged = within(Duration::from_secs(2), || kg.access_log().len() == 3);
    assert!(logged.is_some(), "{}", kg.access_log_text());
    let log = kg.access_log();
    assert_eq!(log[0]["client_ip"], "203.0.113.9");
    assert!(log[0]["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(
        log[2].get("client_ip").is_none(),
        "the peer itself: not repeated"
    );
}

#[test]
fn rfc_7239_forwarded_is_read_when_configured_with_ipv6_clients() {
    let up = Echo::start();
    let kg = start_with(&up, &["127.0.0.1"], Some(ForwardedFrom::Forwarded));
    let r = get(
        &kg,
        &[
            ("Forwarded", r#"for="[2001:db8:cafe::17]:4711";proto=https"#),
            ("X-Forwarded-For", "203.0.113.9"),
        ],
    );
    assert_eq!(
        upstream_header(&r, "x-client-ip").as_deref(),
        Some("2001:db8:cafe::17")
    );
    assert_eq!(
        upstream_header(&r, "forwarded").as_deref(),
        Some(r#"for="[2001:db8:cafe::17]:4711";proto=https"#),
        "a trusted proxy's Forwarded is passed on"
    );
}

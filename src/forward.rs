//! What the upstream receives: client-sent identity headers removed, keygate's own set.

use crate::access_log::line::ip_addr;
use crate::client_address::ClientAddress;
use crate::config::UpstreamConfig;
use crate::gate::Identity;
use crate::headers::{self, Headers, Name};
use pingora::http::RequestHeader;

/// The headers keygate sets from its decision. The upstream trusts them, so a client's own copy,
/// in any letter case or with `_` for `-`, must never get through.
pub const IDENTITY_HEADERS: [&str; 6] = [
    "x-workspace-id",
    "x-workspace-type",
    "x-api-key-id",
    "x-api-key-scopes",
    "x-auth-type",
    "x-client-ip",
];

/// Where proxies say whom they forward for. Believed only from a trusted proxy (see
/// [`crate::client_address`]); from anyone else, dropped in every spelling, so that the
/// upstream never reads a client's claim about itself.
pub const FORWARDING_HEADERS: [&str; 2] = ["x-forwarded-for", "forwarded"];

/// Headers that ask the upstream to run another method than the request line's (Rails, Express,
/// Spring and others honour one or more of them). keygate checks scopes for the request line's
/// method, so by default these never reach the upstream.
pub const METHOD_OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

fn is_identity_header(name: &str) -> bool {
    is_spelling_of(name, &IDENTITY_HEADERS)
}

/// Many servers (e.g. CGI-style frameworks) map `X_Api_Key_Id` and `x-api-key-id` to the same
/// variable, so the underscore spelling is treated as the same header.
fn is_spelling_of(name: &str, headers: &[&str]) -> bool {
    headers.iter().any(|h| {
        h.len() == name.len()
            && h.bytes().zip(name.bytes()).all(|(want, got)| {
                let got = got.to_ascii_lowercase();
                got == want || (want == b'-' && got == b'_')
            })
    })
}

static WORKSPACE_ID: Name = Name::lower("x-workspace-id");
static WORKSPACE_TYPE: Name = Name::lower("x-workspace-type");
static API_KEY_ID: Name = Name::lower("x-api-key-id");
static API_KEY_SCOPES: Name = Name::lower("x-api-key-scopes");
static AUTH_TYPE: Name = Name::lower("x-auth-type");
static FORWARDED_FOR: Name = Name::lower("x-forwarded-for");
static CLIENT_IP: Name = Name::lower("x-client-ip");

/// Rewrites the upstream request: strips credentials and spoofable identity, then sets the
/// identity keygate decided (none on a public route) and the client's address. Without
/// `upstream.preserve_header_case`, straight into the value map (see [`crate::headers`]).
pub fn prepare(
    req: &mut RequestHeader,
    identity: Option<&Identity>,
    client: Option<&ClientAddress>,
    upstream: &UpstreamConfig,
) -> pingora::Result<()> {
    if !upstream.preserve_header_case {
        let rewritten =
            headers::request_without_case(req, |map| rewrite(map, identity, client, upstream));
        if let Some(rewritten) = rewritten {
            return rewritten;
        }
    }
    rewrite(req, identity, client, upstream)
}

fn rewrite(
    req: &mut impl Headers,
    identity: Option<&Identity>,
    client: Option<&ClientAddress>,
    upstream: &UpstreamConfig,
) -> pingora::Result<()> {
    if !upstream.forward_authorization {
        req.remove(&http::header::AUTHORIZATION);
    }
    let strip_override = upstream.strip_method_override;
    let peer_trusted = client.is_some_and(|c| c.peer_trusted);
    // Collected first: the map cannot change while it is read. Without spoofed headers (the
    // normal case) the vector stays empty and allocates nothing.
    let spoofed: Vec<http::HeaderName> = req
        .map()
        .keys()
        .filter(|name| {
            is_identity_header(name.as_str())
                || (strip_override && is_spelling_of(name.as_str(), &METHOD_OVERRIDE_HEADERS))
                // A trusted proxy's own spelling is kept; an underscore one never is.
                || (is_spelling_of(name.as_str(), &FORWARDING_HEADERS)
                    && (!peer_trusted || name.as_str().contains('_')))
        })
        .cloned()
        .collect();
    for name in &spoofed {
        req.remove(name);
    }
    req.reserve(7);
    if let Some(id) = identity {
        req.insert(&WORKSPACE_ID, id.workspace.id_header.clone())?;
        // A static value: no copy.
        let kind = http::HeaderValue::from_static(id.workspace.kind.as_str());
        req.insert(&WORKSPACE_TYPE, kind)?;
        req.insert(&API_KEY_ID, id.key.id_header())?;
        req.insert(&API_KEY_SCOPES, id.key.scopes_header())?;
        let auth = http::HeaderValue::from_static(id.key.auth_type().as_str());
        req.insert(&AUTH_TYPE, auth)?;
    }
    if let Some(c) = client {
        // The chain as the upstream should read it: a trusted proxy's, then the peer.
        let mut chain = Vec::with_capacity(48);
        if c.peer_trusted {
            for v in req.map().get_all("x-forwarded-for") {
                chain.extend_from_slice(v.as_bytes());
                chain.extend_from_slice(b", ");
            }
        }
        let peer_at = chain.len();
        ip_addr(c.peer, &mut chain);
        let chain = bytes::Bytes::from(chain);
        // Without a trusted proxy the client is the peer: the same bytes, shared.
        let client_ip = if c.client == c.peer {
            chain.slice(peer_at..)
        } else {
            let mut client = Vec::with_capacity(16);
            ip_addr(c.client, &mut client);
            bytes::Bytes::from(client)
        };
        for (name, value) in [(&FORWARDED_FOR, chain), (&CLIENT_IP, client_ip)] {
            // Addresses and a trusted proxy's own header values: always valid.
            let value = http::HeaderValue::from_maybe_shared(value)
                .unwrap_or_else(|_| http::HeaderValue::from_static(""));
            req.insert(name, value)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_headers_match_in_any_case_and_with_underscores() {
        for name in [
            "x-workspace-id",
            "X-Workspace-Id",
            "x_workspace_id",
            "X_API_KEY_SCOPES",
            "x-api_key-id",
            "x-workspace-type",
        ] {
            assert!(is_identity_header(name), "{name}");
        }
        for name in [
            "x-workspace",
            "x-workspace-ids",
            "x-api-key",
            "authorization",
        ] {
            assert!(!is_identity_header(name), "{name}");
        }
    }

    #[test]
    fn spoofed_headers_are_removed_in_every_spelling() {
        for preserve in CASES {
            let mut req = RequestHeader::build("GET", b"/", None).unwrap();
            let names = [
                "x-workspace-id",
                "x_workspace_id",
                "x-workspace_id",
                "x_workspace-id",
                "x-api-key-id",
                "x_api_key_id",
                "x-api-key_id",
                "x_api-key-id",
                "x-api-key-scopes",
                "x_api_key_scopes",
                "x-workspace-type",
                "x_workspace_type",
                "x-client-ip",
                "X_Client_Ip",
            ];
            for n in names {
                req.append_header(n, "evil").unwrap();
            }
            req.append_header("authorization", "Bearer x").unwrap();
            req.append_header("x-other", "kept").unwrap();
            prepare(&mut req, None, None, &upstream(true, preserve)).unwrap();
            let left: Vec<_> = req.headers.keys().map(|k| k.as_str().to_owned()).collect();
            assert_eq!(left, vec!["x-other".to_string()]);
            assert_eq!(req.has_case(), preserve);
        }
    }

    /// Every test runs both ways of writing headers (see [`crate::headers`]).
    const CASES: [bool; 2] = [false, true];

    fn upstream(strip_method_override: bool, preserve_header_case: bool) -> UpstreamConfig {
        UpstreamConfig {
            address: "127.0.0.1:1".parse().unwrap(),
            tls: None,
            connect_timeout: std::time::Duration::from_secs(1),
            read_timeout: std::time::Duration::from_secs(1),
            write_timeout: std::time::Duration::from_secs(1),
            idle_timeout: std::time::Duration::from_secs(1),
            forward_authorization: false,
            strip_method_override,
            preserve_header_case,
        }
    }

    #[test]
    fn forwarding_headers_are_believed_only_from_a_trusted_peer() {
        for preserve in CASES {
            use crate::client_address::ClientAddress;
            let build = || {
                let mut req = RequestHeader::build("GET", b"/", None).unwrap();
                req.append_header("X-Forwarded-For", "6.6.6.6").unwrap();
                req.append_header("x-forwarded-for", "203.0.113.9").unwrap();
                req.append_header("X_Forwarded_For", "7.7.7.7").unwrap();
                req.append_header("Forwarded", "for=8.8.8.8").unwrap();
                req.append_header("x_client_ip", "9.9.9.9").unwrap();
                req.append_header("X-Client-IP", "9.9.9.9").unwrap();
                req
            };
            let header = |req: &RequestHeader, name: &str| -> Vec<String> {
                req.headers
                    .get_all(name)
                    .iter()
                    .map(|v| v.to_str().unwrap().to_owned())
                    .collect()
            };
            let ip = |s: &str| s.parse().unwrap();

            let mut req = build();
            let untrusted = ClientAddress {
                peer: ip("192.0.2.1"),
                client: ip("192.0.2.1"),
                peer_trusted: false,
            };
            prepare(&mut req, None, Some(&untrusted), &upstream(true, preserve)).unwrap();
            assert_eq!(header(&req, "x-forwarded-for"), ["192.0.2.1"]);
            assert_eq!(header(&req, "x-client-ip"), ["192.0.2.1"]);
            assert!(header(&req, "forwarded").is_empty());
            assert_eq!(req.headers.len(), 2, "{:?}", req.headers);

            let mut req = build();
            let trusted = ClientAddress {
                peer: ip("10.0.0.2"),
                client: ip("203.0.113.9"),
                peer_trusted: true,
            };
            prepare(&mut req, None, Some(&trusted), &upstream(true, preserve)).unwrap();
            assert_eq!(
                header(&req, "x-forwarded-for"),
                ["6.6.6.6, 203.0.113.9, 10.0.0.2"],
                "the proxy's chain, then the peer; never the underscore spelling"
            );
            assert_eq!(header(&req, "x-client-ip"), ["203.0.113.9"]);
            assert_eq!(header(&req, "forwarded"), ["for=8.8.8.8"]);
            assert_eq!(req.headers.len(), 3, "{:?}", req.headers);
        }
    }

    #[test]
    fn method_overrides_are_removed_unless_configured_otherwise() {
        for preserve in CASES {
            let build = || {
                let mut req = RequestHeader::build("GET", b"/", None).unwrap();
                for n in [
                    "X-HTTP-Method-Override",
                    "x_http_method_override",
                    "X-Http-Method",
                    "x-method-override",
                ] {
                    req.append_header(n, "DELETE").unwrap();
                }
                req
            };
            let mut req = build();
            prepare(&mut req, None, None, &upstream(true, preserve)).unwrap();
            assert_eq!(req.headers.len(), 0, "{:?}", req.headers);
            let mut req = build();
            prepare(&mut req, None, None, &upstream(false, preserve)).unwrap();
            assert_eq!(req.headers.len(), 4);
        }
    }
}

//! What the upstream receives: client-sent identity headers removed, keygate's own set.

use crate::config::UpstreamConfig;
use crate::gate::Identity;
use pingora::http::RequestHeader;

/// The headers keygate sets from its decision. The upstream trusts them, so a client's own copy,
/// in any letter case or with `_` for `-`, must never get through.
pub const IDENTITY_HEADERS: [&str; 4] = [
    "x-workspace-id",
    "x-workspace-type",
    "x-api-key-id",
    "x-api-key-scopes",
];

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

/// Rewrites the upstream request: strips credentials and spoofable identity, then sets the
/// identity keygate decided (none on a public route).
pub fn prepare(
    req: &mut RequestHeader,
    identity: Option<&Identity>,
    upstream: &UpstreamConfig,
) -> pingora::Result<()> {
    if !upstream.forward_authorization {
        req.remove_header(&http::header::AUTHORIZATION);
    }
    let strip_override = upstream.strip_method_override;
    // Collected first: the map cannot change while it is read. Without spoofed headers (the
    // normal case) the vector stays empty and allocates nothing.
    let spoofed: Vec<http::HeaderName> = req
        .headers
        .keys()
        .filter(|name| {
            is_identity_header(name.as_str())
                || (strip_override && is_spelling_of(name.as_str(), &METHOD_OVERRIDE_HEADERS))
        })
        .cloned()
        .collect();
    for name in &spoofed {
        req.remove_header(name);
    }
    if let Some(id) = identity {
        req.insert_header("x-workspace-id", id.workspace.id_header.clone())?;
        // A static value: no copy.
        let kind = http::HeaderValue::from_static(id.workspace.kind.as_str());
        req.insert_header("x-workspace-type", kind)?;
        req.insert_header("x-api-key-id", id.key.id_header())?;
        req.insert_header("x-api-key-scopes", id.key.scopes_header())?;
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
        ];
        for n in names {
            req.append_header(n, "evil").unwrap();
        }
        req.append_header("authorization", "Bearer x").unwrap();
        req.append_header("x-other", "kept").unwrap();
        prepare(&mut req, None, &upstream(true)).unwrap();
        let left: Vec<_> = req.headers.keys().map(|k| k.as_str().to_owned()).collect();
        assert_eq!(left, vec!["x-other".to_string()]);
    }

    fn upstream(strip_method_override: bool) -> UpstreamConfig {
        UpstreamConfig {
            address: "127.0.0.1:1".parse().unwrap(),
            connect_timeout: std::time::Duration::from_secs(1),
            read_timeout: std::time::Duration::from_secs(1),
            write_timeout: std::time::Duration::from_secs(1),
            idle_timeout: std::time::Duration::from_secs(1),
            forward_authorization: false,
            strip_method_override,
        }
    }

    #[test]
    fn method_overrides_are_removed_unless_configured_otherwise() {
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
        prepare(&mut req, None, &upstream(true)).unwrap();
        assert_eq!(req.headers.len(), 0, "{:?}", req.headers);
        let mut req = build();
        prepare(&mut req, None, &upstream(false)).unwrap();
        assert_eq!(req.headers.len(), 4);
    }
}

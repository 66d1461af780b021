//! What the upstream receives: client-sent identity headers removed, keygate's own set.

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

/// Many servers (e.g. CGI-style frameworks) map `X_Api_Key_Id` and `x-api-key-id` to the same
/// variable, so the underscore spelling is treated as the same header.
fn is_identity_header(name: &str) -> bool {
    IDENTITY_HEADERS.iter().any(|h| {
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
    forward_authorization: bool,
) -> pingora::Result<()> {
    if !forward_authorization {
        req.remove_header(&http::header::AUTHORIZATION);
    }
    // Collected first: the map cannot change while it is read. Without spoofed headers (the
    // normal case) the vector stays empty and allocates nothing.
    let spoofed: Vec<http::HeaderName> = req
        .headers
        .keys()
        .filter(|name| is_identity_header(name.as_str()))
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
        prepare(&mut req, None, false).unwrap();
        let left: Vec<_> = req.headers.keys().map(|k| k.as_str().to_owned()).collect();
        assert_eq!(left, vec!["x-other".to_string()]);
    }
}

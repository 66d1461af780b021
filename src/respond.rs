//! keygate's own answers: a JSON body and the right status and headers for every refusal.
//!
//! The bodies of the common refusals are fixed strings, so answering a flood of bad keys
//! allocates nothing; only a 403 names scopes and is built per request.

use crate::auth::AuthFailure;
use crate::gate::Rejection;
use crate::limits::{self, LimitName, RateHeaders, Usage};
use crate::restrictions::RestrictionKind;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use std::borrow::Cow;

/// A response keygate writes itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: Cow<'static, str>,
    pub www_authenticate: Option<Cow<'static, str>>,
    /// Seconds, for a 429's `Retry-After`.
    pub retry_after: Option<u32>,
}

impl Answer {
    const fn fixed(status: u16, body: &'static str) -> Answer {
        Answer {
            status,
            body: Cow::Borrowed(body),
            www_authenticate: None,
            retry_after: None,
        }
    }
}

const MISSING: &str = r#"{"error":"Unauthorized","code":"missing_credentials","message":"Send an API key as 'Authorization: Bearer <key>'."}"#;
/// One body for malformed, unknown, revoked and expired keys alike: which one it was is not the
/// caller's to learn.
const INVALID: &str = r#"{"error":"Unauthorized","code":"invalid_credentials","message":"The API key or access token is not valid."}"#;
/// Says where credentials go, and nothing about the one sent (it was not looked up).
const MISPLACED: &str = r#"{"error":"Unauthorized","code":"invalid_credentials","message":"Send API keys and access tokens in 'Authorization: Bearer'. Only a browser client token may come in the access_token query parameter or the WebSocket subprotocols, and only on routes marked for browsers."}"#;
const NO_ROUTE: &str =
    r#"{"error":"Not Found","code":"no_route","message":"No route matches this method and path."}"#;
const WORKSPACE_REQUIRED: &str = r#"{"error":"Bad Request","code":"workspace_required","message":"An internal key must name a workspace in the x-workspace-id header."}"#;
const UNKNOWN_WORKSPACE: &str = r#"{"error":"Forbidden","code":"unknown_workspace","message":"The workspace named in x-workspace-id does not exist."}"#;
const NO_SNAPSHOT: &str = r#"{"error":"Service Unavailable","code":"no_snapshot","message":"keygate has no current snapshot of its keys: none loaded yet, or too old to trust."}"#;
const UPSTREAM_TIMEOUT: &str = r#"{"error":"Gateway Timeout","code":"upstream_timeout","message":"The upstream service did not answer in time."}"#;
const UPSTREAM_FAILED: &str = r#"{"error":"Bad Gateway","code":"upstream_unavailable","message":"The upstream service could not be reached."}"#;
const INTERNAL: &str = r#"{"error":"Internal Server Error","code":"internal_error","message":"keygate could not handle this request."}"#;
const LIMITS_UNAVAILABLE: &str = r#"{"error":"rate_limited","code":"limits_unavailable","retry_after":1,"message":"The workspace's limits cannot be checked right now; retry after 1 s."}"#;
const BAD_REQUEST: &str =
    r#"{"error":"Bad Request","code":"bad_request","message":"The request could not be read."}"#;

const TOO_MANY_FAILURES: &str = r#"{"error":"Too Many Requests","code":"too_many_failures","message":"Too many failed authentications from this address; retry after the time in Retry-After."}"#;
// A key's restrictions: which one failed, never what it allows.
const RESTRICTED_IP: &str = r#"{"error":"Forbidden","code":"key_restricted","restriction":"ip","message":"This API key is restricted to certain client addresses, and this request came from another."}"#;
const RESTRICTED_REFERRER: &str = r#"{"error":"Forbidden","code":"key_restricted","restriction":"referrer","message":"This API key is restricted to certain referrers, and this request's Referer or Origin is not one of them."}"#;
const RESTRICTED_ENDPOINT: &str = r#"{"error":"Forbidden","code":"key_restricted","restriction":"endpoint","message":"This API key is restricted to certain endpoints, and this is not one of them."}"#;

/// The answer to a refusal; its status (and the `code` in each body) is [`Rejection::refusal`]'s.
pub fn for_rejection(r: &Rejection) -> Answer {
    let status = r.refusal().status;
    let fixed = |body| Answer::fixed(status, body);
    match r {
        Rejection::NoSnapshot => fixed(NO_SNAPSHOT),
        Rejection::BadPath(e) => Answer {
            body: Cow::Owned(format!(
                r#"{{"error":"Bad Request","code":"invalid_path","message":{}}}"#,
                serde_json::Value::from(e.to_string()),
            )),
            ..fixed("")
        },
        Rejection::NoRoute => fixed(NO_ROUTE),
        Rejection::MissingCredentials => Answer {
            www_authenticate: Some(Cow::Borrowed("Bearer")),
            ..fixed(MISSING)
        },
        Rejection::InvalidCredentials(AuthFailure::Misplaced) => Answer {
            www_authenticate: Some(Cow::Borrowed(r#"Bearer error="invalid_request""#)),
            ..fixed(MISPLACED)
        },
        Rejection::InvalidCredentials(_) => Answer {
            www_authenticate: Some(Cow::Borrowed(r#"Bearer error="invalid_token""#)),
            ..fixed(INVALID)
        },
        Rejection::InsufficientScope(missing) => {
            let list = missing.join(" ");
            let message = format!("This API key lacks the scope {list}.");
            Answer {
                body: Cow::Owned(format!(
                    r#"{{"error":"Forbidden","code":"insufficient_scope","message":{},"missing_scopes":{}}}"#,
                    serde_json::Value::from(message),
                    serde_json::Value::from(missing.clone()),
                )),
                // RFC 6750 §3: scope is a quoted, space-separated list.
                www_authenticate: Some(Cow::Owned(format!(
                    r#"Bearer error="insufficient_scope", scope="{}""#,
                    quote(&list)
                ))),
                ..fixed("")
            }
        }
        Rejection::WorkspaceRequired => fixed(WORKSPACE_REQUIRED),
        Rejection::LimitsUnavailable => Answer {
            retry_after: Some(1),
            ..fixed(LIMITS_UNAVAILABLE)
        },
        Rejection::UnknownWorkspace => fixed(UNKNOWN_WORKSPACE),
        Rejection::TooManyFailures { retry_after_secs } => Answer {
            retry_after: Some(*retry_after_secs),
            ..fixed(TOO_MANY_FAILURES)
        },
        Rejection::ConcurrencyLimited { allowed, .. } => Answer {
            body: Cow::Owned(format!(
                r#"{{"error":"Too Many Requests","code":"concurrency_limited","allowed":{allowed},"retry_after":1,"message":"The workspace already has {allowed} requests in flight, its cap; retry once one has finished."}}"#
            )),
            retry_after: Some(1),
            ..fixed("")
        },
        Rejection::KeyRestricted(kind) => fixed(match kind {
            RestrictionKind::Ip => RESTRICTED_IP,
            RestrictionKind::Referrer => RESTRICTED_REFERRER,
            RestrictionKind::Endpoint => RESTRICTED_ENDPOINT,
        }),
        Rejection::RateLimited {
            limit,
            allowed,
            retry_after_secs,
            ..
        } => {
            let per = match limit {
                LimitName::Burst => "second",
                LimitName::Sustained => "minute",
            };
            Answer {
                body: Cow::Owned(format!(
                    r#"{{"error":"rate_limited","code":"rate_limited","limit":"{}","retry_after":{retry_after_secs},"message":"The workspace's {} limit of {allowed} requests per {per} is used up; retry after {retry_after_secs} s."}}"#,
                    limit.as_str(),
                    limit.as_str(),
                )),
                retry_after: Some(*retry_after_secs),
                ..fixed("")
            }
        }
    }
}

/// The answer when proxying failed with `status` (Pingora's classification of the error).
pub fn for_proxy_failure(status: u16) -> Answer {
    match status {
        504 => Answer::fixed(504, UPSTREAM_TIMEOUT),
        502 => Answer::fixed(502, UPSTREAM_FAILED),
        400..=499 => Answer::fixed(status, BAD_REQUEST),
        _ => Answer::fixed(500, INTERNAL),
    }
}

/// Escapes a value for an HTTP quoted-string (scopes may contain `"` or `\`).
fn quote(s: &str) -> Cow<'_, str> {
    if s.contains(['"', '\\']) {
        Cow::Owned(s.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        Cow::Borrowed(s)
    }
}

/// Writes the answer, with the rate-limit headers when the request was counted. Content-Length
/// is always set so that the client connection can be reused.
pub async fn send(
    session: &mut Session,
    answer: Answer,
    rate: Option<&Usage>,
    rate_headers: RateHeaders,
) -> pingora::Result<()> {
    let mut header = ResponseHeader::build(answer.status, Some(10))?;
    header.insert_header("Content-Type", "application/json")?;
    header.insert_header("Cache-Control", "no-store")?;
    header.set_content_length(answer.body.len())?;
    if let Some(challenge) = answer.www_authenticate {
        header.insert_header("WWW-Authenticate", challenge.as_ref())?;
    }
    if let Some(secs) = answer.retry_after {
        header.insert_header("Retry-After", secs)?;
    }
    if let Some(usage) = rate {
        limits::add_rate_headers(&mut header, usage, rate_headers)?;
    }
    session
        .write_response_header(Box::new(header), false)
        .await?;
    let body = match answer.body {
        Cow::Borrowed(s) => Bytes::from_static(s.as_bytes()),
        Cow::Owned(s) => Bytes::from(s),
    };
    session.write_response_body(Some(body), true).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthFailure;
    use crate::path::PathError;

    /// One of each refusal.
    fn every_rejection() -> Vec<Rejection> {
        vec![
            Rejection::NoSnapshot,
            Rejection::BadPath(PathError::NotOriginForm),
            Rejection::NoRoute,
            Rejection::MissingCredentials,
            Rejection::InvalidCredentials(AuthFailure::Revoked),
            Rejection::InvalidCredentials(AuthFailure::Misplaced),
            Rejection::InsufficientScope(vec!["products:write".into()]),
            Rejection::WorkspaceRequired,
            Rejection::KeyRestricted(RestrictionKind::Referrer),
            Rejection::TooManyFailures {
                retry_after_secs: 7,
            },
            Rejection::UnknownWorkspace,
            Rejection::RateLimited {
                limit: LimitName::Burst,
                allowed: 30,
                retry_after_secs: 1,
                subject_type: limits::SubjectKind::Live,
            },
            Rejection::LimitsUnavailable,
            Rejection::ConcurrencyLimited {
                allowed: 2,
                subject_type: limits::SubjectKind::Sandbox,
            },
        ]
    }

    #[test]
    fn every_answer_has_the_status_and_code_of_its_refusal_row() {
        for r in every_rejection() {
            let (answer, row) = (for_rejection(&r), r.refusal());
            assert_eq!(answer.status, row.status, "{r:?}");
            let body: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
            assert_eq!(body["code"], row.code, "{r:?}");
            assert!(body["message"].is_string(), "{r:?}");
        }
    }
}

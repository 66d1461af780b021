//! The rate-limit headers a client sees on every authenticated response.
//!
//! `X-RateLimit-*` describe the limit closest to binding, as most clients expect. The IETF
//! draft fields (draft-ietf-httpapi-ratelimit-headers) describe both: `RateLimit-Policy` the
//! quotas (`q` requests per `w` seconds), `RateLimit` what is left (`r`) and when each quota is
//! whole again (`t` seconds).

use super::{LimitName, MINUTE_MS, SECOND_MS, Standing, Usage};
use http::HeaderValue;

fn secs(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

fn value(s: String) -> HeaderValue {
    // Only digits, letters, quotes, `;`, `=`, `,` and spaces: always a valid header value.
    HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

pub fn rate_headers(usage: &Usage) -> [(&'static str, HeaderValue); 5] {
    let (_, binding): (LimitName, &Standing) = usage.binding();
    let (b, s) = (&usage.burst, &usage.sustained);
    [
        ("X-RateLimit-Limit", binding.limit.into()),
        ("X-RateLimit-Remaining", binding.remaining.into()),
        ("X-RateLimit-Reset", secs(binding.reset_ms).into()),
        (
            "RateLimit-Policy",
            value(format!(
                "\"burst\";q={};w={}, \"sustained\";q={};w={}",
                b.limit,
                SECOND_MS / 1000,
                s.limit,
                MINUTE_MS / 1000
            )),
        ),
        (
            "RateLimit",
            value(format!(
                "\"burst\";r={};t={}, \"sustained\";r={};t={}",
                b.remaining,
                secs(b.reset_ms),
                s.remaining,
                secs(s.reset_ms)
            )),
        ),
    ]
}

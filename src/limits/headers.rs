//! The rate-limit headers a client sees on every authenticated response.
//!
//! `X-RateLimit-*` describe the limit closest to binding, as most clients expect. The IETF
//! draft fields (draft-ietf-httpapi-ratelimit-headers) describe both: `RateLimit-Policy` the
//! quotas (`q` requests per `w` seconds), `RateLimit` what is left (`r`) and when each quota is
//! whole again (`t` seconds).

use super::{LimitName, MINUTE_MS, SECOND_MS, Standing, Usage};
use crate::headers::{Headers, Name};
use http::HeaderValue;
use std::cell::RefCell;
use std::sync::LazyLock;

fn secs(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

/// A header value assembled on the stack from text and numbers: the only allocation is the
/// value's own bytes. (`format!` would allocate twice and cost several times the instructions;
/// these values are written on every authenticated response.)
struct ValueBuf {
    bytes: [u8; 96],
    len: usize,
}

impl ValueBuf {
    fn new() -> Self {
        ValueBuf {
            bytes: [0; 96],
            len: 0,
        }
    }

    fn text(&mut self, s: &str) -> &mut Self {
        // The longest value (two quotas of ten-digit numbers) is about 60 bytes.
        let end = (self.len + s.len()).min(self.bytes.len());
        self.bytes[self.len..end].copy_from_slice(&s.as_bytes()[..end - self.len]);
        self.len = end;
        self
    }

    fn number(&mut self, n: u64) -> &mut Self {
        let digits = n.checked_ilog10().unwrap_or(0) as usize + 1;
        let end = self.len + digits;
        if end > self.bytes.len() {
            return self;
        }
        let mut n = n;
        for at in (self.len..end).rev() {
            self.bytes[at] = b'0' + (n % 10) as u8;
            n /= 10;
        }
        self.len = end;
        self
    }

    fn value(&self) -> HeaderValue {
        // Only digits, letters, quotes, `;`, `=`, `,` and spaces: always a valid header value.
        HeaderValue::from_bytes(&self.bytes[..self.len])
            .unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

fn number(n: impl Into<u64>) -> HeaderValue {
    let n = n.into();
    match SMALL_NUMBERS.get(n as usize) {
        Some(value) => value.clone(),
        None => ValueBuf::new().number(n).value(),
    }
}

/// Numbers up to this have a value made once ([`SMALL_NUMBERS`]): the default limits (30/s,
/// 3,000/min), what remains of them and every reset time in seconds.
const SMALL_NUMBER_MAX: usize = 4_095;

/// The values `0` to [`SMALL_NUMBER_MAX`], each over static text: cloning one copies two words,
/// where making one allocates. The three `X-RateLimit-*` values are nearly always among them.
static SMALL_NUMBERS: LazyLock<Box<[HeaderValue]>> = LazyLock::new(|| {
    let text: String = (0..=SMALL_NUMBER_MAX).map(|n| n.to_string()).collect();
    // Made once per process and kept for its life: `HeaderValue::from_static` needs `'static`.
    let text: &'static str = Box::leak(text.into_boxed_str());
    let mut start = 0;
    (0..=SMALL_NUMBER_MAX)
        .map(|n| {
            let len = n.checked_ilog10().unwrap_or(0) as usize + 1;
            start += len;
            HeaderValue::from_static(&text[start - len..start])
        })
        .collect()
});

/// A prepared `RateLimit-Policy` value and the (burst, sustained) quotas it says.
type PreparedPolicy = Option<((u32, u32), HeaderValue)>;

thread_local! {
    /// The last few `RateLimit-Policy` values this thread wrote, by their two quotas: the value
    /// changes only with a workspace's limits, and nearly every workspace has its type's.
    static POLICIES: RefCell<[PreparedPolicy; 4]> = const { RefCell::new([const { None }; 4]) };
}

/// `RateLimit-Policy` for quotas of `burst` per second and `sustained` per minute.
fn policy(burst: u32, sustained: u32) -> HeaderValue {
    let quotas = (burst, sustained);
    let slot = (burst ^ sustained.rotate_left(7)) as usize % 4;
    POLICIES.with_borrow_mut(|cache| {
        if let Some((cached, value)) = &cache[slot]
            && *cached == quotas
        {
            return value.clone();
        }
        let mut text = ValueBuf::new();
        text.text("\"burst\";q=")
            .number(burst.into())
            .text(";w=")
            .number(SECOND_MS / 1000)
            .text(", \"sustained\";q=")
            .number(sustained.into())
            .text(";w=")
            .number(MINUTE_MS / 1000);
        let value = text.value();
        cache[slot] = Some((quotas, value.clone()));
        value
    })
}

/// Which rate-limit headers responses carry: `limits.headers` in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateHeaders {
    /// `X-RateLimit-Limit`, `-Remaining`, `-Reset`: the limit closest to binding.
    pub x_ratelimit: bool,
    /// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers): both limits.
    pub ietf: bool,
}

impl RateHeaders {
    pub const BOTH: RateHeaders = RateHeaders {
        x_ratelimit: true,
        ietf: true,
    };
    /// The config's spellings, in the order the README lists them.
    pub const NAMES: [&'static str; 4] = ["both", "ietf", "x-ratelimit", "none"];

    pub fn parse(name: &str) -> Option<RateHeaders> {
        let (x_ratelimit, ietf) = match name {
            "both" => (true, true),
            "ietf" => (false, true),
            "x-ratelimit" => (true, false),
            "none" => (false, false),
            _ => return None,
        };
        Some(RateHeaders { x_ratelimit, ietf })
    }
}

static X_LIMIT: Name = Name::new("X-RateLimit-Limit", "x-ratelimit-limit");
static X_REMAINING: Name = Name::new("X-RateLimit-Remaining", "x-ratelimit-remaining");
static X_RESET: Name = Name::new("X-RateLimit-Reset", "x-ratelimit-reset");
static POLICY: Name = Name::new("RateLimit-Policy", "ratelimit-policy");
static STANDING: Name = Name::new("RateLimit", "ratelimit");

/// The headers `which` asks for; only those are formatted.
pub fn rate_headers(
    usage: &Usage,
    which: RateHeaders,
) -> impl Iterator<Item = (&'static Name, HeaderValue)> {
    let (_, binding): (LimitName, &Standing) = usage.binding();
    let (b, s) = (&usage.burst, &usage.sustained);
    let x_ratelimit = which.x_ratelimit.then(|| {
        [
            (&X_LIMIT, number(binding.limit)),
            (&X_REMAINING, number(binding.remaining)),
            (&X_RESET, number(secs(binding.reset_ms))),
        ]
    });
    let ietf = which.ietf.then(|| {
        let mut standing = ValueBuf::new();
        standing
            .text("\"burst\";r=")
            .number(b.remaining.into())
            .text(";t=")
            .number(secs(b.reset_ms))
            .text(", \"sustained\";r=")
            .number(s.remaining.into())
            .text(";t=")
            .number(secs(s.reset_ms));
        [
            (&POLICY, policy(b.limit, s.limit)),
            (&STANDING, standing.value()),
        ]
    });
    x_ratelimit
        .into_iter()
        .flatten()
        .chain(ietf.into_iter().flatten())
}

/// Adds the headers `which` asks for to `header`, replacing any of the same name (an upstream's
/// own `X-RateLimit-*` must not contradict keygate's).
///
/// Measured (`cargo bench --bench rate_headers`): through Pingora's API each header costs its
/// name parsed and allocated twice whatever is passed in, and `append_header` saves nothing over
/// `insert_header`; what is saved here is the values' allocations (see [`number`] and
/// [`policy`]). Written into a head's value map
/// (see [`crate::headers`]), the names cost nothing either.
pub fn add_rate_headers(
    header: &mut impl Headers,
    usage: &Usage,
    which: RateHeaders,
) -> pingora::Result<()> {
    for (name, value) in rate_headers(usage, which) {
        header.insert(name, value)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standing(limit: u32, remaining: u32, reset_ms: u64) -> Standing {
        Standing {
            limit,
            remaining,
            reset_ms,
            retry_ms: 0,
        }
    }

    #[test]
    fn headers_describe_the_binding_limit_and_both_quotas() {
        let usage = Usage {
            burst: standing(30, 29, 1_000),
            sustained: standing(u32::MAX, 7, 59_001),
        };
        assert_eq!(number(0u32), "0");
        assert_eq!(number(u64::MAX), "18446744073709551615");
        let headers: Vec<_> = rate_headers(&usage, RateHeaders::BOTH).collect();
        let got: Vec<(&str, &str)> = headers
            .iter()
            .map(|(name, value)| (name.spelled, value.to_str().unwrap()))
            .collect();
        let want = [
            ("X-RateLimit-Limit", "4294967295"),
            ("X-RateLimit-Remaining", "7"),
            ("X-RateLimit-Reset", "60"),
            (
                "RateLimit-Policy",
                "\"burst\";q=30;w=1, \"sustained\";q=4294967295;w=60",
            ),
            ("RateLimit", "\"burst\";r=29;t=1, \"sustained\";r=7;t=60"),
        ];
        assert_eq!(got, want);
    }

    /// Values from the table of small numbers and from the policy cache are the values
    /// formatted afresh, whatever order quotas come in (they share the cache's four places).
    #[test]
    fn prepared_values_are_the_formatted_ones() {
        for n in [0, 1, 9, 10, 99, 100, 3_000, 4_095, 4_096, 65_535] {
            assert_eq!(number(n as u32), n.to_string());
        }
        let quotas = [
            (30, 3_000),
            (5, 100),
            (30, 60),
            (30, 3_000),
            (1, 1),
            (7, 3_000),
            (5, 100),
            (0, 0),
        ];
        for _ in 0..3 {
            for (burst, sustained) in quotas {
                assert_eq!(
                    policy(burst, sustained),
                    format!("\"burst\";q={burst};w=1, \"sustained\";q={sustained};w=60")
                );
            }
        }
    }

    #[test]
    fn the_config_chooses_which_headers() {
        let usage = Usage {
            burst: standing(30, 29, 1_000),
            sustained: standing(3_000, 2_999, 60_000),
        };
        let names = |which: &str| -> Vec<&str> {
            rate_headers(&usage, RateHeaders::parse(which).unwrap())
                .map(|(name, _)| name.spelled)
                .collect()
        };
        assert_eq!(names("both").len(), 5);
        assert_eq!(names("ietf"), ["RateLimit-Policy", "RateLimit"]);
        assert_eq!(
            names("x-ratelimit"),
            [
                "X-RateLimit-Limit",
                "X-RateLimit-Remaining",
                "X-RateLimit-Reset"
            ]
        );
        assert!(names("none").is_empty());
        assert_eq!(RateHeaders::parse("all"), None);
        for name in RateHeaders::NAMES {
            assert!(RateHeaders::parse(name).is_some(), "{name}");
        }
    }
}

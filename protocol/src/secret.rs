//! API key secrets: their format, their SHA-256 hash, and generating new ones.
//!
//! keygate never stores a secret. The snapshot holds `hex(sha256(secret))`; a request's
//! bearer token is hashed once and looked up by that hash.
//!
//! Two formats are accepted. New secrets are **checksummed**:
//! `sk_live_kg_` (or `sk_test_kg_`), 32 random base62 characters (190 bits), then 6 base62
//! characters of the CRC32 of everything before them, prefix included. A token with a wrong
//! checksum (a typo, a truncated paste, a guess) is refused before it is hashed or looked up,
//! and a secret scanner can tell a keygate key from anything else that starts with `sk_live_`
//! (Stripe's keys do) with [`SCANNER_REGEX`]. Secrets of the first format, `sk_live_` and 32 to
//! 128 alphanumeric characters, keep working: their bodies never contain `_`, so no such secret
//! can be taken for a checksummed one.

use rand::distr::{Alphanumeric, SampleString};
use sha2::{Digest, Sha256};
use std::fmt;

/// What follows `sk_live_` / `sk_test_` in a checksummed secret.
pub const CHECKSUMMED_MARKER: &str = "kg_";
/// Random characters in a checksummed secret.
pub const RANDOM_LEN: usize = 32;
/// Base62 characters of the CRC32 that ends a checksummed secret: 62^6 > 2^32.
pub const CHECKSUM_LEN: usize = 6;
/// The length of every checksummed secret.
pub const CHECKSUMMED_LEN: usize = 8 + CHECKSUMMED_MARKER.len() + RANDOM_LEN + CHECKSUM_LEN;
/// Finds checksummed keygate secrets in text (GitHub secret scanning, gitleaks, trufflehog):
/// fixed prefix, fixed length, and a checksum the scanner may verify to drop false positives.
pub const SCANNER_REGEX: &str = r"\bsk_(?:live|test)_kg_[0-9A-Za-z]{38}\b";
/// Shortest body of a first-format secret accepted on a request: 32 random characters.
const MIN_BODY_LEN: usize = 32;
/// Longest body accepted; anything longer is rejected before hashing so that a huge header
/// costs nothing but a length check.
const MAX_BODY_LEN: usize = 128;
/// Base62 digits, in the order GitHub's token checksums use.
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The environment a secret's prefix names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Env {
    Live,
    Test,
}

impl Env {
    #[inline]
    pub fn prefix(self) -> &'static str {
        match self {
            Env::Live => "sk_live_",
            Env::Test => "sk_test_",
        }
    }
}

/// SHA-256 of a secret: the only form in which keygate knows a key. The key index picks shards
/// and buckets from its bytes directly (they are already uniformly random), so it has no `Hash`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    #[inline]
    pub fn of(secret: &str) -> Self {
        KeyHash(Sha256::digest(secret.as_bytes()).into())
    }

    /// Parses the 64 lowercase hex digits used in snapshots. A table lookup per digit and one
    /// check at the end: this runs once per key of every snapshot load.
    pub fn from_hex(s: &str) -> Option<Self> {
        const BAD: u8 = 0xff;
        const NIBBLE: [u8; 256] = {
            let mut t = [BAD; 256];
            let mut i = 0;
            while i < 10 {
                t[b'0' as usize + i] = i as u8;
                i += 1;
            }
            let mut i = 0;
            while i < 6 {
                t[b'a' as usize + i] = 10 + i as u8;
                i += 1;
            }
            t
        };
        let hex = s.as_bytes();
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        let mut bad = 0u8;
        for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
            let (hi, lo) = (NIBBLE[usize::from(pair[0])], NIBBLE[usize::from(pair[1])]);
            bad |= (hi | lo) & 0xf0;
            *o = (hi << 4) | lo;
        }
        (bad == 0).then_some(KeyHash(out))
    }

    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }
}

/// Never print a hash: even a prefix narrows a brute-force search.
impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyHash(..)")
    }
}

/// Checks a presented token's shape, and its checksum when it has one, and returns the
/// environment it names.
///
/// Done before hashing: a malformed token is answered without touching the index.
#[inline]
pub fn parse_token(token: &str) -> Option<Env> {
    let (env, body) = if let Some(body) = token.strip_prefix("sk_live_") {
        (Env::Live, body)
    } else if let Some(body) = token.strip_prefix("sk_test_") {
        (Env::Test, body)
    } else {
        return None;
    };
    let shaped = if let Some(rest) = body.strip_prefix(CHECKSUMMED_MARKER) {
        rest.len() == RANDOM_LEN + CHECKSUM_LEN
            && rest.bytes().all(|b| b.is_ascii_alphanumeric())
            && {
                let (signed, sum) = token.split_at(token.len() - CHECKSUM_LEN);
                checksum(signed) == sum.as_bytes()
            }
    } else {
        (MIN_BODY_LEN..=MAX_BODY_LEN).contains(&body.len())
            && body.bytes().all(|b| b.is_ascii_alphanumeric())
    };
    shaped.then_some(env)
}

/// The base62 CRC32 (IEEE) of `signed`, zero-padded to [`CHECKSUM_LEN`] digits.
fn checksum(signed: &str) -> [u8; CHECKSUM_LEN] {
    let mut n = crc32fast::hash(signed.as_bytes());
    let mut out = [b'0'; CHECKSUM_LEN];
    for digit in out.iter_mut().rev() {
        *digit = BASE62[(n % 62) as usize];
        n /= 62;
    }
    out
}

/// A fresh checksummed secret, its random part from the thread-local CSPRNG (ChaCha, seeded
/// from the OS).
pub fn generate(env: Env) -> String {
    let mut s = String::with_capacity(CHECKSUMMED_LEN);
    s.push_str(env.prefix());
    s.push_str(CHECKSUMMED_MARKER);
    Alphanumeric.append_string(&mut rand::rng(), &mut s, RANDOM_LEN);
    let sum = checksum(&s);
    s.extend(sum.iter().map(|&b| char::from(b)));
    s
}

/// What people may see of a secret to tell keys apart: its format prefix and 4 random
/// characters (`sk_live_kg_Co18`, `sk_live_Co18`), as dashboards show them.
pub fn display_prefix(secret: &str) -> &str {
    let marked = secret
        .get(8..)
        .is_some_and(|b| b.starts_with(CHECKSUMMED_MARKER));
    let n = if marked {
        8 + CHECKSUMMED_MARKER.len()
    } else {
        8
    } + 4;
    secret.get(..n).unwrap_or("")
}

/// A short random id for a new key entry: safe to log, unrelated to the secret.
pub fn generate_key_id() -> String {
    generate_id("key_")
}

/// `prefix` and 16 random letters and digits: the ids a control plane gives what it makes
/// (keys, OAuth clients, signing keys).
pub fn generate_id(prefix: &str) -> String {
    let mut s = String::from(prefix);
    Alphanumeric.append_string(&mut rand::rng(), &mut s, 16);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_are_checksummed_parse_and_differ() {
        let a = generate(Env::Live);
        let b = generate(Env::Live);
        assert_ne!(a, b);
        assert_eq!(parse_token(&a), Some(Env::Live));
        assert_eq!(parse_token(&generate(Env::Test)), Some(Env::Test));
        assert_eq!(a.len(), CHECKSUMMED_LEN);
        assert!(a.starts_with("sk_live_kg_"), "{}", &a[..11]);
    }

    #[test]
    fn the_checksum_is_a_base62_crc32_of_everything_before_it() {
        // Known vector: CRC32("123456789") = 0xCBF43926, base62 "3jZRME" (checked with Python).
        assert_eq!(&checksum("123456789"), b"3jZRME");
        assert_eq!(&checksum(""), b"000000", "CRC32 of nothing is 0");
        let random = "0123456789abcdefghijABCDEFGHIJxy";
        let signed = format!("sk_test_kg_{random}");
        let sum = std::str::from_utf8(&checksum(&signed)).unwrap().to_owned();
        assert_eq!(parse_token(&format!("{signed}{sum}")), Some(Env::Test));
        // The prefix is covered: the same random part and checksum under sk_live_ fail.
        assert_eq!(parse_token(&format!("sk_live_kg_{random}{sum}")), None);
    }

    #[test]
    fn any_one_character_changed_in_a_checksummed_secret_is_refused() {
        for env in [Env::Live, Env::Test] {
            let good = generate(env);
            let from = env.prefix().len() + CHECKSUMMED_MARKER.len();
            for i in from..good.len() {
                for &c in BASE62 {
                    if c == good.as_bytes()[i] {
                        continue;
                    }
                    let mut bad = good.clone().into_bytes();
                    bad[i] = c;
                    let bad = String::from_utf8(bad).unwrap();
                    assert_eq!(parse_token(&bad), None, "position {i}");
                }
            }
        }
    }

    #[test]
    fn checksummed_secrets_of_the_wrong_shape_are_refused() {
        let good = generate(Env::Live);
        for bad in [
            good[..good.len() - 1].to_owned(),
            format!("{good}0"),
            good.replacen("kg_", "kh_", 1),
            good.replacen("sk_live_kg_", "sk_live_KG_", 1),
            format!("{}-{}", &good[..20], &good[21..]),
            format!("{}é", &good[..good.len() - 2]),
        ] {
            assert_eq!(parse_token(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn first_format_secrets_still_parse_and_malformed_ones_are_rejected() {
        let body = "a".repeat(32);
        assert_eq!(parse_token(&format!("sk_live_{body}")), Some(Env::Live));
        assert_eq!(
            parse_token(&format!("sk_test_{}", "Z9".repeat(20))),
            Some(Env::Test)
        );
        for bad in [
            String::new(),
            format!("sk_prod_{body}"),
            format!("sk_live_{}", "a".repeat(31)),
            format!("sk_live_{}", "a".repeat(129)),
            format!("sk_live_{}-", "a".repeat(32)),
            format!("SK_LIVE_{body}"),
            format!("sk_live_{}é", "a".repeat(32)),
            format!("sk_live_{}_{}", "a".repeat(16), "a".repeat(16)),
        ] {
            assert_eq!(parse_token(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_display_prefix_is_the_format_and_four_random_characters() {
        let live = generate(Env::Live);
        assert_eq!(display_prefix(&live), &live[..15]);
        assert_eq!(
            display_prefix(&format!("sk_test_Co18{}", "a".repeat(28))),
            "sk_test_Co18"
        );
        assert_eq!(display_prefix("sk_"), "", "too short: nothing");
    }

    #[test]
    fn hash_round_trips_through_hex_and_hides_in_debug() {
        let h = KeyHash::of("sk_test_abc");
        assert_eq!(KeyHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(KeyHash::from_hex(&h.to_hex().to_uppercase()), None);
        assert_eq!(KeyHash::from_hex("abc"), None);
        assert_eq!(format!("{h:?}"), "KeyHash(..)");
        let good = h.to_hex();
        // Wrong lengths, and each character class next to 0-9 and a-f in ASCII.
        for bad in [
            good[1..].to_owned(),
            format!("{good}0"),
            format!("g{}", &good[1..]),
            format!("{}/", &good[..63]),
            format!("{}:", &good[..63]),
            format!("{}`", &good[..63]),
            format!("{} ", &good[..63]),
            format!("{}\u{e9}", &good[..62]),
        ] {
            assert_eq!(KeyHash::from_hex(&bad), None, "{bad}");
        }
        // Known vector: sha256("abc").
        assert_eq!(
            KeyHash::of("abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}

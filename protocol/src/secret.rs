//! API key secrets: their format, their SHA-256 hash, and generating new ones.
//!
//! keygate never stores a secret. The snapshot holds `hex(sha256(secret))`; a request's
//! bearer token is hashed once and looked up by that hash.

use rand::distr::{Alphanumeric, SampleString};
use sha2::{Digest, Sha256};
use std::fmt;

/// Characters after the `sk_live_` / `sk_test_` prefix in a generated secret.
pub const GENERATED_BODY_LEN: usize = 40;
/// Shortest body accepted on a request: the floor of 32 random characters.
const MIN_BODY_LEN: usize = 32;
/// Longest body accepted; anything longer is rejected before hashing so that a huge header
/// costs nothing but a length check.
const MAX_BODY_LEN: usize = 128;

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

/// Checks a presented token's shape and returns the environment it names.
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
    let shaped = (MIN_BODY_LEN..=MAX_BODY_LEN).contains(&body.len())
        && body.bytes().all(|b| b.is_ascii_alphanumeric());
    shaped.then_some(env)
}

/// A fresh secret from the thread-local CSPRNG (ChaCha, seeded from the OS).
pub fn generate(env: Env) -> String {
    let mut s = String::from(env.prefix());
    Alphanumeric.append_string(&mut rand::rng(), &mut s, GENERATED_BODY_LEN);
    s
}

/// A short random id for a new key entry: safe to log, unrelated to the secret.
pub fn generate_key_id() -> String {
    let mut s = String::from("key_");
    Alphanumeric.append_string(&mut rand::rng(), &mut s, 16);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_parse_and_differ() {
        let a = generate(Env::Live);
        let b = generate(Env::Live);
        assert_ne!(a, b);
        assert_eq!(parse_token(&a), Some(Env::Live));
        assert_eq!(parse_token(&generate(Env::Test)), Some(Env::Test));
        assert_eq!(a.len(), 8 + GENERATED_BODY_LEN);
    }

    #[test]
    fn malformed_tokens_are_rejected() {
        let body = "a".repeat(32);
        assert_eq!(parse_token(&format!("sk_live_{body}")), Some(Env::Live));
        for bad in [
            String::new(),
            format!("sk_prod_{body}"),
            format!("sk_live_{}", "a".repeat(31)),
            format!("sk_live_{}", "a".repeat(129)),
            format!("sk_live_{}-", "a".repeat(32)),
            format!("SK_LIVE_{body}"),
            format!("sk_live_{}é", "a".repeat(32)),
        ] {
            assert_eq!(parse_token(&bad), None, "{bad:?}");
        }
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

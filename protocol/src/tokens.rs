//! Access tokens: what a control plane mints and keygate verifies offline.
//!
//! A token is a JWT in the RFC 9068 profile (`typ: at+jwt`), signed with Ed25519 (`alg: EdDSA`)
//! under a `kid` whose public key travels in the snapshot ([`crate::wire::SigningKeyDoc`]).
//! The JWT library is `jsonwebtoken`, built without any crypto backend: [`install_provider`]
//! gives it one that knows Ed25519 only, on `ed25519-dalek` with strict verification. A token
//! naming any other algorithm (`none`, HMAC with a public key as its secret, RSA) therefore
//! fails before any key is looked at, whatever else keygate's own checks do.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{ErrorKind, Result as JwtResult};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Once;

/// The JWT `typ` of an access token (RFC 9068 §2.1).
pub const ACCESS_TOKEN_TYPE: &str = "at+jwt";
/// The JWT `typ` of a browser client token: minted by a control plane for an API key, carried
/// in the same claims as an access token with the minting key's id as `sub` and `client_id`.
/// A distinct type, signed into the header, so that neither kind can pass as the other.
pub const CLIENT_TOKEN_TYPE: &str = "client+jwt";
/// A client token's lifetime unless the request asks for less or more.
pub const DEFAULT_CLIENT_TOKEN_SECS: u64 = 600;
/// The longest a client token may live: it is handed to a browser.
pub const MAX_CLIENT_TOKEN_SECS: u64 = 3600;
/// How long a token lives unless the control plane is told otherwise.
pub const DEFAULT_LIFETIME_SECS: u64 = 3600;
/// The longest lifetime a control plane may give a token: also how long a retired signing key
/// must stay in the snapshot for its last tokens to keep working.
pub const MAX_LIFETIME_SECS: u64 = 24 * 3600;

/// The claims of an access token. Every field is required and typed: a token with a string
/// where a number belongs (`"exp": "9999999999"`) does not deserialize, so it cannot pass as
/// a token without an expiry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    /// The OAuth client's id (the RFC 9068 subject of a client-credentials token).
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub nbf: i64,
    pub iat: i64,
    pub jti: String,
    pub client_id: String,
    /// Space-separated scopes (RFC 9068 §2.2.3); may be empty.
    pub scope: String,
    /// The workspace the token acts for.
    pub workspace: String,
}

/// Installs the Ed25519-only provider as `jsonwebtoken`'s process default; idempotent. Call it
/// before minting or verifying.
pub fn install_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Fails only if another provider was installed first, which this workspace never does
        // (jsonwebtoken is built with no backend feature); checked by a test.
        let _ = PROVIDER.install_default();
    });
}

static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: ed25519_signer,
    verifier_factory: ed25519_verifier,
    key_utils: KeyUtils::new_unimplemented(),
};

/// The fixed PKCS#8 v1 prefix of an Ed25519 private key (RFC 8410 §7): `EncodingKey::from_ed_der`
/// is documented to take PKCS#8 DER, so a seed is wrapped in it.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

fn ed25519_signer(alg: &Algorithm, key: &EncodingKey) -> JwtResult<Box<dyn JwtSigner>> {
    if *alg != Algorithm::EdDSA {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    let seed = key
        .as_bytes()
        .strip_prefix(&PKCS8_ED25519_PREFIX[..])
        .and_then(|s| <[u8; 32]>::try_from(s).ok())
        .ok_or(ErrorKind::InvalidEddsaKey)?;
    Ok(Box::new(Ed25519Signer(SigningKey::from_bytes(&seed))))
}

fn ed25519_verifier(alg: &Algorithm, key: &DecodingKey) -> JwtResult<Box<dyn JwtVerifier>> {
    if *alg != Algorithm::EdDSA {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    let bytes =
        <[u8; 32]>::try_from(key.try_get_as_bytes()?).map_err(|_| ErrorKind::InvalidEddsaKey)?;
    let key = VerifyingKey::from_bytes(&bytes).map_err(|_| ErrorKind::InvalidEddsaKey)?;
    Ok(Box::new(Ed25519Verifier(key)))
}

struct Ed25519Signer(SigningKey);

impl signature::Signer<Vec<u8>> for Ed25519Signer {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        use ed25519_dalek::Signer as _;
        Ok(self.0.sign(msg).to_bytes().to_vec())
    }
}

impl JwtSigner for Ed25519Signer {
    fn algorithm(&self) -> Algorithm {
        Algorithm::EdDSA
    }
}

struct Ed25519Verifier(VerifyingKey);

impl signature::Verifier<Vec<u8>> for Ed25519Verifier {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> Result<(), signature::Error> {
        let sig = Signature::from_slice(sig).map_err(|_| signature::Error::new())?;
        // Strict: no small-order keys, no non-canonical signatures (no malleable tokens).
        self.0
            .verify_strict(msg, &sig)
            .map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for Ed25519Verifier {
    fn algorithm(&self) -> Algorithm {
        Algorithm::EdDSA
    }
}

/// Why a signing key was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("a signing key's seed must be 32 bytes in base64")]
    Seed,
    #[error("a signing key's public key must be 32 bytes in base64url (a JWK's `x`)")]
    PublicKey,
}

/// The control plane's side: mints tokens with one Ed25519 key under its `kid`.
pub struct TokenSigner {
    kid: String,
    encoding: EncodingKey,
    public_key: String,
}

impl TokenSigner {
    /// From the key's id and the base64 of its 32-byte seed.
    pub fn new(kid: &str, seed_base64: &str) -> Result<TokenSigner, KeyError> {
        let seed: [u8; 32] = STANDARD
            .decode(seed_base64.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(KeyError::Seed)?;
        let mut der = PKCS8_ED25519_PREFIX.to_vec();
        der.extend_from_slice(&seed);
        let public = SigningKey::from_bytes(&seed).verifying_key();
        Ok(TokenSigner {
            kid: kid.to_owned(),
            encoding: EncodingKey::from_ed_der(&der),
            public_key: URL_SAFE_NO_PAD.encode(public.to_bytes()),
        })
    }

    /// A new random seed, base64: what a control plane stores for a new signing key.
    pub fn generate_seed() -> String {
        STANDARD.encode(rand::random::<[u8; 32]>())
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as it goes in the snapshot (base64url, a JWK's `x`).
    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    /// The signed access token.
    pub fn sign(&self, claims: &AccessClaims) -> String {
        self.sign_as(ACCESS_TOKEN_TYPE, claims)
    }

    /// The signed browser client token ([`CLIENT_TOKEN_TYPE`]).
    pub fn sign_client_token(&self, claims: &AccessClaims) -> String {
        self.sign_as(CLIENT_TOKEN_TYPE, claims)
    }

    fn sign_as(&self, typ: &str, claims: &AccessClaims) -> String {
        install_provider();
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(typ.to_owned());
        header.kid = Some(self.kid.clone());
        // Cannot fail: the key is a valid Ed25519 seed and the claims plain data.
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap_or_default()
    }
}

/// Never prints the seed.
impl fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSigner")
            .field("kid", &self.kid)
            .field("public_key", &self.public_key)
            .finish()
    }
}

/// keygate's side: a snapshot's public key, ready for `jsonwebtoken::decode`.
pub fn decoding_key(public_key: &str) -> Result<DecodingKey, KeyError> {
    let bytes: [u8; 32] = URL_SAFE_NO_PAD
        .decode(public_key.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(KeyError::PublicKey)?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::PublicKey)?;
    Ok(DecodingKey::from_ed_der(&bytes))
}

/// The longest token accepted: a minted one is some 500 bytes; anything far longer is refused
/// before it is decoded.
pub const MAX_TOKEN_LEN: usize = 4096;

/// Whether a bearer value is shaped like a JWS compact token: a base64url JSON object (`eyJ`),
/// three parts, no space, at most [`MAX_TOKEN_LEN`] bytes. How keygate tells a token from an API
/// key before any work; only a cheap look (each test finds its byte with a vectorised search),
/// as the decoder refuses anything else about it.
pub fn looks_like_jwt(token: &str) -> bool {
    if token.len() > MAX_TOKEN_LEN || !token.starts_with("eyJ") || token.contains(' ') {
        return false;
    }
    match (token.find('.'), token.rfind('.')) {
        (Some(first), Some(last)) => first < last && !token[first + 1..last].contains('.'),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::Validation;

    fn claims() -> AccessClaims {
        AccessClaims {
            iss: "cp".into(),
            sub: "oc_1".into(),
            aud: "keygate".into(),
            exp: 4_000_000_000,
            nbf: 0,
            iat: 0,
            jti: "j".into(),
            client_id: "oc_1".into(),
            scope: "a:read".into(),
            workspace: "ws_1".into(),
        }
    }

    fn validation() -> Validation {
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_audience(&["keygate"]);
        v.set_issuer(&["cp"]);
        v
    }

    #[test]
    fn a_minted_token_verifies_with_its_public_key_only() {
        let signer = TokenSigner::new("k1", &STANDARD.encode([1u8; 32])).unwrap();
        let token = signer.sign(&claims());
        assert!(looks_like_jwt(&token));
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.kid.as_deref(), Some("k1"));
        assert_eq!(header.typ.as_deref(), Some(ACCESS_TOKEN_TYPE));
        let key = decoding_key(signer.public_key()).unwrap();
        let got = jsonwebtoken::decode::<AccessClaims>(&token, &key, &validation()).unwrap();
        assert_eq!(got.claims, claims());

        let other = TokenSigner::new("k1", &STANDARD.encode([2u8; 32])).unwrap();
        let other = decoding_key(other.public_key()).unwrap();
        assert!(jsonwebtoken::decode::<AccessClaims>(&token, &other, &validation()).is_err());
    }

    #[test]
    fn only_ed25519_is_known_to_the_provider() {
        install_provider();
        let provider = CryptoProvider::try_get_default().unwrap();
        assert!(std::ptr::eq(provider, &PROVIDER), "another provider won");
        let key = DecodingKey::from_secret(b"secret").unwrap();
        assert!((provider.verifier_factory)(&Algorithm::HS256, &key).is_err());
        assert!((provider.verifier_factory)(&Algorithm::RS256, &key).is_err());
    }

    #[test]
    fn bad_keys_are_refused_and_debug_hides_the_seed() {
        assert_eq!(TokenSigner::new("k", "AAAA").unwrap_err(), KeyError::Seed);
        assert!(decoding_key("AAAA").is_err());
        let seed = STANDARD.encode([3u8; 32]);
        let signer = TokenSigner::new("k", &seed).unwrap();
        assert!(!format!("{signer:?}").contains(&seed));
    }

    #[test]
    fn only_three_part_base64url_values_look_like_tokens() {
        assert!(looks_like_jwt("eyJh.eyJi.c2ln"));
        assert!(!looks_like_jwt("sk_live_abc"));
        assert!(!looks_like_jwt("eyJh.eyJi"));
        assert!(!looks_like_jwt("eyJh.eyJi.c2ln.x"));
        assert!(!looks_like_jwt("eyJh.ey Ji.c2ln"));
        let long = format!("eyJh.eyJi.{}", "A".repeat(MAX_TOKEN_LEN));
        assert!(!looks_like_jwt(&long));
    }
}

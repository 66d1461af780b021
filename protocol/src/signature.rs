//! Optional integrity of what keygate pulls: an Ed25519 signature over the exact bytes of every
//! 200 snapshot or delta body, sent base64-encoded in [`SIGNATURE_HEADER`]. The control plane
//! signs with a [`Signer`]; keygate checks with a [`Verifier`] built from the public key it is
//! configured with.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use std::fmt;

/// The response header carrying the signature.
pub const SIGNATURE_HEADER: &str = "x-keygate-signature";

/// Why a key or a signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signing key is not valid base64")]
    SeedNotBase64,
    #[error(
        "the signing key must be a 32-byte Ed25519 seed in base64 (44 characters), not {0} bytes"
    )]
    SeedLength(usize),
    #[error("must be a base64 Ed25519 public key (32 bytes)")]
    PublicKey,
    #[error("no signature, and a public key is configured")]
    Missing,
    #[error("the signature is not base64")]
    NotBase64,
    #[error("the signature is not 64 bytes")]
    Length,
    #[error("the signature does not match the snapshot")]
    Mismatch,
}

/// The control plane's side: signs bodies with an Ed25519 secret seed.
pub struct Signer {
    key: SigningKey,
}

impl Signer {
    /// From the base64 of a 32-byte Ed25519 secret seed (surrounding whitespace ignored).
    pub fn from_base64(seed: &str) -> Result<Signer, SignatureError> {
        let bytes = STANDARD
            .decode(seed.trim())
            .map_err(|_| SignatureError::SeedNotBase64)?;
        let seed: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| SignatureError::SeedLength(bytes.len()))?;
        Ok(Signer {
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// The verifying key in base64: what keygate is configured with.
    pub fn public_key_base64(&self) -> String {
        STANDARD.encode(self.key.verifying_key().to_bytes())
    }

    /// The value of [`SIGNATURE_HEADER`] for `body`.
    pub fn sign(&self, body: &[u8]) -> String {
        STANDARD.encode(self.key.sign(body).to_bytes())
    }
}

/// Never prints the seed.
impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("public_key", &self.public_key_base64())
            .finish()
    }
}

/// keygate's side: checks bodies against the control plane's public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    /// Boxed: the decompressed key is some 200 bytes, and configs carry an `Option` of it.
    key: Box<VerifyingKey>,
}

impl Verifier {
    /// From the base64 of a 32-byte Ed25519 public key (surrounding whitespace ignored).
    pub fn from_base64(public_key: &str) -> Result<Verifier, SignatureError> {
        let bytes: [u8; 32] = STANDARD
            .decode(public_key.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(SignatureError::PublicKey)?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| SignatureError::PublicKey)?;
        Ok(Verifier { key: Box::new(key) })
    }

    /// Checks `signature` (the header's value, if the response had one) over `body`.
    pub fn verify(&self, body: &[u8], signature: Option<&str>) -> Result<(), SignatureError> {
        let signature = signature.ok_or(SignatureError::Missing)?;
        let bytes = STANDARD
            .decode(signature.trim())
            .map_err(|_| SignatureError::NotBase64)?;
        let signature = Signature::from_slice(&bytes).map_err(|_| SignatureError::Length)?;
        self.key
            .verify_strict(body, &signature)
            .map_err(|_| SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Signer, Verifier) {
        let signer = Signer::from_base64(&STANDARD.encode([7u8; 32])).unwrap();
        let verifier = Verifier::from_base64(&signer.public_key_base64()).unwrap();
        (signer, verifier)
    }

    #[test]
    fn a_signature_verifies_only_over_the_bytes_it_signed() {
        let (signer, verifier) = pair();
        let signature = signer.sign(b"body");
        assert_eq!(verifier.verify(b"body", Some(&signature)), Ok(()));
        assert_eq!(
            verifier.verify(b"bodY", Some(&signature)),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn a_missing_or_malformed_signature_is_named() {
        let (_, verifier) = pair();
        assert_eq!(verifier.verify(b"b", None), Err(SignatureError::Missing));
        assert_eq!(
            verifier.verify(b"b", Some("not base64!")),
            Err(SignatureError::NotBase64)
        );
        assert_eq!(
            verifier.verify(b"b", Some("AAAA")),
            Err(SignatureError::Length)
        );
    }

    #[test]
    fn bad_keys_are_refused() {
        assert_eq!(
            Signer::from_base64("AAAA").unwrap_err(),
            SignatureError::SeedLength(3)
        );
        assert_eq!(
            Signer::from_base64("not base64!").unwrap_err(),
            SignatureError::SeedNotBase64
        );
        assert_eq!(
            Verifier::from_base64("AAAA").unwrap_err(),
            SignatureError::PublicKey
        );
    }

    #[test]
    fn debug_never_prints_the_seed() {
        let (signer, _) = pair();
        let seed = STANDARD.encode([7u8; 32]);
        assert!(!format!("{signer:?}").contains(&seed));
    }
}

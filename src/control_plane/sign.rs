//! Optional integrity of what keygate pulls: an Ed25519 signature over the exact bytes of every
//! 200 snapshot or delta body, sent as `X-Keygate-Signature`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer as _, SigningKey};

/// The response header carrying the signature.
pub const SIGNATURE_HEADER: &str = "x-keygate-signature";

pub struct Signer {
    key: SigningKey,
}

impl Signer {
    /// From the base64 of a 32-byte Ed25519 secret seed (surrounding whitespace ignored).
    pub fn from_base64(seed: &str) -> anyhow::Result<Signer> {
        let bytes = STANDARD
            .decode(seed.trim())
            .map_err(|e| anyhow::anyhow!("the signing key is not valid base64: {e}"))?;
        let seed: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            anyhow::anyhow!(
                "the signing key must be a 32-byte Ed25519 seed in base64 (44 characters), not {} bytes",
                bytes.len()
            )
        })?;
        Ok(Signer {
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// The verifying key in base64: what keygate is configured with.
    pub fn public_key_base64(&self) -> String {
        STANDARD.encode(self.key.verifying_key().to_bytes())
    }

    /// The base64 of the 64-byte signature over `body`.
    pub fn sign(&self, body: &[u8]) -> String {
        STANDARD.encode(self.key.sign(body).to_bytes())
    }
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("public_key", &self.public_key_base64())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signature, Verifier, VerifyingKey};

    #[test]
    fn signatures_verify_with_the_public_key() {
        let signer = Signer::from_base64(&STANDARD.encode([7u8; 32])).unwrap();
        let public: [u8; 32] = STANDARD
            .decode(signer.public_key_base64())
            .unwrap()
            .try_into()
            .unwrap();
        let public = VerifyingKey::from_bytes(&public).unwrap();
        let sig: [u8; 64] = STANDARD
            .decode(signer.sign(b"body"))
            .unwrap()
            .try_into()
            .unwrap();
        let sig = Signature::from_bytes(&sig);
        assert!(public.verify(b"body", &sig).is_ok());
        assert!(public.verify(b"bodY", &sig).is_err());
        assert!(Signer::from_base64("AAAA").is_err());
        assert!(Signer::from_base64("not base64!").is_err());
    }
}

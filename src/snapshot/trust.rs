//! What a snapshot says about access tokens: the public keys they may be signed with, and the
//! OAuth clients they may be minted for (so that revoking a client stops its tokens).
//!
//! Both tables are small next to the keys (a handful of signing keys; a few clients per
//! workspace), so each is one hash map behind an `Arc`: a delta that touches neither shares
//! them with the previous snapshot, one that does copies only the table it changes.

use super::invalid::InvalidEntry;
use super::model::{EntryKind, Skips, check_id};
use super::wire::{ClientDoc, KeyStatus, SigningAlgorithm, SigningKeyDoc};
use jsonwebtoken::DecodingKey;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A public key tokens may be signed with.
pub struct SigningKey {
    pub alg: SigningAlgorithm,
    /// The key as the snapshot gave it (base64url), to write it back out and to tell whether a
    /// `kid` still names the same key.
    pub public_key: Box<str>,
    pub decoding: DecodingKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// An OAuth client, as far as its tokens are concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub workspace: Box<str>,
    pub revoked: bool,
    /// Unix seconds from which its tokens stop working.
    pub expires_at: Option<i64>,
}

impl Client {
    /// Whether tokens of this client may be used at `now_unix`.
    pub fn usable(&self, now_unix: i64) -> bool {
        !self.revoked && self.expires_at.is_none_or(|t| now_unix < t)
    }
}

pub(crate) type SigningKeys = HashMap<Box<str>, Arc<SigningKey>, foldhash::fast::RandomState>;
pub(crate) type Clients = HashMap<Box<str>, Client, foldhash::fast::RandomState>;

/// Validates one signing key.
pub(crate) fn make_signing_key(doc: &SigningKeyDoc) -> Result<SigningKey, InvalidEntry> {
    check_id(&doc.kid)?;
    let decoding = match doc.alg {
        SigningAlgorithm::EdDSA => keygate_protocol::tokens::decoding_key(&doc.public_key)
            .map_err(|_| InvalidEntry::PublicKey)?,
    };
    Ok(SigningKey {
        alg: doc.alg,
        public_key: doc.public_key.trim().into(),
        decoding,
    })
}

/// Validates one client; `workspace_known` says whether its workspace is in the snapshot.
pub(crate) fn make_client(
    doc: &ClientDoc,
    workspace_known: impl Fn(&str) -> bool,
) -> Result<Client, InvalidEntry> {
    check_id(&doc.id)?;
    if !workspace_known(&doc.workspace) {
        return Err(InvalidEntry::UnknownWorkspace(doc.workspace.clone()));
    }
    let expires_at = match &doc.expires_at {
        None => None,
        Some(t) => Some(
            OffsetDateTime::parse(t, &Rfc3339)
                .map_err(|_| InvalidEntry::ExpiresAt(t.clone()))?
                .unix_timestamp(),
        ),
    };
    Ok(Client {
        workspace: doc.workspace.as_str().into(),
        revoked: doc.status == KeyStatus::Revoked,
        expires_at,
    })
}

/// Adds the valid entries of `docs` to `keys`, recording the others in `skips`.
pub(crate) fn add_signing_keys(keys: &mut SigningKeys, docs: &[SigningKeyDoc], skips: &mut Skips) {
    for doc in docs {
        let made = make_signing_key(doc).and_then(|k| {
            if keys.contains_key(doc.kid.as_str()) {
                Err(InvalidEntry::DuplicateId)
            } else {
                Ok(k)
            }
        });
        match made {
            Ok(k) => {
                keys.insert(doc.kid.as_str().into(), Arc::new(k));
            }
            Err(reason) => skips.add(EntryKind::SigningKey, doc.kid.clone(), reason),
        }
    }
}

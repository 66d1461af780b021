//! Writing a snapshot back out as a JSON document that [`parse`](super::parse) reads to the
//! same snapshot (e.g. a last-known-good copy on disk). Entries a load skipped are not in the
//! snapshot, so they are not written either.

use super::model::{Owner, Snapshot};
use super::wire::{ClientDoc, KeyDoc, KeyStatus, SigningKeyDoc, WorkspaceDoc};
use crate::scopes::KeyScopes;
use std::io::{self, Write};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Streams `snapshot` as compact JSON: `{"version":…,"workspaces":[…],"keys":[…]}`, then
/// `"signing_keys"` and `"clients"` when it has any.
/// Workspaces are sorted by id; keys come in index order.
pub fn write_json<W: Write>(snapshot: &Snapshot, w: W) -> io::Result<()> {
    let mut w = io::BufWriter::with_capacity(64 * 1024, w);
    write!(w, "{{\"version\":{},\"workspaces\":[", snapshot.version())?;
    let mut workspaces: Vec<_> = snapshot.workspaces.values().collect();
    workspaces.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    for (i, ws) in workspaces.into_iter().enumerate() {
        if i > 0 {
            w.write_all(b",")?;
        }
        let doc = WorkspaceDoc {
            id: ws.id.to_string(),
            kind: ws.kind,
            limits: ws.limits.to_doc(),
        };
        serde_json::to_writer(&mut w, &doc)?;
    }
    w.write_all(b"],\"keys\":[")?;
    let mut hex = [0u8; 64];
    for (i, key) in snapshot.keys.iter().enumerate() {
        if i > 0 {
            w.write_all(b",")?;
        }
        let expires_at = key.expires_at().map(rfc3339).transpose()?;
        let scopes = match key.scopes.scopes() {
            KeyScopes::Legacy => None,
            KeyScopes::Listed(patterns) => {
                Some(Some(patterns.iter().map(|p| p.as_str()).collect()))
            }
        };
        hex::encode_to_slice(key.hash.0, &mut hex).map_err(io::Error::other)?;
        let doc = KeyDoc::<&str> {
            id: key.id(),
            name: key.name(),
            hash: std::str::from_utf8(&hex).map_err(io::Error::other)?,
            workspace: match &key.owner {
                Owner::Workspace(ws) => Some(&ws.id),
                Owner::Internal => None,
            },
            internal: matches!(key.owner, Owner::Internal),
            scopes,
            status: status(key.revoked()),
            expires_at: expires_at.as_deref(),
            restrictions: snapshot.restrictions(key).map(|r| r.doc().clone()),
        };
        serde_json::to_writer(&mut w, &doc)?;
    }
    w.write_all(b"]")?;
    if !snapshot.signing_keys.is_empty() {
        let mut docs: Vec<SigningKeyDoc> = snapshot
            .signing_keys
            .iter()
            .map(|(kid, k)| SigningKeyDoc {
                kid: kid.to_string(),
                alg: k.alg,
                public_key: k.public_key.to_string(),
            })
            .collect();
        docs.sort_unstable_by(|a, b| a.kid.cmp(&b.kid));
        w.write_all(b",\"signing_keys\":")?;
        serde_json::to_writer(&mut w, &docs)?;
    }
    if !snapshot.clients.is_empty() {
        let mut docs = Vec::with_capacity(snapshot.clients.len());
        for (id, c) in snapshot.clients.iter() {
            docs.push(ClientDoc {
                id: id.to_string(),
                workspace: c.workspace.to_string(),
                status: status(c.revoked),
                expires_at: c.expires_at.map(rfc3339).transpose()?,
            });
        }
        docs.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        w.write_all(b",\"clients\":")?;
        serde_json::to_writer(&mut w, &docs)?;
    }
    w.write_all(b"}")?;
    w.flush()
}

/// Unix seconds as the RFC 3339 time the loader reads back.
fn rfc3339(t: i64) -> io::Result<String> {
    OffsetDateTime::from_unix_timestamp(t)
        .map_err(io::Error::other)?
        .format(&Rfc3339)
        .map_err(io::Error::other)
}

fn status(revoked: bool) -> KeyStatus {
    if revoked {
        KeyStatus::Revoked
    } else {
        KeyStatus::Active
    }
}

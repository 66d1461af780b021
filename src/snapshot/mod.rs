//! The snapshot keygate decides on: its wire schema, its validated model, loading it, applying
//! deltas to it, and writing it back out.

pub mod delta;
mod index;
pub mod invalid;
mod key_shards;
pub mod load;
pub mod model;
mod raw;
pub mod trust;
mod write;

pub use keygate_protocol::wire;

pub use delta::{Delta, parse_delta};
pub use invalid::InvalidEntry;
pub use load::{Format, SnapshotError, load_file, parse};
pub use model::{
    AuthType, EntryKind, KeyEntry, Owner, Skipped, Snapshot, SnapshotBuilder, TokenKind, Workspace,
};
pub use wire::{
    Changes, ClientDoc, DeltaDoc, KeyDoc, KeyStatus, LimitsDoc, RestrictionsDoc, SigningAlgorithm,
    SigningKeyDoc, SnapshotDoc, WorkspaceDoc, WorkspaceKind,
};
pub use write::write_json;

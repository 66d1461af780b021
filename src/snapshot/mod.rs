//! The snapshot keygate decides on: its wire schema, its validated model, and loading it.

pub mod load;
pub mod model;
pub mod wire;

pub use load::{Format, SnapshotError, load_file, parse};
pub use model::{EntryKind, KeyEntry, Owner, Skipped, Snapshot, SnapshotBuilder, Workspace};
pub use wire::{
    KeyDoc, KeyStatus, LimitsDoc, RestrictionsDoc, SnapshotDoc, WorkspaceDoc, WorkspaceKind,
};

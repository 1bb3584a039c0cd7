//! Encrypted mutable directories (see "Mutable objects" in `docs/DESIGN.md` and
//! `docs/specs/directories.md`).
//!
//! A directory's content is a [`DirState`]: a delta-state CRDT whose entries have stable ids
//! ([`EntryId`]), each holding three multi-value registers (name, content, alive) keyed by
//! [`Dot`]s under one [`CausalContext`]. Merging two states ([`DirState::join`]) is
//! commutative, associative and idempotent; writes that are truly concurrent stay side by side
//! and show as conflicts in a [`Listing`], sequential writes replace, an edit or rename wins over
//! a concurrent delete. An [`Edit`] applies changes to a state and collects the delta to publish.
//!
//! Deltas and compacted states travel as [`Version`]s: encrypted (AES-256-GCM under a key
//! derived from the read key and a random salt), signed with the directory's ed25519 key, and
//! citing their parent versions. Holders check the signature ([`Version::decode`]) without being
//! able to read anything; readers open versions with the readcap ([`Version::open`]).
//!
//! Pure: no I/O; time and randomness are parameters.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod content;
mod context;
mod edit;
mod error;
mod hlc;
mod name;
mod state;
mod version;
mod view;

pub use cairn_core::VersionId;
pub use content::{Content, FileRef, Meta, Move, MoveMark, SealedWriteCap};
pub use context::{CausalContext, Dot, VersionVector};
pub use edit::{Edit, Undo};
pub use error::DirError;
pub use hlc::{Hlc, MAX_FUTURE_MS};
pub use name::{MAX_NAME_LEN, check_name};
pub use state::{DirState, DotMap, Entry, EntryId, MvReg, Stamped};
pub use version::{MAX_PARENTS, Version, VersionBody};
pub use view::{Listed, Listing, conflict_name, utc_minutes};

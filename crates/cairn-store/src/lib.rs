//! One Cairn node's share storage.
//!
//! A share is one erasure-coded piece of an encrypted chunk, named by the chunk's
//! [`ShareRoot`](cairn_core::id::ShareRoot) and its index. The [`ShareStore`] trait stores,
//! reads, lists and removes shares, keeps each root's header once, tracks leases and counts the
//! bytes held against a capacity. Two implementations:
//!
//! - [`MemStore`]: in memory, for tests and ephemeral nodes.
//! - [`DiskStore`]: metadata and small shares in redb, large shares in files, the small shares
//!   of a batch in one pack file, crash-safe at any moment (see the [`disk`] module docs for the layout and the crash argument).
//!
//! The store never parses headers or shares: the caller verifies them before `put`, the reader
//! after `get`.
//!
//! ```
//! use cairn_core::id::{NodeId, ShareRoot};
//! use cairn_core::wire::Lease;
//! use cairn_store::{MemStore, PutOutcome, ShareStore};
//!
//! # fn main() -> Result<(), cairn_store::StoreError> {
//! let store = MemStore::new(1 << 20);
//! let root = ShareRoot::from_bytes([1; 32]);
//! let lease = Lease { owner: NodeId::from_bytes([2; 32]), expires_at: 1_900_000_000 };
//! assert_eq!(store.put(&root, 0, b"header", b"share bytes", lease)?, PutOutcome::Stored);
//! let share = store.get(&root, 0, Some(0..5))?.expect("just stored");
//! assert_eq!(share.data, b"share");
//! assert_eq!(store.held(&root)?, vec![0]);
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod disk;
mod error;
mod mem;
mod store;

pub use disk::{DiskStore, INLINE_MAX, PACK_MIN, PACK_MIN_LARGE, RecoveryReport};
pub use error::StoreError;
pub use mem::MemStore;
pub use store::{PutItem, PutOutcome, ShareStore, StoreUsage, StoredShare};

#[cfg(test)]
mod tests;

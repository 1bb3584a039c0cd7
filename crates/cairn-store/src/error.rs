//! The store's one public error type, [`StoreError`].
//!
//! Rules for this crate:
//! - Only [`StoreError`] crosses the public API. Every variant carries the facts a caller needs
//!   to act (which share, how many bytes, which path); there is no catch-all message variant.
//! - An I/O error on a share file or directory is wrapped with its path at the call site
//!   ([`StoreError::Io`]); a bare `std::io::Error` never escapes.
//! - redb errors are wrapped whole ([`StoreError::Db`]) so the cause chain survives. A disk that
//!   is full (`ENOSPC`, quota) is recognised inside both kinds and reported as
//!   [`StoreError::Full`] by the operations that add bytes.
//! - What a caller should do with each variant is written on [`StoreError`] itself, so it shows
//!   in the public docs.

use std::io;
use std::path::PathBuf;

use cairn_core::id::ShareRoot;

/// Why a share store operation failed.
///
/// What a caller does with each variant:
/// - [`Full`](Self::Full): permanent for this request on this node; place the share elsewhere.
///   Retrying only helps after shares were removed or the capacity raised.
/// - [`BadRange`](Self::BadRange): the caller's mistake; never retry.
/// - [`Corrupt`](Self::Corrupt): this node lost that share; remove it and let repair replace it.
/// - [`UnsupportedFormat`](Self::UnsupportedFormat): the store directory was written by a newer
///   version; run that version or restore the directory.
/// - [`Io`](Self::Io) and [`Db`](Self::Db): environmental; retry later. After an I/O error
///   inside redb the database refuses further writes until the store is reopened.
/// - [`Poisoned`](Self::Poisoned): a bug (a panic in another thread); restart the node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Storing the share would exceed the store's capacity, or the disk itself is full.
    #[error("store full: {needed} bytes needed, {available} available")]
    Full {
        /// Bytes the rejected share needed (its data, plus its header if the root was new).
        needed: u64,
        /// Bytes the store could still accept; 0 when the disk itself ran out of space.
        available: u64,
    },
    /// A byte range that starts past the end of the share, or ends before it starts.
    #[error("bad range {start}..{end} for share {root}.{index} of {len} bytes")]
    BadRange {
        /// The share's root.
        root: ShareRoot,
        /// The share's index.
        index: u8,
        /// Requested start.
        start: u64,
        /// Requested end (exclusive).
        end: u64,
        /// The share's length.
        len: u64,
    },
    /// A held share's bytes are damaged or missing on disk.
    #[error("share {root}.{index} is corrupt: {detail}")]
    Corrupt {
        /// The share's root.
        root: ShareRoot,
        /// The share's index.
        index: u8,
        /// What was found wrong.
        detail: String,
    },
    /// The store directory was written in a format this version does not know.
    #[error("store format {found} is not supported (this version reads format {supported})")]
    UnsupportedFormat {
        /// The format version found on disk.
        found: u64,
        /// The format version this build reads and writes.
        supported: u64,
    },
    /// An I/O error on a share file or store directory.
    #[error("I/O error on {}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An error from the redb metadata database.
    #[error("metadata database error")]
    Db(#[source] Box<redb::Error>),
    /// An internal lock was poisoned by a panic in another thread.
    #[error("store lock poisoned by a panic in another thread")]
    Poisoned,
}

impl StoreError {
    /// Wraps an I/O error with the path it happened on.
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        StoreError::Io {
            path: path.into(),
            source,
        }
    }

    /// Turns a disk-full error into [`StoreError::Full`] for a write of `needed` bytes; any
    /// other error is returned unchanged.
    pub(crate) fn full_if_disk_full(self, needed: u64) -> Self {
        let disk_full = match &self {
            StoreError::Io { source, .. } => is_disk_full(source),
            StoreError::Db(e) => match e.as_ref() {
                redb::Error::Io(source) => is_disk_full(source),
                _ => false,
            },
            _ => false,
        };
        if disk_full {
            StoreError::Full {
                needed,
                available: 0,
            }
        } else {
            self
        }
    }
}

/// Whether an I/O error says the disk (or the user's quota) is full.
fn is_disk_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(Box::new(e.into()))
            }
        }
    )*};
}

from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_error_is_send_sync_static() {
        fn check<T: Send + Sync + 'static + std::error::Error>() {}
        check::<StoreError>();
    }

    #[test]
    fn disk_full_io_becomes_full() {
        let e = StoreError::io("/x", io::Error::from(io::ErrorKind::StorageFull));
        assert!(matches!(
            e.full_if_disk_full(7),
            StoreError::Full {
                needed: 7,
                available: 0
            }
        ));
        let e = StoreError::Db(Box::new(redb::Error::Io(io::Error::from(
            io::ErrorKind::StorageFull,
        ))));
        assert!(matches!(e.full_if_disk_full(7), StoreError::Full { .. }));
        let e = StoreError::io("/x", io::Error::from(io::ErrorKind::NotFound));
        assert!(matches!(e.full_if_disk_full(7), StoreError::Io { .. }));
    }
}

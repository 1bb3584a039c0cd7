//! What a node has done since it started: files put and read, and shares served to other
//! members. Shown by `cairn status` and exported as metrics by the web server.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Counters since the node started (see [`crate::StatusReport::activity`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivityReport {
    /// Files stored through this node (puts, uploads, mount writes).
    pub files_put: u64,
    /// Bytes of those files.
    pub bytes_put: u64,
    /// Files read through this node (gets, and files opened by the mount or the web server).
    pub files_got: u64,
    /// Bytes read of files.
    pub bytes_got: u64,
    /// Shares this node sent to other members.
    pub shares_served: u64,
}

/// The live counters.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    files_put: AtomicU64,
    bytes_put: AtomicU64,
    files_got: AtomicU64,
    bytes_got: AtomicU64,
    shares_served: AtomicU64,
}

impl Activity {
    pub(crate) fn put(&self, bytes: u64) {
        self.files_put.fetch_add(1, Ordering::Relaxed);
        self.bytes_put.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn opened(&self) {
        self.files_got.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn read(&self, bytes: u64) {
        self.bytes_got.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn served(&self, shares: u64) {
        self.shares_served.fetch_add(shares, Ordering::Relaxed);
    }

    pub(crate) fn report(&self) -> ActivityReport {
        ActivityReport {
            files_put: self.files_put.load(Ordering::Relaxed),
            bytes_put: self.bytes_put.load(Ordering::Relaxed),
            files_got: self.files_got.load(Ordering::Relaxed),
            bytes_got: self.bytes_got.load(Ordering::Relaxed),
            shares_served: self.shares_served.load(Ordering::Relaxed),
        }
    }
}

//! The [`ShareStore`] trait and the plain types its methods exchange.

use std::ops::Range;

use cairn_core::id::ShareRoot;
use cairn_core::wire::Lease;

use crate::StoreError;

/// What [`ShareStore::put`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The share was new and is now stored durably.
    Stored,
    /// The share was already held; its bytes were left as they were and the lease was merged.
    AlreadyHeld,
}

/// A share as read back: its root's header and the requested bytes of the share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredShare {
    /// The chunk header stored once for the share's root.
    pub header: Vec<u8>,
    /// The requested byte range of the share (all of it without a range).
    pub data: Vec<u8>,
}

/// One share for [`ShareStore::put_many`].
#[derive(Debug, Clone, Copy)]
pub struct PutItem<'a> {
    /// The chunk's share root.
    pub root: ShareRoot,
    /// Which share.
    pub index: u8,
    /// The chunk header (verified by the caller).
    pub header: &'a [u8],
    /// The share bytes (verified by the caller).
    pub data: &'a [u8],
}

/// How much a store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreUsage {
    /// Share bytes plus header bytes (each header counted once per root).
    pub used_bytes: u64,
    /// Number of shares held.
    pub shares: u64,
    /// The byte capacity this node offers.
    pub capacity_bytes: u64,
}

/// One node's share storage.
///
/// A share is named by its chunk's [`ShareRoot`] and its index. Callers verify headers and share
/// bytes before `put`; the store does not parse either, and readers verify what they get back.
/// Methods are synchronous and may block on disk: call them from a blocking pool, not from an
/// async executor. Every method is safe to call from many threads at once.
pub trait ShareStore: Send + Sync + std::fmt::Debug {
    /// Stores share `index` of `root`, with `header` kept once per root, under `lease`.
    ///
    /// The header that arrives with a root's first share is kept while any share of the root is
    /// held; headers arriving with later shares are not compared (the caller verified them).
    ///
    /// When the share is already held its bytes are not rewritten: the lease is merged (an
    /// existing lease of the same owner keeps the later expiry) and [`PutOutcome::AlreadyHeld`]
    /// is returned. Fails with [`StoreError::Full`] when the share would exceed the capacity or
    /// the disk is full; a failed put leaves nothing behind. When `Ok(Stored)` returns, the share
    /// survives a crash.
    fn put(
        &self,
        root: &ShareRoot,
        index: u8,
        header: &[u8],
        data: &[u8],
        lease: Lease,
    ) -> Result<PutOutcome, StoreError>;

    /// Stores many shares under one `lease`: each as [`put`](Self::put) would, with one result
    /// per item, in order. A store may make them durable together (one commit for the batch);
    /// as with `put`, an item whose result is `Ok(Stored)` survives a crash once this returns.
    fn put_many(&self, items: &[PutItem<'_>], lease: Lease) -> Vec<Result<PutOutcome, StoreError>> {
        items
            .iter()
            .map(|i| self.put(&i.root, i.index, i.header, i.data, lease))
            .collect()
    }

    /// Reads share `index` of `root`, or `None` when it is not held.
    ///
    /// With a `range`, only those bytes are returned; an end past the share's end is clamped,
    /// a start past the end (or after the range's end) is [`StoreError::BadRange`]. Damaged
    /// bytes on disk are [`StoreError::Corrupt`].
    fn get(
        &self,
        root: &ShareRoot,
        index: u8,
        range: Option<Range<u64>>,
    ) -> Result<Option<StoredShare>, StoreError>;

    /// The indices held for `root`, ascending.
    fn held(&self, root: &ShareRoot) -> Result<Vec<u8>, StoreError>;

    /// Removes share `index` of `root`; `true` if it was held. The root's header goes with its
    /// last share.
    fn remove(&self, root: &ShareRoot, index: u8) -> Result<bool, StoreError>;

    /// The leases on share `index` of `root` (empty when not held).
    fn leases(&self, root: &ShareRoot, index: u8) -> Result<Vec<Lease>, StoreError>;

    /// Bytes and shares held, and the capacity. Cheap: read from counters, not a walk.
    fn usage(&self) -> Result<StoreUsage, StoreError>;

    /// Calls `f(root, index, len)` for every share held, ordered by root then index.
    ///
    /// `f` sees a consistent snapshot; puts and removes made meanwhile (also by `f` itself) may
    /// or may not be visited.
    fn for_each_share(&self, f: &mut dyn FnMut(ShareRoot, u8, u64)) -> Result<(), StoreError>;
}

/// Merges `lease` into `leases`: an existing lease of the same owner keeps the later expiry,
/// a new owner is appended. Returns whether anything changed.
pub(crate) fn merge_lease(leases: &mut Vec<Lease>, lease: Lease) -> bool {
    match leases.iter_mut().find(|l| l.owner == lease.owner) {
        Some(existing) if existing.expires_at >= lease.expires_at => false,
        Some(existing) => {
            existing.expires_at = lease.expires_at;
            true
        }
        None => {
            leases.push(lease);
            true
        }
    }
}

/// Resolves an optional requested range against a share of `len` bytes: the end is clamped to
/// `len`; a start past `len` or past the end is [`StoreError::BadRange`].
pub(crate) fn resolve_range(
    root: &ShareRoot,
    index: u8,
    range: Option<Range<u64>>,
    len: u64,
) -> Result<Range<u64>, StoreError> {
    let Some(range) = range else {
        return Ok(0..len);
    };
    if range.start > range.end || range.start > len {
        return Err(StoreError::BadRange {
            root: *root,
            index,
            start: range.start,
            end: range.end,
            len,
        });
    }
    Ok(range.start..range.end.min(len))
}

#[cfg(test)]
mod tests {
    use cairn_core::id::NodeId;

    use super::*;

    fn lease(owner: u8, expires_at: u64) -> Lease {
        Lease {
            owner: NodeId::from_bytes([owner; 32]),
            expires_at,
        }
    }

    #[test]
    fn merge_lease_keeps_later_expiry_per_owner() {
        let mut leases = vec![lease(1, 100)];
        assert!(!merge_lease(&mut leases, lease(1, 50)));
        assert!(!merge_lease(&mut leases, lease(1, 100)));
        assert!(merge_lease(&mut leases, lease(1, 200)));
        assert!(merge_lease(&mut leases, lease(2, 10)));
        assert_eq!(leases, vec![lease(1, 200), lease(2, 10)]);
    }

    #[test]
    fn resolve_range_clamps_end_and_rejects_bad_starts() {
        let root = ShareRoot::from_bytes([0; 32]);
        let r = |range| resolve_range(&root, 0, range, 10);
        assert_eq!(r(None).ok(), Some(0..10));
        assert_eq!(r(Some(2..5)).ok(), Some(2..5));
        assert_eq!(r(Some(2..50)).ok(), Some(2..10));
        assert_eq!(r(Some(10..10)).ok(), Some(10..10));
        assert_eq!(r(Some(10..20)).ok(), Some(10..10));
        assert!(matches!(r(Some(11..20)), Err(StoreError::BadRange { .. })));
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = Some(5..2);
        assert!(matches!(r(reversed), Err(StoreError::BadRange { .. })));
    }
}

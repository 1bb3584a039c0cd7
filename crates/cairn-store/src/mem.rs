//! [`MemStore`]: shares in memory, for tests and ephemeral nodes.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::{Mutex, MutexGuard};

use cairn_core::id::ShareRoot;
use cairn_core::wire::Lease;

use crate::store::{merge_lease, resolve_range};
use crate::{PutOutcome, ShareStore, StoreError, StoreUsage, StoredShare};

/// A capacity-limited [`ShareStore`] in memory. Nothing survives a drop.
#[derive(Debug)]
pub struct MemStore {
    capacity: u64,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    shares: BTreeMap<(ShareRoot, u8), MemShare>,
    /// Header bytes and the number of shares of that root held.
    headers: HashMap<ShareRoot, (Vec<u8>, u32)>,
    used: u64,
}

#[derive(Debug)]
struct MemShare {
    data: Vec<u8>,
    leases: Vec<Lease>,
}

impl MemStore {
    /// An empty store that accepts up to `capacity_bytes` of shares and headers.
    pub fn new(capacity_bytes: u64) -> Self {
        MemStore {
            capacity: capacity_bytes,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>, StoreError> {
        self.inner.lock().map_err(|_| StoreError::Poisoned)
    }
}

impl ShareStore for MemStore {
    fn put(
        &self,
        root: &ShareRoot,
        index: u8,
        header: &[u8],
        data: &[u8],
        lease: Lease,
    ) -> Result<PutOutcome, StoreError> {
        let mut inner = self.lock()?;
        let inner = &mut *inner;
        if let Some(share) = inner.shares.get_mut(&(*root, index)) {
            merge_lease(&mut share.leases, lease);
            return Ok(PutOutcome::AlreadyHeld);
        }
        let header_cost = if inner.headers.contains_key(root) {
            0
        } else {
            header.len() as u64
        };
        let needed = data.len() as u64 + header_cost;
        let available = self.capacity.saturating_sub(inner.used);
        if needed > available {
            return Err(StoreError::Full { needed, available });
        }
        inner
            .headers
            .entry(*root)
            .or_insert_with(|| (header.to_vec(), 0))
            .1 += 1;
        inner.shares.insert(
            (*root, index),
            MemShare {
                data: data.to_vec(),
                leases: vec![lease],
            },
        );
        inner.used += needed;
        Ok(PutOutcome::Stored)
    }

    fn get(
        &self,
        root: &ShareRoot,
        index: u8,
        range: Option<Range<u64>>,
    ) -> Result<Option<StoredShare>, StoreError> {
        let inner = self.lock()?;
        let Some(share) = inner.shares.get(&(*root, index)) else {
            return Ok(None);
        };
        let range = resolve_range(root, index, range, share.data.len() as u64)?;
        let header = inner
            .headers
            .get(root)
            .map(|(h, _)| h.clone())
            .ok_or_else(|| StoreError::Corrupt {
                root: *root,
                index,
                detail: "header missing".into(),
            })?;
        // The range is within `data` (resolve_range clamps to its length), so these casts and
        // the slice cannot fail.
        let data = share.data[range.start as usize..range.end as usize].to_vec();
        Ok(Some(StoredShare { header, data }))
    }

    fn held(&self, root: &ShareRoot) -> Result<Vec<u8>, StoreError> {
        let inner = self.lock()?;
        Ok(inner
            .shares
            .range((*root, 0)..=(*root, u8::MAX))
            .map(|((_, index), _)| *index)
            .collect())
    }

    fn remove(&self, root: &ShareRoot, index: u8) -> Result<bool, StoreError> {
        let mut inner = self.lock()?;
        let inner = &mut *inner;
        let Some(share) = inner.shares.remove(&(*root, index)) else {
            return Ok(false);
        };
        inner.used -= share.data.len() as u64;
        if let Some((header, refs)) = inner.headers.get_mut(root) {
            *refs -= 1;
            if *refs == 0 {
                inner.used -= header.len() as u64;
                inner.headers.remove(root);
            }
        }
        Ok(true)
    }

    fn leases(&self, root: &ShareRoot, index: u8) -> Result<Vec<Lease>, StoreError> {
        let inner = self.lock()?;
        Ok(inner
            .shares
            .get(&(*root, index))
            .map(|s| s.leases.clone())
            .unwrap_or_default())
    }

    fn usage(&self) -> Result<StoreUsage, StoreError> {
        let inner = self.lock()?;
        Ok(StoreUsage {
            used_bytes: inner.used,
            shares: inner.shares.len() as u64,
            capacity_bytes: self.capacity,
        })
    }

    fn for_each_share(&self, f: &mut dyn FnMut(ShareRoot, u8, u64)) -> Result<(), StoreError> {
        // Snapshot first so `f` may call back into the store without deadlocking.
        let snapshot: Vec<(ShareRoot, u8, u64)> = {
            let inner = self.lock()?;
            inner
                .shares
                .iter()
                .map(|((root, index), share)| (*root, *index, share.data.len() as u64))
                .collect()
        };
        for (root, index, len) in snapshot {
            f(root, index, len);
        }
        Ok(())
    }
}

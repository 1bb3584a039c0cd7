//! [`DiskStore`]: shares on local disk, metadata in redb.
//!
//! # Layout (store format 2)
//!
//! ```text
//! <dir>/store.redb                       redb: tables below
//! <dir>/shares/<hh>/<root hex>.<index>   shares larger than INLINE_MAX put alone, one file each
//! <dir>/packs/<id>.pack                  shares of put_many batches, with their headers
//! ```
//!
//! redb tables: `shares` (`root || index` -> versioned record: length, location, leases),
//! `inline` (`root || index` -> share bytes, for shares of at most [`INLINE_MAX`] bytes),
//! `headers` (`root` -> header bytes and the number of that root's shares held), `packs`
//! (pack id -> number of shares held in it) and `meta` (format version, bytes used, shares
//! held). Inline bytes have their own table so that lease updates,
//! [`ShareStore::for_each_share`] and the check at open never read share bytes. Record
//! encodings are in `disk/record.rs`.
//!
//! Small shares put one at a time live inside redb: a 4 KiB share as its own file would cost a
//! file, an inode, directory entries and several fsyncs. Larger shares get a file, as the copy
//! through redb's pages would cost more than the file system's overhead. The small shares of a
//! [`ShareStore::put_many`] batch (at least [`PACK_MIN`] of them) are appended to the open pack
//! file instead, each as its header followed by its bytes: redb's pages hold a 1.4 KiB value at
//! about 60% and copy-on-write leaves more free pages behind, while a pack costs one write and
//! one fsync for the batch and wastes nothing. So do the large shares of a batch that has at
//! least [`PACK_MIN_LARGE`] of them (a large file's put sends each holder the shares of several
//! consecutive chunks at once): no file, inode or directory fsync of their own. A pack takes
//! appends until it holds 16 MiB, then the next batch starts a new one. A packed share keeps its
//! own header (its record says where) and does not use the `headers` table. A pack is deleted
//! with its last share (once no batch is writing to it); the space of shares removed before
//! that stays in use until then.
//!
//! Format 1 (no packs) is upgraded in place at open: its records are valid format 2 records.
//!
//! # Crash safety
//!
//! A put writes a large share to a temporary name in its final directory, fsyncs it, renames it
//! and fsyncs the directory; a batch appends its packed shares to the open pack and fdatasyncs
//! it (a new pack's directory entry is fsynced when it is created); only then does the redb
//! commit make the shares visible. A remove commits first and deletes the file afterwards (a
//! pack, once the commit removed its last share). So whatever moment the process dies at, every
//! record's bytes exist in full; what can be left over is a temporary file, a share or pack file
//! that no record names, or bytes in a pack that no record names (they stay until the pack
//! goes). [`DiskStore::open`] removes all of these, drops any record whose file is missing or
//! too short (which only outside damage can cause), and recomputes the usage counters, header
//! reference counts and pack share counts (see [`RecoveryReport`]). A file that is damaged while
//! the store runs is reported as [`StoreError::Corrupt`] by `get`.
//!
//! Open therefore walks every share record (small: no share bytes) and stats every share file:
//! O(shares) at start-up, a few seconds per million shares.
//!
//! # Concurrency and group commit
//!
//! Puts and removes of one share are serialised by a per-share lock. Metadata changes go through
//! a group commit: whichever caller finds no commit running applies every pending change in one
//! redb write transaction with [`redb::Durability::Immediate`], so N threads putting small shares
//! at once pay about one fsync per batch rather than one each. A single thread putting in a loop
//! still pays one commit per put; [`ShareStore::put_many`] submits a whole batch at once, so it
//! lands in one commit. File writes and their fsyncs run in the callers' threads, in parallel. If a batch fails, each of
//! its changes is retried alone, so one failing change cannot fail its neighbours.
//!
//! Reads use redb read transactions (snapshots) and never wait for writers.

mod commit;
mod files;
mod packs;
mod record;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use cairn_core::id::ShareRoot;
use cairn_core::wire::Lease;
use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition};
use tracing::{debug, warn};

use self::commit::{GroupCommit, KeyLocks};
use self::files::ReadFailure;
use self::packs::{PackBuf, Packs};
use self::record::{HeaderRecord, Location, ShareRecord};
use crate::store::{merge_lease, resolve_range};
use crate::{PutItem, PutOutcome, ShareStore, StoreError, StoreUsage, StoredShare};

/// Shares of at most this many bytes are kept inside the metadata database instead of a file.
pub const INLINE_MAX: usize = 16 * 1024;

/// The on-disk format this build reads and writes (the `format` entry of the `meta` table).
const FORMAT: u64 = 2;
/// The earlier format this build upgrades at open.
const FORMAT_UPGRADED: u64 = 1;

/// A `put_many` batch with at least this many new small shares writes them to one pack file.
pub const PACK_MIN: usize = 4;
/// A `put_many` batch with at least this many new large shares (over [`INLINE_MAX`]) writes
/// them to one pack file.
pub const PACK_MIN_LARGE: usize = 2;

/// `root || index`.
type ShareKey = [u8; 33];

const SHARES: TableDefinition<&ShareKey, &[u8]> = TableDefinition::new("shares");
const INLINE: TableDefinition<&ShareKey, &[u8]> = TableDefinition::new("inline");
const HEADERS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("headers");
const PACKS: TableDefinition<u64, u64> = TableDefinition::new("packs");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const META_FORMAT: &str = "format";
const META_USED: &str = "used_bytes";
const META_SHARES: &str = "shares";

fn share_key(root: &ShareRoot, index: u8) -> ShareKey {
    let mut key = [0u8; 33];
    key[..32].copy_from_slice(root.as_bytes());
    key[32] = index;
    key
}

fn key_root(key: &ShareKey) -> [u8; 32] {
    let mut root = [0u8; 32];
    root.copy_from_slice(&key[..32]);
    root
}

fn key_parts(key: &ShareKey) -> (ShareRoot, u8) {
    (ShareRoot::from_bytes(key_root(key)), key[32])
}

/// What [`DiskStore::open`] found and repaired. Anything but temporary files means the store
/// was damaged from outside (or by a bug) and is logged as a warning.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// Temporary files of interrupted puts, removed.
    pub temp_files_removed: u64,
    /// Share files no record named (an interrupted put or remove), removed.
    pub orphan_files_removed: u64,
    /// Records dropped because their file was missing or had the wrong length, their header was
    /// missing, or they could not be decoded.
    pub records_dropped: u64,
    /// Whether the usage counters or header reference counts were wrong and rewritten.
    pub counters_repaired: bool,
    /// Files in the share directories that are not the store's; left alone.
    pub stray_files: u64,
    /// Pack files no record named (an interrupted batch, or all its shares removed), removed.
    pub orphan_packs_removed: u64,
}

/// A [`ShareStore`] in a directory: metadata and small shares in redb, large shares in files.
/// See the [module docs](self) for the layout and crash behaviour.
pub struct DiskStore {
    dir: PathBuf,
    shares_dir: PathBuf,
    packs_dir: PathBuf,
    /// The open pack and the batches writing to packs.
    packs: Packs,
    db: Database,
    capacity: u64,
    locks: KeyLocks<ShareKey>,
    commits: GroupCommit<Op, Done>,
    tmp_seq: AtomicU64,
    recovery: RecoveryReport,
}

impl std::fmt::Debug for DiskStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskStore")
            .field("dir", &self.dir)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// A metadata change, applied in a group commit.
#[derive(Debug)]
enum Op {
    /// Record a new share (its file, if any, is already durable).
    Insert {
        key: ShareKey,
        header: Vec<u8>,
        len: u64,
        /// The bytes of an inline share; `None` for a file or packed share.
        inline: Option<Vec<u8>>,
        /// `(pack, offset)` of a packed share (its header is at `offset`).
        packed: Option<(u64, u64)>,
        lease: Lease,
    },
    /// Merge a lease into a held share.
    AddLease { key: ShareKey, lease: Lease },
    /// Forget a share.
    Remove { key: ShareKey },
}

/// The result of an [`Op`].
#[derive(Debug)]
enum Done {
    Put(PutOutcome),
    /// `None` if the share was not held, else its former location.
    Removed(Option<Location>),
}

/// The `meta` counters, as changed within one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counters {
    used: u64,
    shares: u64,
}

impl Counters {
    fn read(meta: &impl ReadableTable<&'static str, u64>) -> Result<Self, StoreError> {
        let get = |name: &str| -> Result<u64, StoreError> {
            Ok(meta.get(name)?.map(|v| v.value()).unwrap_or(0))
        };
        Ok(Counters {
            used: get(META_USED)?,
            shares: get(META_SHARES)?,
        })
    }

    fn write(&self, meta: &mut Table<'_, &'static str, u64>) -> Result<(), StoreError> {
        meta.insert(META_USED, self.used)?;
        meta.insert(META_SHARES, self.shares)?;
        Ok(())
    }
}

/// The tables a write transaction changes.
struct WriteTables<'t> {
    shares: Table<'t, &'static ShareKey, &'static [u8]>,
    inline: Table<'t, &'static ShareKey, &'static [u8]>,
    headers: Table<'t, &'static [u8; 32], &'static [u8]>,
    packs: Table<'t, u64, u64>,
}

fn corrupt(key: &ShareKey, detail: impl Into<String>) -> StoreError {
    let (root, index) = key_parts(key);
    StoreError::Corrupt {
        root,
        index,
        detail: detail.into(),
    }
}

impl DiskStore {
    /// Opens the store in `dir` (creating it if needed), offering `capacity_bytes` for shares and
    /// headers, and recovers from any crash: see [`RecoveryReport`].
    ///
    /// Only one process may have a store open; another gets [`StoreError::Db`]. The capacity is
    /// not stored: a lower capacity than the bytes held just makes puts fail with
    /// [`StoreError::Full`].
    pub fn open(dir: &Path, capacity_bytes: u64) -> Result<DiskStore, StoreError> {
        let shares_dir = dir.join("shares");
        fs::create_dir_all(&shares_dir).map_err(|e| StoreError::io(&shares_dir, e))?;
        // All 256 prefix directories exist from the start, so a put never creates a directory
        // (whose entry would need its own fsync).
        for first in 0..=u8::MAX {
            let d = files::prefix_dir(&shares_dir, first);
            match fs::create_dir(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(StoreError::io(d, e)),
            }
        }
        files::sync_dir(&shares_dir)?;
        let packs_dir = dir.join("packs");
        match fs::create_dir(&packs_dir) {
            Ok(()) => files::sync_dir(&packs_dir)?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(StoreError::io(packs_dir, e)),
        }
        files::sync_dir(dir)?;

        let db = Database::create(dir.join("store.redb"))?;
        init_tables(&db)?;
        let mut store = DiskStore {
            dir: dir.to_path_buf(),
            shares_dir,
            packs: Packs::new(packs_dir.clone(), 0),
            packs_dir,
            db,
            capacity: capacity_bytes,
            locks: KeyLocks::new(),
            commits: GroupCommit::new(),
            tmp_seq: AtomicU64::new(0),
            recovery: RecoveryReport::default(),
        };
        store.recovery = store.recover()?;
        Ok(store)
    }

    /// What the last [`open`](Self::open) found and repaired.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs one metadata change through the group commit.
    fn submit(&self, op: Op) -> Result<Done, StoreError> {
        self.commits.submit(op, |ops| self.run_batch(ops))
    }

    fn run_batch(&self, ops: Vec<Op>) -> Vec<Result<Done, StoreError>> {
        match self.commit_ops(&ops) {
            Ok(results) => results,
            Err(e) if ops.len() == 1 => vec![Err(e)],
            Err(e) => {
                debug!(error = %e, ops = ops.len(), "batch commit failed; retrying each change alone");
                ops.iter()
                    .map(|op| {
                        self.commit_ops(std::slice::from_ref(op))
                            .and_then(|mut r| r.pop().ok_or(StoreError::Poisoned)?)
                    })
                    .collect()
            }
        }
    }

    /// Applies `ops` in one write transaction. The outer error fails the whole transaction
    /// (nothing is committed); inner errors belong to single operations that changed nothing.
    fn commit_ops(&self, ops: &[Op]) -> Result<Vec<Result<Done, StoreError>>, StoreError> {
        let txn = self.db.begin_write()?;
        let mut changed = false;
        let results = {
            let mut tables = WriteTables {
                shares: txn.open_table(SHARES)?,
                inline: txn.open_table(INLINE)?,
                headers: txn.open_table(HEADERS)?,
                packs: txn.open_table(PACKS)?,
            };
            let mut meta = txn.open_table(META)?;
            let before = Counters::read(&meta)?;
            let mut counters = before;
            let mut results = Vec::with_capacity(ops.len());
            for op in ops {
                results.push(self.apply(op, &mut tables, &mut counters, &mut changed)?);
            }
            if counters != before {
                counters.write(&mut meta)?;
            }
            results
        };
        if changed {
            txn.commit()?;
        } else {
            txn.abort()?;
        }
        Ok(results)
    }

    fn apply(
        &self,
        op: &Op,
        t: &mut WriteTables<'_>,
        counters: &mut Counters,
        changed: &mut bool,
    ) -> Result<Result<Done, StoreError>, StoreError> {
        match op {
            Op::Insert {
                key,
                header,
                len,
                inline,
                packed,
                lease,
            } => {
                if t.shares.get(key)?.is_some() {
                    // Unreachable while the caller holds the share's lock; merge to stay safe.
                    return self.apply(
                        &Op::AddLease {
                            key: *key,
                            lease: *lease,
                        },
                        t,
                        counters,
                        changed,
                    );
                }
                if let Some((pack, offset)) = *packed {
                    let needed = len + header.len() as u64;
                    let available = self.capacity.saturating_sub(counters.used);
                    if needed > available {
                        return Ok(Err(StoreError::Full { needed, available }));
                    }
                    let held = t.packs.get(pack)?.map(|v| v.value()).unwrap_or(0);
                    t.packs.insert(pack, held + 1)?;
                    let rec = ShareRecord {
                        len: *len,
                        location: Location::Packed {
                            pack,
                            offset,
                            header_len: header.len() as u32,
                        },
                        leases: vec![*lease],
                    };
                    t.shares.insert(key, rec.encode().as_slice())?;
                    counters.used += needed;
                    counters.shares += 1;
                    *changed = true;
                    return Ok(Ok(Done::Put(PutOutcome::Stored)));
                }
                let root = key_root(key);
                let header_rec = match t
                    .headers
                    .get(&root)?
                    .map(|v| HeaderRecord::decode(v.value()))
                {
                    Some(Ok(h)) => Some(h),
                    Some(Err(detail)) => return Ok(Err(corrupt(key, detail))),
                    None => None,
                };
                let header_cost = if header_rec.is_some() {
                    0
                } else {
                    header.len() as u64
                };
                let needed = len + header_cost;
                let available = self.capacity.saturating_sub(counters.used);
                if needed > available {
                    return Ok(Err(StoreError::Full { needed, available }));
                }
                let header_rec = match header_rec {
                    Some(mut h) => {
                        h.refs += 1;
                        h
                    }
                    None => HeaderRecord {
                        refs: 1,
                        header: header.clone(),
                    },
                };
                t.headers.insert(&root, header_rec.encode().as_slice())?;
                let location = match inline {
                    Some(bytes) => {
                        t.inline.insert(key, bytes.as_slice())?;
                        Location::Inline
                    }
                    None => Location::File,
                };
                let rec = ShareRecord {
                    len: *len,
                    location,
                    leases: vec![*lease],
                };
                t.shares.insert(key, rec.encode().as_slice())?;
                counters.used += needed;
                counters.shares += 1;
                *changed = true;
                Ok(Ok(Done::Put(PutOutcome::Stored)))
            }
            Op::AddLease { key, lease } => {
                let rec = match t.shares.get(key)? {
                    Some(v) => ShareRecord::decode(v.value()),
                    None => {
                        // Unreachable while the caller holds the share's lock.
                        return Ok(Err(corrupt(key, "share vanished while adding a lease")));
                    }
                };
                let mut rec = match rec {
                    Ok(rec) => rec,
                    Err(detail) => return Ok(Err(corrupt(key, detail))),
                };
                if merge_lease(&mut rec.leases, *lease) {
                    t.shares.insert(key, rec.encode().as_slice())?;
                    *changed = true;
                }
                Ok(Ok(Done::Put(PutOutcome::AlreadyHeld)))
            }
            Op::Remove { key } => {
                let rec = match t.shares.get(key)? {
                    Some(v) => ShareRecord::decode(v.value()),
                    None => return Ok(Ok(Done::Removed(None))),
                };
                // An undecodable record is still removed; its length is then unknown, and the
                // counters are recomputed at the next open.
                let rec = rec.ok();
                t.shares.remove(key)?;
                t.inline.remove(key)?;
                counters.shares = counters.shares.saturating_sub(1);
                if let Some(ShareRecord {
                    len,
                    location:
                        location @ Location::Packed {
                            pack, header_len, ..
                        },
                    ..
                }) = rec
                {
                    counters.used = counters.used.saturating_sub(len + u64::from(header_len));
                    let held = t.packs.get(pack)?.map(|v| v.value());
                    match held {
                        Some(n) if n > 1 => {
                            t.packs.insert(pack, n - 1)?;
                        }
                        _ => {
                            t.packs.remove(pack)?;
                        }
                    }
                    *changed = true;
                    return Ok(Ok(Done::Removed(Some(location))));
                }
                if let Some(rec) = &rec {
                    counters.used = counters.used.saturating_sub(rec.len);
                }
                let root = key_root(key);
                let header = match t.headers.get(&root)? {
                    Some(v) => HeaderRecord::decode(v.value()).ok(),
                    None => None,
                };
                match header {
                    Some(mut h) if h.refs > 1 => {
                        h.refs -= 1;
                        t.headers.insert(&root, h.encode().as_slice())?;
                    }
                    Some(h) => {
                        t.headers.remove(&root)?;
                        counters.used = counters.used.saturating_sub(h.header.len() as u64);
                    }
                    None => {
                        t.headers.remove(&root)?;
                        warn!(root = %key_parts(key).0, "removed share had no readable header");
                    }
                }
                *changed = true;
                // Without a readable record, look for a file anyway.
                Ok(Ok(Done::Removed(Some(
                    rec.map_or(Location::File, |r| r.location),
                ))))
            }
        }
    }

    /// [`ShareStore::put_many`] without duplicate keys: locks every key (in sorted order, so
    /// two batches cannot deadlock), reads what is held in one snapshot, writes the files of
    /// large shares (durable before the commit that names them) and submits every change at
    /// once, so the batch costs one commit.
    fn put_batch(
        &self,
        items: &[PutItem<'_>],
        keys: &[ShareKey],
        sorted: &[ShareKey],
        lease: Lease,
    ) -> Result<Vec<Result<PutOutcome, StoreError>>, StoreError> {
        let mut guards = Vec::with_capacity(sorted.len());
        for key in sorted {
            guards.push(self.locks.lock(*key)?);
        }
        let mut results: Vec<Option<Result<PutOutcome, StoreError>>> = Vec::new();
        results.resize_with(items.len(), || None);
        let mut ops = Vec::new();
        // Which item each op belongs to, the share file it wrote (if any), and what it needs.
        let mut owners: Vec<(usize, Option<PathBuf>, u64)> = Vec::new();
        // New shares: item, key, whether their root's header is already held (or comes with
        // an earlier share of this batch).
        let mut new: Vec<(usize, ShareKey, bool)> = Vec::new();
        let available = {
            let txn = self.db.begin_read()?;
            let shares = txn.open_table(SHARES)?;
            let headers = txn.open_table(HEADERS)?;
            let counters = Counters::read(&txn.open_table(META)?)?;
            let mut headers_counted: HashSet<[u8; 32]> = HashSet::new();
            for (i, key) in keys.iter().enumerate() {
                let existing = match shares.get(key)? {
                    Some(v) => match ShareRecord::decode(v.value()) {
                        Ok(rec) => Some(rec),
                        Err(d) => {
                            results[i] = Some(Err(corrupt(key, d)));
                            continue;
                        }
                    },
                    None => None,
                };
                if let Some(mut rec) = existing {
                    if merge_lease(&mut rec.leases, lease) {
                        ops.push(Op::AddLease { key: *key, lease });
                        owners.push((i, None, 0));
                    } else {
                        results[i] = Some(Ok(PutOutcome::AlreadyHeld));
                    }
                    continue;
                }
                let root = key_root(key);
                let has_header = !headers_counted.insert(root) || headers.get(&root)?.is_some();
                new.push((i, *key, has_header));
            }
            self.capacity.saturating_sub(counters.used)
        };
        let mut available = available;
        let small = new
            .iter()
            .filter(|(i, _, _)| items[*i].data.len() <= INLINE_MAX)
            .count();
        let (pack_small, pack_large) = (small >= PACK_MIN, new.len() - small >= PACK_MIN_LARGE);
        let packs = |data: &[u8]| {
            if data.len() <= INLINE_MAX {
                pack_small
            } else {
                pack_large
            }
        };
        // The bytes the batch appends to the open pack, and its shares there: item, key, offset
        // within those bytes, needed.
        let pack_room: usize = new
            .iter()
            .map(|(i, _, _)| &items[*i])
            .filter(|item| packs(item.data))
            .map(|item| item.header.len() + item.data.len())
            .sum();
        let mut pack_bytes = PackBuf::with_capacity(pack_room);
        let mut packed: Vec<(usize, ShareKey, u64, u64)> = Vec::new();
        for (i, key, has_header) in new {
            let item = &items[i];
            let len = item.data.len() as u64;
            let packs = packs(item.data);
            let header_cost = if has_header && !packs {
                0
            } else {
                item.header.len() as u64
            };
            let needed = len + header_cost;
            if needed > available {
                results[i] = Some(Err(StoreError::Full { needed, available }));
                continue;
            }
            available -= needed;
            if packs {
                packed.push((i, key, pack_bytes.len() as u64, needed));
                pack_bytes.extend(item.header);
                pack_bytes.extend(item.data);
                continue;
            }
            let (inline, file) = if item.data.len() <= INLINE_MAX {
                (Some(item.data.to_vec()), None)
            } else {
                let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
                match files::write_share_file(&self.shares_dir, &key, item.data, seq) {
                    Ok(path) => (None, Some(path)),
                    Err(e) => {
                        results[i] = Some(Err(e.full_if_disk_full(needed)));
                        continue;
                    }
                }
            };
            ops.push(Op::Insert {
                key,
                header: item.header.to_vec(),
                len,
                inline,
                packed: None,
                lease,
            });
            owners.push((i, file, needed));
        }
        // The pack's bytes are durable before the commit that names its shares.
        let mut room = None;
        if !packed.is_empty() {
            let written = self.packs.reserve(pack_bytes.len() as u64).and_then(|r| {
                let done = self
                    .packs
                    .write(&r, &mut pack_bytes)
                    .map_err(|e| StoreError::io(&self.packs_dir, e));
                room = Some(r);
                done
            });
            match written {
                Ok(()) => {
                    let Some(r) = &room else {
                        unreachable!("reserved above");
                    };
                    for (i, key, offset, needed) in packed {
                        let item = &items[i];
                        ops.push(Op::Insert {
                            key,
                            header: item.header.to_vec(),
                            len: item.data.len() as u64,
                            inline: None,
                            packed: Some((r.id, r.offset + offset)),
                            lease,
                        });
                        owners.push((i, None, needed));
                    }
                }
                Err(e) => {
                    // One error for the whole pack; each of its shares gets its own copy.
                    let e = e.full_if_disk_full(pack_bytes.len() as u64);
                    for (i, _, _, needed) in packed {
                        results[i] = Some(Err(match &e {
                            StoreError::Full { available, .. } => StoreError::Full {
                                needed,
                                available: *available,
                            },
                            other => StoreError::Io {
                                path: self.packs_dir.clone(),
                                source: std::io::Error::other(other.to_string()),
                            },
                        }));
                    }
                }
            }
        }
        let done = self.commits.submit_many(ops, |ops| self.run_batch(ops));
        if let Some(room) = room {
            // Whatever the commit did: a pack no record names goes now.
            self.packs.release(room, |id| self.pack_held(id));
        }
        let done = done?;
        for ((i, file, needed), result) in owners.into_iter().zip(done) {
            results[i] = Some(match result {
                Ok(Done::Put(outcome)) => Ok(outcome),
                Ok(Done::Removed(_)) => Err(StoreError::Poisoned),
                Err(e) => {
                    if let Some(path) = file {
                        files::remove_quietly(&path);
                    }
                    Err(e.full_if_disk_full(needed))
                }
            });
        }
        drop(guards);
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or(Err(StoreError::Poisoned)))
            .collect())
    }

    /// Whether any record names pack `id`.
    fn pack_held(&self, id: u64) -> Result<bool, StoreError> {
        Ok(self.db.begin_read()?.open_table(PACKS)?.get(id)?.is_some())
    }

    /// Reads the share's record and whether its root has a header, plus the counters.
    fn peek(&self, key: &ShareKey) -> Result<(Option<ShareRecord>, bool, Counters), StoreError> {
        let txn = self.db.begin_read()?;
        let shares = txn.open_table(SHARES)?;
        let rec = match shares.get(key)? {
            Some(v) => Some(ShareRecord::decode(v.value()).map_err(|d| corrupt(key, d))?),
            None => None,
        };
        let has_header = txn.open_table(HEADERS)?.get(&key_root(key))?.is_some();
        let counters = Counters::read(&txn.open_table(META)?)?;
        Ok((rec, has_header, counters))
    }

    /// Checks every record against the files on disk and the counters against the records,
    /// and repairs what is off. Runs at open, before anyone else can use the store.
    fn recover(&self) -> Result<RecoveryReport, StoreError> {
        let mut report = RecoveryReport::default();

        // 1. Share files on disk (temporary files are removed on sight).
        let mut on_disk: HashMap<ShareKey, u64> = HashMap::new();
        for first in 0..=u8::MAX {
            let dir = files::prefix_dir(&self.shares_dir, first);
            let entries = fs::read_dir(&dir).map_err(|e| StoreError::io(&dir, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| StoreError::io(&dir, e))?;
                let path = entry.path();
                let name = entry.file_name();
                let name = name.to_str().unwrap_or("");
                if name.starts_with(files::TMP_PREFIX) {
                    fs::remove_file(&path).map_err(|e| StoreError::io(&path, e))?;
                    report.temp_files_removed += 1;
                    continue;
                }
                match files::parse_share_file_name(name) {
                    Some(key) if key[0] == first => {
                        let meta = entry.metadata().map_err(|e| StoreError::io(&path, e))?;
                        if meta.is_file() {
                            on_disk.insert(key, meta.len());
                            continue;
                        }
                    }
                    _ => {}
                }
                warn!(path = %path.display(), "stray file in a share directory, left alone");
                report.stray_files += 1;
            }
        }
        // Pack files, likewise.
        let mut packs_on_disk: HashMap<u64, u64> = HashMap::new();
        let entries =
            fs::read_dir(&self.packs_dir).map_err(|e| StoreError::io(&self.packs_dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io(&self.packs_dir, e))?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_str().unwrap_or("");
            if name.starts_with(files::TMP_PREFIX) {
                fs::remove_file(&path).map_err(|e| StoreError::io(&path, e))?;
                report.temp_files_removed += 1;
                continue;
            }
            if let Some(id) = files::parse_pack_file_name(name) {
                let meta = entry.metadata().map_err(|e| StoreError::io(&path, e))?;
                if meta.is_file() {
                    packs_on_disk.insert(id, meta.len());
                    continue;
                }
            }
            warn!(path = %path.display(), "stray file in the pack directory, left alone");
            report.stray_files += 1;
        }
        let mut pack_refs: BTreeMap<u64, u64> = BTreeMap::new();

        // 2. Records: keep those whose bytes are there; count what is kept. Files of kept
        // records leave `on_disk`, so what remains there afterwards is garbage.
        let txn = self.db.begin_read()?;
        let mut headers: BTreeMap<[u8; 32], HeaderRecord> = BTreeMap::new();
        let mut bad_headers = Vec::new();
        for item in txn.open_table(HEADERS)?.iter()? {
            let (k, v) = item?;
            match HeaderRecord::decode(v.value()) {
                Ok(h) => {
                    headers.insert(*k.value(), h);
                }
                Err(detail) => {
                    warn!(root = %ShareRoot::from_bytes(*k.value()), %detail, "dropping undecodable header");
                    bad_headers.push(*k.value());
                }
            }
        }
        let mut drop_keys = Vec::new();
        let mut refs: BTreeMap<[u8; 32], u32> = BTreeMap::new();
        let mut counted = Counters { used: 0, shares: 0 };
        for item in txn.open_table(SHARES)?.iter()? {
            let (k, v) = item?;
            let key = *k.value();
            let (root, index) = key_parts(&key);
            let mut packed = None;
            let problem = match ShareRecord::decode(v.value()) {
                Err(detail) => Some(detail),
                Ok(ShareRecord {
                    len,
                    location:
                        Location::Packed {
                            pack,
                            offset,
                            header_len,
                        },
                    ..
                }) => {
                    let end = offset
                        .saturating_add(u64::from(header_len))
                        .saturating_add(len);
                    match packs_on_disk.get(&pack) {
                        Some(&size) if size >= end => {
                            counted.used += len + u64::from(header_len);
                            packed = Some(pack);
                            None
                        }
                        Some(&size) => {
                            Some(format!("pack {pack} is {size} bytes, record ends at {end}"))
                        }
                        None => Some(format!("pack {pack} missing")),
                    }
                }
                Ok(_) if !headers.contains_key(&key_root(&key)) => Some("header missing".into()),
                Ok(rec) => match rec.location {
                    // Handled by the arm above.
                    Location::Packed { .. } => None,
                    Location::Inline => {
                        counted.used += rec.len;
                        None
                    }
                    Location::File => match on_disk.get(&key) {
                        Some(&len) if len == rec.len => {
                            on_disk.remove(&key);
                            counted.used += rec.len;
                            None
                        }
                        Some(&len) => Some(format!("file is {len} bytes, record says {}", rec.len)),
                        None => Some("file missing".into()),
                    },
                },
            };
            match problem {
                Some(detail) => {
                    warn!(%root, index, %detail, "dropping share record");
                    drop_keys.push(key);
                }
                None => {
                    counted.shares += 1;
                    match packed {
                        Some(pack) => *pack_refs.entry(pack).or_default() += 1,
                        None => *refs.entry(key_root(&key)).or_default() += 1,
                    }
                }
            }
        }
        let stored = Counters::read(&txn.open_table(META)?)?;
        let mut stored_packs: BTreeMap<u64, u64> = BTreeMap::new();
        for item in txn.open_table(PACKS)?.iter()? {
            let (k, v) = item?;
            stored_packs.insert(k.value(), v.value());
        }
        drop(txn);

        // 3. Headers must be referenced exactly by the kept records.
        let mut header_fixes: Vec<([u8; 32], Option<HeaderRecord>)> = Vec::new();
        for (root, mut h) in headers {
            match refs.get(&root) {
                None => header_fixes.push((root, None)),
                Some(&n) => {
                    counted.used += h.header.len() as u64;
                    if h.refs != n {
                        h.refs = n;
                        header_fixes.push((root, Some(h)));
                    }
                }
            }
        }
        header_fixes.extend(bad_headers.into_iter().map(|root| (root, None)));

        report.records_dropped = drop_keys.len() as u64;
        report.counters_repaired =
            counted != stored || !header_fixes.is_empty() || pack_refs != stored_packs;
        if !drop_keys.is_empty() || report.counters_repaired {
            if report.counters_repaired {
                warn!(
                    stored_used = stored.used,
                    stored_shares = stored.shares,
                    used = counted.used,
                    shares = counted.shares,
                    header_fixes = header_fixes.len(),
                    "repairing usage counters and header references"
                );
            }
            let txn = self.db.begin_write()?;
            {
                let mut shares = txn.open_table(SHARES)?;
                let mut inline = txn.open_table(INLINE)?;
                for key in &drop_keys {
                    shares.remove(key)?;
                    inline.remove(key)?;
                }
                let mut header_table = txn.open_table(HEADERS)?;
                for (root, fix) in &header_fixes {
                    match fix {
                        Some(h) => header_table.insert(root, h.encode().as_slice())?,
                        None => header_table.remove(root)?,
                    };
                }
                counted.write(&mut txn.open_table(META)?)?;
                let mut packs = txn.open_table(PACKS)?;
                for id in stored_packs.keys() {
                    if !pack_refs.contains_key(id) {
                        packs.remove(id)?;
                    }
                }
                for (id, n) in &pack_refs {
                    packs.insert(id, n)?;
                }
            }
            txn.commit()?;
        }

        // 4. Only now that no record names them, delete the leftover files (orphans, and the
        // files of dropped records).
        let dropped: HashSet<ShareKey> = drop_keys.into_iter().collect();
        for key in on_disk.keys() {
            let path = files::share_path(&self.shares_dir, key);
            fs::remove_file(&path).map_err(|e| StoreError::io(&path, e))?;
            if !dropped.contains(key) {
                report.orphan_files_removed += 1;
            }
        }
        for id in packs_on_disk.keys() {
            if !pack_refs.contains_key(id) {
                let path = self.packs_dir.join(files::pack_file_name(*id));
                fs::remove_file(&path).map_err(|e| StoreError::io(&path, e))?;
                report.orphan_packs_removed += 1;
            }
        }
        let next = packs_on_disk
            .keys()
            .chain(stored_packs.keys())
            .max()
            .map_or(0, |m| m + 1);
        self.packs.start_ids_at(next);

        if report != RecoveryReport::default() {
            warn!(?report, dir = %self.dir.display(), "share store recovered");
        }
        Ok(report)
    }
}

/// Creates the tables and checks the format version.
fn init_tables(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    {
        txn.open_table(SHARES)?;
        txn.open_table(INLINE)?;
        txn.open_table(HEADERS)?;
        txn.open_table(PACKS)?;
        let mut meta = txn.open_table(META)?;
        let found = meta.get(META_FORMAT)?.map(|v| v.value());
        match found {
            None => {
                meta.insert(META_FORMAT, FORMAT)?;
                Counters { used: 0, shares: 0 }.write(&mut meta)?;
            }
            Some(FORMAT) => {}
            Some(FORMAT_UPGRADED) => {
                meta.insert(META_FORMAT, FORMAT)?;
            }
            Some(found) => {
                return Err(StoreError::UnsupportedFormat {
                    found,
                    supported: FORMAT,
                });
            }
        }
    }
    txn.commit()?;
    Ok(())
}

impl ShareStore for DiskStore {
    fn put(
        &self,
        root: &ShareRoot,
        index: u8,
        header: &[u8],
        data: &[u8],
        lease: Lease,
    ) -> Result<PutOutcome, StoreError> {
        let key = share_key(root, index);
        let _lock = self.locks.lock(key)?;
        let (existing, has_header, counters) = self.peek(&key)?;
        if let Some(mut rec) = existing {
            if !merge_lease(&mut rec.leases, lease) {
                return Ok(PutOutcome::AlreadyHeld);
            }
            return match self.submit(Op::AddLease { key, lease })? {
                Done::Put(outcome) => Ok(outcome),
                Done::Removed(_) => Err(StoreError::Poisoned),
            };
        }

        // Refuse early, before writing a file, when the share cannot fit; the commit checks
        // again, as other shares may have been stored meanwhile.
        let len = data.len() as u64;
        let needed = len + if has_header { 0 } else { header.len() as u64 };
        let available = self.capacity.saturating_sub(counters.used);
        if needed > available {
            return Err(StoreError::Full { needed, available });
        }

        let (inline, file) = if data.len() <= INLINE_MAX {
            (Some(data.to_vec()), None)
        } else {
            let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
            let path = files::write_share_file(&self.shares_dir, &key, data, seq)
                .map_err(|e| e.full_if_disk_full(needed))?;
            (None, Some(path))
        };
        let result = self.submit(Op::Insert {
            key,
            header: header.to_vec(),
            len,
            inline,
            packed: None,
            lease,
        });
        match result {
            Ok(Done::Put(outcome)) => Ok(outcome),
            Ok(Done::Removed(_)) => Err(StoreError::Poisoned),
            Err(e) => {
                // Nothing names the file: remove it now (or the next open will).
                if let Some(path) = file {
                    files::remove_quietly(&path);
                }
                Err(e.full_if_disk_full(needed))
            }
        }
    }

    fn put_many(&self, items: &[PutItem<'_>], lease: Lease) -> Vec<Result<PutOutcome, StoreError>> {
        let keys: Vec<ShareKey> = items.iter().map(|i| share_key(&i.root, i.index)).collect();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != keys.len() {
            // The same share twice in one batch: one at a time keeps the outcomes exact.
            return items
                .iter()
                .map(|i| self.put(&i.root, i.index, i.header, i.data, lease))
                .collect();
        }
        match self.put_batch(items, &keys, &sorted, lease) {
            Ok(results) => results,
            Err(e) => {
                // The batch failed as a whole (before any change was committed): each share
                // gets its own attempt and its own error.
                debug!(error = %e, shares = items.len(), "batched put failed; putting one at a time");
                items
                    .iter()
                    .map(|i| self.put(&i.root, i.index, i.header, i.data, lease))
                    .collect()
            }
        }
    }

    fn get(
        &self,
        root: &ShareRoot,
        index: u8,
        range: Option<Range<u64>>,
    ) -> Result<Option<StoredShare>, StoreError> {
        let key = share_key(root, index);
        let txn = self.db.begin_read()?;
        let rec = match txn.open_table(SHARES)?.get(&key)? {
            Some(v) => ShareRecord::decode(v.value()).map_err(|d| corrupt(&key, d))?,
            None => return Ok(None),
        };
        let range = resolve_range(root, index, range, rec.len)?;
        if let Location::Packed {
            pack,
            offset,
            header_len,
        } = rec.location
        {
            drop(txn);
            let path = self.packs_dir.join(files::pack_file_name(pack));
            let share_end = offset + u64::from(header_len) + rec.len;
            return match files::read_pack(&path, offset, header_len as usize, range, share_end) {
                Ok((header, data)) => Ok(Some(StoredShare { header, data })),
                Err(ReadFailure::Missing) => {
                    // A remove may have finished since our snapshot.
                    if self.peek(&key)?.0.is_none() {
                        return Ok(None);
                    }
                    Err(corrupt(&key, "pack file missing"))
                }
                Err(ReadFailure::WrongLength(actual)) => Err(corrupt(
                    &key,
                    format!("pack file is {actual} bytes, too short for the share"),
                )),
                Err(ReadFailure::Io(e)) => Err(StoreError::io(path, e)),
            };
        }
        let header = match txn.open_table(HEADERS)?.get(root.as_bytes())? {
            Some(v) => {
                HeaderRecord::decode(v.value())
                    .map_err(|d| corrupt(&key, d))?
                    .header
            }
            None => return Err(corrupt(&key, "header missing")),
        };
        let data = match rec.location {
            // Read (and returned) above.
            Location::Packed { .. } => return Err(corrupt(&key, "packed share read as inline")),
            Location::Inline => {
                let table = txn.open_table(INLINE)?;
                let Some(bytes) = table.get(&key)? else {
                    return Err(corrupt(&key, "inline bytes missing"));
                };
                let bytes = bytes.value();
                if bytes.len() as u64 != rec.len {
                    return Err(corrupt(
                        &key,
                        format!("inline bytes are {}, record says {}", bytes.len(), rec.len),
                    ));
                }
                // In bounds: the range was clamped to rec.len, which is bytes.len().
                bytes[range.start as usize..range.end as usize].to_vec()
            }
            Location::File => {
                drop(txn);
                let path = files::share_path(&self.shares_dir, &key);
                match files::read_share_range(&path, rec.len, range.start, range.end) {
                    Ok(data) => data,
                    Err(ReadFailure::Missing) => {
                        // A remove may have finished since our snapshot.
                        if self.peek(&key)?.0.is_none() {
                            return Ok(None);
                        }
                        return Err(corrupt(&key, "share file missing"));
                    }
                    Err(ReadFailure::WrongLength(actual)) => {
                        return Err(corrupt(
                            &key,
                            format!("share file is {actual} bytes, record says {}", rec.len),
                        ));
                    }
                    Err(ReadFailure::Io(e)) => return Err(StoreError::io(path, e)),
                }
            }
        };
        Ok(Some(StoredShare { header, data }))
    }

    fn held(&self, root: &ShareRoot) -> Result<Vec<u8>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SHARES)?;
        let lo = share_key(root, 0);
        let hi = share_key(root, u8::MAX);
        let mut indices = Vec::new();
        for item in table.range::<&ShareKey>(&lo..=&hi)? {
            let (k, _) = item?;
            indices.push(k.value()[32]);
        }
        Ok(indices)
    }

    fn remove(&self, root: &ShareRoot, index: u8) -> Result<bool, StoreError> {
        let key = share_key(root, index);
        let _lock = self.locks.lock(key)?;
        match self.submit(Op::Remove { key })? {
            Done::Removed(None) => Ok(false),
            Done::Removed(Some(location)) => {
                match location {
                    Location::File => {
                        // Committed: the file is garbage now. If deleting fails, open sweeps it.
                        files::remove_quietly(&files::share_path(&self.shares_dir, &key));
                    }
                    Location::Packed { pack, .. } => {
                        // The pack goes with its last share, unless a batch is writing to it.
                        self.packs.forget_if_unheld(pack, |id| self.pack_held(id));
                    }
                    Location::Inline => {}
                }
                Ok(true)
            }
            Done::Put(_) => Err(StoreError::Poisoned),
        }
    }

    fn leases(&self, root: &ShareRoot, index: u8) -> Result<Vec<Lease>, StoreError> {
        let key = share_key(root, index);
        Ok(self.peek(&key)?.0.map(|r| r.leases).unwrap_or_default())
    }

    fn usage(&self) -> Result<StoreUsage, StoreError> {
        let txn = self.db.begin_read()?;
        let counters = Counters::read(&txn.open_table(META)?)?;
        Ok(StoreUsage {
            used_bytes: counters.used,
            shares: counters.shares,
            capacity_bytes: self.capacity,
        })
    }

    fn for_each_share(&self, f: &mut dyn FnMut(ShareRoot, u8, u64)) -> Result<(), StoreError> {
        let txn = self.db.begin_read()?;
        for item in txn.open_table(SHARES)?.iter()? {
            let (k, v) = item?;
            let key = *k.value();
            let rec = ShareRecord::decode(v.value()).map_err(|d| corrupt(&key, d))?;
            let (root, index) = key_parts(&key);
            f(root, index, rec.len);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_format(dir: &Path, format: u64) {
        let db = Database::create(dir.join("store.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert(META_FORMAT, format)
            .unwrap();
        txn.commit().unwrap();
    }

    #[test]
    fn newer_format_is_refused_disk() {
        let dir = tempfile::tempdir().unwrap();
        drop(DiskStore::open(dir.path(), 1000).unwrap());
        set_format(dir.path(), 3);
        assert!(matches!(
            DiskStore::open(dir.path(), 1000),
            Err(StoreError::UnsupportedFormat {
                found: 3,
                supported: 2
            })
        ));
    }

    #[test]
    fn format_1_is_upgraded_in_place_disk() {
        let dir = tempfile::tempdir().unwrap();
        let root = ShareRoot::from_bytes([4; 32]);
        let lease = Lease {
            owner: cairn_core::id::NodeId::from_bytes([1; 32]),
            expires_at: 9,
        };
        {
            let store = DiskStore::open(dir.path(), 1 << 20).unwrap();
            store.put(&root, 1, b"h", b"data", lease).unwrap();
        }
        set_format(dir.path(), 1);
        let store = DiskStore::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(store.recovery(), &RecoveryReport::default());
        assert_eq!(store.get(&root, 1, None).unwrap().unwrap().data, b"data");
        let txn = store.db.begin_read().unwrap();
        let format = txn.open_table(META).unwrap().get(META_FORMAT).unwrap();
        assert_eq!(format.map(|v| v.value()), Some(FORMAT));
    }
}

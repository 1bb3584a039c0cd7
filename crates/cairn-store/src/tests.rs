//! The same behaviour tests against every [`ShareStore`], plus [`DiskStore`]-only tests.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cairn_core::id::{NodeId, ShareRoot};
use cairn_core::wire::Lease;
use tempfile::TempDir;

use crate::{
    DiskStore, INLINE_MAX, MemStore, PutItem, PutOutcome, RecoveryReport, ShareStore, StoreError,
    StoreUsage,
};

/// A store under test, and its directory when it has one.
struct Fixture {
    store: Arc<dyn ShareStore>,
    dir: Option<TempDir>,
}

impl Fixture {
    fn mem(capacity: u64) -> Self {
        Fixture {
            store: Arc::new(MemStore::new(capacity)),
            dir: None,
        }
    }

    fn disk(capacity: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path(), capacity).unwrap();
        Fixture {
            store: Arc::new(store),
            dir: Some(dir),
        }
    }

    /// Number of files under `shares/` (disk stores only).
    fn share_files(&self) -> Option<usize> {
        self.dir
            .as_ref()
            .map(|d| all_files(&d.path().join("shares")).len())
    }
}

fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(all_files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn root(n: u8) -> ShareRoot {
    ShareRoot::from_bytes([n; 32])
}

fn lease(owner: u8, expires_at: u64) -> Lease {
    Lease {
        owner: NodeId::from_bytes([owner; 32]),
        expires_at,
    }
}

/// Deterministic bytes that differ per seed.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

fn usage(f: &Fixture) -> StoreUsage {
    f.store.usage().unwrap()
}

/// Instantiates each named test body as `<name>_mem` and `<name>_disk`.
macro_rules! both {
    ($($body:ident => $mem:ident, $disk:ident;)*) => {$(
        #[test]
        fn $mem() {
            $body(Fixture::mem(CAPACITY));
        }
        #[test]
        fn $disk() {
            $body(Fixture::disk(CAPACITY));
        }
    )*};
}

const CAPACITY: u64 = 64 << 20;

both! {
    put_get_round_trip => put_get_round_trip_mem, put_get_round_trip_disk;
    range_reads => range_reads_mem, range_reads_disk;
    held_lists_indices_ascending => held_lists_indices_ascending_mem, held_lists_indices_ascending_disk;
    already_held_merges_lease_and_keeps_bytes => already_held_merges_lease_and_keeps_bytes_mem, already_held_merges_lease_and_keeps_bytes_disk;
    remove_deletes_share_and_usage => remove_deletes_share_and_usage_mem, remove_deletes_share_and_usage_disk;
    header_shared_and_removed_with_last_index => header_shared_and_removed_with_last_index_mem, header_shared_and_removed_with_last_index_disk;
    usage_counter_matches_shares => usage_counter_matches_shares_mem, usage_counter_matches_shares_disk;
    missing_share_reads_as_absent => missing_share_reads_as_absent_mem, missing_share_reads_as_absent_disk;
    concurrent_puts_and_removes => concurrent_puts_and_removes_mem, concurrent_puts_and_removes_disk;
    put_many_stores_like_put => put_many_stores_like_put_mem, put_many_stores_like_put_disk;
}

#[test]
fn put_many_past_capacity_stores_what_fits_mem() {
    put_many_past_capacity_stores_what_fits(Fixture::mem(10_000));
}

#[test]
fn put_many_past_capacity_stores_what_fits_disk() {
    put_many_past_capacity_stores_what_fits(Fixture::disk(10_000));
}

fn items<'a>(shares: &'a [(ShareRoot, u8, Vec<u8>)], header: &'a [u8]) -> Vec<PutItem<'a>> {
    shares
        .iter()
        .map(|(root, index, data)| PutItem {
            root: *root,
            index: *index,
            header,
            data,
        })
        .collect()
}

/// Puts `shares` in one batch and checks that each was stored anew.
fn put_all_new(store: &dyn ShareStore, shares: &[(ShareRoot, u8, Vec<u8>)], header: &[u8]) {
    let out = store.put_many(&items(shares, header), lease(1, 10));
    assert!(out.into_iter().all(|r| r.unwrap() == PutOutcome::Stored));
}

fn put_many_stores_like_put(f: Fixture) {
    let s = &f.store;
    s.put(&root(1), 0, b"hdr", &bytes(100, 10), lease(1, 10))
        .unwrap();
    let sizes = [0, 1, 1400, INLINE_MAX, INLINE_MAX + 1, 300_000];
    let mut shares: Vec<(ShareRoot, u8, Vec<u8>)> = sizes
        .iter()
        .enumerate()
        .map(|(i, &len)| (root(2 + (i % 2) as u8), i as u8, bytes(i as u64, len)))
        .collect();
    // Already held: its bytes stay, its lease is merged.
    shares.push((root(1), 0, bytes(999, 10)));
    let out = s.put_many(&items(&shares, b"hdr"), lease(2, 20));
    let out: Vec<PutOutcome> = out.into_iter().map(Result::unwrap).collect();
    let mut want = vec![PutOutcome::Stored; sizes.len()];
    want.push(PutOutcome::AlreadyHeld);
    assert_eq!(out, want);
    for (root, index, data) in &shares[..sizes.len()] {
        let got = s.get(root, *index, None).unwrap().unwrap();
        assert_eq!(&got.data, data);
        assert_eq!(got.header, b"hdr");
        assert_eq!(s.leases(root, *index).unwrap(), vec![lease(2, 20)]);
    }
    assert_eq!(
        s.get(&root(1), 0, None).unwrap().unwrap().data,
        bytes(100, 10)
    );
    assert_eq!(
        s.leases(&root(1), 0).unwrap(),
        vec![lease(1, 10), lease(2, 20)]
    );
    assert_eq!(s.held(&root(2)).unwrap(), vec![0, 2, 4]);
    assert_eq!(s.held(&root(3)).unwrap(), vec![1, 3, 5]);
    // Headers are counted once per root, as with single puts; on disk, the four small shares
    // went to a pack, where each keeps (and counts) its own header.
    let data_bytes: u64 = sizes.iter().map(|&l| l as u64).sum::<u64>() + 10;
    let headers = if f.dir.is_some() {
        3 * 3 + 4 * 3
    } else {
        3 * 3
    };
    assert_eq!(usage(&f).used_bytes, data_bytes + headers);
    assert_eq!(usage(&f).shares, sizes.len() as u64 + 1);
    // The same batch again: all held; the same share twice in one batch works too.
    let again = s.put_many(&items(&shares, b"hdr"), lease(2, 20));
    assert!(
        again
            .into_iter()
            .all(|r| r.unwrap() == PutOutcome::AlreadyHeld)
    );
    let twice = vec![(root(4), 0, bytes(5, 50)), (root(4), 0, bytes(5, 50))];
    let out: Vec<PutOutcome> = s
        .put_many(&items(&twice, b"h4"), lease(2, 20))
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(out, [PutOutcome::Stored, PutOutcome::AlreadyHeld]);
    assert!(s.put_many(&[], lease(2, 20)).is_empty());
    let before = usage(&f);
    let Fixture { store, dir } = f;
    drop(store);
    if let Some(dir) = dir {
        // Everything survives a reopen, with nothing to repair.
        let store = DiskStore::open(dir.path(), CAPACITY).unwrap();
        assert_eq!(store.recovery(), &RecoveryReport::default());
        assert_eq!(store.usage().unwrap(), before);
        for (root, index, data) in &shares[..sizes.len()] {
            assert_eq!(&store.get(root, *index, None).unwrap().unwrap().data, data);
        }
    }
}

/// The large shares of one batch (the shares of consecutive chunks of a big file) share one
/// pack: no file of their own, ranges read as from a share file, a pack cut short is reported,
/// and the pack goes with its last share.
#[test]
fn put_many_packs_large_shares_together_disk() {
    let f = Fixture::disk(CAPACITY);
    let dir = f.dir.as_ref().unwrap().path().to_path_buf();
    let packs = || all_files(&dir.join("packs"));
    let s = &f.store;
    let shares: Vec<(ShareRoot, u8, Vec<u8>)> = (0..3)
        .map(|i| {
            (
                root(120 + i),
                i,
                bytes(u64::from(i), 300_000 + usize::from(i)),
            )
        })
        .collect();
    let out = s.put_many(&items(&shares, b"big header"), lease(1, 10));
    assert!(out.into_iter().all(|r| r.unwrap() == PutOutcome::Stored));
    assert_eq!(packs().len(), 1);
    assert_eq!(f.share_files(), Some(0), "no large share has its own file");
    for (root, index, data) in &shares {
        let got = s.get(root, *index, None).unwrap().unwrap();
        assert_eq!(&got.data, data);
        assert_eq!(got.header, b"big header");
        let part = s.get(root, *index, Some(1000..1010)).unwrap().unwrap();
        assert_eq!(part.data, data[1000..1010]);
        assert_eq!(part.header, b"big header");
    }
    let used: u64 = shares.iter().map(|(_, _, d)| d.len() as u64 + 10).sum();
    assert_eq!(usage(&f).used_bytes, used);

    // One large share alone in a batch keeps its own file.
    let single = vec![(root(130), 0u8, bytes(9, 200_000))];
    let out = s.put_many(&items(&single, b"h"), lease(1, 10));
    assert_eq!(out.into_iter().next().unwrap().unwrap(), PutOutcome::Stored);
    assert_eq!(f.share_files(), Some(1));
    assert_eq!(packs().len(), 1);

    // Damage from outside: the pack cut inside the last share (which ends where the batch's
    // bytes end; a direct write pads them). Even a range that stops before the cut is
    // refused, as the share is no longer whole.
    let pack = packs().remove(0);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&pack)
        .unwrap()
        .set_len(used - 1)
        .unwrap();
    let (root2, index2, _) = &shares[2];
    assert!(matches!(
        s.get(root2, *index2, Some(0..10)),
        Err(StoreError::Corrupt { .. })
    ));
    let (root0, index0, data0) = &shares[0];
    assert_eq!(&s.get(root0, *index0, None).unwrap().unwrap().data, data0);

    for (root, index, _) in &shares {
        assert!(s.remove(root, *index).unwrap());
    }
    assert!(packs().is_empty(), "the pack goes with its last share");
}

#[test]
fn put_many_packs_small_shares_and_drops_the_pack_with_its_last_share_disk() {
    let f = Fixture::disk(CAPACITY);
    let dir = f.dir.as_ref().unwrap().path().to_path_buf();
    let packs = || all_files(&dir.join("packs")).len();
    let s = &f.store;
    let mut shares: Vec<(ShareRoot, u8, Vec<u8>)> = (0..20)
        .map(|i| (root(40 + i), i % 3, bytes(u64::from(i), 1371)))
        .collect();
    shares.push((root(90), 0, bytes(90, INLINE_MAX + 1)));
    let out = s.put_many(&items(&shares, b"a header"), lease(1, 10));
    assert!(out.into_iter().all(|r| r.unwrap() == PutOutcome::Stored));
    assert_eq!(packs(), 1);
    assert_eq!(
        f.share_files(),
        Some(1),
        "only the large share has its own file"
    );
    for (root, index, data) in &shares {
        let got = s.get(root, *index, None).unwrap().unwrap();
        assert_eq!(&got.data, data);
        assert_eq!(got.header, b"a header");
        assert_eq!(s.held(root).unwrap(), vec![*index]);
    }
    let got = s.get(&root(41), 1, Some(10..20)).unwrap().unwrap();
    assert_eq!(got.data, shares[1].2[10..20]);
    // A packed share keeps its own header: every share counts its header.
    let used = 20 * (1371 + 8) + (INLINE_MAX as u64 + 1 + 8);
    assert_eq!(usage(&f).used_bytes, used);
    assert_eq!(usage(&f).shares, 21);
    // Leases merge as for any share.
    let again = s.put_many(&items(&shares[..5], b"a header"), lease(2, 10));
    assert!(
        again
            .into_iter()
            .all(|r| r.unwrap() == PutOutcome::AlreadyHeld)
    );
    assert_eq!(
        s.leases(&root(40), 0).unwrap(),
        vec![lease(1, 10), lease(2, 10)]
    );
    assert_eq!(packs(), 1);

    // Survives a reopen with nothing to repair.
    let Fixture { store, dir: tmp } = f;
    drop(store);
    let store = DiskStore::open(&dir, CAPACITY).unwrap();
    assert_eq!(store.recovery(), &RecoveryReport::default());
    assert_eq!(store.usage().unwrap().used_bytes, used);
    for (root, index, _) in &shares[..19] {
        assert!(store.remove(root, *index).unwrap());
    }
    assert_eq!(packs(), 1, "one share still lives in the pack");
    assert_eq!(
        store.get(&root(59), 19 % 3, None).unwrap().unwrap().data,
        shares[19].2
    );
    assert!(store.remove(&root(59), 19 % 3).unwrap());
    assert_eq!(packs(), 0, "the pack goes with its last share");
    assert_eq!(store.usage().unwrap().used_bytes, INLINE_MAX as u64 + 1 + 8);
    drop(store);

    // A pack no record names (a batch interrupted before its commit) is swept at open.
    std::fs::write(dir.join("packs").join(format!("{:016x}.pack", 77)), b"junk").unwrap();
    std::fs::write(
        dir.join("packs").join(".tmp.0000000000000078.pack"),
        b"junk",
    )
    .unwrap();
    let store = DiskStore::open(&dir, CAPACITY).unwrap();
    assert_eq!(store.recovery().orphan_packs_removed, 1);
    assert_eq!(store.recovery().temp_files_removed, 1);
    assert!(!store.recovery().counters_repaired);
    assert_eq!(packs(), 0);
    // New packs get ids above any seen.
    let more: Vec<(ShareRoot, u8, Vec<u8>)> = (0..4)
        .map(|i| (root(100 + i), 0, bytes(u64::from(i), 100)))
        .collect();
    put_all_new(&store, &more, b"h");
    assert_eq!(packs(), 1);
    drop(store);
    drop(tmp);
}

/// Batches append to one open pack until it holds 16 MiB, then start the next; batches from
/// many threads at once each land whole; bytes no record names at a pack's end (a batch cut
/// off before its commit) change nothing at open; and the open pack goes with its last share.
#[test]
fn batches_append_to_the_open_pack_until_it_is_full_disk() {
    let f = Fixture::disk(1 << 30);
    let dir = f.dir.as_ref().unwrap().path().to_path_buf();
    let packs = || {
        let mut p = all_files(&dir.join("packs"));
        p.sort();
        p
    };
    // 8 threads, 6 batches each of 3 shares of 300 KB: 43 MB in all, so three packs.
    let batches: Vec<Vec<(ShareRoot, u8, Vec<u8>)>> = (0..48u64)
        .map(|b| {
            (0..3u8)
                .map(|i| {
                    let mut r = [0u8; 32];
                    r[..8].copy_from_slice(&b.to_le_bytes());
                    r[8] = i;
                    (
                        ShareRoot::from_bytes(r),
                        i,
                        bytes(b * 3 + u64::from(i), 300_000),
                    )
                })
                .collect()
        })
        .collect();
    std::thread::scope(|scope| {
        for thread in batches.chunks(6) {
            let store = &f.store;
            scope.spawn(move || {
                for batch in thread {
                    put_all_new(store.as_ref(), batch, b"hdr");
                }
            });
        }
    });
    let all: Vec<&(ShareRoot, u8, Vec<u8>)> = batches.iter().flatten().collect();
    let total: u64 = all.iter().map(|(_, _, d)| d.len() as u64 + 3).sum();
    assert_eq!(usage(&f).used_bytes, total);
    let sizes: Vec<u64> = packs()
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .collect();
    assert_eq!(
        sizes.len(),
        3,
        "43 MB fill two packs of 16 MiB and part of a third"
    );
    // Each batch of 900 kB is written with direct I/O where the disk takes it: its room is
    // aligned and padded to 4 KiB.
    let on_disk = sizes.iter().sum::<u64>();
    assert!(
        (total..=total + 48 * 4096).contains(&on_disk),
        "{on_disk} bytes of packs for {total} bytes of shares"
    );
    for (root, index, data) in &all {
        assert_eq!(
            &f.store.get(root, *index, None).unwrap().unwrap().data,
            data
        );
    }
    assert_eq!(f.share_files(), Some(0));

    // A batch cut off between its write and its commit leaves unnamed bytes at the end.
    let last = packs().pop().unwrap();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&last)
        .unwrap();
    std::io::Write::write_all(&mut file, &[7u8; 5000]).unwrap();
    drop(file);
    let Fixture { store, dir: tmp } = f;
    drop(store);
    let store = DiskStore::open(&dir, 1 << 30).unwrap();
    assert_eq!(store.recovery(), &RecoveryReport::default());
    assert_eq!(store.usage().unwrap().used_bytes, total);
    // After a reopen, a batch starts a pack of its own.
    let more: Vec<(ShareRoot, u8, Vec<u8>)> = (0..2)
        .map(|i| (root(200 + i), i, bytes(500 + u64::from(i), 100_000)))
        .collect();
    put_all_new(&store, &more, b"h");
    assert_eq!(packs().len(), 4);
    // The open pack goes with its last share, and the next batch starts another.
    for (root, index, _) in &more {
        assert!(store.remove(root, *index).unwrap());
    }
    assert_eq!(packs().len(), 3);
    put_all_new(&store, &more, b"h");
    assert_eq!(packs().len(), 4);
    for (root, index, data) in &more {
        assert_eq!(&store.get(root, *index, None).unwrap().unwrap().data, data);
    }
    for (root, index, _) in &all {
        assert!(store.remove(root, *index).unwrap());
    }
    assert_eq!(packs().len(), 1, "full packs go with their last share");
    drop(store);
    drop(tmp);
}

/// Whether files in `dir` open for direct I/O (not on tmpfs before Linux 6.6).
fn direct_io_works(dir: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let probe = dir.join("direct-probe");
    let works = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe)
        .is_ok();
    let _ = std::fs::remove_file(probe);
    works
}

/// A large batch after small ones in the same pack starts at a 4 KiB boundary and is padded
/// to one (a direct write); the small batches around it are written through the page cache
/// unpadded; every share reads back whole.
#[test]
fn large_batches_get_aligned_room_between_small_ones_disk() {
    let f = Fixture::disk(CAPACITY);
    let dir = f.dir.as_ref().unwrap().path().to_path_buf();
    let direct = direct_io_works(&dir);
    let pack_len = || {
        let packs = all_files(&dir.join("packs"));
        assert_eq!(packs.len(), 1, "one open pack takes every batch");
        std::fs::metadata(&packs[0]).unwrap().len()
    };
    let batch = |first: u8, len: usize| -> Vec<(ShareRoot, u8, Vec<u8>)> {
        (0..3)
            .map(|i| {
                (
                    root(first + i),
                    i,
                    bytes(u64::from(first + i), len + usize::from(i)),
                )
            })
            .collect()
    };
    // Above the inline limit, so these are packed too, but far below 256 KiB together.
    let small = batch(10, INLINE_MAX + 100);
    put_all_new(f.store.as_ref(), &small, b"hdr");
    let small_len: u64 = small.iter().map(|(_, _, d)| d.len() as u64 + 3).sum();
    assert_eq!(pack_len(), small_len, "a small batch is not padded");
    let large = batch(20, 300_000);
    put_all_new(f.store.as_ref(), &large, b"hdr");
    let large_len: u64 = large.iter().map(|(_, _, d)| d.len() as u64 + 3).sum();
    if direct {
        let start = small_len.next_multiple_of(4096);
        assert_eq!(pack_len(), start + large_len.next_multiple_of(4096));
    } else {
        eprintln!(
            "direct I/O is not available under {}: only the read-back is checked",
            dir.display()
        );
    }
    let before = pack_len();
    let tail = batch(30, INLINE_MAX + 7);
    put_all_new(f.store.as_ref(), &tail, b"hdr");
    let tail_len: u64 = tail.iter().map(|(_, _, d)| d.len() as u64 + 3).sum();
    assert_eq!(pack_len(), before + tail_len);
    for (root, index, data) in small.iter().chain(&large).chain(&tail) {
        assert_eq!(
            &f.store.get(root, *index, None).unwrap().unwrap().data,
            data
        );
    }
}

#[test]
fn damaged_pack_is_corrupt_then_dropped_at_open_disk() {
    let f = Fixture::disk(CAPACITY);
    let dir = f.dir.as_ref().unwrap().path().to_path_buf();
    let shares: Vec<(ShareRoot, u8, Vec<u8>)> = (0..6)
        .map(|i| (root(60 + i), 0, bytes(u64::from(i), 500)))
        .collect();
    f.store.put_many(&items(&shares, b"hh"), lease(1, 10));
    let pack = all_files(&dir.join("packs")).pop().unwrap();
    // Cut the pack in the middle of the fourth share.
    let f2 = std::fs::OpenOptions::new().write(true).open(&pack).unwrap();
    f2.set_len(3 * 502 + 100).unwrap();
    drop(f2);
    assert_eq!(
        f.store.get(&shares[0].0, 0, None).unwrap().unwrap().data,
        shares[0].2
    );
    assert!(matches!(
        f.store.get(&shares[4].0, 0, None),
        Err(StoreError::Corrupt { .. })
    ));
    let Fixture { store, dir: tmp } = f;
    drop(store);
    let store = DiskStore::open(&dir, CAPACITY).unwrap();
    assert_eq!(store.recovery().records_dropped, 3);
    assert_eq!(store.usage().unwrap().shares, 3);
    assert_eq!(store.held(&shares[5].0).unwrap(), Vec::<u8>::new());
    drop(store);
    drop(tmp);
}

fn put_many_past_capacity_stores_what_fits(f: Fixture) {
    let s = &f.store;
    let shares: Vec<(ShareRoot, u8, Vec<u8>)> = (0..6)
        .map(|i| (root(10 + i), 0, bytes(u64::from(i), 3000)))
        .collect();
    let out = s.put_many(&items(&shares, b"hdr"), lease(1, 10));
    // 10,000 bytes hold three shares of 3,003 bytes (share and header).
    let stored = out
        .iter()
        .filter(|r| matches!(r, Ok(PutOutcome::Stored)))
        .count();
    assert_eq!(stored, 3);
    assert!(
        out[3..]
            .iter()
            .all(|r| matches!(r, Err(StoreError::Full { .. })))
    );
    assert_eq!(usage(&f).shares, 3);
    assert_eq!(usage(&f).used_bytes, 3 * 3003);
    for (root, index, _) in &shares[3..] {
        assert_eq!(s.get(root, *index, None).unwrap(), None);
    }
}

#[test]
fn full_leaves_nothing_behind_mem() {
    full_leaves_nothing_behind(Fixture::mem(100_000));
}

#[test]
fn full_leaves_nothing_behind_disk() {
    full_leaves_nothing_behind(Fixture::disk(100_000));
}

fn put_get_round_trip(f: Fixture) {
    let s = &f.store;
    let sizes = [0, 1, 4096, INLINE_MAX, INLINE_MAX + 1, 300_000];
    for (i, &len) in sizes.iter().enumerate() {
        let data = bytes(i as u64, len);
        let out = s
            .put(&root(1), i as u8, b"hdr", &data, lease(1, 10))
            .unwrap();
        assert_eq!(out, PutOutcome::Stored);
        let got = s.get(&root(1), i as u8, None).unwrap().unwrap();
        assert_eq!(got.header, b"hdr");
        assert_eq!(got.data, data, "share of {len} bytes");
        assert_eq!(s.leases(&root(1), i as u8).unwrap(), vec![lease(1, 10)]);
    }
    // Two shares are over INLINE_MAX: only they are files.
    assert!(matches!(f.share_files(), None | Some(2)));
}

fn range_reads(f: Fixture) {
    let s = &f.store;
    for (i, len) in [1000usize, 100_000].into_iter().enumerate() {
        let r = root(i as u8);
        let data = bytes(7, len);
        s.put(&r, 3, b"h", &data, lease(1, 1)).unwrap();
        let read = |range| s.get(&r, 3, Some(range)).map(|o| o.unwrap().data);
        let len = len as u64;
        assert_eq!(read(0..len).unwrap(), data);
        assert_eq!(read(10..20).unwrap(), &data[10..20]);
        assert_eq!(read(len - 5..len + 100).unwrap(), &data[len as usize - 5..]);
        assert_eq!(read(len..len).unwrap(), b"");
        assert_eq!(read(len..len + 1).unwrap(), b"");
        assert!(matches!(
            read(len + 1..len + 2),
            Err(StoreError::BadRange { start, len: l, index: 3, .. }) if start == len + 1 && l == len
        ));
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = 20..10;
        assert!(matches!(read(reversed), Err(StoreError::BadRange { .. })));
    }
}

fn held_lists_indices_ascending(f: Fixture) {
    let s = &f.store;
    for index in [9u8, 0, 255, 3] {
        s.put(&root(5), index, b"h", b"x", lease(1, 1)).unwrap();
    }
    s.put(&root(4), 1, b"h", b"x", lease(1, 1)).unwrap();
    s.put(&root(6), 2, b"h", b"x", lease(1, 1)).unwrap();
    assert_eq!(s.held(&root(5)).unwrap(), vec![0, 3, 9, 255]);
    assert_eq!(s.held(&root(4)).unwrap(), vec![1]);
    assert_eq!(s.held(&root(7)).unwrap(), Vec::<u8>::new());
}

fn already_held_merges_lease_and_keeps_bytes(f: Fixture) {
    let s = &f.store;
    for (index, len) in [(0u8, 100usize), (1, INLINE_MAX * 2)] {
        let data = bytes(1, len);
        assert_eq!(
            s.put(&root(2), index, b"h", &data, lease(1, 100)).unwrap(),
            PutOutcome::Stored
        );
        let before = usage(&f);
        let other = bytes(2, len + 10);
        let again = |l| s.put(&root(2), index, b"other header", &other, l).unwrap();
        assert_eq!(again(lease(1, 50)), PutOutcome::AlreadyHeld);
        assert_eq!(s.leases(&root(2), index).unwrap(), vec![lease(1, 100)]);
        assert_eq!(again(lease(1, 200)), PutOutcome::AlreadyHeld);
        assert_eq!(again(lease(9, 70)), PutOutcome::AlreadyHeld);
        assert_eq!(
            s.leases(&root(2), index).unwrap(),
            vec![lease(1, 200), lease(9, 70)]
        );
        let got = s.get(&root(2), index, None).unwrap().unwrap();
        assert_eq!(got.data, data);
        assert_eq!(got.header, b"h");
        assert_eq!(usage(&f), before);
    }
}

fn remove_deletes_share_and_usage(f: Fixture) {
    let s = &f.store;
    let big = bytes(1, 200_000);
    s.put(&root(1), 0, b"hh", &big, lease(1, 1)).unwrap();
    s.put(&root(1), 1, b"hh", b"small", lease(1, 1)).unwrap();
    assert!(matches!(f.share_files(), None | Some(1)));
    assert_eq!(usage(&f).used_bytes, 200_000 + 5 + 2);

    assert!(s.remove(&root(1), 0).unwrap());
    assert!(!s.remove(&root(1), 0).unwrap());
    assert!(matches!(f.share_files(), None | Some(0)));
    assert_eq!(s.get(&root(1), 0, None).unwrap(), None);
    assert_eq!(s.leases(&root(1), 0).unwrap(), vec![]);
    assert_eq!(
        usage(&f),
        StoreUsage {
            used_bytes: 5 + 2,
            shares: 1,
            capacity_bytes: CAPACITY
        }
    );
    assert!(s.remove(&root(1), 1).unwrap());
    assert_eq!(usage(&f).used_bytes, 0);
    assert_eq!(usage(&f).shares, 0);
    // Stored again after removal.
    assert_eq!(
        s.put(&root(1), 0, b"hh", &big, lease(1, 1)).unwrap(),
        PutOutcome::Stored
    );
    assert_eq!(s.get(&root(1), 0, None).unwrap().unwrap().data, big);
}

fn full_leaves_nothing_behind(f: Fixture) {
    // Capacity 100_000.
    let s = &f.store;
    s.put(&root(1), 0, b"0123456789", &bytes(1, 60_000), lease(1, 1))
        .unwrap();
    let before = usage(&f);
    assert_eq!(before.used_bytes, 60_010);

    // New root: its header counts too.
    let err = s
        .put(&root(2), 0, b"0123456789", &bytes(2, 39_990), lease(1, 1))
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Full {
                needed: 40_000,
                available: 39_990
            }
        ),
        "{err:?}"
    );
    // Same root: the header is already paid for.
    let err = s
        .put(&root(1), 1, b"0123456789", &bytes(3, 40_000), lease(1, 1))
        .unwrap_err();
    assert!(matches!(err, StoreError::Full { needed: 40_000, .. }));
    assert_eq!(usage(&f), before);
    assert_eq!(s.held(&root(2)).unwrap(), Vec::<u8>::new());
    assert_eq!(s.held(&root(1)).unwrap(), vec![0]);
    assert!(matches!(f.share_files(), None | Some(1)));

    // Exactly filling the store works; then small shares of new roots fail.
    s.put(&root(1), 1, b"0123456789", &bytes(3, 39_990), lease(1, 1))
        .unwrap();
    assert_eq!(usage(&f).used_bytes, 100_000);
    assert!(matches!(
        s.put(&root(3), 0, b"", b"x", lease(1, 1)),
        Err(StoreError::Full {
            needed: 1,
            available: 0
        })
    ));
    // Freeing space lets puts in again.
    s.remove(&root(1), 0).unwrap();
    s.put(&root(3), 0, b"", b"x", lease(1, 1)).unwrap();
}

fn header_shared_and_removed_with_last_index(f: Fixture) {
    let s = &f.store;
    let header = bytes(9, 300);
    s.put(&root(1), 0, &header, b"aaaa", lease(1, 1)).unwrap();
    s.put(&root(1), 1, &header, b"bbbb", lease(1, 1)).unwrap();
    assert_eq!(usage(&f).used_bytes, 300 + 8);
    assert!(s.remove(&root(1), 0).unwrap());
    assert_eq!(usage(&f).used_bytes, 300 + 4);
    assert_eq!(s.get(&root(1), 1, None).unwrap().unwrap().header, header);
    assert!(s.remove(&root(1), 1).unwrap());
    assert_eq!(usage(&f).used_bytes, 0);
    // A new put of the root stores the header it brings.
    s.put(&root(1), 2, b"new", b"cc", lease(1, 1)).unwrap();
    assert_eq!(s.get(&root(1), 2, None).unwrap().unwrap().header, b"new");
    assert_eq!(usage(&f).used_bytes, 3 + 2);
}

fn usage_counter_matches_shares(f: Fixture) {
    let s = &f.store;
    let mut expected = 0u64;
    for i in 0..40u64 {
        let r = root((i % 7) as u8);
        let len = [10usize, 5000, INLINE_MAX, 40_000][i as usize % 4];
        let header = bytes(100 + i % 7, 50);
        if s.held(&r).unwrap().is_empty() {
            expected += 50;
        }
        if s.put(&r, i as u8, &header, &bytes(i, len), lease(1, 1))
            .unwrap()
            == PutOutcome::Stored
        {
            expected += len as u64;
        }
    }
    for i in (0..40u64).step_by(3) {
        let r = root((i % 7) as u8);
        let len = [10u64, 5000, INLINE_MAX as u64, 40_000][i as usize % 4];
        assert!(s.remove(&r, i as u8).unwrap());
        expected -= len;
        if s.held(&r).unwrap().is_empty() {
            expected -= 50;
        }
    }
    let mut walked = Vec::new();
    s.for_each_share(&mut |r, i, len| walked.push((r, i, len)))
        .unwrap();
    let walked_bytes: u64 = walked.iter().map(|w| w.2).sum();
    let roots: std::collections::BTreeSet<_> = walked.iter().map(|w| w.0).collect();
    let u = usage(&f);
    assert_eq!(u.used_bytes, expected);
    assert_eq!(u.used_bytes, walked_bytes + 50 * roots.len() as u64);
    assert_eq!(u.shares, walked.len() as u64);
    assert_eq!(u.shares, 40 - 14);
    let mut sorted = walked.clone();
    sorted.sort();
    assert_eq!(walked, sorted, "for_each_share visits in order");
}

fn missing_share_reads_as_absent(f: Fixture) {
    let s = &f.store;
    assert_eq!(s.get(&root(1), 0, None).unwrap(), None);
    assert_eq!(s.get(&root(1), 0, Some(5..1000)).unwrap(), None);
    assert_eq!(s.leases(&root(1), 0).unwrap(), vec![]);
    assert!(!s.remove(&root(1), 0).unwrap());
    assert_eq!(
        usage(&f),
        StoreUsage {
            used_bytes: 0,
            shares: 0,
            capacity_bytes: CAPACITY
        }
    );
}

fn concurrent_puts_and_removes(f: Fixture) {
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            let s = f.store.clone();
            std::thread::spawn(move || {
                for i in 0..30u8 {
                    // Threads share roots, so header reference counts are contended.
                    let r = root(i % 5);
                    let index = t * 30 + i;
                    let len = if i % 10 == 0 { 50_000 } else { 2000 };
                    let data = bytes(u64::from(index), len);
                    s.put(&r, index, b"shared", &data, lease(t, 1)).unwrap();
                    if i % 3 == 0 {
                        assert!(s.remove(&r, index).unwrap());
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut total = 0u64;
    let mut count = 0u64;
    f.store
        .for_each_share(&mut |r, i, len| {
            let got = f.store.get(&r, i, None).unwrap().unwrap();
            assert_eq!(got.data, bytes(u64::from(i), len as usize));
            total += len;
            count += 1;
        })
        .unwrap();
    let u = usage(&f);
    assert_eq!(count, 4 * 20);
    assert_eq!(u.shares, count);
    assert_eq!(u.used_bytes, total + 5 * 6);
}

// ---- DiskStore only ----

#[test]
fn reopen_keeps_everything_disk() {
    let dir = tempfile::tempdir().unwrap();
    let big = bytes(1, 100_000);
    {
        let s = DiskStore::open(dir.path(), CAPACITY).unwrap();
        s.put(&root(1), 0, b"h1", &big, lease(1, 5)).unwrap();
        s.put(&root(1), 1, b"h1", b"tiny", lease(1, 5)).unwrap();
        s.put(&root(2), 7, b"h2", b"x", lease(2, 6)).unwrap();
        s.put(&root(1), 1, b"h1", b"tiny", lease(3, 9)).unwrap();
    }
    let s = DiskStore::open(dir.path(), CAPACITY).unwrap();
    assert_eq!(s.recovery(), &RecoveryReport::default());
    assert_eq!(s.get(&root(1), 0, None).unwrap().unwrap().data, big);
    assert_eq!(s.get(&root(1), 1, None).unwrap().unwrap().data, b"tiny");
    assert_eq!(s.get(&root(2), 7, None).unwrap().unwrap().header, b"h2");
    assert_eq!(
        s.leases(&root(1), 1).unwrap(),
        vec![lease(1, 5), lease(3, 9)]
    );
    assert_eq!(s.held(&root(1)).unwrap(), vec![0, 1]);
    assert_eq!(
        s.usage().unwrap(),
        StoreUsage {
            used_bytes: 100_000 + 4 + 1 + 2 + 2,
            shares: 3,
            capacity_bytes: CAPACITY
        }
    );
}

#[test]
fn open_sweeps_temp_and_orphan_files_disk() {
    let dir = tempfile::tempdir().unwrap();
    let big = bytes(1, 100_000);
    let shares = dir.path().join("shares");
    {
        let s = DiskStore::open(dir.path(), CAPACITY).unwrap();
        s.put(&root(0xab), 0, b"h", &big, lease(1, 5)).unwrap();
    }
    let prefix = shares.join("ab");
    let kept = prefix.join(format!("{}.0", root(0xab)));
    assert_eq!(std::fs::metadata(&kept).unwrap().len(), 100_000);
    // An interrupted write, an orphan share file, and a file that is not ours.
    std::fs::write(prefix.join(format!(".tmp.{}.1.0", root(0xab))), b"partial").unwrap();
    std::fs::write(
        shares.join("cd").join(format!("{}.3", root(0xcd))),
        b"orphan",
    )
    .unwrap();
    std::fs::write(prefix.join("notes.txt"), b"mine").unwrap();
    // A share file in the wrong prefix directory is not ours either.
    std::fs::write(shares.join("00").join(format!("{}.1", root(0xab))), b"x").unwrap();

    let s = DiskStore::open(dir.path(), CAPACITY).unwrap();
    let report = s.recovery().clone();
    assert_eq!(report.temp_files_removed, 1);
    assert_eq!(report.orphan_files_removed, 1);
    assert_eq!(report.records_dropped, 0);
    assert_eq!(report.stray_files, 2);
    assert!(!report.counters_repaired);
    let mut left: Vec<_> = all_files(&shares);
    left.sort();
    let mut expected = vec![
        kept,
        prefix.join("notes.txt"),
        shares.join("00").join(format!("{}.1", root(0xab))),
    ];
    expected.sort();
    assert_eq!(left, expected);
    assert_eq!(s.get(&root(0xab), 0, None).unwrap().unwrap().data, big);
}

#[test]
fn truncated_share_file_is_corrupt_then_dropped_at_open_disk() {
    let dir = tempfile::tempdir().unwrap();
    let big = bytes(1, 100_000);
    let path = dir.path().join("shares/03").join(format!("{}.4", root(3)));
    {
        let s = DiskStore::open(dir.path(), CAPACITY).unwrap();
        s.put(&root(3), 4, b"h", &big, lease(1, 5)).unwrap();
        s.put(&root(3), 5, b"h", b"small", lease(1, 5)).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(50_000).unwrap();
        drop(f);
        for range in [None, Some(0..10), Some(60_000..70_000)] {
            let err = s.get(&root(3), 4, range).unwrap_err();
            assert!(
                matches!(&err, StoreError::Corrupt { index: 4, detail, .. } if detail.contains("50000")),
                "{err:?}"
            );
        }
        // A missing file is corrupt too.
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            s.get(&root(3), 4, None),
            Err(StoreError::Corrupt { .. })
        ));
        std::fs::write(&path, b"short").unwrap();
    }
    let s = DiskStore::open(dir.path(), CAPACITY).unwrap();
    let report = s.recovery();
    assert_eq!(report.records_dropped, 1);
    assert_eq!(report.orphan_files_removed, 0);
    assert!(report.counters_repaired);
    assert!(!path.exists());
    assert_eq!(s.get(&root(3), 4, None).unwrap(), None);
    assert_eq!(s.held(&root(3)).unwrap(), vec![5]);
    assert_eq!(
        s.usage().unwrap(),
        StoreUsage {
            used_bytes: 5 + 1,
            shares: 1,
            capacity_bytes: CAPACITY
        }
    );
    // The next open finds nothing to repair.
    drop(s);
    let s = DiskStore::open(dir.path(), CAPACITY).unwrap();
    assert_eq!(s.recovery(), &RecoveryReport::default());
}

#[test]
fn missing_share_file_dropped_at_open_disk() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = DiskStore::open(dir.path(), CAPACITY).unwrap();
        s.put(&root(9), 0, b"h", &bytes(1, 20_000), lease(1, 5))
            .unwrap();
    }
    std::fs::remove_file(dir.path().join("shares/09").join(format!("{}.0", root(9)))).unwrap();
    let s = DiskStore::open(dir.path(), CAPACITY).unwrap();
    assert_eq!(s.recovery().records_dropped, 1);
    assert_eq!(s.held(&root(9)).unwrap(), Vec::<u8>::new());
    assert_eq!(s.usage().unwrap().used_bytes, 0);
}

#[test]
fn lower_capacity_at_reopen_refuses_puts_disk() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = DiskStore::open(dir.path(), CAPACITY).unwrap();
        s.put(&root(1), 0, b"", &bytes(1, 30_000), lease(1, 5))
            .unwrap();
    }
    let s = DiskStore::open(dir.path(), 10_000).unwrap();
    assert!(matches!(
        s.put(&root(2), 0, b"", b"x", lease(1, 1)),
        Err(StoreError::Full {
            needed: 1,
            available: 0
        })
    ));
    assert_eq!(s.usage().unwrap().capacity_bytes, 10_000);
    assert_eq!(
        s.get(&root(1), 0, None).unwrap().unwrap().data.len(),
        30_000
    );
}

#[test]
fn second_open_of_same_dir_fails_disk() {
    let dir = tempfile::tempdir().unwrap();
    let _s = DiskStore::open(dir.path(), CAPACITY).unwrap();
    assert!(matches!(
        DiskStore::open(dir.path(), CAPACITY),
        Err(StoreError::Db(_))
    ));
}

#[test]
fn stores_are_send_sync() {
    fn check<T: Send + Sync + 'static>() {}
    check::<DiskStore>();
    check::<MemStore>();
    check::<Arc<dyn ShareStore>>();
}

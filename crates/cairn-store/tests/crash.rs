//! kill -9 a process that is putting shares, at varied moments, then check the store.
//!
//! The test re-runs its own binary as a child (`crash_child`, selected with `--exact` and
//! switched on by an environment variable). The child puts shares of mixed sizes from two
//! threads (one with `put`, one with `put_many` in batches of 16) and prints `ACK <n>` after
//! each put returns; now and then it removes one, between
//! `DELSTART <n>` and `DEL <n>`. The parent reads some acknowledgements,
//! SIGKILLs the child, reads whatever else it acknowledged, and opens the store: every
//! acknowledged share must be there byte for byte (unless a remove of it began), every
//! acknowledged remove must have stuck, every share present must be complete, the
//! usage counters must match, open must have had nothing to repair but leftovers, and no
//! temporary file may remain. Five rounds on the same directory.
#![cfg(unix)]
#![allow(clippy::unwrap_used, reason = "test code: a failure should panic")]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn_core::id::{NodeId, ShareRoot};
use cairn_core::wire::Lease;
use cairn_store::{DiskStore, PutItem, PutOutcome, RecoveryReport, ShareStore};

/// Set to the store directory in the child.
const CHILD_DIR_ENV: &str = "CAIRN_STORE_CRASH_CHILD";
/// The first share number the child puts.
const CHILD_START_ENV: &str = "CAIRN_STORE_CRASH_START";
const CAPACITY: u64 = 4 << 30;
const HEADER_LEN: usize = 64;
/// Sizes around the inline limit and up to 2 MiB.
const SIZES: [usize; 8] = [
    1024,
    4096,
    16 * 1024,
    16 * 1024 + 1,
    100_000,
    700_000,
    1 << 20,
    2 << 20,
];

/// Share `n` is index `n % 3` of root number `n / 3`: roots have several shares, which the
/// two child threads put concurrently.
fn share_id(n: u64) -> (ShareRoot, u8) {
    let root = blake3::Hasher::new()
        .update(b"cairn-store crash root")
        .update(&(n / 3).to_le_bytes())
        .finalize();
    (ShareRoot::from_bytes(*root.as_bytes()), (n % 3) as u8)
}

fn xof(parts: &[&[u8]], len: usize) -> Vec<u8> {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(p);
    }
    let mut out = vec![0u8; len];
    h.finalize_xof().fill(&mut out);
    out
}

fn header(root: &ShareRoot) -> Vec<u8> {
    xof(&[b"header", root.as_bytes()], HEADER_LEN)
}

fn share_len(root: &ShareRoot, index: u8) -> usize {
    let pick = xof(&[b"len", root.as_bytes(), &[index]], 1)[0];
    SIZES[usize::from(pick) % SIZES.len()]
}

fn share_data(root: &ShareRoot, index: u8) -> Vec<u8> {
    xof(
        &[b"data", root.as_bytes(), &[index]],
        share_len(root, index),
    )
}

/// The child: puts shares until killed (or, as a safety net, for 20 s).
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return; // Not the child: nothing to do.
    };
    let start: u64 = std::env::var(CHILD_START_ENV).unwrap().parse().unwrap();
    let store = DiskStore::open(Path::new(&dir), CAPACITY).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let store = &store;
            s.spawn(move || {
                let lease = Lease {
                    owner: NodeId::from_bytes([t as u8; 32]),
                    expires_at: 2_000_000_000,
                };
                // Thread 0 puts one share at a time, thread 1 sixteen at once (`put_many`,
                // whose small shares then mostly go to a pack).
                let batch = if t == 0 { 1 } else { 16 };
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let ns: Vec<u64> = (i..i + batch).map(|j| start + 2 * j + t).collect();
                    let shares: Vec<(ShareRoot, u8, Vec<u8>, Vec<u8>)> = ns
                        .iter()
                        .map(|&n| {
                            let (root, index) = share_id(n);
                            (root, index, header(&root), share_data(&root, index))
                        })
                        .collect();
                    let items: Vec<PutItem<'_>> = shares
                        .iter()
                        .map(|(root, index, header, data)| PutItem {
                            root: *root,
                            index: *index,
                            header,
                            data,
                        })
                        .collect();
                    let outs = if batch == 1 {
                        vec![
                            store
                                .put(
                                    &items[0].root,
                                    items[0].index,
                                    items[0].header,
                                    items[0].data,
                                    lease,
                                )
                                .unwrap(),
                        ]
                    } else {
                        store
                            .put_many(&items, lease)
                            .into_iter()
                            .map(Result::unwrap)
                            .collect()
                    };
                    assert!(outs.iter().all(|o| *o == PutOutcome::Stored));
                    for (j, &n) in (i..).zip(&ns) {
                        // One short line is one write(2) to the pipe: never torn by the kill.
                        println!("ACK {n}");
                        if j % 4 == 3 {
                            // Remove this thread's share from two puts ago.
                            let old = n - 4;
                            let (root, index) = share_id(old);
                            println!("DELSTART {old}");
                            assert!(store.remove(&root, index).unwrap());
                            println!("DEL {old}");
                        }
                    }
                    i += batch;
                }
            });
        }
    });
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// What the child acknowledged.
#[derive(Default)]
struct Acks {
    /// Puts that returned, of shares not (being) removed since.
    stored: BTreeSet<u64>,
    /// Removes that returned.
    removed: BTreeSet<u64>,
}

/// Collects the acknowledgements in complete lines of `reader`, until `limit` more puts were
/// acknowledged or the output ends.
fn read_acks(reader: &mut impl BufRead, acks: &mut Acks, limit: usize) -> usize {
    let mut got = 0;
    let mut line = Vec::new();
    while got < limit {
        line.clear();
        if reader.read_until(b'\n', &mut line).unwrap() == 0 || line.last() != Some(&b'\n') {
            break;
        }
        let text = String::from_utf8_lossy(&line);
        let (what, n) = text.trim_end().split_once(' ').unwrap_or_default();
        let Ok(n) = n.parse::<u64>() else { continue };
        match what {
            "ACK" => {
                acks.stored.insert(n);
                got += 1;
            }
            // From here on, the share may or may not be there.
            "DELSTART" => {
                acks.stored.remove(&n);
            }
            "DEL" => {
                acks.removed.insert(n);
            }
            _ => {}
        }
    }
    got
}

/// Opens the store and checks it; returns the number of shares present and what open repaired.
fn check_store(dir: &Path, acks: &Acks) -> (u64, RecoveryReport) {
    let store = DiskStore::open(dir, CAPACITY).unwrap();
    let report = store.recovery().clone();
    assert_eq!(report.records_dropped, 0, "{report:?}");
    assert!(!report.counters_repaired, "{report:?}");
    assert_eq!(report.stray_files, 0, "{report:?}");
    for path in files_under(&dir.join("shares"))
        .into_iter()
        .chain(files_under(&dir.join("packs")))
    {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(!name.starts_with(".tmp."), "temporary file left: {name}");
    }

    for &n in &acks.removed {
        let (root, index) = share_id(n);
        assert_eq!(
            store.get(&root, index, None).unwrap(),
            None,
            "removed share {n} back"
        );
    }
    for &n in &acks.stored {
        let (root, index) = share_id(n);
        let got = store
            .get(&root, index, None)
            .unwrap()
            .unwrap_or_else(|| panic!("acknowledged share {n} lost"));
        assert_eq!(got.header, header(&root), "share {n}");
        assert!(got.data == share_data(&root, index), "share {n} differs");
    }

    let mut present = Vec::new();
    store
        .for_each_share(&mut |root, index, len| present.push((root, index, len)))
        .unwrap();
    let mut used = 0u64;
    let mut roots = BTreeSet::new();
    for &(root, index, len) in &present {
        assert_eq!(len, share_len(&root, index) as u64);
        let got = store.get(&root, index, None).unwrap().unwrap();
        assert!(
            got.data == share_data(&root, index),
            "present share incomplete"
        );
        used += len;
        roots.insert(root);
    }
    let usage = store.usage().unwrap();
    assert_eq!(usage.shares, present.len() as u64);
    // A header counts once per root, except that a share in a pack counts its own: between
    // once per root and once per share. (Open found nothing to repair, so the counters match
    // what the records say exactly.)
    assert!(usage.used_bytes >= used + (HEADER_LEN * roots.len()) as u64);
    assert!(usage.used_bytes <= used + (HEADER_LEN * present.len()) as u64);
    (present.len() as u64, report)
}

#[test]
fn kill_9_during_puts_leaves_consistent_store() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acks = Acks::default();
    let started = Instant::now();
    // (acknowledgements to wait for, extra delay before the kill)
    let moments = [(1, 0), (3, 2), (6, 0), (10, 7), (15, 13)];
    for (round, &(wait_for, delay_ms)) in moments.iter().enumerate() {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR_ENV, dir.path())
            .env(CHILD_START_ENV, (round as u64 * 1_000_000).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let got = read_acks(&mut out, &mut acks, wait_for);
        assert_eq!(got, wait_for, "child stopped early");
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Lines written before the kill were acknowledged too.
        read_acks(&mut out, &mut acks, usize::MAX);

        let (present, report) = check_store(dir.path(), &acks);
        assert!(present >= acks.stored.len() as u64);
        eprintln!(
            "round {round}: {} stored, {} removed, {present} present, {report:?}",
            acks.stored.len(),
            acks.removed.len()
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

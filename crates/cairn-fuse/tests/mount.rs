//! Real FUSE mounts over in-process 5-node loopback grids: POSIX calls through the kernel, the
//! results checked through the node API of the same and of other nodes.
//!
//! Every file system call runs on a blocking thread (the runtime's workers serve the mount),
//! and each test has a time limit. Where `/dev/fuse` cannot be used, tests say so and pass.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_fuse::Mounts;
use cairn_node::{Node, PutOptions};
use cairn_testkit::{TestGrid, random_bytes};

const LIMIT: Duration = Duration::from_secs(240);

/// Why FUSE cannot be used here, if it cannot.
fn fuse_unavailable() -> Option<String> {
    match OpenOptions::new().read(true).write(true).open("/dev/fuse") {
        Ok(_) => None,
        Err(e) => Some(format!("/dev/fuse: {e}")),
    }
}

/// One test at a time: each starts a grid and moves real data, and the timing checks would
/// otherwise measure the machine's load on two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

macro_rules! require_fuse {
    () => {
        if let Some(why) = fuse_unavailable() {
            eprintln!("skipping: FUSE is not usable here ({why})");
            return;
        }
        let _serial = ONE_AT_A_TIME.lock().await;
    };
}

/// Runs file system calls off the runtime's workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

async fn mount(node: &Node, base: &Path, name: &str, cap: Option<&str>) -> (Arc<Mounts>, PathBuf) {
    let point = base.join(name);
    fs::create_dir_all(&point).unwrap();
    let mounts = Mounts::start(node.clone());
    mounts.mount_at(&point, cap).await.unwrap();
    (mounts, point)
}

async fn read_via(node: &Node, location: &str) -> Vec<u8> {
    let cap = node.resolve_file(location).await.unwrap();
    let mut out = Vec::new();
    node.get(&cap, &mut out).await.unwrap();
    out
}

/// Whether the tests run as root (owner of `/proc/self`, without calling into libc).
fn running_as_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn posix_calls_through_a_mount_reach_the_grid() {
    require_fuse!();
    tokio::time::timeout(LIMIT, async {
        let grid = TestGrid::start(5).await;
        let node = grid.node(0).clone();
        let base = tempfile::tempdir().unwrap();
        let (mounts, m) = mount(&node, base.path(), "m", None).await;

        // The kernel reads ahead as far as the node's settings say (that takes root).
        let dev = fs::metadata(&m).unwrap().dev();
        let (major, minor) = (
            ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff),
            (dev & 0xff) | ((dev >> 12) & !0xff),
        );
        let knob = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
        if running_as_root() {
            let kib = fs::read_to_string(&knob).unwrap();
            assert_eq!(
                kib.trim(),
                node.config().mount_read_ahead_kib.to_string(),
                "{knob}"
            );
        } else {
            eprintln!("not root: the mount's read-ahead ({knob}) is left to the kernel");
        }

        // statfs shows the grid's space in bytes of files (raw share bytes times k/n).
        let space = node.grid_space().await;
        assert_eq!(space.nodes, 5);
        let encoding = node.encoding();
        let files = |raw: u64| raw * u64::from(encoding.k) / u64::from(encoding.n);
        let m2 = m.clone();
        let df = blocking(move || {
            let out = std::process::Command::new("df")
                .args(["-B1", "--output=size,avail"])
                .arg(&m2)
                .output()
                .unwrap();
            String::from_utf8(out.stdout).unwrap()
        })
        .await;
        let figures: Vec<u64> = df
            .lines()
            .nth(1)
            .unwrap()
            .split_whitespace()
            .map(|f| f.parse().unwrap())
            .collect();
        assert_eq!(figures[0], files(space.offered_bytes) / 4096 * 4096, "{df}");
        assert!(
            figures[1].abs_diff(files(space.free_bytes)) < 1 << 20,
            "{df}"
        );

        // mkdir, create/write/read back: small and multi-chunk.
        let small = b"hello, grid\n".to_vec();
        let big = random_bytes(7, 20 << 20);
        let (s2, b2, m2) = (small.clone(), big.clone(), m.clone());
        blocking(move || {
            fs::create_dir_all(m2.join("docs/2026")).unwrap();
            fs::write(m2.join("docs/small.txt"), &s2).unwrap();
            fs::write(m2.join("docs/2026/big.bin"), &b2).unwrap();
            assert_eq!(fs::read(m2.join("docs/small.txt")).unwrap(), s2);
            assert_eq!(fs::read(m2.join("docs/2026/big.bin")).unwrap(), b2);
            let meta = fs::metadata(m2.join("docs/2026/big.bin")).unwrap();
            assert_eq!(meta.len(), 20 << 20);
            assert!(meta.is_file());
            assert_eq!(meta.permissions().mode() & 0o777, 0o644);
            assert!(fs::metadata(m2.join("docs/2026")).unwrap().is_dir());
            // mkdir's mode is the new entry's (set in the same edit as the link).
            fs::DirBuilder::new()
                .mode(0o711)
                .create(m2.join("docs/private"))
                .unwrap();
            let mode = fs::metadata(m2.join("docs/private"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o7777, 0o711);
            fs::remove_dir(m2.join("docs/private")).unwrap();
            let mut names: Vec<String> = fs::read_dir(m2.join("docs"))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            assert_eq!(names, ["2026", "small.txt"]);
        })
        .await;
        // What the mount wrote is what the node reads, once uploaded (a close uploads in the
        // background).
        assert_eq!(mounts.flush(&m).await.unwrap(), 0);
        assert_eq!(read_via(&node, "/docs/2026/big.bin").await, big);
        assert_eq!(read_via(&node, "/docs/small.txt").await, small);

        // Rename within and across directories; symlink; chmod and utimens persisted.
        let m2 = m.clone();
        blocking(move || {
            fs::rename(m2.join("docs/small.txt"), m2.join("docs/renamed.txt")).unwrap();
            fs::create_dir(m2.join("other")).unwrap();
            fs::rename(m2.join("docs/renamed.txt"), m2.join("other/moved.txt")).unwrap();
            assert!(!m2.join("docs/renamed.txt").exists());
            std::os::unix::fs::symlink("../docs/2026/big.bin", m2.join("other/link")).unwrap();
            assert_eq!(
                fs::read_link(m2.join("other/link")).unwrap(),
                Path::new("../docs/2026/big.bin")
            );
            assert_eq!(fs::read(m2.join("other/link")).unwrap().len(), 20 << 20);
            fs::set_permissions(
                m2.join("other/moved.txt"),
                fs::Permissions::from_mode(0o600),
            )
            .unwrap();
            let when = UNIX_EPOCH + Duration::from_secs(1_600_000_000);
            let f = OpenOptions::new()
                .write(true)
                .open(m2.join("other/moved.txt"))
                .unwrap();
            let read_at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
            f.set_times(
                fs::FileTimes::new()
                    .set_modified(when)
                    .set_accessed(read_at),
            )
            .unwrap();
            drop(f);
            // chown is kept as metadata (only root may give a file away).
            let chown =
                std::os::unix::fs::chown(m2.join("other/moved.txt"), Some(1234), Some(5678));
            if running_as_root() {
                chown.unwrap();
            } else {
                assert_eq!(errno(chown.unwrap_err()), libc::EPERM);
            }
            let meta = fs::metadata(m2.join("other/moved.txt")).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
            assert_eq!(meta.modified().unwrap(), when);
            assert_eq!(meta.accessed().unwrap(), read_at);
            if running_as_root() {
                assert_eq!((meta.uid(), meta.gid()), (1234, 5678));
            }
            // Renaming a directory moves what is inside.
            fs::rename(m2.join("docs/2026"), m2.join("other/2026")).unwrap();
            assert_eq!(
                fs::metadata(m2.join("other/2026/big.bin")).unwrap().len(),
                20 << 20
            );
        })
        .await;
        assert_eq!(mounts.flush(&m).await.unwrap(), 0);
        let ls = node.ls("/other").await.unwrap();
        let moved = ls.entries.iter().find(|e| e.name == "moved.txt").unwrap();
        assert_eq!(moved.mode, 0o600);
        assert_eq!(moved.mtime_ns, 1_600_000_000 * 1_000_000_000);
        assert_eq!(moved.atime_ns, Some(1_700_000_000 * 1_000_000_000));
        if running_as_root() {
            assert_eq!(moved.owner, Some((1234, 5678)));
        }
        assert_eq!(read_via(&node, "/other/moved.txt").await, small);
        let link = ls.entries.iter().find(|e| e.name == "link").unwrap();
        assert_eq!(link.target.as_deref(), Some("../docs/2026/big.bin"));

        // truncate, O_APPEND, a seek past the end (sparse), overwrite in place.
        let m2 = m.clone();
        blocking(move || {
            let p = m2.join("other/moved.txt");
            let f = OpenOptions::new().write(true).open(&p).unwrap();
            f.set_len(5).unwrap();
            drop(f);
            assert_eq!(fs::read(&p).unwrap(), b"hello");
            let mut f = OpenOptions::new().append(true).open(&p).unwrap();
            f.write_all(b", again").unwrap();
            drop(f);
            assert_eq!(fs::read(&p).unwrap(), b"hello, again");
            let sparse = m2.join("other/sparse");
            let mut f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&sparse)
                .unwrap();
            f.seek(SeekFrom::Start(3 << 20)).unwrap();
            f.write_all(b"end").unwrap();
            drop(f);
            let data = fs::read(&sparse).unwrap();
            assert_eq!(data.len(), (3 << 20) + 3);
            assert!(data[..3 << 20].iter().all(|b| *b == 0));
            assert_eq!(&data[3 << 20..], b"end");
            let f = OpenOptions::new().write(true).open(&p).unwrap();
            f.write_all_at(b"J", 0).unwrap();
            drop(f);
            assert_eq!(fs::read(&p).unwrap(), b"Jello, again");
            // Path truncation (no open handle) keeps the rest.
            let f = OpenOptions::new().read(true).open(&p).unwrap();
            drop(f);
        })
        .await;
        assert_eq!(mounts.flush(&m).await.unwrap(), 0);
        assert_eq!(read_via(&node, "/other/moved.txt").await, b"Jello, again");
        let sparse = read_via(&node, "/other/sparse").await;
        assert_eq!(sparse.len(), (3 << 20) + 3);

        // fsync: once it returns, another node reads the bytes, before the file is closed.
        let shared = node.share("/other", true).await.unwrap();
        let synced = random_bytes(9, 300_000);
        let (m2, s2) = (m.clone(), synced.clone());
        let file = blocking(move || {
            let mut f = fs::File::create(m2.join("other/synced.bin")).unwrap();
            f.write_all(&s2).unwrap();
            f.sync_all().unwrap();
            f
        })
        .await;
        let other = grid.node(2);
        assert_eq!(
            read_via(other, &format!("{shared}/synced.bin")).await,
            synced
        );
        drop(file);

        // Hard links: EPERM. rmdir of a non-empty directory: ENOTEMPTY. rm -r.
        let m2 = m.clone();
        blocking(move || {
            let e = fs::hard_link(m2.join("other/moved.txt"), m2.join("other/hard")).unwrap_err();
            assert_eq!(errno(e), libc::EPERM);
            let e = fs::remove_dir(m2.join("other")).unwrap_err();
            assert_eq!(errno(e), libc::ENOTEMPTY);
            let e = fs::remove_file(m2.join("other/2026")).unwrap_err();
            assert_eq!(errno(e), libc::EISDIR);
            let e = fs::read(m2.join("nothing")).unwrap_err();
            assert_eq!(errno(e), libc::ENOENT);
            fs::remove_dir_all(m2.join("other")).unwrap();
            assert!(!m2.join("other").exists());
        })
        .await;
        assert!(node.ls("/other").await.is_err());

        // The root has no entry on the grid: this node keeps its mode for the next mount.
        // A path keeps its inode number at the next mount (git re-reads files whose number
        // changed), whatever order the new mount meets names in.
        let m2 = m.clone();
        let numbers_before = blocking(move || {
            fs::set_permissions(&m2, fs::Permissions::from_mode(0o700)).unwrap();
            for name in ["docs/one.txt", "docs/two.txt"] {
                fs::write(m2.join(name), name).unwrap();
            }
            ["docs/one.txt", "docs/two.txt"].map(|p| fs::metadata(m2.join(p)).unwrap().ino())
        })
        .await;
        mounts.unmount_at(&m).await.unwrap();
        assert!(!cairn_fuse::is_mount_point(&m));
        mounts.mount_at(&m, None).await.unwrap();
        let m2 = m.clone();
        let (mode, numbers_after) = blocking(move || {
            let two = fs::metadata(m2.join("docs/two.txt")).unwrap().ino();
            let one = fs::metadata(m2.join("docs/one.txt")).unwrap().ino();
            let mode = fs::metadata(&m2).unwrap().permissions().mode() & 0o7777;
            (mode, [one, two])
        })
        .await;
        assert_eq!(mode, 0o700);
        assert_eq!(numbers_after, numbers_before);
        mounts.unmount_at(&m).await.unwrap();
        assert!(!cairn_fuse::is_mount_point(&m));
        grid.shutdown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_small_overwrite_uploads_only_the_chunks_it_touches() {
    require_fuse!();
    tokio::time::timeout(LIMIT, async {
        let grid = TestGrid::start(5).await;
        let node = grid.node(0).clone();
        let base = tempfile::tempdir().unwrap();
        let (mounts, m) = mount(&node, base.path(), "m", None).await;
        let size: usize = 64 << 20;
        let data = random_bytes(11, size);
        let (m2, d2) = (m.clone(), data.clone());
        blocking(move || fs::write(m2.join("large.bin"), &d2).unwrap()).await;
        assert_eq!(mounts.flush(&m).await.unwrap(), 0);
        let (_, _, first_bytes) = mounts.upload_stats();
        assert!(first_bytes >= size as u64, "first upload sent {first_bytes}");

        let received = || async {
            let status = node.status().await.unwrap();
            status.peers.iter().map(|p| p.received).sum::<u64>()
        };
        let received_before = received().await;
        let (m2, d3) = (m.clone(), data.clone());
        blocking(move || {
            let f = OpenOptions::new()
                .write(true)
                .open(m2.join("large.bin"))
                .unwrap();
            f.write_all_at(&[0xAB; 4096], (32 << 20) as u64).unwrap();
            // Not copied at open: reads mix the staged block with blocks still on the grid.
            let r = fs::File::open(m2.join("large.bin")).unwrap();
            let mut around = vec![0u8; 4096 + 20];
            r.read_exact_at(&mut around, (32 << 20) - 10).unwrap();
            assert_eq!(&around[..10], &d3[(32 << 20) - 10..32 << 20]);
            assert!(around[10..4106].iter().all(|b| *b == 0xAB));
            assert_eq!(&around[4106..], &d3[(32 << 20) + 4096..(32 << 20) + 4106]);
            f.sync_all().unwrap();
        })
        .await;
        let (uploads, shares, bytes) = mounts.upload_stats();
        let sent = bytes - first_bytes;
        eprintln!(
            "4 KiB overwrite in the middle of a {} MiB file: {uploads} uploads, {sent} share bytes sent (first upload {first_bytes}; shares sent in all {shares})",
            size >> 20
        );
        // At most the shares of the chunks around the write (up to 4 MiB each, 5/3 expansion)
        // and a manifest: far below the file.
        assert!(sent < 24 << 20, "sent {sent} bytes for a 4 KiB overwrite");
        // Nor is the rest of the file fetched to upload it: only the chunks around the write
        // are read (the base's others stay as they are on the grid).
        let fetched = received().await - received_before;
        assert!(fetched < 16 << 20, "fetched {fetched} bytes for a 4 KiB overwrite");
        let mut expected = data;
        expected[32 << 20..(32 << 20) + 4096].fill(0xAB);
        assert!(read_via(&node, "/large.bin").await == expected);
        mounts.unmount_at(&m).await.unwrap();
        grid.shutdown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_readcap_mount_refuses_every_write_with_erofs() {
    require_fuse!();
    tokio::time::timeout(LIMIT, async {
        let grid = TestGrid::start(5).await;
        let node = grid.node(0).clone();
        node.mkdir("/pub/sub", true).await.unwrap();
        let report = node
            .put(
                std::io::Cursor::new(random_bytes(3, 1000)),
                PutOptions::default(),
            )
            .await
            .unwrap();
        let file = cairn_dir::FileRef::new(report.cap.parse().unwrap()).unwrap();
        node.link(
            "/pub/f.txt",
            cairn_dir::Content::File {
                file,
                meta: cairn_dir::Meta {
                    mode: 0o644,
                    mtime_ns: 0,
                    ..Default::default()
                },
            },
            false,
        )
        .await
        .unwrap();
        let readcap = node.share("/pub", false).await.unwrap();
        let reader = grid.node(1).clone();
        let base = tempfile::tempdir().unwrap();
        let (mounts, m) = mount(&reader, base.path(), "ro", Some(&readcap)).await;
        let m2 = m.clone();
        blocking(move || {
            assert_eq!(fs::read(m2.join("f.txt")).unwrap().len(), 1000);
            assert!(m2.join("sub").is_dir());
            let erofs = |r: std::io::Result<()>| assert_eq!(errno(r.unwrap_err()), libc::EROFS);
            erofs(fs::write(m2.join("new.txt"), b"x"));
            erofs(fs::create_dir(m2.join("d")));
            erofs(fs::remove_file(m2.join("f.txt")));
            erofs(fs::rename(m2.join("f.txt"), m2.join("g.txt")));
            erofs(
                OpenOptions::new()
                    .write(true)
                    .open(m2.join("f.txt"))
                    .map(drop),
            );
            erofs(fs::set_permissions(
                m2.join("f.txt"),
                fs::Permissions::from_mode(0o600),
            ));
            erofs(std::os::unix::fs::symlink("f.txt", m2.join("l")));
        })
        .await;
        mounts.unmount_at(&m).await.unwrap();
        grid.shutdown().await;
    })
    .await
    .expect("test timed out");
}

/// Polls `check` on a blocking thread every 20 ms until it holds; returns how long it took.
async fn time_until(limit: Duration, check: impl Fn() -> bool + Send + Sync + 'static) -> Duration {
    let check = Arc::new(check);
    let start = Instant::now();
    loop {
        let c = check.clone();
        if blocking(move || c()).await {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "not seen within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_written_on_another_node_shows_in_the_mount_within_a_second() {
    require_fuse!();
    tokio::time::timeout(LIMIT, async {
        let grid = TestGrid::start(5).await;
        let a = grid.node(0).clone();
        let b = grid.node(1).clone();
        a.mkdir("/shared", false).await.unwrap();
        let cap = a.share("/shared", true).await.unwrap();
        b.attach(&cap, "/from-a").await.unwrap();
        let base = tempfile::tempdir().unwrap();
        let (mounts, m) = mount(&b, base.path(), "b", None).await;
        let m2 = m.clone();
        blocking(move || assert_eq!(fs::read_dir(m2.join("from-a")).unwrap().count(), 0)).await;
        // Let the watch subscription reach the holders.
        tokio::time::sleep(Duration::from_millis(500)).await;

        let link = |data: &'static [u8]| {
            let a = a.clone();
            async move {
                let report = a
                    .put(std::io::Cursor::new(data.to_vec()), PutOptions::default())
                    .await
                    .unwrap();
                let file = cairn_dir::FileRef::new(report.cap.parse().unwrap()).unwrap();
                a.link(
                    "/shared/note.txt",
                    cairn_dir::Content::File {
                        file,
                        meta: cairn_dir::Meta {
                            mode: 0o644,
                            mtime_ns: SystemTime::now()
                                .duration_since(UNIX_EPOCH)
                                .unwrap()
                                .as_nanos() as i64,
                            ..Default::default()
                        },
                    },
                    true,
                )
                .await
                .unwrap();
            }
        };
        link(b"first version of the note, long enough to be stored as shares on the grid").await;
        let p = m.join("from-a/note.txt");
        let p2 = p.clone();
        let new_file = time_until(Duration::from_secs(10), move || p2.exists()).await;
        link(b"second version: the same note, changed on node A while B has it mounted....").await;
        let p2 = p.clone();
        let changed = time_until(Duration::from_secs(10), move || {
            fs::read(&p2).is_ok_and(|d| d.starts_with(b"second"))
        })
        .await;
        eprintln!("new file seen after {new_file:?}, changed content after {changed:?}");
        assert!(
            new_file <= Duration::from_secs(1),
            "new file after {new_file:?}"
        );
        assert!(
            changed <= Duration::from_secs(1),
            "change after {changed:?}"
        );
        mounts.unmount_at(&m).await.unwrap();
        grid.shutdown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn holders_lost_mid_read_fail_over_or_give_eio_in_time_never_hang() {
    require_fuse!();
    tokio::time::timeout(LIMIT, async {
        let mut grid = TestGrid::start(5).await;
        let node = grid.node(0).clone();
        let data = random_bytes(21, 24 << 20);
        let tail = random_bytes(22, 24 << 20);
        for (name, bytes) in [("/a.bin", &data), ("/b.bin", &tail)] {
            let report = node
                .put(std::io::Cursor::new(bytes.clone()), PutOptions::default())
                .await
                .unwrap();
            let file = cairn_dir::FileRef::new(report.cap.parse().unwrap()).unwrap();
            node.link(
                name,
                cairn_dir::Content::File {
                    file,
                    meta: cairn_dir::Meta {
                        mode: 0o644,
                        mtime_ns: 0,
                        ..Default::default()
                    },
                },
                false,
            )
            .await
            .unwrap();
        }
        let base = tempfile::tempdir().unwrap();
        let (mounts, m) = mount(&node, base.path(), "m", None).await;
        let m2 = m.clone();
        let (mut f, first) = blocking(move || {
            let mut f = fs::File::open(m2.join("a.bin")).unwrap();
            let mut first = vec![0u8; 1 << 20];
            f.read_exact(&mut first).unwrap();
            (f, first)
        })
        .await;
        assert_eq!(first, data[..1 << 20]);
        // Two of five holders go: three shares of each chunk remain, enough to read on.
        grid.stop(3).await;
        grid.stop(4).await;
        let rest = blocking(move || {
            let mut rest = Vec::new();
            f.read_to_end(&mut rest).unwrap();
            rest
        })
        .await;
        assert!(
            rest == data[1 << 20..],
            "the read went on from the other holders"
        );
        // A third goes: chunks of b.bin no longer have enough shares. The read fails with EIO
        // within the documented time, and the mount still answers.
        grid.stop(2).await;
        let m2 = m.clone();
        let started = Instant::now();
        let result = blocking(move || {
            let mut f = fs::File::open(m2.join("b.bin"))?;
            let mut buf = vec![0u8; 1 << 20];
            f.seek(SeekFrom::Start(16 << 20))?;
            f.read_exact(&mut buf)
        })
        .await;
        let took = started.elapsed();
        eprintln!("read with too few holders: {result:?} after {took:?}");
        match result {
            Err(e) => assert_eq!(errno(e), libc::EIO),
            Ok(()) => panic!("read succeeded with two of five holders"),
        }
        assert!(
            took < cairn_fuse::OP_TIMEOUT * 2 + Duration::from_secs(5),
            "took {took:?}"
        );
        let m2 = m.clone();
        blocking(move || assert!(fs::metadata(m2.join("a.bin")).is_ok())).await;
        mounts.unmount_at(&m).await.unwrap();
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_writing_one_file_through_their_mounts_keep_both_versions() {
    require_fuse!();
    tokio::time::timeout(LIMIT, async {
        let grid = TestGrid::start(5).await;
        let a = grid.node(0).clone();
        let b = grid.node(1).clone();
        a.mkdir("/shared", false).await.unwrap();
        let cap = a.share("/shared", true).await.unwrap();
        b.attach(&cap, "/s").await.unwrap();
        let base = tempfile::tempdir().unwrap();
        let (mounts_a, ma) = mount(&a, base.path(), "a", None).await;
        let (mounts_b, mb) = mount(&b, base.path(), "b", None).await;
        let ma2 = ma.clone();
        blocking(move || fs::write(ma2.join("shared/same.txt"), b"original").unwrap()).await;
        let mb2 = mb.clone();
        let seen = time_until(Duration::from_secs(10), move || {
            fs::read(mb2.join("s/same.txt")).is_ok_and(|d| d == b"original")
        })
        .await;
        assert!(seen < Duration::from_secs(10));
        // Each node holds its edit back long enough that neither sees the other's first.
        a.set_edit_delay(Some(Duration::from_millis(800)));
        b.set_edit_delay(Some(Duration::from_millis(800)));
        let (ma2, mb2) = (ma.clone(), mb.clone());
        let wa = blocking(move || fs::write(ma2.join("shared/same.txt"), b"version of A").unwrap());
        let wb = blocking(move || fs::write(mb2.join("s/same.txt"), b"version of B").unwrap());
        tokio::join!(wa, wb);
        a.set_edit_delay(None);
        b.set_edit_delay(None);
        // A watches the directory (its mount looked at it): B's version reaches it by push.
        let started = std::time::Instant::now();
        let (ls, contents) = loop {
            let ls = a.ls("/shared").await.unwrap();
            let mut contents = Vec::new();
            for e in &ls.entries {
                contents.push(read_via(&a, &format!("/shared/{}", e.name)).await);
            }
            if contents.len() > 1 || started.elapsed() > Duration::from_secs(5) {
                break (ls, contents);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        eprintln!(
            "after concurrent writes: {:?}",
            ls.entries.iter().map(|e| &e.name).collect::<Vec<_>>()
        );
        assert!(
            contents.iter().any(|c| c == b"version of A"),
            "{contents:?}"
        );
        assert!(
            contents.iter().any(|c| c == b"version of B"),
            "{contents:?}"
        );
        assert!(ls.conflicts > 0);
        mounts_a.unmount_at(&ma).await.unwrap();
        mounts_b.unmount_at(&mb).await.unwrap();
        grid.shutdown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_held_open_reaches_the_grid_once_its_writes_pause() {
    require_fuse!();
    tokio::time::timeout(LIMIT, async {
        let grid = TestGrid::start(5).await;
        let node = grid.node(0).clone();
        let base = tempfile::tempdir().unwrap();
        let (mounts, m) = mount(&node, base.path(), "a", None).await;
        let path = m.join("log.txt");
        let (close, closed) = std::sync::mpsc::channel::<()>();
        let writer = std::thread::spawn(move || {
            let mut f = fs::File::create(&path).unwrap();
            f.write_all(b"written, then left open").unwrap();
            closed.recv().unwrap();
        });
        let started = Instant::now();
        loop {
            if let Ok(cap) = node.resolve_file("/log.txt").await {
                let mut out = Vec::new();
                node.get(&cap, &mut out).await.unwrap();
                if out == b"written, then left open" {
                    break;
                }
            }
            assert!(
                started.elapsed() < cairn_fuse::UPLOAD_WHEN_IDLE + Duration::from_secs(10),
                "the open file never reached the grid"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        eprintln!("open file on the grid after {:?}", started.elapsed());
        close.send(()).unwrap();
        blocking(move || writer.join().unwrap()).await;
        mounts.unmount_at(&m).await.unwrap();
        grid.shutdown().await;
    })
    .await
    .expect("test timed out");
}

/// How many versions of the directory at `path` (of `node`'s tree) its first holder keeps.
async fn versions_held(grid: &TestGrid, node: &Node, path: &str) -> usize {
    let cap: cairn_core::DirWriteCap = node.share(path, true).await.unwrap().parse().unwrap();
    let first = node.slot_holders(&cap.slot())[0];
    let holder = (0..5)
        .map(|i| grid.node(i))
        .find(|n| n.id() == first)
        .unwrap();
    holder.held_versions(&cap.slot()).unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn files_closed_in_a_burst_go_up_in_the_background_in_few_versions() {
    require_fuse!();
    tokio::time::timeout(LIMIT, async {
        let grid = TestGrid::start(5).await;
        let node = grid.node(0).clone();
        node.mkdir("/burst", false).await.unwrap();
        let versions_before = versions_held(&grid, &node, "/burst").await;
        let base = tempfile::tempdir().unwrap();
        let (mounts, m) = mount(&node, base.path(), "m", None).await;
        const FILES: usize = 200;
        let m2 = m.clone();
        blocking(move || {
            for i in 0..FILES {
                fs::write(
                    m2.join(format!("burst/f{i}.txt")),
                    format!("file {i} {}", "x".repeat(i)),
                )
                .unwrap();
            }
            // Listed and read back at once, before any upload is known to have finished.
            assert_eq!(fs::read_dir(m2.join("burst")).unwrap().count(), FILES);
            assert_eq!(
                fs::read(m2.join("burst/f7.txt")).unwrap(),
                b"file 7 xxxxxxx"
            );
            assert_eq!(fs::metadata(m2.join("burst/f9.txt")).unwrap().len(), 16);
        })
        .await;
        assert_eq!(mounts.flush(&m).await.unwrap(), 0);
        let ls = node.ls("/burst").await.unwrap();
        assert_eq!(ls.entries.len(), FILES);
        assert_eq!(
            read_via(&node, "/burst/f150.txt").await,
            format!("file 150 {}", "x".repeat(150)).into_bytes()
        );
        let added = versions_held(&grid, &node, "/burst").await - versions_before;
        eprintln!("{FILES} files closed in a burst: {added} directory versions");
        assert!(
            added < FILES / 4,
            "{added} directory versions for {FILES} files"
        );
        // Uploaded files were kept in the writer's block cache: they read back through the
        // mount with every other node stopped.
        let mut grid = grid;
        for i in 1..5 {
            grid.stop(i).await;
        }
        let m2 = m.clone();
        blocking(move || {
            for i in [0, 99, 199] {
                let data = fs::read(m2.join(format!("burst/f{i}.txt"))).unwrap();
                assert_eq!(data, format!("file {i} {}", "x".repeat(i)).into_bytes());
            }
        })
        .await;
        mounts.unmount_at(&m).await.unwrap();
        grid.shutdown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn directory_metadata_set_in_a_burst_is_stored_in_one_version() {
    require_fuse!();
    tokio::time::timeout(LIMIT, async {
        let grid = TestGrid::start(5).await;
        let node = grid.node(0).clone();
        node.mkdir("/tree", false).await.unwrap();
        const DIRS: usize = 20;
        for i in 0..DIRS {
            node.mkdir(&format!("/tree/d{i}"), false).await.unwrap();
        }
        node.mkdir("/tree/d0/inner", false).await.unwrap();
        let versions_before = versions_held(&grid, &node, "/tree").await;
        let base = tempfile::tempdir().unwrap();
        let (mounts, m) = mount(&node, base.path(), "m", None).await;
        let m2 = m.clone();
        blocking(move || {
            // What `tar x` does once a directory is filled: owner, mode, times.
            for i in 0..DIRS {
                let d = m2.join(format!("tree/d{i}"));
                std::os::unix::fs::chown(&d, Some(1234), Some(5678)).unwrap();
                fs::set_permissions(&d, fs::Permissions::from_mode(0o750 + (i as u32 % 8)))
                    .unwrap();
                let t = UNIX_EPOCH + Duration::from_secs(1_600_000_000 + i as u64);
                fs::File::open(&d).unwrap().set_modified(t).unwrap();
                // Shows at once.
                let st = fs::metadata(&d).unwrap();
                assert_eq!(st.mode() & 0o7777, 0o750 + (i as u32 % 8));
                assert_eq!((st.uid(), st.gid()), (1234, 5678));
                assert_eq!(st.modified().unwrap(), t);
            }
            // A directory moved right after a chmod keeps the mode.
            fs::set_permissions(m2.join("tree/d0/inner"), fs::Permissions::from_mode(0o700))
                .unwrap();
            fs::rename(m2.join("tree/d0/inner"), m2.join("tree/inner")).unwrap();
            // A removed one takes its change with it.
            fs::set_permissions(m2.join("tree/d19"), fs::Permissions::from_mode(0o700)).unwrap();
            fs::remove_dir(m2.join("tree/d19")).unwrap();
        })
        .await;
        assert_eq!(mounts.flush(&m).await.unwrap(), 0);
        let ls = node.ls("/tree").await.unwrap();
        assert_eq!(ls.entries.len(), DIRS);
        for i in 0..DIRS - 1 {
            let e = ls.get(&format!("d{i}")).unwrap();
            assert_eq!(e.mode, 0o750 + (i as u32 % 8), "d{i}");
            assert_eq!(e.owner, Some((1234, 5678)));
            assert_eq!(e.mtime_ns, (1_600_000_000 + i as i64) * 1_000_000_000);
        }
        assert_eq!(ls.get("inner").unwrap().mode, 0o700);
        let added = versions_held(&grid, &node, "/tree").await - versions_before;
        eprintln!("{DIRS} directories given owner, mode and times: {added} versions");
        // One per rename and removal, and a few for the metadata: not one per call.
        assert!(
            added <= 6,
            "{added} directory versions for {DIRS} directories"
        );
        mounts.unmount_at(&m).await.unwrap();
        grid.shutdown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_not_uploaded_yet_moves_and_goes_without_reaching_the_grid() {
    require_fuse!();
    tokio::time::timeout(LIMIT, async {
        let grid = TestGrid::start(5).await;
        let node = grid.node(0).clone();
        let base = tempfile::tempdir().unwrap();
        let (mounts, m) = mount(&node, base.path(), "m", None).await;
        let m2 = m.clone();
        blocking(move || {
            fs::create_dir(m2.join("d")).unwrap();
            fs::create_dir(m2.join("e")).unwrap();
            // Held open, so none of them is uploaded while the calls below run.
            let mut keep = fs::File::create(m2.join("d/keep.tmp")).unwrap();
            keep.write_all(b"kept").unwrap();
            let mut gone = fs::File::create(m2.join("d/gone.txt")).unwrap();
            gone.write_all(b"never uploaded").unwrap();
            // A directory holding only files not uploaded yet is not empty.
            let e = fs::remove_dir(m2.join("d")).unwrap_err();
            assert_eq!(errno(e), libc::ENOTEMPTY);
            fs::remove_file(m2.join("d/gone.txt")).unwrap();
            assert!(!m2.join("d/gone.txt").exists());
            fs::rename(m2.join("d/keep.tmp"), m2.join("e/kept.txt")).unwrap();
            assert!(!m2.join("d/keep.tmp").exists());
            assert_eq!(fs::read(m2.join("e/kept.txt")).unwrap(), b"kept");
            let e = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(m2.join("e/kept.txt"))
                .unwrap_err();
            assert_eq!(errno(e), libc::EEXIST);
            drop((keep, gone));
        })
        .await;
        // Unmounting uploads what is left.
        mounts.unmount_at(&m).await.unwrap();
        assert!(node.ls("/d").await.unwrap().entries.is_empty());
        let ls = node.ls("/e").await.unwrap();
        assert_eq!(
            ls.entries
                .iter()
                .map(|e| e.name.as_str())
                .collect::<Vec<_>>(),
            ["kept.txt"]
        );
        assert_eq!(read_via(&node, "/e/kept.txt").await, b"kept");
        grid.shutdown().await;
    })
    .await
    .expect("test timed out");
}

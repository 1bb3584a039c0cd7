//! The block cache and pins on a real in-process grid: what was read (or pinned) reads again
//! with the rest of the grid down and across a restart, encrypted at rest.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cairn_core::cap::Cap;
use cairn_dir::{Content, FileRef, Meta};
use cairn_node::{Node, NodeError, PutOptions};
use cairn_testkit::{TestGrid, random_bytes};

const LIMIT: Duration = Duration::from_secs(180);

async fn put(node: &Node, data: &[u8]) -> Cap {
    let report = node
        .put(std::io::Cursor::new(data.to_vec()), PutOptions::default())
        .await
        .unwrap();
    report.cap.parse().unwrap()
}

async fn read_all(node: &Node, cap: &Cap) -> Result<Vec<u8>, NodeError> {
    let reader = node.open_file(cap).await?;
    Ok(reader.read_at(0, reader.size() as usize).await?.to_vec())
}

/// Whether any file under `dir` contains `needle`.
fn appears_under(dir: &std::path::Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().any(|item| {
        let path = item.unwrap().path();
        if path.is_dir() {
            return appears_under(&path, needle);
        }
        let bytes = std::fs::read(&path).unwrap();
        bytes.windows(needle.len()).any(|w| w == needle)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_read_once_reads_again_from_the_cache_with_the_grid_down_after_a_restart() {
    tokio::time::timeout(LIMIT, async {
        let mut grid = TestGrid::start(5).await;
        let mut data = random_bytes(31, 5 << 20);
        let marker = b"BLOCK-CACHE-MARKER-0123456789";
        data[1000..1000 + marker.len()].copy_from_slice(marker);
        let cap = put(grid.node(0), &data).await;
        assert_eq!(read_all(grid.node(1), &cap).await.unwrap(), data);
        // The cache fills in the background.
        let mut waited = 0;
        while grid.node(1).status().await.unwrap().cache.bytes < data.len() as u64 {
            assert!(waited < 100, "the cache never filled");
            tokio::time::sleep(Duration::from_millis(50)).await;
            waited += 1;
        }
        for i in [0, 2, 3, 4] {
            grid.stop(i).await;
        }
        grid.restart(1).await;
        assert_eq!(read_all(grid.node(1), &cap).await.unwrap(), data);
        let cache = grid.dir(1).cache();
        assert!(!appears_under(&cache, marker), "plaintext in the cache");
        assert!(!appears_under(&cache, &data[2 << 20..(2 << 20) + 64]));
        // A whole-file get reads from the cache too.
        let mut out = Vec::new();
        grid.node(1).get(&cap, &mut out).await.unwrap();
        assert_eq!(out, data);
        grid.shutdown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_tree_lists_and_reads_offline_until_unpinned() {
    tokio::time::timeout(LIMIT, async {
        let mut grid = TestGrid::start(5).await;
        let node = grid.node(1).clone();
        node.mkdir("/trip/day1", true).await.unwrap();
        let a = random_bytes(41, 3 << 20);
        let b = random_bytes(42, 700_000);
        for (path, data) in [("/trip/a.jpg", &a), ("/trip/day1/b.jpg", &b)] {
            let cap = put(&node, data).await;
            let content = Content::File {
                file: FileRef::new(cap).unwrap(),
                meta: Meta {
                    mode: 0o644,
                    mtime_ns: 0,
                    ..Default::default()
                },
            };
            node.link(path, content, false).await.unwrap();
        }
        node.link(
            "/trip/note.txt",
            Content::File {
                file: FileRef::new(put(&node, b"tiny").await).unwrap(),
                meta: Meta {
                    mode: 0o644,
                    mtime_ns: 0,
                    ..Default::default()
                },
            },
            false,
        )
        .await
        .unwrap();
        let pin = node.pin("/trip").await.unwrap();
        assert_eq!((pin.files, pin.dirs), (3, 3), "{pin:?}");
        assert_eq!(pin.bytes, (a.len() + b.len() + 4) as u64);
        assert_eq!(pin.fetched_bytes, (a.len() + b.len()) as u64);
        // Pinning again fetches nothing new.
        assert_eq!(node.pin("/trip/").await.unwrap().fetched_bytes, 0);
        assert_eq!(node.pins().await.unwrap().len(), 1);

        drop(node);
        for i in [0, 2, 3, 4] {
            grid.stop(i).await;
        }
        grid.restart(1).await;
        let node = grid.node(1).clone();
        let status = node.status().await.unwrap();
        assert!(status.cache.pinned_bytes >= (a.len() + b.len()) as u64);
        let listing = node.ls("/trip/day1").await.unwrap();
        assert_eq!(listing.entries.len(), 1);
        let cap = node.resolve_file("/trip/day1/b.jpg").await.unwrap();
        assert_eq!(read_all(&node, &cap).await.unwrap(), b);
        let cap = node.resolve_file("/trip/a.jpg").await.unwrap();
        assert_eq!(read_all(&node, &cap).await.unwrap(), a);

        let unpinned = node.unpin("/trip").await.unwrap();
        assert_eq!(unpinned.location, "/trip");
        assert!(node.pins().await.unwrap().is_empty());
        assert!(matches!(
            node.unpin("/trip").await,
            Err(NodeError::NotFound(_))
        ));
        assert_eq!(node.status().await.unwrap().cache.pinned_bytes, 0);
        grid.shutdown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_takes_in_a_file_added_elsewhere_on_its_own() {
    tokio::time::timeout(LIMIT, async {
        let mut grid = TestGrid::start(5).await;
        let (writer, keeper) = (grid.node(0).clone(), grid.node(1).clone());
        writer.mkdir("/shared", false).await.unwrap();
        let cap = writer.share("/shared", true).await.unwrap();
        keeper.attach(&cap, "/album").await.unwrap();
        let first = random_bytes(51, 300_000);
        let content = |cap: Cap| Content::File {
            file: FileRef::new(cap).unwrap(),
            meta: Meta::default(),
        };
        writer
            .link(
                "/shared/one.jpg",
                content(put(&writer, &first).await),
                false,
            )
            .await
            .unwrap();
        assert_eq!(keeper.pin("/album").await.unwrap().files, 1);
        // Added on another node: the pin fetches it without being asked.
        let second = random_bytes(52, 400_000);
        writer
            .link(
                "/shared/two.jpg",
                content(put(&writer, &second).await),
                false,
            )
            .await
            .unwrap();
        let started = std::time::Instant::now();
        while keeper.pins().await.unwrap()[0].files < 2 {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the pin did not take in the new file"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop((writer, keeper));
        for i in [0, 2, 3, 4] {
            grid.stop(i).await;
        }
        let keeper = grid.node(1).clone();
        let cap = keeper.resolve_file("/album/two.jpg").await.unwrap();
        assert_eq!(read_all(&keeper, &cap).await.unwrap(), second);
        grid.shutdown().await;
    })
    .await
    .expect("test timed out");
}

//! Random access to a file: any range reads back exactly, fetching only the chunks it touches.

use std::time::Duration;

use cairn_core::cap::Cap;
use cairn_core::rechunk::Changes;
use cairn_node::{Node, PutOptions};
use cairn_testkit::{TestGrid, random_bytes};

const LIMIT: Duration = Duration::from_secs(120);

/// Bytes this node has received from its peers so far.
async fn received(node: &Node) -> u64 {
    let status = node.status().await.expect("status");
    status.peers.iter().map(|p| p.received).sum()
}

/// Puts `len` random bytes from `node`: the bytes and their cap.
async fn put_random(node: &Node, seed: u64, len: usize) -> (Vec<u8>, Cap) {
    let data = random_bytes(seed, len);
    let report = node
        .put(std::io::Cursor::new(data.clone()), PutOptions::default())
        .await
        .expect("put");
    (data, report.cap.parse().expect("cap"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_read_back_exactly_and_fetch_only_their_chunks() {
    tokio::time::timeout(LIMIT, async {
        let grid = TestGrid::start(5).await;
        let (data, cap) = put_random(grid.node(0), 7, 24 << 20).await;
        let reader = grid.node(1).open_file(&cap).await.expect("open");
        assert_eq!(reader.size(), data.len() as u64);
        assert!(reader.chunk_count() > 4, "several chunks");

        // A small read in the middle fetches about one chunk, not the file.
        let before = received(grid.node(1)).await;
        let mid = data.len() as u64 / 2;
        let got = reader.read_at(mid, 4096).await.expect("read");
        assert_eq!(&got[..], &data[mid as usize..mid as usize + 4096]);
        let fetched = received(grid.node(1)).await - before;
        assert!(
            fetched < 2 * 4 * 1024 * 1024,
            "a 4 KiB read fetched {fetched} bytes"
        );
        // Reading it again comes from the cache.
        let before = received(grid.node(1)).await;
        let again = reader.read_at(mid + 100, 4096).await.expect("read");
        assert_eq!(&again[..], &data[mid as usize + 100..mid as usize + 4196]);
        assert_eq!(
            received(grid.node(1)).await,
            before,
            "served from the cache"
        );
        // What is decrypted in memory is had without waiting; what is not, is not.
        let ready = reader
            .read_ready(mid + 100, 4096)
            .expect("the chunk is in memory");
        assert_eq!(&ready[..], &data[mid as usize + 100..mid as usize + 4196]);
        assert!(
            reader.read_ready(0, 4096).is_none(),
            "chunk 0 was never read"
        );
        assert!(
            reader.read_ready(mid, 8 << 20).is_none(),
            "the chunks after the one read were never read"
        );
        assert_eq!(
            reader.read_ready(data.len() as u64, 10).as_deref(),
            Some(&[][..])
        );

        let len = data.len() as u64;
        let cases: [(u64, usize); 8] = [
            (0, 1),
            (0, 3 << 20),
            (1_000_003, 5 << 20),
            (len - 10, 100),
            (len - 1, 1),
            (len, 10),
            (len + 5, 10),
            (12_345, 0),
        ];
        for (offset, n) in cases {
            let got = reader.read_at(offset, n).await.expect("read");
            let from = (offset as usize).min(data.len());
            let to = (offset as usize).saturating_add(n).min(data.len());
            assert_eq!(&got[..], &data[from..to], "read_at({offset}, {n})");
        }

        // Reads at the same time, the whole file in 128 KiB pieces out of order.
        let pieces: Vec<u64> = (0..len.div_ceil(128 << 10)).rev().collect();
        let reads = pieces.iter().map(|&p| {
            let reader = reader.clone();
            async move { (p, reader.read_at(p * (128 << 10), 128 << 10).await) }
        });
        for (p, got) in futures_util::future::join_all(reads).await {
            let from = (p * (128 << 10)) as usize;
            let to = (from + (128 << 10)).min(data.len());
            assert_eq!(&got.expect("read")[..], &data[from..to]);
        }

        // The status counts what each node did.
        let writer = grid.node(0).status().await.expect("status").activity;
        assert_eq!((writer.files_put, writer.bytes_put), (1, len));
        let reader_activity = grid.node(1).status().await.expect("status").activity;
        assert_eq!(reader_activity.files_got, 1);
        assert!(reader_activity.bytes_got >= len, "{reader_activity:?}");
        let mut served = 0;
        for i in 0..grid.len() {
            served += grid
                .node(i)
                .status()
                .await
                .expect("status")
                .activity
                .shares_served;
        }
        assert!(served >= reader_activity.bytes_got / (4 << 20), "{served}");
        grid.shutdown().await;
    })
    .await
    .expect("within the time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_on_with_two_holders_down_and_literals_need_no_grid() {
    tokio::time::timeout(LIMIT, async {
        let mut grid = TestGrid::start(5).await;
        let (data, cap) = put_random(grid.node(0), 8, 6 << 20).await;
        grid.stop(3).await;
        grid.stop(4).await;
        let reader = grid.node(1).open_file(&cap).await.expect("open");
        reader.prefetch(0, 8 << 20);
        let got = reader.read_at(2 << 20, 3 << 20).await.expect("read");
        assert_eq!(&got[..], &data[2 << 20..5 << 20]);

        let tiny = grid
            .node(0)
            .put(&b"tiny"[..], PutOptions::default())
            .await
            .expect("put");
        let tiny: Cap = tiny.cap.parse().expect("cap");
        let reader = grid.node(2).open_file(&tiny).await.expect("open literal");
        assert_eq!(&reader.read_at(1, 10).await.expect("read")[..], b"iny");

        let verify = match &cap {
            Cap::Read(read) => Cap::Verify(read.verify_cap()),
            _ => unreachable!("a big file has a read cap"),
        };
        let err = grid
            .node(1)
            .open_file(&verify)
            .await
            .expect_err("verify cap");
        assert!(err.to_string().contains("verify"), "{err}");
        grid.shutdown().await;
    })
    .await
    .expect("within the time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patched_put_sends_only_the_chunks_around_the_changes() {
    tokio::time::timeout(LIMIT, async {
        let grid = TestGrid::start(5).await;
        let node = grid.node(0);
        let (data, cap) = put_random(node, 21, 24 << 20).await;
        let base = node.open_file(&cap).await.expect("open");

        // A 4 KiB overwrite in the middle and 100 KB appended.
        let mut new = data.clone();
        let mid = new.len() / 2;
        new[mid..mid + 4096].copy_from_slice(&random_bytes(22, 4096));
        new.extend_from_slice(&random_bytes(23, 100_000));
        let changes = Changes {
            len: new.len() as u64,
            retained: data.len() as u64,
            changed: std::iter::once(mid as u64..mid as u64 + 4096).collect(),
        };
        let shared = bytes::Bytes::from(new.clone());
        let opened = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = opened.clone();
        let open_at = move |at: u64| {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut reader = std::io::Cursor::new(shared.clone());
            reader.set_position(at);
            reader
        };
        let patched = node
            .put_patched(&base, changes, open_at, PutOptions::default())
            .await
            .expect("patched put");
        assert_eq!(
            opened.load(std::sync::atomic::Ordering::Relaxed),
            2,
            "two runs of changed chunks"
        );
        // At most two chunks around the overwrite and the last one or two, each 5/3 of at
        // most 4 MiB, plus the manifest: far less than the file's 40 MiB of shares.
        assert!(
            patched.bytes_sent < 4 * (4 << 20) * 5 / 3 + (1 << 20),
            "sent {} bytes",
            patched.bytes_sent
        );

        // The same cap as putting the whole new file, which finds every share in place.
        let whole = node
            .put(std::io::Cursor::new(new.clone()), PutOptions::default())
            .await
            .expect("whole put");
        assert_eq!(patched.cap, whole.cap);
        assert_eq!(patched.chunks, whole.chunks);
        assert_eq!(
            whole.shares_sent, 0,
            "every share was placed by the patched put"
        );
        let cap: Cap = patched.cap.parse().expect("cap");
        let reader = grid.node(2).open_file(&cap).await.expect("open");
        let got = reader.read_at(0, new.len()).await.expect("read");
        assert!(got[..] == new[..], "reads back as the new bytes");
        grid.shutdown().await;
    })
    .await
    .expect("within the time limit");
}

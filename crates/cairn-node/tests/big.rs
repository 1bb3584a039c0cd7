//! Files of a gigabyte and more round-trip byte for byte, streamed (never held in memory).

use std::time::Duration;

use cairn_core::cap::Cap;
use cairn_node::PutOptions;
use cairn_testkit::{HashWriter, RandomReader, TestGrid, hash_random};
use tokio::io::AsyncReadExt;

const LIMIT: Duration = Duration::from_secs(600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_gib_random_file_round_trips() {
    tokio::time::timeout(LIMIT, async {
        let grid = TestGrid::start(5).await;
        let len = 1u64 << 30;
        let report = grid
            .node(0)
            .put(RandomReader::new(1, len), PutOptions::default())
            .await
            .expect("put");
        assert_eq!(report.size, len);
        let cap: Cap = report.cap.parse().expect("cap");
        let mut out = HashWriter::default();
        grid.node(1).get(&cap, &mut out).await.expect("get");
        assert_eq!(out.finish(), (hash_random(1, len), len));
        grid.shutdown().await;
    })
    .await
    .expect("within the time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sparse_file_over_4_gib_round_trips() {
    tokio::time::timeout(LIMIT, async {
        let grid = TestGrid::start(5).await;
        // 4.5 GiB of zeros with a few bytes of data past the 4 GiB mark, like a sparse file.
        let zeros = (4u64 << 30) + 12_345;
        let tail = b"data after the 4 GiB mark".to_vec();
        let reader = tokio::io::repeat(0)
            .take(zeros)
            .chain(std::io::Cursor::new(tail.clone()))
            .chain(tokio::io::repeat(0).take(1 << 29));
        let len = zeros + tail.len() as u64 + (1 << 29);
        let report = grid
            .node(0)
            .put(reader, PutOptions::default())
            .await
            .expect("put");
        assert_eq!(report.size, len);
        let mut expected = blake3::Hasher::new();
        let block = vec![0u8; 1 << 20];
        let mut left = zeros;
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            expected.update(&block[..n]);
            left -= n as u64;
        }
        expected.update(&tail);
        for _ in 0..512 {
            expected.update(&block);
        }
        let cap: Cap = report.cap.parse().expect("cap");
        let mut out = HashWriter::default();
        grid.node(2).get(&cap, &mut out).await.expect("get");
        assert_eq!(out.finish(), (expected.finalize(), len));
        grid.shutdown().await;
    })
    .await
    .expect("within the time limit");
}

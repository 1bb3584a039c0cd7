//! Benchmark: a directory of 100,000 entries on a 5-node loopback grid.
//!
//! Prints the time to build it, the time and bytes to add one entry (floor: 50 ms and 64 KiB),
//! and the time of a listing on the writer (warm) and on another node (cold: every version
//! fetched, verified, decrypted and merged) (floor: 1 s).
//!
//! `cargo run --release -p cairn-node --example dir_scale [ENTRIES]`

use std::time::Instant;

use cairn_core::cap::{Cap, LiteralCap};
use cairn_dir::{Content, FileRef, Meta};
use cairn_node::Node;
use cairn_testkit::TestGrid;

fn file(i: usize) -> Content {
    Content::File {
        file: FileRef::new(Cap::Literal(LiteralCap {
            data: format!("content of file {i}").into_bytes(),
        }))
        .expect("a literal is a file cap"),
        meta: Meta {
            mode: 0o644,
            mtime_ns: 1_700_000_000_000_000_000 + i as i64,
            ..Default::default()
        },
    }
}

async fn bytes_sent(node: &Node) -> u64 {
    let status = node.status().await.expect("status");
    status.peers.iter().map(|p| p.sent).sum()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let entries: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let grid = TestGrid::start(5).await;
    let writer = grid.node(0);
    writer.mkdir("/big", false).await.expect("mkdir");

    let started = Instant::now();
    let batch = 2000;
    for start in (0..entries).step_by(batch) {
        let items = (start..(start + batch).min(entries))
            .map(|i| (format!("photo-{i:06}.jpg"), file(i)))
            .collect();
        writer.link_many("/big", items).await.expect("link_many");
    }
    let build = started.elapsed();
    println!(
        "build      {entries} entries in {:.2} s ({:.0} entries/s, {} versions)",
        build.as_secs_f64(),
        entries as f64 / build.as_secs_f64(),
        entries.div_ceil(batch)
    );

    let mut times = Vec::new();
    let mut sent = Vec::new();
    for i in 0..21 {
        let before = bytes_sent(writer).await;
        let t = Instant::now();
        writer
            .link(&format!("/big/added-{i}"), file(entries + i), false)
            .await
            .expect("add one entry");
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        sent.push(bytes_sent(writer).await - before);
    }
    times.sort_by(f64::total_cmp);
    sent.sort();
    println!(
        "add one    median {:.1} ms, max {:.1} ms (floor 50 ms); sent median {} B, max {} B (floor 65536 B)",
        times[times.len() / 2],
        times[times.len() - 1],
        sent[sent.len() / 2],
        sent[sent.len() - 1]
    );

    let t = Instant::now();
    let listed = writer.ls("/big").await.expect("ls");
    println!(
        "ls warm    {} entries in {:.0} ms (floor 1000 ms)",
        listed.entries.len(),
        t.elapsed().as_secs_f64() * 1000.0
    );
    let t = Instant::now();
    let json = serde_json::to_vec(&listed).expect("json");
    let back: cairn_node::LsReport = serde_json::from_slice(&json).expect("parse");
    println!(
        "ls --json  {:.1} MB to the CLI, encoded and parsed in {:.0} ms ({} entries)",
        json.len() as f64 / 1e6,
        t.elapsed().as_secs_f64() * 1000.0,
        back.entries.len()
    );
    let cap = writer.share("/big", false).await.expect("share");
    let reader = grid.node(3);
    let t = Instant::now();
    let listed = reader.ls(&cap).await.expect("ls cold");
    println!(
        "ls cold    {} entries in {:.0} ms on another node (every version fetched and merged)",
        listed.entries.len(),
        t.elapsed().as_secs_f64() * 1000.0
    );
    let t = Instant::now();
    reader.ls(&cap).await.expect("ls again");
    println!(
        "ls again   {:.0} ms on that node",
        t.elapsed().as_secs_f64() * 1000.0
    );
    grid.shutdown().await;
}

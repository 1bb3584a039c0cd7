//! Test harness: a grid of real Cairn nodes in one process, each with its own directory, store
//! and iroh endpoint on 127.0.0.1, connected over real QUIC.
//!
//! ```no_run
//! # async fn example() {
//! let grid = cairn_testkit::TestGrid::start(5).await;
//! let report = grid.node(0).put(&b"some bytes of a file, more than sixty-four of them, to be stored"[..], Default::default()).await.unwrap();
//! let cap = report.cap.parse().unwrap();
//! let mut out = Vec::new();
//! grid.node(1).get(&cap, &mut out).await.unwrap();
//! # }
//! ```

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use cairn_core::Encoding;
use cairn_node::setup::{self, InitOptions};
use cairn_node::{Node, NodeDir};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A loopback address no other node of this process listens on (`127.a.b.c`, port 0: the port
/// is picked at init and kept). With an address of its own, a node's port cannot be taken by
/// another test's node while it is stopped or not started yet.
pub fn loopback() -> SocketAddr {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let a = (std::process::id() % 250 + 1) as u8;
    SocketAddr::from(([127, a, (n / 250 % 250) as u8, (n % 250 + 2) as u8], 0))
}

/// Options of a test grid.
#[derive(Clone, Debug)]
pub struct GridOptions {
    /// Number of nodes.
    pub nodes: usize,
    /// The grid's encoding.
    pub encoding: Encoding,
    /// Per-node capacity in bytes (index = node number); missing entries get 10 GiB.
    pub capacities: Vec<u64>,
}

impl Default for GridOptions {
    fn default() -> Self {
        GridOptions {
            nodes: 5,
            encoding: Encoding::DEFAULT,
            capacities: vec![],
        }
    }
}

/// A grid of in-process nodes. Node 0 is the admin. Dropping it stops nothing gracefully;
/// call [`TestGrid::shutdown`] at the end of a test that cares.
#[derive(Debug)]
pub struct TestGrid {
    base: tempfile::TempDir,
    dirs: Vec<NodeDir>,
    nodes: Vec<Option<Node>>,
}

impl TestGrid {
    /// Starts `n` nodes with the default 3-of-5 encoding (happy 4).
    pub async fn start(n: usize) -> TestGrid {
        TestGrid::start_with(GridOptions {
            nodes: n,
            ..GridOptions::default()
        })
        .await
    }

    /// Starts a grid with these options.
    pub async fn start_with(options: GridOptions) -> TestGrid {
        let base = tempfile::tempdir().expect("temp dir");
        let dirs: Vec<NodeDir> = (0..options.nodes)
            .map(|i| NodeDir::new(base.path().join(format!("node{i}"))))
            .collect();
        for (i, dir) in dirs.iter().enumerate() {
            let init = InitOptions {
                encoding: options.encoding,
                listen: loopback(),
                capacity_bytes: Some(options.capacities.get(i).copied().unwrap_or(10 << 30)),
                storage: true,
            };
            if i == 0 {
                setup::init_grid(dir, &init).expect("init grid");
            } else {
                setup::init_member_offline(dir, &dirs[0], &init).expect("init member");
            }
        }
        setup::introduce(&dirs).expect("introduce");
        let mut nodes = Vec::new();
        for dir in &dirs {
            nodes.push(Some(Node::start(dir).await.expect("node starts")));
        }
        TestGrid { base, dirs, nodes }
    }

    /// Node `i` (panics if it was stopped).
    pub fn node(&self, i: usize) -> &Node {
        self.nodes[i].as_ref().expect("node is running")
    }

    /// The directory of node `i`.
    pub fn dir(&self, i: usize) -> &NodeDir {
        &self.dirs[i]
    }

    /// The grid's base directory.
    pub fn base(&self) -> &std::path::Path {
        self.base.path()
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.dirs.len()
    }

    /// Whether the grid has no nodes.
    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty()
    }

    /// Stops node `i` (its endpoint closes; peers see it offline).
    pub async fn stop(&mut self, i: usize) {
        if let Some(node) = self.nodes[i].take() {
            node.shutdown().await;
        }
    }

    /// Starts node `i` again from its directory, and has it greet the others at once (a
    /// started node does so on its own within seconds).
    pub async fn restart(&mut self, i: usize) {
        self.stop(i).await;
        let node = Node::start(&self.dirs[i]).await.expect("node restarts");
        node.gossip_now().await;
        self.nodes[i] = Some(node);
    }

    /// Stops every node.
    pub async fn shutdown(mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i).await;
        }
    }
}

/// A deterministic pseudo-random byte stream of `len` bytes, readable without holding it in
/// memory. Byte `o` depends only on the seed and `o`, never on how the stream is read.
#[derive(Debug, Clone)]
pub struct RandomReader {
    seed: u64,
    offset: u64,
    left: u64,
}

impl RandomReader {
    /// `len` bytes from `seed`.
    pub fn new(seed: u64, len: u64) -> RandomReader {
        RandomReader {
            seed,
            offset: 0,
            left: len,
        }
    }

    fn word(&self, i: u64) -> [u8; 8] {
        // splitmix64 of (seed, word index)
        let mut z = self
            .seed
            .wrapping_add(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)).to_le_bytes()
    }

    fn fill(&mut self, buf: &mut [u8]) {
        let mut at = 0;
        while at < buf.len() {
            let within = (self.offset % 8) as usize;
            let take = (8 - within).min(buf.len() - at);
            let word = self.word(self.offset / 8);
            buf[at..at + take].copy_from_slice(&word[within..within + take]);
            at += take;
            self.offset += take as u64;
        }
    }
}

impl AsyncRead for RandomReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = (buf.remaining() as u64).min(self.left).min(1 << 20) as usize;
        let mut tmp = vec![0u8; n];
        self.fill(&mut tmp);
        self.left -= n as u64;
        buf.put_slice(&tmp);
        Poll::Ready(Ok(()))
    }
}

/// `len` bytes of [`RandomReader`] output, in memory.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut r = RandomReader::new(seed, len as u64);
    let mut out = vec![0u8; len];
    r.fill(&mut out);
    out
}

/// A writer that only hashes what it is given (to compare gigabytes without storing them).
#[derive(Debug, Default)]
pub struct HashWriter {
    hasher: blake3::Hasher,
    len: u64,
}

impl HashWriter {
    /// The BLAKE3 hash and length of everything written.
    pub fn finish(&self) -> (blake3::Hash, u64) {
        (self.hasher.finalize(), self.len)
    }
}

impl AsyncWrite for HashWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.hasher.update(buf);
        self.len += buf.len() as u64;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Hashes a [`RandomReader`] stream the same way [`HashWriter`] does.
pub fn hash_random(seed: u64, len: u64) -> blake3::Hash {
    let mut r = RandomReader::new(seed, len);
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = (buf.len() as u64).min(left) as usize;
        r.fill(&mut buf[..n]);
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    hasher.finalize()
}

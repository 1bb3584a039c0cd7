//! Reading part of a file: the manifest once, then only the chunks a read touches.
//!
//! [`Node::open_file`] fetches and checks a file's manifest and returns a [`FileReader`].
//! [`FileReader::read_at`] fetches, verifies and decrypts just the chunks that overlap the
//! range asked for, several at once. The last few decrypted chunks stay in a small cache, so
//! many small reads of one chunk (a kernel reads 128 KiB at a time) fetch it once, and two
//! reads of the same chunk at the same moment share one fetch. [`FileReader::prefetch`] starts
//! fetches ahead of a sequential reader. Chunks and manifests come from the node's block cache
//! when it holds them, and what is fetched goes into it (see [`crate::blocks`]).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use cairn_core::cap::Cap;
use cairn_core::crypto::ChunkKey;
use cairn_core::manifest::ChunkRef;
use futures_util::{StreamExt, TryStreamExt};
use tokio::sync::OnceCell;

use crate::NodeError;
use crate::blocks::Keep;
use crate::node::{Inner, Node};

/// Decrypted chunks a reader keeps (at most 4 MiB each).
pub const CACHED_CHUNKS: usize = 16;
/// Chunks one read fetches at once.
const FETCHES_AT_ONCE: usize = 4;

/// One chunk of the file: where it starts, what it is, and its key.
struct Span {
    start: u64,
    chunk: ChunkRef,
    key: ChunkKey,
}

type Cell = Arc<OnceCell<Bytes>>;

/// What a read needs: nothing more (past the end, or a literal file), or the chunks
/// `first..=last` and the read's end.
enum Plan<'a> {
    Done(Bytes),
    Chunks(&'a Arc<Chunked>, usize, usize, u64),
}

/// Random access to one immutable file (see the module docs). Cheap to clone; clones share
/// the cache.
#[derive(Clone)]
pub struct FileReader {
    source: Source,
}

#[derive(Clone)]
enum Source {
    /// A literal cap: the bytes are in the cap.
    Literal(Bytes),
    /// Chunks on the grid.
    Chunks(Arc<Chunked>),
}

struct Chunked {
    inner: Arc<Inner>,
    size: u64,
    spans: Vec<Span>,
    /// Most recently used last.
    cache: Mutex<VecDeque<(usize, Cell)>>,
}

impl std::fmt::Debug for FileReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileReader")
            .field("size", &self.size())
            .field("chunks", &self.chunk_count())
            .finish()
    }
}

impl Node {
    /// Opens the file named by `cap` for random access: fetches and checks its manifest.
    pub async fn open_file(&self, cap: &Cap) -> Result<FileReader, NodeError> {
        let read = match cap {
            Cap::Literal(lit) => {
                return Ok(FileReader {
                    source: Source::Literal(Bytes::copy_from_slice(&lit.data)),
                });
            }
            Cap::Verify(_) => return Err(NodeError::VerifyCapCannotRead),
            Cap::DirWrite(_) | Cap::DirRead(_) => {
                return Err(NodeError::IsADirectory(
                    "the cap names a directory, not a file".into(),
                ));
            }
            Cap::Read(read) => read,
        };
        let manifest = self.fetch_manifest(&read.root, read.size).await?;
        let keys = manifest.chunk_keys(&read.key)?;
        self.inner.activity.opened();
        let mut start = 0u64;
        let spans = manifest
            .chunks()
            .iter()
            .zip(keys)
            .map(|(chunk, key)| {
                let span = Span {
                    start,
                    chunk: *chunk,
                    key,
                };
                start += u64::from(chunk.plain_len);
                span
            })
            .collect();
        Ok(FileReader {
            source: Source::Chunks(Arc::new(Chunked {
                inner: self.inner.clone(),
                size: manifest.file_size,
                spans,
                cache: Mutex::new(VecDeque::new()),
            })),
        })
    }
}

impl FileReader {
    /// The file's size in bytes.
    pub fn size(&self) -> u64 {
        match &self.source {
            Source::Literal(data) => data.len() as u64,
            Source::Chunks(c) => c.size,
        }
    }

    /// The file's chunks and their keys, in order (none for a literal file).
    pub(crate) fn chunk_list(&self) -> Vec<(ChunkRef, ChunkKey)> {
        match &self.source {
            Source::Literal(_) => Vec::new(),
            Source::Chunks(c) => c.spans.iter().map(|s| (s.chunk, s.key.clone())).collect(),
        }
    }

    /// How many chunks the file has (0 for a literal or empty file).
    pub fn chunk_count(&self) -> usize {
        match &self.source {
            Source::Literal(_) => 0,
            Source::Chunks(c) => c.spans.len(),
        }
    }

    /// Up to `len` bytes from `offset`: fewer only at the end of the file, none past it.
    pub async fn read_at(&self, offset: u64, len: usize) -> Result<Bytes, NodeError> {
        let (chunked, first, last, end) = match self.plan(offset, len) {
            Plan::Done(bytes) => return Ok(bytes),
            Plan::Chunks(chunked, first, last, end) => (chunked, first, last, end),
        };
        let parts: Vec<Bytes> =
            futures_util::stream::iter((first..=last).map(|i| chunked.chunk(i)))
                .buffered(FETCHES_AT_ONCE)
                .try_collect()
                .await?;
        Ok(chunked.assemble(first, parts, offset, end))
    }

    /// The bytes [`read_at`](Self::read_at) would return, if every chunk they need is already
    /// decrypted in this reader's cache; `None` when a fetch is needed (or under way). Never
    /// waits, so a caller outside the async runtime can answer at once.
    pub fn read_ready(&self, offset: u64, len: usize) -> Option<Bytes> {
        let (chunked, first, last, end) = match self.plan(offset, len) {
            Plan::Done(bytes) => return Some(bytes),
            Plan::Chunks(chunked, first, last, end) => (chunked, first, last, end),
        };
        let parts = (first..=last)
            .map(|i| chunked.ready(i))
            .collect::<Option<Vec<Bytes>>>()?;
        Some(chunked.assemble(first, parts, offset, end))
    }

    /// What a read of `len` bytes at `offset` needs.
    fn plan(&self, offset: u64, len: usize) -> Plan<'_> {
        let end = offset.saturating_add(len as u64).min(self.size());
        if offset >= end {
            return Plan::Done(Bytes::new());
        }
        match &self.source {
            Source::Literal(data) => Plan::Done(data.slice(offset as usize..end as usize)),
            Source::Chunks(chunked) => {
                let (first, last) = chunked.covering(offset, end);
                Plan::Chunks(chunked, first, last, end)
            }
        }
    }

    /// Starts fetching the chunks that overlap `offset..offset + len` in the background, so a
    /// later [`read_at`](Self::read_at) finds them cached. Errors are left for that read.
    pub fn prefetch(&self, offset: u64, len: usize) {
        let Source::Chunks(chunked) = &self.source else {
            return;
        };
        let end = offset.saturating_add(len as u64).min(chunked.size);
        if offset >= end {
            return;
        }
        let (first, last) = chunked.covering(offset, end);
        for i in first..=last.min(first + CACHED_CHUNKS / 2) {
            if chunked.started(i) {
                continue;
            }
            let chunked = chunked.clone();
            tokio::spawn(async move {
                let _ = chunked.chunk(i).await;
            });
        }
    }
}

impl Chunked {
    /// The first and last chunk indexes overlapping `offset..end` (`offset < end <= size`).
    fn covering(&self, offset: u64, end: u64) -> (usize, usize) {
        let first = self.spans.partition_point(|s| s.start <= offset) - 1;
        let last = self.spans.partition_point(|s| s.start < end) - 1;
        (first, last)
    }

    /// The decrypted chunk `i`, from the cache or the grid.
    async fn chunk(self: &Arc<Self>, i: usize) -> Result<Bytes, NodeError> {
        let cell = self.cell(i);
        let plain = cell
            .get_or_try_init(|| async {
                let span = &self.spans[i];
                self.inner
                    .chunk_plain(&span.chunk, &span.key, Keep::Later)
                    .await
            })
            .await?;
        Ok(plain.clone())
    }

    /// `offset..end` cut from `parts`, the decrypted chunks from `first` on that cover it: a
    /// view of the chunk when one covers it all (most reads), else a copy of the pieces.
    fn assemble(&self, first: usize, parts: Vec<Bytes>, offset: u64, end: u64) -> Bytes {
        let piece = |index: usize, plain: &Bytes| {
            let start = self.spans[index].start;
            let from = offset.saturating_sub(start) as usize;
            let to = ((end - start) as usize).min(plain.len());
            plain.slice(from.min(to)..to)
        };
        let out = if let [plain] = parts.as_slice() {
            piece(first, plain)
        } else {
            let mut out = BytesMut::with_capacity((end - offset) as usize);
            for (index, plain) in (first..).zip(&parts) {
                out.extend_from_slice(&piece(index, plain));
            }
            out.freeze()
        };
        self.inner.activity.read(out.len() as u64);
        out
    }

    /// Chunk `i` if it is decrypted in the cache (made most recently used).
    fn ready(&self, i: usize) -> Option<Bytes> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let at = cache.iter().position(|(j, _)| *j == i)?;
        let plain = cache[at].1.get()?.clone();
        if let Some(entry) = cache.remove(at) {
            cache.push_back(entry);
        }
        Some(plain)
    }

    /// Whether chunk `i` is cached or being fetched.
    fn started(&self, i: usize) -> bool {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.iter().any(|(j, _)| *j == i)
    }

    /// The cache cell of chunk `i`, made most recently used; a new one when absent.
    fn cell(&self, i: usize) -> Cell {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let cell = match cache.iter().position(|(j, _)| *j == i) {
            Some(at) => cache.remove(at).map(|(_, c)| c).unwrap_or_default(),
            None => Cell::default(),
        };
        cache.push_back((i, cell.clone()));
        while cache.len() > CACHED_CHUNKS {
            cache.pop_front();
        }
        cell
    }
}

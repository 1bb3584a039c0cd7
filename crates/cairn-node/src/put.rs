//! The put pipeline: a byte stream in, a readcap out.
//!
//! Stages, each bounded: a blocking thread cuts the stream into FastCDC chunks (a channel of
//! [`CHUNKS_QUEUED`]); up to [`SEALS_IN_FLIGHT`] chunks are compressed, encrypted and erasure-coded
//! at once on the blocking pool; up to [`UPLOADS_IN_FLIGHT`] chunks have their shares on the way
//! to their holders at once. Memory stays bounded by those counts times the 4 MiB chunk limit,
//! whatever the file size. The manifest is built in file order and stored last.
//!
//! Placement: the storage members ranked by rendezvous hashing of the chunk's share root; share
//! `i` goes to the `i`-th ranked member, so readers find shares without an index. Shares a holder
//! already has are not sent again (dedup). A member that fails or is full is replaced by the next
//! one in rank order, preferring members that hold no share of the chunk yet. The put fails when
//! a chunk's shares land on fewer than `happy` distinct members.
//!
//! A new version of a file that differs from the one it was opened from in a few places:
//! [`Node::put_patched`] keeps the base's chunks that the changes leave alone and chunks,
//! seals and sends only the bytes around the changes (see [`cairn_core::rechunk`]). The result
//! is the readcap a whole put of the new bytes would give.
//!
//! Many small files: [`Node::put_many`] seals each file the same way (same caps), then sends
//! the whole batch's shares with one dedup query and a few [`Request::PutShares`] per holder,
//! instead of two requests per share; each holder stores a request's shares in one commit.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cairn_core::cap::{Cap, INLINE_LIMIT, LiteralCap, ReadCap};
use cairn_core::chunk::{Chunker, KeyMode, SealedChunk, chunk_slices, seal_chunk};
use cairn_core::crypto::ChunkKey;
use cairn_core::erasure::encode_blob;
use cairn_core::id::{NodeId, ShareRoot};
use cairn_core::manifest::{ChunkRef, ManifestBuilder};
use cairn_core::rechunk::{Changes, Rechunk, Step};
use cairn_core::wire::{
    MAX_FRAME, MAX_HELD_QUERY, MAX_SHARE_BATCH, PutAnswer, Request, Response, ShareItem,
};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncRead;
use tokio::sync::mpsc;
use tokio_util::io::SyncIoBridge;

use crate::NodeError;
use crate::node::{Inner, Member, Node};
use crate::read::FileReader;

/// Raw chunks waiting to be sealed.
const CHUNKS_QUEUED: usize = 2;
/// Chunks being sealed at once (CPU bound: about the number of cores).
const SEALS_IN_FLIGHT: usize = 3;
/// Consecutive chunks placed together: each holder gets one dedup query and one batched put
/// for the group's shares, instead of one of each per chunk.
const CHUNKS_PER_GROUP: usize = 3;
/// Groups of chunks being uploaded at once.
const GROUPS_IN_FLIGHT: usize = 2;
/// The largest share a manifest may have (keeps every frame under the wire limit).
const MAX_MANIFEST_SHARE: usize = MAX_FRAME - 64 * 1024;

/// Per-call knobs of a put.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct PutOptions {
    /// Use fresh random keys instead of convergent ones: nobody can confirm the content by
    /// putting it themselves, and nothing dedups.
    pub private: bool,
    /// Keep the file's decrypted chunks and manifest in this node's block cache as they are
    /// sealed, so reading the file back here needs no grid (what a mount does with the files
    /// written through it). A block the cache cannot take is skipped, never a failed put.
    #[serde(default)]
    pub cache: bool,
}

/// What a put did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PutReport {
    /// The file's readcap (a literal cap for tiny files).
    pub cap: String,
    /// File size in bytes.
    pub size: u64,
    /// Number of chunks (without the manifest).
    pub chunks: u64,
    /// Shares sent to holders.
    pub shares_sent: u64,
    /// Shares the holders already had (not sent again).
    pub shares_already_held: u64,
    /// Share bytes sent (including to this node's own store).
    pub bytes_sent: u64,
    /// Things the user should know (e.g. fewer distinct holders than shares).
    pub warnings: Vec<String>,
}

/// The outcome of sending one share, with the share's bytes handed back for a retry.
struct Sent {
    index: u8,
    node: NodeId,
    /// The answer and the share's length.
    result: Result<(Response, u64), cairn_net::NetError>,
    data: Vec<u8>,
}

/// One chunk of a file being put, in file order.
enum Piece {
    /// Bytes to seal and send.
    New(Vec<u8>),
    /// A chunk already on the grid (from the file's base), with its key.
    Kept(ChunkRef, ChunkKey),
}

/// A [`Piece`] after sealing.
enum SealedPiece {
    New(SealedChunk),
    Kept(ChunkRef, ChunkKey),
}

#[derive(Default)]
struct PutStats {
    shares_sent: AtomicU64,
    shares_held: AtomicU64,
    bytes_sent: AtomicU64,
    crowded_chunks: AtomicU64,
}

/// The warning a put gives when some chunks' shares landed on fewer than `n` nodes.
fn crowding_warnings(stats: &PutStats, n: u8) -> Vec<String> {
    let crowded = stats.crowded_chunks.load(Ordering::Relaxed);
    if crowded == 0 {
        return Vec::new();
    }
    vec![format!(
        "{crowded} chunk(s) have shares on fewer than {n} distinct nodes (some nodes offline or full); run `cairn check` later"
    )]
}

impl Node {
    /// Stores the bytes of `reader` in the grid and returns the readcap.
    pub async fn put<R>(&self, reader: R, options: PutOptions) -> Result<PutReport, NodeError>
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        self.put_blocking(SyncIoBridge::new(reader), options).await
    }

    /// Stores the bytes of a blocking reader (a file, say) and returns the readcap. The reader
    /// is read on a blocking thread straight into the chunker, with no copy through an async
    /// buffer.
    pub async fn put_blocking<R>(
        &self,
        reader: R,
        options: PutOptions,
    ) -> Result<PutReport, NodeError>
    where
        R: std::io::Read + Send + 'static,
    {
        let pieces = Chunker::new(reader).map(|chunk| chunk.map(Piece::New));
        let report = self.put_stream(pieces, options).await?;
        self.inner.activity.put(report.size);
        Ok(report)
    }

    /// Stores a new version of the file `base` whose bytes differ from it only as `changes`
    /// says, and returns its readcap: the one [`put_blocking`](Self::put_blocking) of the whole
    /// new file would give. `open_at(offset)` reads the new file from `offset` (on a blocking
    /// thread); only the bytes around the changes are read, sealed and sent. A literal base,
    /// or a private put (whose chunks must not be the base's convergent ones), puts the whole
    /// file.
    pub async fn put_patched<F, R>(
        &self,
        base: &FileReader,
        changes: Changes,
        mut open_at: F,
        options: PutOptions,
    ) -> Result<PutReport, NodeError>
    where
        F: FnMut(u64) -> R + Send + 'static,
        R: Read + Send + 'static,
    {
        let spans = base.chunk_list();
        if spans.is_empty() || options.private {
            let len = changes.len;
            return self.put_blocking(open_at(0).take(len), options).await;
        }
        let lens: Vec<u32> = spans.iter().map(|(chunk, _)| chunk.plain_len).collect();
        let pieces = Rechunk::new(&lens, changes, open_at).map(move |step| {
            step.map(|step| match step {
                Step::Kept(i) => Piece::Kept(spans[i].0, spans[i].1.clone()),
                Step::New(chunk) => Piece::New(chunk),
            })
        });
        let report = self.put_stream(pieces, options).await?;
        self.inner.activity.put(report.size);
        Ok(report)
    }

    /// Seals and places the chunks `pieces` yields (on a blocking thread) and stores their
    /// manifest.
    async fn put_stream<I>(&self, pieces: I, options: PutOptions) -> Result<PutReport, NodeError>
    where
        I: Iterator<Item = Result<Piece, cairn_core::CoreError>> + Send + 'static,
    {
        let inner = self.inner.clone();
        let encoding = inner.grid.encoding;
        let (tx, mut rx) = mpsc::channel::<Result<Piece, NodeError>>(CHUNKS_QUEUED);
        let chunker = tokio::task::spawn_blocking(move || {
            for piece in pieces {
                let item = piece.map_err(|e| NodeError::Aborted(e.to_string()));
                let stop = item.is_err();
                if tx.blocking_send(item).is_err() || stop {
                    return;
                }
            }
        });
        // Tiny files live inside their cap. Every chunk but the last is at least MIN_CHUNK
        // long, so a first chunk that small is the whole file.
        let first = rx.recv().await.transpose()?;
        let tiny = match &first {
            None => true,
            Some(Piece::New(chunk)) => chunk.len() <= INLINE_LIMIT,
            Some(Piece::Kept(..)) => false,
        };
        if tiny {
            chunker
                .await
                .map_err(|e| NodeError::Control(e.to_string()))?;
            let data = match first {
                Some(Piece::New(chunk)) => chunk,
                _ => Vec::new(),
            };
            let size = data.len() as u64;
            return Ok(PutReport {
                cap: Cap::Literal(LiteralCap { data }).to_string(),
                size,
                chunks: 0,
                shares_sent: 0,
                shares_already_held: 0,
                bytes_sent: 0,
                warnings: vec![],
            });
        }
        let raw_chunks = futures_util::stream::iter(first.map(Ok))
            .chain(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
        let secret = inner.keys.convergence.clone();
        let sealed = raw_chunks
            .map(|piece| {
                let secret = secret.clone();
                let blocks = options.cache.then(|| inner.blocks.clone());
                async move {
                    let chunk = match piece? {
                        Piece::New(chunk) => chunk,
                        Piece::Kept(chunk, key) => return Ok(SealedPiece::Kept(chunk, key)),
                    };
                    tokio::task::spawn_blocking(move || {
                        let mode = if options.private {
                            KeyMode::Private
                        } else {
                            KeyMode::Convergent(&secret)
                        };
                        let sealed = seal_chunk(&chunk, mode, rand::random, encoding)?;
                        if let Some(blocks) = blocks {
                            keep_written(&blocks, &sealed.root, &chunk);
                        }
                        Ok::<_, NodeError>(SealedPiece::New(sealed))
                    })
                    .await
                    .map_err(|e| NodeError::Control(e.to_string()))?
                }
            })
            .buffered(SEALS_IN_FLIGHT);
        let stats = Arc::new(PutStats::default());
        let uploaded = sealed
            .chunks(CHUNKS_PER_GROUP)
            .map(|group| {
                let inner = inner.clone();
                let stats = stats.clone();
                async move {
                    let mut refs = Vec::with_capacity(group.len());
                    let mut blobs = Vec::with_capacity(group.len());
                    for sealed in group {
                        let sealed = match sealed? {
                            SealedPiece::New(sealed) => sealed,
                            SealedPiece::Kept(chunk, key) => {
                                refs.push((chunk, key));
                                continue;
                            }
                        };
                        refs.push((
                            ChunkRef {
                                root: sealed.root,
                                plain_len: sealed.plain_len,
                            },
                            sealed.key,
                        ));
                        blobs.push(BatchBlob {
                            file: 0,
                            root: sealed.root,
                            header: sealed.header.encode(),
                            shares: sealed.shares,
                        });
                    }
                    if !blobs.is_empty() {
                        let placed = inner.place_many(blobs, std::slice::from_ref(&*stats)).await;
                        placed.into_iter().try_for_each(|p| p)?;
                    }
                    Ok::<_, NodeError>(refs)
                }
            })
            .buffered(GROUPS_IN_FLIGHT);
        futures_util::pin_mut!(uploaded);
        let mut builder = ManifestBuilder::new();
        let mut size = 0u64;
        let mut chunks = 0u64;
        while let Some(group) = uploaded.next().await {
            for (chunk_ref, key) in group? {
                size += u64::from(chunk_ref.plain_len);
                chunks += 1;
                builder.push(chunk_ref, &key);
            }
        }
        chunker
            .await
            .map_err(|e| NodeError::Control(e.to_string()))?;

        let mode = if options.private {
            KeyMode::Private
        } else {
            KeyMode::Convergent(&inner.keys.convergence)
        };
        let (manifest, read_key) = builder.finish(mode, rand::random)?;
        let bytes = manifest.encode();
        let (header, shares) = encode_blob(&bytes, encoding)?;
        if header.share_len() > MAX_MANIFEST_SHARE {
            return Err(NodeError::TooLarge {
                needed: header.share_len(),
                limit: MAX_MANIFEST_SHARE,
            });
        }
        let root = header.root();
        // Manifests are small: always kept, so the file opens here without the grid (a file
        // held open in a mount patches the version it just stored).
        keep_written(&inner.blocks, &root, &bytes);
        let manifest_blob = BatchBlob {
            file: 0,
            root,
            header: header.encode(),
            shares,
        };
        let placed = inner
            .place_many(vec![manifest_blob], std::slice::from_ref(&*stats))
            .await;
        placed.into_iter().try_for_each(|p| p)?;
        let cap = Cap::Read(ReadCap {
            root,
            key: read_key,
            size,
        });
        let warnings = crowding_warnings(&stats, encoding.n);
        Ok(PutReport {
            cap: cap.to_string(),
            size,
            chunks,
            shares_sent: stats.shares_sent.load(Ordering::Relaxed),
            shares_already_held: stats.shares_held.load(Ordering::Relaxed),
            bytes_sent: stats.bytes_sent.load(Ordering::Relaxed),
            warnings,
        })
    }
}

impl Inner {
    /// Places the shares whose primary holder failed: the next members in rank order, one
    /// share at a time, preferring members that hold nothing of this chunk yet. Then checks
    /// that the shares landed on at least `happy` distinct members.
    #[allow(clippy::too_many_arguments)]
    async fn place_rest(
        self: &Arc<Self>,
        root: ShareRoot,
        header: &[u8],
        mut shares: Vec<Vec<u8>>,
        ranked: &[Member],
        placed: &mut [Option<NodeId>],
        failed: &mut HashSet<NodeId>,
        stats: &PutStats,
    ) -> Result<(), NodeError> {
        let happy = usize::from(self.grid.encoding.happy);
        let n = shares.len();
        for i in 0..n {
            if placed[i].is_some() {
                continue;
            }
            loop {
                let holding: BTreeSet<NodeId> = placed.iter().flatten().copied().collect();
                let candidate = ranked
                    .iter()
                    .filter(|m| !failed.contains(&m.id))
                    .min_by_key(|m| holding.contains(&m.id));
                let Some(member) = candidate.cloned() else {
                    break;
                };
                let data = std::mem::take(&mut shares[i]);
                let sent = self
                    .send_share(member, root, i as u8, header.to_vec(), data)
                    .await;
                if account(sent, &mut shares, placed, failed, stats) {
                    break;
                }
            }
        }

        let holders: BTreeSet<NodeId> = placed.iter().flatten().copied().collect();
        if holders.len() < happy {
            return Err(NodeError::NotHappy {
                root,
                placed: holders.len(),
                happy,
            });
        }
        if holders.len() < n || placed.iter().any(Option::is_none) {
            stats.crowded_chunks.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn send_share(
        self: &Arc<Self>,
        member: Member,
        root: ShareRoot,
        index: u8,
        header: Vec<u8>,
        data: Vec<u8>,
    ) -> Sent {
        let len = data.len() as u64;
        let request = Request::PutShare {
            root,
            index,
            header,
            lease: self.lease(),
            data,
        };
        let result = self.request(&member, &request).await.map(|r| (r, len));
        let data = match request {
            Request::PutShare { data, .. } => data,
            _ => Vec::new(),
        };
        Sent {
            index,
            node: member.id,
            result,
            data,
        }
    }
}

/// Records one send's outcome and takes the share's bytes back; true when the share is placed.
fn account(
    sent: Sent,
    shares: &mut [Vec<u8>],
    placed: &mut [Option<NodeId>],
    failed: &mut HashSet<NodeId>,
    stats: &PutStats,
) -> bool {
    let (idx, id) = (usize::from(sent.index), sent.node);
    shares[idx] = sent.data;
    match sent.result {
        Ok((Response::Stored { already }, len)) => {
            placed[idx] = Some(id);
            if already {
                stats.shares_held.fetch_add(1, Ordering::Relaxed);
            } else {
                stats.shares_sent.fetch_add(1, Ordering::Relaxed);
                stats.bytes_sent.fetch_add(len, Ordering::Relaxed);
            }
            true
        }
        Ok((other, _)) => {
            tracing::debug!(peer = %id.fmt_short(), answer = ?other, "share not stored");
            failed.insert(id);
            false
        }
        Err(e) => {
            tracing::debug!(peer = %id.fmt_short(), error = %e, "share not sent");
            failed.insert(id);
            false
        }
    }
}

/// Blobs of a batch whose missing shares are placed at once, the single-share way.
const PLACEMENTS_AT_ONCE: usize = 16;
/// The most share bytes one batched request carries (well under the frame limit).
const BATCH_BYTES: usize = 8 * 1024 * 1024;

/// One blob (a chunk or a manifest) of a file in a [`Node::put_many`] batch.
struct BatchBlob {
    file: usize,
    root: ShareRoot,
    header: Vec<u8>,
    shares: Vec<Vec<u8>>,
}

/// A file of a batch, sealed and ready to place.
struct Sealed {
    size: u64,
    chunks: u64,
    cap: String,
}

/// Puts a block just written in the block cache (see [`PutOptions::cache`]).
fn keep_written(blocks: &crate::blocks::BlockCache, root: &ShareRoot, plain: &[u8]) {
    if let Err(e) = blocks.put(root, plain) {
        tracing::debug!(error = %e, "could not cache a block written here");
    }
}

/// Seals one file held in memory: its chunks, then its manifest, as [`Node::put`] would.
fn seal_file(
    data: &[u8],
    file: usize,
    options: PutOptions,
    blocks: &crate::blocks::BlockCache,
    secret: &cairn_core::crypto::ConvergenceSecret,
    encoding: cairn_core::Encoding,
    blobs: &mut Vec<BatchBlob>,
) -> Result<Sealed, NodeError> {
    if data.len() <= INLINE_LIMIT {
        return Ok(Sealed {
            size: data.len() as u64,
            chunks: 0,
            cap: Cap::Literal(LiteralCap {
                data: data.to_vec(),
            })
            .to_string(),
        });
    }
    let mode = || {
        if options.private {
            KeyMode::Private
        } else {
            KeyMode::Convergent(secret)
        }
    };
    let mut builder = ManifestBuilder::new();
    let mut chunks = 0u64;
    let first = blobs.len();
    for chunk in chunk_slices(data) {
        let sealed = seal_chunk(chunk, mode(), rand::random, encoding)?;
        if options.cache {
            keep_written(blocks, &sealed.root, chunk);
        }
        builder.push(
            ChunkRef {
                root: sealed.root,
                plain_len: sealed.plain_len,
            },
            &sealed.key,
        );
        chunks += 1;
        blobs.push(BatchBlob {
            file,
            root: sealed.root,
            header: sealed.header.encode(),
            shares: sealed.shares,
        });
    }
    let result = (|| {
        let (manifest, read_key) = builder.finish(mode(), rand::random)?;
        let bytes = manifest.encode();
        let (header, shares) = encode_blob(&bytes, encoding)?;
        if header.share_len() > MAX_MANIFEST_SHARE {
            return Err(NodeError::TooLarge {
                needed: header.share_len(),
                limit: MAX_MANIFEST_SHARE,
            });
        }
        let root = header.root();
        if options.cache {
            keep_written(blocks, &root, &bytes);
        }
        blobs.push(BatchBlob {
            file,
            root,
            header: header.encode(),
            shares,
        });
        Ok(Cap::Read(ReadCap {
            root,
            key: read_key,
            size: data.len() as u64,
        })
        .to_string())
    })();
    match result {
        Ok(cap) => Ok(Sealed {
            size: data.len() as u64,
            chunks,
            cap,
        }),
        Err(e) => {
            blobs.truncate(first);
            Err(e)
        }
    }
}

impl Node {
    /// Stores many files held in memory (small ones: the caller bounds the batch) and returns
    /// one result per file, in order. Each file is sealed exactly as [`Node::put`] seals it, so
    /// it gets the same cap; the shares of the whole batch travel to each holder in a few
    /// batched requests ([`Request::HeldShares`], [`Request::PutShares`]), each holder storing a
    /// request's shares in one commit. A share whose primary holder fails goes to the next
    /// member in rank order, as in a single put, and each file fails on its own when one of its
    /// blobs lands on fewer than `happy` distinct members.
    pub async fn put_many(
        &self,
        files: Vec<Vec<u8>>,
        options: PutOptions,
    ) -> Vec<Result<PutReport, NodeError>> {
        let inner = self.inner.clone();
        let count = files.len();
        let secret = inner.keys.convergence.clone();
        let encoding = inner.grid.encoding;
        let blocks = inner.blocks.clone();
        let sealed = tokio::task::spawn_blocking(move || {
            let mut blobs = Vec::new();
            let sealed: Vec<Result<Sealed, NodeError>> = files
                .iter()
                .enumerate()
                .map(|(i, data)| {
                    seal_file(data, i, options, &blocks, &secret, encoding, &mut blobs)
                })
                .collect();
            (sealed, blobs)
        })
        .await;
        let (sealed, blobs) = match sealed {
            Ok(s) => s,
            Err(e) => {
                return (0..count)
                    .map(|_| Err(NodeError::Control(e.to_string())))
                    .collect();
            }
        };
        let stats: Vec<PutStats> = (0..count).map(|_| PutStats::default()).collect();
        let placed = inner.place_many(blobs, &stats).await;
        sealed
            .into_iter()
            .zip(placed)
            .zip(stats)
            .map(|((sealed, placed), stats)| {
                let sealed = sealed?;
                placed?;
                inner.activity.put(sealed.size);
                let warnings = crowding_warnings(&stats, encoding.n);
                Ok(PutReport {
                    cap: sealed.cap,
                    size: sealed.size,
                    chunks: sealed.chunks,
                    shares_sent: stats.shares_sent.load(Ordering::Relaxed),
                    shares_already_held: stats.shares_held.load(Ordering::Relaxed),
                    bytes_sent: stats.bytes_sent.load(Ordering::Relaxed),
                    warnings,
                })
            })
            .collect()
    }
}

impl Inner {
    /// Places the shares of many blobs: per holder, one batched dedup query and batched puts
    /// for the shares it is the primary holder of; then, blob by blob, what is still missing
    /// goes the single-share way. Returns, per file, whether all its blobs are placed.
    async fn place_many(
        self: &Arc<Self>,
        mut blobs: Vec<BatchBlob>,
        stats: &[PutStats],
    ) -> Vec<Result<(), NodeError>> {
        let mut results: Vec<Result<(), NodeError>> = stats.iter().map(|_| Ok(())).collect();
        // Rank once per blob; members that failed a moment ago go last.
        let ranked: Vec<Vec<Member>> = blobs
            .iter()
            .map(|b| {
                let mut r = self.ranked(&b.root);
                r.sort_by_key(|m| self.health_of(&m.id).recently_failed());
                r
            })
            .collect();
        let mut members: BTreeMap<NodeId, Member> = BTreeMap::new();
        // Per member: the (blob, share index) pairs it is the primary holder of.
        let mut primary: BTreeMap<NodeId, Vec<(usize, usize)>> = BTreeMap::new();
        for (b, r) in ranked.iter().enumerate() {
            if r.is_empty() {
                continue;
            }
            for i in 0..blobs[b].shares.len() {
                let m = &r[i % r.len()];
                members.entry(m.id).or_insert_with(|| m.clone());
                primary.entry(m.id).or_default().push((b, i));
            }
        }

        // Which of their shares do the primary holders already have?
        let held = futures_util::future::join_all(primary.iter().map(|(id, list)| {
            let member = members[id].clone();
            let mut roots: Vec<ShareRoot> = list.iter().map(|&(b, _)| blobs[b].root).collect();
            roots.sort_unstable();
            roots.dedup();
            async move {
                let mut have: HashSet<(ShareRoot, u8)> = HashSet::new();
                for part in roots.chunks(MAX_HELD_QUERY) {
                    let request = Request::HeldShares {
                        roots: part.to_vec(),
                    };
                    match self.request(&member, &request).await {
                        Ok(Response::Held(held)) if held.len() == part.len() => {
                            for (root, indices) in part.iter().zip(held) {
                                have.extend(indices.into_iter().map(|i| (*root, i)));
                            }
                        }
                        _ => return (member.id, None),
                    }
                }
                (member.id, Some(have))
            }
        }))
        .await;

        let mut placed: Vec<Vec<Option<NodeId>>> =
            blobs.iter().map(|b| vec![None; b.shares.len()]).collect();
        let mut failed: HashSet<NodeId> = HashSet::new();
        // Per member, the batched requests to send: (blob, index) pairs, bounded in count
        // and bytes.
        let mut sends: Vec<(NodeId, Vec<(usize, usize)>)> = Vec::new();
        for (id, have) in held {
            let Some(have) = have else {
                failed.insert(id);
                continue;
            };
            let mut batch: Vec<(usize, usize)> = Vec::new();
            let mut bytes = 0usize;
            for &(b, i) in &primary[&id] {
                // A holder's claim counts only for the share it is the primary holder of.
                if have.contains(&(blobs[b].root, i as u8)) {
                    placed[b][i] = Some(id);
                    stats[blobs[b].file]
                        .shares_held
                        .fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let len = blobs[b].shares[i].len() + blobs[b].header.len();
                if !batch.is_empty()
                    && (batch.len() == MAX_SHARE_BATCH || bytes + len > BATCH_BYTES)
                {
                    sends.push((id, std::mem::take(&mut batch)));
                    bytes = 0;
                }
                batch.push((b, i));
                bytes += len;
            }
            if !batch.is_empty() {
                sends.push((id, batch));
            }
        }
        let lease = self.lease();
        // The shares' bytes move into the requests and come back with the answers.
        let requests: Vec<_> = sends
            .into_iter()
            .map(|(id, batch)| {
                let shares = batch
                    .iter()
                    .map(|&(b, i)| ShareItem {
                        root: blobs[b].root,
                        index: i as u8,
                        header: blobs[b].header.clone(),
                        data: std::mem::take(&mut blobs[b].shares[i]),
                    })
                    .collect();
                (id, batch, Request::PutShares { lease, shares })
            })
            .collect();
        let answers =
            futures_util::future::join_all(requests.into_iter().map(|(id, batch, request)| {
                let member = members[&id].clone();
                async move {
                    let answer = self.request(&member, &request).await;
                    (id, batch, request, answer)
                }
            }))
            .await;
        for (id, batch, request, answer) in answers {
            if let Request::PutShares { shares, .. } = request {
                for (&(b, i), item) in batch.iter().zip(shares) {
                    blobs[b].shares[i] = item.data;
                }
            }
            match answer {
                Ok(Response::StoredMany(list)) if list.len() == batch.len() => {
                    for ((b, i), answer) in batch.into_iter().zip(list) {
                        let stats = &stats[blobs[b].file];
                        match answer {
                            PutAnswer::Stored { already } => {
                                placed[b][i] = Some(id);
                                if already {
                                    stats.shares_held.fetch_add(1, Ordering::Relaxed);
                                } else {
                                    stats.shares_sent.fetch_add(1, Ordering::Relaxed);
                                    stats.bytes_sent.fetch_add(
                                        blobs[b].shares[i].len() as u64,
                                        Ordering::Relaxed,
                                    );
                                }
                            }
                            PutAnswer::Refused(why) => {
                                tracing::debug!(peer = %id.fmt_short(), %why, "share not stored");
                                failed.insert(id);
                            }
                        }
                    }
                }
                Ok(other) => {
                    tracing::debug!(peer = %id.fmt_short(), answer = ?other, "shares not stored");
                    failed.insert(id);
                }
                Err(e) => {
                    tracing::debug!(peer = %id.fmt_short(), error = %e, "shares not sent");
                    failed.insert(id);
                }
            }
        }

        // Blob by blob: the shares still missing, then the `happy` check.
        let happy = usize::from(self.grid.encoding.happy);
        let jobs = blobs
            .into_iter()
            .zip(ranked)
            .zip(placed)
            .map(|((blob, ranked), mut placed)| {
                let mut failed = failed.clone();
                async move {
                    let outcome = if ranked.is_empty() {
                        Err(NodeError::NotHappy {
                            root: blob.root,
                            placed: 0,
                            happy,
                        })
                    } else {
                        self.place_rest(
                            blob.root,
                            &blob.header,
                            blob.shares,
                            &ranked,
                            &mut placed,
                            &mut failed,
                            &stats[blob.file],
                        )
                        .await
                    };
                    (blob.file, outcome)
                }
            });
        let mut outcomes = futures_util::stream::iter(jobs).buffer_unordered(PLACEMENTS_AT_ONCE);
        while let Some((file, outcome)) = outcomes.next().await {
            if let Err(e) = outcome
                && results[file].is_ok()
            {
                results[file] = Err(e);
            }
        }
        results
    }
}

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

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cairn_core::cap::{Cap, INLINE_LIMIT, LiteralCap, ReadCap};
use cairn_core::chunk::{Chunker, KeyMode, seal_chunk};
use cairn_core::erasure::encode_blob;
use cairn_core::id::{NodeId, ShareRoot};
use cairn_core::manifest::{ChunkRef, ManifestBuilder};
use cairn_core::wire::{MAX_FRAME, Request, Response};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio_util::io::SyncIoBridge;

use crate::NodeError;
use crate::node::{Inner, Member, Node};

/// Raw chunks waiting to be sealed.
const CHUNKS_QUEUED: usize = 2;
/// Chunks being sealed at once (CPU bound: about the number of cores).
const SEALS_IN_FLIGHT: usize = 3;
/// Chunks whose shares are being uploaded at once.
const UPLOADS_IN_FLIGHT: usize = 4;
/// The largest share a manifest may have (keeps every frame under the wire limit).
const MAX_MANIFEST_SHARE: usize = MAX_FRAME - 64 * 1024;

/// Per-call knobs of a put.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct PutOptions {
    /// Use fresh random keys instead of convergent ones: nobody can confirm the content by
    /// putting it themselves, and nothing dedups.
    pub private: bool,
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

#[derive(Default)]
struct PutStats {
    shares_sent: AtomicU64,
    shares_held: AtomicU64,
    bytes_sent: AtomicU64,
    crowded_chunks: AtomicU64,
}

impl Node {
    /// Stores the bytes of `reader` in the grid and returns the readcap.
    pub async fn put<R>(&self, mut reader: R, options: PutOptions) -> Result<PutReport, NodeError>
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        // Tiny files live inside their cap.
        let mut head = Vec::with_capacity(INLINE_LIMIT + 1);
        while head.len() <= INLINE_LIMIT {
            let mut buf = [0u8; INLINE_LIMIT + 1];
            let want = INLINE_LIMIT + 1 - head.len();
            let got = reader
                .read(&mut buf[..want])
                .await
                .map_err(|e| NodeError::Aborted(e.to_string()))?;
            if got == 0 {
                let size = head.len() as u64;
                return Ok(PutReport {
                    cap: Cap::Literal(LiteralCap { data: head }).to_string(),
                    size,
                    chunks: 0,
                    shares_sent: 0,
                    shares_already_held: 0,
                    bytes_sent: 0,
                    warnings: vec![],
                });
            }
            head.extend_from_slice(&buf[..got]);
        }
        let reader = std::io::Cursor::new(head).chain(reader);
        self.put_stream(reader, options).await
    }

    async fn put_stream<R>(&self, reader: R, options: PutOptions) -> Result<PutReport, NodeError>
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        let inner = self.inner.clone();
        let encoding = inner.grid.encoding;
        let (tx, mut rx) = mpsc::channel::<Result<Vec<u8>, NodeError>>(CHUNKS_QUEUED);
        let chunker = tokio::task::spawn_blocking(move || {
            for chunk in Chunker::new(SyncIoBridge::new(reader)) {
                let item = chunk.map_err(|e| NodeError::Aborted(e.to_string()));
                let stop = item.is_err();
                if tx.blocking_send(item).is_err() || stop {
                    return;
                }
            }
        });
        let raw_chunks = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let secret = inner.keys.convergence.clone();
        let sealed = raw_chunks
            .map(|chunk| {
                let secret = secret.clone();
                async move {
                    let chunk = chunk?;
                    tokio::task::spawn_blocking(move || {
                        let mode = if options.private {
                            KeyMode::Private
                        } else {
                            KeyMode::Convergent(&secret)
                        };
                        seal_chunk(&chunk, mode, rand::random, encoding)
                    })
                    .await
                    .map_err(|e| NodeError::Control(e.to_string()))?
                    .map_err(NodeError::from)
                }
            })
            .buffered(SEALS_IN_FLIGHT);
        let stats = Arc::new(PutStats::default());
        let uploaded = sealed
            .map(|sealed| {
                let inner = inner.clone();
                let stats = stats.clone();
                async move {
                    let sealed = sealed?;
                    let header = sealed.header.encode();
                    inner
                        .place_shares(sealed.root, header, sealed.shares, &stats)
                        .await?;
                    Ok::<_, NodeError>((
                        ChunkRef {
                            root: sealed.root,
                            plain_len: sealed.plain_len,
                        },
                        sealed.key,
                    ))
                }
            })
            .buffered(UPLOADS_IN_FLIGHT);
        futures_util::pin_mut!(uploaded);
        let mut builder = ManifestBuilder::new();
        let mut size = 0u64;
        let mut chunks = 0u64;
        while let Some(item) = uploaded.next().await {
            let (chunk_ref, key) = item?;
            size += u64::from(chunk_ref.plain_len);
            chunks += 1;
            builder.push(chunk_ref, &key);
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
        inner
            .place_shares(root, header.encode(), shares, &stats)
            .await?;
        let cap = Cap::Read(ReadCap {
            root,
            key: read_key,
            size,
        });
        let mut warnings = Vec::new();
        let crowded = stats.crowded_chunks.load(Ordering::Relaxed);
        if crowded > 0 {
            warnings.push(format!(
                "{crowded} chunk(s) have shares on fewer than {} distinct nodes (some nodes offline or full); run `cairn check` later",
                encoding.n
            ));
        }
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
    /// Sends the `n` shares of one chunk to their holders (see the module docs).
    async fn place_shares(
        self: &Arc<Self>,
        root: ShareRoot,
        header: Vec<u8>,
        mut shares: Vec<Vec<u8>>,
        stats: &PutStats,
    ) -> Result<(), NodeError> {
        let happy = usize::from(self.grid.encoding.happy);
        let n = shares.len();
        let mut ranked = self.ranked(&root);
        // Members that failed a moment ago go last (stable: rank order is kept otherwise).
        ranked.sort_by_key(|m| self.health_of(&m.id).recently_failed());
        if ranked.is_empty() {
            return Err(NodeError::NotHappy {
                root,
                placed: 0,
                happy,
            });
        }
        let primaries: Vec<Member> = (0..n).map(|i| ranked[i % ranked.len()].clone()).collect();

        // Which shares do the primary holders already have?
        let distinct: Vec<Member> = {
            let mut seen = HashSet::new();
            primaries
                .iter()
                .filter(|m| seen.insert(m.id))
                .cloned()
                .collect()
        };
        let mut held_queries: FuturesUnordered<_> = distinct
            .iter()
            .map(|m| {
                let inner = self.clone();
                let m = m.clone();
                async move {
                    let r = inner
                        .request(&m, &Request::HeldShares { roots: vec![root] })
                        .await;
                    (m.id, r)
                }
            })
            .collect();
        let mut already: HashSet<(NodeId, u8)> = HashSet::new();
        let mut failed: HashSet<NodeId> = HashSet::new();
        while let Some((id, result)) = held_queries.next().await {
            match result {
                Ok(Response::Held(held)) => {
                    for idx in held.into_iter().next().unwrap_or_default() {
                        already.insert((id, idx));
                    }
                }
                _ => {
                    failed.insert(id);
                }
            }
        }

        let mut placed: Vec<Option<NodeId>> = vec![None; n];
        let mut sends = FuturesUnordered::new();
        for (i, member) in primaries.iter().enumerate() {
            let idx = i as u8;
            // A holder's claim to hold a share counts only for the share it is the primary
            // holder of: a member claiming everything must not stand in for the others.
            if already.contains(&(member.id, idx)) {
                placed[i] = Some(member.id);
                stats.shares_held.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if failed.contains(&member.id) {
                continue;
            }
            // The share's bytes move into the request and come back with the answer.
            let data = std::mem::take(&mut shares[i]);
            sends.push(self.send_share(member.clone(), root, idx, header.clone(), data));
        }
        while let Some(sent) = sends.next().await {
            account(sent, &mut shares, &mut placed, &mut failed, stats);
        }

        // Shares whose primary failed: the next members in rank order, one share at a time,
        // preferring members that hold nothing of this chunk yet.
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
                    .send_share(member, root, i as u8, header.clone(), data)
                    .await;
                if account(sent, &mut shares, &mut placed, &mut failed, stats) {
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

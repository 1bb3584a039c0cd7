//! The get pipeline: a cap in, the file's bytes out, every share verified before use.
//!
//! For each chunk, the reader asks the holders where placement put the shares (rendezvous
//! rank), `k` at once, preferring systematic shares (no decode needed) on members that answered
//! fast before. Each answer is checked: the header against the share root, the share against its
//! hash in the header. A holder that errs, lacks the share or sends a bad one is replaced by the
//! next candidate; one that is slow is hedged: after a delay derived from the fastest holders'
//! latency another holder is asked too, and the first `k` good shares win. When the ranked
//! holders run out, every storage member is asked which shares it holds. Up to
//! [`CHUNKS_AHEAD`] chunks are fetched ahead of the output, in order.
//!
//! Many small files: [`Node::get_many`] asks each holder for all the shares it wants from it
//! in one [`Request::GetShares`] (manifests first, then chunks), verifies them the same way,
//! and falls back to the single-blob fetch for any blob that came back short.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use cairn_core::cap::Cap;
use cairn_core::chunk::{MIN_CHUNK, open_chunk};
use cairn_core::erasure::{ChunkHeader, decode_blob, verify_header};
use cairn_core::id::{NodeId, ShareRoot};
use cairn_core::manifest::Manifest;
use cairn_core::wire::{MAX_SHARE_BATCH, Request, Response};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::NodeError;
use crate::blocks::Keep;
use crate::node::{Inner, Member, Node};

/// Chunks fetched ahead of the writer.
const CHUNKS_AHEAD: usize = 8;
/// The share bytes one batched request asks a holder for (well under the frame limit).
const BATCH_ANSWER_BYTES: u64 = 8 * 1024 * 1024;
/// Blobs of a batch fetched alone at once, when the batched requests did not bring them.
const FALLBACKS_AT_ONCE: usize = 16;

/// What a get did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct GetReport {
    /// Bytes written.
    pub size: u64,
    /// Chunks fetched.
    pub chunks: u64,
}

/// Shares fetched for one blob, verified against its root.
pub(crate) struct Fetched {
    pub(crate) header: ChunkHeader,
    pub(crate) shares: Vec<(u8, Vec<u8>)>,
}

impl Node {
    /// Writes the file named by `cap` to `out`. Fails before writing anything when the
    /// manifest cannot be fetched; a chunk that cannot be fetched fails the get midway (the
    /// caller discards partial output).
    pub async fn get<W>(&self, cap: &Cap, out: &mut W) -> Result<GetReport, NodeError>
    where
        W: AsyncWrite + Unpin + Send,
    {
        let read = match cap {
            Cap::Literal(lit) => {
                out.write_all(&lit.data)
                    .await
                    .map_err(|e| NodeError::Aborted(e.to_string()))?;
                return Ok(GetReport {
                    size: lit.data.len() as u64,
                    chunks: 0,
                });
            }
            Cap::Verify(_) => return Err(NodeError::VerifyCapCannotRead),
            Cap::DirWrite(_) | Cap::DirRead(_) => {
                return Err(NodeError::IsADirectory(
                    "the cap names a directory (use `cairn ls`)".into(),
                ));
            }
            Cap::Read(read) => read.clone(),
        };
        let manifest = self.fetch_manifest(&read.root, read.size).await?;
        let keys = manifest.chunk_keys(&read.key)?;
        let inner = self.inner.clone();
        let jobs = manifest
            .chunks()
            .iter()
            .copied()
            .zip(keys)
            .map(|(chunk, key)| {
                let inner = inner.clone();
                async move { inner.chunk_plain(&chunk, &key, Keep::Not).await }
            });
        let mut stream = futures_util::stream::iter(jobs).buffered(CHUNKS_AHEAD);
        let mut report = GetReport::default();
        while let Some(plain) = stream.next().await {
            let plain = plain?;
            out.write_all(&plain)
                .await
                .map_err(|e| NodeError::Aborted(e.to_string()))?;
            report.size += plain.len() as u64;
            report.chunks += 1;
        }
        out.flush()
            .await
            .map_err(|e| NodeError::Aborted(e.to_string()))?;
        self.inner.activity.opened();
        self.inner.activity.read(report.size);
        Ok(report)
    }

    /// Fetches and checks a file's manifest (needs only the share root: a verify cap will do).
    pub(crate) async fn fetch_manifest(
        &self,
        root: &ShareRoot,
        size: u64,
    ) -> Result<Manifest, NodeError> {
        self.fetch_manifest_keeping(root, size, Keep::Later).await
    }

    /// [`fetch_manifest`](Self::fetch_manifest), caching it as `keep` says.
    pub(crate) async fn fetch_manifest_keeping(
        &self,
        root: &ShareRoot,
        size: u64,
        keep: Keep,
    ) -> Result<Manifest, NodeError> {
        let bytes = match self.inner.cached_block(root).await? {
            Some(bytes) => bytes,
            None => {
                let fetched = self.inner.fetch_blob(root).await?;
                let bytes = tokio::task::spawn_blocking(move || {
                    decode_blob(&fetched.header, fetched.shares)
                })
                .await
                .map_err(|e| NodeError::Control(e.to_string()))??;
                let bytes = bytes::Bytes::from(bytes);
                // Manifests are small: always kept, so a file read once opens without the grid.
                self.inner.keep_block(*root, bytes.clone(), keep).await?;
                bytes
            }
        };
        let manifest = Manifest::decode(&bytes)?;
        if manifest.file_size != size {
            return Err(NodeError::SizeMismatch {
                expected: size,
                got: manifest.file_size,
            });
        }
        Ok(manifest)
    }
}

struct Attempt {
    member: Member,
    index: u8,
}

impl Inner {
    /// The hedge delay: a little more than the fastest known holders take.
    fn hedge_delay(&self, candidates: &[Member]) -> Duration {
        let mut latencies: Vec<f64> = candidates
            .iter()
            .filter_map(|m| self.health_of(&m.id).latency)
            .collect();
        latencies.sort_by(f64::total_cmp);
        match latencies.first() {
            Some(best) => Duration::from_secs_f64((best * 3.0 + 0.02).clamp(0.03, 2.0)),
            None => Duration::from_millis(500),
        }
    }

    /// Fetches `k` verified shares of the blob at `root` (see the module docs).
    pub(crate) async fn fetch_blob(
        self: &Arc<Self>,
        root: &ShareRoot,
    ) -> Result<Fetched, NodeError> {
        let root = *root;
        let ranked = self.ranked(&root);
        let mut need = usize::from(self.grid.encoding.k);
        let hedge = self.hedge_delay(&ranked);

        // Position i of the rank holds share i. Order the positions: healthy and fast holders
        // first, systematic shares before parity ones.
        let fastest = ranked
            .iter()
            .filter_map(|m| self.health_of(&m.id).latency)
            .fold(f64::INFINITY, f64::min);
        let n = usize::from(self.grid.encoding.n).min(ranked.len());
        let mut positions: Vec<(usize, Member)> =
            ranked.iter().take(n).cloned().enumerate().collect();
        positions.sort_by_key(|(i, m)| {
            let h = self.health_of(&m.id);
            let slow = h.latency.is_some_and(|l| l > fastest * 2.0 + 0.01);
            (
                h.recently_failed() || h.bad_shares > 0,
                slow,
                *i >= need,
                *i,
            )
        });
        let mut queue: VecDeque<Attempt> = positions
            .into_iter()
            .map(|(i, member)| Attempt {
                member,
                index: i as u8,
            })
            .collect();

        let mut header: Option<ChunkHeader> = None;
        let mut got: BTreeMap<u8, Vec<u8>> = BTreeMap::new();
        let mut tried: HashSet<(NodeId, u8)> = HashSet::new();
        let mut bad: HashSet<NodeId> = HashSet::new();
        let mut discovered = false;
        let mut inflight = FuturesUnordered::new();

        loop {
            // Keep enough requests in flight to finish.
            while inflight.len() + got.len() < need {
                let Some(a) = next_attempt(&mut queue, &got, &tried, &bad) else {
                    break;
                };
                tried.insert((a.member.id, a.index));
                inflight.push(self.clone().ask_share(a, root));
            }
            if inflight.is_empty() {
                if got.len() >= need {
                    break;
                }
                if !discovered {
                    // Ask everyone, after refreshing the roster: a member that joined moments
                    // ago may hold shares this node has not heard of yet.
                    discovered = true;
                    self.gossip_round().await;
                    queue.extend(self.discover(root, &got).await);
                    continue;
                }
                return Err(NodeError::NotEnoughShares {
                    root,
                    found: got.len(),
                    need,
                });
            }
            let next = tokio::time::timeout(hedge, inflight.next()).await;
            let Ok(Some((attempt, result))) = next else {
                // Slow holders: ask one more.
                if let Some(a) = next_attempt(&mut queue, &got, &tried, &bad) {
                    tried.insert((a.member.id, a.index));
                    inflight.push(self.clone().ask_share(a, root));
                }
                continue;
            };
            let Some((hbytes, data)) = result else {
                continue;
            };
            let h = match &header {
                Some(h) => h,
                None => match verify_header(&root, &hbytes) {
                    Ok(h) => {
                        need = usize::from(h.k);
                        header.insert(h)
                    }
                    Err(_) => {
                        self.note_bad_share(attempt.member.id);
                        bad.insert(attempt.member.id);
                        continue;
                    }
                },
            };
            if h.verify_share(attempt.index, &data).is_err() {
                self.note_bad_share(attempt.member.id);
                bad.insert(attempt.member.id);
                continue;
            }
            got.insert(attempt.index, data);
            if got.len() >= need {
                break;
            }
        }
        let header = header.ok_or(NodeError::NotEnoughShares {
            root,
            found: 0,
            need,
        })?;
        Ok(Fetched {
            header,
            shares: got.into_iter().take(need).collect(),
        })
    }

    async fn ask_share(
        self: Arc<Self>,
        attempt: Attempt,
        root: ShareRoot,
    ) -> (Attempt, Option<(Vec<u8>, Vec<u8>)>) {
        let request = Request::GetShare {
            root,
            index: attempt.index,
            range: None,
        };
        let answer = match self.request(&attempt.member, &request).await {
            Ok(Response::Share { header, data }) => Some((header, data)),
            _ => None,
        };
        (attempt, answer)
    }

    /// Asks every storage member which shares of `root` it holds.
    async fn discover(
        self: &Arc<Self>,
        root: ShareRoot,
        got: &BTreeMap<u8, Vec<u8>>,
    ) -> Vec<Attempt> {
        let members = self.ranked(&root);
        let mut asks: FuturesUnordered<_> = members
            .into_iter()
            .map(|m| {
                let inner = self.clone();
                async move {
                    let r = inner
                        .request(&m, &Request::HeldShares { roots: vec![root] })
                        .await;
                    (m, r)
                }
            })
            .collect();
        let mut found = Vec::new();
        while let Some((member, result)) = asks.next().await {
            if let Ok(Response::Held(held)) = result {
                for index in held.into_iter().next().unwrap_or_default() {
                    if !got.contains_key(&index) {
                        found.push(Attempt {
                            member: member.clone(),
                            index,
                        });
                    }
                }
            }
        }
        found
    }
}

fn next_attempt(
    queue: &mut VecDeque<Attempt>,
    got: &BTreeMap<u8, Vec<u8>>,
    tried: &HashSet<(NodeId, u8)>,
    bad: &HashSet<NodeId>,
) -> Option<Attempt> {
    while let Some(a) = queue.pop_front() {
        if !got.contains_key(&a.index)
            && !tried.contains(&(a.member.id, a.index))
            && !bad.contains(&a.member.id)
        {
            return Some(a);
        }
    }
    None
}

impl Node {
    /// Fetches many files whole (small ones: the caller bounds the batch) and returns one
    /// result per cap, in order. Manifests first, then chunks: for each blob the reader asks
    /// the first `k` holders placement names (healthy ones first), batching the shares it
    /// wants from one holder into one [`Request::GetShares`]. Every share is verified against
    /// its root as in [`Node::get`]; a blob that does not get `k` good shares this way is
    /// fetched alone, with the hedging and discovery of a single get.
    pub async fn get_many(&self, caps: &[Cap]) -> Vec<Result<Vec<u8>, NodeError>> {
        let mut results: Vec<Option<Result<Vec<u8>, NodeError>>> = Vec::new();
        let mut reads = Vec::new();
        for (i, cap) in caps.iter().enumerate() {
            results.push(match cap {
                Cap::Literal(lit) => Some(Ok(lit.data.clone())),
                Cap::Verify(_) => Some(Err(NodeError::VerifyCapCannotRead)),
                Cap::DirWrite(_) | Cap::DirRead(_) => Some(Err(NodeError::IsADirectory(
                    "the cap names a directory (use `cairn ls`)".into(),
                ))),
                Cap::Read(read) => {
                    reads.push((i, read.clone()));
                    None
                }
            });
        }
        let inner = self.inner.clone();
        let roots: Vec<ShareRoot> = reads.iter().map(|(_, r)| r.root).collect();
        // A manifest lists about one chunk per MIN_CHUNK of file, some 70 bytes each.
        let sizes: Vec<u64> = reads
            .iter()
            .map(|(_, r)| 256 + 72 * r.size.div_ceil(u64::from(MIN_CHUNK)))
            .collect();
        let fetched = inner.fetch_many(&roots, &sizes).await;
        // Manifests -> chunk lists and keys.
        let opened = tokio::task::spawn_blocking(move || {
            reads
                .into_iter()
                .zip(fetched)
                .map(|((i, read), fetched)| {
                    let manifest = (|| {
                        let fetched = fetched?;
                        let bytes = decode_blob(&fetched.header, fetched.shares)?;
                        let manifest = Manifest::decode(&bytes)?;
                        if manifest.file_size != read.size {
                            return Err(NodeError::SizeMismatch {
                                expected: read.size,
                                got: manifest.file_size,
                            });
                        }
                        let keys = manifest.chunk_keys(&read.key)?;
                        Ok::<_, NodeError>((manifest, keys))
                    })();
                    (i, manifest)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let opened = match opened {
            Ok(o) => o,
            Err(e) => {
                return caps
                    .iter()
                    .map(|_| Err(NodeError::Control(e.to_string())))
                    .collect();
            }
        };
        let mut files = Vec::new();
        let mut chunk_roots = Vec::new();
        let mut chunk_sizes = Vec::new();
        for (i, manifest) in opened {
            match manifest {
                Ok((manifest, keys)) => {
                    chunk_roots.extend(manifest.chunks().iter().map(|c| c.root));
                    chunk_sizes.extend(manifest.chunks().iter().map(|c| u64::from(c.plain_len)));
                    files.push((i, manifest, keys));
                }
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        let fetched = inner.fetch_many(&chunk_roots, &chunk_sizes).await;
        let opened = tokio::task::spawn_blocking(move || {
            let mut fetched = fetched.into_iter();
            files
                .into_iter()
                .map(|(i, manifest, keys)| {
                    let mut out = Vec::with_capacity(manifest.file_size as usize);
                    let mut result = Ok(());
                    for (chunk, key) in manifest.chunks().iter().zip(keys) {
                        let Some(f) = fetched.next() else {
                            result = Err(NodeError::Control("chunk count changed".into()));
                            break;
                        };
                        if result.is_err() {
                            continue;
                        }
                        match f.and_then(|f| {
                            open_chunk(&f.header, f.shares, &key, chunk.plain_len)
                                .map_err(NodeError::from)
                        }) {
                            Ok(plain) => out.extend_from_slice(&plain),
                            Err(e) => result = Err(e),
                        }
                    }
                    (i, result.map(|()| out))
                })
                .collect::<Vec<_>>()
        })
        .await;
        match opened {
            Ok(opened) => {
                for (i, r) in opened {
                    results[i] = Some(r);
                }
            }
            Err(e) => {
                for r in results.iter_mut().filter(|r| r.is_none()) {
                    *r = Some(Err(NodeError::Control(e.to_string())));
                }
            }
        }
        results
            .into_iter()
            .map(|r| {
                let r = r.unwrap_or_else(|| Err(NodeError::Control("file not fetched".into())));
                if let Ok(data) = &r {
                    self.inner.activity.opened();
                    self.inner.activity.read(data.len() as u64);
                }
                r
            })
            .collect()
    }
}

impl Inner {
    /// Fetches `k` verified shares of each blob (see [`Node::get_many`]), one result per root.
    /// `sizes` estimates each blob's bytes, to keep each batched answer well under the frame
    /// limit.
    pub(crate) async fn fetch_many(
        self: &Arc<Self>,
        roots: &[ShareRoot],
        sizes: &[u64],
    ) -> Vec<Result<Fetched, NodeError>> {
        let k = usize::from(self.grid.encoding.k);
        let n = usize::from(self.grid.encoding.n);
        let mut members: BTreeMap<NodeId, Member> = BTreeMap::new();
        // Per member: (blob, share index) pairs to ask it for.
        let mut asks: BTreeMap<NodeId, Vec<(usize, u8)>> = BTreeMap::new();
        for (b, root) in roots.iter().enumerate() {
            let ranked = self.ranked(root);
            let mut positions: Vec<(usize, Member)> =
                ranked.into_iter().take(n).enumerate().collect();
            positions.sort_by_key(|(i, m)| {
                let h = self.health_of(&m.id);
                (h.recently_failed() || h.bad_shares > 0, *i >= k, *i)
            });
            for (i, m) in positions.into_iter().take(k) {
                members.entry(m.id).or_insert_with(|| m.clone());
                asks.entry(m.id).or_default().push((b, i as u8));
            }
        }
        let requests = asks.into_iter().flat_map(|(id, list)| {
            let mut parts: Vec<(NodeId, Vec<(usize, u8)>)> = Vec::new();
            let mut part = Vec::new();
            let mut bytes = 0u64;
            for (b, index) in list {
                // A share is about a k-th of the blob (plus a little), with its header.
                let cost = sizes.get(b).copied().unwrap_or(0) / k as u64 + 512;
                if !part.is_empty()
                    && (part.len() == MAX_SHARE_BATCH || bytes + cost > BATCH_ANSWER_BYTES)
                {
                    parts.push((id, std::mem::take(&mut part)));
                    bytes = 0;
                }
                part.push((b, index));
                bytes += cost;
            }
            if !part.is_empty() {
                parts.push((id, part));
            }
            parts
        });
        let answers = futures_util::future::join_all(requests.map(|(id, part)| {
            let member = members[&id].clone();
            let request = Request::GetShares {
                shares: part.iter().map(|&(b, i)| (roots[b], i)).collect(),
            };
            async move { (id, part, self.request(&member, &request).await) }
        }))
        .await;
        let mut headers: Vec<Option<ChunkHeader>> = vec![None; roots.len()];
        let mut got: Vec<BTreeMap<u8, Vec<u8>>> = vec![BTreeMap::new(); roots.len()];
        for (id, part, answer) in answers {
            let Ok(Response::Shares(found)) = answer else {
                continue;
            };
            if found.len() != part.len() {
                continue;
            }
            for ((b, index), share) in part.into_iter().zip(found) {
                let Some(share) = share else { continue };
                if headers[b].is_none() {
                    match verify_header(&roots[b], &share.header) {
                        Ok(h) => headers[b] = Some(h),
                        Err(_) => {
                            self.note_bad_share(id);
                            continue;
                        }
                    }
                }
                let Some(h) = &headers[b] else { continue };
                if h.verify_share(index, &share.data).is_err() {
                    self.note_bad_share(id);
                    continue;
                }
                got[b].insert(index, share.data);
            }
        }
        let jobs = headers
            .into_iter()
            .zip(got)
            .enumerate()
            .map(|(b, (header, shares))| {
                let inner = self.clone();
                let root = roots[b];
                async move {
                    match header {
                        Some(header) if shares.len() >= usize::from(header.k) => {
                            let need = usize::from(header.k);
                            Ok(Fetched {
                                header,
                                shares: shares.into_iter().take(need).collect(),
                            })
                        }
                        // Not enough this way: the single-blob fetch, with hedging and discovery.
                        _ => inner.fetch_blob(&root).await,
                    }
                }
            });
        futures_util::stream::iter(jobs)
            .buffered(FALLBACKS_AT_ONCE)
            .collect()
            .await
    }
}

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

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use cairn_core::cap::Cap;
use cairn_core::chunk::open_chunk;
use cairn_core::erasure::{ChunkHeader, decode_blob, verify_header};
use cairn_core::id::{NodeId, ShareRoot};
use cairn_core::manifest::Manifest;
use cairn_core::wire::{Request, Response};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::NodeError;
use crate::node::{Inner, Member, Node};

/// Chunks fetched ahead of the writer.
const CHUNKS_AHEAD: usize = 8;

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
                async move {
                    let fetched = inner.fetch_blob(&chunk.root).await?;
                    tokio::task::spawn_blocking(move || {
                        open_chunk(&fetched.header, fetched.shares, &key, chunk.plain_len)
                    })
                    .await
                    .map_err(|e| NodeError::Control(e.to_string()))?
                    .map_err(NodeError::from)
                }
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
        Ok(report)
    }

    /// Fetches and checks a file's manifest (needs only the share root: a verify cap will do).
    pub(crate) async fn fetch_manifest(
        &self,
        root: &ShareRoot,
        size: u64,
    ) -> Result<Manifest, NodeError> {
        let fetched = self.inner.fetch_blob(root).await?;
        let bytes =
            tokio::task::spawn_blocking(move || decode_blob(&fetched.header, fetched.shares))
                .await
                .map_err(|e| NodeError::Control(e.to_string()))??;
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

//! Status and health reports: what `cairn status` and `cairn check` print.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use cairn_core::Encoding;
use cairn_core::cap::Cap;
use cairn_core::id::{NodeId, ShareRoot};
use cairn_core::wire::{MAX_HELD_QUERY, Request, Response};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde::{Deserialize, Serialize};

use crate::NodeError;
use crate::activity::ActivityReport;
use crate::node::{Node, now_secs};
use crate::space::GridSpace;

/// A member counts as online when it answered within this long.
const ONLINE_WINDOW: Duration = Duration::from_secs(35);

/// The node's view of itself and the grid.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusReport {
    /// This node's id.
    pub node: NodeId,
    /// The grid id.
    pub grid: String,
    /// Whether this node holds the grid key.
    pub admin: bool,
    /// Where other members reach this node.
    pub addrs: Vec<SocketAddr>,
    /// The grid's encoding.
    pub encoding: Encoding,
    /// Local storage.
    pub storage: StorageStatus,
    /// The space of the grid's storage nodes, this one included (see [`Node::grid_space`]).
    #[serde(default)]
    pub grid_space: GridSpace,
    /// Every other member known.
    pub peers: Vec<PeerStatus>,
    /// Directories listed on this node that hold conflicts (concurrent writes kept side by
    /// side), as last seen.
    #[serde(default)]
    pub conflicts: Vec<DirConflicts>,
    /// Nodes revoked from the grid.
    #[serde(default)]
    pub revoked: Vec<NodeId>,
    /// What the node has done since it started.
    #[serde(default)]
    pub activity: ActivityReport,
    /// The block cache of decrypted chunks.
    #[serde(default)]
    pub cache: crate::CacheUsage,
}

/// A directory with conflicting entries.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DirConflicts {
    /// The location it was listed as.
    pub path: String,
    /// Lines in conflict.
    pub lines: usize,
}

/// Local share storage.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StorageStatus {
    /// Bytes of shares stored.
    pub used_bytes: u64,
    /// Bytes offered to the grid.
    pub offered_bytes: u64,
    /// Shares stored.
    pub shares: u64,
}

/// One other member as this node sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Its node id.
    pub id: NodeId,
    /// Its addresses.
    pub addrs: Vec<SocketAddr>,
    /// Its roles.
    pub roles: String,
    /// Whether it answered recently.
    pub online: bool,
    /// Unix seconds of the last exchange, if any.
    pub last_contact: Option<u64>,
    /// Bytes sent to it.
    pub sent: u64,
    /// Bytes received from it.
    pub received: u64,
}

/// The health of one file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckReport {
    /// The file's size.
    pub size: u64,
    /// Shares needed to read a chunk.
    pub k: u8,
    /// Shares made of each chunk.
    pub n: u8,
    /// One line per chunk, the manifest first.
    pub chunks: Vec<ChunkHealth>,
    /// Whether every chunk can be read (at least k shares found).
    pub readable: bool,
    /// Whether every chunk has all n shares on distinct nodes.
    pub healthy: bool,
}

/// Where the shares of one chunk are.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChunkHealth {
    /// "manifest" or the chunk's position in the file.
    pub what: String,
    /// The chunk's share root.
    pub root: ShareRoot,
    /// Distinct shares found.
    pub found: usize,
    /// Shares needed.
    pub need: usize,
    /// Shares made.
    pub total: usize,
    /// Which member holds which shares.
    pub holders: BTreeMap<NodeId, Vec<u8>>,
}

impl Node {
    /// The node's status. Includes [`Node::grid_space`], so it may take up to about 2 s when
    /// storage members do not answer.
    pub async fn status(&self) -> Result<StatusReport, NodeError> {
        let inner = &self.inner;
        let store = inner.store.clone();
        let usage = tokio::task::spawn_blocking(move || store.usage())
            .await
            .map_err(|e| NodeError::Control(e.to_string()))??;
        // First, so that the peers' contact times below include these answers.
        let grid_space = self.grid_space().await;
        let counters = self.net().counters();
        let now = now_secs();
        let peers = inner
            .members()
            .into_iter()
            .filter(|m| m.id != inner.id)
            .map(|m| {
                let c = counters.get(&m.id).copied().unwrap_or_default();
                let h = inner.health_of(&m.id);
                let recent_contact = c
                    .last_contact
                    .is_some_and(|t| now.saturating_sub(t) <= ONLINE_WINDOW.as_secs());
                PeerStatus {
                    id: m.id,
                    addrs: m.addrs,
                    roles: m.roles.to_string(),
                    online: recent_contact && !h.recently_failed(),
                    last_contact: c.last_contact,
                    sent: c.sent,
                    received: c.received,
                }
            })
            .collect();
        Ok(StatusReport {
            node: inner.id,
            grid: inner.grid.grid.to_string(),
            admin: inner.keys.grid_key.is_some(),
            addrs: self.addrs(),
            encoding: inner.grid.encoding,
            storage: StorageStatus {
                used_bytes: usage.used_bytes,
                offered_bytes: usage.capacity_bytes,
                shares: usage.shares,
            },
            grid_space,
            peers,
            conflicts: self.conflicts_seen(),
            revoked: self.revoked(),
            activity: self.inner.activity.report(),
            cache: self.inner.blocks.usage(),
        })
    }

    /// Counts the shares of every chunk of the file named by `cap` (a read or verify cap).
    pub async fn check(&self, cap: &Cap) -> Result<CheckReport, NodeError> {
        let (root, size) = match cap {
            Cap::Read(r) => (r.root, r.size),
            Cap::Verify(v) => (v.root, v.size),
            Cap::Literal(lit) => {
                return Ok(CheckReport {
                    size: lit.data.len() as u64,
                    k: 0,
                    n: 0,
                    chunks: vec![],
                    readable: true,
                    healthy: true,
                });
            }
            Cap::DirWrite(_) | Cap::DirRead(_) => {
                return Err(NodeError::Invalid(
                    "checking a directory is not implemented yet; check its files by cap".into(),
                ));
            }
        };
        let fetched = self.inner.fetch_blob(&root).await?;
        let (k, n) = (fetched.header.k, fetched.header.n);
        let manifest_bytes = tokio::task::spawn_blocking(move || {
            cairn_core::erasure::decode_blob(&fetched.header, fetched.shares)
        })
        .await
        .map_err(|e| NodeError::Control(e.to_string()))??;
        let manifest = cairn_core::manifest::Manifest::decode(&manifest_bytes)?;
        if manifest.file_size != size {
            return Err(NodeError::SizeMismatch {
                expected: size,
                got: manifest.file_size,
            });
        }
        let mut roots = vec![("manifest".to_string(), root)];
        roots.extend(
            manifest
                .chunks()
                .iter()
                .enumerate()
                .map(|(i, c)| (format!("chunk {i}"), c.root)),
        );
        let held = self
            .held_everywhere(&roots.iter().map(|(_, r)| *r).collect::<Vec<_>>())
            .await;
        let chunks: Vec<ChunkHealth> = roots
            .into_iter()
            .enumerate()
            .map(|(i, (what, root))| {
                let holders = held[i].clone();
                let mut distinct: Vec<u8> = holders.values().flatten().copied().collect();
                distinct.sort_unstable();
                distinct.dedup();
                ChunkHealth {
                    what,
                    root,
                    found: distinct.len(),
                    need: usize::from(k),
                    total: usize::from(n),
                    holders,
                }
            })
            .collect();
        let readable = chunks.iter().all(|c| c.found >= c.need);
        let healthy = chunks
            .iter()
            .all(|c| c.found >= c.total && c.holders.len() >= c.total);
        Ok(CheckReport {
            size,
            k,
            n,
            chunks,
            readable,
            healthy,
        })
    }

    /// For each root, which member holds which share indices.
    async fn held_everywhere(&self, roots: &[ShareRoot]) -> Vec<BTreeMap<NodeId, Vec<u8>>> {
        let inner = self.inner.clone();
        let members: Vec<_> = inner
            .members()
            .into_iter()
            .filter(|m| m.roles.contains(cairn_core::cert::Roles::STORAGE))
            .collect();
        let mut out = vec![BTreeMap::new(); roots.len()];
        let mut asks = FuturesUnordered::new();
        for member in members {
            for (batch_no, batch) in roots.chunks(MAX_HELD_QUERY).enumerate() {
                let inner = inner.clone();
                let member = member.clone();
                let batch = batch.to_vec();
                asks.push(async move {
                    let r = inner
                        .request(&member, &Request::HeldShares { roots: batch })
                        .await;
                    (member.id, batch_no, r)
                });
            }
        }
        while let Some((id, batch_no, result)) = asks.next().await {
            if let Ok(Response::Held(held)) = result {
                for (j, indices) in held.into_iter().enumerate() {
                    let i = batch_no * MAX_HELD_QUERY + j;
                    if i < out.len() && !indices.is_empty() {
                        out[i].insert(id, indices);
                    }
                }
            }
        }
        out
    }
}

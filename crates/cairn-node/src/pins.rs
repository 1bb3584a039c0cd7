//! Pins: locations (a directory tree or one file) kept whole on this node for offline use.
//!
//! Pinning a location fetches every chunk and manifest of every file below it into the block
//! cache ([`crate::blocks`]) and keeps them there whatever the cache's budget, and stores every
//! version of every directory on the way and below, so listing and reading it needs no other
//! node. A pin is recorded in the node's database and holds across restarts; pinning again
//! brings it up to date (new files fetched, blocks of files no longer there released). The
//! node does that on its own: a while after it starts (which watches the pinned directories
//! again), and soon after a change of a directory it keeps for a pin is pushed to it.
//! [`Node::unpin`] releases its blocks to the budget.

use std::sync::Arc;
use std::time::Duration;

use cairn_core::cap::Cap;
use futures_util::StreamExt;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::NodeError;
use crate::blocks::{BlockName, Keep};
use crate::node::Node;
use crate::slots;
use crate::tree::Location;

/// Pinned location (as displayed) -> postcard [`PinRecord`].
const PINS: TableDefinition<&str, &[u8]> = TableDefinition::new("pins");

/// Chunks one pin fetches at once.
const FETCHES_AT_ONCE: usize = 4;
/// After a change of a pinned directory, how long to wait for more before bringing pins up to
/// date.
const PIN_REFRESH_DELAY: Duration = Duration::from_secs(2);
/// How long after the node starts its pins are brought up to date (and watched again).
const FIRST_PIN_REFRESH: Duration = Duration::from_secs(5);

#[derive(Serialize, Deserialize)]
struct PinRecord {
    report: PinReport,
    blocks: Vec<BlockName>,
}

/// A pinned location and what it keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinReport {
    /// The location, as pinned.
    pub location: String,
    /// Directories kept.
    pub dirs: u64,
    /// Files kept.
    pub files: u64,
    /// Chunks kept.
    pub chunks: u64,
    /// Plaintext bytes of the files kept.
    pub bytes: u64,
    /// Bytes fetched from the grid by this pin (the rest was cached already).
    pub fetched_bytes: u64,
}

pub(crate) fn create_table(txn: &WriteTransaction) -> Result<(), NodeError> {
    txn.open_table(PINS)?;
    Ok(())
}

fn records(db: &Database) -> Result<Vec<PinRecord>, NodeError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(PINS)?;
    let mut out = Vec::new();
    for row in table.iter()? {
        let (_, value) = row?;
        out.push(postcard::from_bytes(value.value()).map_err(|e| NodeError::Db(e.to_string()))?);
    }
    Ok(out)
}

/// The blocks of every pin, for the block cache at start.
pub(crate) fn pinned_blocks(db: &Database) -> Result<Vec<BlockName>, NodeError> {
    Ok(records(db)?.into_iter().flat_map(|r| r.blocks).collect())
}

impl Node {
    /// Pins `location` (see the module docs); pinning it again brings it up to date.
    pub async fn pin(&self, location: &str) -> Result<PinReport, NodeError> {
        let key = Location::parse(location)?.display();
        let (dirs, files) = self.pin_set(location).await?;
        for dir in &dirs {
            self.keep_versions(&dir.read_cap()).await?;
        }
        let mut report = PinReport {
            location: key.clone(),
            dirs: dirs.len() as u64,
            files: files.len() as u64,
            ..PinReport::default()
        };
        // Every block is counted pinned before it is fetched, so the budget never evicts it;
        // a pin that fails releases them again.
        let mut blocks: Vec<BlockName> = Vec::new();
        let kept = self.keep_files(&files, &mut report, &mut blocks).await;
        if let Err(e) = kept {
            self.inner.blocks.unpin(&blocks);
            return Err(e);
        }
        let record = PinRecord {
            report: report.clone(),
            blocks,
        };
        let old = self.save_pin(&key, Some(&record)).await?;
        if let Some(old) = old {
            self.inner.blocks.unpin(&old.blocks);
        }
        for dir in &dirs {
            if let Err(e) = self.watch(dir).await {
                tracing::debug!(error = %e, "could not watch a pinned directory");
            }
        }
        Ok(report)
    }

    /// Fetches the manifests and chunks of `files` into the block cache, pinned; adds each
    /// block pinned to `blocks` and what was kept to `report`.
    async fn keep_files(
        &self,
        files: &[Cap],
        report: &mut PinReport,
        blocks: &mut Vec<BlockName>,
    ) -> Result<(), NodeError> {
        let cache = &self.inner.blocks;
        let mut chunks = Vec::new();
        for cap in files {
            let Cap::Read(read) = cap else {
                report.bytes += literal_len(cap);
                continue;
            };
            let name = cache.name(&read.root);
            cache.pin(&[name]);
            blocks.push(name);
            let manifest = self
                .fetch_manifest_keeping(&read.root, read.size, Keep::Now)
                .await?;
            report.bytes += manifest.file_size;
            let keys = manifest.chunk_keys(&read.key)?;
            for (chunk, key) in manifest.chunks().iter().copied().zip(keys) {
                let name = cache.name(&chunk.root);
                cache.pin(&[name]);
                blocks.push(name);
                chunks.push((chunk, key));
            }
        }
        report.chunks = chunks.len() as u64;
        let fetches = chunks.into_iter().map(|(chunk, key)| async move {
            if cache.contains(&chunk.root) {
                return Ok(0);
            }
            self.inner.chunk_plain(&chunk, &key, Keep::Now).await?;
            Ok::<u64, NodeError>(u64::from(chunk.plain_len))
        });
        let mut fetches = futures_util::stream::iter(fetches).buffer_unordered(FETCHES_AT_ONCE);
        while let Some(fetched) = fetches.next().await {
            report.fetched_bytes += fetched?;
        }
        Ok(())
    }

    /// Keeps pins up to date in the background (see the module docs).
    pub(crate) async fn spawn_pin_refresh(&self) {
        let weak = Arc::downgrade(&self.inner);
        let cancel = self.inner.cancel.clone();
        let mut changes = self.dir_changes();
        self.inner.tasks.lock().await.spawn(async move {
            let mut due = Some(tokio::time::Instant::now() + FIRST_PIN_REFRESH);
            loop {
                let wake = async {
                    match due {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                let changed = tokio::select! {
                    _ = cancel.cancelled() => return,
                    () = wake => {
                        due = None;
                        let Some(inner) = weak.upgrade() else { return };
                        Node { inner }.refresh_pins().await;
                        continue;
                    }
                    changed = changes.recv() => changed,
                };
                let Some(inner) = weak.upgrade() else { return };
                let pinned = match changed {
                    // Pinned directories are the watched ones this node keeps versions of.
                    Ok(slot) => slots::holds(inner.meta.db(), &slot).unwrap_or(false),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                if pinned && due.is_none() {
                    due = Some(tokio::time::Instant::now() + PIN_REFRESH_DELAY);
                }
            }
        });
    }

    /// Pins every pinned location again.
    async fn refresh_pins(&self) {
        let Ok(pins) = self.pins().await else { return };
        for pin in pins {
            match self.pin(&pin.location).await {
                Ok(report) if report.fetched_bytes > 0 => {
                    tracing::info!(location = %pin.location, fetched = report.fetched_bytes, "brought a pin up to date");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(location = %pin.location, error = %e, "could not bring a pin up to date");
                }
            }
        }
    }

    /// Unpins `location`: its blocks fall back under the cache's budget.
    pub async fn unpin(&self, location: &str) -> Result<PinReport, NodeError> {
        let key = Location::parse(location)?.display();
        let old = self
            .save_pin(&key, None)
            .await?
            .ok_or_else(|| NodeError::NotFound(format!("{key} is not pinned")))?;
        self.inner.blocks.unpin(&old.blocks);
        Ok(old.report)
    }

    /// Every pin, as last brought up to date.
    pub async fn pins(&self) -> Result<Vec<PinReport>, NodeError> {
        let inner = self.inner.clone();
        let records = tokio::task::spawn_blocking(move || records(inner.meta.db()))
            .await
            .map_err(|e| NodeError::Control(e.to_string()))??;
        Ok(records.into_iter().map(|r| r.report).collect())
    }

    /// Writes (or, with `None`, removes) the pin at `key`; returns the record it replaced.
    async fn save_pin(
        &self,
        key: &str,
        record: Option<&PinRecord>,
    ) -> Result<Option<PinRecord>, NodeError> {
        let bytes = record
            .map(postcard::to_stdvec)
            .transpose()
            .map_err(|e| NodeError::Db(e.to_string()))?;
        let inner = self.inner.clone();
        let key = key.to_owned();
        tokio::task::spawn_blocking(move || {
            let txn = inner.meta.db().begin_write()?;
            let old = {
                let mut table = txn.open_table(PINS)?;
                let old = match &bytes {
                    Some(bytes) => table.insert(key.as_str(), bytes.as_slice())?,
                    None => table.remove(key.as_str())?,
                };
                old.map(|v| postcard::from_bytes::<PinRecord>(v.value()))
                    .transpose()
                    .map_err(|e| NodeError::Db(e.to_string()))?
            };
            txn.commit()?;
            Ok(old)
        })
        .await
        .map_err(|e| NodeError::Control(e.to_string()))?
    }
}

fn literal_len(cap: &Cap) -> u64 {
    match cap {
        Cap::Literal(lit) => lit.data.len() as u64,
        _ => 0,
    }
}

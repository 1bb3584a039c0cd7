//! Mutable slots in redb: the versions this node holds for others (as a holder), and the
//! frontier it has seen of each directory it reads (as a reader).
//!
//! A holder keeps every version it is given whose signature verifies, and the slot's heads (the
//! versions no other stored version cites). It cannot read them. A reader keeps, per slot, the
//! heads and version vector it has seen and never accepts a state that lacks them.

use cairn_core::id::{SlotId, VersionId};
use cairn_dir::{Version, VersionVector};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::NodeError;

/// slot || version id -> encoded version.
const VERSIONS: TableDefinition<&[u8; 64], &[u8]> = TableDefinition::new("slot_versions");
/// slot || version id -> postcard `VersionInfo`.
const INFO: TableDefinition<&[u8; 64], &[u8]> = TableDefinition::new("slot_version_info");
/// slot || version id -> (): the version is cited as a parent by a stored version.
const CITED: TableDefinition<&[u8; 64], ()> = TableDefinition::new("slot_cited");
/// slot -> postcard `Vec<VersionId>`: the holder's heads.
const HEADS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("slot_heads");
/// slot -> postcard `Frontier`: what this node has seen as a reader.
const FRONTIERS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("slot_frontiers");

/// The most bytes of versions one answer carries (below the frame limit).
const ANSWER_BUDGET: usize = cairn_core::wire::MAX_FRAME - 1024 * 1024;

pub(crate) fn create_tables(txn: &WriteTransaction) -> Result<(), NodeError> {
    txn.open_table(VERSIONS)?;
    txn.open_table(INFO)?;
    txn.open_table(CITED)?;
    txn.open_table(HEADS)?;
    txn.open_table(FRONTIERS)?;
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct VersionInfo {
    parents: Vec<VersionId>,
    depth: u64,
    snapshot: bool,
}

/// What a reader has seen of one slot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Frontier {
    /// The heads of the state it holds.
    pub(crate) heads: Vec<VersionId>,
    /// The depth of its deepest head.
    pub(crate) depth: u64,
    /// Every write it has seen (contiguous prefix per writer).
    pub(crate) seen: VersionVector,
}

fn key(slot: &SlotId, id: &VersionId) -> [u8; 64] {
    let mut k = [0u8; 64];
    k[..32].copy_from_slice(slot.as_bytes());
    k[32..].copy_from_slice(id.as_bytes());
    k
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, NodeError> {
    postcard::to_stdvec(value).map_err(|e| NodeError::Db(e.to_string()))
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, NodeError> {
    postcard::from_bytes(bytes).map_err(|e| NodeError::Db(e.to_string()))
}

/// Stores a verified version; `Ok(true)` when it was already held.
pub(crate) fn put_version(db: &Database, version: &Version) -> Result<bool, NodeError> {
    let slot = version.slot();
    let id = version.id();
    let k = key(&slot, &id);
    let txn = db.begin_write()?;
    {
        let mut versions = txn.open_table(VERSIONS)?;
        if versions.get(&k)?.is_some() {
            return Ok(true);
        }
        versions.insert(&k, version.as_bytes())?;
        let info = VersionInfo {
            parents: version.parents().to_vec(),
            depth: version.depth(),
            snapshot: version.is_snapshot(),
        };
        txn.open_table(INFO)?
            .insert(&k, encode(&info)?.as_slice())?;
        let mut cited = txn.open_table(CITED)?;
        for parent in version.parents() {
            cited.insert(&key(&slot, parent), ())?;
        }
        let is_cited = cited.get(&k)?.is_some();
        let mut heads_table = txn.open_table(HEADS)?;
        let mut heads: Vec<VersionId> = match heads_table.get(slot.as_bytes())? {
            Some(v) => decode(v.value())?,
            None => Vec::new(),
        };
        heads.retain(|h| !version.parents().contains(h));
        if !is_cited {
            heads.push(id);
        }
        heads.sort();
        heads_table.insert(slot.as_bytes(), encode(&heads)?.as_slice())?;
    }
    txn.commit()?;
    Ok(false)
}

/// Versions of a slot for one answer.
#[derive(Debug, Default)]
pub(crate) struct Answer {
    /// Encoded versions, oldest first.
    pub(crate) versions: Vec<Vec<u8>>,
    /// The holder's heads.
    pub(crate) heads: Vec<VersionId>,
    /// Whether versions were left out for size.
    pub(crate) more: bool,
}

/// The versions of `slot` reachable from its heads, stopping at `have` and below snapshots,
/// oldest first, as many as fit one answer.
pub(crate) fn versions(
    db: &Database,
    slot: &SlotId,
    have: &[VersionId],
) -> Result<Answer, NodeError> {
    let txn = db.begin_read()?;
    let heads: Vec<VersionId> = match txn.open_table(HEADS)?.get(slot.as_bytes())? {
        Some(v) => decode(v.value())?,
        None => return Ok(Answer::default()),
    };
    let versions = txn.open_table(VERSIONS)?;
    let info = txn.open_table(INFO)?;
    let mut seen: std::collections::HashSet<VersionId> = have.iter().copied().collect();
    let mut stack: Vec<VersionId> = heads
        .iter()
        .copied()
        .filter(|h| !seen.contains(h))
        .collect();
    seen.extend(stack.iter().copied());
    // First the ids (small records), then the bytes oldest first, so that an answer cut short
    // is a prefix the reader can name as held when it asks for the rest.
    let mut found: Vec<(u64, VersionId)> = Vec::new();
    while let Some(id) = stack.pop() {
        let Some(meta) = info.get(&key(slot, &id))? else {
            continue;
        };
        let meta: VersionInfo = decode(meta.value())?;
        found.push((meta.depth, id));
        if meta.snapshot {
            continue;
        }
        for parent in meta.parents {
            if seen.insert(parent) {
                stack.push(parent);
            }
        }
    }
    found.sort();
    let mut answer = Answer {
        heads,
        ..Answer::default()
    };
    let mut budget = ANSWER_BUDGET;
    for (_, id) in found {
        let Some(bytes) = versions.get(&key(slot, &id))? else {
            continue;
        };
        let bytes = bytes.value();
        if bytes.len() > budget && !answer.versions.is_empty() {
            answer.more = true;
            break;
        }
        budget = budget.saturating_sub(bytes.len());
        answer.versions.push(bytes.to_vec());
    }
    Ok(answer)
}

/// Every slot this node holds versions of.
pub(crate) fn held_slots(db: &Database) -> Result<Vec<SlotId>, NodeError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(HEADS)?;
    let mut out = Vec::new();
    for row in table.iter()? {
        let (k, _) = row?;
        out.push(SlotId::from_bytes(*k.value()));
    }
    Ok(out)
}

/// Whether this node keeps versions of `slot`.
pub(crate) fn holds(db: &Database, slot: &SlotId) -> Result<bool, NodeError> {
    let txn = db.begin_read()?;
    Ok(txn.open_table(HEADS)?.get(slot.as_bytes())?.is_some())
}

/// The holder's heads of `slot`.
pub(crate) fn heads(db: &Database, slot: &SlotId) -> Result<Vec<VersionId>, NodeError> {
    let txn = db.begin_read()?;
    Ok(match txn.open_table(HEADS)?.get(slot.as_bytes())? {
        Some(v) => decode(v.value())?,
        None => Vec::new(),
    })
}

/// What this node has seen of `slot` as a reader.
pub(crate) fn frontier(db: &Database, slot: &SlotId) -> Result<Option<Frontier>, NodeError> {
    let txn = db.begin_read()?;
    Ok(match txn.open_table(FRONTIERS)?.get(slot.as_bytes())? {
        Some(v) => Some(decode(v.value())?),
        None => None,
    })
}

/// Records what this node has seen of `slot`.
pub(crate) fn set_frontier(
    db: &Database,
    slot: &SlotId,
    frontier: &Frontier,
) -> Result<(), NodeError> {
    let txn = db.begin_write()?;
    txn.open_table(FRONTIERS)?
        .insert(slot.as_bytes(), encode(frontier)?.as_slice())?;
    txn.commit()?;
    Ok(())
}

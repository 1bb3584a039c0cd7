//! The node's own metadata in redb: the roster of members and the invites it issued (slot
//! versions and frontiers live in the same database, see [`crate::slots`]).

use std::path::Path;

use cairn_core::id::{GridId, NodeId};
use cairn_core::wire::{JoinRefusal, RosterEntry};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::NodeError;

/// Node id -> postcard `RosterEntry`.
const ROSTER: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("roster");
/// BLAKE3 of an invite secret -> postcard `InviteRecord`.
const INVITES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("invites");

#[derive(Serialize, Deserialize)]
struct InviteRecord {
    expires_at: u64,
    used: bool,
}

/// The metadata database.
#[derive(Debug)]
pub(crate) struct Meta {
    db: Database,
}

impl Meta {
    pub(crate) fn open(path: &Path) -> Result<Meta, NodeError> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(ROSTER)?;
        txn.open_table(INVITES)?;
        crate::slots::create_tables(&txn)?;
        txn.commit()?;
        Ok(Meta { db })
    }

    /// The database, for the slot tables ([`crate::slots`]).
    pub(crate) fn db(&self) -> &Database {
        &self.db
    }

    /// Every roster entry whose certificate the grid key signed (others are dropped).
    pub(crate) fn roster(&self, grid: &GridId) -> Result<Vec<RosterEntry>, NodeError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ROSTER)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (_, value) = row?;
            if let Ok(entry) = postcard::from_bytes::<RosterEntry>(value.value())
                && entry.cert.verify_signature(grid).is_ok()
            {
                out.push(entry);
            }
        }
        Ok(out)
    }

    /// Inserts or replaces entries.
    pub(crate) fn put_roster(&self, entries: &[RosterEntry]) -> Result<(), NodeError> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(ROSTER)?;
            for entry in entries {
                let bytes = postcard::to_stdvec(entry).map_err(|e| NodeError::Db(e.to_string()))?;
                table.insert(entry.cert.node().as_bytes(), bytes.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Removes a member from the roster.
    #[allow(dead_code)]
    pub(crate) fn remove_member(&self, node: &NodeId) -> Result<(), NodeError> {
        let txn = self.db.begin_write()?;
        txn.open_table(ROSTER)?.remove(node.as_bytes())?;
        txn.commit()?;
        Ok(())
    }

    /// Records an invite by the hash of its secret.
    pub(crate) fn add_invite(&self, secret: &[u8; 32], expires_at: u64) -> Result<(), NodeError> {
        let record = InviteRecord {
            expires_at,
            used: false,
        };
        let bytes = postcard::to_stdvec(&record).map_err(|e| NodeError::Db(e.to_string()))?;
        let txn = self.db.begin_write()?;
        txn.open_table(INVITES)?
            .insert(blake3::hash(secret).as_bytes(), bytes.as_slice())?;
        txn.commit()?;
        Ok(())
    }

    /// Uses an invite once: refuses unknown, used and expired ones; marks it used atomically.
    pub(crate) fn take_invite(
        &self,
        secret: &[u8; 32],
        now: u64,
    ) -> Result<Result<(), JoinRefusal>, NodeError> {
        let key = *blake3::hash(secret).as_bytes();
        let txn = self.db.begin_write()?;
        let verdict = {
            let mut table = txn.open_table(INVITES)?;
            let record = table
                .get(&key)?
                .and_then(|v| postcard::from_bytes::<InviteRecord>(v.value()).ok());
            match record {
                None => Err(JoinRefusal::UnknownInvite),
                Some(r) if r.used => Err(JoinRefusal::UnknownInvite),
                Some(r) if now >= r.expires_at => Err(JoinRefusal::Expired),
                Some(r) => {
                    let used = InviteRecord {
                        expires_at: r.expires_at,
                        used: true,
                    };
                    let bytes =
                        postcard::to_stdvec(&used).map_err(|e| NodeError::Db(e.to_string()))?;
                    table.insert(&key, bytes.as_slice())?;
                    Ok(())
                }
            }
        };
        txn.commit()?;
        Ok(verdict)
    }
}

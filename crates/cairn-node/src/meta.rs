//! The node's own metadata in redb: the roster of members, the revocations it knows, and the
//! invites it issued (slot versions and frontiers live in the same database, see
//! [`crate::slots`]).

use std::path::Path;

use cairn_core::cert::Revocation;
use cairn_core::id::GridId;
use cairn_core::wire::{JoinRefusal, RosterEntry};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::NodeError;

/// Node id -> postcard `RosterEntry`.
const ROSTER: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("roster");
/// BLAKE3 of an invite secret -> postcard `InviteRecord`.
const INVITES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("invites");
/// Revoked node id -> postcard `Revocation` (signed by the grid key).
const REVOKED: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("revoked");

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
        txn.open_table(REVOKED)?;
        crate::slots::create_tables(&txn)?;
        crate::pins::create_table(&txn)?;
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

    /// Every revocation the grid key signed (others are dropped).
    pub(crate) fn revocations(&self, grid: &GridId) -> Result<Vec<Revocation>, NodeError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(REVOKED)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (_, value) = row?;
            if let Ok(revocation) = postcard::from_bytes::<Revocation>(value.value())
                && revocation.verify(grid).is_ok()
            {
                out.push(revocation);
            }
        }
        Ok(out)
    }

    /// Records revocations and removes their nodes from the roster, in one transaction.
    pub(crate) fn put_revocations(&self, revocations: &[Revocation]) -> Result<(), NodeError> {
        let txn = self.db.begin_write()?;
        {
            let mut revoked = txn.open_table(REVOKED)?;
            let mut roster = txn.open_table(ROSTER)?;
            for revocation in revocations {
                let bytes =
                    postcard::to_stdvec(revocation).map_err(|e| NodeError::Db(e.to_string()))?;
                revoked.insert(revocation.node().as_bytes(), bytes.as_slice())?;
                roster.remove(revocation.node().as_bytes())?;
            }
        }
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

//! Pack files: the open pack that batches append to, and when a pack file may be deleted.
//!
//! A batch reserves room at the end of the open pack, writes its shares there and makes them
//! durable (`fdatasync`) before the commit that names them; a new pack is started once the open
//! one holds [`PACK_TARGET`] bytes. So a large put creates one file per [`PACK_TARGET`] bytes
//! instead of one per batch: creating a file costs an inode, a rename and two fsyncs, and on
//! ext4 without a journal each new inode is found by scanning past recently deleted ones.
//!
//! A pack file is deleted once no record names it and no batch has room reserved in it; the
//! open pack too, after which the next batch starts a new one. Bytes of a batch whose commit
//! failed stay in the pack as unnamed space until the pack goes.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use tracing::warn;

use super::files::{pack_file_name, remove_quietly, sync_dir};
use crate::StoreError;

/// A pack takes appends until it holds this many bytes; the next batch then starts a new one.
pub(super) const PACK_TARGET: u64 = 16 * 1024 * 1024;

/// The packs directory's open pack and the batches writing to packs.
pub(super) struct Packs {
    dir: PathBuf,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The id the next pack gets.
    next_id: u64,
    /// The pack new batches append to, if any.
    open: Option<OpenPack>,
    /// Batches with room reserved and not yet released, per pack.
    writers: HashMap<u64, usize>,
}

struct OpenPack {
    id: u64,
    file: Arc<File>,
    /// The end of the room reserved so far.
    len: u64,
}

/// Room reserved at `offset` in pack `id` for one batch: write it with [`Packs::write`],
/// commit the records naming it, then hand it back with [`Packs::release`].
pub(super) struct Reservation {
    pub(super) id: u64,
    pub(super) offset: u64,
    file: Arc<File>,
}

impl Packs {
    /// Packs in `dir`; the first new one gets id `next_id`.
    pub(super) fn new(dir: PathBuf, next_id: u64) -> Self {
        Packs {
            dir,
            state: Mutex::new(State {
                next_id,
                ..State::default()
            }),
        }
    }

    /// Gives new packs ids from `next_id` on (above every pack found at open).
    pub(super) fn start_ids_at(&self, next_id: u64) {
        self.lock().next_id = next_id;
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is left consistent at every step, so a panic elsewhere does not spoil it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reserves `len` bytes at the end of the open pack, starting a new pack (its directory
    /// entry durable) when none is open or the open one is full.
    pub(super) fn reserve(&self, len: u64) -> Result<Reservation, StoreError> {
        let mut state = self.lock();
        let state = &mut *state;
        if state.open.as_ref().is_none_or(|p| p.len >= PACK_TARGET) {
            let id = state.next_id;
            let path = self.dir.join(pack_file_name(id));
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| StoreError::io(&path, e))?;
            state.next_id += 1;
            if let Err(e) = sync_dir(&self.dir) {
                remove_quietly(&path);
                return Err(e);
            }
            state.open = Some(OpenPack {
                id,
                file: Arc::new(file),
                len: 0,
            });
        }
        let Some(open) = state.open.as_mut() else {
            unreachable!("a pack was opened above");
        };
        let reservation = Reservation {
            id: open.id,
            offset: open.len,
            file: open.file.clone(),
        };
        open.len += len;
        *state.writers.entry(open.id).or_default() += 1;
        Ok(reservation)
    }

    /// Writes a batch's bytes into its room and makes them durable.
    pub(super) fn write(&self, room: &Reservation, data: &[u8]) -> io::Result<()> {
        room.file.write_all_at(data, room.offset)?;
        room.file.sync_data()
    }

    /// Hands back a batch's room once its records are committed (or failed); deletes the pack
    /// if that was its last writer and `held` says no record names it.
    pub(super) fn release(
        &self,
        room: Reservation,
        held: impl FnOnce(u64) -> Result<bool, StoreError>,
    ) {
        let mut state = self.lock();
        let remaining = match state.writers.get_mut(&room.id) {
            Some(n) => {
                *n -= 1;
                *n
            }
            None => 0,
        };
        if remaining == 0 {
            state.writers.remove(&room.id);
            self.delete_if_unheld(&mut state, room.id, held);
        }
    }

    /// Deletes pack `id` if no batch is writing to it and `held` says no record names it (called
    /// after a remove committed).
    pub(super) fn forget_if_unheld(
        &self,
        id: u64,
        held: impl FnOnce(u64) -> Result<bool, StoreError>,
    ) {
        let mut state = self.lock();
        if !state.writers.contains_key(&id) {
            self.delete_if_unheld(&mut state, id, held);
        }
    }

    /// `held` runs under the lock, after every commit of a released writer: it sees them all.
    fn delete_if_unheld(
        &self,
        state: &mut State,
        id: u64,
        held: impl FnOnce(u64) -> Result<bool, StoreError>,
    ) {
        match held(id) {
            Ok(true) => {}
            Ok(false) => {
                if state.open.as_ref().is_some_and(|p| p.id == id) {
                    state.open = None;
                }
                // If this fails the next open sweeps the file, as no record names it.
                remove_quietly(&self.dir.join(pack_file_name(id)));
            }
            Err(e) => warn!(pack = id, error = %e, "could not tell whether a pack is still used"),
        }
    }
}

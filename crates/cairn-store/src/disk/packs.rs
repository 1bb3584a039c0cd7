//! Pack files: the open pack that batches append to, and when a pack file may be deleted.
//!
//! A batch reserves room at the end of the open pack, writes its shares there and makes them
//! durable (`fdatasync`) before the commit that names them; a new pack is started once the open
//! one holds [`PACK_TARGET`] bytes. So a large put creates one file per [`PACK_TARGET`] bytes
//! instead of one per batch: creating a file costs an inode, a rename and two fsyncs, and on
//! ext4 without a journal each new inode is found by scanning past recently deleted ones.
//!
//! A batch of at least [`DIRECT_MIN`] bytes is written with direct I/O where the file system
//! takes it: a holder's shares are written once and read rarely, so they need not fill the
//! page cache (evicting what the machine's owner uses), and the write skips the copy into it.
//! Such a batch's room starts at a multiple of [`ALIGN`] and is padded to one.
//!
//! A pack file is deleted once no record names it and no batch has room reserved in it; the
//! open pack too, after which the next batch starts a new one. Bytes of a batch whose commit
//! failed stay in the pack as unnamed space until the pack goes.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use tracing::warn;

use super::files::{pack_file_name, remove_quietly, sync_dir};
use crate::StoreError;

/// A pack takes appends until it holds this many bytes; the next batch then starts a new one.
pub(super) const PACK_TARGET: u64 = 16 * 1024 * 1024;

/// Batches at least this large are written with direct I/O (smaller ones would waste up to
/// two [`ALIGN`] blocks of padding each).
pub(super) const DIRECT_MIN: u64 = 256 * 1024;

/// The alignment direct I/O needs of offsets, lengths and memory (the largest logical block
/// size in common use).
pub(super) const ALIGN: usize = 4096;

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
    /// The same file opened for direct I/O, where the file system allows it.
    direct: Option<Arc<File>>,
    /// The end of the room reserved so far.
    len: u64,
}

/// Room reserved at `offset` in pack `id` for one batch: write it with [`Packs::write`],
/// commit the records naming it, then hand it back with [`Packs::release`].
pub(super) struct Reservation {
    pub(super) id: u64,
    pub(super) offset: u64,
    file: Arc<File>,
    /// Set when the room is aligned for a direct write.
    direct: Option<Arc<File>>,
}

/// A batch's bytes, laid out so that direct I/O can write them: they start at an address
/// aligned to [`ALIGN`], and [`Packs::write`] pads them with zeros to a multiple of it.
pub(super) struct PackBuf {
    buf: Vec<u8>,
    at: usize,
    len: usize,
}

impl PackBuf {
    /// An empty buffer with room for `len` bytes.
    pub(super) fn with_capacity(len: usize) -> Self {
        let mut buf: Vec<u8> = Vec::with_capacity(len + 2 * ALIGN);
        let at = buf.as_ptr().align_offset(ALIGN).min(ALIGN);
        buf.resize(at, 0);
        PackBuf { buf, at, len: 0 }
    }

    /// Appends `bytes`.
    pub(super) fn extend(&mut self, bytes: &[u8]) {
        self.buf.truncate(self.at + self.len);
        self.buf.extend_from_slice(bytes);
        self.len += bytes.len();
    }

    /// The bytes appended so far.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The bytes appended so far.
    fn bytes(&self) -> &[u8] {
        &self.buf[self.at..self.at + self.len]
    }

    /// The bytes padded with zeros to a multiple of [`ALIGN`], if they still start at an
    /// aligned address (a buffer that grew past its capacity may have moved).
    fn padded(&mut self) -> Option<&[u8]> {
        if self.buf[self.at..].as_ptr().align_offset(ALIGN) != 0 {
            return None;
        }
        self.buf
            .resize(self.at + self.len.next_multiple_of(ALIGN), 0);
        Some(&self.buf[self.at..])
    }
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
    /// entry durable) when none is open or the open one is full. A batch of [`DIRECT_MIN`]
    /// bytes or more gets aligned room, for a direct write.
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
            // Not every file system takes direct I/O (tmpfs before Linux 6.6): then every
            // batch is written through the page cache.
            let direct = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(&path)
                .ok()
                .map(Arc::new);
            state.next_id += 1;
            if let Err(e) = sync_dir(&self.dir) {
                remove_quietly(&path);
                return Err(e);
            }
            state.open = Some(OpenPack {
                id,
                file: Arc::new(file),
                direct,
                len: 0,
            });
        }
        let Some(open) = state.open.as_mut() else {
            unreachable!("a pack was opened above");
        };
        let direct = open.direct.as_ref().filter(|_| len >= DIRECT_MIN);
        let align = ALIGN as u64;
        let (offset, room) = match direct {
            Some(_) => (
                open.len.next_multiple_of(align),
                len.next_multiple_of(align),
            ),
            None => (open.len, len),
        };
        let reservation = Reservation {
            id: open.id,
            offset,
            file: open.file.clone(),
            direct: direct.cloned(),
        };
        open.len = offset + room;
        *state.writers.entry(open.id).or_default() += 1;
        Ok(reservation)
    }

    /// Writes a batch's bytes into its room and makes them durable.
    pub(super) fn write(&self, room: &Reservation, data: &mut PackBuf) -> io::Result<()> {
        // Only a room reserved for a direct write is padded.
        let padded = room
            .direct
            .as_ref()
            .and_then(|file| Some((file, data.padded()?)));
        let direct = match padded {
            Some((file, padded)) => match file.write_all_at(padded, room.offset) {
                Ok(()) => true,
                // The file system refused this alignment: the page cache takes the batch.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => false,
                Err(e) => return Err(e),
            },
            None => false,
        };
        if !direct {
            room.file.write_all_at(data.bytes(), room.offset)?;
        }
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

//! The part of a staged file still on the grid.
//!
//! Opening an existing file for writing does not copy it: its staging file starts sparse at the
//! file's size, and the file it started from (its base) stays on the grid. The file is cut into
//! blocks of [`FILL_BLOCK`] bytes. A read of a block nobody wrote comes from the base; a write
//! into such a block first fills it (fetches the base's bytes into the staging file). An upload
//! keeps the base's chunks that no written block touches and fills only the blocks the chunks
//! around the written ones need ([`Lazy::changes`], `Node::put_patched`). So an open costs
//! nothing, a write costs a fetch of the blocks it touches, and an upload the chunks near
//! them.
//!
//! Which blocks are filled is appended to `<id>.fills` (one little-endian u64 per block, written
//! after the block's bytes), so a restart after a crash fills the others from the base (named
//! in the journal entry) before uploading. A write into a block waits for its fill, so a block
//! the log names holds the base's bytes or newer ones.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cairn_core::rechunk::Changes;
use cairn_node::{FileReader, NodeError};

/// Bytes per block of a base (fetched whole when any of it is written).
pub(crate) const FILL_BLOCK: u64 = 1 << 20;

/// The base of a staged file and which of its blocks are filled.
pub(crate) struct Lazy {
    fills_path: PathBuf,
    state: Mutex<LazyState>,
    /// Serialises fills (each block is fetched once).
    filling: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Lazy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lazy")
            .field("fills_path", &self.fills_path)
            .finish_non_exhaustive()
    }
}

struct LazyState {
    /// The file the unfilled blocks come from.
    base: FileReader,
    /// The base's bytes still in the file (a truncation shortens it).
    len: u64,
    /// Per block below `len`: whether the staging file holds it.
    filled: Vec<bool>,
    /// Per block below `len`: whether it may differ from the base (written since the open, or
    /// filled before a restart, which cannot tell). A block filled only to be read by an
    /// upload's chunker is not, so later uploads do not re-chunk around it.
    written: Vec<bool>,
    /// Counts the changes to the file (writes and size changes), so an upload can tell
    /// whether the file is still what it put.
    changes: u64,
}

/// What an upload puts: the base it patches, how the file differs from it, and which change
/// of the file it saw last (see [`Lazy::rebase`]).
pub(crate) struct Snapshot {
    pub(crate) base: FileReader,
    pub(crate) changes: Changes,
    seen: u64,
}

impl LazyState {
    /// The blocks of `[offset, end)` that still come from the base.
    fn unfilled(&self, offset: u64, end: u64) -> Vec<u64> {
        let end = end.min(self.len);
        if offset >= end {
            return Vec::new();
        }
        (offset / FILL_BLOCK..end.div_ceil(FILL_BLOCK))
            .filter(|&b| !self.filled.get(b as usize).copied().unwrap_or(true))
            .collect()
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> NodeError + '_ {
    move |e| NodeError::io(path, e)
}

impl Lazy {
    /// The base `reader`, nothing filled yet (or the blocks the log at `fills_path` names), of
    /// which the first `len` bytes are still in the file.
    pub(crate) fn new(reader: FileReader, fills_path: PathBuf, len: u64) -> Lazy {
        let len = len.min(reader.size());
        let mut filled = vec![false; len.div_ceil(FILL_BLOCK) as usize];
        if let Ok(log) = std::fs::read(&fills_path) {
            for index in log.chunks_exact(8) {
                let block = u64::from_le_bytes(index.try_into().unwrap_or_default());
                if let Some(f) = filled.get_mut(block as usize) {
                    *f = true;
                }
            }
        }
        let written = filled.clone();
        Lazy {
            fills_path,
            state: Mutex::new(LazyState {
                base: reader,
                len,
                filled,
                written,
                changes: 0,
            }),
            filling: tokio::sync::Mutex::new(()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LazyState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The base and how a staged file of `len` bytes differs from it: in the blocks written
    /// and past the base's bytes still in it.
    pub(crate) fn snapshot(&self, len: u64) -> Snapshot {
        let state = self.state();
        let changed = state
            .written
            .iter()
            .enumerate()
            .filter(|(_, written)| **written)
            .map(|(block, _)| {
                let start = block as u64 * FILL_BLOCK;
                start..(start + FILL_BLOCK).min(state.len)
            })
            .collect();
        Snapshot {
            base: state.base.clone(),
            changes: Changes {
                len,
                retained: state.len,
                changed,
            },
            seen: state.changes,
        }
    }

    /// After an upload of `snapshot`, which stored the file as `stored`: if the file has not
    /// changed since, `stored` becomes the base and no block counts as written, so the next
    /// upload of a file held open re-chunks only around what is written after this one.
    /// Blocks not filled are the same in both bases (a write fills first), so the fill log
    /// and the journal's base stay right for a restart. Returns whether it rebased.
    pub(crate) fn rebase(&self, snapshot: &Snapshot, stored: FileReader) -> bool {
        let mut state = self.state();
        if state.changes != snapshot.seen || stored.size() != snapshot.changes.len {
            return false;
        }
        let blocks = stored.size().div_ceil(FILL_BLOCK) as usize;
        // Past the old base's bytes the staging file holds the bytes itself.
        state.filled = (0..blocks)
            .map(|b| state.filled.get(b).copied().unwrap_or(true))
            .collect();
        state.written = vec![false; blocks];
        state.len = stored.size();
        state.base = stored;
        true
    }

    /// Notes a change of the file's size (after it is made).
    pub(crate) fn note_resized(&self) {
        self.state().changes += 1;
    }

    /// The base's bytes still in the file.
    pub(crate) fn len(&self) -> u64 {
        self.state().len
    }

    /// The file was cut to `size`: base bytes past it are gone.
    pub(crate) fn truncate(&self, size: u64) {
        let mut state = self.state();
        if size < state.len {
            state.len = size;
            state.filled.truncate(size.div_ceil(FILL_BLOCK) as usize);
            state.written.truncate(size.div_ceil(FILL_BLOCK) as usize);
        }
    }

    /// Notes a write of `[offset, end)` into the staging file: the base's blocks it touches
    /// may differ from the base from now on.
    pub(crate) fn note_written(&self, offset: u64, end: u64) {
        let mut state = self.state();
        state.changes += 1;
        let end = end.min(state.len);
        if offset >= end {
            return;
        }
        for block in offset / FILL_BLOCK..end.div_ceil(FILL_BLOCK) {
            if let Some(w) = state.written.get_mut(block as usize) {
                *w = true;
            }
        }
    }

    /// Whether `[offset, end)` touches a block that still comes from the base (a write there
    /// must [`fill`](Self::fill) first).
    pub(crate) fn needs_fill(&self, offset: u64, end: u64) -> bool {
        !self.state().unfilled(offset, end).is_empty()
    }

    /// Whether every block is filled (the staging file is the whole file).
    pub(crate) fn complete(&self) -> bool {
        self.state().filled.iter().all(|f| *f)
    }

    /// Fetches the unfilled blocks of `[offset, end)` from the base into `file`.
    pub(crate) async fn fill(&self, file: &File, offset: u64, end: u64) -> Result<(), NodeError> {
        let _one = self.filling.lock().await;
        let (blocks, len, base) = {
            let state = self.state();
            (state.unfilled(offset, end), state.len, state.base.clone())
        };
        if let Some(first) = blocks.first() {
            base.prefetch(
                first * FILL_BLOCK,
                (blocks.len() as u64 * FILL_BLOCK) as usize,
            );
        }
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.fills_path)
            .map_err(io(&self.fills_path))?;
        for block in blocks {
            let start = block * FILL_BLOCK;
            let want = (FILL_BLOCK.min(len - start)) as usize;
            let mut bytes = Vec::with_capacity(want);
            while bytes.len() < want {
                let at = start + bytes.len() as u64;
                let part = base.read_at(at, want - bytes.len()).await?;
                if part.is_empty() {
                    return Err(NodeError::Invalid(
                        "the file being written got shorter".into(),
                    ));
                }
                bytes.extend_from_slice(&part);
            }
            // Written under the state lock, so a truncation meanwhile is seen: only what is
            // still the base's goes in.
            let mut state = self.state();
            let keep = state.len.saturating_sub(start).min(bytes.len() as u64) as usize;
            if keep > 0 {
                file.write_all_at(&bytes[..keep], start)
                    .map_err(io(&self.fills_path))?;
                log.write_all(&block.to_le_bytes())
                    .map_err(io(&self.fills_path))?;
            }
            if let Some(f) = state.filled.get_mut(block as usize) {
                *f = true;
            }
        }
        Ok(())
    }

    /// Reads up to `len` bytes at `offset` of a file whose staging file is `file` and whose
    /// size is `size`: filled blocks and bytes past the base from `file`, the rest from the
    /// base.
    pub(crate) async fn read_at(
        &self,
        file: &File,
        size: u64,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, NodeError> {
        let end = offset.saturating_add(len as u64).min(size);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut at = offset;
        while at < end {
            let block_end = ((at / FILL_BLOCK + 1) * FILL_BLOCK).min(end);
            let (from_base, base_len, base) = {
                let state = self.state();
                let from_base = !state.unfilled(at, block_end).is_empty();
                (from_base, state.len, state.base.clone())
            };
            let part = if from_base {
                // Only the base's bytes: past them (a truncation, then growth) is the file.
                let base_end = block_end.min(base_len);
                base.prefetch(base_end, 4 * FILL_BLOCK as usize);
                base.read_at(at, (base_end - at) as usize).await?.to_vec()
            } else {
                let mut buf = vec![0u8; (block_end - at) as usize];
                let n = read_full(file, &mut buf, at).map_err(io(&self.fills_path))?;
                buf.truncate(n);
                buf
            };
            if part.is_empty() {
                break;
            }
            at += part.len() as u64;
            out.extend_from_slice(&part);
        }
        Ok(out)
    }

    /// Removes the fill log (the staged file is gone or complete and uploaded).
    pub(crate) fn remove_log(&self) {
        let _ = std::fs::remove_file(&self.fills_path);
    }
}

/// Reads into `buf` at `offset` until it is full or the file ends; returns the bytes read.
pub(crate) fn read_full(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let n = file.read_at(&mut buf[done..], offset + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

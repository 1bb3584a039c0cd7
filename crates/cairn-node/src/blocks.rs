//! The block cache: decrypted chunks (and file manifests) kept on this node's disk, so a file
//! read once reads again without the grid, across restarts.
//!
//! Each block is one file in `DIR/cache/blocks/`, sealed with AES-256-GCM under a key derived
//! from a node-local key (`DIR/cache/key`, mode 0600) and the block's share root; the file's
//! name is a keyed hash of the root, so the directory shows neither content nor which chunks
//! were read. A block that fails to open (torn write, tampering, another key) is a miss and is
//! removed. The cache holds at most [`NodeConfig::block_cache_bytes`] of plaintext: past it
//! the least recently used blocks go, except pinned ones (see [`crate::pins`]), which stay
//! whatever the budget. Recency is kept in memory and, across restarts, taken from the files'
//! modification times.
//!
//! [`NodeConfig::block_cache_bytes`]: crate::NodeConfig::block_cache_bytes

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use std::sync::Arc;

use bytes::Bytes;
use cairn_core::ShareRoot;
use cairn_core::chunk::open_chunk;
use cairn_core::crypto::{ChunkKey, open_in_place_with, seal_with};
use cairn_core::manifest::ChunkRef;
use data_encoding::HEXLOWER;
use zeroize::Zeroizing;

use crate::NodeError;
use crate::node::Inner;

/// Associated data of every sealed block.
const BLOCK_AAD: &[u8] = b"cairn-block-v1";
/// Blocks of at least this many bytes are read with direct I/O; smaller ones (manifests, small
/// files) through the page cache, where a second read finds them (a `git status` opens every
/// file of a tree).
const DIRECT_MIN: u64 = 256 * 1024;
/// Bytes of the node-local cache key.
const KEY_LEN: usize = 32;
/// Alignment of a direct read's buffer, offset and length.
const ALIGN: usize = 4096;
/// Free read buffers kept for reuse (see [`BufferPool`]).
const POOL_BUFFERS: usize = 8;
/// Read buffers are made in multiples of this, so one serves chunks of nearby sizes.
const POOL_STEP: usize = 256 * 1024;

/// A block's file name: a keyed hash of its share root.
pub(crate) type BlockName = [u8; 32];

/// What the cache holds (for `cairn status`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CacheUsage {
    /// Plaintext bytes held.
    pub bytes: u64,
    /// Blocks held.
    pub blocks: u64,
    /// Plaintext bytes of pinned blocks (kept whatever the budget).
    pub pinned_bytes: u64,
    /// The budget for unpinned blocks.
    pub budget_bytes: u64,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    len: u64,
    used: u64,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<BlockName, Entry>,
    /// Pin counts; a pinned name may not be cached yet.
    pins: HashMap<BlockName, u32>,
    total: u64,
    tick: u64,
}

/// The node's block cache (see the module docs). All methods do blocking file I/O.
pub(crate) struct BlockCache {
    dir: PathBuf,
    name_key: Zeroizing<[u8; 32]>,
    seal_key: Zeroizing<[u8; 32]>,
    budget: u64,
    state: Mutex<State>,
    buffers: Arc<BufferPool>,
}

/// Read buffers of blocks no longer in use, kept for the next direct reads: a new buffer
/// costs zeroing and page faults, which on a sequential read from the cache weigh as much as
/// the copy itself.
#[derive(Debug, Default)]
struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
}

impl BufferPool {
    /// A buffer with room for `len` bytes at an [`ALIGN`]ed offset (its bytes unspecified),
    /// and that offset.
    fn take(&self, len: usize) -> (Vec<u8>, usize) {
        let fits = |b: &Vec<u8>| b.as_ptr().align_offset(ALIGN) + len <= b.len();
        let found = {
            let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
            let smallest = (0..free.len())
                .filter(|&i| fits(&free[i]))
                .min_by_key(|&i| free[i].len());
            smallest.map(|i| free.swap_remove(i))
        };
        let buf = found.unwrap_or_else(|| vec![0u8; (len + ALIGN).next_multiple_of(POOL_STEP)]);
        let at = buf.as_ptr().align_offset(ALIGN);
        (buf, at)
    }

    /// Keeps `buf` for a later read, if the pool has room.
    fn give(&self, buf: Vec<u8>) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < POOL_BUFFERS && buf.len() >= POOL_STEP {
            free.push(buf);
        }
    }
}

/// A pooled buffer behind a [`Bytes`]: back to the pool when its last view is dropped.
struct Pooled {
    buf: Vec<u8>,
    pool: Arc<BufferPool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.buf));
    }
}

impl std::fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCache")
            .field("dir", &self.dir)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl BlockCache {
    /// Opens (or creates) the cache under `root` (`DIR/cache`) with a budget in bytes; drops
    /// temporary files a crash left.
    pub(crate) fn open(root: &Path, budget: u64) -> Result<BlockCache, NodeError> {
        let dir = root.join("blocks");
        fs::create_dir_all(&dir).map_err(|e| NodeError::io(&dir, e))?;
        let key = load_or_make_key(&root.join("key"))?;
        let name_key = Zeroizing::new(blake3::derive_key("cairn block cache names v1", &key[..]));
        let seal_key = Zeroizing::new(blake3::derive_key("cairn block cache seal v1", &key[..]));
        let mut found: Vec<(std::time::SystemTime, BlockName, u64)> = Vec::new();
        for item in fs::read_dir(&dir).map_err(|e| NodeError::io(&dir, e))? {
            let item = item.map_err(|e| NodeError::io(&dir, e))?;
            let path = item.path();
            let name = item.file_name();
            let parsed = name
                .to_str()
                .and_then(|n| HEXLOWER.decode(n.as_bytes()).ok())
                .and_then(|b| BlockName::try_from(b.as_slice()).ok());
            let meta = item.metadata().ok();
            match (parsed, meta) {
                (Some(name), Some(meta)) if meta.is_file() => {
                    let len = meta
                        .len()
                        .saturating_sub(cairn_core::crypto::TAG_LEN as u64);
                    let at = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
                    found.push((at, name, len));
                }
                _ => {
                    let _ = fs::remove_file(&path);
                }
            }
        }
        found.sort();
        let mut state = State::default();
        for (at, (_, name, len)) in found.into_iter().enumerate() {
            state.entries.insert(
                name,
                Entry {
                    len,
                    used: at as u64,
                },
            );
            state.total += len;
            state.tick = at as u64 + 1;
        }
        Ok(BlockCache {
            dir,
            name_key,
            seal_key,
            budget,
            state: Mutex::new(state),
            buffers: Arc::default(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The file name of the block at `root`.
    pub(crate) fn name(&self, root: &ShareRoot) -> BlockName {
        *blake3::keyed_hash(&self.name_key, root.as_bytes()).as_bytes()
    }

    fn path(&self, name: &BlockName) -> PathBuf {
        self.dir.join(HEXLOWER.encode(name))
    }

    /// The key that seals the block at `root` (one key per block: its plaintext is fixed by
    /// the root, so the zero nonce never meets two messages).
    fn block_key(&self, root: &ShareRoot) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(*blake3::keyed_hash(&self.seal_key, root.as_bytes()).as_bytes())
    }

    /// The block at `root`, if held and intact; made most recently used.
    pub(crate) fn get(&self, root: &ShareRoot) -> Option<Bytes> {
        let name = self.name(root);
        let direct = {
            let mut state = self.state();
            state.tick += 1;
            let tick = state.tick;
            let entry = state.entries.get_mut(&name)?;
            entry.used = tick;
            entry.len >= DIRECT_MIN
        };
        let path = self.path(&name);
        let opened = read_block(&path, direct, &self.buffers)
            .ok()
            .and_then(|read| {
                let ReadBuf {
                    mut buf,
                    at,
                    len,
                    pooled,
                } = read;
                let plain =
                    open_in_place_with(&self.block_key(root), BLOCK_AAD, &mut buf[at..at + len]);
                let bytes = if pooled {
                    Bytes::from_owner(Pooled {
                        buf,
                        pool: self.buffers.clone(),
                    })
                } else {
                    Bytes::from(buf)
                };
                Some(bytes.slice(at..at + plain.ok()?))
            });
        if opened.is_none() {
            tracing::debug!("dropping a cached block that does not open");
            self.remove(&name);
        }
        opened
    }

    /// Whether the block at `root` is held.
    pub(crate) fn contains(&self, root: &ShareRoot) -> bool {
        let name = self.name(root);
        self.state().entries.contains_key(&name)
    }

    /// Stores the block at `root`, then evicts past the budget. A block larger than the whole
    /// budget is not kept unless pinned.
    pub(crate) fn put(&self, root: &ShareRoot, plain: &[u8]) -> Result<(), NodeError> {
        let name = self.name(root);
        let len = plain.len() as u64;
        {
            let state = self.state();
            if state.entries.contains_key(&name) {
                return Ok(());
            }
            if len > self.budget && !state.pins.contains_key(&name) {
                return Ok(());
            }
        }
        let sealed = seal_with(&self.block_key(root), BLOCK_AAD, plain.to_vec());
        let path = self.path(&name);
        let tmp = path.with_extension(format!("tmp{:016x}", rand::random::<u64>()));
        let written = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&sealed))
            .and_then(|()| fs::rename(&tmp, &path));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(NodeError::io(&path, e));
        }
        let evict = {
            let mut state = self.state();
            state.tick += 1;
            let used = state.tick;
            if state.entries.insert(name, Entry { len, used }).is_none() {
                state.total += len;
            }
            self.over_budget(&mut state)
        };
        for name in evict {
            let _ = fs::remove_file(self.path(&name));
        }
        Ok(())
    }

    /// Takes the least recently used unpinned entries out of `state` until what is unpinned
    /// fits the budget; returns their names.
    fn over_budget(&self, state: &mut State) -> Vec<BlockName> {
        let pinned: u64 = pinned_bytes(state);
        let mut unpinned = state.total - pinned;
        if unpinned <= self.budget {
            return Vec::new();
        }
        let mut candidates: Vec<(u64, BlockName, u64)> = state
            .entries
            .iter()
            .filter(|(name, _)| !state.pins.contains_key(*name))
            .map(|(name, e)| (e.used, *name, e.len))
            .collect();
        candidates.sort_unstable();
        let mut out = Vec::new();
        for (_, name, len) in candidates {
            if unpinned <= self.budget {
                break;
            }
            state.entries.remove(&name);
            state.total -= len;
            unpinned -= len;
            out.push(name);
        }
        out
    }

    fn remove(&self, name: &BlockName) {
        let mut state = self.state();
        if let Some(e) = state.entries.remove(name) {
            state.total -= e.len;
        }
        drop(state);
        let _ = fs::remove_file(self.path(name));
    }

    /// Counts one more pin of each of `names`.
    pub(crate) fn pin(&self, names: &[BlockName]) {
        let mut state = self.state();
        for name in names {
            *state.pins.entry(*name).or_default() += 1;
        }
    }

    /// Counts one pin less of each of `names`, then evicts past the budget.
    pub(crate) fn unpin(&self, names: &[BlockName]) {
        let evict = {
            let mut state = self.state();
            for name in names {
                if let Some(count) = state.pins.get_mut(name) {
                    *count -= 1;
                    if *count == 0 {
                        state.pins.remove(name);
                    }
                }
            }
            self.over_budget(&mut state)
        };
        for name in evict {
            let _ = fs::remove_file(self.path(&name));
        }
    }

    /// What the cache holds.
    pub(crate) fn usage(&self) -> CacheUsage {
        let state = self.state();
        CacheUsage {
            bytes: state.total,
            blocks: state.entries.len() as u64,
            pinned_bytes: pinned_bytes(&state),
            budget_bytes: self.budget,
        }
    }
}

/// What a read does with a chunk it had to fetch from the grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Keep {
    /// Nothing (a whole-file get streams through; caching it would churn the cache).
    Not,
    /// Caches it in the background.
    Later,
    /// Caches it before returning (pinning).
    Now,
}

impl Inner {
    /// The decrypted chunk `chunk`: from the block cache, or fetched, verified and decrypted.
    pub(crate) async fn chunk_plain(
        self: &Arc<Self>,
        chunk: &ChunkRef,
        key: &ChunkKey,
        keep: Keep,
    ) -> Result<Bytes, NodeError> {
        let root = chunk.root;
        let plain_len = chunk.plain_len;
        if let Some(plain) = self.cached_block(&root).await?
            && plain.len() == plain_len as usize
        {
            return Ok(plain);
        }
        let fetched = self.fetch_blob(&root).await?;
        let key = key.clone();
        let plain = blocking(move || {
            open_chunk(&fetched.header, fetched.shares, &key, plain_len).map_err(NodeError::from)
        })
        .await?;
        let plain = Bytes::from(plain);
        self.keep_block(root, plain.clone(), keep).await?;
        Ok(plain)
    }

    /// The block at `root`, if the cache holds it.
    pub(crate) async fn cached_block(
        self: &Arc<Self>,
        root: &ShareRoot,
    ) -> Result<Option<Bytes>, NodeError> {
        if !self.blocks.contains(root) {
            return Ok(None);
        }
        let blocks = self.blocks.clone();
        let root = *root;
        blocking(move || Ok(blocks.get(&root))).await
    }

    /// Puts a block in the cache as `keep` says.
    pub(crate) async fn keep_block(
        self: &Arc<Self>,
        root: ShareRoot,
        plain: Bytes,
        keep: Keep,
    ) -> Result<(), NodeError> {
        let blocks = self.blocks.clone();
        let put = move || blocks.put(&root, &plain);
        match keep {
            Keep::Not => Ok(()),
            Keep::Now => blocking(put).await,
            Keep::Later => {
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = put() {
                        tracing::debug!(error = %e, "could not cache a block");
                    }
                });
                Ok(())
            }
        }
    }
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NodeError> + Send + 'static,
) -> Result<T, NodeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| NodeError::Control(e.to_string()))?
}

/// A block's file read into memory: `len` bytes at `at` in `buf`, which came from the pool
/// if `pooled`.
struct ReadBuf {
    buf: Vec<u8>,
    at: usize,
    len: usize,
    pooled: bool,
}

/// Reads a whole file into a buffer. With `direct`, direct I/O (past the page cache, so many
/// reads at once go at the disk's speed and the cache's files do not take memory twice) into a
/// buffer from `pool` where the file system allows it; else a plain read.
fn read_block(path: &Path, direct: bool, pool: &BufferPool) -> std::io::Result<ReadBuf> {
    use std::os::unix::fs::FileExt;
    if direct
        && let Ok(file) = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
    {
        let len = file.metadata()?.len() as usize;
        let (mut buf, at) = pool.take(len.next_multiple_of(ALIGN));
        let end = at + len.next_multiple_of(ALIGN);
        let mut done = 0usize;
        let mut direct_ok = true;
        while done < len {
            match file.read_at(&mut buf[at + done..end], done as u64) {
                Ok(0) => break,
                Ok(n) if (done + n).is_multiple_of(ALIGN) || done + n >= len => done += n,
                Ok(_) | Err(_) => {
                    direct_ok = false;
                    break;
                }
            }
        }
        if direct_ok && done == len {
            return Ok(ReadBuf {
                buf,
                at,
                len,
                pooled: true,
            });
        }
        pool.give(buf);
    }
    let buf = fs::read(path)?;
    let len = buf.len();
    Ok(ReadBuf {
        buf,
        at: 0,
        len,
        pooled: false,
    })
}

fn pinned_bytes(state: &State) -> u64 {
    state
        .pins
        .keys()
        .filter_map(|n| state.entries.get(n))
        .map(|e| e.len)
        .sum()
}

/// The node-local cache key: read from `path`, or made and written there (mode 0600).
fn load_or_make_key(path: &Path) -> Result<Zeroizing<[u8; KEY_LEN]>, NodeError> {
    match fs::read(path) {
        Ok(bytes) => {
            let bytes = Zeroizing::new(bytes);
            let key =
                <[u8; KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| NodeError::Config {
                    path: path.to_path_buf(),
                    detail: format!("a cache key is {KEY_LEN} bytes, found {}", bytes.len()),
                })?;
            Ok(Zeroizing::new(key))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Zeroizing::new(rand::random::<[u8; KEY_LEN]>());
            crate::dir::write_atomic(path, &key[..], true)?;
            Ok(key)
        }
        Err(e) => Err(NodeError::io(path, e)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn root(n: u8) -> ShareRoot {
        ShareRoot::from_bytes([n; 32])
    }

    fn block(n: u8, len: usize) -> Vec<u8> {
        let mut b = format!("PLAINTEXT-MARKER-{n}-").into_bytes();
        b.resize(len, n);
        b
    }

    #[test]
    fn blocks_round_trip_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlockCache::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(cache.get(&root(1)), None);
        cache.put(&root(1), &block(1, 1000)).unwrap();
        assert_eq!(cache.get(&root(1)).as_deref(), Some(&block(1, 1000)[..]));
        drop(cache);
        let cache = BlockCache::open(dir.path(), 1 << 20).unwrap();
        assert!(cache.contains(&root(1)));
        assert_eq!(cache.get(&root(1)).as_deref(), Some(&block(1, 1000)[..]));
        assert_eq!(cache.usage().bytes, 1000);
    }

    /// Large blocks are read into pooled buffers: one dropped is taken by the next read, and
    /// what it held before never shows through.
    #[test]
    fn large_blocks_reuse_the_buffers_of_blocks_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlockCache::open(dir.path(), 64 << 20).unwrap();
        let pooled = || cache.buffers.free.lock().unwrap().len();
        let (big, smaller) = (block(1, 3 << 20), block(2, (1 << 20) + 77));
        cache.put(&root(1), &big).unwrap();
        cache.put(&root(2), &smaller).unwrap();
        let first = cache.get(&root(1)).unwrap();
        assert_eq!(first, big);
        assert_eq!(pooled(), 0);
        drop(first);
        let direct = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(cache.path(&cache.name(&root(1))))
            .is_ok();
        // Where the file system refuses direct I/O, reads are plain and nothing is pooled.
        if !direct {
            eprintln!("direct I/O is not available under {}", dir.path().display());
            assert_eq!(pooled(), 0);
        } else {
            assert_eq!(pooled(), 1, "the buffer went back to the pool");
            let second = cache.get(&root(2)).unwrap();
            assert_eq!(pooled(), 0, "the free buffer was reused");
            assert_eq!(second, smaller);
            drop(second);
            assert_eq!(pooled(), 1);
        }
        assert_eq!(cache.get(&root(1)).unwrap(), big);
    }

    #[test]
    fn blocks_are_encrypted_at_rest_under_hashed_names() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlockCache::open(dir.path(), 1 << 20).unwrap();
        cache.put(&root(7), &block(7, 5000)).unwrap();
        for item in fs::read_dir(dir.path().join("blocks")).unwrap() {
            let item = item.unwrap();
            let name = item.file_name().into_string().unwrap();
            assert!(!name.contains(&HEXLOWER.encode(root(7).as_bytes())));
            let bytes = fs::read(item.path()).unwrap();
            assert!(!bytes.windows(16).any(|w| w == b"PLAINTEXT-MARKER"));
        }
        let key = fs::metadata(dir.path().join("key")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(key.permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn a_tampered_or_foreign_block_is_a_miss_and_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlockCache::open(dir.path(), 1 << 20).unwrap();
        cache.put(&root(1), &block(1, 100)).unwrap();
        cache.put(&root(2), &block(2, 100)).unwrap();
        let path = cache.path(&cache.name(&root(1)));
        let mut bytes = fs::read(&path).unwrap();
        bytes[10] ^= 1;
        fs::write(&path, bytes).unwrap();
        assert_eq!(cache.get(&root(1)), None);
        assert!(!path.exists());
        // Another node's key opens nothing.
        fs::remove_file(dir.path().join("key")).unwrap();
        let other = BlockCache::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(other.get(&root(2)), None);
    }

    #[test]
    fn the_least_recently_used_unpinned_blocks_go_past_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlockCache::open(dir.path(), 3000).unwrap();
        cache.pin(&[cache.name(&root(1))]);
        for n in 1..=3 {
            cache.put(&root(n), &block(n, 1000)).unwrap();
        }
        assert!(cache.get(&root(2)).is_some());
        cache.put(&root(4), &block(4, 1000)).unwrap();
        cache.put(&root(5), &block(5, 1000)).unwrap();
        // Pinned 1 stays beyond the budget; 3 (least recently used) went first.
        assert!(cache.contains(&root(1)));
        assert!(!cache.contains(&root(3)));
        let usage = cache.usage();
        assert_eq!(usage.pinned_bytes, 1000);
        assert!(usage.bytes - usage.pinned_bytes <= 3000, "{usage:?}");
        assert_eq!(
            fs::read_dir(dir.path().join("blocks")).unwrap().count() as u64,
            usage.blocks
        );
        cache.unpin(&[cache.name(&root(1))]);
        cache.put(&root(6), &block(6, 1000)).unwrap();
        assert!(cache.usage().bytes <= 3000);
        // Too large for the whole budget: not kept.
        cache.put(&root(9), &block(9, 4000)).unwrap();
        assert!(!cache.contains(&root(9)));
    }
}

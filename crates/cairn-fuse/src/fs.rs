//! The FUSE file system: kernel requests mapped onto the node's tree API.
//!
//! Design: fuser calls the [`Filesystem`] methods on its own threads; each method that needs
//! the grid moves its reply into a task on the node's tokio runtime and returns at once, so
//! slow requests do not hold up others. Every grid call has a time limit ([`OP_TIMEOUT`]); past
//! it the request fails with `EIO`, so the mount never hangs.
//!
//! State, all in one [`Shared`] behind short-held locks: the inode table, open handles, staged
//! writes (see [`crate::staging`]), and a cache of directory listings valid for
//! [`LISTING_TTL`] and dropped on every local change and every change the node hears of from
//! the grid (then the kernel's caches are invalidated too).

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_core::SlotId;
use cairn_core::cap::Cap;
use cairn_dir::Meta;
use cairn_node::{DirCap, FileReader, Location, LsEntry, LsReport, Node, NodeError, PutReport};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    Notifier, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use tracing::{debug, warn};

use crate::dirmeta::{self, DirMeta};
use crate::inode::{Inodes, ROOT};
use crate::staging::{self, Staged};

/// How long the kernel may cache names and attributes, and this mount its listings.
pub const LISTING_TTL: Duration = Duration::from_secs(1);
/// The longest a directory operation or a read may take before it fails with `EIO`.
pub const OP_TIMEOUT: Duration = Duration::from_secs(30);
/// How far ahead of a sequential reader chunks are fetched.
pub const READ_AHEAD: usize = 16 * 1024 * 1024;
/// A closed file is uploaded in the background once it was left unchanged this long (so a
/// `utimens` or `chmod` right after `close` goes in the same upload).
pub const UPLOAD_AFTER_CLOSE: Duration = Duration::from_millis(200);
/// A file held open for writing is uploaded in the background once no write came for this long.
pub const UPLOAD_WHEN_IDLE: Duration = Duration::from_secs(5);
/// ... and at least this often while writes keep coming.
pub const UPLOAD_AT_LEAST_EVERY: Duration = Duration::from_secs(60);
/// Block size reported by `stat` (what `cp` and `dd` size their buffers by).
const BLKSIZE: u32 = 128 * 1024;
/// Files up to this size are uploaded together, many in one put and one version per directory.
const BATCH_FILE_BYTES: u64 = 1 << 20;
/// At most this many files go in one batch.
const BATCH_FILES: usize = 512;
/// At most this many bytes go in one batch.
const BATCH_BYTES: u64 = 64 << 20;
/// Rounds of retries a drain (`fsyncdir`, unmount) makes for files whose upload failed.
const DRAIN_ROUNDS: usize = 3;

/// Counters of one mount's uploads.
#[derive(Debug, Default)]
pub struct UploadStats {
    /// Files uploaded.
    pub uploads: AtomicU64,
    /// Shares sent to holders.
    pub shares_sent: AtomicU64,
    /// Share bytes sent.
    pub bytes_sent: AtomicU64,
}

/// What one `setattr` changes.
#[derive(Clone, Copy, Debug, Default)]
struct AttrChange {
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    size: Option<u64>,
    atime_ns: Option<i64>,
    mtime_ns: Option<i64>,
}

impl AttrChange {
    fn is_empty(&self) -> bool {
        self.mode.is_none()
            && self.uid.is_none()
            && self.gid.is_none()
            && self.size.is_none()
            && self.atime_ns.is_none()
            && self.mtime_ns.is_none()
    }

    /// `meta` with this change made; an owner not set yet starts from `default_owner`.
    fn applied_to(&self, mut meta: Meta, default_owner: (u32, u32)) -> Meta {
        if let Some(mode) = self.mode {
            meta.mode = mode & 0o7777;
        }
        if let Some(t) = self.mtime_ns {
            meta.mtime_ns = t;
        }
        if let Some(t) = self.atime_ns {
            meta.atime_ns = Some(t);
        }
        if self.uid.is_some() || self.gid.is_some() {
            let (uid, gid) = meta.owner.unwrap_or(default_owner);
            meta.owner = Some((self.uid.unwrap_or(uid), self.gid.unwrap_or(gid)));
        }
        meta
    }
}

/// An open handle.
enum Handle {
    File {
        ino: u64,
        write: bool,
        append: bool,
        reader: Option<FileReader>,
        next: u64,
    },
    Dir {
        entries: Vec<(u64, FileType, String)>,
    },
}

/// Everything the request handlers share (see the module docs).
pub(crate) struct Shared {
    pub(crate) node: Node,
    read_only: bool,
    uid: u32,
    gid: u32,
    mounted_at: SystemTime,
    staging_dir: PathBuf,
    inodes: Mutex<Inodes>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    staged: Mutex<HashMap<u64, Arc<Staged>>>,
    listings: Mutex<HashMap<SlotId, (Instant, Arc<LsReport>)>>,
    /// Bumped by every drop or change of a cached listing, so a listing read before it is
    /// not kept after it.
    listing_generation: AtomicU64,
    /// Held while a change made here goes into a cached listing (see [`Shared::relist`]).
    relisting: tokio::sync::Mutex<()>,
    /// Metadata set on directories here and not stored in their entries yet.
    kept_meta: DirMeta,
    /// Held while kept directory metadata is stored.
    storing_meta: tokio::sync::Mutex<()>,
    /// Wakes the background uploader (a file was closed).
    upload_wake: tokio::sync::Notify,
    /// Mode and mtime of the mount's root, as last set on this node (the root has no entry to
    /// hold them; `root_meta_path` keeps them across mounts).
    dir_meta: Mutex<HashMap<u64, Meta>>,
    /// Where this node keeps the metadata of the mount's root (which has no entry on the grid).
    root_meta_path: PathBuf,
    watched: Mutex<HashSet<SlotId>>,
    pub(crate) notifier: OnceLock<Notifier>,
    pub(crate) stats: Arc<UploadStats>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn time_of_ns(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

fn ns_of_time(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i64,
        Err(e) => -(e.duration().as_nanos() as i64),
    }
}

/// The text form of a directory cap, to start a location with.
pub(crate) fn cap_text(cap: &DirCap) -> String {
    cap.to_cap().to_string()
}

/// The errno for a node error (the table is in `docs/specs/mount.md`).
pub(crate) fn errno(e: &NodeError) -> Errno {
    match e {
        NodeError::NotFound(_) => Errno::ENOENT,
        NodeError::NotADirectory(_) => Errno::ENOTDIR,
        NodeError::IsADirectory(_) => Errno::EISDIR,
        NodeError::AlreadyExists(_) => Errno::EEXIST,
        NodeError::ReadOnly(_) => Errno::EROFS,
        NodeError::Dir(cairn_dir::DirError::BadName { .. }) => Errno::EINVAL,
        NodeError::Invalid(_) | NodeError::BadCap(_) => Errno::EINVAL,
        _ => Errno::EIO,
    }
}

/// Runs `f` under [`OP_TIMEOUT`]; a timeout is an I/O error.
async fn limited<T>(
    f: impl std::future::Future<Output = Result<T, NodeError>>,
) -> Result<T, NodeError> {
    match tokio::time::timeout(OP_TIMEOUT, f).await {
        Ok(r) => r,
        Err(_) => Err(NodeError::Aborted(format!(
            "no answer within {} s",
            OP_TIMEOUT.as_secs()
        ))),
    }
}

fn name_of(name: &OsStr) -> Result<&str, Errno> {
    let name = name.to_str().ok_or(Errno::EINVAL)?;
    if name.len() > cairn_dir::MAX_NAME_LEN {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(name)
}

fn kind_of(entry: &LsEntry) -> FileType {
    match entry.kind.as_str() {
        "dir" => FileType::Directory,
        "symlink" => FileType::Symlink,
        _ => FileType::RegularFile,
    }
}

impl Shared {
    pub(crate) fn new(
        node: Node,
        root: DirCap,
        staging_dir: PathBuf,
        stats: Arc<UploadStats>,
    ) -> Shared {
        use std::os::unix::fs::MetadataExt;
        let owner = std::fs::metadata(node.dir().root()).ok();
        let root_meta_path = node
            .dir()
            .root()
            .join("mounts")
            .join(format!("{}.json", root.slot()));
        let mut dir_meta = HashMap::new();
        if let Some(meta) = std::fs::read(&root_meta_path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Meta>(&bytes).ok())
        {
            dir_meta.insert(ROOT, meta);
        }
        Shared {
            read_only: root.write_cap().is_none(),
            uid: owner.as_ref().map_or(0, |m| m.uid()),
            gid: owner.as_ref().map_or(0, |m| m.gid()),
            mounted_at: SystemTime::now(),
            inodes: Mutex::new(Inodes::new(root)),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            staged: Mutex::new(HashMap::new()),
            listings: Mutex::new(HashMap::new()),
            listing_generation: AtomicU64::new(0),
            relisting: tokio::sync::Mutex::new(()),
            kept_meta: DirMeta::new(&staging_dir),
            storing_meta: tokio::sync::Mutex::new(()),
            upload_wake: tokio::sync::Notify::new(),
            dir_meta: Mutex::new(dir_meta),
            root_meta_path,
            watched: Mutex::new(HashSet::new()),
            notifier: OnceLock::new(),
            stats,
            staging_dir,
            node,
        }
    }

    /// The cap of directory `ino`, resolving it through its parent if not known yet.
    async fn dir_cap(&self, ino: u64) -> Result<DirCap, NodeError> {
        let mut chain = Vec::new();
        let mut at = ino;
        let mut cap = loop {
            let inode = locked(&self.inodes)
                .get(at)
                .cloned()
                .ok_or_else(|| NodeError::NotFound(format!("inode {at}")))?;
            if let Some(cap) = inode.dir {
                break cap;
            }
            chain.push((at, inode.name));
            at = inode.parent;
        };
        while let Some((child, name)) = chain.pop() {
            cap = self.child_dir_cap(&cap, &name).await?;
            locked(&self.inodes).set_dir(child, Some(cap.clone()));
        }
        Ok(cap)
    }

    async fn child_dir_cap(&self, parent: &DirCap, name: &str) -> Result<DirCap, NodeError> {
        let location = format!("{}/{name}", cap_text(parent));
        let writable = parent.write_cap().is_some()
            && self
                .entry(parent, name)
                .await?
                .ok_or_else(|| NodeError::NotFound(name.to_owned()))?
                .writable;
        let text = limited(self.node.share(&location, writable)).await?;
        DirCap::from_cap(text.parse::<Cap>()?)
            .ok_or_else(|| NodeError::NotADirectory(name.to_owned()))
    }

    /// The cap of the file `name` in `parent`.
    async fn file_cap(&self, parent: &DirCap, name: &str) -> Result<Cap, NodeError> {
        limited(self.node.resolve_file_at(&Location::in_dir(parent, name))).await
    }

    /// The listing of `cap`, from the cache when fresh.
    async fn listing(&self, cap: &DirCap) -> Result<Arc<LsReport>, NodeError> {
        let slot = cap.slot();
        if let Some((at, report)) = locked(&self.listings).get(&slot)
            && at.elapsed() < LISTING_TTL
        {
            return Ok(report.clone());
        }
        let generation = self.listing_generation.load(Ordering::SeqCst);
        let report = Arc::new(limited(self.node.ls(&cap_text(cap))).await?);
        let mut listings = locked(&self.listings);
        if self.listing_generation.load(Ordering::SeqCst) == generation {
            listings.insert(slot, (Instant::now(), report.clone()));
        }
        drop(listings);
        self.watch(cap);
        Ok(report)
    }

    /// Subscribes to pushed changes of a directory this mount has looked at.
    fn watch(&self, cap: &DirCap) {
        if !locked(&self.watched).insert(cap.slot()) {
            return;
        }
        let node = self.node.clone();
        let cap = cap.clone();
        tokio::spawn(async move {
            if let Err(e) = node.watch(&cap).await {
                debug!(error = %e, "could not watch a mounted directory");
            }
        });
    }

    fn forget_listing(&self, cap: &DirCap) {
        let mut listings = locked(&self.listings);
        self.listing_generation.fetch_add(1, Ordering::SeqCst);
        listings.remove(&cap.slot());
    }

    /// Brings the cached listing of `cap` up to date after this mount changed `names` in it:
    /// the node's lines for those names go in, so a large directory is not listed whole again
    /// after each change. When a name takes part in a conflict the listing is dropped instead.
    async fn relist(&self, cap: &DirCap, names: &[&str]) {
        // One at a time: each reads the node's lines after the one before, so a later change
        // of a name is never overwritten by an earlier one.
        let _in_order = self.relisting.lock().await;
        let lines = limited(self.node.plain_lines(cap, names)).await;
        let mut listings = locked(&self.listings);
        self.listing_generation.fetch_add(1, Ordering::SeqCst);
        let slot = cap.slot();
        match (lines, listings.get_mut(&slot)) {
            (Ok(Some(lines)), Some((_, report))) if report.conflicts == 0 => {
                let report = Arc::make_mut(report);
                for (name, line) in names.iter().zip(lines) {
                    report.set(name, line);
                }
            }
            _ => {
                listings.remove(&slot);
            }
        }
    }

    /// The file made through this mount as `name` in `parent` that the grid has no entry for
    /// yet (it is linked at its first upload).
    fn pending(&self, parent: u64, name: &str) -> Option<(u64, Arc<Staged>)> {
        self.staged_child(parent, name)
            .filter(|(_, staged)| staged.unlinked())
    }

    /// The staged copy of the file at `parent`/`name`, linked or not.
    fn staged_child(&self, parent: u64, name: &str) -> Option<(u64, Arc<Staged>)> {
        let ino = locked(&self.inodes).child(parent, name)?;
        let staged = locked(&self.staged).get(&ino).cloned()?;
        Some((ino, staged))
    }

    /// Holds off the uploads of the staged files at these names (in inode order) until the
    /// guards drop, after waiting for any under way: a rename or removal then sees each file
    /// either linked or not, and no upload links it behind the change's back.
    async fn hold_uploads(&self, at: &[(u64, &str)]) -> Vec<tokio::sync::OwnedMutexGuard<()>> {
        let mut staged: Vec<(u64, Arc<Staged>)> = at
            .iter()
            .filter_map(|(parent, name)| {
                let ino = locked(&self.inodes).child(*parent, name)?;
                let staged = locked(&self.staged).get(&ino).cloned()?;
                Some((ino, staged))
            })
            .collect();
        staged.sort_by_key(|(ino, _)| *ino);
        staged.dedup_by_key(|(ino, _)| *ino);
        let mut guards = Vec::new();
        for (_, s) in staged {
            guards.push(s.hold().await);
        }
        guards
    }

    /// Drops the staged copy of `ino` once it is settled (no writer, nothing to upload).
    fn retire(&self, ino: u64) {
        let mut map = locked(&self.staged);
        if map.get(&ino).is_some_and(|s| s.settled())
            && let Some(staged) = map.remove(&ino)
        {
            staged.discard();
        }
    }

    async fn entry(&self, cap: &DirCap, name: &str) -> Result<Option<LsEntry>, NodeError> {
        let listing = self.listing(cap).await?;
        Ok(listing.get(name).cloned())
    }

    /// The attributes of `ino` from its kind, size and stored metadata. The owner is who
    /// mounts it unless a `chown` set one; the access time is the mtime unless set.
    fn make_attr(
        &self,
        ino: u64,
        kind: FileType,
        size: u64,
        meta: &Meta,
        ctime: SystemTime,
    ) -> FileAttr {
        let mtime = time_of_ns(meta.mtime_ns);
        let (uid, gid) = meta.owner.unwrap_or((self.uid, self.gid));
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: meta.atime_ns.map_or(mtime, time_of_ns),
            mtime,
            ctime: ctime.max(mtime),
            crtime: mtime,
            kind,
            perm: (meta.mode & 0o7777) as u16,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid,
            gid,
            rdev: 0,
            blksize: BLKSIZE,
            flags: 0,
        }
    }

    /// What the mount's root shows: as last set through a mount of it on this node, else 0755
    /// since the mount.
    fn root_meta(&self) -> Meta {
        locked(&self.dir_meta).get(&ROOT).copied().unwrap_or(Meta {
            mode: 0o755,
            mtime_ns: ns_of_time(self.mounted_at),
            ..Default::default()
        })
    }

    /// Writes the root's metadata where the next mount of the same directory finds it.
    fn keep_root_meta(&self, meta: &Meta) -> Result<(), NodeError> {
        let path = &self.root_meta_path;
        let bytes = serde_json::to_vec(meta).map_err(|e| NodeError::Invalid(e.to_string()))?;
        let tmp = path.with_extension("tmp");
        path.parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&tmp, &bytes))
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| NodeError::io(path, e))
    }

    fn root_attr(&self) -> FileAttr {
        let meta = self.root_meta();
        let ctime = time_of_ns(meta.mtime_ns);
        self.make_attr(ROOT, FileType::Directory, 0, &meta, ctime)
    }

    /// The attributes of a file made through this mount and not on the grid yet.
    fn staged_attr(&self, ino: u64, staged: &Staged) -> FileAttr {
        let meta = staged.lock().entry.meta;
        let ctime = time_of_ns(meta.mtime_ns);
        self.make_attr(ino, FileType::RegularFile, staged.len(), &meta, ctime)
    }

    /// The metadata of `ino` as the mount shows it: its entry's, or its staged copy's.
    fn meta_of(&self, ino: u64, entry: &LsEntry) -> (u64, Meta) {
        if entry.kind == "file"
            && let Some(staged) = locked(&self.staged).get(&ino).cloned()
        {
            return (staged.len(), staged.lock().entry.meta);
        }
        if entry.kind == "dir"
            && let Some(meta) = self.kept_meta.get(ino)
        {
            return (entry.size, meta);
        }
        let meta = Meta {
            mode: entry.mode,
            mtime_ns: entry.mtime_ns,
            owner: entry.owner,
            atime_ns: entry.atime_ns,
        };
        (entry.size, meta)
    }

    fn attr(&self, ino: u64, entry: &LsEntry) -> FileAttr {
        let (size, meta) = self.meta_of(ino, entry);
        let ctime = UNIX_EPOCH + Duration::from_millis(entry.ctime_ms);
        self.make_attr(ino, kind_of(entry), size, &meta, ctime)
    }

    /// The parent's cap and the name of `ino`.
    async fn place(&self, ino: u64) -> Result<(u64, DirCap, String), NodeError> {
        let inode = locked(&self.inodes)
            .get(ino)
            .cloned()
            .ok_or_else(|| NodeError::NotFound(format!("inode {ino}")))?;
        let parent = self.dir_cap(inode.parent).await?;
        Ok((inode.parent, parent, inode.name))
    }

    /// The entry of `ino` as its parent lists it.
    async fn stat(&self, ino: u64) -> Result<FileAttr, NodeError> {
        if ino == ROOT {
            return Ok(self.root_attr());
        }
        let staged = locked(&self.staged).get(&ino).cloned();
        if let Some(staged) = staged
            && staged.unlinked()
        {
            return Ok(self.staged_attr(ino, &staged));
        }
        let (_, parent, name) = self.place(ino).await?;
        let entry = self
            .entry(&parent, &name)
            .await?
            .ok_or_else(|| NodeError::NotFound(name.clone()))?;
        Ok(self.attr(ino, &entry))
    }

    async fn lookup(&self, parent: u64, name: &str) -> Result<FileAttr, NodeError> {
        if let Some((ino, staged)) = self.pending(parent, name) {
            return Ok(self.staged_attr(ino, &staged));
        }
        let cap = self.dir_cap(parent).await?;
        let mut entry = self.entry(&cap, name).await?;
        if entry.is_none() && self.staged_child(parent, name).is_some() {
            // Linked a moment ago: the listing cached before the link does not have it yet
            // (the upload drops that listing just after marking the file linked).
            self.forget_listing(&cap);
            entry = self.entry(&cap, name).await?;
        }
        let entry = entry.ok_or_else(|| NodeError::NotFound(name.to_owned()))?;
        let ino = locked(&self.inodes).ensure(parent, name);
        if entry.kind == "dir" {
            // Resolved afresh: another writer may have replaced the directory.
            let child = self.child_dir_cap(&cap, name).await?;
            locked(&self.inodes).set_dir(ino, Some(child));
        }
        Ok(self.attr(ino, &entry))
    }

    async fn writable_dir(&self, ino: u64) -> Result<DirCap, NodeError> {
        let cap = self.dir_cap(ino).await?;
        if cap.write_cap().is_none() {
            return Err(NodeError::ReadOnly(String::new()));
        }
        Ok(cap)
    }

    async fn mkdir(&self, parent: u64, name: &str, mode: u32) -> Result<FileAttr, NodeError> {
        let cap = self.writable_dir(parent).await?;
        let location = format!("{}/{name}", cap_text(&cap));
        limited(self.node.mkdir_with_mode(&location, false, mode)).await?;
        self.relist(&cap, &[name]).await;
        self.lookup(parent, name).await
    }

    async fn symlink(&self, parent: u64, name: &str, target: &str) -> Result<FileAttr, NodeError> {
        let cap = self.writable_dir(parent).await?;
        let location = format!("{}/{name}", cap_text(&cap));
        limited(self.node.symlink(target, &location)).await?;
        self.relist(&cap, &[name]).await;
        self.lookup(parent, name).await
    }

    async fn remove(&self, parent: u64, name: &str, dir: bool) -> Result<(), NodeError> {
        let cap = self.writable_dir(parent).await?;
        let held = self.hold_uploads(&[(parent, name)]).await;
        if let Some((ino, staged)) = self.pending(parent, name) {
            if dir {
                return Err(NodeError::NotADirectory(name.to_owned()));
            }
            // Never reached the grid: dropping it here is the whole removal.
            staged.forget();
            locked(&self.inodes).unlink(parent, name);
            drop(held);
            self.retire(ino);
            return Ok(());
        }
        let entry = self
            .entry(&cap, name)
            .await?
            .ok_or_else(|| NodeError::NotFound(name.to_owned()))?;
        let location = format!("{}/{name}", cap_text(&cap));
        match (dir, entry.kind == "dir") {
            (false, true) => return Err(NodeError::IsADirectory(name.to_owned())),
            (true, false) => return Err(NodeError::NotADirectory(name.to_owned())),
            (true, true) => {
                let ino = locked(&self.inodes).ensure(parent, name);
                let child = self.dir_cap(ino).await?;
                let children = locked(&self.inodes).children(ino);
                let pending = children
                    .iter()
                    .any(|(name, _)| self.pending(ino, name).is_some());
                if pending || !self.listing(&child).await?.entries.is_empty() {
                    return Err(NodeError::Invalid("directory not empty".into()));
                }
            }
            (false, false) => {}
        }
        limited(self.node.rm(&location, dir)).await?;
        self.relist(&cap, &[name]).await;
        let unlinked = locked(&self.inodes).unlink(parent, name);
        if let Some(ino) = unlinked
            && let Err(e) = self.kept_meta.forget(ino)
        {
            warn!(error = %e, "could not rewrite the kept directory metadata");
        }
        drop(held);
        if let Some(ino) = unlinked {
            let staged = locked(&self.staged).get(&ino).cloned();
            if let Some(staged) = staged {
                staged.forget();
                self.retire(ino);
            }
        }
        Ok(())
    }

    async fn rename(
        &self,
        parent: u64,
        name: &str,
        new_parent: u64,
        new_name: &str,
        no_replace: bool,
    ) -> Result<(), NodeError> {
        let from_cap = self.writable_dir(parent).await?;
        let to_cap = self.writable_dir(new_parent).await?;
        let to_location = format!("{}/{new_name}", cap_text(&to_cap));
        let _held = self
            .hold_uploads(&[(parent, name), (new_parent, new_name)])
            .await;
        let pending_target = self.pending(new_parent, new_name);
        if no_replace && pending_target.is_some() {
            return Err(NodeError::AlreadyExists(new_name.to_owned()));
        }
        if self.pending(parent, name).is_some() {
            // Not on the grid yet: the move is where its first upload links it.
            if parent == new_parent && name == new_name {
                return Ok(());
            }
            if pending_target.is_none()
                && let Some(existing) = self.entry(&to_cap, new_name).await?
            {
                if no_replace {
                    return Err(NodeError::AlreadyExists(new_name.to_owned()));
                }
                if existing.kind == "dir" {
                    return Err(NodeError::IsADirectory(new_name.to_owned()));
                }
                // A file there is replaced when this one is linked.
            }
            self.renamed(parent, name, new_parent, new_name, to_location);
            return Ok(());
        }
        let source = self
            .entry(&from_cap, name)
            .await?
            .ok_or_else(|| NodeError::NotFound(name.to_owned()))?;
        if let Some(existing) = self.entry(&to_cap, new_name).await? {
            if parent == new_parent && name == new_name {
                return Ok(());
            }
            if no_replace {
                return Err(NodeError::AlreadyExists(new_name.to_owned()));
            }
            match (source.kind == "dir", existing.kind == "dir") {
                (false, true) => return Err(NodeError::IsADirectory(new_name.to_owned())),
                (true, false) => return Err(NodeError::NotADirectory(new_name.to_owned())),
                (true, true) => {
                    // rename(2) replaces an empty directory; `mv` would move into it.
                    self.remove(new_parent, new_name, true).await?;
                }
                (false, false) => {}
            }
        }
        // Kept metadata names the directory where it is: stored before it moves.
        let moving = locked(&self.inodes).child(parent, name);
        if let Some(ino) = moving.filter(|ino| self.kept_meta.get(*ino).is_some()) {
            self.store_kept_meta(true, Some(ino)).await?;
        }
        let from_location = format!("{}/{name}", cap_text(&from_cap));
        limited(self.node.mv(&from_location, &to_location)).await?;
        if from_cap.slot() == to_cap.slot() {
            self.relist(&from_cap, &[name, new_name]).await;
        } else {
            self.relist(&from_cap, &[name]).await;
            self.relist(&to_cap, &[new_name]).await;
        }
        self.renamed(parent, name, new_parent, new_name, to_location);
        Ok(())
    }

    /// Moves the inode of `name` to `new_name` and points its staged copy (if any) there; a
    /// staged file it replaces is dropped.
    fn renamed(&self, parent: u64, name: &str, new_parent: u64, new_name: &str, to: String) {
        let (replaced, moved) = {
            let mut inodes = locked(&self.inodes);
            let replaced = inodes.child(new_parent, new_name);
            inodes.rename(parent, name, new_parent, new_name);
            (replaced, inodes.child(new_parent, new_name))
        };
        let staged = |ino: Option<u64>| ino.and_then(|i| locked(&self.staged).get(&i).cloned());
        if replaced != moved
            && let Some(old) = staged(replaced)
        {
            old.forget();
            if let Some(ino) = replaced {
                self.retire(ino);
            }
        }
        if let Some(staged) = staged(moved) {
            staged.lock().entry.location = Some(to);
            if let Err(e) = staged.update_journal() {
                debug!(error = %e, "could not update a staging journal entry");
            }
        }
    }

    /// The staged copy of file `ino`, made (from the file's bytes unless `truncate`) if there
    /// is none. Counts one more writer when `writer`.
    async fn stage(
        &self,
        ino: u64,
        truncate: bool,
        writer: bool,
    ) -> Result<Arc<Staged>, NodeError> {
        if let Some(staged) = locked(&self.staged).get(&ino).cloned() {
            if writer {
                staged.lock().writers += 1;
            }
            return Ok(staged);
        }
        let (_, parent, name) = self.place(ino).await?;
        if parent.write_cap().is_none() {
            return Err(NodeError::ReadOnly(name));
        }
        let entry = self
            .entry(&parent, &name)
            .await?
            .ok_or_else(|| NodeError::NotFound(name.clone()))?;
        if entry.kind != "file" {
            return Err(NodeError::IsADirectory(name));
        }
        let location = format!("{}/{name}", cap_text(&parent));
        // Not copied: its blocks are fetched when written, or at the upload (crate::lazy).
        let base = if !truncate && entry.size > 0 {
            let cap = self.file_cap(&parent, &name).await?;
            let reader = limited(self.node.open_file(&cap)).await?;
            Some((reader, cap.to_string()))
        } else {
            None
        };
        let staged = Staged::create(
            &self.staging_dir,
            location.clone(),
            self.meta_of(ino, &entry).1,
            true,
            base,
            Some(&self.node),
        )?;
        let staged = Arc::new(staged);
        let mut map = locked(&self.staged);
        // Another open may have staged it meanwhile: use the one already there.
        let staged = map.entry(ino).or_insert(staged).clone();
        if writer {
            staged.lock().writers += 1;
        }
        Ok(staged)
    }

    /// Counts uploads and brings the cached listings of their directories up to date.
    async fn uploaded(&self, done: &[(u64, PutReport)]) {
        let mut by_parent: HashMap<u64, Vec<String>> = HashMap::new();
        for (ino, report) in done {
            self.stats.uploads.fetch_add(1, Ordering::Relaxed);
            self.stats
                .shares_sent
                .fetch_add(report.shares_sent, Ordering::Relaxed);
            self.stats
                .bytes_sent
                .fetch_add(report.bytes_sent, Ordering::Relaxed);
            debug!(
                size = report.size,
                shares_sent = report.shares_sent,
                bytes_sent = report.bytes_sent,
                "uploaded a file written through the mount"
            );
            if let Some(inode) = locked(&self.inodes).get(*ino) {
                by_parent
                    .entry(inode.parent)
                    .or_default()
                    .push(inode.name.clone());
            }
        }
        for (parent, names) in by_parent {
            if let Ok(cap) = self.dir_cap(parent).await {
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                self.relist(&cap, &names).await;
            }
        }
    }

    /// Uploads file `ino` now if it changed (`fsync`).
    async fn upload_ino(&self, ino: u64) -> Result<(), NodeError> {
        let staged = locked(&self.staged).get(&ino).cloned();
        let Some(staged) = staged else {
            return Ok(());
        };
        let report = staged.upload(&self.node).await?;
        if let Some(report) = report {
            self.uploaded(&[(ino, report)]).await;
        }
        self.retire(ino);
        Ok(())
    }

    /// The staged files to upload now: closed ones left unchanged for
    /// [`UPLOAD_AFTER_CLOSE`], open ones idle for [`UPLOAD_WHEN_IDLE`] or changing for
    /// [`UPLOAD_AT_LEAST_EVERY`]; a file whose upload failed waits for its retry time. With
    /// `all`, every changed file.
    fn due(&self, all: bool) -> Vec<(u64, Arc<Staged>)> {
        let mut due: Vec<(u64, Arc<Staged>)> = locked(&self.staged)
            .iter()
            .filter(|(_, staged)| {
                let state = staged.lock();
                if !state.dirty {
                    return false;
                }
                if all {
                    return true;
                }
                let now = Instant::now();
                if state.retry_at.is_some_and(|at| at > now) {
                    return false;
                }
                state.changed_at.is_none_or(|(last, first)| {
                    if state.writers == 0 {
                        last.elapsed() >= UPLOAD_AFTER_CLOSE
                    } else {
                        last.elapsed() >= UPLOAD_WHEN_IDLE
                            || first.elapsed() >= UPLOAD_AT_LEAST_EVERY
                    }
                })
            })
            .map(|(ino, staged)| (*ino, staged.clone()))
            .collect();
        // Oldest change first: files go up in about the order they were written.
        due.sort_by_key(|(_, staged)| staged.lock().changed_at.map(|(last, _)| last));
        due
    }

    /// Uploads `files`: small ones in batches (one put, one version per directory), large
    /// ones one by one. Returns how many failed.
    async fn upload_files(&self, files: Vec<(u64, Arc<Staged>)>) -> usize {
        let mut failed = 0;
        let (small, large): (Vec<_>, Vec<_>) = files
            .into_iter()
            .partition(|(_, staged)| staged.len() <= BATCH_FILE_BYTES);
        let mut batches: Vec<Vec<(u64, Arc<Staged>)>> = Vec::new();
        let mut bytes = 0u64;
        for file in small {
            let len = file.1.len();
            match batches.last_mut() {
                Some(batch) if batch.len() < BATCH_FILES && bytes + len <= BATCH_BYTES => {
                    bytes += len;
                    batch.push(file);
                }
                _ => {
                    bytes = len;
                    batches.push(vec![file]);
                }
            }
        }
        for batch in batches {
            let staged: Vec<Arc<Staged>> = batch.iter().map(|(_, s)| s.clone()).collect();
            let results = staging::upload_batch(&self.node, &staged).await;
            let mut done = Vec::new();
            for ((ino, _), result) in batch.iter().zip(results) {
                match result {
                    Ok(Some(report)) => done.push((*ino, report)),
                    Ok(None) => {}
                    Err(e) => {
                        failed += 1;
                        warn!(error = %e, "uploading a file written through the mount failed; it stays staged and is tried again");
                    }
                }
            }
            self.uploaded(&done).await;
            for (ino, _) in &batch {
                self.retire(*ino);
            }
        }
        for (ino, staged) in large {
            match staged.upload(&self.node).await {
                Ok(Some(report)) => self.uploaded(&[(ino, report)]).await,
                Ok(None) => {}
                Err(e) => {
                    failed += 1;
                    warn!(error = %e, "uploading a file written through the mount failed; it stays staged and is tried again");
                }
            }
            self.retire(ino);
        }
        failed
    }

    /// Uploads files written through the mount in the background (see [`due`](Self::due)),
    /// woken by each close. Runs until the mount ends.
    pub(crate) async fn upload_in_background(&self) {
        loop {
            tokio::select! {
                () = self.upload_wake.notified() => {}
                () = tokio::time::sleep(UPLOAD_AFTER_CLOSE / 2) => {}
            }
            let due = self.due(false);
            if !due.is_empty() {
                self.upload_files(due).await;
            }
            if let Err(e) = self.store_kept_meta(false, None).await {
                warn!(error = %e, "storing directory metadata set through the mount failed; it is kept and tried again");
            }
        }
    }

    /// Uploads every changed file and stores all kept directory metadata now, trying failed
    /// ones again a few times. Returns how many files and directories are left (uploaded and
    /// stored at the next start if the mount ends first).
    pub(crate) async fn upload_all(&self) -> usize {
        for _ in 0..DRAIN_ROUNDS {
            let due = self.due(true);
            let files_ok = due.is_empty() || self.upload_files(due).await == 0;
            let meta_ok = self.store_kept_meta(true, None).await.is_ok();
            if files_ok && meta_ok {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        self.due(true).len() + self.kept_meta.due(true, None).len()
    }

    /// Uploads the changed files of directory `dir` now (`fsyncdir`). Returns how many failed.
    async fn upload_dir(&self, dir: u64) -> usize {
        let files: Vec<(u64, Arc<Staged>)> = self
            .due(true)
            .into_iter()
            .filter(|(ino, _)| {
                locked(&self.inodes)
                    .get(*ino)
                    .is_some_and(|i| i.parent == dir)
            })
            .collect();
        self.upload_files(files).await
    }

    /// One writer of `ino` closed: once the last one has, the file is uploaded in the
    /// background (fsync waits for it; a close does not).
    fn release_writer(&self, ino: u64) {
        let staged = locked(&self.staged).get(&ino).cloned();
        let Some(staged) = staged else {
            return;
        };
        {
            let mut state = staged.lock();
            state.writers = state.writers.saturating_sub(1);
            if state.writers > 0 {
                return;
            }
        }
        self.retire(ino);
        self.upload_wake.notify_one();
    }

    /// Makes file `name` in `parent`: staged here, linked on the grid at its first upload.
    async fn create(
        &self,
        parent: u64,
        name: &str,
        mode: u32,
    ) -> Result<(FileAttr, u64), NodeError> {
        let cap = self.writable_dir(parent).await?;
        if self.pending(parent, name).is_some() || self.entry(&cap, name).await?.is_some() {
            return Err(NodeError::AlreadyExists(name.to_owned()));
        }
        let location = format!("{}/{name}", cap_text(&cap));
        let meta = Meta {
            mode: mode & 0o7777,
            mtime_ns: now_ns(),
            ..Default::default()
        };
        let staged = Arc::new(Staged::create(
            &self.staging_dir,
            location,
            meta,
            false,
            None,
            Some(&self.node),
        )?);
        staged.lock().writers = 1;
        // Changed from the start: the journal entry makes a crash still link it.
        staged.mark_dirty(None)?;
        let ino = locked(&self.inodes).ensure(parent, name);
        locked(&self.staged).insert(ino, staged.clone());
        Ok((self.staged_attr(ino, &staged), ino))
    }

    /// The stored metadata of `ino` and its kind.
    async fn current_meta(&self, ino: u64) -> Result<(FileType, Meta), NodeError> {
        if ino == ROOT {
            return Ok((FileType::Directory, self.root_meta()));
        }
        let staged = locked(&self.staged).get(&ino).cloned();
        if let Some(staged) = staged
            && staged.unlinked()
        {
            return Ok((FileType::RegularFile, staged.lock().entry.meta));
        }
        let (_, parent, name) = self.place(ino).await?;
        let entry = self
            .entry(&parent, &name)
            .await?
            .ok_or_else(|| NodeError::NotFound(name.clone()))?;
        Ok((kind_of(&entry), self.meta_of(ino, &entry).1))
    }

    /// `chmod`, `chown`, `truncate`, `utimens`: each kept in the entry (files being written:
    /// in their staged copy, linked with it).
    async fn setattr(&self, ino: u64, change: AttrChange) -> Result<FileAttr, NodeError> {
        if change.is_empty() {
            return self.stat(ino).await;
        }
        if self.read_only {
            return Err(NodeError::ReadOnly(String::new()));
        }
        let (kind, current) = self.current_meta(ino).await?;
        let meta = change.applied_to(current, (self.uid, self.gid));
        match kind {
            FileType::Directory => {
                if change.size.is_some() {
                    return Err(NodeError::IsADirectory(String::new()));
                }
                if ino == ROOT {
                    // The mount's root has no entry to keep it in: this node keeps it.
                    self.keep_root_meta(&meta)?;
                    locked(&self.dir_meta).insert(ROOT, meta);
                } else if meta != current {
                    // Stored in the background, with the other directories of its parent.
                    let (parent_ino, parent, name) = self.place(ino).await?;
                    if parent.write_cap().is_none() {
                        return Err(NodeError::ReadOnly(name));
                    }
                    self.kept_meta
                        .set(ino, parent_ino, cap_text(&parent), name, meta)?;
                    self.upload_wake.notify_one();
                }
            }
            FileType::Symlink => {
                if meta != current {
                    self.set_entry_meta(ino, meta).await?;
                }
            }
            _ => {
                let open = locked(&self.staged).get(&ino).cloned();
                let staged = match (open, change.size) {
                    (Some(staged), _) => Some((staged, false)),
                    (None, Some(size)) => Some((self.stage(ino, size == 0, true).await?, true)),
                    (None, None) => None,
                };
                match staged {
                    Some((staged, writer)) => {
                        if let Some(size) = change.size {
                            staged.set_len(size)?;
                        }
                        staged.lock().entry.meta = meta;
                        // A size change without a time given moves the mtime.
                        let touched = change.size.is_some() && change.mtime_ns.is_none();
                        staged.mark_dirty(touched.then(now_ns))?;
                        if writer {
                            self.release_writer(ino);
                        }
                    }
                    None if meta != current => self.set_entry_meta(ino, meta).await?,
                    None => {}
                }
            }
        }
        self.stat(ino).await
    }

    /// Stores `meta` in the entry of `ino` (kept with the entry, seen by every node).
    async fn set_entry_meta(&self, ino: u64, meta: Meta) -> Result<(), NodeError> {
        let (_, parent, name) = self.place(ino).await?;
        if parent.write_cap().is_none() {
            return Err(NodeError::ReadOnly(name));
        }
        let location = format!("{}/{name}", cap_text(&parent));
        limited(self.node.set_meta(&location, meta)).await?;
        self.relist(&parent, &[&name]).await;
        Ok(())
    }

    /// Stores the kept directory metadata that is due (all of it with `all`, or only that of
    /// directory `only`) in the entries, one version per parent directory.
    async fn store_kept_meta(&self, all: bool, only: Option<u64>) -> Result<(), NodeError> {
        let _one = self.storing_meta.lock().await;
        let due = self.kept_meta.due(all, only);
        if due.is_empty() {
            return Ok(());
        }
        let mut failed = None;
        for (parent, stored) in dirmeta::by_parent(due) {
            if let Err(e) = limited(self.node.set_meta_many(&parent, dirmeta::items(&stored))).await
            {
                self.kept_meta.failed(&stored);
                failed = Some(e);
                continue;
            }
            if let Ok(cap) = self.dir_cap(stored[0].1.parent_ino).await {
                let names: Vec<&str> = stored.iter().map(|(_, p)| p.name.as_str()).collect();
                self.relist(&cap, &names).await;
            }
            self.kept_meta.stored(&stored)?;
        }
        failed.map_or(Ok(()), Err)
    }

    async fn open(&self, ino: u64, flags: i32) -> Result<u64, NodeError> {
        let access = flags & libc::O_ACCMODE;
        let write = access == libc::O_WRONLY || access == libc::O_RDWR;
        let attr = self.stat(ino).await?;
        if attr.kind == FileType::Directory {
            return Err(NodeError::IsADirectory(String::new()));
        }
        let mut reader = None;
        if write {
            if self.read_only {
                return Err(NodeError::ReadOnly(String::new()));
            }
            let truncate = flags & libc::O_TRUNC != 0;
            let staged = self.stage(ino, truncate, true).await?;
            if truncate && staged.len() > 0 {
                staged.set_len(0)?;
                staged.mark_dirty(Some(now_ns()))?;
            }
        } else if !locked(&self.staged).contains_key(&ino) {
            let (_, parent, name) = self.place(ino).await?;
            let cap = self.file_cap(&parent, &name).await?;
            reader = Some(limited(self.node.open_file(&cap)).await?);
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        locked(&self.handles).insert(
            fh,
            Handle::File {
                ino,
                write,
                append: flags & libc::O_APPEND != 0,
                reader,
                next: 0,
            },
        );
        Ok(fh)
    }

    /// What [`read`](Self::read) would return, if the handle reads a linked file (nothing
    /// staged) whose chunks for the range are decrypted in memory already; else `None`.
    fn read_ready(&self, fh: u64, offset: u64, size: u32) -> Option<bytes::Bytes> {
        let (ino, reader, sequential) = match locked(&self.handles).get(&fh) {
            Some(Handle::File {
                ino,
                reader: Some(reader),
                next,
                ..
            }) => (*ino, reader.clone(), *next == offset),
            _ => return None,
        };
        if locked(&self.staged).contains_key(&ino) {
            return None;
        }
        let data = reader.read_ready(offset, size as usize)?;
        if let Some(Handle::File { next, .. }) = locked(&self.handles).get_mut(&fh) {
            *next = offset + u64::from(size);
        }
        if sequential {
            reader.prefetch(offset + u64::from(size), READ_AHEAD);
        }
        Some(data)
    }

    async fn read(&self, fh: u64, offset: u64, size: u32) -> Result<bytes::Bytes, NodeError> {
        let (ino, reader, sequential) = {
            let mut handles = locked(&self.handles);
            match handles.get_mut(&fh) {
                Some(Handle::File {
                    ino, reader, next, ..
                }) => {
                    let sequential = *next == offset;
                    *next = offset + u64::from(size);
                    (*ino, reader.clone(), sequential)
                }
                _ => return Err(NodeError::Invalid("bad file handle".into())),
            }
        };
        let staged = locked(&self.staged).get(&ino).cloned();
        if let Some(staged) = staged {
            return limited(staged.read_at(offset, size as usize))
                .await
                .map(bytes::Bytes::from);
        }
        let reader = match reader {
            Some(r) => r,
            None => {
                // Opened for writing, and the staged copy is gone (uploaded by another
                // handle's close): read what was linked.
                let (_, parent, name) = self.place(ino).await?;
                let cap = self.file_cap(&parent, &name).await?;
                let reader = limited(self.node.open_file(&cap)).await?;
                if let Some(Handle::File { reader: slot, .. }) = locked(&self.handles).get_mut(&fh)
                {
                    *slot = Some(reader.clone());
                }
                reader
            }
        };
        if sequential {
            reader.prefetch(offset + u64::from(size), READ_AHEAD);
        }
        limited(reader.read_at(offset, size as usize)).await
    }

    /// The staged copy a handle writes to, and whether it appends.
    fn writing(&self, fh: u64) -> Result<(Arc<Staged>, bool), NodeError> {
        let (ino, append) = match locked(&self.handles).get(&fh) {
            Some(Handle::File {
                ino,
                write: true,
                append,
                ..
            }) => (*ino, *append),
            _ => return Err(NodeError::Invalid("not open for writing".into())),
        };
        let staged = locked(&self.staged)
            .get(&ino)
            .cloned()
            .ok_or_else(|| NodeError::Invalid("no staged copy".into()))?;
        Ok((staged, append))
    }

    async fn opendir(&self, ino: u64) -> Result<u64, NodeError> {
        let cap = self.dir_cap(ino).await?;
        let mut listing = self.listing(&cap).await?;
        if self.linked_but_unlisted(ino, &listing) {
            // As in `lookup`: the listing was cached before a file's link.
            self.forget_listing(&cap);
            listing = self.listing(&cap).await?;
        }
        let parent = locked(&self.inodes).get(ino).map_or(ROOT, |i| i.parent);
        let mut entries = vec![
            (ino, FileType::Directory, ".".to_owned()),
            (parent, FileType::Directory, "..".to_owned()),
        ];
        let children = {
            let mut inodes = locked(&self.inodes);
            for e in &listing.entries {
                let child = inodes.ensure(ino, &e.name);
                entries.push((child, kind_of(e), e.name.clone()));
            }
            inodes.children(ino)
        };
        // Files made here that are not on the grid yet.
        let listed: HashSet<&str> = listing.entries.iter().map(|e| e.name.as_str()).collect();
        for (name, child) in children {
            let staged = locked(&self.staged).get(&child).cloned();
            if !listed.contains(name.as_str()) && staged.is_some_and(|s| s.unlinked()) {
                entries.push((child, FileType::RegularFile, name));
            }
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        locked(&self.handles).insert(fh, Handle::Dir { entries });
        Ok(fh)
    }

    /// Whether a file of directory `ino` whose staged copy is linked is missing from `listing`.
    fn linked_but_unlisted(&self, ino: u64, listing: &LsReport) -> bool {
        let children = locked(&self.inodes).children(ino);
        let linked: Vec<String> = {
            let staged = locked(&self.staged);
            children
                .into_iter()
                .filter(|(_, child)| staged.get(child).is_some_and(|s| !s.unlinked()))
                .map(|(name, _)| name)
                .collect()
        };
        if linked.is_empty() {
            return false;
        }
        let listed: HashSet<&str> = listing.entries.iter().map(|e| e.name.as_str()).collect();
        linked.iter().any(|name| !listed.contains(name.as_str()))
    }

    /// The grid's space in bytes of files, total and free: the storage nodes' raw share bytes
    /// times k/n (a file takes n/k times its size in shares).
    async fn statfs(&self) -> (u64, u64) {
        let space = self.node.grid_space().await;
        let encoding = self.node.encoding();
        let files = |raw: u64| {
            (u128::from(raw) * u128::from(encoding.k) / u128::from(encoding.n.max(1))) as u64
        };
        (files(space.offered_bytes), files(space.free_bytes))
    }

    /// A change of `slot` was pushed from the grid: drop the cached listing and tell the
    /// kernel which names and files changed.
    pub(crate) async fn changed(&self, slot: SlotId) {
        let old = locked(&self.listings).remove(&slot).map(|(_, l)| l);
        let dirs = locked(&self.inodes).dirs_of_slot(&slot);
        let Some(notifier) = self.notifier.get() else {
            return;
        };
        for dir in dirs {
            let Ok(cap) = self.dir_cap(dir).await else {
                continue;
            };
            let new = self.listing(&cap).await.ok();
            let children = locked(&self.inodes).children(dir);
            for (name, child) in children {
                let before = old.as_ref().and_then(|l| l.get(&name));
                let after = new.as_ref().and_then(|l| l.get(&name));
                if old.is_some() && before == after {
                    continue;
                }
                let _ = notifier.inval_inode(INodeNo(child), 0, 0);
                let _ = notifier.inval_entry(INodeNo(dir), OsStr::new(&name));
            }
            let _ = notifier.inval_inode(INodeNo(dir), 0, 0);
        }
    }
}

/// The fuser adapter: hands each request to a task on the node's runtime.
pub(crate) struct CairnFs {
    pub(crate) shared: Arc<Shared>,
    pub(crate) runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for CairnFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CairnFs").finish_non_exhaustive()
    }
}

impl CairnFs {
    /// Answers a request with the future `f` makes: polled once here, on the FUSE thread, and
    /// handed to the runtime only if it has to wait. Most requests (a lookup in a cached
    /// listing, a create or setattr of a staged file) finish in that first poll, without
    /// waking a runtime thread and then the FUSE thread again: two thread switches less per
    /// request, which is what many small files cost most. What waits (the grid, an upload)
    /// goes on as a task, which polls it again with its own waker.
    fn run<F>(&self, f: impl FnOnce(Arc<Shared>) -> F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let _runtime = self.runtime.enter();
        let mut fut = Box::pin(f(self.shared.clone()));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let first =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.as_mut().poll(&mut cx)));
        match first {
            Ok(std::task::Poll::Ready(())) => {}
            Ok(std::task::Poll::Pending) => {
                self.runtime.spawn(fut);
            }
            // As a panicking task would: the request's reply is dropped (the kernel gets EIO)
            // and the mount goes on.
            Err(_) => warn!("a request handler panicked"),
        }
    }

    fn refuse_if_read_only(&self) -> Result<(), Errno> {
        if self.shared.read_only {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }
}

macro_rules! name_or_reply {
    ($name:expr, $reply:expr) => {
        match name_of($name) {
            Ok(n) => n.to_owned(),
            Err(e) => return $reply.error(e),
        }
    };
}

impl Filesystem for CairnFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name_or_reply!(name, reply);
        self.run(|s| async move {
            match s.lookup(parent.0, &name).await {
                Ok(attr) => reply.entry(&LISTING_TTL, &attr, Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.run(|s| async move {
            match s.stat(ino.0).await {
                Ok(attr) => reply.attr(&LISTING_TTL, &attr),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.run(|s| async move {
            let time = |t: Option<TimeOrNow>| {
                t.map(|t| match t {
                    TimeOrNow::Now => now_ns(),
                    TimeOrNow::SpecificTime(t) => ns_of_time(t),
                })
            };
            let change = AttrChange {
                mode,
                uid,
                gid,
                size,
                atime_ns: time(atime),
                mtime_ns: time(mtime),
            };
            match s.setattr(ino.0, change).await {
                Ok(attr) => reply.attr(&LISTING_TTL, &attr),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.run(|s| async move {
            let result = async {
                let (_, parent, name) = s.place(ino.0).await?;
                let entry = s
                    .entry(&parent, &name)
                    .await?
                    .ok_or_else(|| NodeError::NotFound(name.clone()))?;
                entry
                    .target
                    .ok_or_else(|| NodeError::Invalid("not a symlink".into()))
            }
            .await;
            match result {
                Ok(target) => reply.data(target.as_bytes()),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        // Devices, fifos and sockets have no place on the grid; regular files come by create.
        reply.error(if self.shared.read_only {
            Errno::EROFS
        } else {
            Errno::EPERM
        });
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        if let Err(e) = self.refuse_if_read_only() {
            return reply.error(e);
        }
        let name = name_or_reply!(name, reply);
        self.run(|s| async move {
            match s.mkdir(parent.0, &name, mode & !umask).await {
                Ok(attr) => reply.entry(&LISTING_TTL, &attr, Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if let Err(e) = self.refuse_if_read_only() {
            return reply.error(e);
        }
        let name = name_or_reply!(name, reply);
        self.run(|s| async move {
            match s.remove(parent.0, &name, false).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if let Err(e) = self.refuse_if_read_only() {
            return reply.error(e);
        }
        let name = name_or_reply!(name, reply);
        self.run(|s| async move {
            match s.remove(parent.0, &name, true).await {
                Ok(()) => reply.ok(),
                Err(NodeError::Invalid(m)) if m == "directory not empty" => {
                    reply.error(Errno::ENOTEMPTY)
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        if let Err(e) = self.refuse_if_read_only() {
            return reply.error(e);
        }
        let name = name_or_reply!(link_name, reply);
        let Some(target) = target.to_str().map(str::to_owned) else {
            return reply.error(Errno::EINVAL);
        };
        self.run(|s| async move {
            match s.symlink(parent.0, &name, &target).await {
                Ok(attr) => reply.entry(&LISTING_TTL, &attr, Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if let Err(e) = self.refuse_if_read_only() {
            return reply.error(e);
        }
        let name = name_or_reply!(name, reply);
        let newname = name_or_reply!(newname, reply);
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            return reply.error(Errno::EINVAL);
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        self.run(|s| async move {
            match s
                .rename(parent.0, &name, newparent.0, &newname, no_replace)
                .await
            {
                Ok(()) => reply.ok(),
                Err(NodeError::Invalid(m)) if m == "directory not empty" => {
                    reply.error(Errno::ENOTEMPTY)
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        // Hard links are not supported: an entry is one name (docs/specs/mount.md).
        reply.error(Errno::EPERM);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let flags = flags.0;
        let access = flags & libc::O_ACCMODE;
        if access != libc::O_RDONLY && self.shared.read_only {
            return reply.error(Errno::EROFS);
        }
        self.run(|s| async move {
            match s.open(ino.0, flags).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        // Decrypted chunks at hand (a sequential reader's read-ahead): answered on this thread,
        // without a trip through the async runtime.
        let ready = {
            let _runtime = self.runtime.enter();
            self.shared.read_ready(fh.0, offset, size)
        };
        if let Some(data) = ready {
            return reply.data(&data);
        }
        self.run(|s| async move {
            match s.read(fh.0, offset, size).await {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let (staged, append) = match self.shared.writing(fh.0) {
            Ok(w) => w,
            Err(e) => return reply.error(errno(&e)),
        };
        let offset = if append { staged.len() } else { offset };
        let len = data.len() as u64;
        let write = move |staged: &Staged, data: &[u8]| {
            staged.write_at(data, offset)?;
            staged.mark_dirty(Some(now_ns()))?;
            Ok::<u32, NodeError>(data.len() as u32)
        };
        if !staged.needs_fill(offset, len) {
            // A local pwrite into the staging file: done here, no grid involved.
            return match write(&staged, data) {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno(&e)),
            };
        }
        // Into blocks of the file still on the grid: fetched first (crate::lazy).
        let data = data.to_vec();
        self.run(move |_| async move {
            let result = match limited(staged.fill(offset, len)).await {
                Ok(()) => write(&staged, &data),
                Err(e) => Err(e),
            };
            match result {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // A close uploads in the background (see `release`); fsync waits for the upload.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let handle = locked(&self.shared.handles).remove(&fh.0);
        let Some(Handle::File {
            ino, write: true, ..
        }) = handle
        else {
            return reply.ok();
        };
        self.shared.release_writer(ino);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.run(|s| async move {
            match s.upload_ino(ino.0).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.run(|s| async move {
            match s.opendir(ino.0).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let handles = locked(&self.shared.handles);
        let Some(Handle::Dir { entries }) = handles.get(&fh.0) else {
            drop(handles);
            return reply.error(Errno::EBADF);
        };
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), (i + 1) as u64, *kind, name) {
                break;
            }
        }
        drop(handles);
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        locked(&self.shared.handles).remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Other directory changes are published to their holders before the call that made
        // them returns; files written here and not uploaded yet are uploaded now, and the
        // directory metadata kept here is stored.
        self.run(|s| async move {
            let files_failed = s.upload_dir(ino.0).await;
            match s.store_kept_meta(true, None).await {
                Ok(()) if files_failed == 0 => reply.ok(),
                _ => reply.error(Errno::EIO),
            }
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.run(|s| async move {
            let (total, free) = s.statfs().await;
            let bsize = 4096u64;
            reply.statfs(
                total / bsize,
                free / bsize,
                free / bsize,
                1 << 32,
                1 << 32,
                bsize as u32,
                cairn_dir::MAX_NAME_LEN as u32,
                bsize as u32,
            );
        });
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        if let Err(e) = self.refuse_if_read_only() {
            return reply.error(e);
        }
        let name = name_or_reply!(name, reply);
        self.run(|s| async move {
            match s.create(parent.0, &name, mode & !umask).await {
                Ok((attr, ino)) => {
                    let fh = s.next_fh.fetch_add(1, Ordering::Relaxed);
                    locked(&s.handles).insert(
                        fh,
                        Handle::File {
                            ino,
                            write: true,
                            append: flags & libc::O_APPEND != 0,
                            reader: None,
                            next: 0,
                        },
                    );
                    reply.created(
                        &LISTING_TTL,
                        &attr,
                        Generation(0),
                        FileHandle(fh),
                        FopenFlags::empty(),
                    );
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }
}

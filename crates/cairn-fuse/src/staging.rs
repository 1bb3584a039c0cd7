//! Writes staged on local disk until they are uploaded.
//!
//! A file opened for writing gets a staging file `DIR/staging/<id>.data`; writes go there. An
//! existing file is not copied at open: the blocks nobody wrote stay on the grid until they
//! are needed (see [`crate::lazy`]). On the first change a journal entry `DIR/staging/<id>.json` (mode 0600: it names the
//! directory's cap) records where the file belongs; it is written to a temporary name and
//! renamed, so it is whole or absent. An upload puts the file with [`Node::put`] (many small
//! files at once with [`Node::put_many`], see [`upload_batch`]) and links its entry; the
//! journal entry goes once the upload is linked. A file opened from an existing one is put
//! with [`Node::put_patched`]: only the chunks around the blocks written are read, sealed and
//! sent, and the blocks nobody wrote stay on the grid.
//!
//! A file written from its start without a gap (`cp`, `dd`, a download) streams: once it is
//! [`STREAM_AFTER`] long, a put starts that reads the staging file as it grows, so the upload
//! at close or fsync waits only for the tail. A write anywhere else, a truncation or a delete
//! gives that put up, and the upload puts the whole file as usual.
//!
//! Crash safety: a daemon killed before an upload leaves the data and its journal entry;
//! `recover` uploads and links each at the next start. What fsync acknowledged is on the grid
//! already; like any file system, a power loss may lose what no fsync acknowledged. Deleting
//! or renaming the file through the mount updates or drops the entry.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_core::cap::Cap;
use cairn_dir::{Content, FileRef, Meta};
use cairn_node::{FileReader, Node, NodeError, PutOptions, PutReport};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::lazy::{FILL_BLOCK, Lazy, read_full};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

/// A file written in order from its start streams to the grid once it is this long.
pub(crate) const STREAM_AFTER: u64 = 8 << 20;

/// How far a streamed put may read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Feed {
    /// Written in order up to here; more may come.
    Open(u64),
    /// The put ends here (an upload took it).
    End(u64),
    /// Written out of order, truncated or deleted: the put is given up.
    Abort,
}

/// What a staged file needs to stream: the node and the runtime to run the put on.
struct Streamer {
    node: Node,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for Streamer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Streamer")
    }
}

/// The streamed put of a staged file (see the module docs).
#[derive(Debug, Default)]
struct StreamState {
    /// The end of what was written in order from the start; `None` once a write went
    /// elsewhere (or a streamed put was taken: a file streams once).
    sequential: Option<u64>,
    /// Tells the put how far it may read.
    feed: Option<watch::Sender<Feed>>,
    /// The put.
    put: Option<JoinHandle<Result<PutReport, NodeError>>>,
}

/// What the journal records of one staged file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct JournalEntry {
    /// Where the file is linked: `DIRCAP/name`. `None` once the file was deleted.
    pub(crate) location: Option<String>,
    /// Mode, times and owner to link it with.
    #[serde(flatten)]
    pub(crate) meta: Meta,
    /// The file it started from, while blocks of it are not in the staging file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) base: Option<BaseRef>,
}

/// The grid file a staged file started from (see [`crate::lazy`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct BaseRef {
    /// Its readcap.
    pub(crate) cap: String,
    /// Its bytes still in the staged file.
    pub(crate) len: u64,
}

/// The mutable part of a staged file.
#[derive(Debug)]
pub(crate) struct StagedState {
    /// The journal entry as it stands.
    pub(crate) entry: JournalEntry,
    /// Changed since the last upload.
    pub(crate) dirty: bool,
    /// When it was last changed, and when it first changed after its last upload.
    pub(crate) changed_at: Option<(Instant, Instant)>,
    /// Open handles writing through it.
    pub(crate) writers: usize,
    /// Whether the grid has an entry for it yet (a file made through the mount has none until
    /// its first upload).
    pub(crate) linked: bool,
    /// After a failed upload: not tried again before this.
    pub(crate) retry_at: Option<Instant>,
    /// Failed uploads in a row.
    pub(crate) failures: u32,
}

/// One staged file (see the module docs).
#[derive(Debug)]
pub(crate) struct Staged {
    file: File,
    /// The blocks still on the grid, for a file opened for writing without truncation.
    lazy: Option<Arc<Lazy>>,
    data_path: PathBuf,
    journal_path: PathBuf,
    pub(crate) state: Mutex<StagedState>,
    /// Serialises uploads of this file.
    upload: Arc<tokio::sync::Mutex<()>>,
    /// For a file that may stream: the node and runtime the put runs on.
    streamer: Option<Streamer>,
    stream: Mutex<StreamState>,
}

/// An upload of one staged file under way: its upload lock and the entry as it was taken.
/// Dropped unfinished (a cancelled request), it leaves the file dirty.
pub(crate) struct Begun<'a> {
    staged: &'a Staged,
    entry: JournalEntry,
    finished: bool,
    _one: tokio::sync::OwnedMutexGuard<()>,
}

impl Begun<'_> {
    /// Ends the upload: a failed one leaves the file dirty and sets when to try again; a
    /// linked one marks the file linked and, if nothing changed meanwhile, drops its journal
    /// entry.
    pub(crate) fn finish(mut self, ok: bool) {
        self.finished = true;
        let staged = self.staged;
        let mut state = staged.lock();
        if ok {
            state.failures = 0;
            state.retry_at = None;
            if self.entry.location.is_some() {
                state.linked = true;
            }
            if !state.dirty {
                let _ = std::fs::remove_file(&staged.journal_path);
            }
        } else {
            state.dirty = true;
            state.failures += 1;
            let wait = Duration::from_secs(1 << state.failures.min(6));
            state.retry_at = Some(Instant::now() + wait);
        }
    }
}

impl Drop for Begun<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.staged.lock().dirty = true;
        }
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> NodeError + '_ {
    move |e| NodeError::io(path, e)
}

/// Writes `bytes` to `path` whole or not at all (temporary file, rename). Not fsynced: a
/// killed daemon leaves it in the page cache, and what fsync acknowledged is on the grid.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), NodeError> {
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    Ok(())
}

impl Staged {
    /// A new staging file in `dir` for the file at `location`: empty, or the file `base` (its
    /// reader and readcap) fetched as needed. `linked` when the grid has an entry for it. With
    /// `node` (and when called on a tokio runtime), an empty one streams (see the module docs).
    pub(crate) fn create(
        dir: &Path,
        location: String,
        meta: Meta,
        linked: bool,
        base: Option<(FileReader, String)>,
        node: Option<&Node>,
    ) -> Result<Staged, NodeError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let id: u128 = rand::random();
        let data_path = dir.join(format!("{id:032x}.data"));
        let journal_path = dir.join(format!("{id:032x}.json"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&data_path)
            .map_err(io(&data_path))?;
        let (lazy, base) = match base {
            Some((reader, cap)) => {
                let len = reader.size();
                file.set_len(len).map_err(io(&data_path))?;
                let fills = dir.join(format!("{id:032x}.fills"));
                let base = BaseRef { cap, len };
                (Some(Arc::new(Lazy::new(reader, fills, len))), Some(base))
            }
            None => (None, None),
        };
        // Only a file that starts empty streams (a base's blocks are not in the file yet).
        let streamer = match (&lazy, tokio::runtime::Handle::try_current()) {
            (None, Ok(runtime)) => node.map(|node| Streamer {
                node: node.clone(),
                runtime,
            }),
            _ => None,
        };
        let sequential = streamer.as_ref().map(|_| 0);
        Ok(Staged {
            file,
            lazy,
            data_path,
            journal_path,
            state: Mutex::new(StagedState {
                entry: JournalEntry {
                    location: Some(location),
                    meta,
                    base,
                },
                dirty: false,
                changed_at: None,
                writers: 0,
                linked,
                retry_at: None,
                failures: 0,
            }),
            upload: Arc::default(),
            streamer,
            stream: Mutex::new(StreamState {
                sequential,
                ..StreamState::default()
            }),
        })
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, StagedState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this is a file made through the mount that the grid has no entry for yet.
    pub(crate) fn unlinked(&self) -> bool {
        let state = self.lock();
        !state.linked && state.entry.location.is_some()
    }

    /// Whether nothing is left to do with it: no writer, nothing to upload, and no upload
    /// under way (or the file was deleted: nothing of it is linked any more).
    pub(crate) fn settled(&self) -> bool {
        let state = self.lock();
        state.writers == 0
            && !state.dirty
            && (state.entry.location.is_none() || self.upload.try_lock().is_ok())
    }

    /// The staged size.
    pub(crate) fn len(&self) -> u64 {
        self.file.metadata().map(|m| m.len()).unwrap_or(0)
    }

    /// Reads up to `len` bytes at `offset` (blocks not fetched yet come from the grid).
    pub(crate) async fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, NodeError> {
        let size = self.len();
        if let Some(lazy) = &self.lazy {
            return lazy.read_at(&self.file, size, offset, len).await;
        }
        let end = offset.saturating_add(len as u64).min(size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; (end - offset) as usize];
        let n = read_full(&self.file, &mut buf, offset).map_err(io(&self.data_path))?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Whether a write of `len` bytes at `offset` must wait for [`fill`](Self::fill).
    pub(crate) fn needs_fill(&self, offset: u64, len: u64) -> bool {
        self.lazy
            .as_ref()
            .is_some_and(|l| l.needs_fill(offset, offset.saturating_add(len)))
    }

    /// Fetches the blocks of `[offset, offset + len)` still on the grid.
    pub(crate) async fn fill(&self, offset: u64, len: u64) -> Result<(), NodeError> {
        match &self.lazy {
            Some(lazy) => {
                lazy.fill(&self.file, offset, offset.saturating_add(len))
                    .await
            }
            None => Ok(()),
        }
    }

    /// Fetches every block still on the grid: the staging file becomes the whole file.
    async fn fill_all(&self) -> Result<(), NodeError> {
        match &self.lazy {
            Some(lazy) if !lazy.complete() => lazy.fill(&self.file, 0, lazy.len()).await,
            _ => Ok(()),
        }
    }

    /// Writes `data` at `offset` (after [`fill`](Self::fill) where
    /// [`needs_fill`](Self::needs_fill) says so).
    pub(crate) fn write_at(&self, data: &[u8], offset: u64) -> Result<(), NodeError> {
        if self.needs_fill(offset, data.len() as u64) {
            return Err(NodeError::Invalid(
                "write into a block not fetched yet".into(),
            ));
        }
        self.file
            .write_all_at(data, offset)
            .map_err(io(&self.data_path))?;
        if let Some(lazy) = &self.lazy {
            lazy.note_written(offset, offset + data.len() as u64);
        }
        self.note_write(offset, data.len() as u64);
        Ok(())
    }

    fn stream_state(&self) -> std::sync::MutexGuard<'_, StreamState> {
        self.stream.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Feeds a write to the streamed put, starts that put once the file is long enough, or
    /// gives it up when the write is out of order.
    fn note_write(&self, offset: u64, len: u64) {
        let Some(streamer) = &self.streamer else {
            return;
        };
        let mut stream = self.stream_state();
        let Some(end) = stream.sequential else {
            return;
        };
        if offset != end {
            give_up(&mut stream);
            return;
        }
        let end = end + len;
        stream.sequential = Some(end);
        match &stream.feed {
            Some(feed) => {
                feed.send_replace(Feed::Open(end));
            }
            None if end >= STREAM_AFTER => self.start_stream(streamer, &mut stream, end),
            None => {}
        }
    }

    /// Starts the streamed put: a reader task feeds the staging file's bytes, in order, as
    /// far as [`Feed`] allows.
    fn start_stream(&self, streamer: &Streamer, stream: &mut StreamState, end: u64) {
        let Ok(file) = self.file.try_clone() else {
            stream.sequential = None;
            return;
        };
        let (feed, rx) = watch::channel(Feed::Open(end));
        let reader = FeedReader {
            file,
            feed: rx,
            at: 0,
            runtime: streamer.runtime.clone(),
        };
        let node = streamer.node.clone();
        let put = streamer
            .runtime
            .spawn(async move { node.put_blocking(reader, PutOptions::default()).await });
        stream.feed = Some(feed);
        stream.put = Some(put);
    }

    /// Whether a streamed put is under way.
    #[cfg(test)]
    fn streaming(&self) -> bool {
        self.stream_state().put.is_some()
    }

    /// Takes the streamed put for an upload of `len` bytes: it ends at `len` when that is
    /// what was written in order, and is given up otherwise. No file streams twice.
    fn take_stream(&self, len: u64) -> Option<JoinHandle<Result<PutReport, NodeError>>> {
        let mut stream = self.stream_state();
        let whole = stream.sequential == Some(len);
        stream.sequential = None;
        let put = stream.put.take()?;
        let feed = stream.feed.take()?;
        if whole {
            feed.send_replace(Feed::End(len));
            Some(put)
        } else {
            feed.send_replace(Feed::Abort);
            None
        }
    }

    /// Sets the size (a truncation drops the base's bytes past it).
    pub(crate) fn set_len(&self, size: u64) -> Result<(), NodeError> {
        {
            let mut stream = self.stream_state();
            if stream.sequential != Some(size) {
                give_up(&mut stream);
            }
        }
        if let Some(lazy) = &self.lazy {
            lazy.truncate(size);
            let len = lazy.len();
            let mut state = self.lock();
            if let Some(base) = &mut state.entry.base {
                base.len = len;
            }
        }
        self.file.set_len(size).map_err(io(&self.data_path))?;
        if let Some(lazy) = &self.lazy {
            lazy.note_resized();
        }
        self.update_journal()
    }

    /// Marks the file changed: the journal entry is written (durably) the first time, so a
    /// crash from here on still uploads it.
    pub(crate) fn mark_dirty(&self, mtime_ns: Option<i64>) -> Result<(), NodeError> {
        let mut state = self.lock();
        if let Some(t) = mtime_ns {
            state.entry.meta.mtime_ns = t;
        }
        let first = !state.dirty;
        state.dirty = true;
        let now = Instant::now();
        let since = state.changed_at.filter(|_| !first).map_or(now, |(_, s)| s);
        state.changed_at = Some((now, since));
        if first {
            self.write_journal(&state.entry)?;
        }
        Ok(())
    }

    /// Rewrites the journal entry (after a rename or metadata change) if one exists.
    pub(crate) fn update_journal(&self) -> Result<(), NodeError> {
        let state = self.lock();
        if state.dirty {
            self.write_journal(&state.entry)?;
        }
        Ok(())
    }

    fn write_journal(&self, entry: &JournalEntry) -> Result<(), NodeError> {
        let mut record =
            serde_json::to_value(entry).map_err(|e| NodeError::Invalid(e.to_string()))?;
        record["data"] = serde_json::Value::String(
            self.data_path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        let bytes = serde_json::to_vec(&record).map_err(|e| NodeError::Invalid(e.to_string()))?;
        write_atomic(&self.journal_path, &bytes)
    }

    /// Starts an upload if the file changed: waits for any upload under way, then takes the
    /// entry as it stands and counts the file clean (a write from here on makes it dirty
    /// again). `None` when there is nothing to upload.
    pub(crate) async fn begin(&self) -> Option<Begun<'_>> {
        let one = self.upload.clone().lock_owned().await;
        self.begun(one)
    }

    /// Waits for an upload under way and keeps others from starting while the guard lives
    /// (a rename or removal of the file must not race its upload's link).
    pub(crate) async fn hold(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.upload.clone().lock_owned().await
    }

    /// Like [`begin`](Self::begin), but `None` too when an upload is under way.
    pub(crate) fn try_begin(&self) -> Option<Begun<'_>> {
        let one = self.upload.clone().try_lock_owned().ok()?;
        self.begun(one)
    }

    fn begun(&self, one: tokio::sync::OwnedMutexGuard<()>) -> Option<Begun<'_>> {
        let mut state = self.lock();
        if !state.dirty {
            return None;
        }
        state.dirty = false;
        Some(Begun {
            staged: self,
            entry: state.entry.clone(),
            finished: false,
            _one: one,
        })
    }

    /// Uploads the staged bytes if they changed and links them at the entry's location.
    /// Returns the put's report, or `None` when there was nothing to do. A cancelled upload
    /// leaves the file dirty.
    pub(crate) async fn upload(&self, node: &Node) -> Result<Option<PutReport>, NodeError> {
        let Some(begun) = self.begin().await else {
            return Ok(None);
        };
        let result = async {
            let Some(location) = &begun.entry.location else {
                return Ok(None);
            };
            let streamed = match self.take_stream(self.len()) {
                Some(put) => match put.await {
                    Ok(Ok(report)) => Some(report),
                    Ok(Err(e)) => {
                        warn!(error = %e, "streamed upload failed; putting the whole file");
                        None
                    }
                    Err(_) => None,
                },
                None => None,
            };
            let report = match streamed {
                Some(report) => report,
                None => {
                    let reader = self.file.try_clone().map_err(io(&self.data_path))?;
                    put_file(node, reader, &self.data_path, self.lazy.clone()).await?
                }
            };
            link(node, location, &report.cap, &begun.entry).await?;
            Ok(Some(report))
        }
        .await;
        begun.finish(result.is_ok());
        result
    }

    /// The whole staged content (for a batch of small files).
    fn contents(&self) -> Result<Vec<u8>, NodeError> {
        let mut data = Vec::new();
        let mut file = self.file.try_clone().map_err(io(&self.data_path))?;
        use std::io::{Read, Seek};
        file.seek(std::io::SeekFrom::Start(0))
            .map_err(io(&self.data_path))?;
        file.read_to_end(&mut data).map_err(io(&self.data_path))?;
        Ok(data)
    }

    /// Drops the file from the journal: it was deleted, so nothing is to be uploaded.
    pub(crate) fn forget(&self) {
        give_up(&mut self.stream_state());
        let mut state = self.lock();
        state.entry.location = None;
        state.dirty = false;
        let _ = std::fs::remove_file(&self.journal_path);
    }

    /// Removes the staging file (after the last writer closed and the upload is linked). A
    /// file still dirty keeps its data and journal entry for `recover`.
    pub(crate) fn discard(&self) {
        if self.lock().dirty {
            return;
        }
        let _ = std::fs::remove_file(&self.data_path);
        if let Some(lazy) = &self.lazy {
            lazy.remove_log();
        }
    }
}

/// Gives up a streamed put (its reader fails, so the put ends) and keeps the file from
/// streaming again.
fn give_up(stream: &mut StreamState) {
    stream.sequential = None;
    stream.put = None;
    if let Some(feed) = stream.feed.take() {
        feed.send_replace(Feed::Abort);
    }
}

/// The staging file's bytes from its start, as a streamed put reads them (on a blocking
/// thread): as far as `feed` allows, waiting while it is [`Feed::Open`] at the end read; the
/// data ends at [`Feed::End`] and fails at [`Feed::Abort`] (or when the staged file is gone).
struct FeedReader {
    file: File,
    feed: watch::Receiver<Feed>,
    at: u64,
    runtime: tokio::runtime::Handle,
}

impl std::io::Read for FeedReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let state = *self.feed.borrow_and_update();
            let until = match state {
                Feed::Abort => return Err(std::io::Error::other("given up")),
                Feed::Open(n) | Feed::End(n) => n,
            };
            if self.at < until {
                let want = usize::try_from(until - self.at)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                let n = self.file.read_at(&mut buf[..want], self.at)?;
                if n == 0 {
                    return Err(std::io::Error::other("staging file cut short"));
                }
                self.at += n as u64;
                return Ok(n);
            }
            if state == Feed::End(until) {
                return Ok(0);
            }
            if self.runtime.block_on(self.feed.changed()).is_err() {
                return Err(std::io::Error::other("the staged file is gone"));
            }
        }
    }
}

/// Uploads many small staged files at once: one [`Node::put_many`] for their bytes (kept in
/// the node's block cache as well), then one [`Node::link_many`] per directory (one directory
/// version for the lot). A file whose upload
/// is under way already is left for later. Returns each file's result (`None`: nothing done).
pub(crate) async fn upload_batch(
    node: &Node,
    files: &[Arc<Staged>],
) -> Vec<Result<Option<PutReport>, NodeError>> {
    let mut results: Vec<Result<Option<PutReport>, NodeError>> =
        files.iter().map(|_| Ok(None)).collect();
    // (index into files, begun upload, location) of each file with something to send.
    let mut taken = Vec::new();
    let mut data = Vec::new();
    for (i, staged) in files.iter().enumerate() {
        let Some(begun) = staged.try_begin() else {
            continue;
        };
        let Some(location) = begun.entry.location.clone() else {
            begun.finish(true);
            continue;
        };
        let contents = match staged.fill_all().await {
            Ok(()) => staged.contents(),
            Err(e) => Err(e),
        };
        match contents {
            Ok(bytes) => {
                data.push(bytes);
                taken.push((i, begun, location));
            }
            Err(e) => {
                begun.finish(false);
                results[i] = Err(e);
            }
        }
    }
    // Kept in the block cache too: files just written are often read again here (a build, a
    // `git status`), and small ones cost the most to fetch.
    let options = PutOptions {
        cache: true,
        ..Default::default()
    };
    let puts = node.put_many(data, options).await;
    // Group what was put by directory, keeping the order files were closed in.
    let mut by_dir: Vec<(String, Vec<usize>)> = Vec::new();
    let mut reports: Vec<Option<PutReport>> = Vec::new();
    for (t, put) in puts.into_iter().enumerate() {
        let (i, _, location) = &taken[t];
        match put {
            Ok(report) => {
                let dir = location.rsplit_once('/').map_or("", |(d, _)| d).to_owned();
                match by_dir.iter_mut().find(|(d, _)| *d == dir) {
                    Some((_, members)) => members.push(t),
                    None => by_dir.push((dir, vec![t])),
                }
                reports.push(Some(report));
            }
            Err(e) => {
                results[*i] = Err(e);
                reports.push(None);
            }
        }
    }
    for (dir, members) in by_dir {
        let items: Result<Vec<(String, Content)>, NodeError> = members
            .iter()
            .map(|&t| {
                let (_, begun, location) = &taken[t];
                let name = location.rsplit_once('/').map_or("", |(_, n)| n).to_owned();
                let cap = &reports[t]
                    .as_ref()
                    .map(|r| r.cap.clone())
                    .unwrap_or_default();
                Ok((name, content(cap, &begun.entry)?))
            })
            .collect();
        let linked = match items {
            Ok(items) => node.link_many(&dir, items).await.map(|_| ()),
            Err(e) => Err(e),
        };
        for &t in &members {
            let (i, begun, location) = &taken[t];
            let one = match &linked {
                Ok(()) => Ok(()),
                // One bad name fails the whole version: link the files one by one instead.
                Err(_) => {
                    let cap = reports[t]
                        .as_ref()
                        .map(|r| r.cap.clone())
                        .unwrap_or_default();
                    link(node, location, &cap, &begun.entry).await
                }
            };
            results[*i] = one.map(|()| reports[t].take());
        }
    }
    for (i, begun, _) in taken {
        begun.finish(results[i].is_ok());
    }
    results
}

/// Puts the staged bytes of `file`: the whole file, or with a base (`lazy`) only the chunks
/// around the blocks written ([`Node::put_patched`]), the others fetched as the chunker reaches
/// them.
async fn put_file(
    node: &Node,
    mut file: File,
    path: &Path,
    lazy: Option<Arc<Lazy>>,
) -> Result<PutReport, NodeError> {
    use std::io::Seek;
    let Some(lazy) = lazy else {
        file.seek(std::io::SeekFrom::Start(0)).map_err(io(path))?;
        return node.put_blocking(file, PutOptions::default()).await;
    };
    let len = file.metadata().map_err(io(path))?.len();
    let snapshot = lazy.snapshot(len);
    let file = Arc::new(file);
    let runtime = tokio::runtime::Handle::current();
    let reader_lazy = lazy.clone();
    let open_at = move |at| PatchReader {
        lazy: reader_lazy.clone(),
        file: file.clone(),
        at,
        runtime: runtime.clone(),
    };
    let report = node
        .put_patched(
            &snapshot.base,
            snapshot.changes.clone(),
            open_at,
            PutOptions::default(),
        )
        .await?;
    // The stored version is the base of the next upload of a file still open. Without it
    // (a literal, or no answer), the next upload patches the old base: more work, same file.
    if let Ok(cap) = report.cap.parse::<Cap>()
        && let Ok(stored) = node.open_file(&cap).await
        && lazy.rebase(&snapshot, stored)
    {
        debug!(size = report.size, "the stored version is the new base");
    }
    Ok(report)
}

/// A staged file's bytes from some offset on, as a patched put reads them (on a blocking
/// thread): blocks still on the grid are filled first, one block per read.
struct PatchReader {
    lazy: Arc<Lazy>,
    file: Arc<File>,
    at: u64,
    runtime: tokio::runtime::Handle,
}

impl std::io::Read for PatchReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = buf.len().min(FILL_BLOCK as usize);
        let end = self.at + want as u64;
        self.runtime
            .block_on(self.lazy.fill(&self.file, self.at, end))
            .map_err(std::io::Error::other)?;
        let n = self.file.read_at(&mut buf[..want], self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

async fn link(
    node: &Node,
    location: &str,
    cap: &str,
    entry: &JournalEntry,
) -> Result<(), NodeError> {
    node.link(location, content(cap, entry)?, true).await
}

/// The directory entry content for the file put as `cap`.
fn content(cap: &str, entry: &JournalEntry) -> Result<Content, NodeError> {
    let cap: Cap = cap.parse()?;
    let file = FileRef::new(cap)
        .ok_or_else(|| NodeError::Invalid("a put returned a cap that is not a file".into()))?;
    Ok(Content::File {
        file,
        meta: entry.meta,
    })
}

/// What a previous run left in `dir`: removes staging files that were never changed (no
/// journal entry) and returns the journal entries to upload. Run before any mount starts.
pub(crate) fn sweep(dir: &Path) -> Vec<PathBuf> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let paths: Vec<PathBuf> = read.filter_map(|e| e.ok().map(|e| e.path())).collect();
    for p in &paths {
        let orphan = p.extension().is_some_and(|x| x == "data" || x == "fills")
            && !p.with_extension("json").exists();
        if orphan || p.extension().is_some_and(|x| x == "tmp") {
            let _ = std::fs::remove_file(p);
        }
    }
    let mut journals: Vec<PathBuf> = paths
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    journals.sort();
    journals
}

/// Uploads the staged files of `journals` (from [`sweep`]), retrying for a while when the grid
/// is not reachable yet. Returns how many were linked.
pub(crate) async fn recover(node: &Node, dir: &Path, journals: Vec<PathBuf>) -> usize {
    let mut linked = 0;
    for journal in journals {
        let Ok(bytes) = std::fs::read(&journal) else {
            continue;
        };
        let Ok(record) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            warn!(path = %journal.display(), "unreadable staging journal entry; leaving it");
            continue;
        };
        let (Ok(entry), Some(data)) = (
            serde_json::from_value::<JournalEntry>(record.clone()),
            record.get("data").and_then(|d| d.as_str()),
        ) else {
            continue;
        };
        let data_path = dir.join(data);
        let Some(location) = &entry.location else {
            let _ = std::fs::remove_file(&journal);
            let _ = std::fs::remove_file(&data_path);
            continue;
        };
        let mut done = false;
        for attempt in 0..10u32 {
            let result = async {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&data_path)
                    .map_err(io(&data_path))?;
                let lazy = match &entry.base {
                    // Blocks never fetched are still on the grid, in the file it started from.
                    Some(base) => {
                        let reader = node.open_file(&base.cap.parse()?).await?;
                        let fills = data_path.with_extension("fills");
                        Some(Arc::new(Lazy::new(reader, fills, base.len)))
                    }
                    None => None,
                };
                let report = put_file(node, file, &data_path, lazy).await?;
                link(node, location, &report.cap, &entry).await
            }
            .await;
            match result {
                Ok(()) => {
                    done = true;
                    break;
                }
                Err(NodeError::Io { .. }) => break,
                Err(e) => {
                    warn!(attempt, error = %e, "uploading a staged file failed; retrying");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
        if done {
            info!(data = %data, "uploaded a file staged before the last stop");
            let _ = std::fs::remove_file(&journal);
            let _ = std::fs::remove_file(&data_path);
            let _ = std::fs::remove_file(data_path.with_extension("fills"));
            linked += 1;
        }
    }
    linked
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use cairn_testkit::{TestGrid, random_bytes};

    async fn read_all(node: &Node, location: &str) -> Vec<u8> {
        let cap = node.resolve_file(location).await.unwrap();
        let mut out = Vec::new();
        node.get(&cap, &mut out).await.unwrap();
        out
    }

    /// Links `original` at `/big.bin` and opens it for writing, staged in `staging`.
    async fn staged_over(node: &Node, original: &[u8], staging: &Path) -> Staged {
        let put = node
            .put(
                std::io::Cursor::new(original.to_vec()),
                PutOptions::default(),
            )
            .await
            .unwrap();
        let cap: Cap = put.cap.parse().unwrap();
        let content = Content::File {
            file: FileRef::new(cap.clone()).unwrap(),
            meta: Meta::default(),
        };
        node.link("/big.bin", content, false).await.unwrap();
        let location = format!("{}/big.bin", node.share("/", true).await.unwrap());
        let reader = node.open_file(&cap).await.unwrap();
        Staged::create(
            staging,
            location,
            Meta::default(),
            true,
            Some((reader, cap.to_string())),
            None,
        )
        .unwrap()
    }

    /// A file opened for writing over an existing one, changed in one block, then left by a
    /// crash: the restart uploads the new version, taking the blocks never fetched from the
    /// file it started from.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_after_a_write_into_a_large_file_uploads_the_new_version_at_restart() {
        let grid = TestGrid::start(5).await;
        let node = grid.node(0).clone();
        let original = random_bytes(3, 5 << 20 | 12_345);
        let staging = tempfile::tempdir().unwrap();
        {
            let staged = staged_over(&node, &original, staging.path()).await;
            // Reads before any write come from the grid.
            assert_eq!(
                staged.read_at(3 << 20, 100).await.unwrap(),
                original[3 << 20..(3 << 20) + 100]
            );
            let at = (2 << 20) + 10;
            assert!(staged.needs_fill(at, 4));
            staged.fill(at, 4).await.unwrap();
            staged.write_at(b"NEW!", at).unwrap();
            staged.mark_dirty(Some(7)).unwrap();
            assert!(!staged.needs_fill(at, 4));
            // Dropped here without an upload: what a killed daemon leaves.
        }
        let journals = sweep(staging.path());
        assert_eq!(journals.len(), 1);
        assert_eq!(recover(&node, staging.path(), journals).await, 1);
        let mut expected = original;
        let at = (2 << 20) + 10;
        expected[at..at + 4].copy_from_slice(b"NEW!");
        assert!(read_all(&node, "/big.bin").await == expected);
        assert_eq!(std::fs::read_dir(staging.path()).unwrap().count(), 0);
        grid.shutdown().await;
    }

    /// An upload of a file opened over an existing one reads only the chunks around the block
    /// written. The version it stores is the base of the next upload, so a file held open
    /// re-chunks only around what was written since; a write during an upload keeps the old
    /// base.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn uploads_over_a_base_rechunk_only_around_the_blocks_written() {
        let grid = TestGrid::start(5).await;
        let node = grid.node(0).clone();
        let original = random_bytes(4, 24 << 20);
        let staging = tempfile::tempdir().unwrap();
        let staged = staged_over(&node, &original, staging.path()).await;
        let mut expected = original;
        let write = async |expected: &mut Vec<u8>, at: usize, bytes: &[u8]| {
            staged.fill(at as u64, bytes.len() as u64).await.unwrap();
            staged.write_at(bytes, at as u64).unwrap();
            staged.mark_dirty(Some(7)).unwrap();
            expected[at..at + bytes.len()].copy_from_slice(bytes);
        };
        let block = FILL_BLOCK as usize;
        write(&mut expected, 12 * block + 100, b"first").await;
        staged.upload(&node).await.unwrap().unwrap();
        let lazy = staged.lazy.clone().unwrap();
        let filled = (0..24u64)
            .filter(|b| !lazy.needs_fill(b * FILL_BLOCK, b * FILL_BLOCK + 1))
            .count();
        assert!(filled > 1, "the chunker read the blocks around the write");
        assert!(filled < 12, "but not the file: {filled} blocks filled");
        // The stored version is the base from now on: nothing differs from it.
        let snapshot = lazy.snapshot(staged.len());
        assert_eq!(snapshot.changes.changed, vec![]);
        assert_eq!(snapshot.base.size(), expected.len() as u64);

        write(&mut expected, 3 * block, b"second").await;
        assert_eq!(
            lazy.snapshot(staged.len()).changes.changed,
            vec![3 * FILL_BLOCK..4 * FILL_BLOCK]
        );
        let report = staged.upload(&node).await.unwrap().unwrap();
        assert!(read_all(&node, "/big.bin").await == expected);
        assert!(report.bytes_sent < 16 << 20, "{report:?}");
        assert_eq!(lazy.snapshot(staged.len()).changes.changed, vec![]);

        // A write during an upload keeps the file's base: the write still counts as a change.
        write(&mut expected, 20 * block, b"third").await;
        let snapshot = lazy.snapshot(staged.len());
        write(&mut expected, 21 * block, b"fourth").await;
        let stored = node.open_file(&report.cap.parse().unwrap()).await.unwrap();
        assert!(!lazy.rebase(&snapshot, stored));
        staged.upload(&node).await.unwrap().unwrap();
        assert!(read_all(&node, "/big.bin").await == expected);
        grid.shutdown().await;
    }

    /// A file written in order streams: its put starts once it is [`STREAM_AFTER`] long and
    /// the upload takes it. A write out of order gives the streamed put up, and the upload
    /// still puts what the file holds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_written_in_order_streams_and_a_write_out_of_order_gives_it_up() {
        let grid = TestGrid::start(5).await;
        let node = grid.node(0).clone();
        let location = format!("{}/streamed.bin", node.share("/", true).await.unwrap());
        let staging = tempfile::tempdir().unwrap();
        let data = random_bytes(5, (STREAM_AFTER as usize) + (3 << 20) + 777);

        let staged = Staged::create(
            staging.path(),
            location.clone(),
            Meta::default(),
            false,
            None,
            Some(&node),
        )
        .unwrap();
        write_in_order(&staged, &data[..(STREAM_AFTER as usize) - 1], 0);
        assert!(!staged.streaming(), "too short to stream yet");
        write_in_order(&staged, &data, (STREAM_AFTER as usize) - 1);
        assert!(
            staged.streaming(),
            "long enough: the put runs while it is written"
        );
        let report = staged.upload(&node).await.unwrap().unwrap();
        assert_eq!(report.size, data.len() as u64);
        assert!(!staged.streaming());
        assert!(read_all(&node, "/streamed.bin").await == data);

        // Out of order: a write behind the end gives the streamed put up.
        let staged = Staged::create(
            staging.path(),
            location,
            Meta::default(),
            true,
            None,
            Some(&node),
        )
        .unwrap();
        let mut changed = data.clone();
        write_in_order(&staged, &changed, 0);
        assert!(staged.streaming());
        changed[100..104].copy_from_slice(b"EDIT");
        staged.write_at(b"EDIT", 100).unwrap();
        assert!(
            !staged.streaming(),
            "a write out of order gives the stream up"
        );
        staged.upload(&node).await.unwrap().unwrap();
        assert!(read_all(&node, "/streamed.bin").await == changed);
        grid.shutdown().await;
    }

    /// Writes `data[from..]` at its offsets, 1 MiB at a time.
    fn write_in_order(staged: &Staged, data: &[u8], from: usize) {
        let mut at = from;
        while at < data.len() {
            let end = (at + (1 << 20)).min(data.len());
            staged.write_at(&data[at..end], at as u64).unwrap();
            staged.mark_dirty(None).unwrap();
            at = end;
        }
    }
}

//! Writes staged on local disk until they are uploaded.
//!
//! A file opened for writing gets a staging file `DIR/staging/<id>.data` holding its whole
//! content (an existing file's bytes are copied in first, unless it is truncated). Writes go
//! there. On the first change a journal entry `DIR/staging/<id>.json` (mode 0600: it names the
//! directory's cap) records where the file belongs; it is written to a temporary name, fsynced
//! and renamed, so it is whole or absent. Close, flush and fsync upload the file with
//! [`Node::put`] and relink its entry; the journal entry goes once the upload is linked.
//!
//! Crash safety: a daemon killed before an upload leaves the data and its journal entry;
//! `recover` uploads and links each at the next start. What fsync acknowledged is on the grid
//! already. Deleting or renaming the file through the mount updates or drops the entry.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn_core::cap::Cap;
use cairn_dir::{Content, FileRef, Meta};
use cairn_node::{Node, NodeError, PutOptions, PutReport};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// What the journal records of one staged file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct JournalEntry {
    /// Where the file is linked: `DIRCAP/name`. `None` once the file was deleted.
    pub(crate) location: Option<String>,
    /// Mode bits.
    pub(crate) mode: u32,
    /// Modification time, ns since the epoch.
    pub(crate) mtime_ns: i64,
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
}

/// One staged file (see the module docs).
#[derive(Debug)]
pub(crate) struct Staged {
    pub(crate) file: File,
    data_path: PathBuf,
    journal_path: PathBuf,
    pub(crate) state: Mutex<StagedState>,
    /// Serialises uploads of this file.
    pub(crate) upload: tokio::sync::Mutex<()>,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> NodeError + '_ {
    move |e| NodeError::io(path, e)
}

/// Writes `bytes` to `path` whole or not at all (temporary file, fsync, rename).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), NodeError> {
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(dir) = path.parent()
        && let Ok(d) = File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

impl Staged {
    /// A new, empty staging file in `dir` for the file at `location`.
    pub(crate) fn create(dir: &Path, location: String, meta: Meta) -> Result<Staged, NodeError> {
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
        Ok(Staged {
            file,
            data_path,
            journal_path,
            state: Mutex::new(StagedState {
                entry: JournalEntry {
                    location: Some(location),
                    mode: meta.mode,
                    mtime_ns: meta.mtime_ns,
                },
                dirty: false,
                changed_at: None,
                writers: 0,
            }),
            upload: tokio::sync::Mutex::new(()),
        })
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, StagedState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The staged size.
    pub(crate) fn len(&self) -> u64 {
        self.file.metadata().map(|m| m.len()).unwrap_or(0)
    }

    /// Reads up to `len` bytes at `offset`.
    pub(crate) fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let size = self.len();
        let end = offset.saturating_add(len as u64).min(size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; (end - offset) as usize];
        let mut done = 0;
        while done < buf.len() {
            let n = self.file.read_at(&mut buf[done..], offset + done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        buf.truncate(done);
        Ok(buf)
    }

    /// Marks the file changed: the journal entry is written (durably) the first time, so a
    /// crash from here on still uploads it.
    pub(crate) fn mark_dirty(&self, mtime_ns: Option<i64>) -> Result<(), NodeError> {
        let mut state = self.lock();
        if let Some(t) = mtime_ns {
            state.entry.mtime_ns = t;
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

    /// Uploads the staged bytes if they changed and links them at the entry's location.
    /// Returns the put's report, or `None` when there was nothing to do. Cancel-safe only in
    /// the sense that a cancelled upload leaves the file dirty.
    pub(crate) async fn upload(&self, node: &Node) -> Result<Option<PutReport>, NodeError> {
        let _one = self.upload.lock().await;
        let (entry, journal_written) = {
            let mut state = self.lock();
            if !state.dirty {
                return Ok(None);
            }
            state.dirty = false;
            (state.entry.clone(), true)
        };
        let result = async {
            let Some(location) = &entry.location else {
                return Ok(None);
            };
            self.file.sync_data().map_err(io(&self.data_path))?;
            let reader = self.file.try_clone().map_err(io(&self.data_path))?;
            let report = put_file(node, reader, &self.data_path).await?;
            link(node, location, &report.cap, &entry).await?;
            Ok(Some(report))
        }
        .await;
        let mut state = self.lock();
        match &result {
            Err(_) => state.dirty = true,
            Ok(_) if !state.dirty && journal_written => {
                let _ = std::fs::remove_file(&self.journal_path);
            }
            Ok(_) => {}
        }
        result
    }

    /// Drops the file from the journal: it was deleted, so nothing is to be uploaded.
    pub(crate) fn forget(&self) {
        let mut state = self.lock();
        state.entry.location = None;
        state.dirty = false;
        let _ = std::fs::remove_file(&self.journal_path);
    }

    /// Removes the staging file (after the last writer closed and the upload is linked). A
    /// file still dirty (its upload failed) keeps its data and journal entry for `recover`.
    pub(crate) fn discard(&self) {
        if self.lock().dirty {
            return;
        }
        let _ = std::fs::remove_file(&self.data_path);
    }
}

/// Puts the bytes of `file` (read from its start).
async fn put_file(node: &Node, file: File, path: &Path) -> Result<PutReport, NodeError> {
    let mut file = tokio::fs::File::from_std(file);
    use tokio::io::AsyncSeekExt;
    file.seek(std::io::SeekFrom::Start(0))
        .await
        .map_err(io(path))?;
    node.put(file, PutOptions::default()).await
}

async fn link(
    node: &Node,
    location: &str,
    cap: &str,
    entry: &JournalEntry,
) -> Result<(), NodeError> {
    let cap: Cap = cap.parse()?;
    let file = FileRef::new(cap)
        .ok_or_else(|| NodeError::Invalid("a put returned a cap that is not a file".into()))?;
    let content = Content::File {
        file,
        meta: Meta {
            mode: entry.mode,
            mtime_ns: entry.mtime_ns,
        },
    };
    node.link(location, content, true).await
}

/// What a previous run left in `dir`: removes staging files that were never changed (no
/// journal entry) and returns the journal entries to upload. Run before any mount starts.
pub(crate) fn sweep(dir: &Path) -> Vec<PathBuf> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let paths: Vec<PathBuf> = read.filter_map(|e| e.ok().map(|e| e.path())).collect();
    for p in &paths {
        let orphan =
            p.extension().is_some_and(|x| x == "data") && !p.with_extension("json").exists();
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
                let file = File::open(&data_path).map_err(io(&data_path))?;
                let report = put_file(node, file, &data_path).await?;
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
            linked += 1;
        }
    }
    linked
}

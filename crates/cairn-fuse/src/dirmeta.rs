//! Metadata set on directories through a mount, kept until it is stored in their entries.
//!
//! `tar x` and `cp -a` set the mode, owner and times of each directory they make, one call
//! each, once it is filled. Storing each call in the parent's entry would publish a version
//! per call, and make the caller wait for it. Instead a `chmod`, `chown` or `utimens` of a
//! directory is kept here and shows at once; the mount stores the changes in the background
//! once none came for [`STORE_AFTER`], those of one parent in one version. A rename or removal
//! of the directory, `fsync` of a directory and unmounting store them first.
//!
//! Each mount writes what it keeps to `DIR/staging/dir-meta-<id>.pending` (mode 0600: it names
//! the parents' caps), whole or not at all, so a daemon killed before storing them stores them
//! at its next start ([`recover`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn_dir::Meta;
use cairn_node::{Node, NodeError};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::staging::write_atomic;

/// A directory's metadata is stored once it was left unchanged this long.
pub(crate) const STORE_AFTER: Duration = Duration::from_millis(200);
/// File name extension of the kept changes.
const EXTENSION: &str = "pending";

/// A change kept for one directory.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Pending {
    /// The cap text of the directory it is in.
    pub(crate) parent: String,
    /// Its name there.
    pub(crate) name: String,
    /// The metadata to store.
    pub(crate) meta: Meta,
    /// The parent's inode in this mount.
    #[serde(skip)]
    pub(crate) parent_ino: u64,
    #[serde(skip)]
    changed_at: Option<Instant>,
    /// Failed attempts to store it since it last changed.
    #[serde(skip)]
    failures: u32,
}

/// The changes one mount keeps, by directory inode.
#[derive(Debug)]
pub(crate) struct DirMeta {
    path: PathBuf,
    kept: Mutex<HashMap<u64, Pending>>,
}

impl DirMeta {
    /// Nothing kept yet; written to a new file in `staging_dir` once something is.
    pub(crate) fn new(staging_dir: &Path) -> DirMeta {
        let id: u64 = rand::random();
        DirMeta {
            path: staging_dir.join(format!("dir-meta-{id:016x}.{EXTENSION}")),
            kept: Mutex::new(HashMap::new()),
        }
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The metadata kept for directory `ino`, if any.
    pub(crate) fn get(&self, ino: u64) -> Option<Meta> {
        self.kept().get(&ino).map(|p| p.meta)
    }

    /// Keeps `meta` for directory `ino`, named `name` in `parent` (inode `parent_ino`).
    pub(crate) fn set(
        &self,
        ino: u64,
        parent_ino: u64,
        parent: String,
        name: String,
        meta: Meta,
    ) -> Result<(), NodeError> {
        let mut kept = self.kept();
        kept.insert(
            ino,
            Pending {
                parent,
                name,
                meta,
                parent_ino,
                changed_at: Some(Instant::now()),
                failures: 0,
            },
        );
        self.write(&kept)
    }

    /// The changes to store now: those left alone for [`STORE_AFTER`] (after a failure, for
    /// 2, 4 ... 64 s), every one with `all`, or only that of `only`.
    pub(crate) fn due(&self, all: bool, only: Option<u64>) -> Vec<(u64, Pending)> {
        let kept = self.kept();
        kept.iter()
            .filter(|(ino, p)| match only {
                Some(one) => **ino == one,
                None => {
                    let wait = match p.failures {
                        0 => STORE_AFTER,
                        n => Duration::from_secs(1 << n.min(6)),
                    };
                    all || p.changed_at.is_none_or(|at| at.elapsed() >= wait)
                }
            })
            .map(|(ino, p)| (*ino, p.clone()))
            .collect()
    }

    /// `stored` went into the entries: forgets each that was not changed again meanwhile.
    pub(crate) fn stored(&self, stored: &[(u64, Pending)]) -> Result<(), NodeError> {
        let mut kept = self.kept();
        for (ino, done) in stored {
            if kept.get(ino).is_some_and(|p| p.meta == done.meta) {
                kept.remove(ino);
            }
        }
        self.write(&kept)
    }

    /// Storing `tried` failed: each waits longer before the next try.
    pub(crate) fn failed(&self, tried: &[(u64, Pending)]) {
        let mut kept = self.kept();
        for (ino, _) in tried {
            if let Some(p) = kept.get_mut(ino) {
                p.failures += 1;
                p.changed_at = Some(Instant::now());
            }
        }
    }

    /// Forgets what is kept for `ino` (the directory is gone).
    pub(crate) fn forget(&self, ino: u64) -> Result<(), NodeError> {
        let mut kept = self.kept();
        if kept.remove(&ino).is_some() {
            self.write(&kept)?;
        }
        Ok(())
    }

    fn write(&self, kept: &HashMap<u64, Pending>) -> Result<(), NodeError> {
        if kept.is_empty() {
            return match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(NodeError::io(&self.path, e))
                }
                _ => Ok(()),
            };
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| NodeError::io(dir, e))?;
        }
        let list: Vec<&Pending> = kept.values().collect();
        let bytes = serde_json::to_vec(&list).map_err(|e| NodeError::Invalid(e.to_string()))?;
        write_atomic(&self.path, &bytes)
    }
}

/// Groups `changes` (by directory inode) by the cap text of the directory they are in.
pub(crate) fn by_parent(
    changes: impl IntoIterator<Item = (u64, Pending)>,
) -> HashMap<String, Vec<(u64, Pending)>> {
    let mut groups: HashMap<String, Vec<(u64, Pending)>> = HashMap::new();
    for change in changes {
        groups
            .entry(change.1.parent.clone())
            .or_default()
            .push(change);
    }
    groups
}

/// What `Node::set_meta_many` takes for `changes`: (name, meta) each.
pub(crate) fn items(changes: &[(u64, Pending)]) -> Vec<(String, Meta)> {
    changes
        .iter()
        .map(|(_, p)| (p.name.clone(), p.meta))
        .collect()
}

/// Stores the changes a previous run kept in `staging_dir` and had not stored, trying again
/// for a while when the grid is not reachable yet. Returns how many were stored.
pub(crate) async fn recover(node: &Node, staging_dir: &Path) -> usize {
    let Ok(read) = std::fs::read_dir(staging_dir) else {
        return 0;
    };
    let files: Vec<PathBuf> = read
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == EXTENSION))
        .collect();
    let mut stored = 0;
    for file in files {
        let kept: Vec<Pending> = match std::fs::read(&file)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        {
            Some(kept) => kept,
            None => {
                warn!(path = %file.display(), "unreadable kept directory metadata; leaving it");
                continue;
            }
        };
        // A previous run's inode numbers mean nothing now.
        let mut left = by_parent(kept.into_iter().map(|p| (0, p)));
        for attempt in 0..10u32 {
            let mut failed = HashMap::new();
            for (parent, changes) in left {
                match node.set_meta_many(&parent, items(&changes)).await {
                    Ok(()) => stored += changes.len(),
                    Err(e) => {
                        warn!(error = %e, attempt, "storing kept directory metadata failed");
                        failed.insert(parent, changes);
                    }
                }
            }
            left = failed;
            if left.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        if left.is_empty() {
            let _ = std::fs::remove_file(&file);
        }
    }
    if stored > 0 {
        info!(
            directories = stored,
            "stored directory metadata left by the last run"
        );
    }
    stored
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(mode: u32) -> Meta {
        Meta {
            mode,
            mtime_ns: 7,
            ..Default::default()
        }
    }

    #[test]
    fn kept_changes_are_written_until_stored() {
        let dir = tempfile::tempdir().unwrap();
        let kept = DirMeta::new(dir.path());
        kept.set(5, 1, "cap".into(), "a".into(), meta(0o700))
            .unwrap();
        kept.set(6, 1, "cap".into(), "b".into(), meta(0o711))
            .unwrap();
        assert_eq!(kept.get(5), Some(meta(0o700)));
        let on_disk: Vec<Pending> =
            serde_json::from_slice(&std::fs::read(&kept.path).unwrap()).unwrap();
        assert_eq!(on_disk.len(), 2);
        // Nothing is due right after a change; all of it is when asked for.
        assert!(kept.due(false, None).is_empty());
        assert_eq!(kept.due(false, Some(6)).len(), 1);
        let all = kept.due(true, None);
        assert_eq!(all.len(), 2);
        // A change made while storing stays kept.
        kept.set(5, 1, "cap".into(), "a".into(), meta(0o750))
            .unwrap();
        kept.stored(&all).unwrap();
        assert_eq!(kept.get(5), Some(meta(0o750)));
        assert_eq!(kept.get(6), None);
        // A failed store waits before the next try, unless everything is asked for.
        kept.set(7, 1, "cap".into(), "c".into(), meta(0o755))
            .unwrap();
        let tried = kept.due(true, None);
        kept.failed(&tried);
        std::thread::sleep(STORE_AFTER);
        assert!(kept.due(false, None).is_empty());
        assert_eq!(kept.due(true, None).len(), 2);
        kept.forget(5).unwrap();
        kept.forget(7).unwrap();
        assert!(!kept.path.exists(), "nothing kept, no file");
    }

    /// What a killed daemon kept is stored at the next start; an unreadable file is left
    /// alone (and logged) rather than failing the start.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restart_stores_what_a_killed_daemon_kept() {
        let grid = cairn_testkit::TestGrid::start(5).await;
        let node = grid.node(0).clone();
        node.mkdir("/kept/inner", true).await.unwrap();
        let parent = node.share("/kept", true).await.unwrap();
        let staging = tempfile::tempdir().unwrap();
        DirMeta::new(staging.path())
            .set(9, 1, parent, "inner".into(), meta(0o701))
            .unwrap();
        let garbage = staging.path().join(format!("dir-meta-1.{EXTENSION}"));
        std::fs::write(&garbage, b"not json").unwrap();
        assert_eq!(recover(&node, staging.path()).await, 1);
        let ls = node.ls("/kept").await.unwrap();
        assert_eq!(ls.get("inner").unwrap().mode, 0o701);
        let left: Vec<_> = std::fs::read_dir(staging.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(left, [garbage]);
        grid.shutdown().await;
    }

    #[test]
    fn changes_group_by_parent() {
        let p = |parent: &str, name: &str| Pending {
            parent: parent.into(),
            name: name.into(),
            meta: meta(0o755),
            parent_ino: 1,
            changed_at: None,
            failures: 0,
        };
        let changes = [(1, p("x", "a")), (2, p("y", "b")), (3, p("x", "c"))];
        let groups = by_parent(changes);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups["x"].len(), 2);
        assert_eq!(
            items(&groups["x"])
                .iter()
                .map(|i| i.0.as_str())
                .collect::<Vec<_>>(),
            ["a", "c"]
        );
    }
}

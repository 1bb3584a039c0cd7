//! The tree commands that need more than one control call: `ls` output and `cp -r`.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use cairn_node::control::{ControlClient, ControlRequest, FileMeta, LinkItem, TreeEntry};
use cairn_node::{LsReport, NodeDir, PutReport};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::{call, get_file, print_json};

/// Files moved at once by `cp -r`.
const PARALLEL_FILES: usize = 16;
/// Entries linked per directory version by `cp -r`.
const LINK_BATCH: usize = 2000;
/// Files of at most this many bytes are moved in batches by `cp -r`.
const SMALL_FILE: u64 = 256 * 1024;
/// The most files in one batch.
const BATCH_FILES: usize = 128;
/// The most bytes in one batch (within the node's limit, `MAX_MANY_BYTES`).
const BATCH_BYTES: u64 = 8 * 1024 * 1024;
/// Batches in flight at once.
const PARALLEL_BATCHES: usize = 4;

/// Mode and mtime of a local file.
pub(crate) fn file_meta(metadata: &std::fs::Metadata) -> FileMeta {
    FileMeta {
        mode: metadata.mode() & 0o7777,
        mtime_ns: metadata
            .mtime()
            .saturating_mul(1_000_000_000)
            .saturating_add(metadata.mtime_nsec()),
    }
}

fn mode_text(kind: &str, mode: u32) -> String {
    let mut text = String::with_capacity(10);
    text.push(match kind {
        "dir" => 'd',
        "symlink" => 'l',
        _ => '-',
    });
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        text.push(if bits & 4 != 0 { 'r' } else { '-' });
        text.push(if bits & 2 != 0 { 'w' } else { '-' });
        text.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    text
}

/// `cairn ls`. The long format: mode, size, modification time (of the file, as put), change
/// time (when the entry last changed in the directory), name, symlink target, conflict.
pub(crate) async fn ls(dir: &Path, path: &str, long: bool, json: bool) -> Result<()> {
    let value = call(
        dir,
        &ControlRequest::Ls {
            path: path.to_owned(),
        },
    )
    .await?;
    if json {
        return print_json(&value);
    }
    let report: LsReport = serde_json::from_value(value)?;
    for entry in &report.entries {
        let suffix = match entry.kind.as_str() {
            "dir" => "/",
            _ => "",
        };
        let conflict = if entry.conflict { "  [conflict]" } else { "" };
        if long {
            let mtime_ms = (entry.mtime_ns.max(0) / 1_000_000) as u64;
            let target = entry
                .target
                .as_ref()
                .map(|t| format!(" -> {t}"))
                .unwrap_or_default();
            outln!(
                "{} {:>12}  {}  {}  {}{suffix}{target}{conflict}",
                mode_text(&entry.kind, entry.mode),
                entry.size,
                cairn_dir::utc_minutes(mtime_ms),
                cairn_dir::utc_minutes(entry.ctime_ms),
                entry.name
            );
        } else {
            outln!("{}{suffix}{conflict}", entry.name);
        }
    }
    if report.conflicts > 0 {
        eprintln!(
            "note: {} entries are in conflict (concurrent writes kept side by side); keep one with `cairn mv` or `cairn rm`",
            report.conflicts
        );
    }
    Ok(())
}

/// A grid-side location: `cairn:/path` (a path in your root) or a cap (`cairn:dir:1:...`).
fn grid_side(spec: &str) -> Option<String> {
    let rest = spec.strip_prefix("cairn:")?;
    if rest.starts_with("cairn:") {
        // `cairn:` in front of a cap.
        Some(rest.to_owned())
    } else if rest.starts_with('/') || rest.is_empty() {
        Some(if rest.is_empty() {
            "/".into()
        } else {
            rest.into()
        })
    } else {
        Some(spec.to_owned())
    }
}

/// What `cp` reports.
#[derive(Debug, Serialize)]
struct CpReport {
    files: u64,
    dirs: u64,
    symlinks: u64,
    bytes: u64,
    seconds: f64,
    files_per_sec: f64,
    dest: String,
}

impl CpReport {
    fn print(&self, json: bool) -> Result<()> {
        if json {
            return print_json(self);
        }
        eprintln!(
            "copied {} files, {} directories, {} symlinks ({} bytes) in {:.2} s ({:.0} files/s) to {}",
            self.files,
            self.dirs,
            self.symlinks,
            self.bytes,
            self.seconds,
            self.files_per_sec,
            self.dest
        );
        Ok(())
    }
}

/// `cairn cp`.
pub(crate) async fn cp(
    dir: &Path,
    source: &str,
    dest: &str,
    recursive: bool,
    json: bool,
) -> Result<()> {
    match (grid_side(source), grid_side(dest)) {
        (None, Some(to)) => upload(dir, Path::new(source), &to, recursive, json).await,
        (Some(from), None) => download(dir, &from, Path::new(dest), recursive, json).await,
        (Some(_), Some(_)) => bail!(
            "copying within the grid is not supported yet: use `cairn mv`, or `cairn share` + `cairn attach`"
        ),
        (None, None) => {
            bail!("one side of `cairn cp` must be on the grid: prefix it with `cairn:`")
        }
    }
}

/// Whether the grid path is an existing directory.
async fn grid_dir_exists(dir: &Path, path: &str) -> bool {
    match call(dir, &ControlRequest::Ls { path: path.into() }).await {
        Ok(v) => serde_json::from_value::<LsReport>(v)
            .map(|r| !(r.entries.len() == 1 && r.entries[0].kind != "dir" && r.path == path))
            .unwrap_or(false),
        Err(_) => false,
    }
}

fn join_grid(base: &str, rel: &str) -> String {
    let base = base.trim_end_matches('/');
    if rel.is_empty() {
        if base.is_empty() {
            "/".into()
        } else {
            base.into()
        }
    } else {
        format!("{base}/{rel}")
    }
}

/// A local tree: directories (relative paths, parents first), files and symlinks by directory.
#[derive(Default)]
struct LocalTree {
    dirs: Vec<String>,
    files: BTreeMap<String, Vec<(String, PathBuf, std::fs::Metadata)>>,
    symlinks: Vec<(String, String)>,
}

fn scan(root: &Path) -> Result<LocalTree> {
    let mut tree = LocalTree::default();
    let mut stack = vec![(String::new(), root.to_path_buf())];
    while let Some((rel, path)) = stack.pop() {
        tree.dirs.push(rel.clone());
        let mut entries: Vec<_> = std::fs::read_dir(&path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("cannot read {}", path.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries.into_iter().rev() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let child_rel = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let child = entry.path();
            let metadata = std::fs::symlink_metadata(&child)
                .with_context(|| format!("cannot read {}", child.display()))?;
            if metadata.is_dir() {
                stack.push((child_rel, child));
            } else if metadata.file_type().is_symlink() {
                let target = std::fs::read_link(&child)
                    .with_context(|| format!("cannot read link {}", child.display()))?;
                tree.symlinks
                    .push((child_rel, target.to_string_lossy().into_owned()));
            } else if metadata.is_file() {
                tree.files
                    .entry(rel.clone())
                    .or_default()
                    .push((name, child, metadata));
            }
        }
    }
    Ok(tree)
}

async fn put_one(dir: NodeDir, path: PathBuf) -> Result<PutReport> {
    let file =
        std::fs::File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    let client = ControlClient::connect(&dir).await?;
    let request = ControlRequest::Put {
        private: false,
        path: None,
        name: None,
        meta: FileMeta::default(),
        fd: true,
    };
    let value = client
        .put_file(request, file, |_| {})
        .await
        .with_context(|| format!("cannot put {}", path.display()))?;
    Ok(serde_json::from_value(value)?)
}

/// A small file waiting for its batch: directory, position in it, name, path, mode and mtime.
type SmallFile = (String, usize, String, PathBuf, FileMeta);
/// A put file: directory, position in it, name, mode and mtime, and the put's report.
type PutFile = (String, usize, String, FileMeta, PutReport);

/// Puts a batch of small files through one control call.
async fn put_batch(dir: NodeDir, files: Vec<SmallFile>) -> Result<Vec<PutFile>> {
    let mut data = Vec::with_capacity(files.len());
    for (_, _, _, path, _) in &files {
        data.push(
            tokio::fs::read(path)
                .await
                .with_context(|| format!("cannot read {}", path.display()))?,
        );
    }
    let client = ControlClient::connect(&dir).await?;
    let results = client.put_many(false, &data).await?;
    files
        .into_iter()
        .zip(results)
        .map(|((rel, index, name, path, meta), result)| {
            let value = result.with_context(|| format!("cannot put {}", path.display()))?;
            Ok((rel, index, name, meta, serde_json::from_value(value)?))
        })
        .collect()
}

async fn upload(dir: &Path, local: &Path, to: &str, recursive: bool, json: bool) -> Result<()> {
    let started = Instant::now();
    let metadata =
        std::fs::metadata(local).with_context(|| format!("cannot read {}", local.display()))?;
    let node_dir = NodeDir::new(dir);
    if !metadata.is_dir() {
        let (report, linked) =
            crate::put_file(&node_dir, local, Some(to.to_owned()), false, false).await?;
        return report_single(report.size, linked.unwrap_or_default(), started, json);
    }
    if !recursive {
        bail!("{} is a directory (use -r)", local.display());
    }
    let name = local
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .context("the source directory has no name")?;
    let target = if grid_dir_exists(dir, to).await {
        join_grid(to, &name)
    } else {
        to.to_owned()
    };
    let tree = scan(local)?;
    let mut report = CpReport {
        files: 0,
        dirs: tree.dirs.len() as u64,
        symlinks: tree.symlinks.len() as u64,
        bytes: 0,
        seconds: 0.0,
        files_per_sec: 0.0,
        dest: target.clone(),
    };
    for rel in &tree.dirs {
        call(
            dir,
            &ControlRequest::Mkdir {
                path: join_grid(&target, rel),
                parents: true,
            },
        )
        .await?;
    }
    // Small files travel in batches (one control call and a few requests per holder for many
    // files); larger ones one by one, streamed.
    let limit = Arc::new(Semaphore::new(PARALLEL_FILES));
    let batches = Arc::new(Semaphore::new(PARALLEL_BATCHES));
    let mut puts = JoinSet::new();
    let mut batch: Vec<SmallFile> = Vec::new();
    let mut batch_bytes = 0u64;
    for (rel, files) in tree.files {
        for (index, (name, path, metadata)) in files.into_iter().enumerate() {
            let meta = file_meta(&metadata);
            if metadata.len() <= SMALL_FILE {
                if !batch.is_empty()
                    && (batch.len() >= BATCH_FILES || batch_bytes + metadata.len() > BATCH_BYTES)
                {
                    let permit = batches.clone().acquire_owned().await?;
                    let node_dir = node_dir.clone();
                    let files = std::mem::take(&mut batch);
                    puts.spawn(async move {
                        let done = put_batch(node_dir, files).await;
                        drop(permit);
                        done
                    });
                    batch_bytes = 0;
                }
                batch_bytes += metadata.len();
                batch.push((rel.clone(), index, name, path, meta));
                continue;
            }
            let permit = limit.clone().acquire_owned().await?;
            let node_dir = node_dir.clone();
            let rel = rel.clone();
            puts.spawn(async move {
                let put = put_one(node_dir, path).await;
                drop(permit);
                put.map(|r| vec![(rel, index, name, meta, r)])
            });
        }
    }
    if !batch.is_empty() {
        let node_dir = node_dir.clone();
        puts.spawn(put_batch(node_dir, batch));
    }
    let mut by_dir: BTreeMap<String, Vec<(usize, String, FileMeta, PutReport)>> = BTreeMap::new();
    while let Some(joined) = puts.join_next().await {
        for (rel, index, name, meta, put) in joined?? {
            by_dir
                .entry(rel)
                .or_default()
                .push((index, name, meta, put));
        }
    }
    for (rel, mut done) in by_dir {
        done.sort_by_key(|d| d.0);
        for batch in done.chunks(LINK_BATCH) {
            let items: Vec<LinkItem> = batch
                .iter()
                .map(|(_, name, meta, put)| LinkItem {
                    name: name.clone(),
                    cap: put.cap.clone(),
                    meta: *meta,
                })
                .collect();
            report.files += items.len() as u64;
            report.bytes += batch.iter().map(|d| d.3.size).sum::<u64>();
            call(
                dir,
                &ControlRequest::LinkMany {
                    path: join_grid(&target, &rel),
                    items,
                },
            )
            .await?;
        }
    }
    for (rel, link_target) in tree.symlinks {
        call(
            dir,
            &ControlRequest::Symlink {
                target: link_target,
                path: join_grid(&target, &rel),
            },
        )
        .await?;
    }
    report.seconds = started.elapsed().as_secs_f64();
    report.files_per_sec = report.files as f64 / report.seconds.max(1e-9);
    report.print(json)
}

fn report_single(bytes: u64, dest: String, started: Instant, json: bool) -> Result<()> {
    let seconds = started.elapsed().as_secs_f64();
    CpReport {
        files: 1,
        dirs: 0,
        symlinks: 0,
        bytes,
        seconds,
        files_per_sec: 1.0 / seconds.max(1e-9),
        dest,
    }
    .print(json)
}

/// Fetches a batch of small files through one control call and writes them; returns the
/// number of files and bytes.
async fn get_batch(dir: NodeDir, files: Vec<(String, PathBuf, u32)>) -> Result<(u64, u64)> {
    let caps: Vec<String> = files.iter().map(|f| f.0.clone()).collect();
    let client = ControlClient::connect(&dir).await?;
    let results = client.get_many(&caps).await?;
    let mut bytes = 0u64;
    for ((_, path, mode), result) in files.iter().zip(results) {
        let data = result.with_context(|| format!("cannot get {}", path.display()))?;
        bytes += data.len() as u64;
        tokio::fs::write(path, &data)
            .await
            .with_context(|| format!("cannot write {}", path.display()))?;
        if *mode != 0 {
            tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o7777))
                .await
                .with_context(|| format!("cannot set the mode of {}", path.display()))?;
        }
    }
    Ok((files.len() as u64, bytes))
}

async fn download(dir: &Path, from: &str, local: &Path, recursive: bool, json: bool) -> Result<()> {
    let started = Instant::now();
    let node_dir = NodeDir::new(dir);
    let entries = match call(dir, &ControlRequest::Walk { path: from.into() }).await {
        Ok(value) => serde_json::from_value::<Vec<TreeEntry>>(value)?,
        Err(e) if e.to_string().contains("not a directory") => {
            let out = if local.is_dir() {
                let name = from.rsplit('/').next().unwrap_or("file");
                local.join(name)
            } else {
                local.to_path_buf()
            };
            let size = get_file(&node_dir, from, &out, false).await?;
            return report_single(size, out.display().to_string(), started, json);
        }
        Err(e) => return Err(e),
    };
    if !recursive {
        bail!("{from} is a directory (use -r)");
    }
    let root = if local.is_dir() {
        let name = from
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .filter(|n| !n.is_empty() && !n.starts_with("cairn:"))
            .unwrap_or("cairn-dir");
        local.join(name)
    } else {
        local.to_path_buf()
    };
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let mut report = CpReport {
        files: 0,
        dirs: 1,
        symlinks: 0,
        bytes: 0,
        seconds: 0.0,
        files_per_sec: 0.0,
        dest: root.display().to_string(),
    };
    let safe = |rel: &str| -> Result<PathBuf> {
        if rel
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
        {
            bail!("refusing unsafe name {rel:?} from the grid");
        }
        Ok(root.join(rel))
    };
    for entry in entries.iter().filter(|e| e.kind == "dir") {
        let path = safe(&entry.path)?;
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        report.dirs += 1;
    }
    let limit = Arc::new(Semaphore::new(PARALLEL_FILES));
    let batches = Arc::new(Semaphore::new(PARALLEL_BATCHES));
    let mut gets = JoinSet::new();
    let mut batch: Vec<(String, PathBuf, u32)> = Vec::new();
    let mut batch_bytes = 0u64;
    for entry in entries.iter().filter(|e| e.kind == "file") {
        let path = safe(&entry.path)?;
        let cap = entry.cap.clone().context("file entry without a cap")?;
        let mode = entry.meta.mode;
        if entry.size <= SMALL_FILE {
            if !batch.is_empty()
                && (batch.len() >= BATCH_FILES || batch_bytes + entry.size > BATCH_BYTES)
            {
                let permit = batches.clone().acquire_owned().await?;
                let node_dir = node_dir.clone();
                let files = std::mem::take(&mut batch);
                gets.spawn(async move {
                    let done = get_batch(node_dir, files).await;
                    drop(permit);
                    done
                });
                batch_bytes = 0;
            }
            batch_bytes += entry.size;
            batch.push((cap, path, mode));
            continue;
        }
        let permit = limit.clone().acquire_owned().await?;
        let node_dir = node_dir.clone();
        gets.spawn(async move {
            let size = get_file(&node_dir, &cap, &path, false).await;
            drop(permit);
            let size = size?;
            if mode != 0 {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o7777))
                    .with_context(|| format!("cannot set the mode of {}", path.display()))?;
            }
            Ok::<(u64, u64), anyhow::Error>((1, size))
        });
    }
    if !batch.is_empty() {
        gets.spawn(get_batch(node_dir.clone(), batch));
    }
    while let Some(joined) = gets.join_next().await {
        let (files, bytes) = joined??;
        report.bytes += bytes;
        report.files += files;
    }
    for entry in entries.iter().filter(|e| e.kind == "symlink") {
        let path = safe(&entry.path)?;
        let target = entry.target.clone().unwrap_or_default();
        std::os::unix::fs::symlink(&target, &path)
            .with_context(|| format!("cannot create symlink {}", path.display()))?;
        report.symlinks += 1;
    }
    report.seconds = started.elapsed().as_secs_f64();
    report.files_per_sec = report.files as f64 / report.seconds.max(1e-9);
    report.print(json)
}

//! The daemon's mounts: starting and ending FUSE sessions, recording them so a restart after a
//! crash clears stale mount points, and following directory changes pushed from the grid.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_core::cap::Cap;
use cairn_node::control::{MountFuture, Mounter};
use cairn_node::{DirCap, Node, NodeError};
use fuser::{Config, MountOption, SessionACL};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::dirmeta;
use crate::fs::{CairnFs, OP_TIMEOUT, Shared, UploadStats};
use crate::staging;

/// How long an unmount waits for the session to end before detaching the mount point.
const UNMOUNT_WAIT: Duration = Duration::from_secs(5);
/// How long an unmount waits for the files the mount staged to be uploaded (the rest are
/// uploaded at the next start).
const DRAIN_WAIT: Duration = Duration::from_secs(300);

struct Active {
    unmounter: Arc<Mutex<Option<fuser::SessionUnmounter>>>,
    ended: Arc<tokio::sync::Notify>,
    done: Arc<std::sync::atomic::AtomicBool>,
    record: PathBuf,
    watcher: tokio::task::JoinHandle<()>,
    shared: Arc<Shared>,
}

/// Every mount of one node (implements [`Mounter`] for the control API).
pub struct Mounts {
    me: std::sync::Weak<Mounts>,
    node: Node,
    runtime: tokio::runtime::Handle,
    active: Mutex<HashMap<PathBuf, Active>>,
    stats: Arc<UploadStats>,
}

impl std::fmt::Debug for Mounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mounts").finish_non_exhaustive()
    }
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether `path` is a mount point now (from `/proc/self/mountinfo`).
pub fn is_mount_point(path: &Path) -> bool {
    mount_device(path).is_some()
}

/// The device (`major:minor`) of the mount at `path`, if `path` is a mount point now (the
/// last mount there, as `/proc/self/mountinfo` lists them in mount order).
fn mount_device(path: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let wanted = path.to_string_lossy();
    info.lines().rev().find_map(|line| {
        let mut fields = line.split(' ');
        let device = fields.nth(2)?;
        let point = fields.nth(1)?;
        let point = point
            .replace("\\040", " ")
            .replace("\\011", "\t")
            .replace("\\012", "\n")
            .replace("\\134", "\\");
        (point == wanted).then(|| device.to_string())
    })
}

/// Sets the kernel's read-ahead for the mount at `path` to `kib` (its backing device's
/// `read_ahead_kb`; FUSE itself cannot ask for more than 128 KiB). Needs root; without it the
/// kernel's default stays, which only makes long sequential reads slower.
fn set_read_ahead(path: &Path, kib: u32) {
    if kib == 0 {
        return;
    }
    let Some(device) = mount_device(path) else {
        return;
    };
    let knob = PathBuf::from(format!("/sys/class/bdi/{device}/read_ahead_kb"));
    match std::fs::write(&knob, kib.to_string()) {
        Ok(()) => debug!(mountpoint = %path.display(), kib, "kernel read-ahead set"),
        Err(e) => debug!(
            mountpoint = %path.display(),
            error = %e,
            "kernel read-ahead left at its default (setting it needs root)"
        ),
    }
}

/// Detaches whatever is mounted at `path` (lazily: open files keep it alive until closed).
fn detach(path: &Path) {
    let ok = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(path)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(path)
            .stderr(std::process::Stdio::null())
            .status();
    }
}

impl Mounts {
    /// The mounts of `node`. Clears mount points left by a previous run that ended without
    /// unmounting (`kill -9`), and uploads the writes it had staged (in the background). Call
    /// from within the node's tokio runtime.
    pub fn start(node: Node) -> Arc<Mounts> {
        let records = node.dir().root().join("mounts");
        if let Ok(read) = std::fs::read_dir(&records) {
            for entry in read.flatten() {
                if let Ok(text) = std::fs::read_to_string(entry.path()) {
                    let path = PathBuf::from(text.trim());
                    if is_mount_point(&path) {
                        info!(mountpoint = %path.display(), "detaching a mount left by the last run");
                        detach(&path);
                    }
                }
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let staging_dir = node.dir().root().join("staging");
        let journals = staging::sweep(&staging_dir);
        {
            let node = node.clone();
            tokio::spawn(async move {
                if !journals.is_empty() {
                    let linked = staging::recover(&node, &staging_dir, journals).await;
                    info!(
                        files = linked,
                        "uploaded staged writes left by the last run"
                    );
                }
                dirmeta::recover(&node, &staging_dir).await;
            });
        }
        Arc::new_cyclic(|me| Mounts {
            me: me.clone(),
            node,
            runtime: tokio::runtime::Handle::current(),
            active: Mutex::new(HashMap::new()),
            stats: Arc::new(UploadStats::default()),
        })
    }

    /// Upload counters over every mount of this node: (files, shares sent, share bytes sent).
    pub fn upload_stats(&self) -> (u64, u64, u64) {
        (
            self.stats.uploads.load(Ordering::Relaxed),
            self.stats.shares_sent.load(Ordering::Relaxed),
            self.stats.bytes_sent.load(Ordering::Relaxed),
        )
    }

    /// The mount points now active.
    pub fn mount_points(&self) -> Vec<PathBuf> {
        locked(&self.active).keys().cloned().collect()
    }

    fn root_cap(&self, cap: Option<&str>) -> Result<DirCap, NodeError> {
        match cap {
            None => Ok(DirCap::Write(self.node.root_dir()?)),
            Some(text) => DirCap::from_cap(text.trim().parse::<Cap>()?).ok_or_else(|| {
                NodeError::Invalid(
                    "--cap must be a directory cap (cairn:dir:... or cairn:dir-ro:...)".into(),
                )
            }),
        }
    }

    /// Mounts `cap` (or the node's root) at `mountpoint`; see [`Mounter::mount`].
    pub async fn mount_at(
        &self,
        mountpoint: &Path,
        cap: Option<&str>,
    ) -> Result<oneshot::Receiver<()>, NodeError> {
        if !mountpoint.is_absolute() {
            return Err(NodeError::Invalid(format!(
                "{}: the mount point must be an absolute path",
                mountpoint.display()
            )));
        }
        let meta = std::fs::metadata(mountpoint).map_err(|e| NodeError::io(mountpoint, e))?;
        if !meta.is_dir() {
            return Err(NodeError::NotADirectory(mountpoint.display().to_string()));
        }
        let mountpoint = mountpoint
            .canonicalize()
            .map_err(|e| NodeError::io(mountpoint, e))?;
        // A mount unmounted by hand (`umount`) is gone from the kernel at once but ends here
        // only once its last uploads are done: a new mount of the same point waits for that.
        let deadline = tokio::time::Instant::now() + OP_TIMEOUT;
        while !is_mount_point(&mountpoint)
            && locked(&self.active).contains_key(&mountpoint)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if locked(&self.active).contains_key(&mountpoint) || is_mount_point(&mountpoint) {
            return Err(NodeError::Invalid(format!(
                "{}: already a mount point",
                mountpoint.display()
            )));
        }
        let root = self.root_cap(cap)?;
        // The directory must be readable now: a bad or unreachable cap fails here, not later.
        match tokio::time::timeout(OP_TIMEOUT, self.node.ls(&crate::fs::cap_text(&root))).await {
            Ok(r) => {
                r?;
            }
            Err(_) => {
                return Err(NodeError::DirUnreachable(
                    "the directory to mount (no answer in time)".into(),
                ));
            }
        }
        let read_only = root.write_cap().is_none();
        let staging_dir = self.node.dir().root().join("staging");
        let shared = Arc::new(Shared::new(
            self.node.clone(),
            root,
            staging_dir,
            self.stats.clone(),
        ));
        let fs = CairnFs {
            shared: shared.clone(),
            runtime: self.runtime.clone(),
        };
        let mut options = vec![
            MountOption::FSName("cairn".into()),
            MountOption::Subtype("cairn".into()),
            MountOption::DefaultPermissions,
            MountOption::NoDev,
            MountOption::NoSuid,
            if read_only {
                MountOption::RO
            } else {
                MountOption::RW
            },
        ];
        let target = mountpoint.clone();
        let session = tokio::task::spawn_blocking(move || {
            // Auto-unmount (a helper unmounts when this process dies) needs fusermount3 and
            // allow_root; without them, the stale-mount cleanup at the next start remains.
            let mut config = Config::default();
            config.n_threads = Some(4);
            config.acl = SessionACL::RootAndOwner;
            config.mount_options = options.clone();
            config.mount_options.push(MountOption::AutoUnmount);
            match fuser::Session::new(fs, &target, &config) {
                Ok(s) => Ok(s),
                Err(first) => {
                    warn!(error = %first, "mounting with auto_unmount failed; mounting without");
                    options.retain(|o| *o != MountOption::AutoUnmount);
                    let mut plain = Config::default();
                    plain.n_threads = Some(4);
                    plain.mount_options = options;
                    // The filesystem moved into the failed attempt; build it again.
                    Err(plain)
                }
            }
        })
        .await
        .map_err(|e| NodeError::Control(e.to_string()))?;
        let mut session = match session {
            Ok(s) => s,
            Err(plain) => {
                let fs = CairnFs {
                    shared: shared.clone(),
                    runtime: self.runtime.clone(),
                };
                let target = mountpoint.clone();
                tokio::task::spawn_blocking(move || fuser::Session::new(fs, &target, &plain))
                    .await
                    .map_err(|e| NodeError::Control(e.to_string()))?
                    .map_err(|e| NodeError::io(&mountpoint, e))?
            }
        };
        let _ = shared.notifier.set(session.notifier());
        set_read_ahead(&mountpoint, self.node.config().mount_read_ahead_kib);
        let unmounter = Arc::new(Mutex::new(Some(session.unmount_callable())));
        let ended = Arc::new(tokio::sync::Notify::new());
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, rx) = oneshot::channel();
        {
            let ended = ended.clone();
            let done = done.clone();
            let (finished_tx, finished_rx) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name("cairn-fuse".into())
                .spawn(move || {
                    if let Err(e) = session.run() {
                        warn!(error = %e, "FUSE session ended with an error");
                    }
                    let _ = finished_tx.send(());
                })
                .map_err(|e| NodeError::io(&mountpoint, e))?;
            let mounts_point = mountpoint.clone();
            let active = self.me.clone();
            let ending = shared.clone();
            tokio::spawn(async move {
                let _ = finished_rx.await;
                // What was closed but not uploaded yet goes up before the mount counts as ended.
                let left = ending.upload_all().await;
                if left > 0 {
                    warn!(
                        files = left,
                        "files written through the mount are still staged; they are uploaded at the next start"
                    );
                }
                done.store(true, Ordering::SeqCst);
                ended.notify_waiters();
                if let Some(active) = active.upgrade() {
                    let removed = locked(&active.active).remove(&mounts_point);
                    if let Some(a) = removed {
                        a.watcher.abort();
                        let _ = std::fs::remove_file(&a.record);
                    }
                }
                info!(mountpoint = %mounts_point.display(), "unmounted");
                let _ = tx.send(());
            });
        }
        let record = self.write_record(&mountpoint)?;
        let watcher = {
            let shared = shared.clone();
            let mut changes = self.node.dir_changes();
            tokio::spawn(async move {
                let follow = async {
                    loop {
                        match changes.recv().await {
                            Ok(slot) => shared.changed(slot).await,
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                            Err(_) => return,
                        }
                    }
                };
                tokio::select! {
                    () = follow => {}
                    () = shared.upload_in_background() => {}
                }
            })
        };
        locked(&self.active).insert(
            mountpoint.clone(),
            Active {
                unmounter,
                ended,
                done,
                record,
                watcher,
                shared: shared.clone(),
            },
        );
        info!(mountpoint = %mountpoint.display(), read_only, "mounted");
        Ok(rx)
    }

    fn write_record(&self, mountpoint: &Path) -> Result<PathBuf, NodeError> {
        let dir = self.node.dir().root().join("mounts");
        std::fs::create_dir_all(&dir).map_err(|e| NodeError::io(&dir, e))?;
        let name = record_name(mountpoint);
        let path = dir.join(name);
        std::fs::write(&path, mountpoint.to_string_lossy().as_bytes())
            .map_err(|e| NodeError::io(&path, e))?;
        Ok(path)
    }

    /// Uploads now every file written through the mount at `mountpoint` and not uploaded yet
    /// (a close uploads in the background), trying failed ones again a few times. Returns how
    /// many are still staged.
    pub async fn flush(&self, mountpoint: &Path) -> Result<usize, NodeError> {
        let key = mountpoint
            .canonicalize()
            .unwrap_or_else(|_| mountpoint.to_path_buf());
        let shared = locked(&self.active)
            .get(&key)
            .map(|a| a.shared.clone())
            .ok_or_else(|| {
                NodeError::Invalid(format!(
                    "{}: not mounted by this node",
                    mountpoint.display()
                ))
            })?;
        Ok(shared.upload_all().await)
    }

    /// Unmounts `mountpoint`; see [`Mounter::unmount`].
    pub async fn unmount_at(&self, mountpoint: &Path) -> Result<(), NodeError> {
        let key = mountpoint
            .canonicalize()
            .unwrap_or_else(|_| mountpoint.to_path_buf());
        let (unmounter, ended, done) = {
            let active = locked(&self.active);
            let Some(a) = active.get(&key) else {
                return Err(NodeError::Invalid(format!(
                    "{}: not mounted by this node",
                    mountpoint.display()
                )));
            };
            (a.unmounter.clone(), a.ended.clone(), a.done.clone())
        };
        let notified = ended.notified();
        tokio::pin!(notified);
        if !done.load(Ordering::SeqCst) {
            let result = tokio::task::spawn_blocking(move || match locked(&unmounter).take() {
                Some(mut u) => u.unmount(),
                None => Ok(()),
            })
            .await
            .map_err(|e| NodeError::Control(e.to_string()))?;
            if let Err(e) = result {
                warn!(error = %e, "unmount failed; detaching");
                detach(&key);
            }
            if tokio::time::timeout(UNMOUNT_WAIT, &mut notified)
                .await
                .is_err()
                && !done.load(Ordering::SeqCst)
            {
                if is_mount_point(&key) {
                    detach(&key);
                } else {
                    // Unmounted: the files it staged are being uploaded.
                    let _ = tokio::time::timeout(DRAIN_WAIT, &mut notified).await;
                }
            }
        }
        Ok(())
    }

    /// Unmounts everything (the daemon is stopping).
    pub async fn unmount_all(&self) {
        for point in self.mount_points() {
            if let Err(e) = self.unmount_at(&point).await {
                warn!(mountpoint = %point.display(), error = %e, "unmount failed");
            }
        }
    }
}

fn record_name(path: &Path) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    path.hash(&mut h);
    format!("{:016x}", h.finish())
}

impl Mounter for Mounts {
    fn mount<'a>(
        &'a self,
        mountpoint: &'a Path,
        cap: Option<&'a str>,
    ) -> MountFuture<'a, oneshot::Receiver<()>> {
        Box::pin(self.mount_at(mountpoint, cap))
    }

    fn unmount<'a>(&'a self, mountpoint: &'a Path) -> MountFuture<'a, ()> {
        Box::pin(self.unmount_at(mountpoint))
    }
}

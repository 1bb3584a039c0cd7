//! Helpers for tests of `cairn mount`: whether FUSE works here, whether a path is a mount
//! point, and a foreground `cairn mount` child.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::exe;

/// Why FUSE cannot be used here, if it cannot.
pub fn fuse_unavailable() -> Option<String> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        Ok(_) => None,
        Err(e) => Some(format!("/dev/fuse: {e}")),
    }
}

/// Whether `path` is a mount point of this process's mount namespace.
pub fn is_mounted(path: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let wanted = path.to_string_lossy().to_string();
    info.lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|p| p == wanted))
}

/// Polls `check` every 50 ms until it holds; panics naming `what` after `limit`.
#[track_caller]
pub fn wait_for(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A foreground `cairn mount` child. On drop it gets SIGINT (a clean unmount), and is killed
/// if it has not exited 20 s later.
pub struct MountProc(pub Child);

impl MountProc {
    /// Runs `cairn mount POINT EXTRA... --dir DIR` and waits until POINT is mounted.
    #[track_caller]
    pub fn start(dir: &Path, point: &Path, extra: &[&str]) -> MountProc {
        let child = Command::new(exe())
            .arg("mount")
            .arg(point)
            .args(extra)
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut p = MountProc(child);
        wait_for(Duration::from_secs(20), "mounted", || {
            assert!(p.0.try_wait().unwrap().is_none(), "cairn mount exited");
            is_mounted(point)
        });
        p
    }

    /// Sends signal `sig` (`INT`, `KILL`...).
    pub fn signal(&self, sig: &str) {
        Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.0.id().to_string())
            .status()
            .unwrap();
    }

    /// Its exit code, waiting at most `limit`.
    #[track_caller]
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "cairn mount did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for MountProc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = Command::new("kill")
                .arg("-INT")
                .arg(self.0.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

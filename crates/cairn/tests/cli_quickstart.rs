//! Black-box test of `cairn quickstart --detach` and `cairn stop` on the grid directory.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// The pids of `cairn run` processes whose command line mentions `base`.
fn node_pids(base: &Path) -> Vec<u32> {
    let base = base.to_string_lossy().into_owned();
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a == "run") && args.iter().any(|a| a.starts_with(&base)) {
            pids.push(pid);
        }
    }
    pids
}

/// Stops (and if need be kills) the detached nodes of a quickstart grid when the test ends.
struct GridGuard {
    base: PathBuf,
}

impl Drop for GridGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new(exe())
            .args([
                OsStr::new("stop"),
                OsStr::new("--dir"),
                self.base.as_os_str(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        for pid in node_pids(&self.base) {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        }
    }
}

#[test]
fn quickstart_detach_then_stop() {
    let env = Env::new();
    let base = env.join("grid");
    let _guard = GridGuard { base: base.clone() };
    let r = cairn_timeout(
        [
            OsStr::new("quickstart"),
            OsStr::new("--detach"),
            OsStr::new("--base"),
            base.as_os_str(),
        ],
        Duration::from_secs(50),
    )
    .success();
    eprintln!("quickstart took {:.2?}:\n{}", r.elapsed, r.stdout);
    assert!(r.stdout.contains("nodes up"), "{r}");
    assert!(r.stdout.contains("identical"), "{r}");
    assert!(r.stdout.contains("cairn stop --dir"), "{r}");
    let up = r
        .stdout
        .lines()
        .find(|l| l.contains("nodes up in"))
        .unwrap_or_else(|| panic!("no `N nodes up in X s` line: {r}"));
    let mut words = up.split_whitespace();
    let count: usize = words.next().unwrap().parse().unwrap();
    let secs: f64 = up
        .split("nodes up in ")
        .nth(1)
        .and_then(|s| s.trim().trim_end_matches('s').trim().parse().ok())
        .unwrap_or_else(|| panic!("cannot parse seconds in {up:?}"));
    eprintln!("quickstart: {count} nodes up in {secs} s");
    assert_eq!(count, 5, "{r}");
    assert!(
        secs < 3.0,
        "nodes took {secs} s to come up (limit 3 s): {r}"
    );
    // The cap the quickstart printed is a real one.
    let cap = r
        .stdout
        .lines()
        .skip_while(|l| !l.contains("the sample file's cap"))
        .nth(1)
        .unwrap_or_else(|| panic!("no sample cap printed: {r}"))
        .trim()
        .to_string();
    assert!(cap.starts_with("cairn:chk:1:"), "{r}");
    let sample_size: u64 = r
        .stdout
        .split("put a ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no sample size printed: {r}"));

    // The grid runs after the quickstart exited.
    let node1 = base.join("node1");
    let s = status_json(&node1).expect("node1 answers after quickstart --detach");
    assert_eq!(
        s["encoding"],
        serde_json::json!({"k": 3, "n": 5, "happy": 4}),
        "{s:#}"
    );
    assert_eq!(s["admin"], true);
    assert_eq!(s["peers"].as_array().unwrap().len(), 4, "{s:#}");
    assert_eq!(node_pids(&base).len(), 5, "expected 5 node processes");
    // Its sample file reads back through another node.
    let out = env.out("sample");
    get(&base.join("node3"), &cap, &out).success();
    assert_eq!(std::fs::metadata(&out).unwrap().len(), sample_size);

    // `stop --dir BASE` stops every node.
    let r = cairn([OsStr::new("stop"), OsStr::new("--dir"), base.as_os_str()]).success();
    assert!(r.stdout.contains("stopped 5 node(s)"), "{r}");
    for i in 1..=5 {
        let d = base.join(format!("node{i}"));
        cairn([OsStr::new("status"), OsStr::new("--dir"), d.as_os_str()])
            .failure(&["is not running"]);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while !node_pids(&base).is_empty() {
        assert!(
            Instant::now() < deadline,
            "node processes still alive 15 s after stop: {:?}",
            node_pids(&base)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Stopping again: nothing runs.
    let r = cairn([OsStr::new("stop"), OsStr::new("--dir"), base.as_os_str()]).success();
    assert!(r.stdout.contains("stopped 0 node(s)"), "{r}");
}

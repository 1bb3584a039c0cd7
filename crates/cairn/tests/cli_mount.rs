//! `cairn mount` and `cairn unmount` through real `cairn` processes: a shell workload in the
//! mount, unmounting by Ctrl-C and by command, bad input, and a daemon killed with -9.
//! Where `/dev/fuse` cannot be used, the tests say so and pass.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::mount::*;
use common::*;

macro_rules! require_fuse {
    () => {
        if let Some(why) = fuse_unavailable() {
            eprintln!("skipping: FUSE is not usable here ({why})");
            return;
        }
    };
}

#[track_caller]
fn sh(script: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "`{script}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A small source tree: nested directories, files of several sizes, a symlink.
fn make_tree(root: &Path) {
    for (i, sub) in ["", "lib", "lib/deep", "docs", "empty"].iter().enumerate() {
        let d = root.join(sub);
        std::fs::create_dir_all(&d).unwrap();
        for j in 0..4usize {
            let len = [0usize, 10, 5_000, 300_000][j] + i;
            let data: Vec<u8> = (0..len).map(|k| (k * 31 + i * 7 + j) as u8).collect();
            if *sub != "empty" {
                std::fs::write(d.join(format!("f{j}.dat")), data).unwrap();
            }
        }
    }
    std::os::unix::fs::symlink("lib/f1.dat", root.join("link")).unwrap();
}

#[test]
fn a_mounted_tree_works_for_shell_tools_and_unmounts_cleanly() {
    require_fuse!();
    let mut g = Grid::manual(5, &[]);
    g.wait_roster_complete(Duration::from_secs(15));
    let a = g.dir(0).to_path_buf();
    let point = g.env.join("mnt");
    std::fs::create_dir_all(&point).unwrap();
    let p = point.to_str().unwrap().to_string();

    // Bad input: one-line errors, no mount.
    at(&a, &["mount", &g.env.join("nope").to_string_lossy()]).failure(&["nope"]);
    let file = g.env.file("plain", b"x");
    at(&a, &["mount", file.to_str().unwrap()]).failure(&["not a directory"]);
    at(&a, &["mount", &p, "--cap", "cairn:nonsense"]).failure(&[]);
    let put_cap = at(&a, &["put", file.to_str().unwrap()])
        .success()
        .last_line();
    at(&a, &["mount", &p, "--cap", &put_cap]).failure(&["directory cap"]);
    at(&g.env.join("nonode"), &["mount", &p]).failure(&["not an initialised"]);
    at(&a, &["unmount", &p]).failure(&["not mounted"]);
    assert!(!is_mounted(&point));

    let mut m = MountProc::start(&a, &point, &[]);
    at(&a, &["mount", &p]).failure(&["already a mount point"]);

    // A shell workload: cp -r, diff -r, tar c/x both ways, find, du, ls -l, chmod.
    let src = g.env.join("src");
    make_tree(&src);
    let s = src.to_str().unwrap();
    sh(&format!("cp -r {s} {p}/src && diff -r {s} {p}/src"));
    sh(&format!(
        "mkdir {p}/untar && tar c -C {s} . | tar x -C {p}/untar && diff -r {s} {p}/untar"
    ));
    let back = g.env.join("back");
    std::fs::create_dir_all(&back).unwrap();
    let b = back.to_str().unwrap();
    sh(&format!(
        "tar c -C {p} untar | tar x -C {b} && diff -r {s} {b}/untar"
    ));
    let files = sh(&format!("find {p}/src -type f | wc -l"));
    assert_eq!(files.trim(), "16");
    let du = sh(&format!("du -sk {p}/src | cut -f1"));
    assert!(du.trim().parse::<u64>().unwrap() >= 1000, "du says {du}");
    sh(&format!("chmod 600 {p}/src/docs/f3.dat"));
    // A close (and a chmod of a file not uploaded yet) reaches the grid in the background.
    wait_for(Duration::from_secs(20), "the mode on the grid", || {
        let long = at(&a, &["ls", "-l", "/src/docs"]).success();
        long.stdout
            .lines()
            .any(|l| l.starts_with("-rw-------") && l.ends_with("f3.dat"))
    });
    let listed = sh(&format!("ls -l {p}/src/link"));
    assert!(listed.contains("-> lib/f1.dat"), "{listed}");
    // The grid side agrees: another node reads a file written through the mount.
    let cap = at(&a, &["share", "/src/lib"]).success().last_line();
    let out = g.env.out("f2.dat");
    at(
        g.dir(3),
        &["get", &format!("{cap}/f2.dat"), "-o", out.to_str().unwrap()],
    )
    .success();
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(src.join("lib/f2.dat")).unwrap()
    );

    // Ctrl-C unmounts and exits 0.
    m.signal("INT");
    assert_eq!(m.wait_exit(Duration::from_secs(20)), Some(0));
    assert!(!is_mounted(&point));

    // `cairn unmount` ends a foreground mount too.
    let mut m = MountProc::start(&a, &point, &[]);
    at(&a, &["unmount", &p]).success();
    assert_eq!(m.wait_exit(Duration::from_secs(20)), Some(0));
    assert!(!is_mounted(&point));

    // --background returns once mounted; `umount` by hand ends it.
    at(&a, &["mount", &p, "--background"]).success();
    assert!(is_mounted(&point));
    assert!(point.join("src/lib/f2.dat").exists());
    sh(&format!("umount {p}"));
    wait_for(Duration::from_secs(10), "unmounted", || !is_mounted(&point));
    at(&a, &["mount", &p, "--background"]).success();
    at(&a, &["unmount", &p]).success();
    assert!(!is_mounted(&point));
}

/// The files in the node's staging directory named `*.{extension}`.
fn staging_files(dir: &Path, extension: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir.join("staging"))
        .map(|r| {
            r.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == extension))
                .collect()
        })
        .unwrap_or_default()
}

fn staging_journals(dir: &Path) -> Vec<PathBuf> {
    staging_files(dir, "json")
}

#[test]
fn kill_9_of_the_daemon_leaves_no_stuck_mount_and_uploads_staged_writes() {
    require_fuse!();
    let mut g = Grid::manual(5, &[]);
    g.wait_roster_complete(Duration::from_secs(15));
    let a = g.dir(0).to_path_buf();
    let point = g.env.join("mnt");
    std::fs::create_dir_all(&point).unwrap();
    let p = point.to_str().unwrap().to_string();
    let mut m = MountProc::start(&a, &point, &[]);

    // A writer that wrote and still holds the file open: staged, not uploaded yet (an open
    // file goes up once idle for 5 s; a closed one within a moment of its close).
    let mut writer = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import time\nf = open('{p}/staged.txt', 'w')\nf.write('written before the crash')\nf.flush()\ntime.sleep(600)"
        ))
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(20), "journal entry", || {
        !staging_journals(&a).is_empty()
    });
    // A directory's new mode is kept by the mount for a moment before it is stored.
    std::fs::create_dir(point.join("kept")).unwrap();
    std::fs::set_permissions(point.join("kept"), std::fs::Permissions::from_mode(0o701)).unwrap();
    assert_eq!(staging_files(&a, "pending").len(), 1);
    g.kill(0);
    let _ = writer.kill();
    let _ = writer.wait();
    assert_eq!(m.wait_exit(Duration::from_secs(20)), Some(1));

    g.restart(0);
    // No stuck mount point: it is a plain directory again.
    wait_for(Duration::from_secs(20), "mount point released", || {
        !is_mounted(&point) && std::fs::read_dir(&point).is_ok()
    });
    // The staged write reaches the grid.
    let out = g.env.out("staged.txt");
    wait_for(Duration::from_secs(60), "staged write uploaded", || {
        let _ = std::fs::remove_file(&out);
        cairn_timeout(
            [
                "get",
                "/staged.txt",
                "-o",
                out.to_str().unwrap(),
                "--dir",
                a.to_str().unwrap(),
            ],
            Duration::from_secs(30),
        )
        .ok()
            && std::fs::read(&out).unwrap() == b"written before the crash"
    });
    assert!(staging_journals(&a).is_empty());
    wait_for(
        Duration::from_secs(60),
        "kept directory mode stored",
        || staging_files(&a, "pending").is_empty(),
    );
    // And it mounts again.
    let mut m = MountProc::start(&a, &point, &[]);
    assert_eq!(
        std::fs::read(point.join("staged.txt")).unwrap(),
        b"written before the crash"
    );
    let mode = std::fs::metadata(point.join("kept"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o701);
    m.signal("INT");
    assert_eq!(m.wait_exit(Duration::from_secs(20)), Some(0));
}

//! Real tools in a `cairn mount`, with real `cairn` processes on a loopback grid: rsync -a,
//! git (init, commit, status, clone both ways, fsck), sqlite3 and an editor's save by rename.
//! Where `/dev/fuse` cannot be used, or a tool is missing, the test says so and passes.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::mount::*;
use common::*;

fn missing_tool() -> Option<&'static str> {
    ["rsync", "git", "sqlite3", "python3"]
        .into_iter()
        .find(|t| {
            Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {t}"))
                .output()
                .map(|o| !o.status.success())
                .unwrap_or(true)
        })
}

/// Runs `script` with `sh -e`; panics with its output unless it succeeds; returns stdout.
#[track_caller]
fn sh(script: &str) -> String {
    let out = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", std::env::temp_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "`{script}` failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A tree with nested directories, files of several sizes (one of 3 MiB), a symlink, and
/// distinct modes and mtimes (of directories too).
fn make_tree(root: &Path) {
    for (i, sub) in ["", "lib", "lib/deep", "docs"].iter().enumerate() {
        let d = root.join(sub);
        std::fs::create_dir_all(&d).unwrap();
        for j in 0..3usize {
            let len = [0usize, 100, 40_000][j] + i;
            let data: Vec<u8> = (0..len).map(|k| (k * 31 + i * 7 + j) as u8).collect();
            std::fs::write(d.join(format!("f{j}.dat")), data).unwrap();
        }
    }
    std::fs::write(root.join("lib/big.bin"), random_bytes(3 << 20)).unwrap();
    std::os::unix::fs::symlink("lib/f1.dat", root.join("link")).unwrap();
    let r = root.to_str().unwrap();
    sh(&format!(
        "chmod 600 {r}/f1.dat; chmod 755 {r}/lib/f2.dat; chmod 640 {r}/docs/f0.dat; \
         chmod 444 {r}/lib/deep/f1.dat; \
         touch -d '2020-01-02 03:04:05' {r}/f0.dat; touch -d '2019-05-06 07:08:09' {r}/lib/big.bin; \
         touch -d '2021-12-31 23:59:59' {r}/docs/f2.dat; \
         chmod 750 {r}/lib/deep; touch -d '2018-03-04 05:06:07' {r}/docs"
    ));
}

/// `path mode mtime` of every file, symlink and directory under `root`, sorted.
fn modes_and_mtimes(root: &str) -> String {
    sh(&format!(
        "cd {root} && find . -mindepth 1 | sort | while read f; do \
         echo \"$f $(stat -c '%a %Y' \"$f\")\"; done"
    ))
}

fn rsync_workload(env: &Env, p: &str) {
    let src = env.join("src");
    make_tree(&src);
    let s = src.to_str().unwrap();
    sh(&format!("mkdir {p}/dst && rsync -a {s}/ {p}/dst/"));
    sh(&format!("diff -r {s} {p}/dst"));
    let want = modes_and_mtimes(s);
    let got = modes_and_mtimes(&format!("{p}/dst"));
    assert_eq!(got, want, "modes and mtimes differ after rsync -a");
    let again = sh(&format!("rsync -a --itemize-changes {s}/ {p}/dst/"));
    assert!(
        again.trim().is_empty(),
        "a second rsync -a changed something:\n{again}"
    );
}

fn git_workload(env: &Env, p: &str) {
    let g = "git -c user.name=Test -c user.email=test@example.org -c init.defaultBranch=main";
    sh(&format!(
        "mkdir {p}/repo && cd {p}/repo && {g} init -q && mkdir src && \
         printf 'fn main() {{}}\\n' > src/main.rs && printf 'hello\\n' > README && \
         {g} add . && {g} commit -q -m first"
    ));
    let st = sh(&format!("cd {p}/repo && {g} status --porcelain"));
    assert!(st.trim().is_empty(), "status after commit: {st}");
    sh(&format!("printf 'changed\\n' >> {p}/repo/README"));
    let st = sh(&format!("cd {p}/repo && {g} status --porcelain"));
    assert_eq!(st.trim(), "M README", "status after a change");
    sh(&format!("cd {p}/repo && {g} commit -q -am second"));
    let local = env.join("clone");
    let l = local.to_str().unwrap();
    sh(&format!(
        "{g} clone -q {p}/repo {l} && cd {l} && {g} fsck --strict && \
         test \"$({g} log --format=%s | tr '\\n' ' ')\" = 'second first '"
    ));
    sh(&format!(
        "{g} clone -q {l} {p}/back && cd {p}/back && {g} fsck --strict && \
         {g} status --porcelain && diff README {p}/repo/README && \
         cd {p}/repo && {g} fsck --strict"
    ));
    let st = sh(&format!("cd {p}/back && {g} status --porcelain"));
    assert!(
        st.trim().is_empty(),
        "status of the clone in the mount: {st}"
    );
}

fn sqlite_workload(p: &str) {
    let mut script = String::from("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);\nBEGIN;\n");
    for i in 0..1000 {
        script.push_str(&format!("INSERT INTO t(v) VALUES('row {i}');\n"));
    }
    script.push_str("COMMIT;\n");
    let file = std::env::temp_dir().join(format!("cairn-sqlite-{}.sql", std::process::id()));
    std::fs::write(&file, script).unwrap();
    let f = file.to_str().unwrap();
    let r = Command::new("sh")
        .arg("-ec")
        .arg(format!("sqlite3 {p}/db.sqlite < {f}"))
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(
        r.status.success(),
        "sqlite3 failed: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    let n = sh(&format!("sqlite3 {p}/db.sqlite 'SELECT count(*) FROM t;'"));
    assert_eq!(n.trim(), "1000");
    let ok = sh(&format!("sqlite3 {p}/db.sqlite 'PRAGMA integrity_check;'"));
    assert_eq!(ok.trim(), "ok");
    assert!(!Path::new(&format!("{p}/db.sqlite-journal")).exists());
}

fn editor_workload(g: &Grid, p: &str) {
    sh(&format!(
        "printf 'old text\\n' > {p}/f.txt && \
         python3 -c \"import os\nfd = os.open('{p}/.f.txt.swp', os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)\nos.write(fd, b'new text\\\\n')\nos.fsync(fd)\nos.close(fd)\" && \
         mv {p}/.f.txt.swp {p}/f.txt && \
         python3 -c \"import os\nfd = os.open('{p}', os.O_RDONLY)\nos.fsync(fd)\nos.close(fd)\""
    ));
    assert_eq!(std::fs::read(format!("{p}/f.txt")).unwrap(), b"new text\n");
    assert!(!Path::new(&format!("{p}/.f.txt.swp")).exists());
    let cap = cairn(["share", "/", "--dir", g.dir(0).to_str().unwrap()])
        .success()
        .last_line();
    let out = g.env.out("f.txt");
    get(g.dir(2), &format!("{cap}/f.txt"), &out).success();
    assert_eq!(std::fs::read(&out).unwrap(), b"new text\n");
}

#[test]
fn rsync_git_sqlite_and_an_editor_work_in_a_mount() {
    if let Some(why) = fuse_unavailable() {
        eprintln!("skipping: FUSE is not usable here ({why})");
        return;
    }
    if let Some(tool) = missing_tool() {
        eprintln!("skipping: {tool} is not installed (scripts/setup installs it)");
        return;
    }
    let mut g = Grid::manual(5, &[]);
    g.wait_roster_complete(Duration::from_secs(15));
    let point = g.env.join("mnt");
    std::fs::create_dir_all(&point).unwrap();
    let p = point.to_str().unwrap().to_string();
    let m = MountProc::start(g.dir(0), &point, &[]);

    rsync_workload(&g.env, &p);
    git_workload(&g.env, &p);
    sqlite_workload(&p);
    editor_workload(&g, &p);

    drop(m);
    assert!(!is_mounted(&point));
}

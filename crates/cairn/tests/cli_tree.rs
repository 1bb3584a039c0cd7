//! The directory commands through real `cairn` processes: ls, mkdir, put FILE PATH, get PATH,
//! mv, rm, ln -s, share, attach, cp -r, and their errors.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn ls_names(dir: &Path, path: &str) -> Vec<String> {
    let v = at(dir, &["ls", path, "--json"]).success().json();
    v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn tree_commands_work_and_refuse_bad_input_cleanly() {
    let mut g = Grid::manual(5, &[]);
    g.wait_roster_complete(Duration::from_secs(15));
    let (a, b) = (g.dir(0).to_path_buf(), g.dir(1).to_path_buf());

    at(&a, &["mkdir", "-p", "/docs/2026"]).success();
    at(&a, &["mkdir", "-p", "/docs/2026"]).success();
    let data = random_bytes(200_000);
    let file = g.env.file("report.pdf", &data);
    let out = at(&a, &["put", file.to_str().unwrap(), "/docs/2026/"]).success();
    assert!(out.last_line().starts_with("cairn:chk:1:"), "{out}");
    assert!(out.stderr.contains("/docs/2026/report.pdf"), "{out}");
    at(&a, &["put", file.to_str().unwrap(), "/docs/copy.pdf"]).success();
    at(&a, &["ln", "-s", "2026/report.pdf", "/docs/latest"]).success();
    assert_eq!(ls_names(&a, "/docs"), ["2026", "copy.pdf", "latest"]);

    let long = at(&a, &["ls", "-l", "/docs"]).success();
    assert!(long.stdout.contains("drwxr-xr-x"), "{long}");
    assert!(long.stdout.contains("latest -> 2026/report.pdf"), "{long}");
    // Mode, size, mtime and ctime (two `YYYY-MM-DD HH:MM` stamps) on the line of a file.
    let line = long
        .stdout
        .lines()
        .find(|l| l.ends_with("copy.pdf"))
        .unwrap();
    assert!(
        line.starts_with("-rw") && line.matches(':').count() == 2,
        "{line}"
    );
    assert!(long.stdout.contains("200000"), "{long}");
    let json = at(&a, &["ls", "/docs/copy.pdf", "--json"]).success().json();
    assert_eq!(json["entries"][0]["size"], Value::from(200_000));
    assert!(json["entries"][0]["ctime_ms"].as_u64().unwrap() > 0);

    let out_file = g.env.out("got.pdf");
    at(
        &a,
        &[
            "get",
            "/docs/2026/report.pdf",
            "-o",
            out_file.to_str().unwrap(),
        ],
    )
    .success();
    assert_eq!(std::fs::read(&out_file).unwrap(), data);

    at(&a, &["mv", "/docs/copy.pdf", "/docs/2026"]).success();
    at(&a, &["mv", "/docs/2026/copy.pdf", "/docs/2026/renamed.pdf"]).success();
    assert_eq!(ls_names(&a, "/docs/2026"), ["renamed.pdf", "report.pdf"]);
    at(&a, &["rm", "/docs/2026/renamed.pdf"]).success();

    // Sharing: B attaches A's directory read-only and read-write.
    let ro = at(&a, &["share", "/docs"]).success().last_line();
    let rw = at(&a, &["share", "/docs", "--write"]).success().last_line();
    assert!(ro.starts_with("cairn:dir-ro:1:") && rw.starts_with("cairn:dir:1:"));
    at(&b, &["attach", &ro, "/a-docs"]).success();
    at(&b, &["attach", &rw, "/a-docs-rw"]).success();
    assert_eq!(ls_names(&b, "/a-docs/2026"), ["report.pdf"]);
    at(&b, &["mkdir", "/a-docs/new"]).failure(&["read-only capability"]);
    at(&b, &["rm", "-r", "/a-docs/2026"]).failure(&["read-only capability"]);
    at(&b, &["put", file.to_str().unwrap(), &format!("{ro}/x")]).failure(&["read-only capability"]);
    at(&b, &["mkdir", "/a-docs-rw/from-b"]).success();
    assert_eq!(ls_names(&a, "/docs"), ["2026", "from-b", "latest"]);
    let out_file = g.env.out("via-cap.pdf");
    at(
        &b,
        &[
            "get",
            &format!("{ro}/2026/report.pdf"),
            "-o",
            out_file.to_str().unwrap(),
        ],
    )
    .success();
    assert_eq!(std::fs::read(&out_file).unwrap(), data);

    // Errors: one line, exit 1, nothing changed.
    at(&a, &["ls", "/nope"]).failure(&["/nope: no such file or directory"]);
    at(&a, &["ls", "/docs/latest/x"]).failure(&["not a directory"]);

    // Pins: kept for offline use, listed, released; bad paths refused in one line.
    assert!(at(&a, &["pin"]).success().stdout.contains("no pins"));
    let pinned = at(&a, &["pin", "/docs"]).success();
    assert!(pinned.stdout.starts_with("pinned /docs: "), "{pinned}");
    let pins = at(&a, &["pin", "--json"]).success().json();
    assert_eq!(pins[0]["location"], "/docs");
    assert!(pins[0]["bytes"].as_u64().unwrap() >= 200_000, "{pins}");
    let status = at(&a, &["status", "--json"]).success().json();
    assert!(status["cache"]["pinned_bytes"].as_u64().unwrap() >= 200_000);
    at(&a, &["pin", "/nope"]).failure(&["/nope: no such file or directory"]);
    at(&a, &["unpin", "/docs/2026"]).failure(&["/docs/2026 is not pinned"]);
    assert!(
        at(&a, &["unpin", "/docs"])
            .success()
            .stdout
            .contains("unpinned /docs")
    );
    at(
        &a,
        &["get", "/docs/2026", "-o", g.env.out("d").to_str().unwrap()],
    )
    .failure(&["is a directory"]);
    at(&a, &["rm", "/docs/2026"]).failure(&["is a directory"]);
    at(&a, &["mkdir", "/docs"]).failure(&["already exists"]);
    at(&a, &["mkdir", "/x/y"]).failure(&["/x: no such file or directory"]);
    at(&a, &["mkdir", &format!("/{}", "n".repeat(256))]).failure(&["invalid name", "255 bytes"]);
    at(&a, &["ls", "cairn:dir:1:zzzz"]).failure(&["cap"]);
    at(&a, &["attach", "cairn:dir-ro:1:aaaa", "/bad"]).failure(&["cap"]);
    at(&a, &["ln", "/x", "/y"]).failure(&["ln -s"]);
    at(&a, &["mv", "/docs", "/docs/2026"]).failure(&["into itself"]);
    assert_eq!(ls_names(&a, "/docs"), ["2026", "from-b", "latest"]);
    at(&a, &["rm", "-r", "/docs/from-b"]).success();

    // cp -r up and down, with subdirectories and a symlink.
    let src = g.env.join("tree");
    std::fs::create_dir_all(src.join("sub/deeper")).unwrap();
    for i in 0..40 {
        std::fs::write(src.join(format!("f{i}")), random_bytes(100 + i * 97)).unwrap();
    }
    std::fs::write(src.join("sub/deeper/big"), random_bytes(2 << 20)).unwrap();
    std::os::unix::fs::symlink("../f1", src.join("sub/link")).unwrap();
    let up = at(
        &a,
        &["cp", "-r", src.to_str().unwrap(), "cairn:/backup", "--json"],
    )
    .success()
    .json();
    assert_eq!(up["files"], Value::from(41));
    let down = g.env.join("restored");
    at(
        &b,
        &[
            "cp",
            "-r",
            &format!(
                "cairn:{}",
                at(&a, &["share", "/backup"]).success().last_line()
            ),
            down.to_str().unwrap(),
        ],
    )
    .success();
    let diff = std::process::Command::new("diff")
        .arg("-r")
        .arg(&src)
        .arg(&down)
        .output()
        .unwrap();
    assert!(
        diff.status.success(),
        "{}",
        String::from_utf8_lossy(&diff.stdout)
    );
    at(&a, &["cp", src.to_str().unwrap(), "cairn:/x"]).failure(&["is a directory (use -r)"]);
    at(
        &a,
        &["cp", "-r", src.to_str().unwrap(), down.to_str().unwrap()],
    )
    .failure(&["cairn:"]);
    drop(g.nodes.drain(..));
}

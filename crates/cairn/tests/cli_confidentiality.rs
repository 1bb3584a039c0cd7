//! Black-box confidentiality test: what the nodes write to disk (shares, databases, configs,
//! logs: every byte of every file) never contains the plaintext of a file put through them.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::ffi::OsStr;
use std::path::PathBuf;
use std::time::Duration;

use common::*;

#[test]
fn plaintext_never_reaches_node_disks_or_logs() {
    let mut g = Grid::manual(5, &[]);
    g.wait_roster_complete(Duration::from_secs(15));
    let marker = format!("CAIRN-MARKER-{}", random_hex(16));

    // Compressible: the marker over and over (zstd shrinks it a lot before encryption).
    let mut repeated = Vec::new();
    while repeated.len() < 2 << 20 {
        repeated.extend_from_slice(marker.as_bytes());
        repeated.push(b'\n');
    }
    // Incompressible: random bytes with the marker once in the middle.
    let mut embedded = random_bytes(1 << 20);
    let mid = embedded.len() / 2;
    embedded.splice(mid..mid, marker.bytes());
    // Small, but too big for a literal cap: a chunk on its own.
    let small = format!("{marker} {marker}\n").into_bytes();
    assert!(small.len() > 64);

    let inputs: Vec<(&str, &[u8], bool)> = vec![
        ("repeated", &repeated, false),
        ("embedded", &embedded, false),
        ("small", &small, false),
        ("repeated-private", &repeated, true),
    ];
    let mut printed = String::new();
    for (name, data, private) in &inputs {
        let file = g.env.file(name, data);
        let mut args = vec![
            OsStr::new("put").to_owned(),
            file.as_os_str().to_owned(),
            "--dir".into(),
            g.dir(0).as_os_str().to_owned(),
        ];
        if *private {
            args.push("--private".into());
        }
        let r = cairn(args).success();
        let cap = r.last_line();
        assert!(cap.starts_with("cairn:chk:1:"), "{name}: {r}");
        printed.push_str(&r.stdout);
        printed.push_str(&r.stderr);
        let out = g.env.out(name);
        g.get(1, &cap, &out).success();
        assert!(std::fs::read(&out).unwrap() == *data, "{name} differs");
        for d in &g.dirs {
            for args in [
                vec![OsStr::new("status"), OsStr::new("--json")],
                vec![OsStr::new("check"), OsStr::new(&cap), OsStr::new("--json")],
                vec![OsStr::new("check"), OsStr::new(&cap)],
            ] {
                let mut a = args.clone();
                a.extend([OsStr::new("--dir"), d.as_os_str()]);
                let r = cairn(a).success();
                printed.push_str(&r.stdout);
                printed.push_str(&r.stderr);
            }
        }
    }
    assert!(
        !printed.contains(&marker),
        "the marker appears in CLI output"
    );

    // Stop the nodes so their logs and databases are complete, then scan every file the nodes
    // and their logs left (not our own input and output files).
    for n in &mut g.nodes {
        n.stop();
    }
    let mut roots: Vec<PathBuf> = g.dirs.clone();
    roots.push(g.env.join("logs"));
    let mut scanned = 0;
    let mut bytes = 0;
    for root in &roots {
        for f in all_files(root) {
            let content = std::fs::read(&f).unwrap();
            bytes += content.len();
            scanned += 1;
            assert!(
                !contains_bytes(&content, marker.as_bytes()),
                "the plaintext marker is in {}",
                f.display()
            );
            // Nor the first 12 bytes of the marker's random part (a partial leak).
            assert!(
                !contains_bytes(&content, &marker.as_bytes()[13..25]),
                "part of the plaintext marker is in {}",
                f.display()
            );
        }
    }
    eprintln!("scanned {scanned} files, {bytes} bytes");
    // The scan does find the marker where it is: our own input files.
    let inputs_with_marker = all_files(&g.env.join("files"))
        .into_iter()
        .filter(|f| contains_bytes(&std::fs::read(f).unwrap(), marker.as_bytes()))
        .count();
    assert_eq!(inputs_with_marker, 4, "the scan cannot see the marker");
    // The scan saw the shares: about 5/3 of what was put, compressed.
    assert!(scanned > 20, "only {scanned} files scanned");
    assert!(bytes > 1 << 20, "only {bytes} bytes scanned");
}

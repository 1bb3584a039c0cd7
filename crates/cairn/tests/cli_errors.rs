//! Black-box tests of error cases: invite codes, caps and node directories. Every error is
//! one line on stderr, exit code 1, and leaves nothing half-made behind.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use cairn_core::cap::Cap;
use common::*;

fn join(code: &str, dir: &Path) -> Out {
    cairn([
        OsStr::new("join"),
        OsStr::new(code),
        OsStr::new("--dir"),
        dir.as_os_str(),
        OsStr::new("--listen"),
        OsStr::new(&loopback()),
    ])
}

fn init(dir: &Path) -> Out {
    cairn([
        OsStr::new("init"),
        OsStr::new("--dir"),
        dir.as_os_str(),
        OsStr::new("--listen"),
        OsStr::new(&loopback()),
    ])
}

#[track_caller]
fn assert_not_made(dir: &Path) {
    assert!(
        !dir.join("secrets").join("node.key").exists(),
        "{} holds a node key after a failed join",
        dir.display()
    );
    assert!(
        !dir.exists(),
        "{} was created by a failed join (contents: {:?})",
        dir.display(),
        all_files(dir)
    );
}

/// Reused, garbage, truncated and expired invite codes fail clearly and make no node dir.
#[test]
fn invite_code_errors() {
    let env = Env::new();
    let a = env.join("A");
    init(&a).success();
    let _node = Daemon::start(&a, &env.log_path("A"));

    let code = invite(&a);
    join(&code, &env.join("B")).success();
    // The same code again.
    let c = env.join("C");
    join(&code, &c).failure(&["join refused", "unknown or was already used"]);
    assert_not_made(&c);

    // Garbage.
    join("hello", &c).failure(&["not a cairn invite code"]);
    assert_not_made(&c);
    // Truncated: the last 5 characters cut, or half the code.
    let fresh = invite(&a);
    join(&fresh[..fresh.len() - 5], &c).failure(&["invite code is damaged"]);
    assert_not_made(&c);
    join(&fresh[..fresh.len() / 2], &c).failure(&["invite code is damaged"]);
    assert_not_made(&c);
    // The untouched code still works (a damaged copy did not burn it).
    join(&fresh, &c).success();
    assert!(c.join("secrets").join("node.key").exists());

    // Expired.
    let out = cairn([
        OsStr::new("invite"),
        OsStr::new("--ttl-hours"),
        OsStr::new("0"),
        OsStr::new("--dir"),
        a.as_os_str(),
    ])
    .success();
    let expired = out.last_line();
    let d = env.join("D");
    join(&expired, &d).failure(&["expired"]);
    assert_not_made(&d);

    // Only the admin may invite.
    let b = env.join("B");
    let _nb = Daemon::start(&b, &env.log_path("B"));
    cairn([OsStr::new("invite"), OsStr::new("--dir"), b.as_os_str()]).failure(&["cannot invite"]);

    // Joining into a directory that already holds a node.
    let code = invite(&a);
    join(&code, &b).failure(&["already holds a cairn node"]);
}

/// Bad caps fail with a one-line error and leave no output (nor partial) file; a well-formed
/// cap of data that does not exist fails with "not enough shares" quickly.
#[test]
fn bad_caps_fail_cleanly() {
    let mut g = Grid::manual(5, &[]);
    g.wait_roster_complete(Duration::from_secs(15));
    let data = random_bytes(100 * 1024);
    let file = g.env.file("data", &data);
    let cap = g.put(0, &file);
    assert!(cap.starts_with("cairn:chk:1:"), "{cap}");

    let verify = match cap.parse::<Cap>().unwrap() {
        Cap::Read(r) => r.verify_cap().to_string(),
        other => panic!("not a readcap: {other:?}"),
    };
    assert!(verify.starts_with("cairn:vchk:1:"), "{verify}");

    let cases: Vec<(String, &[&str])> = vec![
        ("cairn:chk:1:!!!".into(), &["bad base32"]),
        (
            cap[..cap.len() - 5].to_string(),
            &["wrong length for a chk cap"],
        ),
        ("cairn:zzz:1:aaaa".into(), &["unknown cap kind", "zzz"]),
        // Not a cap: a path in the tree (relative to the root), and there is none.
        ("hello".into(), &["/hello: no such file or directory"]),
        ("cairn:chk:9:aaaa".into(), &["unsupported version"]),
        (verify.clone(), &["verify capability", "not read"]),
    ];
    for (i, (bad, needles)) in cases.iter().enumerate() {
        let out = g.env.out(&format!("bad-{i}"));
        let r = g.get(1, bad, &out);
        eprintln!("get {bad:?}: {}", r.stderr.trim());
        r.failure(needles);
        assert_no_output(&out);
    }

    // A verify cap can check.
    let r = cairn([
        OsStr::new("check"),
        OsStr::new(&verify),
        OsStr::new("--json"),
        OsStr::new("--dir"),
        g.dir(1).as_os_str(),
    ])
    .success();
    assert_eq!(r.json()["readable"], true, "{r}");

    // A cap that parses but names nothing stored: change a character of the share root.
    let missing = mutate_cap(&cap, 10);
    assert!(
        missing.parse::<Cap>().is_ok(),
        "mutated cap must still parse: {missing}"
    );
    let out = g.env.out("missing");
    let r = cairn_timeout(
        [
            OsStr::new("get"),
            OsStr::new(&missing),
            OsStr::new("-o"),
            out.as_os_str(),
            OsStr::new("--dir"),
            g.dir(1).as_os_str(),
        ],
        Duration::from_secs(25),
    );
    eprintln!(
        "get of a missing file: {:.2?}: {}",
        r.elapsed,
        r.stderr.trim()
    );
    let r = r.failure(&["not enough shares", "found 0, need 3"]);
    assert!(r.elapsed < Duration::from_secs(20), "took {:?}", r.elapsed);
    assert_no_output(&out);
    // check says so too (exit 1, not readable).
    let r = cairn([
        OsStr::new("check"),
        OsStr::new(&missing),
        OsStr::new("--dir"),
        g.dir(0).as_os_str(),
    ]);
    r.failure(&["not enough shares"]);

    // Wrong read key (a character of the key part changed): decryption fails, no output.
    let wrong_key = mutate_cap(&cap, 60);
    let out = g.env.out("wrong-key");
    g.get(1, &wrong_key, &out).failure(&["decryption failed"]);
    assert_no_output(&out);

    // Wrong size in the cap: refused, no output.
    let wrong_size = mutate_cap(&cap, 105);
    let out = g.env.out("wrong-size");
    g.get(1, &wrong_size, &out).failure(&["size mismatch"]);
    assert_no_output(&out);

    // A failed get does not clobber an existing file at the output path.
    let out = g.env.out("existing");
    std::fs::write(&out, b"keep me").unwrap();
    g.get(1, &missing, &out).failure(&["not enough shares"]);
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    assert!(!partial_of(&out).exists());

    // A cap from another grid: not found here.
    let mut other = Grid::manual(4, &[]);
    other.wait_roster_complete(Duration::from_secs(15));
    let other_file = other.env.file("other", &random_bytes(70 * 1024));
    let other_cap = other.put(0, &other_file);
    let out = g.env.out("other-grid");
    let r = g.get(1, &other_cap, &out);
    let r = r.failure(&["not enough shares"]);
    assert!(r.elapsed < Duration::from_secs(20), "took {:?}", r.elapsed);
    assert_no_output(&out);
}

/// Missing, empty, stopped, doubly initialised and doubly run node directories.
#[test]
fn node_dir_errors() {
    let env = Env::new();
    let file = env.file(
        "f",
        b"some bytes to put into the grid, longer than sixty-four bytes....",
    );

    cairn(["status", "--dir", "/nonexistent"]).failure(&[
        "/nonexistent is not an initialised cairn node directory",
        "cairn init --dir /nonexistent",
    ]);
    let empty = env.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    cairn([
        OsStr::new("put"),
        file.as_os_str(),
        OsStr::new("--dir"),
        empty.as_os_str(),
    ])
    .failure(&["is not an initialised cairn node directory"]);
    let out = env.out("o");
    get(&empty, "cairn:lit:1:aaaa", &out).failure(&["is not an initialised cairn node directory"]);
    cairn([OsStr::new("run"), OsStr::new("--dir"), empty.as_os_str()])
        .failure(&["is not an initialised cairn node directory"]);
    // CAIRN_DIR stands for --dir.
    let r = cairn_env(&["status"], &empty);
    r.failure(&["is not an initialised cairn node directory"]);

    let a = env.join("A");
    init(&a).success();
    // Not running.
    cairn([
        OsStr::new("put"),
        file.as_os_str(),
        OsStr::new("--dir"),
        a.as_os_str(),
    ])
    .failure(&["is not running", "cairn run --dir"]);
    cairn([OsStr::new("status"), OsStr::new("--dir"), a.as_os_str()]).failure(&["is not running"]);
    cairn([OsStr::new("stop"), OsStr::new("--dir"), a.as_os_str()]).failure(&["is not running"]);
    // Initialised twice.
    init(&a).failure(&["already holds a cairn node"]);

    // Run twice: the second fails, the first keeps working.
    let mut first = Daemon::start(&a, &env.log_path("A"));
    let mut second = Daemon::spawn(&a, &env.log_path("A-second"));
    let status = second.wait_exit(Duration::from_secs(15));
    let log = second.log_text();
    eprintln!("second `cairn run` on the same dir: {status:?}, log:\n{log}");
    let status = status.expect("a second `cairn run` on the same dir did not exit");
    assert!(!status.success(), "second run exited 0; log:\n{log}");
    assert!(
        log.contains("already running") || log.contains("lock"),
        "second run's error does not say why: {log}"
    );
    assert!(
        first.is_running(),
        "the first node died: {}",
        first.log_text()
    );
    let s = status_json(&a).expect("first node still answers");
    assert!(s["node"].is_string());
    // A put still works on the first node (it needs no peers for a literal cap).
    let tiny = env.file("tiny", b"tiny");
    let cap = put(&a, &tiny);
    assert!(cap.starts_with("cairn:lit:1:"), "{cap}");
    first.stop();
    cairn([OsStr::new("status"), OsStr::new("--dir"), a.as_os_str()]).failure(&["is not running"]);
}

/// A one-node grid (1-of-1) that is running.
fn single_node(env: &Env) -> (std::path::PathBuf, Daemon) {
    let a = env.join("A");
    cairn([
        OsStr::new("init"),
        OsStr::new("--dir"),
        a.as_os_str(),
        OsStr::new("--listen"),
        OsStr::new(&loopback()),
        OsStr::new("-k"),
        OsStr::new("1"),
        OsStr::new("-n"),
        OsStr::new("1"),
    ])
    .success();
    let node = Daemon::start(&a, &env.log_path("A"));
    (a, node)
}

/// Bad input and output paths: clear errors, and a failed get leaves no partial file.
#[test]
fn file_path_errors() {
    let env = Env::new();
    let (a, _node) = single_node(&env);
    let data = random_bytes(10_000);
    let file = env.file("data", &data);
    let cap = put(&a, &file);

    let missing = env.join("no-such-file");
    cairn([
        OsStr::new("put"),
        missing.as_os_str(),
        OsStr::new("--dir"),
        a.as_os_str(),
    ])
    .failure(&["cannot open", "no-such-file", "No such file"]);

    let nodir = env.join("no-such-dir").join("out");
    get(&a, &cap, &nodir).failure(&["cannot create", "No such file"]);

    // The output is an existing directory, with or without a trailing slash.
    let outdir = env.out("a-directory");
    std::fs::create_dir_all(&outdir).unwrap();
    for target in [
        outdir.clone(),
        std::path::PathBuf::from(format!("{}/", outdir.display())),
    ] {
        get(&a, &cap, &target).failure(&["cannot move the file into place"]);
        let leftovers: Vec<_> = all_files(env.path())
            .into_iter()
            .filter(|f| f.to_string_lossy().contains("cairn-partial"))
            .collect();
        assert!(leftovers.is_empty(), "partial files left: {leftovers:?}");
    }
    assert!(outdir.is_dir());

    // `-o -` writes the file to stdout.
    let text = b"line one\nline two, a text file longer than the literal cap limit of 64 bytes\n";
    let tfile = env.file("text", text);
    let tcap = put(&a, &tfile);
    let r = cairn([
        OsStr::new("get"),
        OsStr::new(&tcap),
        OsStr::new("-o"),
        OsStr::new("-"),
        OsStr::new("--dir"),
        a.as_os_str(),
    ])
    .success();
    assert_eq!(r.stdout.as_bytes(), text);
}

/// `cairn put DIRECTORY` fails at once ("is a directory"), it does not wait on the node.
#[test]
fn put_of_a_directory_fails_promptly() {
    let env = Env::new();
    let (a, _node) = single_node(&env);
    let dir = env.join("some-dir");
    std::fs::create_dir_all(&dir).unwrap();
    cairn_timeout(
        [
            OsStr::new("put"),
            dir.as_os_str(),
            OsStr::new("--dir"),
            a.as_os_str(),
        ],
        Duration::from_secs(10),
    )
    .failure(&["directory"]);
}

/// `cairn put` passes the open file to its node, which reads it to its end: a named pipe works
/// like a file, and the bytes come back the same.
#[test]
fn put_of_a_named_pipe_reads_it_to_the_end() {
    let env = Env::new();
    let (a, _node) = single_node(&env);
    let fifo = named_pipe(&env);
    let data = random_bytes(3_000_000);
    let writer = {
        let (fifo, data) = (fifo.clone(), data.clone());
        std::thread::spawn(move || std::fs::write(fifo, data).unwrap())
    };
    let cap = put(&a, &fifo);
    writer.join().unwrap();
    let out = env.out("from-pipe");
    get(&a, &cap, &out).success();
    assert_eq!(std::fs::read(&out).unwrap(), data);
}

/// Makes a named pipe `BASE/pipe`.
fn named_pipe(env: &Env) -> std::path::PathBuf {
    let fifo = env.join("pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success(), "mkfifo failed");
    fifo
}

/// A `cairn put` killed while its node reads the passed file: the node abandons that put
/// and goes on serving (the next put and get work).
#[test]
fn a_put_whose_client_dies_is_abandoned() {
    let env = Env::new();
    let (a, node) = single_node(&env);
    let fifo = named_pipe(&env);
    let mut client = std::process::Command::new(exe())
        .args([
            OsStr::new("put"),
            fifo.as_os_str(),
            OsStr::new("--dir"),
            a.as_os_str(),
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Hold the pipe open with some data in it, so the node is mid-read when the client dies.
    let mut pipe = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    std::io::Write::write_all(&mut pipe, &random_bytes(100_000)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    client.kill().unwrap();
    client.wait().unwrap();
    drop(pipe);

    let data = random_bytes(200_000);
    let file = env.file("after", &data);
    let cap = put(&a, &file);
    let out = env.out("after");
    get(&a, &cap, &out).success();
    assert_eq!(std::fs::read(&out).unwrap(), data);
    let log = node.log_text();
    assert!(
        log.contains("the client went away before the put ended"),
        "the node did not abandon the put: {log}"
    );
}

/// Output that cannot be written (a full disk, a closed pipe as in `cairn status | head -1`)
/// should be a one-line error, not a panic with exit code 101.
#[test]
fn unwritable_stdout_is_a_clean_error() {
    let env = Env::new();
    let (a, _node) = single_node(&env);
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = std::process::Command::new(exe())
        .args([OsStr::new("status"), OsStr::new("--dir"), a.as_os_str()])
        .env("RUST_BACKTRACE", "0")
        .stdout(full)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "cairn panicked: {stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
}

/// `cairn ARGS` with `CAIRN_DIR=dir` instead of `--dir`.
fn cairn_env(args: &[&str], dir: &Path) -> Out {
    let mut cmd = std::process::Command::new(exe());
    cmd.args(args)
        .env("CAIRN_DIR", dir)
        .stdin(std::process::Stdio::null());
    let started = std::time::Instant::now();
    let out = cmd.output().expect("run cairn");
    Out {
        cmdline: format!("CAIRN_DIR={} cairn {}", dir.display(), args.join(" ")),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: started.elapsed(),
    }
}

/// `cairn revoke`: a bad id, the node itself, and a node without the grid key are clear
/// errors; a revocation shows in `status`.
#[test]
fn revoke_errors_and_status() {
    let env = Env::new();
    let (a, _node) = single_node(&env);
    let revoke = |node: &str| {
        cairn([
            OsStr::new("revoke"),
            OsStr::new(node),
            OsStr::new("--dir"),
            a.as_os_str(),
        ])
    };
    revoke("not-a-node").failure(&["not-a-node", "is not a node id"]);
    let own = status_json(&a).expect("status")["node"]
        .as_str()
        .expect("node id")
        .to_string();
    revoke(&own).failure(&["cannot revoke itself"]);
    let other = "ab".repeat(32);
    revoke(&other).success();
    let status = status_json(&a).expect("status");
    assert_eq!(status["revoked"], serde_json::json!([other]));
    let text = cairn([OsStr::new("status"), OsStr::new("--dir"), a.as_os_str()]).success();
    assert!(text.stdout.contains("revoked   abababab"), "{text}");
}

//! A small harness for black-box tests of the `cairn` binary: every command runs as its own
//! process with a time limit, and node daemons (`cairn run`) are children killed on drop.
//!
//! Each test makes its own [`Env`] (a temporary base directory), so tests run in parallel.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod mount;

/// The default time limit of one CLI command.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a started node may take until `cairn status` answers.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The `cairn` binary under test.
pub fn exe() -> &'static str {
    env!("CARGO_BIN_EXE_cairn")
}

/// What a finished command left.
#[derive(Debug)]
pub struct Out {
    /// The command line, for messages.
    pub cmdline: String,
    /// `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Out {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// Panics (with everything printed) unless the command succeeded.
    #[track_caller]
    pub fn success(self) -> Out {
        assert!(self.ok(), "command failed: {self}");
        self
    }

    /// Panics unless the command failed with exit code 1 and a one-line error on stderr
    /// containing every one of `needles`.
    #[track_caller]
    pub fn failure(self, needles: &[&str]) -> Out {
        assert!(!self.ok(), "command unexpectedly succeeded: {self}");
        assert_eq!(self.code, Some(1), "expected exit code 1: {self}");
        let err = self.stderr.trim_end();
        assert_eq!(err.lines().count(), 1, "expected a one-line error: {self}");
        assert!(err.starts_with("error: "), "expected `error: ...`: {self}");
        for n in needles {
            assert!(err.contains(n), "stderr lacks {n:?}: {self}");
        }
        self
    }

    /// The last non-empty line of stdout.
    #[track_caller]
    pub fn last_line(&self) -> String {
        self.stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_else(|| panic!("no output: {self}"))
            .trim()
            .to_string()
    }

    /// Stdout parsed as JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self}"))
    }
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` -> exit {:?} after {:.2?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline, self.code, self.elapsed, self.stdout, self.stderr
        )
    }
}

fn cmdline(args: &[OsString]) -> String {
    let mut s = String::from("cairn");
    for a in args {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn base_command() -> Command {
    let mut cmd = Command::new(exe());
    cmd.env_remove("CAIRN_DIR")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    cmd
}

/// Runs `cairn ARGS`, killing it after `timeout` (which then fails the test).
#[track_caller]
pub fn cairn_timeout<I, S>(args: I, timeout: Duration) -> Out
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let started = Instant::now();
    let mut child = base_command()
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start the cairn binary");
    let mut so = child.stdout.take().expect("piped stdout");
    let mut se = child.stderr.take().expect("piped stderr");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let mut timed_out = false;
    let status: ExitStatus = loop {
        if let Some(status) = child.try_wait().expect("wait for cairn") {
            break status;
        }
        if started.elapsed() > timeout {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("wait for killed cairn");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let out = Out {
        cmdline: cmdline(&args),
        code: status.code(),
        stdout: String::from_utf8_lossy(&t_out.join().unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned(),
        elapsed: started.elapsed(),
    };
    assert!(
        !timed_out,
        "command hung for more than {timeout:?}, killed: {out}"
    );
    out
}

/// `cairn ARGS --dir DIR`.
#[track_caller]
pub fn at(dir: &Path, args: &[&str]) -> Out {
    let mut all: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
    all.push("--dir".into());
    all.push(dir.into());
    cairn(all)
}

/// Runs `cairn ARGS` with the default time limit.
#[track_caller]
pub fn cairn<I, S>(args: I) -> Out
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    cairn_timeout(args, CMD_TIMEOUT)
}

/// A test's own temporary base directory.
#[derive(Debug)]
pub struct Env {
    tmp: tempfile::TempDir,
    counter: AtomicU64,
}

impl Env {
    pub fn new() -> Env {
        Env {
            tmp: tempfile::Builder::new()
                .prefix("cairn-cli-test-")
                .tempdir()
                .expect("temp dir"),
            counter: AtomicU64::new(0),
        }
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// `BASE/name` (not created).
    pub fn join(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// A fresh log file path under `BASE/logs/`.
    pub fn log_path(&self, name: &str) -> PathBuf {
        let logs = self.join("logs");
        std::fs::create_dir_all(&logs).expect("logs dir");
        let i = self.counter.fetch_add(1, Ordering::Relaxed);
        logs.join(format!("{name}-{i}.log"))
    }

    /// Writes `data` to `BASE/files/name` and returns the path.
    pub fn file(&self, name: &str, data: &[u8]) -> PathBuf {
        let dir = self.join("files");
        std::fs::create_dir_all(&dir).expect("files dir");
        let p = dir.join(name);
        std::fs::write(&p, data).expect("write input file");
        p
    }

    /// A path for an output file under `BASE/out/` (the directory exists, the file not).
    pub fn out(&self, name: &str) -> PathBuf {
        let dir = self.join("out");
        std::fs::create_dir_all(&dir).expect("out dir");
        dir.join(name)
    }
}

impl Default for Env {
    fn default() -> Self {
        Env::new()
    }
}

/// `cairn status --json --dir DIR` once; `Some` when it answered.
pub fn status_json(dir: &Path) -> Option<Value> {
    let out = cairn_timeout(
        [
            OsStr::new("status"),
            OsStr::new("--json"),
            OsStr::new("--dir"),
            dir.as_os_str(),
        ],
        Duration::from_secs(10),
    );
    if out.ok() { Some(out.json()) } else { None }
}

/// A `cairn run --dir DIR` child process; SIGKILLed on drop.
#[derive(Debug)]
pub struct Daemon {
    pub dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    /// Spawns `cairn run --dir DIR` (stderr to `log`) without waiting for it.
    pub fn spawn(dir: &Path, log: &Path) -> Daemon {
        let logf = std::fs::File::create(log).expect("create log");
        let child = base_command()
            .arg("run")
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::from(logf))
            .spawn()
            .expect("start cairn run");
        Daemon {
            dir: dir.to_path_buf(),
            log: log.to_path_buf(),
            child: Some(child),
        }
    }

    /// Starts a node and waits until `cairn status` answers.
    #[track_caller]
    pub fn start(dir: &Path, log: &Path) -> Daemon {
        let mut d = Daemon::spawn(dir, log);
        d.wait_up();
        d
    }

    /// Polls `cairn status` every 20 ms until it answers (bounded); panics with the log when
    /// the node exits or does not come up.
    #[track_caller]
    pub fn wait_up(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.try_exit() {
                panic!(
                    "node at {} exited during start ({status}); log:\n{}",
                    self.dir.display(),
                    self.log_text()
                );
            }
            if status_json(&self.dir).is_some() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "node at {} did not answer `status` within {START_TIMEOUT:?}; log:\n{}",
                    self.dir.display(),
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status if the process ended.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits (bounded) for the process to end.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.try_exit() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_exit().is_none()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL (`kill -9`) and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `cairn stop --dir DIR`, then waits (bounded) for the process to end.
    #[track_caller]
    pub fn stop(&mut self) {
        cairn([
            OsStr::new("stop"),
            OsStr::new("--dir"),
            self.dir.as_os_str(),
        ])
        .success();
        let status = self.wait_exit(Duration::from_secs(15));
        assert!(
            status.is_some(),
            "node at {} did not exit after `cairn stop`; log:\n{}",
            self.dir.display(),
            self.log_text()
        );
        self.child = None;
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A grid of nodes made by hand (init, invite, join) as the README shows, all running.
#[derive(Debug)]
pub struct Grid {
    pub env: Env,
    pub names: Vec<String>,
    pub dirs: Vec<PathBuf>,
    pub nodes: Vec<Daemon>,
}

impl Grid {
    /// `count` nodes named A, B, C...; `init_extra` goes to `cairn init` (e.g. `-k 2`).
    #[track_caller]
    pub fn manual(count: usize, init_extra: &[&str]) -> Grid {
        Grid::manual_in(Env::new(), count, init_extra)
    }

    #[track_caller]
    pub fn manual_in(env: Env, count: usize, init_extra: &[&str]) -> Grid {
        let names: Vec<String> = (0..count)
            .map(|i| char::from(b'A' + i as u8).to_string())
            .collect();
        let dirs: Vec<PathBuf> = names.iter().map(|n| env.join(n)).collect();
        let mut nodes = Vec::new();
        let mut init: Vec<OsString> = vec!["init".into(), "--dir".into(), dirs[0].clone().into()];
        init.extend([OsString::from("--listen"), OsString::from(loopback())]);
        init.extend(init_extra.iter().map(OsString::from));
        cairn(init).success();
        nodes.push(Daemon::start(&dirs[0], &env.log_path(&names[0])));
        for (name, dir) in names.iter().zip(&dirs).skip(1) {
            let code = invite(&dirs[0]);
            cairn([
                OsStr::new("join"),
                OsStr::new(&code),
                OsStr::new("--dir"),
                dir.as_os_str(),
                OsStr::new("--listen"),
                OsStr::new(&loopback()),
            ])
            .success();
            nodes.push(Daemon::start(dir, &env.log_path(name)));
        }
        Grid {
            env,
            names,
            dirs,
            nodes,
        }
    }

    pub fn dir(&self, i: usize) -> &Path {
        &self.dirs[i]
    }

    /// Waits (bounded) until every running node lists all other members as peers, so that
    /// any node can find every holder.
    #[track_caller]
    pub fn wait_roster_complete(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let want = self.dirs.len() - 1;
        loop {
            let mut missing = Vec::new();
            for (i, d) in self.dirs.iter().enumerate() {
                if !self.nodes[i].is_running() {
                    continue;
                }
                let n = status_json(d)
                    .and_then(|s| s["peers"].as_array().map(|p| p.len()))
                    .unwrap_or(0);
                if n != want {
                    missing.push(format!("{} knows {n}/{want}", self.names[i]));
                }
            }
            if missing.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "rosters incomplete after {limit:?}: {missing:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits (bounded) until node `i` sees all other members online.
    #[track_caller]
    pub fn wait_all_online(&self, i: usize, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let s = status_json(&self.dirs[i]).expect("status answers");
            let peers = s["peers"].as_array().cloned().unwrap_or_default();
            if peers.len() == self.dirs.len() - 1
                && peers.iter().all(|p| p["online"] == Value::Bool(true))
            {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "not all peers online after {limit:?}: {s:#}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILLs node `i`.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again (after a kill or stop).
    #[track_caller]
    pub fn restart(&mut self, i: usize) {
        let log = self.env.log_path(&self.names[i]);
        self.nodes[i] = Daemon::start(&self.dirs[i], &log);
    }

    /// `cairn put FILE --dir` node `i`; returns the cap (last stdout line).
    #[track_caller]
    pub fn put(&self, i: usize, file: &Path) -> String {
        put(&self.dirs[i], file)
    }

    /// `cairn get CAP -o OUT --dir` node `i`.
    #[track_caller]
    pub fn get(&self, i: usize, cap: &str, out: &Path) -> Out {
        get(&self.dirs[i], cap, out)
    }
}

/// `cairn invite --dir DIR`; the code is the last stdout line.
#[track_caller]
pub fn invite(dir: &Path) -> String {
    let out = cairn([OsStr::new("invite"), OsStr::new("--dir"), dir.as_os_str()]).success();
    let code = out.last_line();
    assert!(
        code.starts_with("cairn-invite:"),
        "not an invite code: {out}"
    );
    code
}

/// `cairn put FILE --dir DIR`; returns the cap (last stdout line).
#[track_caller]
pub fn put(dir: &Path, file: &Path) -> String {
    let out = cairn([
        OsStr::new("put"),
        file.as_os_str(),
        OsStr::new("--dir"),
        dir.as_os_str(),
    ])
    .success();
    let cap = out.last_line();
    assert!(cap.starts_with("cairn:"), "not a cap: {out}");
    cap
}

/// `cairn get CAP -o OUT --dir DIR` (not checked).
#[track_caller]
pub fn get(dir: &Path, cap: &str, out: &Path) -> Out {
    get_timeout(dir, cap, out, CMD_TIMEOUT)
}

/// `cairn get CAP -o OUT --dir DIR` with a time limit of `limit` (not checked).
#[track_caller]
#[allow(dead_code)] // not every test binary that includes this module uses it
pub fn get_timeout(dir: &Path, cap: &str, out: &Path, limit: Duration) -> Out {
    cairn_timeout(
        [
            OsStr::new("get"),
            OsStr::new(cap),
            OsStr::new("-o"),
            out.as_os_str(),
            OsStr::new("--dir"),
            dir.as_os_str(),
        ],
        limit,
    )
}

/// The partial file `cairn get -o OUT` writes before renaming.
pub fn partial_of(out: &Path) -> PathBuf {
    let name = out.file_name().expect("file name").to_string_lossy();
    out.with_file_name(format!(".{name}.cairn-partial"))
}

/// Panics if `out` or its partial file exists.
#[track_caller]
pub fn assert_no_output(out: &Path) {
    assert!(!out.exists(), "{} exists after a failed get", out.display());
    let p = partial_of(out);
    assert!(!p.exists(), "{} left after a failed get", p.display());
}

/// Pseudo-random bytes (xorshift seeded from the OS), incompressible.
/// A `--listen` address no other node of this test process uses (see
/// [`cairn_testkit::loopback`]).
pub fn loopback() -> String {
    cairn_testkit::loopback().to_string()
}

pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut x: u64 = rand::random::<u64>() | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A random lowercase hex string of `bytes` bytes.
pub fn random_hex(bytes: usize) -> String {
    random_bytes(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Every regular file under `root`, recursively (symlinks not followed).
pub fn all_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

/// Whether `needle` occurs in `hay`.
pub fn contains_bytes(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// The cap with the character at `pos` of its data part (after the last `:`) replaced by
/// another base32 letter, so it still parses.
pub fn mutate_cap(cap: &str, pos: usize) -> String {
    let colon = cap.rfind(':').expect("cap has a data part");
    let (head, data) = cap.split_at(colon + 1);
    let mut data: Vec<u8> = data.bytes().collect();
    data[pos] = if data[pos] == b'a' { b'b' } else { b'a' };
    format!("{head}{}", String::from_utf8(data).expect("ascii"))
}

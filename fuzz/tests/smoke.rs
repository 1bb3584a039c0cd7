//! Stable smoke runner for the fuzz targets: no nightly, no sanitizer, no engine.
//!
//! For each target: every seed (generated in memory and read from `seeds/<target>/`), then
//! `--iters` random and mutated inputs from a fixed-seed generator. A panic, an allocation
//! larger than the input justifies (see `cairn_fuzz::alloc`), or an input slower than
//! `--slow-ms` is a finding: it is printed, saved under `artifacts/smoke/`, and the exit
//! code is 1.
//!
//! It is a test without the libtest harness, so `cargo test` in `fuzz/` runs it; arguments go
//! after `--`:
//!
//! ```text
//! cargo test --test smoke -- [--iters N] [--seed S] [--target NAME] [--slow-ms MS]
//! cargo test --test smoke -- --write-seeds [DIR]     rewrite the seed corpus (fuzz/seeds)
//! cargo test --test smoke -- --target NAME FILE...   replay inputs (e.g. an engine's crash file)
//! cargo test --test smoke -- --large [--target NAME]  frames of MAX_FRAME bytes (see below)
//! ```
//!
//! `--large` runs only the frame bodies of `seeds::large`: lists that fill a whole
//! `MAX_FRAME`, to measure what a peer can make a node allocate before a message's bounds are
//! checked. They are too big and slow for the engines and for every CI run.

use std::collections::BTreeSet;
use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn_fuzz::alloc::{CappedAlloc, limit_for};
use cairn_fuzz::mutate::{Rng, mutate, random_input};
use cairn_fuzz::{TARGETS, Target, guarded, seeds};

#[global_allocator]
static ALLOC: CappedAlloc = CappedAlloc::RECORD;

static LAST_PANIC: Mutex<String> = Mutex::new(String::new());

struct Options {
    iters: usize,
    seed: u64,
    target: Option<String>,
    slow: Duration,
    write_seeds: Option<PathBuf>,
    large: bool,
    files: Vec<PathBuf>,
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: cargo test --test smoke -- [--iters N] [--seed S] [--target NAME] [--slow-ms MS]\n       \
         cargo test --test smoke -- --write-seeds [DIR]\n       \
         cargo test --test smoke -- --target NAME FILE..."
    );
    ExitCode::from(2)
}

fn parse_args() -> Option<Options> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut o = Options {
        iters: 20_000,
        seed: 0xca17_f022,
        target: None,
        slow: Duration::from_millis(1000),
        write_seeds: None,
        large: false,
        files: Vec::new(),
    };
    let mut args = std::env::args().skip(1).peekable();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--iters" => o.iters = args.next()?.parse().ok()?,
            "--seed" => o.seed = args.next()?.parse().ok()?,
            "--target" => o.target = Some(args.next()?),
            "--large" => o.large = true,
            "--slow-ms" => o.slow = Duration::from_millis(args.next()?.parse().ok()?),
            "--write-seeds" => {
                let dir = match args.peek() {
                    Some(a) if !a.starts_with("--") => PathBuf::from(args.next()?),
                    _ => root.join("seeds"),
                };
                o.write_seeds = Some(dir);
            }
            "-h" | "--help" => return None,
            file if !file.starts_with('-') => o.files.push(PathBuf::from(file)),
            // libtest flags (`cargo test -- --nocapture`) mean nothing here.
            other => eprintln!("smoke: ignoring {other}"),
        }
    }
    if o.target.is_none() && !o.files.is_empty() {
        // `cargo test NAME` hands its filter to every test binary; only with --target are
        // positional arguments files to replay.
        eprintln!(
            "smoke: ignoring {} positional argument(s) without --target",
            o.files.len()
        );
        o.files.clear();
    }
    Some(o)
}

fn write_seeds(dir: &Path) -> std::io::Result<()> {
    let all = seeds::all();
    for t in TARGETS {
        let sub = dir.join(t.name);
        fs::create_dir_all(&sub)?;
    }
    for seed in &all {
        fs::write(dir.join(seed.target).join(&seed.name), &seed.bytes)?;
    }
    println!("wrote {} seeds under {}", all.len(), dir.display());
    Ok(())
}

/// The corpus of one target: generated seeds, then any other file in `seeds/<target>/`.
fn corpus(target: &str) -> Vec<Vec<u8>> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for s in seeds::all().into_iter().filter(|s| s.target == target) {
        if seen.insert(s.bytes.clone()) {
            out.push(s.bytes);
        }
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    if let Ok(entries) = fs::read_dir(dir) {
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            if let Ok(bytes) = fs::read(&p)
                && seen.insert(bytes.clone())
            {
                out.push(bytes);
            }
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

#[derive(Default)]
struct Stats {
    runs: usize,
    slowest: Duration,
    slowest_len: usize,
    largest_alloc: usize,
    peak_heap: usize,
    findings: Vec<(String, Vec<u8>)>,
}

fn run_input(t: Target, input: &[u8], slow: Duration, stats: &mut Stats) {
    let start = Instant::now();
    let result = panic::catch_unwind(AssertUnwindSafe(|| guarded(t.run, input)));
    let took = start.elapsed();
    stats.runs += 1;
    if took > stats.slowest {
        stats.slowest = took;
        stats.slowest_len = input.len();
    }
    match result {
        Ok(usage) => {
            stats.largest_alloc = stats.largest_alloc.max(usage.largest);
            stats.peak_heap = stats.peak_heap.max(usage.peak);
            if usage.largest.max(usage.peak) > limit_for(input.len()) {
                stats.findings.push((
                    format!(
                        "a {}-byte input took {} bytes in one allocation, {} bytes of heap at peak",
                        input.len(),
                        usage.largest,
                        usage.peak
                    ),
                    input.to_vec(),
                ));
            }
        }
        Err(_) => {
            cairn_fuzz::alloc::end();
            let msg = LAST_PANIC
                .lock()
                .map(|m| m.clone())
                .unwrap_or_else(|p| p.into_inner().clone());
            stats
                .findings
                .push((format!("panic: {msg}"), input.to_vec()));
        }
    }
    if took > slow {
        stats.findings.push((
            format!(
                "slow: {} ms for a {}-byte input",
                took.as_millis(),
                input.len()
            ),
            input.to_vec(),
        ));
    }
}

fn report(t: Target, stats: &Stats) {
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("artifacts")
        .join("smoke");
    for (what, input) in stats.findings.iter().take(5) {
        let file = artifacts.join(format!("{}-{:016x}", t.name, fnv(input)));
        let saved = fs::create_dir_all(&artifacts)
            .and_then(|()| fs::write(&file, input))
            .map(|()| file.display().to_string())
            .unwrap_or_else(|e| format!("(not saved: {e})"));
        let shown = if input.len() > 256 {
            format!("{}... ({} bytes)", hex(&input[..256]), input.len())
        } else {
            hex(input)
        };
        println!(
            "  FINDING {}: {what}\n    input {shown}\n    saved {saved}",
            t.name
        );
    }
    if stats.findings.len() > 5 {
        println!("  ... and {} more", stats.findings.len() - 5);
    }
}

fn main() -> ExitCode {
    let Some(o) = parse_args() else {
        return usage();
    };
    if let Some(dir) = &o.write_seeds {
        return match write_seeds(dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: cannot write seeds to {}: {e}", dir.display());
                ExitCode::FAILURE
            }
        };
    }
    let selected: Vec<Target> = match &o.target {
        Some(name) => match cairn_fuzz::target(name) {
            Some(t) => vec![t],
            None => {
                eprintln!("error: no target called {name}");
                return usage();
            }
        },
        None => TARGETS.to_vec(),
    };
    let selected: Vec<Target> = if o.large {
        let large = seeds::large();
        selected
            .into_iter()
            .filter(|t| large.iter().any(|s| s.target == t.name))
            .collect()
    } else {
        selected
    };
    panic::set_hook(Box::new(|info| {
        let loc = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        if let Ok(mut last) = LAST_PANIC.lock() {
            *last = format!("{msg}{loc}");
        }
    }));

    let started = Instant::now();
    let (mut total_runs, mut total_findings, mut clean, mut failed) = (0, 0, 0, 0);
    for t in selected {
        let mut stats = Stats::default();
        if o.large {
            for seed in seeds::large().iter().filter(|s| s.target == t.name) {
                let before = stats.findings.len();
                let start = Instant::now();
                let usage = {
                    run_input(t, &seed.bytes, Duration::MAX, &mut stats);
                    (stats.largest_alloc, stats.peak_heap)
                };
                println!(
                    "  {:<45} {:>9} B in {:>6.2} s  (largest alloc so far {} B, heap {} B){}",
                    seed.name,
                    seed.bytes.len(),
                    start.elapsed().as_secs_f64(),
                    usage.0,
                    usage.1,
                    if stats.findings.len() > before {
                        "  FINDING"
                    } else {
                        ""
                    }
                );
            }
        } else if !o.files.is_empty() {
            for f in &o.files {
                match fs::read(f) {
                    Ok(bytes) => run_input(t, &bytes, o.slow, &mut stats),
                    Err(e) => eprintln!("error: cannot read {}: {e}", f.display()),
                }
            }
        } else {
            let corpus = corpus(t.name);
            for input in &corpus {
                run_input(t, input, o.slow, &mut stats);
            }
            // One generator per target, so adding a target changes no other's inputs.
            let mut rng = Rng::new(o.seed ^ fnv(t.name.as_bytes()));
            let mut recent: Vec<Vec<u8>> = Vec::new();
            for i in 0..o.iters {
                let input = if i % 5 == 0 || corpus.is_empty() {
                    random_input(&mut rng)
                } else {
                    let pool = if !recent.is_empty() && rng.below(3) == 0 {
                        &recent
                    } else {
                        &corpus
                    };
                    let a = &pool[rng.below(pool.len())];
                    let b = &corpus[rng.below(corpus.len())];
                    mutate(&mut rng, a, b)
                };
                run_input(t, &input, o.slow, &mut stats);
                if recent.len() < 64 {
                    recent.push(input);
                } else {
                    let at = rng.below(64);
                    recent[at] = input;
                }
            }
        }
        println!(
            "{:<20} {:>6} inputs  slowest {:>6.1} ms ({} B)  largest alloc {} B, heap {} B  {}",
            t.name,
            stats.runs,
            stats.slowest.as_secs_f64() * 1e3,
            stats.slowest_len,
            stats.largest_alloc,
            stats.peak_heap,
            if stats.findings.is_empty() {
                "ok".to_string()
            } else {
                format!("{} FINDINGS", stats.findings.len())
            }
        );
        report(t, &stats);
        total_runs += stats.runs;
        total_findings += stats.findings.len();
        if stats.findings.is_empty() {
            clean += 1;
        } else {
            failed += 1;
        }
    }
    println!(
        "smoke: {total_runs} inputs in {:.1} s, {total_findings} findings",
        started.elapsed().as_secs_f64()
    );
    // One line per target counted, in the form CI summaries read.
    println!("smoke: {clean} passed, {failed} failed");
    if total_findings == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

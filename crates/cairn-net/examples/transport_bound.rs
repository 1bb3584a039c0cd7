//! The bound that the iroh transport alone sets on a put and a get of a file through a grid of
//! nodes on this machine: plain iroh, same version and endpoint settings as `cairn-net`
//! (`presets::Minimal`, no relays, no discovery, IP transports cleared and one bound to
//! 127.0.0.1, default QUIC transport config), none of Cairn's own work (no chunking, crypto,
//! erasure coding, disk, postcard framing or certificate checks).
//!
//! Shape, mirroring `cairn quickstart`'s grid: this process is the client node; it starts
//! `--peers` (default 4) copies of itself as separate processes, the other nodes, each with its
//! own endpoint and tokio runtime, all on the same cores, like the real grid.
//!
//! * put shape: the client pushes `file * n/k * (peers/(peers+1))` bytes (a 1 GiB file in 3-of-5
//!   makes 5/3 GiB of shares, 1/5 of which stay on the client's own node: 4/3 GiB over the
//!   network), as frames of `--frame` bytes (default 1 MiB / 3: a share of an average chunk),
//!   round-robin over the peers, each frame on its own bidirectional stream answered by a 1-byte
//!   ack, `--put-inflight` streams in flight (like `PutShare` -> `Stored`).
//! * get shape: the client pulls `file * --get-net-fraction` bytes (default 0.8: k shares of
//!   every chunk make 1 GiB, and the client's own node holds one of them a fifth of the time when
//!   systematic shares are asked first), each frame asked for on its own stream (an 8-byte
//!   request, a `--frame` byte answer), `--get-inflight` in flight (like `GetShare` -> `Share`).
//!
//! The tiny protocol (ALPN `cairn-bench/transport/0`): on each bi stream the client writes
//! `u32 up, u32 down` (little endian) and `up` bytes, then finishes; the peer reads the `up`
//! bytes and answers with `down` bytes. Bytes move with `write_chunk(Bytes)` / `read_chunk`
//! (no copies) unless `--copy` (then `write_all` / `read_exact` into fresh buffers, as the
//! product's frame code does today).
//!
//! The file-rate bound printed is `file MiB / seconds for the network bytes of that file`;
//! CPU seconds per process come from `/proc/PID/stat`. The last line is machine-readable:
//! `BOUND put_mib_s=.. get_mib_s=.. put_cpu_s_per_file_gib=.. get_cpu_s_per_file_gib=..` (the
//! fastest run of each shape over the in-flight settings tried, and the CPU seconds all five
//! processes spent in that run per GiB of file).
//!
//! Run: `cargo run --release -p cairn-net --example transport_bound -- [--file-mib 1024]
//! [--put-inflight 16,64] [--get-inflight 24,64] [--frame BYTES] [--rounds 1] [--copy]`

#![allow(clippy::unwrap_used)]

use std::error::Error;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use iroh::endpoint::{Connection, presets};
use iroh::{Endpoint, EndpointAddr, PublicKey, SecretKey};
use tokio::sync::Semaphore;

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

const ALPN: &[u8] = b"cairn-bench/transport/0";
const MIB: f64 = 1024.0 * 1024.0;

#[derive(Clone, Debug)]
struct Opts {
    file_mib: u64,
    peers: usize,
    k: u64,
    n: u64,
    frame: usize,
    put_inflight: Vec<usize>,
    get_inflight: Vec<usize>,
    get_net_fraction: f64,
    rounds: usize,
    copy: bool,
}

fn parse_opts() -> Res<Opts> {
    let mut o = Opts {
        file_mib: 1024,
        peers: 4,
        k: 3,
        n: 5,
        frame: 1024 * 1024 / 3,
        put_inflight: vec![16, 64],
        get_inflight: vec![24, 64],
        get_net_fraction: 0.8,
        rounds: 1,
        copy: false,
    };
    let mut args = std::env::args().skip(1);
    let list = |s: String| -> Res<Vec<usize>> {
        s.split(',')
            .map(|x| Ok(x.trim().parse::<usize>()?))
            .collect()
    };
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--file-mib" => o.file_mib = val()?.parse()?,
            "--peers" => o.peers = val()?.parse()?,
            "-k" => o.k = val()?.parse()?,
            "-n" => o.n = val()?.parse()?,
            "--frame" => o.frame = val()?.parse()?,
            "--put-inflight" => o.put_inflight = list(val()?)?,
            "--get-inflight" => o.get_inflight = list(val()?)?,
            "--get-net-fraction" => o.get_net_fraction = val()?.parse()?,
            "--rounds" => o.rounds = val()?.parse()?,
            "--copy" => o.copy = true,
            "-h" | "--help" => {
                println!(
                    "transport_bound [--file-mib 1024] [--peers 4] [-k 3] [-n 5] [--frame BYTES] \
                     [--put-inflight 16,64] [--get-inflight 24,64] [--get-net-fraction 0.8] \
                     [--rounds 1] [--copy]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if o.peers == 0 || o.frame == 0 || o.rounds == 0 || o.k == 0 || o.n < o.k {
        return Err("peers, frame, rounds and k must be > 0, n >= k".into());
    }
    Ok(o)
}

/// The same builder calls as `cairn_net::net::bind_endpoint`.
async fn bind(alpns: Vec<Vec<u8>>) -> Res<Endpoint> {
    let ep = Endpoint::builder(presets::Minimal)
        .secret_key(SecretKey::generate())
        .clear_ip_transports()
        .bind_addr(SocketAddr::from(([127, 0, 0, 1], 0)))?
        .alpns(alpns)
        .bind()
        .await?;
    Ok(ep)
}

/// utime + stime of a process, in seconds (from /proc/PID/stat; USER_HZ is 100 on Linux).
fn cpu_secs(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the ')' field 3 (state) is index 0: utime (14) is index 11, stime (15) index 12.
    let ticks: f64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn vm_hwm_mib(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(0.0)
}

fn payload(len: usize) -> Bytes {
    let mut v = vec![0u8; len];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for c in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        c.copy_from_slice(&b[..c.len()]);
    }
    Bytes::from(v)
}

// ---------------------------------------------------------------------------------------------
// Peer side (a separate process).

async fn peer_main(copy: bool) -> Res<()> {
    let ep = bind(vec![ALPN.to_vec()]).await?;
    let addr = ep.bound_sockets()[0];
    println!("READY {} {}", ep.id(), addr);
    std::io::stdout().flush()?;
    // Exit when the parent closes our stdin.
    std::thread::spawn(|| {
        let mut s = String::new();
        while std::io::stdin()
            .read_line(&mut s)
            .map(|n| n > 0)
            .unwrap_or(false)
        {
            s.clear();
        }
        std::process::exit(0);
    });
    let data = payload(4 * 1024 * 1024);
    while let Some(incoming) = ep.accept().await {
        let data = data.clone();
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else {
                return;
            };
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let data = data.clone();
                tokio::spawn(async move {
                    let r: Res<()> = async {
                        let mut hdr = [0u8; 8];
                        recv.read_exact(&mut hdr).await?;
                        let up = u32::from_le_bytes(hdr[..4].try_into()?) as usize;
                        let down = u32::from_le_bytes(hdr[4..].try_into()?) as usize;
                        if copy {
                            let mut body = vec![0u8; up];
                            recv.read_exact(&mut body).await?;
                            std::hint::black_box(&body);
                        } else {
                            let mut got = 0;
                            while got < up {
                                match recv.read_chunk(usize::MAX).await? {
                                    Some(b) => got += b.len(),
                                    None => return Err("short upload".into()),
                                }
                            }
                        }
                        let mut left = down;
                        while left > 0 {
                            let n = left.min(data.len());
                            if copy {
                                send.write_all(&data[..n]).await?;
                            } else {
                                send.write_chunk(data.slice(..n)).await?;
                            }
                            left -= n;
                        }
                        send.finish()?;
                        // Keep the stream until the client has read everything.
                        let _ = send.stopped().await;
                        Ok(())
                    }
                    .await;
                    if let Err(e) = r {
                        eprintln!("peer: stream failed: {e}");
                    }
                });
            }
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Client side.

struct Peer {
    child: Child,
    pid: String,
    conn: Connection,
}

async fn one_exchange(conn: Connection, up: Bytes, down: usize, copy: bool) -> Res<usize> {
    let (mut send, mut recv) = conn.open_bi().await?;
    let mut hdr = [0u8; 8];
    hdr[..4].copy_from_slice(&(up.len() as u32).to_le_bytes());
    hdr[4..].copy_from_slice(&(down as u32).to_le_bytes());
    if copy {
        let mut frame = Vec::with_capacity(8 + up.len());
        frame.extend_from_slice(&hdr);
        frame.extend_from_slice(&up);
        send.write_all(&frame).await?;
    } else {
        send.write_chunk(Bytes::copy_from_slice(&hdr)).await?;
        if !up.is_empty() {
            send.write_chunk(up).await?;
        }
    }
    send.finish()?;
    if copy {
        let mut body = vec![0u8; down];
        recv.read_exact(&mut body).await?;
        std::hint::black_box(&body);
        Ok(down)
    } else {
        let mut got = 0;
        while got < down {
            match recv.read_chunk(usize::MAX).await? {
                Some(b) => got += b.len(),
                None => return Err("short answer".into()),
            }
        }
        Ok(got)
    }
}

struct Outcome {
    secs: f64,
    net_bytes: u64,
    cpu_client: f64,
    cpu_peers: Vec<f64>,
}

/// Moves `total` bytes in frames: `up_frame` bytes up and `down` bytes back per exchange.
async fn run_shape(
    peers: &[Peer],
    total: u64,
    frame: usize,
    upload: bool,
    inflight: usize,
    copy: bool,
) -> Res<Outcome> {
    let data = payload(frame);
    let frames = total.div_ceil(frame as u64);
    let sem = Arc::new(Semaphore::new(inflight));
    let cpu0_self = cpu_secs("self");
    let cpu0: Vec<f64> = peers.iter().map(|p| cpu_secs(&p.pid)).collect();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..frames {
        let permit = sem.clone().acquire_owned().await?;
        let conn = peers[(i as usize) % peers.len()].conn.clone();
        let (up, down) = if upload {
            (data.clone(), 1)
        } else {
            (Bytes::new(), frame)
        };
        tasks.spawn(async move {
            let r = one_exchange(conn, up, down, copy).await;
            drop(permit);
            r
        });
        while let Some(done) = tasks.try_join_next() {
            done??;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(Outcome {
        secs,
        net_bytes: frames * frame as u64,
        cpu_client: cpu_secs("self") - cpu0_self,
        cpu_peers: peers
            .iter()
            .zip(cpu0)
            .map(|(p, c0)| cpu_secs(&p.pid) - c0)
            .collect(),
    })
}

async fn client_main(o: Opts) -> Res<()> {
    let exe = std::env::current_exe()?;
    let ep = bind(vec![]).await?;
    let mut peers = Vec::new();
    let setup = Instant::now();
    for _ in 0..o.peers {
        let mut cmd = Command::new(&exe);
        cmd.arg("peer").stdin(Stdio::piped()).stdout(Stdio::piped());
        if o.copy {
            cmd.arg("--copy");
        }
        let mut child = cmd.spawn()?;
        let out = child.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line)?;
        let mut it = line.split_whitespace();
        if it.next() != Some("READY") {
            return Err(format!("peer said {line:?}").into());
        }
        let id: PublicKey = it.next().ok_or("no id")?.parse()?;
        let sock: SocketAddr = it.next().ok_or("no addr")?.parse()?;
        let conn = ep
            .connect(EndpointAddr::new(id).with_ip_addr(sock), ALPN)
            .await?;
        let pid = child.id().to_string();
        peers.push(Peer { child, pid, conn });
    }
    println!(
        "transport_bound: iroh {} peers as separate processes, 1 client process; frame {} B; {} API; \
         set up in {:.0} ms",
        o.peers,
        o.frame,
        if o.copy {
            "write_all/read_exact (copying)"
        } else {
            "write_chunk/read_chunk"
        },
        setup.elapsed().as_secs_f64() * 1e3
    );
    // Warm up every connection (congestion window, stream credit).
    let warm = 16 * 1024 * 1024;
    run_shape(&peers, warm * o.peers as u64, o.frame, true, 16, o.copy).await?;
    run_shape(&peers, warm * o.peers as u64, o.frame, false, 16, o.copy).await?;

    let file = o.file_mib * 1024 * 1024;
    let nodes = o.peers as u64 + 1;
    // n/k expansion, minus the share that stays on the client's own node.
    let put_net = file * o.n / o.k * (nodes - 1) / nodes;
    let get_net = (file as f64 * o.get_net_fraction) as u64;
    // (file MiB/s, CPU-s of all processes per GiB of file) of the fastest run of each shape.
    let mut best_put: (f64, f64) = (0.0, 0.0);
    let mut best_get: (f64, f64) = (0.0, 0.0);
    let report = |what: &str, inflight: usize, r: &Outcome, file_mib: f64| -> (f64, f64) {
        let net_mib = r.net_bytes as f64 / MIB;
        let rate = file_mib / r.secs;
        let peers_cpu: f64 = r.cpu_peers.iter().sum();
        let per: Vec<String> = r.cpu_peers.iter().map(|c| format!("{c:.1}")).collect();
        println!(
            "  {what:3} inflight {inflight:3}: {net_mib:7.0} MiB on the wire in {:6.2} s = {:6.0} MiB/s wire, \
             {rate:6.0} MiB/s of file; CPU-s client {:.1}, peers {} (sum {:.1}; {:.2} CPU-s per wire GiB)",
            r.secs,
            net_mib / r.secs,
            r.cpu_client,
            per.join("/"),
            peers_cpu,
            (r.cpu_client + peers_cpu) / (net_mib / 1024.0),
        );
        (rate, (r.cpu_client + peers_cpu) / (file_mib / 1024.0))
    };
    let better = |best: (f64, f64), new: (f64, f64)| if new.0 > best.0 { new } else { best };
    println!(
        "put shape: {} MiB file, {}-of-{}: {:.0} MiB of shares to {} peers (1/{} stays local)",
        o.file_mib,
        o.k,
        o.n,
        put_net as f64 / MIB,
        o.peers,
        nodes
    );
    for &inflight in &o.put_inflight {
        for _ in 0..o.rounds {
            let r = run_shape(&peers, put_net, o.frame, true, inflight, o.copy).await?;
            best_put = better(best_put, report("put", inflight, &r, o.file_mib as f64));
        }
    }
    println!(
        "get shape: {} MiB file: {:.0} MiB pulled from {} peers (fraction {} of the file over the network)",
        o.file_mib,
        get_net as f64 / MIB,
        o.peers,
        o.get_net_fraction
    );
    for &inflight in &o.get_inflight {
        for _ in 0..o.rounds {
            let r = run_shape(&peers, get_net, o.frame, false, inflight, o.copy).await?;
            best_get = better(best_get, report("get", inflight, &r, o.file_mib as f64));
        }
    }
    let hwm: Vec<String> = std::iter::once(vm_hwm_mib("self"))
        .chain(peers.iter().map(|p| vm_hwm_mib(&p.pid)))
        .map(|m| format!("{m:.0}"))
        .collect();
    println!("peak RSS MiB client/peers: {}", hwm.join("/"));
    println!(
        "BOUND put_mib_s={:.0} get_mib_s={:.0} put_cpu_s_per_file_gib={:.2} get_cpu_s_per_file_gib={:.2}",
        best_put.0, best_get.0, best_put.1, best_get.1
    );

    for p in &peers {
        p.conn.close(0u32.into(), b"done");
    }
    ep.close().await;
    for mut p in peers {
        drop(p.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if p.child.try_wait()?.is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = p.child.kill();
                let _ = p.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("peer") {
        return peer_main(args.iter().any(|a| a == "--copy")).await;
    }
    client_main(parse_opts()?).await
}

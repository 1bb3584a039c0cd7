//! `cairn quickstart`: a whole grid on this machine in one command, and `cairn stop` for it.
//!
//! Makes (or reuses) `BASE/node1 .. nodeN` on loopback, node1 being the admin that admits the
//! others directly, starts one `cairn run` process per node, puts a sample file through node1,
//! reads it back through node2, compares, and prints the commands to use the grid. Without
//! `--detach` it stops the nodes on Ctrl-C.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cairn_core::Encoding;
use cairn_node::NodeDir;
use cairn_node::control::{ControlClient, ControlRequest};
use cairn_node::setup::{self, InitOptions};
use clap::Args;
use tokio::process::Command;

/// Options of `cairn quickstart`.
#[derive(Args, Debug)]
pub(crate) struct QuickstartArgs {
    /// Where the grid's node directories go.
    #[arg(long, default_value = "cairn-grid")]
    base: PathBuf,
    /// How many nodes.
    #[arg(long, default_value_t = 5)]
    nodes: u8,
    /// Shares needed to read a chunk.
    #[arg(short, default_value_t = 3)]
    k: u8,
    /// Leave the grid running in the background and exit (stop it with `cairn stop --dir BASE`).
    #[arg(long)]
    detach: bool,
}

fn node_dirs(base: &Path, count: u8) -> Vec<NodeDir> {
    (1..=count)
        .map(|i| NodeDir::new(base.join(format!("node{i}"))))
        .collect()
}

/// The node directories of a quickstart grid under `base`, in order.
fn existing_nodes(base: &Path) -> Vec<NodeDir> {
    let mut dirs: Vec<(u32, NodeDir)> = std::fs::read_dir(base)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let i: u32 = name.strip_prefix("node")?.parse().ok()?;
            let dir = NodeDir::new(e.path());
            dir.is_initialised().then_some((i, dir))
        })
        .collect();
    dirs.sort_by_key(|(i, _)| *i);
    dirs.into_iter().map(|(_, d)| d).collect()
}

pub(crate) async fn run(args: QuickstartArgs) -> Result<()> {
    let started = Instant::now();
    let n = args.nodes;
    if n < 2 || args.k == 0 || args.k >= n {
        bail!("a quickstart grid needs at least 2 nodes and 1 <= k < nodes");
    }
    std::fs::create_dir_all(&args.base)
        .with_context(|| format!("cannot create {}", args.base.display()))?;
    let base = args
        .base
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", args.base.display()))?;
    let mut dirs = existing_nodes(&base);
    if dirs.is_empty() {
        dirs = node_dirs(&base, n);
        let encoding = Encoding::new(args.k, n, (args.k + 1).min(n))?;
        let options = InitOptions {
            encoding,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            capacity_bytes: Some(10 * 1024 * 1024 * 1024),
            storage: true,
        };
        setup::init_grid(&dirs[0], &options)?;
        for dir in &dirs[1..] {
            setup::init_member_offline(dir, &dirs[0], &options)?;
        }
        setup::introduce(&dirs)?;
        outln!(
            "created a grid of {n} nodes ({}-of-{n}) in {}",
            args.k,
            base.display()
        );
    } else {
        outln!(
            "reusing the grid of {} nodes in {}",
            dirs.len(),
            base.display()
        );
    }

    let exe = std::env::current_exe().context("cannot find the cairn binary")?;
    let mut children = Vec::new();
    for dir in &dirs {
        if ControlClient::connect(dir).await.is_ok() {
            continue; // already running
        }
        let log = std::fs::File::create(dir.root().join("node.log"))
            .with_context(|| format!("cannot create the log in {}", dir.root().display()))?;
        let mut cmd = Command::new(&exe);
        cmd.arg("run")
            .arg("--dir")
            .arg(dir.root())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(!args.detach);
        // Own process group: a Ctrl-C in this terminal reaches only the quickstart, which
        // then stops the nodes in order.
        cmd.process_group(0);
        children.push(cmd.spawn().context("cannot start a node process")?);
    }
    for dir in &dirs {
        wait_until_up(dir, Duration::from_secs(20)).await?;
    }
    outln!(
        "{} nodes up in {:.2} s",
        dirs.len(),
        started.elapsed().as_secs_f64()
    );

    let cap = try_grid(&dirs).await?;
    print_usage(&base, &dirs, &cap)?;

    if args.detach {
        outln!(
            "the grid runs in the background; stop it with: cairn stop --dir {}",
            base.display()
        );
        return Ok(());
    }
    outln!("press Ctrl-C to stop the grid");
    tokio::signal::ctrl_c()
        .await
        .context("cannot wait for Ctrl-C")?;
    outln!("stopping...");
    stop_all(&dirs).await;
    for child in &mut children {
        let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    }
    Ok(())
}

async fn wait_until_up(dir: &NodeDir, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(client) = ControlClient::connect(dir).await
            && client.call(&ControlRequest::Status).await.is_ok()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "node in {} did not start; see {}",
                dir.root().display(),
                dir.root().join("node.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Puts a sample file through the first node and reads it back through the second.
async fn try_grid(dirs: &[NodeDir]) -> Result<String> {
    let mut sample = Vec::with_capacity(3 << 20);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while sample.len() < 3 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        sample.extend_from_slice(format!("cairn sample line {x:016x}\n").as_bytes());
    }
    let report = ControlClient::connect(&dirs[0])
        .await?
        .put(
            &ControlRequest::Put {
                private: false,
                path: None,
                name: None,
                meta: Default::default(),
                fd: false,
            },
            &sample[..],
            |_| {},
        )
        .await?;
    let cap = report["cap"]
        .as_str()
        .context("the node answered without a cap")?
        .to_string();
    let mut back = Vec::new();
    ControlClient::connect(&dirs[1])
        .await?
        .get(&cap, &mut back, |_| {})
        .await?;
    if back != sample {
        bail!("the sample file read back through node2 differs from what was put");
    }
    outln!(
        "put a {} byte sample file through node1 and read it back through node2: identical",
        sample.len()
    );
    Ok(cap)
}

fn print_usage(base: &Path, dirs: &[NodeDir], cap: &str) -> Result<()> {
    let first = dirs[0].root().display();
    let second = dirs[1].root().display();
    outln!();
    outln!("use the grid (any node dir works):");
    outln!("  cairn status --dir {first}");
    outln!("  cairn put FILE --dir {first}");
    outln!("  cairn get CAP -o OUT --dir {second}");
    outln!("  cairn check CAP --dir {first}");
    outln!("  cairn stop --dir {}", base.display());
    outln!("the sample file's cap:");
    outln!("  {cap}");
    Ok(())
}

async fn stop_all(dirs: &[NodeDir]) {
    for dir in dirs {
        if let Ok(client) = ControlClient::connect(dir).await {
            let _ = client.call(&ControlRequest::Stop).await;
        }
    }
    // Wait for the sockets to go away.
    for dir in dirs {
        let deadline = Instant::now() + Duration::from_secs(10);
        while dir.control_socket().exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// `cairn stop --dir X`: the node at X, or every node of the quickstart grid at X.
pub(crate) async fn stop(dir: &Path) -> Result<()> {
    let node = NodeDir::new(dir);
    if node.is_initialised() {
        ControlClient::connect(&node)
            .await?
            .call(&ControlRequest::Stop)
            .await?;
        stop_all(std::slice::from_ref(&node)).await;
        outln!("stopped the node at {}", dir.display());
        return Ok(());
    }
    let nodes = existing_nodes(dir);
    if nodes.is_empty() {
        return Err(cairn_node::NodeError::NotInitialised(dir.to_path_buf()).into());
    }
    let running: Vec<NodeDir> = {
        let mut r = Vec::new();
        for n in nodes {
            if ControlClient::connect(&n).await.is_ok() {
                r.push(n);
            }
        }
        r
    };
    stop_all(&running).await;
    outln!("stopped {} node(s) under {}", running.len(), dir.display());
    Ok(())
}

//! `cairn`: run a node of a private grid, and put, get and check files on it.
//!
//! Thin glue over `cairn-node`: parse flags, talk to the local node over its control socket,
//! print for people (or JSON with `--json`), and map every error to one line and exit code 1.

/// Prints a line to stdout; a closed or full stdout becomes an error instead of a panic.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}

mod quickstart;
mod size;
mod tree;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cairn_core::Encoding;
use cairn_core::cap::Cap;
use cairn_core::id::NodeId;
use cairn_node::control::{ControlClient, ControlRequest, FileMeta};
use cairn_node::setup::{self, InitOptions};
use cairn_node::{CheckReport, Node, NodeDir, PinReport, PutReport, StatusReport};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "cairn",
    version,
    about = "A secure peer-to-peer file system for a group of friends"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug, Clone)]
struct DirArg {
    /// The node directory.
    #[arg(long, env = "CAIRN_DIR", default_value_os_t = default_dir())]
    dir: PathBuf,
}

#[derive(Args, Debug, Clone, Copy)]
struct JsonArg {
    /// Print machine-readable JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a new grid with this node as its first member and admin.
    Init {
        #[command(flatten)]
        dir: DirArg,
        /// Shares needed to read a chunk.
        #[arg(short, default_value_t = 3)]
        k: u8,
        /// Shares made of each chunk.
        #[arg(short, default_value_t = 5)]
        n: u8,
        /// Distinct nodes a put must reach to succeed (default k+1, at most n).
        #[arg(long)]
        happy: Option<u8>,
        #[command(flatten)]
        node: NodeOpts,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Join a grid with an invite code from its admin.
    Join {
        /// The invite code (`cairn-invite:1:...`).
        code: String,
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        node: NodeOpts,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Run the node daemon in the foreground (logs to stderr; Ctrl-C stops it).
    Run {
        #[command(flatten)]
        dir: DirArg,
    },
    /// Stop a running node (or every node of a quickstart grid directory).
    Stop {
        #[command(flatten)]
        dir: DirArg,
    },
    /// Print a one-time login link to the running node's web UI (valid 10 minutes).
    Web {
        #[command(flatten)]
        dir: DirArg,
        /// Print only the login link, nothing else.
        #[arg(long, conflicts_with = "print_token")]
        print_url: bool,
        /// Print the API token for `Authorization: Bearer` (scripts, Prometheus).
        #[arg(long)]
        print_token: bool,
    },
    /// Mount the tree (or a directory cap) as a file system; stays until Ctrl-C or unmount.
    Mount {
        /// An existing empty directory.
        mountpoint: PathBuf,
        /// Mount this directory cap instead of the node's root (a readcap mounts read-only).
        #[arg(long)]
        cap: Option<String>,
        /// Return once mounted; the mount lasts until `cairn unmount` or the node stops.
        #[arg(long)]
        background: bool,
        #[command(flatten)]
        dir: DirArg,
    },
    /// Unmount a mount made by `cairn mount`.
    Unmount {
        /// The mount point.
        mountpoint: PathBuf,
        #[command(flatten)]
        dir: DirArg,
    },
    /// Print a one-time invite code for a new device (admin nodes).
    Invite {
        #[command(flatten)]
        dir: DirArg,
        /// Hours the code stays valid.
        #[arg(long, default_value_t = 24)]
        ttl_hours: u64,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Remove a member from the grid for good (admin nodes only): every member refuses it.
    Revoke {
        /// The node id to revoke (as `cairn status` prints it, in full).
        node: String,
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Keep a directory tree (or a file) on this node for offline use: every chunk is fetched
    /// into the block cache and kept there. Again on a pinned path: bring it up to date.
    /// Without PATH: list the pins.
    Pin {
        /// The path (`/photos`) or cap to keep.
        path: Option<String>,
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Release a pin: its chunks fall back under the block cache's budget.
    Unpin {
        /// The path or cap, as pinned.
        path: String,
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Store a file in the grid; prints its readcap (last line), and links it at PATH if given.
    Put {
        /// The file to store ("-" for standard input).
        file: PathBuf,
        /// Where to link it in your tree (`/docs/a.txt`, or a directory `/docs/`).
        path: Option<String>,
        #[command(flatten)]
        dir: DirArg,
        /// Use random keys: nobody can tell you hold this file by putting it themselves.
        #[arg(long)]
        private: bool,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Fetch a file by its cap or path.
    Get {
        /// The file's readcap, or its path (`/docs/a.txt`, `DIRCAP/a.txt`).
        cap: String,
        /// Where to write it ("-" for standard output).
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Show the node, the grid, its peers, and the storage of this node and of the whole grid.
    Status {
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Show, for each chunk of a file, how many shares exist and where.
    Check {
        /// A readcap or verifycap.
        cap: String,
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        json: JsonArg,
    },
    /// List a directory (your root by default).
    Ls {
        /// Path or cap.
        #[arg(default_value = "/")]
        path: String,
        /// Long format: mode, size, mtime, ctime (UTC), symlink targets, conflicts.
        #[arg(short, long)]
        long: bool,
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Create a directory.
    Mkdir {
        /// Path.
        path: String,
        /// Create missing parents; no error if it exists.
        #[arg(short, long)]
        parents: bool,
        #[command(flatten)]
        dir: DirArg,
    },
    /// Remove a file, symlink, or (with -r) directory.
    Rm {
        /// Path.
        path: String,
        /// Remove a directory and everything below it.
        #[arg(short, long)]
        recursive: bool,
        #[command(flatten)]
        dir: DirArg,
    },
    /// Move or rename (into DEST when it is a directory).
    Mv {
        /// Source path.
        source: String,
        /// Destination path.
        dest: String,
        #[command(flatten)]
        dir: DirArg,
    },
    /// Make a link (only symbolic links: `ln -s TARGET PATH`).
    Ln {
        /// Make a symbolic link (required).
        #[arg(short = 's', long = "symbolic")]
        symbolic: bool,
        /// What the link points at.
        target: String,
        /// Where to create it.
        path: String,
        #[command(flatten)]
        dir: DirArg,
    },
    /// Print the cap of a file or directory to hand to a friend (readcap unless --write).
    Share {
        /// Path.
        path: String,
        /// A directory's writecap: whoever holds it can change the directory.
        #[arg(long)]
        write: bool,
        #[command(flatten)]
        dir: DirArg,
    },
    /// Link a cap someone shared with you into your tree.
    Attach {
        /// The cap.
        cap: String,
        /// The path to link it at.
        name: String,
        #[command(flatten)]
        dir: DirArg,
    },
    /// Copy directory trees between this machine and the grid (`cairn:` marks the grid side).
    Cp {
        /// Copy directories recursively (required for directories).
        #[arg(short, long)]
        recursive: bool,
        /// Source: a local path, or `cairn:/path` / a cap.
        source: String,
        /// Destination: a local path, or `cairn:/path` / a cap.
        dest: String,
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Make and start a local grid of several nodes on this machine, and try it.
    Quickstart(quickstart::QuickstartArgs),
}

#[derive(Args, Debug, Clone)]
struct NodeOpts {
    /// Address to listen on (port 0: pick one now and keep it).
    #[arg(long, default_value = "0.0.0.0:0")]
    listen: SocketAddr,
    /// Disk offered to the grid (e.g. 50GiB).
    #[arg(long, value_parser = size::parse_size)]
    capacity: Option<u64>,
    /// Store nothing for others (a client-only device).
    #[arg(long)]
    no_storage: bool,
}

fn default_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cairn"))
        .unwrap_or_else(|| PathBuf::from(".cairn"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the outermost context and its causes, joined.
            let mut line = e.to_string();
            for cause in e.chain().skip(1) {
                let cause = cause.to_string();
                if !line.contains(&cause) {
                    line.push_str(": ");
                    line.push_str(&cause);
                }
            }
            eprintln!("error: {line}");
            ExitCode::FAILURE
        }
    }
}

/// Whether the error is stdout closed by its reader (`cairn check CAP | head`): not worth a word.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Init {
            dir,
            k,
            n,
            happy,
            node,
            json,
        } => {
            let happy = happy.unwrap_or_else(|| k.saturating_add(1).min(n));
            let encoding = Encoding::new(k, n, happy)?;
            let dir = NodeDir::new(dir.dir);
            let id = setup::init_grid(&dir, &init_options(&node, encoding))?;
            if json.json {
                print_json(&serde_json::json!({ "node": id, "dir": dir.root() }))?;
            } else {
                outln!(
                    "created a new grid ({k}-of-{n}, happy {happy}) in {}",
                    dir.root().display()
                );
                outln!("start it with: cairn run --dir {}", dir.root().display());
                outln!("node id: {id}");
                print_recovery_kit(&dir)?;
            }
            Ok(())
        }
        Command::Join {
            code,
            dir,
            node,
            json,
        } => {
            let code = code.parse()?;
            let dir = NodeDir::new(dir.dir);
            let id = setup::join_grid(&dir, &code, &init_options(&node, Encoding::DEFAULT)).await?;
            if json.json {
                print_json(&serde_json::json!({ "node": id, "dir": dir.root() }))?;
            } else {
                outln!(
                    "joined the grid; start the node with: cairn run --dir {}",
                    dir.root().display()
                );
                outln!("node id: {id}");
                print_recovery_kit(&dir)?;
            }
            Ok(())
        }
        Command::Run { dir } => run_daemon(NodeDir::new(dir.dir)).await,
        Command::Stop { dir } => quickstart::stop(&dir.dir).await,
        Command::Mount {
            mountpoint,
            cap,
            background,
            dir,
        } => mount(&dir.dir, &mountpoint, cap, background).await,
        Command::Unmount { mountpoint, dir } => {
            let mountpoint = absolute(&mountpoint)?;
            call(
                &dir.dir,
                &ControlRequest::Unmount {
                    mountpoint: mountpoint.to_string_lossy().into_owned(),
                },
            )
            .await?;
            Ok(())
        }
        Command::Web {
            dir,
            print_url,
            print_token,
        } => web(&NodeDir::new(dir.dir), print_url, print_token),
        Command::Invite {
            dir,
            ttl_hours,
            json,
        } => {
            let code = call(
                &dir.dir,
                &ControlRequest::Invite {
                    ttl_secs: ttl_hours.saturating_mul(3600),
                },
            )
            .await?;
            let code = code.as_str().context("node answered without a code")?;
            if json.json {
                print_json(&serde_json::json!({ "code": code }))?;
            } else {
                outln!(
                    "one-time invite, valid {ttl_hours} h; on the new device run: cairn join CODE --dir DIR"
                );
                outln!("{code}");
            }
            Ok(())
        }
        Command::Revoke { node, dir, json } => {
            let node: NodeId = node
                .parse()
                .with_context(|| format!("{node:?} is not a node id (64 hex characters)"))?;
            let value = call(&dir.dir, &ControlRequest::Revoke { node }).await?;
            if json.json {
                return print_json(&value);
            }
            outln!("revoked {node}; members refuse it from their next gossip round");
            Ok(())
        }
        Command::Pin {
            path: None,
            dir,
            json,
        } => {
            let value = call(&dir.dir, &ControlRequest::Pins).await?;
            if json.json {
                return print_json(&value);
            }
            let pins: Vec<PinReport> = serde_json::from_value(value)?;
            if pins.is_empty() {
                outln!("no pins");
            }
            for pin in pins {
                outln!("{}", pin_line(&pin));
            }
            Ok(())
        }
        Command::Pin {
            path: Some(path),
            dir,
            json,
        } => {
            let value = call(&dir.dir, &ControlRequest::Pin { path }).await?;
            if json.json {
                return print_json(&value);
            }
            let pin: PinReport = serde_json::from_value(value)?;
            outln!(
                "pinned {} ({} fetched now)",
                pin_line(&pin),
                size::human(pin.fetched_bytes)
            );
            Ok(())
        }
        Command::Unpin { path, dir, json } => {
            let value = call(&dir.dir, &ControlRequest::Unpin { path }).await?;
            if json.json {
                return print_json(&value);
            }
            let pin: PinReport = serde_json::from_value(value)?;
            outln!("unpinned {}", pin.location);
            Ok(())
        }
        Command::Put {
            file,
            path,
            dir,
            private,
            json,
        } => {
            let (report, linked) =
                put_file(&NodeDir::new(dir.dir), &file, path, private, !json.json).await?;
            if json.json {
                let mut value = serde_json::to_value(&report)?;
                if let (Some(path), Some(map)) = (&linked, value.as_object_mut()) {
                    map.insert("path".into(), Value::String(path.clone()));
                }
                print_json(&value)?;
            } else {
                for w in &report.warnings {
                    eprintln!("warning: {w}");
                }
                if let Some(path) = linked {
                    eprintln!("linked at {path}");
                }
                outln!("{}", report.cap);
            }
            Ok(())
        }
        Command::Ls {
            path,
            long,
            dir,
            json,
        } => tree::ls(&dir.dir, &path, long, json.json).await,
        Command::Mkdir { path, parents, dir } => {
            call(&dir.dir, &ControlRequest::Mkdir { path, parents }).await?;
            Ok(())
        }
        Command::Rm {
            path,
            recursive,
            dir,
        } => {
            call(&dir.dir, &ControlRequest::Rm { path, recursive }).await?;
            Ok(())
        }
        Command::Mv { source, dest, dir } => {
            call(
                &dir.dir,
                &ControlRequest::Mv {
                    from: source,
                    to: dest,
                },
            )
            .await?;
            Ok(())
        }
        Command::Ln {
            symbolic,
            target,
            path,
            dir,
        } => {
            if !symbolic {
                bail!("only symbolic links exist in cairn: use `cairn ln -s TARGET PATH`");
            }
            call(&dir.dir, &ControlRequest::Symlink { target, path }).await?;
            Ok(())
        }
        Command::Share { path, write, dir } => {
            let cap = call(&dir.dir, &ControlRequest::Share { path, write }).await?;
            outln!("{}", cap.as_str().unwrap_or_default());
            Ok(())
        }
        Command::Attach { cap, name, dir } => {
            call(&dir.dir, &ControlRequest::Attach { cap, path: name }).await?;
            Ok(())
        }
        Command::Cp {
            recursive,
            source,
            dest,
            dir,
            json,
        } => tree::cp(&dir.dir, &source, &dest, recursive, json.json).await,
        Command::Get {
            cap,
            output,
            dir,
            json,
        } => {
            let size = get_file(&NodeDir::new(dir.dir), &cap, &output, !json.json).await?;
            if json.json {
                print_json(&serde_json::json!({ "size": size, "output": output }))?;
            }
            Ok(())
        }
        Command::Status { dir, json } => {
            let value = call(&dir.dir, &ControlRequest::Status).await?;
            if json.json {
                return print_json(&value);
            }
            let status: StatusReport = serde_json::from_value(value)?;
            print_status(&status)?;
            Ok(())
        }
        Command::Check { cap, dir, json } => {
            cap.parse::<Cap>()?;
            let value = call(&dir.dir, &ControlRequest::Check { cap }).await?;
            let report: CheckReport = serde_json::from_value(value.clone())?;
            if json.json {
                print_json(&value)?;
            } else {
                print_check(&report)?;
            }
            if !report.readable {
                bail!(
                    "file is not readable: some chunks have fewer than {} shares",
                    report.k
                );
            }
            Ok(())
        }
        Command::Quickstart(args) => quickstart::run(args).await,
    }
}

/// Tells where the root directory's writecap lives and how to print it (never the secret
/// itself: terminal scrollback and logs keep what they are shown).
fn print_recovery_kit(dir: &NodeDir) -> Result<()> {
    let key = dir.root_dir_key();
    outln!(
        "your root directory's writecap is in {} (mode 0600); back it up: \
         `cairn share / --write --dir {}` prints it, and whoever holds it can read and change \
         everything under your root",
        key.display(),
        dir.root().display()
    );
    Ok(())
}

fn init_options(node: &NodeOpts, encoding: Encoding) -> InitOptions {
    InitOptions {
        encoding,
        listen: node.listen,
        capacity_bytes: node.capacity,
        storage: !node.no_storage,
    }
}

/// Sends a JSON-only command to the node at `dir`.
pub(crate) async fn call(dir: &std::path::Path, request: &ControlRequest) -> Result<Value> {
    let client = ControlClient::connect(&NodeDir::new(dir)).await?;
    Ok(client.call(request).await?)
}

/// `cairn web`: the login link (or the API token) of the running node's web UI.
fn web(dir: &NodeDir, print_url: bool, print_token: bool) -> Result<()> {
    if print_token {
        outln!("{}", cairn_web::api_token(dir)?);
        return Ok(());
    }
    if !cairn_node::control::is_running(dir) {
        bail!(cairn_web::WebError::NotRunning(dir.root().to_path_buf()));
    }
    let url = cairn_web::login_url(dir)?;
    if !print_url {
        eprintln!(
            "open this one-time login link in a browser on this machine (valid {} minutes; the certificate is self-signed):",
            cairn_web::LOGIN_TTL.as_secs() / 60
        );
    }
    outln!("{url}");
    Ok(())
}

/// `path` made absolute (against the current directory), for the daemon.
fn absolute(path: &std::path::Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("{}", path.display()))
}

/// `cairn mount`: asks the node to mount, then holds the mount until Ctrl-C (or the node ends
/// it).
async fn mount(
    dir: &std::path::Path,
    mountpoint: &std::path::Path,
    cap: Option<String>,
    background: bool,
) -> Result<()> {
    let mountpoint = absolute(mountpoint)?;
    let meta = std::fs::metadata(&mountpoint)
        .with_context(|| format!("mount point {}", mountpoint.display()))?;
    if !meta.is_dir() {
        bail!("mount point {}: not a directory", mountpoint.display());
    }
    let client = ControlClient::connect(&NodeDir::new(dir)).await?;
    let request = ControlRequest::Mount {
        mountpoint: mountpoint.to_string_lossy().into_owned(),
        cap,
        background,
    };
    if background {
        client.call(&request).await?;
        eprintln!("mounted at {}", mountpoint.display());
        return Ok(());
    }
    let shown = mountpoint.display().to_string();
    let ended_by_node = client
        .hold_mount(
            &request,
            || eprintln!("mounted at {shown} (Ctrl-C or `cairn unmount {shown}` to unmount)"),
            async {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
                }
            },
        )
        .await?;
    if ended_by_node {
        eprintln!("unmounted {shown}");
    } else {
        // Hanging up unmounts; wait until the node has done it, so the shell sees it gone.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while cairn_fuse::is_mount_point(&mountpoint) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!("unmounted {shown}");
    }
    Ok(())
}

async fn run_daemon(dir: NodeDir) -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,cairn=info,cairn_node=info,cairn_net=info".into()),
        )
        .init();
    let node = Node::start(&dir).await?;
    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        on_signal.cancel();
    });
    tracing::info!(node = %node.id(), addrs = ?node.addrs(), "listening");
    let web_config = cairn_node::NodeConfig::load(&dir.config())?.web;
    let web = tokio::spawn(cairn_web::serve(
        node.clone(),
        dir.clone(),
        web_config,
        stop.clone(),
    ));
    let mounts = cairn_fuse::Mounts::start(node.clone());
    let mounter: std::sync::Arc<dyn cairn_node::control::Mounter> = mounts.clone();
    let served = cairn_node::control::serve_with(node.clone(), stop.clone(), Some(mounter)).await;
    mounts.unmount_all().await;
    stop.cancel();
    match web.await {
        Ok(Err(e)) => tracing::error!(error = %e, "web UI stopped"),
        Err(e) => tracing::error!(error = %e, "web UI task failed"),
        Ok(Ok(())) => {}
    }
    node.shutdown().await;
    drop(node);
    // Last: `cairn stop` waits for the socket to go.
    cairn_node::control::remove_socket(&dir);
    served?;
    Ok(())
}

fn progress_bar(len: Option<u64>, show: bool) -> ProgressBar {
    if !show || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match len {
        Some(len) => ProgressBar::new(len),
        None => ProgressBar::no_length(),
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Puts `file` (and links it at `path`); returns the report and the path linked.
async fn put_file(
    dir: &NodeDir,
    file: &std::path::Path,
    path: Option<String>,
    private: bool,
    show: bool,
) -> Result<(PutReport, Option<String>)> {
    let client = ControlClient::connect(dir).await?;
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|_| file.as_os_str() != "-");
    let value = if file.as_os_str() == "-" {
        let request = ControlRequest::Put {
            private,
            path,
            name,
            meta: FileMeta::default(),
            fd: false,
        };
        let bar = progress_bar(None, show);
        let v = client
            .put(&request, tokio::io::stdin(), |n| bar.set_position(n))
            .await;
        bar.finish_and_clear();
        v?
    } else {
        let f =
            std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
        let metadata = f.metadata().ok();
        if metadata.as_ref().is_some_and(std::fs::Metadata::is_dir) {
            bail!(
                "cannot put {}: it is a directory (use cairn cp -r)",
                file.display()
            );
        }
        let request = ControlRequest::Put {
            private,
            path,
            name,
            meta: metadata.as_ref().map(tree::file_meta).unwrap_or_default(),
            fd: true,
        };
        let len = metadata.map(|m| m.len());
        let bar = progress_bar(len, show);
        let v = client.put_file(request, f, |n| bar.set_position(n)).await;
        bar.finish_and_clear();
        v?
    };
    if value.get("put").is_some() {
        let path = value["path"].as_str().map(str::to_owned);
        return Ok((serde_json::from_value(value["put"].clone())?, path));
    }
    Ok((serde_json::from_value(value)?, None))
}

pub(crate) async fn get_file(
    dir: &NodeDir,
    cap: &str,
    output: &std::path::Path,
    show: bool,
) -> Result<u64> {
    // A cap is checked here, before any output file exists; a path is resolved by the node.
    let is_path = !cap.trim().to_ascii_lowercase().starts_with("cairn:") || cap.contains('/');
    let size = if is_path {
        None
    } else {
        Some(cap.parse::<Cap>()?.size())
    };
    let client = ControlClient::connect(dir).await?;
    let bar = progress_bar(size, show);
    if output.as_os_str() == "-" {
        let mut out = tokio::io::stdout();
        let r = client.get(cap, &mut out, |n| bar.set_position(n)).await;
        bar.finish_and_clear();
        return Ok(r?["size"].as_u64().unwrap_or_default());
    }
    // Write beside the target and rename at the end: a failed get leaves no partial file.
    let name = output
        .file_name()
        .context("output path has no file name")?
        .to_string_lossy()
        .to_string();
    let tmp = output.with_file_name(format!(".{name}.cairn-partial"));
    let mut file = tokio::fs::File::create(&tmp)
        .await
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    let result = client.get(cap, &mut file, |n| bar.set_position(n)).await;
    bar.finish_and_clear();
    let finished = match result {
        Ok(reply) => file
            .sync_all()
            .await
            .context("cannot write the output file")
            .map(|()| reply["size"].as_u64().unwrap_or_default()),
        Err(e) => Err(e.into()),
    };
    drop(file);
    let size = match finished {
        Ok(size) => size,
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
    };
    if let Err(e) = tokio::fs::rename(&tmp, output).await {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e)
            .with_context(|| format!("cannot move the file into place at {}", output.display()));
    }
    Ok(size)
}

fn print_status(s: &StatusReport) -> Result<()> {
    outln!(
        "node      {}{}",
        s.node,
        if s.admin { " (admin)" } else { "" }
    );
    outln!("grid      {}", s.grid);
    outln!(
        "encoding  {}-of-{}, happy {}",
        s.encoding.k,
        s.encoding.n,
        s.encoding.happy
    );
    let addrs: Vec<String> = s.addrs.iter().map(|a| a.to_string()).collect();
    outln!("listening {}", addrs.join(", "));
    outln!(
        "storage   {} used of {} offered, {} shares",
        size::human(s.storage.used_bytes),
        size::human(s.storage.offered_bytes),
        s.storage.shares
    );
    let g = &s.grid_space;
    outln!(
        "  grid    {} used of {} offered, {} free, on {} storage node{}{}",
        size::human(g.used_bytes),
        size::human(g.offered_bytes),
        size::human(g.free_bytes),
        g.nodes,
        if g.nodes == 1 { "" } else { "s" },
        if g.unknown > 0 {
            format!(" ({} more not answering, not counted)", g.unknown)
        } else {
            String::new()
        }
    );
    outln!("peers     {}", s.peers.len());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for p in &s.peers {
        let addr = p
            .addrs
            .first()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into());
        let seen = match p.last_contact {
            Some(t) => format!(
                "{} ago",
                humantime(Duration::from_secs(now.saturating_sub(t)))
            ),
            None => "never".into(),
        };
        outln!(
            "  {} {:7} {:21} last contact {:>10}  sent {:>9}  received {:>9}",
            p.id.fmt_short(),
            if p.online { "online" } else { "offline" },
            addr,
            seen,
            size::human(p.sent),
            size::human(p.received)
        );
    }
    let a = &s.activity;
    outln!(
        "activity  put {} files ({}), read {} files ({}), served {} shares",
        a.files_put,
        size::human(a.bytes_put),
        a.files_got,
        size::human(a.bytes_got),
        a.shares_served
    );
    let c = &s.cache;
    outln!(
        "cache     {} in {} blocks ({} pinned), budget {}",
        size::human(c.bytes),
        c.blocks,
        size::human(c.pinned_bytes),
        size::human(c.budget_bytes)
    );
    if !s.revoked.is_empty() {
        let ids: Vec<String> = s.revoked.iter().map(|id| id.fmt_short()).collect();
        outln!("revoked   {}", ids.join(", "));
    }
    if !s.conflicts.is_empty() {
        outln!("conflicts (concurrent writes kept side by side; see `cairn ls -l`):");
        for c in &s.conflicts {
            outln!("  {}  {} entries", c.path, c.lines);
        }
    }
    Ok(())
}

/// One pin as `cairn pin` lists it.
fn pin_line(pin: &PinReport) -> String {
    format!(
        "{}: {} files, {} directories, {}",
        pin.location,
        pin.files,
        pin.dirs,
        size::human(pin.bytes)
    )
}

fn humantime(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn print_check(r: &CheckReport) -> Result<()> {
    outln!(
        "{} bytes, {}-of-{}: {}",
        r.size,
        r.k,
        r.n,
        if r.healthy {
            "healthy"
        } else if r.readable {
            "readable, but some shares are missing"
        } else {
            "NOT readable"
        }
    );
    for c in &r.chunks {
        let holders: Vec<String> = c
            .holders
            .iter()
            .map(|(node, idx)| {
                let idx: Vec<String> = idx.iter().map(|i| i.to_string()).collect();
                format!("{}:[{}]", node.fmt_short(), idx.join(","))
            })
            .collect();
        outln!(
            "  {:10} found {}/{} (need {})  {}",
            c.what,
            c.found,
            c.total,
            c.need,
            holders.join(" ")
        );
    }
    Ok(())
}

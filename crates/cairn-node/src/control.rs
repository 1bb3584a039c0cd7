//! The local control API: how the `cairn` CLI talks to its running node.
//!
//! A Unix socket at `DIR/control.sock` (mode 0600: only the node's owner may use it). Each
//! connection carries one command. Frames are a `u32` LE length and a payload whose first byte
//! says what it is: `J` a JSON message, `D` file data, `E` end of data. The client sends a
//! [`ControlRequest`]; `put` follows it with data frames and an end frame; the node answers
//! with a JSON [`ControlReply`], which for `get` is preceded by the file's data frames.
//! A put whose data stops without an end frame is abandoned: nothing half-read is stored
//! under a cap. A put of a local file can instead pass the open file itself (`fd: true`): one
//! byte `F` carrying the descriptor (`SCM_RIGHTS`) follows the request, and the node reads the
//! file with no copy through the socket; the client hanging up abandons that put too.

use std::io::{self, IoSlice, IoSliceMut, Seek};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use cairn_core::cap::Cap;
use cairn_dir::{Content, FileRef, Meta};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::io::StreamReader;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::NodeError;
use crate::dir::NodeDir;
use crate::node::Node;
use crate::put::{PutOptions, PutReport};

const TAG_JSON: u8 = b'J';
const TAG_DATA: u8 = b'D';
const TAG_END: u8 = b'E';
/// The one byte that carries a passed file descriptor.
const TAG_FD: u8 = b'F';
/// How often a client putting a passed file reports progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);
/// The largest control frame.
const MAX_CONTROL_FRAME: usize = 4 * 1024 * 1024;
/// Bytes per data frame.
const DATA_FRAME: usize = 1024 * 1024;
/// The most files one [`ControlRequest::PutMany`] or [`ControlRequest::GetMany`] may carry.
pub const MAX_MANY_FILES: usize = 1024;
/// The most bytes (all files together) one `PutMany` or `GetMany` may carry.
pub const MAX_MANY_BYTES: u64 = 32 * 1024 * 1024;

/// A command for the node.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum ControlRequest {
    /// The node's status.
    Status,
    /// Store the data that follows.
    Put {
        /// Random keys instead of convergent ones.
        private: bool,
        /// Where to link the file in the tree (a directory, or `dir/` + `name`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<String>,
        /// The local file's name, used when `path` is a directory.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// The local file's mode and mtime.
        #[serde(default)]
        meta: FileMeta,
        /// The data is not streamed: the client passes the open file right after this request
        /// (see the module docs), and the node reads it to its end.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        fd: bool,
    },
    /// Send the file named by the cap or path.
    Get {
        /// The cap, or a path in the tree (`/a/b`, `CAP/a/b`).
        cap: String,
    },
    /// List a directory.
    Ls {
        /// Path or cap.
        path: String,
    },
    /// Create a directory.
    Mkdir {
        /// Path.
        path: String,
        /// Create missing parents; an existing directory is fine.
        parents: bool,
    },
    /// Remove an entry.
    Rm {
        /// Path.
        path: String,
        /// Allow removing a directory.
        recursive: bool,
    },
    /// Move or rename an entry.
    Mv {
        /// From.
        from: String,
        /// To (into it, when it is a directory).
        to: String,
    },
    /// Create a symlink.
    Symlink {
        /// The link's target text.
        target: String,
        /// Where to create it.
        path: String,
    },
    /// Print the cap of an entry.
    Share {
        /// Path.
        path: String,
        /// The writecap of a directory instead of its readcap.
        write: bool,
    },
    /// Link a cap into the tree.
    Attach {
        /// The cap.
        cap: String,
        /// Where.
        path: String,
    },
    /// Link many files into one directory in one version.
    LinkMany {
        /// The directory.
        path: String,
        /// The files.
        items: Vec<LinkItem>,
    },
    /// Every entry below a directory.
    Walk {
        /// The directory.
        path: String,
    },
    /// Count the shares of the file named by the cap.
    Check {
        /// The cap.
        cap: String,
    },
    /// Store many small files: the data of each follows, in order, as data frames and an end
    /// frame. The answer lists one reply per file.
    PutMany {
        /// Random keys instead of convergent ones.
        private: bool,
        /// Each file's size in bytes.
        sizes: Vec<u64>,
    },
    /// Send many small files whole: for each, in order, its data frames and an end frame, or a
    /// JSON reply with its error.
    GetMany {
        /// The files' caps.
        caps: Vec<String>,
    },
    /// Issue an invite code.
    Invite {
        /// Seconds it stays valid.
        ttl_secs: u64,
    },
    /// Revoke a member (admin nodes only).
    Revoke {
        /// The node's id.
        node: cairn_core::id::NodeId,
    },
    /// Keep a directory tree (or a file) on this node for offline use, or bring its pin up to
    /// date.
    Pin {
        /// Path or cap.
        path: String,
    },
    /// Release a pin.
    Unpin {
        /// The path or cap as pinned.
        path: String,
    },
    /// List the pins.
    Pins,
    /// Exchange rosters with every member now.
    Gossip,
    /// Stop the node.
    Stop,
    /// Mount the tree (or the directory `cap`) at `mountpoint` with FUSE. The node answers once
    /// mounted; unless `background`, the mount lasts while the connection stays open.
    Mount {
        /// An absolute path to an existing empty directory.
        mountpoint: String,
        /// A directory cap to mount instead of the node's root.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cap: Option<String>,
        /// Answer at once and keep the mount after the connection closes.
        #[serde(default)]
        background: bool,
    },
    /// Unmount a mount made by this node.
    Unmount {
        /// The mount point, as given to `Mount`.
        mountpoint: String,
    },
}

/// The future a [`Mounter`] returns.
pub type MountFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, NodeError>> + Send + 'a>>;

/// Mounts the tree as a file system: implemented by `cairn-fuse` and handed to
/// [`serve_with`] by the daemon (the node cannot depend on the FUSE crate).
pub trait Mounter: Send + Sync {
    /// Mounts `cap` (or the root) at `mountpoint`. The receiver completes when the mount ends
    /// for any reason (unmounted by [`Mounter::unmount`], `umount`, or the node stopping).
    fn mount<'a>(
        &'a self,
        mountpoint: &'a Path,
        cap: Option<&'a str>,
    ) -> MountFuture<'a, tokio::sync::oneshot::Receiver<()>>;
    /// Unmounts the mount at `mountpoint`.
    fn unmount<'a>(&'a self, mountpoint: &'a Path) -> MountFuture<'a, ()>;
}

/// A local file's mode and modification time, as sent by the CLI.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct FileMeta {
    /// Unix permission bits (0: use 0644).
    pub mode: u32,
    /// Modification time, ns since the epoch (0: now).
    pub mtime_ns: i64,
}

/// One file for [`ControlRequest::LinkMany`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LinkItem {
    /// Name in the directory.
    pub name: String,
    /// The file's cap.
    pub cap: String,
    /// Mode and mtime.
    pub meta: FileMeta,
}

/// One entry of a [`ControlRequest::Walk`] answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TreeEntry {
    /// Path relative to the walked directory.
    pub path: String,
    /// `file`, `dir` or `symlink`.
    pub kind: String,
    /// A file's cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cap: Option<String>,
    /// A symlink's target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Mode and mtime.
    pub meta: FileMeta,
    /// Size in bytes.
    pub size: u64,
}

/// The node's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ControlReply {
    /// The result, on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<Value>,
    /// A one-line error, on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, tag: u8, body: &[u8]) -> io::Result<()> {
    let len = (body.len() + 1) as u32;
    w.write_all(&len.to_le_bytes()).await?;
    w.write_all(&[tag]).await?;
    w.write_all(body).await
}

async fn write_json<W: AsyncWrite + Unpin, T: Serialize>(w: &mut W, value: &T) -> io::Result<()> {
    let body = serde_json::to_vec(value).map_err(io::Error::other)?;
    write_frame(w, TAG_JSON, &body).await?;
    w.flush().await
}

/// Reads one frame: its tag and body. `Ok(None)` at a clean end of stream.
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 || len > MAX_CONTROL_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad control frame length",
        ));
    }
    let mut tag = [0u8; 1];
    r.read_exact(&mut tag).await?;
    let mut body = vec![0u8; len - 1];
    r.read_exact(&mut body).await?;
    Ok(Some((tag[0], body)))
}

fn reply<T: Serialize>(result: Result<T, NodeError>) -> ControlReply {
    match result {
        Ok(v) => ControlReply {
            ok: Some(serde_json::to_value(v).unwrap_or(Value::Null)),
            error: None,
        },
        Err(e) => ControlReply {
            ok: None,
            error: Some(e.to_string()),
        },
    }
}

/// Serves the control socket until `stop` is cancelled (or a client sends `stop`).
pub async fn serve(node: Node, stop: CancellationToken) -> Result<(), NodeError> {
    serve_with(node, stop, None).await
}

/// [`serve`], with a [`Mounter`] that answers `Mount` and `Unmount` (without one they fail).
pub async fn serve_with(
    node: Node,
    stop: CancellationToken,
    mounter: Option<std::sync::Arc<dyn Mounter>>,
) -> Result<(), NodeError> {
    let path = node.dir().control_socket();
    let listener = bind_socket(node.dir().root(), &path).await?;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let node = node.clone();
                let stop = stop.clone();
                let mounter = mounter.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(node, stream, stop, mounter).await {
                        debug!(error = %e, "control connection ended");
                    }
                });
            }
        }
    }
    Ok(())
}

/// Removes the control socket: the last thing a stopping node does, so that `cairn stop` can
/// wait for it to go.
pub fn remove_socket(dir: &NodeDir) {
    let _ = std::fs::remove_file(dir.control_socket());
}

/// Whether a node answers on the control socket at `dir`.
pub fn is_running(dir: &NodeDir) -> bool {
    std::os::unix::net::UnixStream::connect(dir.control_socket()).is_ok()
}

async fn bind_socket(dir: &Path, path: &Path) -> Result<UnixListener, NodeError> {
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(NodeError::AlreadyRunning(dir.to_path_buf()));
        }
        // A socket left by a node that died: nobody listens, so it is safe to replace.
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path).map_err(|e| NodeError::io(path, e))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| NodeError::io(path, e))?;
    Ok(listener)
}

async fn handle(
    node: Node,
    mut stream: UnixStream,
    stop: CancellationToken,
    mounter: Option<std::sync::Arc<dyn Mounter>>,
) -> io::Result<()> {
    let Some((TAG_JSON, body)) = read_frame(&mut stream).await? else {
        return Ok(());
    };
    let request: ControlRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            let r = ControlReply {
                ok: None,
                error: Some(format!("bad control request: {e}")),
            };
            return write_json(&mut stream, &r).await;
        }
    };
    let answer = match request {
        ControlRequest::Status => reply(node.status().await),
        ControlRequest::Check { cap } => match cap.parse::<Cap>() {
            Ok(cap) => reply(node.check(&cap).await),
            Err(e) => reply::<()>(Err(e.into())),
        },
        ControlRequest::Invite { ttl_secs } => reply(
            node.create_invite(std::time::Duration::from_secs(ttl_secs))
                .map(|c| c.to_string()),
        ),
        ControlRequest::Revoke { node: target } => reply(
            node.revoke(target)
                .await
                .map(|r| serde_json::json!({ "node": r.node(), "revoked_at": r.revoked_at() })),
        ),
        ControlRequest::Pin { path } => reply(node.pin(&path).await),
        ControlRequest::Unpin { path } => reply(node.unpin(&path).await),
        ControlRequest::Pins => reply(node.pins().await),
        ControlRequest::Gossip => {
            node.gossip_now().await;
            reply(Ok(()))
        }
        ControlRequest::Stop => {
            stop.cancel();
            reply(Ok(()))
        }
        ControlRequest::Put {
            private,
            path,
            name,
            meta,
            fd,
        } => {
            let put = if fd {
                handle_put_fd(&node, &stream, private).await
            } else {
                handle_put(&node, &mut stream, private).await
            };
            match path {
                Some(path) => link_put(&node, put, &path, name.as_deref(), meta).await,
                None => reply(put),
            }
        }
        ControlRequest::Get { cap } => return handle_get(&node, stream, &cap).await,
        ControlRequest::PutMany { private, sizes } => {
            match handle_put_many(&node, &mut stream, private, &sizes).await {
                Ok(replies) => ControlReply {
                    ok: Some(serde_json::to_value(replies).unwrap_or(Value::Null)),
                    error: None,
                },
                Err(e) => reply::<()>(Err(e)),
            }
        }
        ControlRequest::GetMany { caps } => return handle_get_many(&node, stream, &caps).await,
        ControlRequest::Ls { path } => reply(node.ls(&path).await),
        ControlRequest::Mkdir { path, parents } => reply(node.mkdir(&path, parents).await),
        ControlRequest::Rm { path, recursive } => reply(node.rm(&path, recursive).await),
        ControlRequest::Mv { from, to } => reply(node.mv(&from, &to).await),
        ControlRequest::Symlink { target, path } => reply(node.symlink(&target, &path).await),
        ControlRequest::Share { path, write } => reply(node.share(&path, write).await),
        ControlRequest::Attach { cap, path } => reply(node.attach(&cap, &path).await),
        ControlRequest::LinkMany { path, items } => reply(link_many(&node, &path, items).await),
        ControlRequest::Walk { path } => reply(walk(&node, &path).await),
        ControlRequest::Mount {
            mountpoint,
            cap,
            background,
        } => {
            return handle_mount(stream, stop, mounter, &mountpoint, cap, background).await;
        }
        ControlRequest::Unmount { mountpoint } => match mounter {
            Some(m) => reply(m.unmount(Path::new(&mountpoint)).await),
            None => reply::<()>(Err(no_mounter())),
        },
    };
    write_json(&mut stream, &answer).await
}

fn no_mounter() -> NodeError {
    NodeError::Invalid("this node was started without FUSE mount support".into())
}

/// Mounts, answers, then holds the mount while the client stays connected (unless
/// `background`): the client going away, the node stopping or the mount ending otherwise
/// (`umount`) each end it.
async fn handle_mount(
    mut stream: UnixStream,
    stop: CancellationToken,
    mounter: Option<std::sync::Arc<dyn Mounter>>,
    mountpoint: &str,
    cap: Option<String>,
    background: bool,
) -> io::Result<()> {
    let Some(mounter) = mounter else {
        return write_json(&mut stream, &reply::<()>(Err(no_mounter()))).await;
    };
    let path = Path::new(mountpoint);
    let ended = match mounter.mount(path, cap.as_deref()).await {
        Ok(ended) => ended,
        Err(e) => return write_json(&mut stream, &reply::<()>(Err(e))).await,
    };
    write_json(&mut stream, &reply(Ok(mountpoint))).await?;
    if background {
        return Ok(());
    }
    let client_gone = async {
        // The client sends nothing more: any frame or the end of the stream means it is done.
        let _ = read_frame(&mut stream).await;
    };
    tokio::select! {
        _ = client_gone => {
            if let Err(e) = mounter.unmount(path).await {
                warn!(error = %e, "unmount after the client left failed");
            }
            return Ok(());
        }
        _ = stop.cancelled() => {
            if let Err(e) = mounter.unmount(path).await {
                warn!(error = %e, "unmount at stop failed");
            }
        }
        _ = ended => {}
    }
    // The mount ended here: say so, so the client tells it from the node going away.
    write_json(&mut stream, &reply(Ok("unmounted"))).await
}

fn file_meta(meta: FileMeta) -> Meta {
    Meta {
        mode: if meta.mode == 0 {
            0o644
        } else {
            meta.mode & 0o7777
        },
        mtime_ns: if meta.mtime_ns == 0 {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as i64)
                .unwrap_or(0)
        } else {
            meta.mtime_ns
        },
        ..Default::default()
    }
}

fn file_content(cap: &str, meta: FileMeta) -> Result<Content, NodeError> {
    let cap: Cap = cap.parse()?;
    let file = FileRef::new(cap)
        .ok_or_else(|| NodeError::Invalid("only file caps can be linked as files".into()))?;
    Ok(Content::File {
        file,
        meta: file_meta(meta),
    })
}

/// Links a finished put at `path`; the reply carries the put report and the final path.
async fn link_put(
    node: &Node,
    put: Result<PutReport, NodeError>,
    path: &str,
    name: Option<&str>,
    meta: FileMeta,
) -> ControlReply {
    let linked = async {
        let report = put?;
        let content = file_content(&report.cap, meta)?;
        let path = node.link_file(path, name, content).await?;
        Ok::<_, NodeError>(serde_json::json!({ "put": report, "path": path }))
    };
    reply(linked.await)
}

async fn link_many(node: &Node, path: &str, items: Vec<LinkItem>) -> Result<usize, NodeError> {
    let mut entries = Vec::with_capacity(items.len());
    for item in items {
        entries.push((item.name, file_content(&item.cap, item.meta)?));
    }
    node.link_many(path, entries).await
}

async fn walk(node: &Node, path: &str) -> Result<Vec<TreeEntry>, NodeError> {
    let entries = node.walk_tree(path).await?;
    Ok(entries
        .into_iter()
        .map(|(path, content)| {
            let meta = content.meta();
            let meta = FileMeta {
                mode: meta.mode,
                mtime_ns: meta.mtime_ns,
            };
            let size = content.size();
            match content {
                Content::File { file, .. } => TreeEntry {
                    path,
                    kind: "file".into(),
                    cap: Some(file.cap().to_string()),
                    target: None,
                    meta,
                    size,
                },
                Content::Dir { .. } => TreeEntry {
                    path,
                    kind: "dir".into(),
                    cap: None,
                    target: None,
                    meta,
                    size,
                },
                Content::Symlink { target, .. } => TreeEntry {
                    path,
                    kind: "symlink".into(),
                    cap: None,
                    target: Some(target),
                    meta,
                    size,
                },
            }
        })
        .collect())
}

async fn handle_put(
    node: &Node,
    stream: &mut UnixStream,
    private: bool,
) -> Result<PutReport, NodeError> {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(8);
    let (mut read_half, _write_half) = stream.split();
    let pump = async move {
        loop {
            match read_frame(&mut read_half).await {
                Ok(Some((TAG_DATA, body))) => {
                    if tx.send(Ok(Bytes::from(body))).await.is_err() {
                        return;
                    }
                }
                Ok(Some((TAG_END, _))) => return,
                other => {
                    let why = match other {
                        Err(e) => e.to_string(),
                        _ => "client went away before the end of the data".into(),
                    };
                    let _ = tx
                        .send(Err(io::Error::new(io::ErrorKind::UnexpectedEof, why)))
                        .await;
                    return;
                }
            }
        }
    };
    let reader = StreamReader::new(futures_util::stream::poll_fn({
        let mut rx = rx;
        move |cx| rx.poll_recv(cx)
    }));
    let put = node.put(
        reader,
        PutOptions {
            private,
            ..Default::default()
        },
    );
    let ((), result) = tokio::join!(pump, put);
    if let Err(e) = &result {
        warn!(error = %e, "put failed");
    }
    result
}

/// A put of a file the client passed: the node reads it itself. The client hanging up before
/// the answer abandons the put.
async fn handle_put_fd(
    node: &Node,
    stream: &UnixStream,
    private: bool,
) -> Result<PutReport, NodeError> {
    let fd = recv_fd(stream)
        .await
        .map_err(|e| NodeError::Control(format!("cannot take the file to put: {e}")))?;
    let put = node.put_blocking(
        std::fs::File::from(fd),
        PutOptions {
            private,
            ..Default::default()
        },
    );
    let result = tokio::select! {
        result = put => result,
        () = client_gone(stream) => Err(NodeError::Aborted(
            "the client went away before the put ended".into(),
        )),
    };
    if let Err(e) = &result {
        warn!(error = %e, "put failed");
    }
    result
}

/// Returns once the client has hung up (or its socket failed); data it sends meanwhile is
/// dropped.
async fn client_gone(stream: &UnixStream) {
    let mut sink = [0u8; 64];
    loop {
        if stream.readable().await.is_err() {
            return;
        }
        match stream.try_read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// Passes `file` to the other end of `stream`: one byte [`TAG_FD`] carrying it (`SCM_RIGHTS`).
async fn send_fd(stream: &UnixStream, file: BorrowedFd<'_>) -> io::Result<()> {
    loop {
        stream.writable().await?;
        let sent = stream.try_io(Interest::WRITABLE, || {
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            let fds = [file];
            if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
                return Err(io::Error::other("no room to pass a file descriptor"));
            }
            rustix::net::sendmsg(
                stream,
                &[IoSlice::new(&[TAG_FD])],
                &mut control,
                SendFlags::NOSIGNAL,
            )
            .map_err(io::Error::from)
        });
        match sent {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Takes the file descriptor the client passes with [`send_fd`].
async fn recv_fd(stream: &UnixStream) -> io::Result<OwnedFd> {
    loop {
        stream.readable().await?;
        let got = stream.try_io(Interest::READABLE, || {
            let mut byte = [0u8; 1];
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let msg = rustix::net::recvmsg(
                stream,
                &mut [IoSliceMut::new(&mut byte)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            )?;
            let fd = control.drain().find_map(|message| match message {
                RecvAncillaryMessage::ScmRights(mut fds) => fds.next(),
                _ => None,
            });
            Ok((msg.bytes, byte[0], fd))
        });
        return match got {
            Ok((1, TAG_FD, Some(fd))) => Ok(fd),
            Ok((0, _, _)) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the client went away before passing its file",
            )),
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "expected a file descriptor after the request",
            )),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => Err(e),
        };
    }
}

fn many_bounds(count: usize, bytes: u64) -> Result<(), NodeError> {
    if count > MAX_MANY_FILES || bytes > MAX_MANY_BYTES {
        return Err(NodeError::Invalid(format!(
            "a batch may hold at most {MAX_MANY_FILES} files and {MAX_MANY_BYTES} bytes (got {count} files, {bytes} bytes)"
        )));
    }
    Ok(())
}

/// Reads the files of a [`ControlRequest::PutMany`] (each exactly its announced size) and puts
/// them; one reply per file.
async fn handle_put_many(
    node: &Node,
    stream: &mut UnixStream,
    private: bool,
    sizes: &[u64],
) -> Result<Vec<ControlReply>, NodeError> {
    many_bounds(
        sizes.len(),
        sizes.iter().fold(0u64, |a, s| a.saturating_add(*s)),
    )?;
    let mut files = Vec::with_capacity(sizes.len());
    for &size in sizes {
        let mut data = Vec::with_capacity(size as usize);
        loop {
            match read_frame(stream).await {
                Ok(Some((TAG_DATA, body))) => {
                    if data.len() as u64 + body.len() as u64 > size {
                        return Err(NodeError::Invalid(
                            "a file of the batch is longer than its announced size".into(),
                        ));
                    }
                    data.extend_from_slice(&body);
                }
                Ok(Some((TAG_END, _))) if data.len() as u64 == size => break,
                Ok(Some((TAG_END, _))) => {
                    return Err(NodeError::Invalid(
                        "a file of the batch is shorter than its announced size".into(),
                    ));
                }
                Ok(_) => {
                    return Err(NodeError::Aborted(
                        "client went away before the end of the data".into(),
                    ));
                }
                Err(e) => return Err(NodeError::Aborted(e.to_string())),
            }
        }
        files.push(data);
    }
    let results = node
        .put_many(
            files,
            PutOptions {
                private,
                ..Default::default()
            },
        )
        .await;
    Ok(results
        .into_iter()
        .map(|r| {
            if let Err(e) = &r {
                warn!(error = %e, "put failed");
            }
            reply(r)
        })
        .collect())
}

/// Answers a [`ControlRequest::GetMany`]: per file its data and an end frame, or its error.
async fn handle_get_many(node: &Node, mut stream: UnixStream, caps: &[String]) -> io::Result<()> {
    let parsed: Vec<Result<Cap, NodeError>> = caps
        .iter()
        .map(|c| c.parse::<Cap>().map_err(NodeError::from))
        .collect();
    let bytes = parsed.iter().fold(0u64, |a, c| match c {
        Ok(Cap::Read(r)) => a.saturating_add(r.size),
        _ => a,
    });
    if let Err(e) = many_bounds(caps.len(), bytes) {
        // Refused whole: still one answer per file, then the batch's own.
        let refused = reply::<()>(Err(e));
        for _ in caps {
            write_json(&mut stream, &refused).await?;
        }
        return write_json(&mut stream, &refused).await;
    }
    let good: Vec<Cap> = parsed
        .iter()
        .filter_map(|c| c.as_ref().ok().cloned())
        .collect();
    let mut fetched = node.get_many(&good).await.into_iter();
    for cap in parsed {
        let result = match cap {
            Ok(_) => fetched
                .next()
                .unwrap_or_else(|| Err(NodeError::Control("file not fetched".into()))),
            Err(e) => Err(e),
        };
        match result {
            Ok(data) => {
                for part in data.chunks(DATA_FRAME) {
                    write_frame(&mut stream, TAG_DATA, part).await?;
                }
                write_frame(&mut stream, TAG_END, &[]).await?;
            }
            Err(e) => {
                warn!(error = %e, "get failed");
                write_json(&mut stream, &reply::<()>(Err(e))).await?;
            }
        }
    }
    write_json(&mut stream, &reply(Ok(()))).await
}

async fn handle_get(node: &Node, mut stream: UnixStream, cap: &str) -> io::Result<()> {
    let is_cap = cap.trim().to_ascii_lowercase().starts_with("cairn:") && !cap.contains('/');
    let cap = if is_cap {
        cap.parse::<Cap>().map_err(NodeError::from)
    } else {
        node.resolve_file(cap).await
    };
    let cap = match cap {
        Ok(c) => c,
        Err(e) => return write_json(&mut stream, &reply::<()>(Err(e))).await,
    };
    let (mut pipe_in, mut pipe_out) = tokio::io::duplex(DATA_FRAME);
    let (_read_half, mut write_half) = stream.split();
    let get = async move {
        let r = node.get(&cap, &mut pipe_in).await;
        drop(pipe_in);
        r
    };
    let pump = async {
        let mut buf = vec![0u8; DATA_FRAME];
        loop {
            let n = pipe_out.read(&mut buf).await?;
            if n == 0 {
                return write_frame(&mut write_half, TAG_END, &[]).await;
            }
            write_frame(&mut write_half, TAG_DATA, &buf[..n]).await?;
        }
    };
    let (result, pumped) = tokio::join!(get, pump);
    pumped?;
    write_json(&mut write_half, &reply(result)).await
}

/// The CLI's side of the control socket.
#[derive(Debug)]
pub struct ControlClient {
    stream: UnixStream,
}

impl ControlClient {
    /// Connects to the node at `dir`; a clear error when it is not initialised or not running.
    pub async fn connect(dir: &NodeDir) -> Result<ControlClient, NodeError> {
        dir.require_initialised()?;
        let path = dir.control_socket();
        match UnixStream::connect(&path).await {
            Ok(stream) => Ok(ControlClient { stream }),
            Err(_) => Err(NodeError::NotRunning(dir.root().to_path_buf())),
        }
    }

    async fn read_reply(&mut self) -> Result<Value, NodeError> {
        loop {
            let frame = read_frame(&mut self.stream)
                .await
                .map_err(|e| NodeError::Control(e.to_string()))?;
            match frame {
                Some((TAG_JSON, body)) => {
                    let reply: ControlReply = serde_json::from_slice(&body)
                        .map_err(|e| NodeError::Control(e.to_string()))?;
                    return match (reply.ok, reply.error) {
                        (_, Some(e)) => Err(NodeError::Remote(e)),
                        (Some(v), None) => Ok(v),
                        (None, None) => Ok(Value::Null),
                    };
                }
                Some(_) => continue,
                None => {
                    return Err(NodeError::Control(
                        "the node closed the connection without answering".into(),
                    ));
                }
            }
        }
    }

    /// Sends a command that takes and returns only JSON.
    pub async fn call(mut self, request: &ControlRequest) -> Result<Value, NodeError> {
        write_json(&mut self.stream, request)
            .await
            .map_err(|e| NodeError::Control(e.to_string()))?;
        self.read_reply().await
    }

    /// Streams `data` to the node for a put (`request` is a [`ControlRequest::Put`]); `progress`
    /// is called with the bytes sent so far.
    pub async fn put<R: AsyncRead + Unpin>(
        mut self,
        request: &ControlRequest,
        mut data: R,
        mut progress: impl FnMut(u64),
    ) -> Result<Value, NodeError> {
        write_json(&mut self.stream, request)
            .await
            .map_err(|e| NodeError::Control(e.to_string()))?;
        let mut buf = vec![0u8; DATA_FRAME];
        let mut sent = 0u64;
        loop {
            let n = match data.read(&mut buf).await {
                Ok(n) => n,
                // The input failed: hang up without an end frame, so the node abandons the put.
                Err(e) => return Err(NodeError::Input(e.to_string())),
            };
            let written = if n == 0 {
                write_frame(&mut self.stream, TAG_END, &[]).await
            } else {
                write_frame(&mut self.stream, TAG_DATA, &buf[..n]).await
            };
            if let Err(e) = written {
                // The node may have stopped reading because the put failed: its answer says why.
                return self
                    .read_reply()
                    .await
                    .and(Err(NodeError::Aborted(e.to_string())));
            }
            if n == 0 {
                return self.read_reply().await;
            }
            sent += n as u64;
            progress(sent);
        }
    }

    /// Puts the local file `file` by passing it to the node, which reads it itself: no copy
    /// goes through the socket. `request` is a [`ControlRequest::Put`] (its `fd` is set
    /// here); `progress` is called with how far the node has read, every 100 ms.
    pub async fn put_file(
        mut self,
        mut request: ControlRequest,
        file: std::fs::File,
        mut progress: impl FnMut(u64),
    ) -> Result<Value, NodeError> {
        if let ControlRequest::Put { fd, .. } = &mut request {
            *fd = true;
        }
        write_json(&mut self.stream, &request)
            .await
            .map_err(|e| NodeError::Control(e.to_string()))?;
        send_fd(&self.stream, file.as_fd())
            .await
            .map_err(|e| NodeError::Control(format!("cannot pass the file to the node: {e}")))?;
        let mut tick = tokio::time::interval(PROGRESS_EVERY);
        let reply = self.read_reply();
        tokio::pin!(reply);
        loop {
            tokio::select! {
                answer = &mut reply => return answer,
                _ = tick.tick() => {
                    // The node reads through the same open file, so its offset is the progress.
                    if let Ok(at) = (&file).stream_position() {
                        progress(at);
                    }
                }
            }
        }
    }

    /// Sends a [`ControlRequest::Mount`]; once the node has mounted, calls `mounted` and
    /// holds the mount until `until` completes (then hangs up, which unmounts) or the node
    /// ends the mount. Returns whether the node ended it; an error when the node went away
    /// without a word (it died).
    pub async fn hold_mount(
        mut self,
        request: &ControlRequest,
        mounted: impl FnOnce(),
        until: impl std::future::Future<Output = ()>,
    ) -> Result<bool, NodeError> {
        write_json(&mut self.stream, request)
            .await
            .map_err(|e| NodeError::Control(e.to_string()))?;
        self.read_reply().await?;
        mounted();
        tokio::select! {
            _ = until => Ok(false),
            frame = read_frame(&mut self.stream) => match frame {
                Ok(Some((TAG_JSON, _))) => Ok(true),
                _ => Err(NodeError::Control(
                    "the node stopped answering; the mount is gone".into(),
                )),
            },
        }
    }

    /// Puts many small files in one batch ([`ControlRequest::PutMany`]); one result per file.
    pub async fn put_many(
        mut self,
        private: bool,
        files: &[Vec<u8>],
    ) -> Result<Vec<Result<Value, NodeError>>, NodeError> {
        let request = ControlRequest::PutMany {
            private,
            sizes: files.iter().map(|f| f.len() as u64).collect(),
        };
        let control = |e: io::Error| NodeError::Control(e.to_string());
        write_json(&mut self.stream, &request)
            .await
            .map_err(control)?;
        for file in files {
            for part in file.chunks(DATA_FRAME) {
                write_frame(&mut self.stream, TAG_DATA, part)
                    .await
                    .map_err(control)?;
            }
            write_frame(&mut self.stream, TAG_END, &[])
                .await
                .map_err(control)?;
        }
        self.stream.flush().await.map_err(control)?;
        let value = self.read_reply().await?;
        let replies: Vec<ControlReply> =
            serde_json::from_value(value).map_err(|e| NodeError::Control(e.to_string()))?;
        if replies.len() != files.len() {
            return Err(NodeError::Control(
                "the node answered for a different number of files".into(),
            ));
        }
        Ok(replies
            .into_iter()
            .map(|r| match (r.ok, r.error) {
                (_, Some(e)) => Err(NodeError::Remote(e)),
                (ok, None) => Ok(ok.unwrap_or(Value::Null)),
            })
            .collect())
    }

    /// Fetches many small files whole in one batch ([`ControlRequest::GetMany`]); one result
    /// per cap.
    pub async fn get_many(
        mut self,
        caps: &[String],
    ) -> Result<Vec<Result<Vec<u8>, NodeError>>, NodeError> {
        let request = ControlRequest::GetMany {
            caps: caps.to_vec(),
        };
        let control = |e: io::Error| NodeError::Control(e.to_string());
        write_json(&mut self.stream, &request)
            .await
            .map_err(control)?;
        let mut out = Vec::with_capacity(caps.len());
        let mut data = Vec::new();
        while out.len() < caps.len() {
            match read_frame(&mut self.stream).await.map_err(control)? {
                Some((TAG_DATA, body)) => data.extend_from_slice(&body),
                Some((TAG_END, _)) => out.push(Ok(std::mem::take(&mut data))),
                Some((TAG_JSON, body)) => {
                    let reply: ControlReply = serde_json::from_slice(&body)
                        .map_err(|e| NodeError::Control(e.to_string()))?;
                    let error = reply.error.unwrap_or_else(|| "no data".into());
                    data.clear();
                    out.push(Err(NodeError::Remote(error)));
                }
                _ => {
                    return Err(NodeError::Control(
                        "the node closed the connection mid-transfer".into(),
                    ));
                }
            }
        }
        self.read_reply().await?;
        Ok(out)
    }

    /// Fetches the file named by `cap` into `out`; `progress` gets the bytes received so far.
    pub async fn get<W: AsyncWrite + Unpin>(
        mut self,
        cap: &str,
        out: &mut W,
        mut progress: impl FnMut(u64),
    ) -> Result<Value, NodeError> {
        let request = ControlRequest::Get {
            cap: cap.to_string(),
        };
        write_json(&mut self.stream, &request)
            .await
            .map_err(|e| NodeError::Control(e.to_string()))?;
        let mut received = 0u64;
        loop {
            let frame = read_frame(&mut self.stream)
                .await
                .map_err(|e| NodeError::Control(e.to_string()))?;
            match frame {
                Some((TAG_DATA, body)) => {
                    out.write_all(&body)
                        .await
                        .map_err(|e| NodeError::Aborted(e.to_string()))?;
                    received += body.len() as u64;
                    progress(received);
                }
                Some((TAG_END, _)) => break,
                Some((TAG_JSON, body)) => {
                    // An answer before any data: the get failed at once.
                    let reply: ControlReply = serde_json::from_slice(&body)
                        .map_err(|e| NodeError::Control(e.to_string()))?;
                    return match reply.error {
                        Some(e) => Err(NodeError::Remote(e)),
                        None => Ok(reply.ok.unwrap_or(Value::Null)),
                    };
                }
                _ => {
                    return Err(NodeError::Control(
                        "the node closed the connection mid-transfer".into(),
                    ));
                }
            }
        }
        out.flush()
            .await
            .map_err(|e| NodeError::Aborted(e.to_string()))?;
        self.read_reply().await
    }
}

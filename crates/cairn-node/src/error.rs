//! Errors of the node.
//!
//! Rules: every variant says what a person can act on (which dir, which chunk, found vs need);
//! errors from lower crates are wrapped with the context of the operation, keeping the source;
//! `NodeError` is what crosses the control API, as its one-line `Display`.

use std::path::{Path, PathBuf};

use cairn_core::id::ShareRoot;

/// A failed node operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The node directory does not exist or was never initialised.
    #[error("{} is not an initialised cairn node directory (run `cairn init --dir {}` or `cairn join CODE --dir {}`)", .0.display(), .0.display(), .0.display())]
    NotInitialised(PathBuf),
    /// The node directory already holds a node.
    #[error("{} already holds a cairn node", .0.display())]
    AlreadyInitialised(PathBuf),
    /// The daemon is not running.
    #[error("the node at {} is not running (start it with `cairn run --dir {}`)", .0.display(), .0.display())]
    NotRunning(PathBuf),
    /// The daemon is already running.
    #[error("a node is already running at {}", .0.display())]
    AlreadyRunning(PathBuf),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A config file is invalid.
    #[error("{}: {detail}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A key or certificate file is damaged.
    #[error("{}: damaged ({detail})", path.display())]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A capability string did not parse.
    #[error("{0}")]
    BadCap(#[from] cairn_core::cap::CapError),
    /// An invite code did not parse.
    #[error("{0}")]
    BadInvite(#[from] cairn_core::wire::InviteError),
    /// The admin refused the invite.
    #[error("join refused: {0}")]
    JoinRefused(cairn_core::wire::JoinRefusal),
    /// A network exchange failed where no other peer could stand in.
    #[error("{0}")]
    Net(#[from] cairn_net::NetError),
    /// Not enough shares could be found for a chunk.
    #[error("not enough shares for chunk {}: found {found}, need {need}", root.fmt_short())]
    NotEnoughShares {
        /// The chunk's share root.
        root: ShareRoot,
        /// Distinct valid shares found.
        found: usize,
        /// Shares needed (k).
        need: usize,
    },
    /// A put could not place shares on enough distinct nodes.
    #[error("put failed: shares of chunk {} landed on {placed} distinct nodes, need at least {happy} (too many nodes offline or full)", root.fmt_short())]
    NotHappy {
        /// The chunk.
        root: ShareRoot,
        /// Distinct nodes that took a share.
        placed: usize,
        /// The grid's `happy` threshold.
        happy: usize,
    },
    /// Data did not verify.
    #[error("{0}")]
    Core(#[from] cairn_core::CoreError),
    /// The local store failed.
    #[error("local store: {0}")]
    Store(#[from] cairn_store::StoreError),
    /// The node's metadata database failed.
    #[error("node database: {0}")]
    Db(String),
    /// The file is larger than one manifest can describe.
    #[error(
        "file too large: its manifest needs {needed} bytes per share, the limit is {limit} (tree manifests are not implemented yet)"
    )]
    TooLarge {
        /// Bytes per share the manifest would need.
        needed: usize,
        /// The limit.
        limit: usize,
    },
    /// This node cannot do that (e.g. invite without the grid key).
    #[error("{0}")]
    NotAllowed(&'static str),
    /// The local input could not be read.
    #[error("cannot read the input: {0}")]
    Input(String),
    /// The operation's input was cut off (the client went away).
    #[error("input ended early: {0}")]
    Aborted(String),
    /// A cap names data of another size than the data found.
    #[error("file size mismatch: the cap says {expected} bytes, the manifest says {got}")]
    SizeMismatch {
        /// From the cap.
        expected: u64,
        /// From the manifest.
        got: u64,
    },
    /// A verify cap cannot read.
    #[error("a verify capability can check a file but not read it")]
    VerifyCapCannotRead,
    /// A control API exchange failed.
    #[error("control API: {0}")]
    Control(String),
    /// Directory data was refused (a bad name, a version that does not verify).
    #[error("{0}")]
    Dir(#[from] cairn_dir::DirError),
    /// No holder of a directory answered.
    #[error("directory {0} is unreachable: none of its holders answered (are the nodes running?)")]
    DirUnreachable(String),
    /// The holders offered a directory state older than one this node has seen.
    #[error(
        "directory {0}: the holders that answered lack versions this node has already seen (rolled back or still catching up); try again when more nodes are up"
    )]
    DirRolledBack(String),
    /// No entry at a path.
    #[error("{0}: no such file or directory")]
    NotFound(String),
    /// A path names a file where a directory is needed.
    #[error("{0}: not a directory")]
    NotADirectory(String),
    /// A path names a directory where a file is needed.
    #[error("{0}: is a directory")]
    IsADirectory(String),
    /// The name is taken.
    #[error("{0}: already exists")]
    AlreadyExists(String),
    /// A write through a readcap.
    #[error("{0}: read-only capability (this directory was shared read-only)")]
    ReadOnly(String),
    /// A request that makes no sense for its target (moving a directory into itself, ...).
    #[error("{0}")]
    Invalid(String),
    /// The node reported an error (its one-line message, passed through).
    #[error("{0}")]
    Remote(String),
}

impl NodeError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> NodeError {
        NodeError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl From<redb::Error> for NodeError {
    fn from(e: redb::Error) -> Self {
        NodeError::Db(e.to_string())
    }
}

macro_rules! db_error_from {
    ($($t:ty),*) => {$(
        impl From<$t> for NodeError {
            fn from(e: $t) -> Self {
                NodeError::Db(e.to_string())
            }
        }
    )*};
}

db_error_from!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

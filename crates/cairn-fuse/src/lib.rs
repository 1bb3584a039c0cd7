//! `cairn mount`: the grid as a POSIX file system, with FUSE (fuser).
//!
//! The mount runs inside the node daemon and uses the in-process [`cairn_node::Node`] API.
//! [`Mounts`] owns the daemon's mounts and implements the control API's
//! [`Mounter`](cairn_node::control::Mounter) hook; `cairn run` creates it with
//! [`Mounts::start`] (which also clears mount points a killed daemon left behind and uploads
//! writes it had staged) and hands it to [`cairn_node::control::serve_with`].
//!
//! What works, the errno table, the hard-link choice and the consistency rules are in
//! `docs/specs/mount.md`.
//!
//! ```no_run
//! # async fn example(node: cairn_node::Node) -> Result<(), cairn_node::NodeError> {
//! let mounts = cairn_fuse::Mounts::start(node);
//! let ended = mounts.mount_at(std::path::Path::new("/mnt/grid"), None).await?;
//! // ... use /mnt/grid ...
//! mounts.unmount_at(std::path::Path::new("/mnt/grid")).await?;
//! let _ = ended.await;
//! # Ok(()) }
//! ```

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod dirmeta;
mod fs;
mod inode;
mod lazy;
mod mounts;
mod staging;

pub use fs::{
    LISTING_TTL, OP_TIMEOUT, READ_AHEAD, UPLOAD_AFTER_CLOSE, UPLOAD_AT_LEAST_EVERY,
    UPLOAD_WHEN_IDLE, UploadStats,
};
pub use mounts::{Mounts, is_mount_point};

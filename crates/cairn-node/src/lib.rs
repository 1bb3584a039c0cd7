//! The Cairn node as a library: the daemon behind `cairn run`.
//!
//! - [`Node`]: a running member of a grid: its share store, roster, network endpoint, and the
//!   put/get/check operations on top ([`Node::put`], [`Node::get`], [`Node::check`]), and
//!   the grid's storage space ([`Node::grid_space`]).
//! - [`setup`]: creating node directories ([`setup::init_grid`], [`setup::join_grid`]).
//! - [`control`]: the local control API the CLI uses ([`control::ControlClient`]).
//!
//! ```no_run
//! # async fn example() -> Result<(), cairn_node::NodeError> {
//! use cairn_node::{Node, NodeDir, PutOptions};
//! let node = Node::start(&NodeDir::new("/tmp/cairn-a")).await?;
//! let report = node.put(&b"hello, grid"[..], PutOptions::default()).await?;
//! println!("{}", report.cap);
//! # Ok(()) }
//! ```

mod activity;
mod blocks;
mod config;
pub mod control;
mod dir;
mod dirs;
mod error;
mod get;
mod meta;
mod moves;
mod node;
mod pins;
mod put;
mod read;
mod report;
mod revoke;
pub mod setup;
mod slots;
mod space;
mod tree;
mod watch;

pub use activity::ActivityReport;
pub use blocks::CacheUsage;
pub use config::{GridConfig, NodeConfig, WebConfig};
pub use dir::{NodeDir, NodeKeys};
pub use dirs::{DIR_REPLICAS, DirCap};
pub use error::NodeError;
pub use get::GetReport;
pub use node::{Node, SERVE_DELAY_ENV};
pub use pins::PinReport;
pub use put::{PutOptions, PutReport};
pub use read::{CACHED_CHUNKS, FileReader};
pub use report::{CheckReport, ChunkHealth, DirConflicts, PeerStatus, StatusReport, StorageStatus};
pub use space::{GridSpace, SPACE_CACHE_TTL, SPACE_TIMEOUT};
pub use tree::{Location, LsEntry, LsReport};

//! The node's settings (`node.toml`) and the grid facts it joined with (`grid.toml`).
//!
//! Every field has a default and a doc comment; unknown keys are errors, so a typo in a config
//! file is reported instead of silently ignored.

use std::net::SocketAddr;
use std::path::Path;

use cairn_core::Encoding;
use cairn_core::id::GridId;
use serde::{Deserialize, Serialize};

use crate::NodeError;

/// Settings of one node, loaded from `DIR/node.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Address the node listens on for other members (QUIC over UDP). The port is chosen at
    /// init and kept, so that other members find the node again after a restart.
    pub listen: SocketAddr,
    /// Bytes of disk this node offers to the grid for shares.
    pub capacity_bytes: u64,
    /// Whether this node stores shares for the grid.
    pub storage: bool,
    /// Seconds to wait for one answer from a peer before moving on to another holder.
    pub request_timeout_secs: u64,
    /// Days a share lease lasts before it must be renewed.
    pub lease_days: u64,
    /// Bytes of decrypted chunks the block cache (`DIR/cache`) keeps for reads through the
    /// mount and the web; pinned files are kept beyond it.
    pub block_cache_bytes: u64,
    /// Kernel read-ahead for this node's mounts, in KiB: how far ahead the kernel asks for a
    /// file read in order, so that it asks in fewer, larger requests. Setting it writes the
    /// mount's `/sys/class/bdi/*/read_ahead_kb`, which needs root; otherwise the kernel's
    /// default (128) stays. 0 leaves the kernel's default.
    pub mount_read_ahead_kib: u32,
    /// The web UI and JSON API (`[web]`).
    pub web: WebConfig,
}

/// Settings of the node's web UI and JSON API (the `[web]` table of `node.toml`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// Whether `cairn run` serves the web UI.
    pub enabled: bool,
    /// Address the web server listens on (HTTPS). Port 0 picks a free port at each start; the
    /// URL in use is written to `DIR/web/url`.
    pub listen: SocketAddr,
    /// Must be true to listen on an address other than loopback.
    pub allow_remote: bool,
    /// A PEM certificate chain to serve instead of the self-signed one made at first start.
    pub tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of `tls_cert`.
    pub tls_key: Option<std::path::PathBuf>,
    /// The largest file one upload may carry, in bytes.
    pub max_upload_bytes: u64,
    /// Whether `/metrics` answers without the API token.
    pub public_metrics: bool,
    /// Seconds a download link (`/d/ID`, made from a share link or a cap) stays valid.
    pub download_link_secs: u64,
    /// Hours a browser session lasts after login.
    pub session_hours: u64,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            allow_remote: false,
            tls_cert: None,
            tls_key: None,
            max_upload_bytes: 16 * 1024 * 1024 * 1024,
            public_metrics: false,
            download_link_secs: 30 * 60,
            session_hours: 12,
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            capacity_bytes: 100 * 1024 * 1024 * 1024,
            storage: true,
            request_timeout_secs: 30,
            lease_days: 31,
            block_cache_bytes: 2 * 1024 * 1024 * 1024,
            mount_read_ahead_kib: 4096,
            web: WebConfig::default(),
        }
    }
}

/// The grid this node belongs to, written at `init` or `join`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridConfig {
    /// The grid id (public half of the grid key), hex.
    pub grid: GridId,
    /// The grid's erasure coding.
    pub encoding: Encoding,
}

impl NodeConfig {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<NodeConfig, NodeError> {
        load_toml(path)
    }
}

impl GridConfig {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<GridConfig, NodeError> {
        let grid: GridConfig = load_toml(path)?;
        let e = grid.encoding;
        Encoding::new(e.k, e.n, e.happy).map_err(|err| NodeError::Config {
            path: path.to_path_buf(),
            detail: err.to_string(),
        })?;
        Ok(grid)
    }
}

pub(crate) fn load_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, NodeError> {
    let text = std::fs::read_to_string(path).map_err(|e| NodeError::io(path, e))?;
    toml::from_str(&text).map_err(|e| NodeError::Config {
        path: path.to_path_buf(),
        detail: e.message().to_string(),
    })
}

pub(crate) fn save_toml<T: Serialize>(path: &Path, value: &T) -> Result<(), NodeError> {
    let text = toml::to_string_pretty(value).map_err(|e| NodeError::Config {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    crate::dir::write_atomic(path, text.as_bytes(), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_config_parses() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).expect("config/ exists") {
            let path = entry.expect("readable").path();
            if path.extension().is_some_and(|e| e == "toml") {
                NodeConfig::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                seen += 1;
            }
        }
        assert!(seen > 0, "no example configs found in {dir}");
    }

    #[test]
    fn unknown_key_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "capacity_bytes = 5\nlisten_typo = 1\n").expect("write");
        let err = NodeConfig::load(&path).expect_err("unknown key");
        assert!(err.to_string().contains("listen_typo"), "{err}");
    }
}

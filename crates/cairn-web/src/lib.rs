//! The node's web UI and JSON API, served over HTTPS from inside the daemon (`cairn run`).
//!
//! - [`serve`]: binds `[web] listen` (loopback by default) and serves until stopped; the page
//!   and every `/api/` endpoint call the in-process [`cairn_node::Node`].
//! - [`WebServer`]: the same in two steps, for callers that want the URL first (tests).
//! - [`api_token`], [`login_url`]: what `cairn web --print-token` and `cairn web --print-url`
//!   print; they work on the files under `DIR/web/`, whose permissions are the trust boundary,
//!   like the control socket's.
//!
//! The API is documented in `docs/api/openapi.yaml`; the design in `docs/specs/web.md`.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use cairn_node::{Node, NodeConfig, NodeDir};
//! let dir = NodeDir::new("/tmp/cairn-a");
//! let node = Node::start(&dir).await?;
//! let config = NodeConfig::load(&dir.config())?.web;
//! let stop = tokio_util::sync::CancellationToken::new();
//! cairn_web::serve(node, dir, config, stop).await?;
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod api;
mod auth;
mod error;
mod files;
mod metrics;
mod pages;
mod server;
mod state;
mod tls;

pub use auth::{LOGIN_TTL, api_token, login_url, server_url, web_dir};
pub use error::WebError;
pub use server::{HANDSHAKE_TIMEOUT, MAX_CONNECTIONS, WebServer};

use cairn_node::{Node, NodeDir, WebConfig};
use tokio_util::sync::CancellationToken;

/// Serves the web UI of `node` (whose directory is `dir`) with `config` until `stop` is
/// cancelled. Returns at once when `config.enabled` is false.
pub async fn serve(
    node: Node,
    dir: NodeDir,
    config: WebConfig,
    stop: CancellationToken,
) -> Result<(), WebError> {
    if !config.enabled {
        return Ok(());
    }
    WebServer::bind(node, &dir, config).await?.run(stop).await
}

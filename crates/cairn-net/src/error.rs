//! Errors of the network layer.
//!
//! Each variant names the peer and what went wrong, so the node can decide whether to try
//! another holder (every variant is per-peer: the caller moves on to the next one).

use cairn_core::cert::CertError;
use cairn_core::id::NodeId;
use cairn_core::wire::WireError;

/// A failed exchange with one peer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// Binding the local endpoint failed.
    #[error("cannot open network endpoint on {addr}: {detail}")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// What iroh said.
        detail: String,
    },
    /// No connection could be made.
    #[error("cannot reach node {peer}: {detail}")]
    Connect {
        /// The peer dialled.
        peer: NodeId,
        /// What failed.
        detail: String,
    },
    /// The peer's certificate was refused.
    #[error("node {peer} is not a member of this grid: {source}")]
    NotMember {
        /// The peer.
        peer: NodeId,
        /// Why its certificate failed.
        source: CertError,
    },
    /// The peer refused us (closed the connection during the handshake).
    #[error("node {peer} refused the connection: {detail}")]
    Refused {
        /// The peer.
        peer: NodeId,
        /// What it said.
        detail: String,
    },
    /// The stream broke mid-exchange.
    #[error("connection to node {peer} failed: {detail}")]
    Stream {
        /// The peer.
        peer: NodeId,
        /// What failed.
        detail: String,
    },
    /// The peer sent bytes that are not a valid message.
    #[error("node {peer} sent an invalid message: {source}")]
    Garbage {
        /// The peer.
        peer: NodeId,
        /// The decoding error.
        source: WireError,
    },
    /// The peer did not answer in time.
    #[error("node {peer} did not answer within {secs} s")]
    Timeout {
        /// The peer.
        peer: NodeId,
        /// The deadline.
        secs: u64,
    },
}

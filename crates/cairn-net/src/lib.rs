//! Cairn's network layer: one iroh endpoint per node speaking the Cairn protocols.
//!
//! - [`Net`] owns the endpoint, dials members on demand (one cached QUIC connection per peer),
//!   and serves inbound connections.
//! - Every member connection starts with a certificate exchange ([`cairn_core::wire::Hello`]):
//!   each side checks that the other's certificate was signed by the grid key, has not expired,
//!   and names exactly the peer's QUIC-authenticated node id. A failure closes the connection
//!   before a single request is read.
//! - Inbound requests are handed to a [`ShareService`] that the node implements; this crate
//!   knows nothing of storage.
//! - Nodes without a certificate may only speak the join protocol, handled by a [`JoinService`].
//!
//! Every frame is bounded by [`cairn_core::wire::MAX_FRAME`], and every read has a deadline.

mod error;
mod frame;
mod net;

pub use error::NetError;
pub use net::{BoxFuture, JoinService, Membership, Net, NetConfig, PeerCounters, ShareService};

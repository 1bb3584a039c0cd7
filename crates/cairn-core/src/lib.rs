//! Cairn's pure core: everything that turns bytes into encrypted, erasure-coded shares and back,
//! the capability strings that name them, member certificates, wire messages and placement.
//!
//! No I/O lives here: no tokio, no file system, no sockets. Randomness and time are parameters.
//!
//! The put pipeline of one chunk (see `docs/specs/encoding.md`):
//! [`Chunker`] cuts a stream with FastCDC; [`seal_chunk`] compresses (zstd-1 or raw), derives the
//! key ([`KeyMode::Convergent`] or [`KeyMode::Private`]), encrypts (AES-256-GCM) and erasure-codes
//! the ciphertext into `n` shares listed by a [`ChunkHeader`] whose hash is the [`ShareRoot`].
//! A [`ManifestBuilder`] collects the chunks of a file into a [`Manifest`] (itself stored as a
//! blob with [`encode_blob`]); its share root and read key make the [`ReadCap`]. The get
//! pipeline is [`verify_header`], [`ChunkHeader::verify_share`], then [`open_chunk`].

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod error;

pub mod cap;
pub mod cert;
pub mod chunk;
pub mod compress;
pub mod crypto;
pub mod erasure;
pub mod id;
pub mod manifest;
pub mod placement;
pub mod rechunk;
#[cfg(test)]
mod test_bytes;
pub mod wire;

pub use cap::{
    Cap, CapError, DirReadCap, DirWriteCap, INLINE_LIMIT, LiteralCap, ReadCap, VerifyCap, slot_of,
};
pub use chunk::{Chunker, KeyMode, SealedChunk, open_chunk, seal_chunk};
pub use crypto::{ChunkKey, ConvergenceSecret, ReadKey};
pub use erasure::{ChunkHeader, decode_blob, encode_blob, verify_header};
pub use error::{CoreError, FormatError};
pub use id::{ChunkId, Encoding, GridId, NodeId, ShareRoot, SlotId, VersionId};
pub use manifest::{ChunkRef, Manifest, ManifestBuilder};
pub use placement::rank;

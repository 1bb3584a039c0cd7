//! The error type of directory data: names, versions, edits.

use cairn_core::SlotId;

/// Everything the directory core can refuse. Bytes from a peer never panic: they end here.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DirError {
    /// A name a directory cannot hold.
    #[error("invalid name {name:?}: it {reason}")]
    BadName {
        /// The name (first 64 characters, NUL shown as `\0`).
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The version's bytes do not decode.
    #[error("malformed directory version: {0}")]
    Malformed(postcard::Error),
    /// The version decodes, but not from its canonical encoding.
    #[error("directory version is not in canonical encoding")]
    NotCanonical,
    /// The version's format byte is not one this build reads.
    #[error("unsupported directory version format {0}")]
    UnsupportedFormat(u8),
    /// A list in the version is longer than allowed.
    #[error("directory version lists {got} {what}, limit {max}")]
    TooMany {
        /// Which list.
        what: &'static str,
        /// Items found.
        got: usize,
        /// The limit.
        max: usize,
    },
    /// The verifying key is not a valid ed25519 point.
    #[error("directory version carries an invalid verifying key")]
    BadKey,
    /// The signature does not verify: the version was forged or altered.
    #[error("directory version signature does not verify (forged or altered)")]
    BadSignature,
    /// The version belongs to another slot than the one asked for.
    #[error("version is for slot {got:?}, expected {expected:?}")]
    WrongSlot {
        /// The slot asked for.
        expected: SlotId,
        /// The slot of the version's key.
        got: SlotId,
    },
    /// The body does not decrypt with this readcap.
    #[error("directory version does not decrypt with this cap")]
    Decrypt,
    /// The decrypted body does not decode.
    #[error("malformed directory version body: {0}")]
    MalformedBody(postcard::Error),
    /// An edit named an entry the directory does not have.
    #[error("no such entry")]
    NoSuchEntry,
    /// A subdirectory's writecap cannot be opened without the parent's writecap.
    #[error("read-only capability: the directory's writecap is needed")]
    ReadOnly,
}

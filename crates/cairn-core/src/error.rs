//! The error type of cairn-core's data path.
//!
//! Rules for this crate (STYLE.md section 4):
//! - One enum, [`CoreError`], `#[non_exhaustive]`, for everything the data path can refuse:
//!   decoding untrusted bytes (headers, manifests, shares, payloads), key and id text, encodings.
//!   Cap parsing has its own [`CapError`](crate::cap::CapError) (it is user input with user-facing
//!   messages) and certificates have [`CertError`](crate::cert::CertError).
//! - Variants carry the facts needed to act: which share index, expected vs got lengths, which
//!   limit. Decoding problems of a versioned format go through [`FormatError`], wrapped by the
//!   variant naming the format ([`CoreError::BadHeader`], [`CoreError::BadManifest`]).
//! - Errors of dependencies are converted here, at the boundary where they happen; a variant
//!   never holds a free-form message. Bytes from a peer never panic: they end in one of these.
//! - All of these are permanent for the given input: retrying with the same bytes gives the same
//!   error. The caller's remedy is another source (another share holder, another node), except
//!   for [`CoreError::Io`], which comes from the caller's own reader.
//! - Secrets (keys, caps) never appear in an error.

use crate::id::ChunkId;

/// Everything the data path of cairn-core can refuse.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoreError {
    /// An erasure encoding that breaks `1 <= k <= happy <= n <= MAX_SHARES`.
    #[error("invalid encoding {k}-of-{n} (happy {happy}): need 1 <= k <= happy <= n <= {max}")]
    InvalidEncoding {
        /// Shares needed to read.
        k: u8,
        /// Shares written.
        n: u8,
        /// Distinct servers needed for an upload to count as healthy.
        happy: u8,
        /// The largest `n` supported.
        max: u8,
    },
    /// The reader given to the chunker failed.
    #[error("reading the input failed")]
    Io(#[from] std::io::Error),
    /// A payload (flag byte + bytes) is empty or has an unknown flag.
    #[error("payload flag {flag:?} is not 0 (raw) or 1 (zstd)")]
    BadPayloadFlag {
        /// The flag byte found, `None` when the payload was empty.
        flag: Option<u8>,
    },
    /// zstd refused the compressed payload, or it would exceed the expected length.
    #[error("decompression failed (expected {expected} bytes)")]
    DecompressionFailed {
        /// The plaintext length the manifest promised.
        expected: usize,
        /// zstd's error.
        #[source]
        source: std::io::Error,
    },
    /// The decoded payload has another length than the manifest promised.
    #[error("decoded payload is {got} bytes, expected {expected}")]
    Decompression {
        /// The plaintext length the manifest promised.
        expected: usize,
        /// The length decoded.
        got: usize,
    },
    /// AEAD decryption failed: wrong key, or the ciphertext was tampered with.
    #[error("decryption failed: wrong key or tampered ciphertext")]
    Aead,
    /// A blob (chunk ciphertext or manifest) is larger than the format allows.
    #[error("blob of {len} bytes is larger than the limit of {max}")]
    BlobTooLarge {
        /// The blob's length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// Share header bytes do not hash to the share root they were fetched under.
    #[error("share header does not match its share root")]
    RootMismatch,
    /// A chunk header could not be decoded.
    #[error("bad share header: {0}")]
    BadHeader(FormatError),
    /// A share index is not below `n`.
    #[error("share index {index} out of range (n = {n})")]
    ShareIndex {
        /// The index given.
        index: u8,
        /// Shares in the encoding.
        n: u8,
    },
    /// A share has the wrong length for its header.
    #[error("share {index} is {got} bytes, expected {expected}")]
    ShareLength {
        /// The share index.
        index: u8,
        /// The header's share length.
        expected: usize,
        /// The length received.
        got: usize,
    },
    /// A share's BLAKE3 hash differs from the one in its header.
    #[error("share {index} does not match its hash in the header")]
    ShareMismatch {
        /// The share index.
        index: u8,
    },
    /// Fewer distinct valid shares than `k` were given.
    #[error("not enough shares: have {have}, need {need}")]
    NotEnoughShares {
        /// Distinct valid shares given.
        have: usize,
        /// Shares needed (`k`).
        need: usize,
    },
    /// The decoded ciphertext does not hash to the chunk id of its header: the writer published
    /// inconsistent shares.
    #[error("decoded chunk hashes to {got}, header says {expected}")]
    ChunkIdMismatch {
        /// The chunk id in the header.
        expected: ChunkId,
        /// The hash of what was decoded.
        got: ChunkId,
    },
    /// The Reed-Solomon codec refused its input (a bug or a corrupted header; never expected).
    #[error("erasure codec failed for {k}-of-{n}")]
    Erasure {
        /// Shares needed.
        k: u8,
        /// Shares written.
        n: u8,
        /// The codec's error.
        #[source]
        source: reed_solomon_erasure::Error,
    },
    /// A file manifest could not be decoded or built.
    #[error("bad manifest: {0}")]
    BadManifest(FormatError),
    /// Text meant to be hex (an id or a key) is not valid hex.
    #[error("{what} is not valid hex")]
    BadHex {
        /// What was being parsed ("chunk id", "read key", ...).
        what: &'static str,
        /// The decoder's error.
        #[source]
        source: data_encoding::DecodeError,
    },
    /// Hex text of an id or key decodes to the wrong number of bytes.
    #[error("{what} must be {expected} bytes, got {got}")]
    BadLength {
        /// What was being parsed.
        what: &'static str,
        /// Bytes expected.
        expected: usize,
        /// Bytes decoded.
        got: usize,
    },
}

/// Why versioned bytes (a share header, a manifest) were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// No bytes at all.
    #[error("empty")]
    Empty,
    /// The leading version byte is not one this build reads.
    #[error("unsupported format version {got} (this build reads {supported})")]
    Version {
        /// The version this build reads.
        supported: u8,
        /// The version found.
        got: u8,
    },
    /// The body is not valid postcard for the format.
    #[error("malformed body: {0}")]
    Malformed(postcard::Error),
    /// The body decodes, but not from its one canonical encoding (trailing or overlong bytes).
    #[error("not in canonical encoding")]
    NotCanonical,
    /// `k` and `n` break `1 <= k <= n <= MAX_SHARES`.
    #[error("bad k-of-n {k}-of-{n}")]
    KofN {
        /// Shares needed.
        k: u8,
        /// Shares written.
        n: u8,
    },
    /// The list of share hashes does not have `n` entries.
    #[error("{got} share hashes for n = {n}")]
    ShareCount {
        /// Shares written.
        n: u8,
        /// Hashes listed.
        got: usize,
    },
    /// A length field is past its limit.
    #[error("{what} is {got}, limit {max}")]
    TooLarge {
        /// Which field.
        what: &'static str,
        /// The value found.
        got: u64,
        /// The limit.
        max: u64,
    },
    /// A chunk reference has a plaintext length of zero.
    #[error("chunk {index} has length 0")]
    EmptyChunk {
        /// Position of the chunk in the manifest.
        index: usize,
    },
    /// The chunk lengths do not add up to the file size.
    #[error("chunk lengths add up to {sum}, file size is {file_size}")]
    SizeMismatch {
        /// The manifest's file size.
        file_size: u64,
        /// The sum of its chunk lengths.
        sum: u64,
    },
    /// The encrypted read layer has the wrong length for the number of chunks.
    #[error("read layer is {got} bytes, expected {expected}")]
    ReadLayerLength {
        /// 32 bytes per chunk plus the 16-byte tag.
        expected: usize,
        /// The length found.
        got: usize,
    },
}

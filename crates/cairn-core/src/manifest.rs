//! The file manifest: what a readcap's share root points at.
//!
//! Two layers. The **verify layer** (file size, and per chunk its share root and plaintext
//! length) is in the clear, so a holder of the verifycap can check and repair every share. The
//! **read layer** is the chunk keys (32 bytes each, in chunk order), AES-256-GCM under the file's
//! [`ReadKey`] with a zero nonce and associated data `b"cairn-readlayer-v1"`.
//!
//! The manifest is stored as a blob itself: `encode_blob(manifest.encode())`, not encrypted as
//! a whole. Encoding: version byte, then postcard of `(file_size, chunks, read_layer)`.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::CoreError;
use crate::chunk::{KeyMode, MAX_CHUNK};
use crate::crypto::{ChunkKey, ReadKey, TAG_LEN, open_read_layer, seal_read_layer};
use crate::erasure::{MAX_BLOB_LEN, decode_versioned};
use crate::error::FormatError;
use crate::id::ShareRoot;

/// Version byte leading an encoded [`Manifest`].
pub const MANIFEST_VERSION: u8 = 1;
/// The most chunks one manifest lists (about 1 TiB of file at the average chunk size).
pub const MAX_MANIFEST_CHUNKS: usize = 1 << 20;
/// Upper bound of an encoded manifest with [`MAX_MANIFEST_CHUNKS`] chunks: version, file size
/// (varint, at most 10 bytes), chunk count (varint), per chunk 32 + 5 bytes, read layer length
/// (varint) and 32 bytes per chunk plus the tag. About 69 MiB.
pub const MAX_MANIFEST_BYTES: usize =
    1 + 10 + 10 + MAX_MANIFEST_CHUNKS * (32 + 5) + 10 + MAX_MANIFEST_CHUNKS * 32 + TAG_LEN;
/// Domain of the convergent read key derivation.
const READ_KEY_CONTEXT: &[u8] = b"cairn-readkey-v1";

const _: () = assert!(MAX_MANIFEST_BYTES <= MAX_BLOB_LEN as usize);

/// One chunk of a file, as the verify layer lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkRef {
    /// Where the chunk's shares live (commits to its header).
    pub root: ShareRoot,
    /// Plaintext length of the chunk.
    pub plain_len: u32,
}

/// A file manifest: verify layer in the clear, chunk keys encrypted under the read key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The file's length in bytes (the sum of the chunk lengths).
    pub file_size: u64,
    /// The chunks, in file order.
    pub chunks: Vec<ChunkRef>,
    /// AEAD of the concatenated chunk keys under the read key.
    read_layer: Vec<u8>,
}

impl Manifest {
    /// Canonical encoding: [`MANIFEST_VERSION`] then postcard.
    pub fn encode(&self) -> Vec<u8> {
        let out = Vec::with_capacity(16 + self.chunks.len() * 68 + TAG_LEN);
        let mut out = out;
        out.push(MANIFEST_VERSION);
        // Serializing integers, arrays and Vecs into a Vec cannot fail.
        #[allow(clippy::expect_used)]
        let out = postcard::to_extend(self, out).expect("postcard into a Vec is infallible");
        out
    }

    /// Decodes and checks a manifest: version, at most [`MAX_MANIFEST_CHUNKS`] chunks, chunk
    /// lengths in `1..=MAX_CHUNK` adding up to the file size, read layer of `32 * chunks + 16`
    /// bytes, canonical bytes only.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, CoreError> {
        let manifest: Manifest = decode_versioned(bytes, MANIFEST_VERSION, MAX_MANIFEST_BYTES)
            .map_err(CoreError::BadManifest)?;
        manifest.check().map_err(CoreError::BadManifest)?;
        if manifest.encode() != bytes {
            return Err(CoreError::BadManifest(FormatError::NotCanonical));
        }
        Ok(manifest)
    }

    fn check(&self) -> Result<(), FormatError> {
        if self.chunks.len() > MAX_MANIFEST_CHUNKS {
            return Err(FormatError::TooLarge {
                what: "chunk count",
                got: self.chunks.len() as u64,
                max: MAX_MANIFEST_CHUNKS as u64,
            });
        }
        let mut sum = 0u64;
        for (index, chunk) in self.chunks.iter().enumerate() {
            if chunk.plain_len == 0 {
                return Err(FormatError::EmptyChunk { index });
            }
            if chunk.plain_len > MAX_CHUNK {
                return Err(FormatError::TooLarge {
                    what: "chunk length",
                    got: chunk.plain_len.into(),
                    max: MAX_CHUNK.into(),
                });
            }
            sum += u64::from(chunk.plain_len);
        }
        if sum != self.file_size {
            return Err(FormatError::SizeMismatch {
                file_size: self.file_size,
                sum,
            });
        }
        let expected = self.chunks.len() * 32 + TAG_LEN;
        if self.read_layer.len() != expected {
            return Err(FormatError::ReadLayerLength {
                expected,
                got: self.read_layer.len(),
            });
        }
        Ok(())
    }

    /// The chunks, in file order.
    pub fn chunks(&self) -> &[ChunkRef] {
        &self.chunks
    }

    /// Decrypts the read layer: one key per chunk, in order. [`CoreError::Aead`] on a wrong key.
    pub fn chunk_keys(&self, key: &ReadKey) -> Result<Vec<ChunkKey>, CoreError> {
        let plain = open_read_layer(key, &self.read_layer)?;
        if plain.len() != self.chunks.len() * 32 {
            return Err(CoreError::BadManifest(FormatError::ReadLayerLength {
                expected: self.chunks.len() * 32 + TAG_LEN,
                got: self.read_layer.len(),
            }));
        }
        Ok(plain
            .chunks_exact(32)
            .map(|bytes| {
                let mut array = [0u8; 32];
                array.copy_from_slice(bytes);
                let key = ChunkKey::from_bytes(array);
                zeroize::Zeroize::zeroize(&mut array);
                key
            })
            .collect())
    }
}

/// Collects chunk references and keys while a file is put, then seals the manifest.
#[derive(Debug, Default)]
pub struct ManifestBuilder {
    file_size: u64,
    chunks: Vec<ChunkRef>,
    keys: Zeroizing<Vec<u8>>,
}

impl ManifestBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the next chunk of the file and its key.
    pub fn push(&mut self, chunk: ChunkRef, key: &ChunkKey) {
        self.file_size = self.file_size.saturating_add(u64::from(chunk.plain_len));
        self.chunks.push(chunk);
        self.keys.extend_from_slice(key.as_bytes());
    }

    /// Seals the read layer and returns the manifest with its read key.
    ///
    /// Convergent: read key = BLAKE3 keyed by the secret over `b"cairn-readkey-v1" ||
    /// file_size (u64 LE) || BLAKE3(chunk keys concatenated)`, so the same file and secret give
    /// the same manifest and cap. Private: `random_key()`. Fails when the manifest would break
    /// the limits [`Manifest::decode`] enforces.
    pub fn finish(
        self,
        mode: KeyMode<'_>,
        random_key: impl FnOnce() -> [u8; 32],
    ) -> Result<(Manifest, ReadKey), CoreError> {
        let read_key = match mode {
            KeyMode::Convergent(secret) => {
                let mut hasher = blake3::Hasher::new_keyed(secret.as_bytes());
                hasher.update(READ_KEY_CONTEXT);
                hasher.update(&self.file_size.to_le_bytes());
                hasher.update(blake3::hash(&self.keys).as_bytes());
                ReadKey::from_bytes(*hasher.finalize().as_bytes())
            }
            KeyMode::Private => ReadKey::from_bytes(random_key()),
        };
        let manifest = Manifest {
            file_size: self.file_size,
            read_layer: seal_read_layer(&read_key, &self.keys),
            chunks: self.chunks,
        };
        manifest.check().map_err(CoreError::BadManifest)?;
        Ok((manifest, read_key))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::crypto::ConvergenceSecret;

    fn build(lens: &[u32], mode: KeyMode<'_>) -> (Manifest, ReadKey, Vec<ChunkKey>) {
        let mut builder = ManifestBuilder::new();
        let mut keys = Vec::new();
        for (i, &plain_len) in lens.iter().enumerate() {
            let key = ChunkKey::from_bytes([i as u8; 32]);
            let root = ShareRoot::from_bytes([i as u8 ^ 0x55; 32]);
            builder.push(ChunkRef { root, plain_len }, &key);
            keys.push(key);
        }
        let (manifest, read_key) = builder.finish(mode, || [0x77; 32]).unwrap();
        (manifest, read_key, keys)
    }

    #[test]
    fn round_trip_and_keys() {
        let (manifest, read_key, keys) = build(&[1000, 2000, 3], KeyMode::Private);
        assert_eq!(manifest.file_size, 3003);
        assert_eq!(read_key, ReadKey::from_bytes([0x77; 32]));
        let bytes = manifest.encode();
        let decoded = Manifest::decode(&bytes).unwrap();
        assert_eq!(decoded, manifest);
        assert_eq!(decoded.chunks().len(), 3);
        assert_eq!(decoded.chunk_keys(&read_key).unwrap(), keys);
        assert!(matches!(
            decoded.chunk_keys(&ReadKey::from_bytes([1; 32])),
            Err(CoreError::Aead)
        ));
    }

    #[test]
    fn convergent_manifest_is_deterministic() {
        let secret = ConvergenceSecret::from_bytes([3; 32]);
        let (a, ka, _) = build(&[10, 20], KeyMode::Convergent(&secret));
        let (b, kb, _) = build(&[10, 20], KeyMode::Convergent(&secret));
        assert_eq!(a.encode(), b.encode());
        assert_eq!(ka, kb);
        let other = ConvergenceSecret::from_bytes([4; 32]);
        let (_, kc, _) = build(&[10, 20], KeyMode::Convergent(&other));
        assert_ne!(ka, kc);
    }

    #[test]
    fn decode_refuses_inconsistent_manifests() {
        let (manifest, _, _) = build(&[1000, 2000], KeyMode::Private);
        let mut bad = manifest.clone();
        bad.file_size += 1;
        assert!(matches!(
            Manifest::decode(&bad.encode()),
            Err(CoreError::BadManifest(FormatError::SizeMismatch { .. }))
        ));
        let mut bad = manifest.clone();
        bad.read_layer.pop();
        assert!(matches!(
            Manifest::decode(&bad.encode()),
            Err(CoreError::BadManifest(FormatError::ReadLayerLength { .. }))
        ));
        let mut bad = manifest.clone();
        bad.chunks[0].plain_len = 0;
        bad.file_size = 2000;
        assert!(matches!(
            Manifest::decode(&bad.encode()),
            Err(CoreError::BadManifest(FormatError::EmptyChunk { index: 0 }))
        ));
        let mut bytes = manifest.encode();
        bytes[0] = 9;
        assert!(matches!(
            Manifest::decode(&bytes),
            Err(CoreError::BadManifest(FormatError::Version { got: 9, .. }))
        ));
        assert!(Manifest::decode(&[]).is_err());
    }

    #[test]
    fn empty_manifest_is_valid() {
        let (manifest, key, _) = build(&[], KeyMode::Private);
        let decoded = Manifest::decode(&manifest.encode()).unwrap();
        assert_eq!(decoded.file_size, 0);
        assert!(decoded.chunk_keys(&key).unwrap().is_empty());
    }

    proptest! {
        #[test]
        fn manifest_round_trip(lens in proptest::collection::vec(1u32..=MAX_CHUNK, 0..50)) {
            let (manifest, key, keys) = build(&lens, KeyMode::Private);
            let decoded = Manifest::decode(&manifest.encode()).unwrap();
            prop_assert_eq!(&decoded, &manifest);
            prop_assert_eq!(decoded.chunk_keys(&key).unwrap(), keys);
        }

        #[test]
        fn manifest_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Manifest::decode(&bytes);
            let mut versioned = bytes.clone();
            versioned.insert(0, MANIFEST_VERSION);
            let _ = Manifest::decode(&versioned);
        }
    }
}

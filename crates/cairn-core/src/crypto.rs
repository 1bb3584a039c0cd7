//! Keys, convergent key derivation and the AEAD (AES-256-GCM from `ring`).
//!
//! Every key encrypts exactly one message, so the nonce is fixed (all zero). A convergent chunk
//! key is derived from the exact encoded bytes E that it encrypts (never from the plaintext
//! alone), so the same key can never meet two different messages; a private key is random.

use std::fmt;

use data_encoding::{HEXLOWER, HEXLOWER_PERMISSIVE};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::CoreError;

/// Format id of sealed chunks: the AEAD's associated data and part of the convergent key input.
pub const FORMAT_ID: &[u8] = b"cairn-chk-v1";
/// Associated data of a manifest's encrypted read layer.
pub const READ_LAYER_AAD: &[u8] = b"cairn-readlayer-v1";
/// Bytes the AEAD adds to a message.
pub const TAG_LEN: usize = 16;

macro_rules! secret_type {
    ($(#[$meta:meta])* $name:ident, $what:literal) => {
        $(#[$meta])*
        #[derive(Clone, Zeroize, ZeroizeOnDrop)]
        pub struct $name([u8; 32]);

        impl $name {
            /// Wraps 32 key bytes.
            pub const fn from_bytes(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }

            /// The 32 key bytes.
            pub const fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "(..)"))
            }
        }

        impl PartialEq for $name {
            /// Constant-time comparison.
            fn eq(&self, other: &Self) -> bool {
                self.0
                    .iter()
                    .zip(other.0.iter())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
            }
        }

        impl Eq for $name {}
    };
}

macro_rules! hex_text {
    ($name:ident, $what:literal) => {
        impl $name {
            /// The key as 64 lowercase hex characters, for config files. Never log it.
            pub fn to_hex(&self) -> String {
                HEXLOWER.encode(&self.0)
            }

            /// Parses 64 hex characters (either case).
            pub fn from_hex(text: &str) -> Result<Self, CoreError> {
                let bytes = zeroize::Zeroizing::new(
                    HEXLOWER_PERMISSIVE
                        .decode(text.trim().as_bytes())
                        .map_err(|source| CoreError::BadHex {
                            what: $what,
                            source,
                        })?,
                );
                let array =
                    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| CoreError::BadLength {
                        what: $what,
                        expected: 32,
                        got: bytes.len(),
                    })?;
                Ok(Self(array))
            }
        }
    };
}

secret_type!(
    /// The secret mixed into convergent chunk keys: same content and same secret give the same
    /// chunk; without the secret nobody can confirm which content you hold.
    ConvergenceSecret,
    "convergence secret"
);
secret_type!(
    /// The key that encrypts one chunk's encoded payload.
    ChunkKey,
    "chunk key"
);
secret_type!(
    /// The key that encrypts a file manifest's read layer (the chunk keys); part of a readcap.
    ReadKey,
    "read key"
);
hex_text!(ConvergenceSecret, "convergence secret");
hex_text!(ReadKey, "read key");

/// Derives the convergent key of the encoded payload `encoded`:
/// BLAKE3 keyed by `secret` over `FORMAT_ID || BLAKE3(encoded)`.
pub fn convergent_key(secret: &ConvergenceSecret, encoded: &[u8]) -> ChunkKey {
    let digest = blake3::hash(encoded);
    let mut hasher = blake3::Hasher::new_keyed(secret.as_bytes());
    hasher.update(FORMAT_ID);
    hasher.update(digest.as_bytes());
    ChunkKey(*hasher.finalize().as_bytes())
}

/// Encrypts in place with AES-256-GCM under `key`, zero nonce, associated data `aad`, and
/// appends the 16-byte tag. `key` must encrypt this one message only (derive a fresh key per
/// message).
pub fn seal_with(key: &[u8; 32], aad: &[u8], mut message: Vec<u8>) -> Vec<u8> {
    // `UnboundKey::new` fails only on a key length other than 32 for AES-256: ours is [u8; 32].
    #[allow(clippy::expect_used)]
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("32-byte AES-256 key"));
    // Sealing fails only past GCM's message limit (~64 GiB); blobs are bounded far below that.
    #[allow(clippy::expect_used)]
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key([0; 12]),
        Aad::from(aad),
        &mut message,
    )
    .expect("message within AES-GCM limits");
    message
}

/// Decrypts in place; fails with [`CoreError::Aead`] on a wrong key or tampered bytes.
pub fn open_with(
    key: &[u8; 32],
    aad: &[u8],
    mut ciphertext: Vec<u8>,
) -> Result<Vec<u8>, CoreError> {
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).map_err(|_| CoreError::Aead)?);
    let plain_len = key
        .open_in_place(
            Nonce::assume_unique_for_key([0; 12]),
            Aad::from(aad),
            &mut ciphertext,
        )
        .map_err(|_| CoreError::Aead)?
        .len();
    ciphertext.truncate(plain_len);
    Ok(ciphertext)
}

/// Decrypts `sealed` (ciphertext and tag) in place; returns the plaintext's length (it starts
/// at `sealed[0]`). Fails with [`CoreError::Aead`] on a wrong key or tampered bytes.
pub fn open_in_place_with(
    key: &[u8; 32],
    aad: &[u8],
    sealed: &mut [u8],
) -> Result<usize, CoreError> {
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).map_err(|_| CoreError::Aead)?);
    key.open_in_place(
        Nonce::assume_unique_for_key([0; 12]),
        Aad::from(aad),
        sealed,
    )
    .map(|plain| plain.len())
    .map_err(|_| CoreError::Aead)
}

/// Seals an encoded payload E under its chunk key: AES-256-GCM, zero nonce, associated data
/// [`FORMAT_ID`], tag appended in place.
pub fn seal(key: &ChunkKey, encoded: Vec<u8>) -> Vec<u8> {
    seal_with(&key.0, FORMAT_ID, encoded)
}

/// Opens a sealed chunk; [`CoreError::Aead`] on a wrong key or tampered ciphertext.
pub fn open(key: &ChunkKey, ciphertext: Vec<u8>) -> Result<Vec<u8>, CoreError> {
    open_with(&key.0, FORMAT_ID, ciphertext)
}

/// Seals a manifest read layer under its read key (AAD [`READ_LAYER_AAD`]).
pub(crate) fn seal_read_layer(key: &ReadKey, plain: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(plain.len() + TAG_LEN);
    buf.extend_from_slice(plain);
    seal_with(&key.0, READ_LAYER_AAD, buf)
}

/// Opens a manifest read layer; the plaintext (chunk keys) is zeroized on drop.
pub(crate) fn open_read_layer(
    key: &ReadKey,
    ciphertext: &[u8],
) -> Result<zeroize::Zeroizing<Vec<u8>>, CoreError> {
    // Open into a zeroizing buffer so that a failure, too, leaves nothing behind.
    let mut buf = zeroize::Zeroizing::new(ciphertext.to_vec());
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key.0).map_err(|_| CoreError::Aead)?);
    let plain_len = key
        .open_in_place(
            Nonce::assume_unique_for_key([0; 12]),
            Aad::from(READ_LAYER_AAD),
            &mut buf,
        )
        .map_err(|_| CoreError::Aead)?
        .len();
    buf.truncate(plain_len);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let key = ChunkKey::from_bytes([1; 32]);
        let sealed = seal(&key, b"hello".to_vec());
        assert_eq!(sealed.len(), 5 + TAG_LEN);
        assert_eq!(open(&key, sealed.clone()).unwrap(), b"hello");

        let wrong = ChunkKey::from_bytes([2; 32]);
        assert!(matches!(open(&wrong, sealed.clone()), Err(CoreError::Aead)));

        let mut tampered = sealed.clone();
        tampered[0] ^= 1;
        assert!(matches!(open(&key, tampered), Err(CoreError::Aead)));
        assert!(matches!(open(&key, vec![0; 3]), Err(CoreError::Aead)));
        assert!(matches!(open(&key, Vec::new()), Err(CoreError::Aead)));
    }

    #[test]
    fn read_layer_is_domain_separated() {
        let bytes = [9; 32];
        let sealed = seal_read_layer(&ReadKey::from_bytes(bytes), b"keys");
        assert!(open(&ChunkKey::from_bytes(bytes), sealed.clone()).is_err());
        assert_eq!(
            &open_read_layer(&ReadKey::from_bytes(bytes), &sealed).unwrap()[..],
            b"keys"
        );
    }

    #[test]
    fn convergent_key_depends_on_secret_and_bytes() {
        let s1 = ConvergenceSecret::from_bytes([1; 32]);
        let s2 = ConvergenceSecret::from_bytes([2; 32]);
        assert_eq!(convergent_key(&s1, b"a"), convergent_key(&s1, b"a"));
        assert_ne!(convergent_key(&s1, b"a"), convergent_key(&s1, b"b"));
        assert_ne!(convergent_key(&s1, b"a"), convergent_key(&s2, b"a"));
    }

    #[test]
    fn secrets_do_not_debug_print_and_hex_round_trips() {
        let secret = ConvergenceSecret::from_bytes([0xcd; 32]);
        assert_eq!(format!("{secret:?}"), "ConvergenceSecret(..)");
        let hex = secret.to_hex();
        assert_eq!(hex, "cd".repeat(32));
        assert_eq!(ConvergenceSecret::from_hex(&hex).unwrap(), secret);
        assert_eq!(
            ReadKey::from_hex(&hex.to_uppercase()).unwrap(),
            ReadKey::from_bytes([0xcd; 32])
        );
        assert!(ReadKey::from_hex("cdcd").is_err());
        assert!(ReadKey::from_hex("xy").is_err());
    }
}

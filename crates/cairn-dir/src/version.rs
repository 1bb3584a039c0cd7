//! Versions: one delta or compacted state of a directory, encrypted, signed, citing parents.
//!
//! ```text
//! Version = postcard(Signed, signature[64])
//! Signed  = { format = 1, verifying key, parents (<= MAX_PARENTS), depth, snapshot, salt, ciphertext }
//! signature = ed25519(directory key, "cairn-dir-version-v1" || postcard(Signed))
//! body key  = BLAKE3-derive("cairn 2026 dir version key v1", read key || salt)
//! ciphertext = AES-256-GCM(body key, zero nonce, aad = postcard(format, verifying, parents,
//!              depth, snapshot), postcard(VersionBody))
//! id = BLAKE3(Version)
//! ```
//!
//! Holders check the signature and the slot ([`Version::decode`]) and learn the parents, depth
//! and kind, nothing else. The salt is random per version, so the body key is fresh each time
//! although every writer shares the read key; bodies are not compressed (length would leak
//! names through compression).

use cairn_core::crypto::{open_with, seal_with};
use cairn_core::{DirReadCap, DirWriteCap, NodeId, SlotId, VersionId, slot_of};
use ed25519_dalek::{Signature, Signer, VerifyingKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::DirError;
use crate::hlc::Hlc;
use crate::state::DirState;

/// The version format this build writes and reads.
const FORMAT: u8 = 1;
/// Domain separation of the signed bytes.
const SIGN_CONTEXT: &[u8] = b"cairn-dir-version-v1";
/// Derive-key context of a version's body key.
const BODY_KEY_CONTEXT: &str = "cairn 2026 dir version key v1";
/// The most parents a version may cite (concurrent heads merged at once).
pub const MAX_PARENTS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Signed {
    format: u8,
    verifying: [u8; 32],
    parents: Vec<VersionId>,
    depth: u64,
    snapshot: bool,
    salt: [u8; 32],
    #[serde(with = "serde_bytes")]
    ciphertext: Vec<u8>,
}

impl Signed {
    fn aad(&self) -> Vec<u8> {
        postcard::to_stdvec(&(
            self.format,
            &self.verifying,
            &self.parents,
            self.depth,
            self.snapshot,
        ))
        .unwrap_or_default()
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let mut bytes = SIGN_CONTEXT.to_vec();
        bytes.extend(postcard::to_stdvec(self).unwrap_or_default());
        bytes
    }
}

/// What a version says, once decrypted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionBody {
    /// The node that wrote it.
    pub writer: NodeId,
    /// When.
    pub hlc: Hlc,
    /// A delta, or the whole state for a snapshot.
    pub state: DirState,
}

/// One signed, encrypted version of a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    signed: Signed,
    bytes: Vec<u8>,
    id: VersionId,
}

fn body_key(read_key: &[u8; 32], salt: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    let mut hasher = blake3::Hasher::new_derive_key(BODY_KEY_CONTEXT);
    hasher.update(read_key);
    hasher.update(salt);
    Zeroizing::new(*hasher.finalize().as_bytes())
}

impl Version {
    /// Encrypts and signs `body` as a version of `cap`'s directory citing `parents` at `depth`
    /// (one more than the deepest parent). `salt` must be fresh random bytes.
    pub fn seal(
        cap: &DirWriteCap,
        parents: Vec<VersionId>,
        depth: u64,
        snapshot: bool,
        body: &VersionBody,
        salt: [u8; 32],
    ) -> Version {
        let plain = postcard::to_stdvec(body).unwrap_or_default();
        Version::seal_encoded(cap, parents, depth, snapshot, plain, salt)
    }

    /// The encoded body a snapshot of `state` by `writer` at `hlc` would carry (the same bytes
    /// as a [`VersionBody`] holding it, without copying the state).
    pub fn encode_body(writer: &NodeId, hlc: &Hlc, state: &DirState) -> Vec<u8> {
        postcard::to_stdvec(&(writer, hlc, state)).unwrap_or_default()
    }

    /// [`seal`](Self::seal) of a body already encoded (by [`encode_body`](Self::encode_body)).
    pub fn seal_encoded(
        cap: &DirWriteCap,
        parents: Vec<VersionId>,
        depth: u64,
        snapshot: bool,
        plain: Vec<u8>,
        salt: [u8; 32],
    ) -> Version {
        let read = cap.read_cap();
        let mut signed = Signed {
            format: FORMAT,
            verifying: read.verifying,
            parents,
            depth,
            snapshot,
            salt,
            ciphertext: Vec::new(),
        };
        let key = body_key(read.key.as_bytes(), &salt);
        signed.ciphertext = seal_with(&key, &signed.aad(), plain);
        let signature = cap.signing_key().sign(&signed.signed_bytes());
        let bytes =
            postcard::to_stdvec(&(&signed, signature.to_bytes().as_slice())).unwrap_or_default();
        let id = VersionId::from_bytes(*blake3::hash(&bytes).as_bytes());
        Version { signed, bytes, id }
    }

    /// Decodes a version from untrusted bytes and checks its signature. Anyone can do this; it
    /// needs no cap.
    pub fn decode(bytes: &[u8]) -> Result<Version, DirError> {
        let Some(&format) = bytes.first() else {
            return Err(DirError::Malformed(
                postcard::Error::DeserializeUnexpectedEnd,
            ));
        };
        if format != FORMAT {
            return Err(DirError::UnsupportedFormat(format));
        }
        let (signed, signature): (Signed, &[u8]) =
            postcard::from_bytes(bytes).map_err(DirError::Malformed)?;
        if signed.parents.len() > MAX_PARENTS {
            return Err(DirError::TooMany {
                what: "parents",
                got: signed.parents.len(),
                max: MAX_PARENTS,
            });
        }
        let reencoded = postcard::to_stdvec(&(&signed, signature)).map_err(DirError::Malformed)?;
        if reencoded != bytes {
            return Err(DirError::NotCanonical);
        }
        let signature: [u8; 64] = signature.try_into().map_err(|_| DirError::BadSignature)?;
        let key = VerifyingKey::from_bytes(&signed.verifying).map_err(|_| DirError::BadKey)?;
        key.verify_strict(&signed.signed_bytes(), &Signature::from_bytes(&signature))
            .map_err(|_| DirError::BadSignature)?;
        let id = VersionId::from_bytes(*blake3::hash(bytes).as_bytes());
        Ok(Version {
            signed,
            bytes: bytes.to_vec(),
            id,
        })
    }

    /// Decrypts the body with `cap` (which must be this version's directory).
    pub fn open(&self, cap: &DirReadCap) -> Result<VersionBody, DirError> {
        if cap.verifying != self.signed.verifying {
            return Err(DirError::WrongSlot {
                expected: cap.slot(),
                got: self.slot(),
            });
        }
        let key = body_key(cap.key.as_bytes(), &self.signed.salt);
        let plain = open_with(&key, &self.signed.aad(), self.signed.ciphertext.clone())
            .map_err(|_| DirError::Decrypt)?;
        postcard::from_bytes(&plain).map_err(DirError::MalformedBody)
    }

    /// The version's id: BLAKE3 of its bytes.
    pub fn id(&self) -> VersionId {
        self.id
    }

    /// The slot it belongs to.
    pub fn slot(&self) -> SlotId {
        slot_of(&self.signed.verifying)
    }

    /// The versions it follows.
    pub fn parents(&self) -> &[VersionId] {
        &self.signed.parents
    }

    /// Its depth: 1 + the deepest parent's (1 for a first version).
    pub fn depth(&self) -> u64 {
        self.signed.depth
    }

    /// Whether it carries the whole state (readers need nothing older).
    pub fn is_snapshot(&self) -> bool {
        self.signed.snapshot
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The encoded bytes, consuming the version.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> VersionBody {
        VersionBody {
            writer: NodeId::from_bytes([5; 32]),
            hlc: Hlc {
                millis: 1000,
                counter: 0,
            },
            state: DirState::default(),
        }
    }

    #[test]
    fn seal_decode_open() {
        let cap = DirWriteCap::from_seed([1; 32]);
        let version = Version::seal(&cap, vec![], 1, true, &body(), [3; 32]);
        let decoded = Version::decode(version.as_bytes()).unwrap();
        assert_eq!(decoded, version);
        assert_eq!(decoded.slot(), cap.slot());
        assert_eq!(decoded.open(&cap.read_cap()).unwrap(), body());
        let other = DirWriteCap::from_seed([2; 32]).read_cap();
        assert!(matches!(
            decoded.open(&other),
            Err(DirError::WrongSlot { .. })
        ));
        // Same content, fresh salt: different ciphertext and id.
        let again = Version::seal(&cap, vec![], 1, true, &body(), [4; 32]);
        assert_ne!(again.id(), version.id());
    }

    #[test]
    fn an_encoded_body_is_the_body() {
        let b = body();
        assert_eq!(
            Version::encode_body(&b.writer, &b.hlc, &b.state),
            postcard::to_stdvec(&b).unwrap()
        );
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let cap = DirWriteCap::from_seed([1; 32]);
        let version = Version::seal(
            &cap,
            vec![VersionId::from_bytes([9; 32])],
            2,
            false,
            &body(),
            [3; 32],
        );
        let bytes = version.as_bytes();
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = bytes.to_vec();
                bad[i] ^= bit;
                assert!(Version::decode(&bad).is_err(), "byte {i} bit {bit:#x}");
            }
        }
        assert!(Version::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(Version::decode(&[]).is_err());
    }

    #[test]
    fn a_version_signed_by_another_key_is_refused() {
        let cap = DirWriteCap::from_seed([1; 32]);
        let thief = DirWriteCap::from_seed([2; 32]);
        let version = Version::seal(&thief, vec![], 1, false, &body(), [3; 32]);
        // Re-label it with the victim's verifying key: the signature no longer verifies.
        let mut signed = version.signed.clone();
        signed.verifying = cap.read_cap().verifying;
        let sig = [0u8; 64];
        let bytes = postcard::to_stdvec(&(&signed, sig.as_slice())).unwrap();
        assert!(matches!(
            Version::decode(&bytes),
            Err(DirError::BadSignature)
        ));
    }
}

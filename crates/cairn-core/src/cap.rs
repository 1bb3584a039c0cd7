//! Capability strings: `cairn:<kind>:<version>:<base32 fields>`.
//!
//! Base32 is the RFC 4648 alphabet, lowercase, without padding; parsing accepts either case.
//! Kinds (version 1):
//! - `chk`: [`ReadCap`], fields `root (32) || read key (32) || size (u64 LE)`.
//! - `vchk`: [`VerifyCap`], fields `root (32) || size (u64 LE)`.
//! - `lit`: [`LiteralCap`], fields = the file's bytes (at most [`INLINE_LIMIT`]).
//!
//! - `dir`: [`DirWriteCap`], field = the directory's ed25519 signing seed (32).
//! - `dir-ro`: [`DirReadCap`], fields `verifying key (32) || read key (32)`.
//!
//! A directory writecap derives its readcap offline ([`DirWriteCap::read_cap`]): the read key is
//! BLAKE3 (derive-key mode) of the seed, the slot id BLAKE3 (derive-key mode) of the verifying key.
//!
//! A readcap reduces to its verifycap offline ([`ReadCap::verify_cap`]). A readcap's `Debug`
//! does not print the key; its `Display` is the secret itself and must not reach a log.

use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use data_encoding::Specification;

use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::crypto::ReadKey;
use crate::id::{ShareRoot, SlotId};

/// Files of at most this many bytes live in a literal cap, not in shares.
pub const INLINE_LIMIT: usize = 64;
/// Scheme prefix of every cap.
const SCHEME: &str = "cairn";
/// Kind of a readcap of an immutable file.
const KIND_READ: &str = "chk";
/// Kind of a verifycap of an immutable file.
const KIND_VERIFY: &str = "vchk";
/// Kind of a literal (inline) file.
const KIND_LITERAL: &str = "lit";
/// Kind of a directory writecap.
const KIND_DIR_WRITE: &str = "dir";
/// Kind of a directory readcap.
const KIND_DIR_READ: &str = "dir-ro";
/// Derive-key context of a directory's read key (from the signing seed).
const DIR_READ_KEY_CONTEXT: &str = "cairn 2026 dir read key v1";
/// Derive-key context of a slot id (from the verifying key).
const SLOT_ID_CONTEXT: &str = "cairn 2026 slot id v1";
/// The only cap version so far.
const VERSION: &str = "1";

static BASE32: LazyLock<data_encoding::Encoding> = LazyLock::new(|| {
    let mut spec = Specification::new();
    spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz234567");
    spec.translate.from.push_str("ABCDEFGHIJKLMNOPQRSTUVWXYZ");
    spec.translate.to.push_str("abcdefghijklmnopqrstuvwxyz");
    // A fixed, valid specification: 32 distinct symbols, no padding.
    #[allow(clippy::expect_used)]
    spec.encoding().expect("valid base32 specification")
});

fn b32(bytes: &[u8]) -> String {
    BASE32.encode(bytes)
}

/// Why a string is not a valid cap.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CapError {
    /// The string does not start with `cairn:` or lacks its fields.
    #[error("not a cairn cap (expected cairn:<kind>:<version>:<data>)")]
    NotACap,
    /// The kind is not one this build knows.
    #[error("unknown cap kind {0:?}")]
    UnknownKind(String),
    /// The version is not one this build reads.
    #[error("unsupported version {version:?} of cap kind {kind}")]
    UnsupportedVersion {
        /// The cap kind.
        kind: &'static str,
        /// The version found.
        version: String,
    },
    /// The data part is not valid base32.
    #[error("bad base32 in cap data")]
    BadBase32,
    /// The data part decodes to the wrong number of bytes for the kind.
    #[error("wrong length for a {kind} cap: expected {expected} bytes, got {got}")]
    WrongLength {
        /// The cap kind.
        kind: &'static str,
        /// Bytes expected.
        expected: usize,
        /// Bytes decoded.
        got: usize,
    },
    /// A literal cap holds more than [`INLINE_LIMIT`] bytes.
    #[error("literal cap too long: {got} bytes, limit {max}")]
    LiteralTooLong {
        /// The limit.
        max: usize,
        /// Bytes decoded.
        got: usize,
    },
    /// A directory readcap whose verifying key is not a valid ed25519 point.
    #[error("directory cap holds an invalid verifying key")]
    BadKey,
    /// A valid cap of another kind than the one asked for.
    #[error("expected a {expected} cap, got a {got} cap")]
    WrongKind {
        /// The kind asked for.
        expected: &'static str,
        /// The kind found.
        got: &'static str,
    },
}

/// Reads an immutable file: share root of its manifest, read key, file size.
#[derive(Clone, PartialEq, Eq)]
pub struct ReadCap {
    /// Share root of the manifest blob.
    pub root: ShareRoot,
    /// Decrypts the manifest's read layer.
    pub key: ReadKey,
    /// File size in bytes.
    pub size: u64,
}

impl ReadCap {
    /// The verifycap of the same file (drops the key).
    pub fn verify_cap(&self) -> VerifyCap {
        VerifyCap {
            root: self.root,
            size: self.size,
        }
    }
}

impl fmt::Debug for ReadCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadCap")
            .field("root", &self.root)
            .field("key", &self.key)
            .field("size", &self.size)
            .finish()
    }
}

impl fmt::Display for ReadCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut fields = zeroize::Zeroizing::new(Vec::with_capacity(72));
        fields.extend_from_slice(self.root.as_bytes());
        fields.extend_from_slice(self.key.as_bytes());
        fields.extend_from_slice(&self.size.to_le_bytes());
        let text = zeroize::Zeroizing::new(b32(&fields));
        write!(f, "{SCHEME}:{KIND_READ}:{VERSION}:{}", text.as_str())
    }
}

/// Checks and repairs an immutable file's shares without reading it: share root and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VerifyCap {
    /// Share root of the manifest blob.
    pub root: ShareRoot,
    /// File size in bytes.
    pub size: u64,
}

impl fmt::Display for VerifyCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut fields = Vec::with_capacity(40);
        fields.extend_from_slice(self.root.as_bytes());
        fields.extend_from_slice(&self.size.to_le_bytes());
        write!(f, "{SCHEME}:{KIND_VERIFY}:{VERSION}:{}", b32(&fields))
    }
}

/// A small file carried inside the cap itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LiteralCap {
    /// The file's bytes (at most [`INLINE_LIMIT`]).
    pub data: Vec<u8>,
}

impl fmt::Display for LiteralCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}:{KIND_LITERAL}:{VERSION}:{}", b32(&self.data))
    }
}

/// The slot id of a directory whose verifying key is `verifying`.
pub fn slot_of(verifying: &[u8; 32]) -> SlotId {
    SlotId::from_bytes(blake3::derive_key(SLOT_ID_CONTEXT, verifying))
}

/// Writes (and reads) a directory: its ed25519 signing seed. `Display` is the secret itself.
#[derive(Clone, PartialEq, Eq)]
pub struct DirWriteCap {
    seed: ReadKey,
    /// The seed's ed25519 public key, derived once: a scalar multiplication, which the mount
    /// would otherwise pay on every look at a directory's slot.
    verifying: [u8; 32],
}

impl DirWriteCap {
    /// The writecap of the directory whose signing seed is `seed` (32 random bytes for a new one).
    pub fn from_seed(seed: [u8; 32]) -> DirWriteCap {
        let verifying = SigningKey::from_bytes(&seed).verifying_key().to_bytes();
        DirWriteCap {
            seed: ReadKey::from_bytes(seed),
            verifying,
        }
    }

    /// The signing seed.
    pub fn seed(&self) -> &[u8; 32] {
        self.seed.as_bytes()
    }

    /// The ed25519 key that signs the directory's versions.
    pub fn signing_key(&self) -> SigningKey {
        SigningKey::from_bytes(self.seed.as_bytes())
    }

    /// The readcap of the same directory.
    pub fn read_cap(&self) -> DirReadCap {
        let mut key = blake3::derive_key(DIR_READ_KEY_CONTEXT, self.seed.as_bytes());
        let cap = DirReadCap {
            verifying: self.verifying,
            key: ReadKey::from_bytes(key),
        };
        zeroize::Zeroize::zeroize(&mut key);
        cap
    }

    /// The directory's slot id.
    pub fn slot(&self) -> SlotId {
        slot_of(&self.verifying)
    }
}

impl fmt::Debug for DirWriteCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DirWriteCap({:?})", self.slot())
    }
}

impl fmt::Display for DirWriteCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = zeroize::Zeroizing::new(b32(self.seed.as_bytes()));
        write!(f, "{SCHEME}:{KIND_DIR_WRITE}:{VERSION}:{}", text.as_str())
    }
}

/// Reads a directory: its verifying key (checks versions) and read key (decrypts them).
#[derive(Clone, PartialEq, Eq)]
pub struct DirReadCap {
    /// The ed25519 verifying key of the directory's versions.
    pub verifying: [u8; 32],
    /// Decrypts the directory's versions.
    pub key: ReadKey,
}

impl DirReadCap {
    /// The directory's slot id.
    pub fn slot(&self) -> SlotId {
        slot_of(&self.verifying)
    }
}

/// Serde form: `(verifying key, read key)` as two 32-byte arrays; decoding checks the point.
impl serde::Serialize for DirReadCap {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(&(&self.verifying, self.key.as_bytes()), serializer)
    }
}

impl<'de> serde::Deserialize<'de> for DirReadCap {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (verifying, key): ([u8; 32], [u8; 32]) = serde::Deserialize::deserialize(deserializer)?;
        let key = zeroize::Zeroizing::new(key);
        if VerifyingKey::from_bytes(&verifying).is_err() {
            return Err(serde::de::Error::custom(CapError::BadKey));
        }
        Ok(DirReadCap {
            verifying,
            key: ReadKey::from_bytes(*key),
        })
    }
}

impl fmt::Debug for DirReadCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DirReadCap({:?})", self.slot())
    }
}

impl fmt::Display for DirReadCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut fields = zeroize::Zeroizing::new(Vec::with_capacity(64));
        fields.extend_from_slice(&self.verifying);
        fields.extend_from_slice(self.key.as_bytes());
        let text = zeroize::Zeroizing::new(b32(&fields));
        write!(f, "{SCHEME}:{KIND_DIR_READ}:{VERSION}:{}", text.as_str())
    }
}

/// Any cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cap {
    /// Reads an immutable file.
    Read(ReadCap),
    /// Verifies an immutable file.
    Verify(VerifyCap),
    /// A small file inside the cap.
    Literal(LiteralCap),
    /// Writes a directory.
    DirWrite(DirWriteCap),
    /// Reads a directory.
    DirRead(DirReadCap),
}

impl Cap {
    /// The file size the cap names (0 for a directory).
    pub fn size(&self) -> u64 {
        match self {
            Cap::Read(cap) => cap.size,
            Cap::Verify(cap) => cap.size,
            Cap::Literal(cap) => cap.data.len() as u64,
            Cap::DirWrite(_) | Cap::DirRead(_) => 0,
        }
    }

    /// Whether the cap names a directory.
    pub fn is_dir(&self) -> bool {
        matches!(self, Cap::DirWrite(_) | Cap::DirRead(_))
    }

    /// The cap's kind string (`chk`, `vchk`, `lit`).
    pub fn kind(&self) -> &'static str {
        match self {
            Cap::Read(_) => KIND_READ,
            Cap::Verify(_) => KIND_VERIFY,
            Cap::Literal(_) => KIND_LITERAL,
            Cap::DirWrite(_) => KIND_DIR_WRITE,
            Cap::DirRead(_) => KIND_DIR_READ,
        }
    }
}

impl fmt::Display for Cap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cap::Read(cap) => cap.fmt(f),
            Cap::Verify(cap) => cap.fmt(f),
            Cap::Literal(cap) => cap.fmt(f),
            Cap::DirWrite(cap) => cap.fmt(f),
            Cap::DirRead(cap) => cap.fmt(f),
        }
    }
}

fn split_fields<const N: usize>(
    kind: &'static str,
    bytes: &[u8],
) -> Result<([u8; 32], [u8; N]), CapError> {
    if bytes.len() != 32 + N {
        return Err(CapError::WrongLength {
            kind,
            expected: 32 + N,
            got: bytes.len(),
        });
    }
    let mut root = [0u8; 32];
    root.copy_from_slice(&bytes[..32]);
    let mut rest = [0u8; N];
    rest.copy_from_slice(&bytes[32..]);
    Ok((root, rest))
}

impl FromStr for Cap {
    type Err = CapError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let mut parts = s.splitn(4, ':');
        let (Some(scheme), Some(kind), Some(version), Some(data)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(CapError::NotACap);
        };
        if !scheme.eq_ignore_ascii_case(SCHEME) {
            return Err(CapError::NotACap);
        }
        let kind = match kind.to_ascii_lowercase().as_str() {
            KIND_READ => KIND_READ,
            KIND_VERIFY => KIND_VERIFY,
            KIND_LITERAL => KIND_LITERAL,
            KIND_DIR_WRITE => KIND_DIR_WRITE,
            KIND_DIR_READ => KIND_DIR_READ,
            _ => return Err(CapError::UnknownKind(kind.chars().take(32).collect())),
        };
        if version != VERSION {
            return Err(CapError::UnsupportedVersion {
                kind,
                version: version.chars().take(32).collect(),
            });
        }
        let bytes = zeroize::Zeroizing::new(
            BASE32
                .decode(data.as_bytes())
                .map_err(|_| CapError::BadBase32)?,
        );
        match kind {
            KIND_READ => {
                let (root, rest) = split_fields::<40>(kind, &bytes)?;
                let rest = zeroize::Zeroizing::new(rest);
                let mut key = [0u8; 32];
                key.copy_from_slice(&rest[..32]);
                let mut size = [0u8; 8];
                size.copy_from_slice(&rest[32..]);
                let cap = ReadCap {
                    root: ShareRoot::from_bytes(root),
                    key: ReadKey::from_bytes(key),
                    size: u64::from_le_bytes(size),
                };
                zeroize::Zeroize::zeroize(&mut key);
                Ok(Cap::Read(cap))
            }
            KIND_VERIFY => {
                let (root, size) = split_fields::<8>(kind, &bytes)?;
                Ok(Cap::Verify(VerifyCap {
                    root: ShareRoot::from_bytes(root),
                    size: u64::from_le_bytes(size),
                }))
            }
            KIND_DIR_WRITE => {
                let (seed, _) = split_fields::<0>(kind, &bytes)?;
                let cap = DirWriteCap::from_seed(seed);
                let mut seed = seed;
                zeroize::Zeroize::zeroize(&mut seed);
                Ok(Cap::DirWrite(cap))
            }
            KIND_DIR_READ => {
                let (verifying, key) = split_fields::<32>(kind, &bytes)?;
                let mut key = zeroize::Zeroizing::new(key);
                if VerifyingKey::from_bytes(&verifying).is_err() {
                    return Err(CapError::BadKey);
                }
                Ok(Cap::DirRead(DirReadCap {
                    verifying,
                    key: ReadKey::from_bytes(std::mem::take(&mut *key)),
                }))
            }
            _ => {
                if bytes.len() > INLINE_LIMIT {
                    return Err(CapError::LiteralTooLong {
                        max: INLINE_LIMIT,
                        got: bytes.len(),
                    });
                }
                Ok(Cap::Literal(LiteralCap {
                    data: bytes.to_vec(),
                }))
            }
        }
    }
}

macro_rules! from_str_via_cap {
    ($ty:ident, $variant:ident, $kind:expr) => {
        impl FromStr for $ty {
            type Err = CapError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s.parse::<Cap>()? {
                    Cap::$variant(cap) => Ok(cap),
                    other => Err(CapError::WrongKind {
                        expected: $kind,
                        got: other.kind(),
                    }),
                }
            }
        }
    };
}

from_str_via_cap!(ReadCap, Read, KIND_READ);
from_str_via_cap!(VerifyCap, Verify, KIND_VERIFY);
from_str_via_cap!(LiteralCap, Literal, KIND_LITERAL);
from_str_via_cap!(DirWriteCap, DirWrite, KIND_DIR_WRITE);
from_str_via_cap!(DirReadCap, DirRead, KIND_DIR_READ);

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn read_cap() -> ReadCap {
        ReadCap {
            root: ShareRoot::from_bytes([1; 32]),
            key: ReadKey::from_bytes([2; 32]),
            size: 123_456,
        }
    }

    #[test]
    fn read_cap_text_and_reduction() {
        let cap = read_cap();
        let text = cap.to_string();
        assert!(text.starts_with("cairn:chk:1:"));
        assert_eq!(text.len(), "cairn:chk:1:".len() + 116);
        assert_eq!(text.parse::<ReadCap>().unwrap(), cap);
        assert_eq!(text.to_uppercase().parse::<ReadCap>().unwrap(), cap);
        let vcap = cap.verify_cap();
        let vtext = vcap.to_string();
        assert!(vtext.starts_with("cairn:vchk:1:"));
        assert_eq!(vtext.parse::<VerifyCap>().unwrap(), vcap);
        assert_eq!(Cap::Read(cap.clone()).size(), 123_456);
        let debug = format!("{cap:?}");
        assert!(!debug.contains(&text[12..]) && !debug.contains("2, 2, 2"));
        assert!(format!("{cap:?}").contains("ReadKey(..)"));
    }

    #[test]
    fn literal_caps() {
        assert_eq!(LiteralCap { data: vec![] }.to_string(), "cairn:lit:1:");
        let cap: Cap = "cairn:lit:1:".parse().unwrap();
        assert_eq!(cap, Cap::Literal(LiteralCap { data: vec![] }));
        let hello = LiteralCap {
            data: b"hello".to_vec(),
        };
        assert_eq!(hello.to_string(), "cairn:lit:1:nbswy3dp");
        assert_eq!("cairn:lit:1:NBSWY3DP".parse::<LiteralCap>().unwrap(), hello);
        let long = LiteralCap {
            data: vec![0; INLINE_LIMIT + 1],
        };
        assert_eq!(
            long.to_string().parse::<Cap>(),
            Err(CapError::LiteralTooLong {
                max: INLINE_LIMIT,
                got: INLINE_LIMIT + 1
            })
        );
    }

    #[test]
    fn parse_errors() {
        assert_eq!("http://x".parse::<Cap>(), Err(CapError::NotACap));
        assert_eq!("cairn:chk".parse::<Cap>(), Err(CapError::NotACap));
        assert_eq!(
            "cairn:mut:1:aa".parse::<Cap>(),
            Err(CapError::UnknownKind("mut".into()))
        );
        assert!(matches!(
            "cairn:chk:2:aa".parse::<Cap>(),
            Err(CapError::UnsupportedVersion { kind: "chk", .. })
        ));
        assert_eq!("cairn:chk:1:a!".parse::<Cap>(), Err(CapError::BadBase32));
        assert_eq!(
            "cairn:vchk:1:aaa".parse::<Cap>().unwrap_err().to_string(),
            "bad base32 in cap data"
        );
        assert_eq!(
            "cairn:vchk:1:aaaaaaaa".parse::<Cap>(),
            Err(CapError::WrongLength {
                kind: "vchk",
                expected: 40,
                got: 5
            })
        );
        assert_eq!(
            "cairn:lit:1:".parse::<ReadCap>(),
            Err(CapError::WrongKind {
                expected: "chk",
                got: "lit"
            })
        );
    }

    #[test]
    fn dir_caps_derive_and_round_trip() {
        let write = DirWriteCap::from_seed([7; 32]);
        let read = write.read_cap();
        assert_eq!(write.slot(), read.slot());
        let text = write.to_string();
        assert!(text.starts_with("cairn:dir:1:"));
        assert_eq!(text.parse::<DirWriteCap>().unwrap(), write);
        let rtext = read.to_string();
        assert!(rtext.starts_with("cairn:dir-ro:1:"));
        assert_eq!(rtext.parse::<DirReadCap>().unwrap(), read);
        assert!(rtext.parse::<Cap>().unwrap().is_dir());
        assert_ne!(read.key.as_bytes(), write.seed());
        assert!(!format!("{write:?}{read:?}").contains(&text[12..20]));
        assert_eq!(
            rtext.parse::<DirWriteCap>(),
            Err(CapError::WrongKind {
                expected: "dir",
                got: "dir-ro"
            })
        );
        // A different seed is a different directory.
        assert_ne!(DirWriteCap::from_seed([8; 32]).slot(), write.slot());
    }

    #[test]
    fn dir_read_cap_with_a_bad_point_is_refused() {
        // y = 2 is not on the curve.
        let mut fields = vec![0u8; 64];
        fields[0] = 2;
        let text = format!("cairn:dir-ro:1:{}", b32(&fields));
        assert_eq!(text.parse::<Cap>(), Err(CapError::BadKey));
    }

    proptest! {
        #[test]
        fn caps_round_trip(root in any::<[u8; 32]>(), key in any::<[u8; 32]>(), size in any::<u64>(),
                           data in proptest::collection::vec(any::<u8>(), 0..=INLINE_LIMIT)) {
            let caps = [
                Cap::Read(ReadCap { root: ShareRoot::from_bytes(root), key: ReadKey::from_bytes(key), size }),
                Cap::Verify(VerifyCap { root: ShareRoot::from_bytes(root), size }),
                Cap::Literal(LiteralCap { data }),
            ];
            for cap in caps {
                let text = cap.to_string();
                prop_assert!(text.is_ascii() && !text.contains('='));
                prop_assert_eq!(text.parse::<Cap>().unwrap(), cap);
            }
        }

        #[test]
        fn cap_garbage_never_panics(s in "\\PC{0,200}", tail in "[a-zA-Z2-7=]{0,150}") {
            let _ = s.parse::<Cap>();
            for kind in ["chk", "vchk", "lit", "x"] {
                let _ = format!("cairn:{kind}:1:{tail}").parse::<Cap>();
            }
        }
    }
}

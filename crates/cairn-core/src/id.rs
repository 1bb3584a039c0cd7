//! Identifiers (32-byte newtypes with one canonical hex text form) and the erasure [`Encoding`].
//!
//! Text form: 64 lowercase hex characters (parsing also accepts uppercase). `Debug` prints the
//! first 10 hex characters. Serde: a hex string in human-readable formats (JSON, TOML), the raw
//! 32 bytes otherwise (postcard).

use std::fmt;
use std::str::FromStr;

use data_encoding::{HEXLOWER, HEXLOWER_PERMISSIVE};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::CoreError;

/// Parses 64 hex characters into 32 bytes, naming `what` in errors.
pub(crate) fn parse_hex32(what: &'static str, s: &str) -> Result<[u8; 32], CoreError> {
    let bytes = HEXLOWER_PERMISSIVE
        .decode(s.as_bytes())
        .map_err(|source| CoreError::BadHex { what, source })?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| CoreError::BadLength {
        what,
        expected: 32,
        got: bytes.len(),
    })
}

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident, $what:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; 32]);

        impl $name {
            /// Wraps 32 bytes.
            pub const fn from_bytes(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }

            /// The 32 bytes.
            pub const fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// The first 10 hex characters, for logs and tables.
            pub fn fmt_short(&self) -> String {
                HEXLOWER.encode(&self.0[..5])
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&HEXLOWER.encode(&self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.fmt_short())
            }
        }

        impl FromStr for $name {
            type Err = CoreError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_hex32($what, s).map(Self)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                if serializer.is_human_readable() {
                    serializer.collect_str(self)
                } else {
                    self.0.serialize(serializer)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                if deserializer.is_human_readable() {
                    let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                    s.parse().map_err(serde::de::Error::custom)
                } else {
                    <[u8; 32]>::deserialize(deserializer).map(Self)
                }
            }
        }
    };
}

id_type!(
    /// BLAKE3 of a chunk's ciphertext (before erasure coding).
    ChunkId,
    "chunk id"
);
id_type!(
    /// BLAKE3 of an encoded [`ChunkHeader`](crate::erasure::ChunkHeader): the storage key under
    /// which a blob's `n` shares live, and what caps commit to.
    ShareRoot,
    "share root"
);
id_type!(
    /// A node's ed25519 public key bytes.
    NodeId,
    "node id"
);
id_type!(
    /// A grid's ed25519 public key bytes.
    GridId,
    "grid id"
);
id_type!(
    /// Names a mutable slot (a directory): BLAKE3 (derive-key mode) of its verifying key. Holders
    /// store a slot's versions under it; it reveals nothing of the content.
    SlotId,
    "slot id"
);
id_type!(
    /// BLAKE3 of one encoded, signed version of a mutable slot.
    VersionId,
    "version id"
);

/// The largest `n` (shares per blob) supported.
pub const MAX_SHARES: u8 = 64;

/// Erasure parameters: `n` shares are written, any `k` rebuild the blob, and an upload counts
/// as healthy once shares sit on at least `happy` distinct servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawEncoding")]
pub struct Encoding {
    /// Shares needed to read.
    pub k: u8,
    /// Shares written.
    pub n: u8,
    /// Distinct servers needed for an upload to count as healthy.
    pub happy: u8,
}

/// Unvalidated [`Encoding`] as it comes from serde.
#[derive(Deserialize)]
struct RawEncoding {
    k: u8,
    n: u8,
    happy: u8,
}

impl TryFrom<RawEncoding> for Encoding {
    type Error = CoreError;

    fn try_from(raw: RawEncoding) -> Result<Self, Self::Error> {
        Encoding::new(raw.k, raw.n, raw.happy)
    }
}

impl Encoding {
    /// 3-of-5, healthy at 4 servers.
    pub const DEFAULT: Encoding = Encoding {
        k: 3,
        n: 5,
        happy: 4,
    };

    /// Checks `1 <= k <= happy <= n <= MAX_SHARES`.
    pub fn new(k: u8, n: u8, happy: u8) -> Result<Encoding, CoreError> {
        if k == 0 || k > happy || happy > n || n > MAX_SHARES {
            return Err(CoreError::InvalidEncoding {
                k,
                n,
                happy,
                max: MAX_SHARES,
            });
        }
        Ok(Encoding { k, n, happy })
    }
}

impl Default for Encoding {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-of-{} (happy {})", self.k, self.n, self.happy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_text_round_trip_and_short_form() {
        let id = ChunkId::from_bytes([0xab; 32]);
        let text = id.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<ChunkId>().unwrap(), id);
        assert_eq!(text.to_uppercase().parse::<ChunkId>().unwrap(), id);
        assert_eq!(id.fmt_short(), "ababababab");
        assert_eq!(format!("{id:?}"), "ChunkId(ababababab)");
    }

    #[test]
    fn id_text_rejects_bad_input() {
        assert!(matches!(
            "abcd".parse::<NodeId>(),
            Err(CoreError::BadLength {
                expected: 32,
                got: 2,
                ..
            })
        ));
        assert!(matches!(
            "zz".repeat(32).parse::<NodeId>(),
            Err(CoreError::BadHex { .. })
        ));
        assert!("abc".parse::<NodeId>().is_err());
    }

    #[test]
    fn id_serde_is_bytes_in_postcard() {
        let id = ShareRoot::from_bytes([7; 32]);
        let bytes = postcard::to_allocvec(&id).unwrap();
        assert_eq!(bytes, [7u8; 32]);
        assert_eq!(postcard::from_bytes::<ShareRoot>(&bytes).unwrap(), id);
    }

    #[test]
    fn encoding_bounds() {
        assert!(Encoding::new(3, 5, 4).is_ok());
        assert!(Encoding::new(1, 1, 1).is_ok());
        assert!(Encoding::new(64, 64, 64).is_ok());
        assert!(Encoding::new(0, 5, 4).is_err());
        assert!(Encoding::new(3, 5, 2).is_err());
        assert!(Encoding::new(3, 5, 6).is_err());
        assert!(Encoding::new(3, 65, 4).is_err());
        assert_eq!(Encoding::default(), Encoding::DEFAULT);
        let bad = [0u8, 5, 4];
        assert!(postcard::from_bytes::<Encoding>(&bad).is_err());
        let good = postcard::to_allocvec(&Encoding::DEFAULT).unwrap();
        assert_eq!(
            postcard::from_bytes::<Encoding>(&good).unwrap(),
            Encoding::DEFAULT
        );
    }
}

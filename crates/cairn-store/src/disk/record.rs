//! The values kept in the metadata tables (store format 1).
//!
//! Each value is one version byte followed by a postcard encoding of that version's struct, so
//! a later version can add a variant and migrate on read. Leases are stored in our own struct,
//! not `cairn_core::wire::Lease`, so a wire change cannot silently change the disk format.
//!
//! - share record (`shares` table, key `root || index`): `01 || postcard(ShareRecordV1)`.
//! - header record (`headers` table, key `root`): `01 || postcard(HeaderRecordV1)`.

use cairn_core::id::NodeId;
use cairn_core::wire::Lease;
use serde::{Deserialize, Serialize};

/// The version byte of every record this build writes.
const V1: u8 = 1;

/// Where a share's bytes live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Location {
    /// In the `inline` table under the same key.
    Inline,
    /// In the share file named after the key.
    File,
    /// In pack file `pack`: the share's header (`header_len` bytes) at `offset`, its bytes
    /// right after. Such a share does not use the `headers` table.
    Packed {
        /// The pack's id.
        pack: u64,
        /// Where the header starts.
        offset: u64,
        /// The header's length.
        header_len: u32,
    },
}

/// What the store knows of one share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ShareRecord {
    pub(crate) len: u64,
    pub(crate) location: Location,
    pub(crate) leases: Vec<Lease>,
}

/// A root's header and how many of its shares are held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HeaderRecord {
    pub(crate) refs: u32,
    pub(crate) header: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct ShareRecordV1 {
    len: u64,
    location: Location,
    leases: Vec<LeaseV1>,
}

#[derive(Serialize, Deserialize)]
struct LeaseV1 {
    owner: [u8; 32],
    expires_at: u64,
}

#[derive(Serialize, Deserialize)]
struct HeaderRecordV1 {
    refs: u32,
    header: Vec<u8>,
}

/// Prefixes `V1` to the postcard encoding of `value`.
fn encode_v1<T: Serialize>(value: &T) -> Vec<u8> {
    // Cannot fail: postcard into a Vec only errors for sequences of unknown length or custom
    // Serialize errors, and the record structs are plain derives of ints, enums and Vecs.
    postcard::to_extend(value, vec![V1]).expect("postcard encoding of a plain record")
}

/// Checks the version byte and decodes the rest, which must be consumed exactly.
fn decode_v1<'a, T: Deserialize<'a>>(what: &str, bytes: &'a [u8]) -> Result<T, String> {
    match bytes.split_first() {
        Some((&V1, rest)) => match postcard::take_from_bytes::<T>(rest) {
            Ok((value, [])) => Ok(value),
            Ok((_, extra)) => Err(format!("{what}: {} trailing bytes", extra.len())),
            Err(e) => Err(format!("{what}: {e}")),
        },
        Some((version, _)) => Err(format!("{what}: unknown record version {version}")),
        None => Err(format!("{what}: empty record")),
    }
}

impl ShareRecord {
    pub(crate) fn encode(&self) -> Vec<u8> {
        encode_v1(&ShareRecordV1 {
            len: self.len,
            location: self.location,
            leases: self
                .leases
                .iter()
                .map(|l| LeaseV1 {
                    owner: *l.owner.as_bytes(),
                    expires_at: l.expires_at,
                })
                .collect(),
        })
    }

    /// Decodes a record; the error says what is wrong, for [`crate::StoreError::Corrupt`].
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, String> {
        let v1: ShareRecordV1 = decode_v1("share record", bytes)?;
        Ok(ShareRecord {
            len: v1.len,
            location: v1.location,
            leases: v1
                .leases
                .into_iter()
                .map(|l| Lease {
                    owner: NodeId::from_bytes(l.owner),
                    expires_at: l.expires_at,
                })
                .collect(),
        })
    }
}

impl HeaderRecord {
    pub(crate) fn encode(&self) -> Vec<u8> {
        // The struct is rebuilt to borrow-free form; headers are small.
        encode_v1(&HeaderRecordV1 {
            refs: self.refs,
            header: self.header.clone(),
        })
    }

    /// Decodes a record; the error says what is wrong.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, String> {
        let v1: HeaderRecordV1 = decode_v1("header record", bytes)?;
        Ok(HeaderRecord {
            refs: v1.refs,
            header: v1.header,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_record_round_trips_and_is_versioned() {
        let rec = ShareRecord {
            len: 1 << 40,
            location: Location::File,
            leases: vec![Lease {
                owner: NodeId::from_bytes([3; 32]),
                expires_at: 1_800_000_000,
            }],
        };
        let bytes = rec.encode();
        assert_eq!(bytes[0], 1);
        assert_eq!(ShareRecord::decode(&bytes), Ok(rec));
    }

    #[test]
    fn share_record_golden_bytes() {
        let rec = ShareRecord {
            len: 300,
            location: Location::Inline,
            leases: vec![Lease {
                owner: NodeId::from_bytes([0xab; 32]),
                expires_at: 5,
            }],
        };
        let mut expected = vec![1, 0xac, 0x02, 0, 1];
        expected.extend([0xab; 32]);
        expected.push(5);
        assert_eq!(rec.encode(), expected);
    }

    #[test]
    fn packed_share_record_round_trips() {
        let rec = ShareRecord {
            len: 1371,
            location: Location::Packed {
                pack: 7,
                offset: 123_456,
                header_len: 201,
            },
            leases: vec![Lease {
                owner: NodeId::from_bytes([3; 32]),
                expires_at: 1_800_000_000,
            }],
        };
        let bytes = rec.encode();
        // version, len, variant 2, pack, offset, header_len, leases
        assert_eq!(&bytes[..5], &[1, 0xdb, 0x0a, 2, 7]);
        assert_eq!(ShareRecord::decode(&bytes), Ok(rec));
    }

    #[test]
    fn bad_records_are_errors_not_panics() {
        assert!(ShareRecord::decode(&[]).is_err());
        assert!(ShareRecord::decode(&[2, 0, 0, 0]).is_err());
        assert!(ShareRecord::decode(&[1, 0xff]).is_err());
        let mut extra = ShareRecord {
            len: 1,
            location: Location::File,
            leases: vec![],
        }
        .encode();
        extra.push(0);
        assert!(ShareRecord::decode(&extra).is_err());
        assert!(HeaderRecord::decode(&[1, 1, 200]).is_err());
    }

    #[test]
    fn header_record_round_trips() {
        let rec = HeaderRecord {
            refs: 3,
            header: vec![9; 70],
        };
        assert_eq!(HeaderRecord::decode(&rec.encode()), Ok(rec));
    }
}

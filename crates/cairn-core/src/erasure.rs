//! Reed-Solomon k-of-n (systematic) over a blob, and the [`ChunkHeader`] that lists its shares.
//!
//! A blob (a chunk's ciphertext, or a manifest) of `L` bytes is zero-padded to `k * share_len`
//! with `share_len = max(1, ceil(L / k))`, cut into `k` data shards (shares `0..k`, the blob
//! itself) and extended with `n - k` parity shards by `reed-solomon-erasure` (GF(2^8)). The
//! header records `k`, `n`, the chunk id (BLAKE3 of the blob), `L` and the BLAKE3 hash of each
//! share; its BLAKE3 hash is the [`ShareRoot`] under which the shares are stored.

use reed_solomon_erasure::galois_8::ReedSolomon;
use serde::{Deserialize, Serialize};

use crate::CoreError;
use crate::error::FormatError;
use crate::id::{ChunkId, Encoding, MAX_SHARES, ShareRoot};

/// Version byte leading an encoded [`ChunkHeader`].
pub const HEADER_VERSION: u8 = 1;
/// The largest blob (chunk ciphertext or manifest) a header may describe: 128 MiB. Chunks are
/// at most 4 MiB + 17 bytes; the limit leaves room for the largest manifest
/// ([`MAX_MANIFEST_BYTES`](crate::manifest::MAX_MANIFEST_BYTES), about 69 MiB).
pub const MAX_BLOB_LEN: u32 = 128 * 1024 * 1024;
/// The largest encoded header: version, k, n, chunk id, length, `MAX_SHARES` hashes.
pub const MAX_HEADER_BYTES: usize = 1 + 1 + 1 + 32 + 5 + 1 + 32 * MAX_SHARES as usize;

/// The verifiable description of one blob's shares. Its BLAKE3 hash is the blob's [`ShareRoot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkHeader {
    /// Shares needed to rebuild the blob.
    pub k: u8,
    /// Shares written.
    pub n: u8,
    /// BLAKE3 of the blob (the chunk ciphertext).
    pub chunk_id: ChunkId,
    /// Length of the blob before padding.
    pub ciphertext_len: u32,
    /// BLAKE3 of each of the `n` shares, by share index.
    pub share_hashes: Vec<[u8; 32]>,
}

impl ChunkHeader {
    /// Canonical encoding: [`HEADER_VERSION`] then postcard of the fields in order.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 32 + 32 * self.share_hashes.len());
        out.push(HEADER_VERSION);
        // Serializing plain integers, arrays and a Vec into a Vec cannot fail.
        #[allow(clippy::expect_used)]
        let out = postcard::to_extend(self, out).expect("postcard into a Vec is infallible");
        out
    }

    /// Decodes and checks a header: version, `1 <= k <= n <= MAX_SHARES`, `n` share hashes,
    /// length at most [`MAX_BLOB_LEN`], canonical bytes only.
    pub fn decode(bytes: &[u8]) -> Result<Self, CoreError> {
        let header: ChunkHeader = decode_versioned(bytes, HEADER_VERSION, MAX_HEADER_BYTES)
            .map_err(CoreError::BadHeader)?;
        header.check().map_err(CoreError::BadHeader)?;
        if header.encode() != bytes {
            return Err(CoreError::BadHeader(FormatError::NotCanonical));
        }
        Ok(header)
    }

    fn check(&self) -> Result<(), FormatError> {
        if self.k == 0 || self.k > self.n || self.n > MAX_SHARES {
            return Err(FormatError::KofN {
                k: self.k,
                n: self.n,
            });
        }
        if self.share_hashes.len() != usize::from(self.n) {
            return Err(FormatError::ShareCount {
                n: self.n,
                got: self.share_hashes.len(),
            });
        }
        if self.ciphertext_len > MAX_BLOB_LEN {
            return Err(FormatError::TooLarge {
                what: "ciphertext length",
                got: self.ciphertext_len.into(),
                max: MAX_BLOB_LEN.into(),
            });
        }
        Ok(())
    }

    /// The share root: BLAKE3 of [`encode`](Self::encode).
    pub fn root(&self) -> ShareRoot {
        ShareRoot::from_bytes(*blake3::hash(&self.encode()).as_bytes())
    }

    /// Length of every share: `max(1, ceil(ciphertext_len / k))`.
    pub fn share_len(&self) -> usize {
        share_len(self.ciphertext_len as usize, self.k)
    }

    /// Checks one share against the header: index below `n`, right length, right hash.
    pub fn verify_share(&self, index: u8, data: &[u8]) -> Result<(), CoreError> {
        let expected = self
            .share_hashes
            .get(usize::from(index))
            .ok_or(CoreError::ShareIndex { index, n: self.n })?;
        let share_len = self.share_len();
        if data.len() != share_len {
            return Err(CoreError::ShareLength {
                index,
                expected: share_len,
                got: data.len(),
            });
        }
        if blake3::hash(data).as_bytes() != expected {
            return Err(CoreError::ShareMismatch { index });
        }
        Ok(())
    }
}

/// Decodes `version byte || postcard(T)`, refusing other versions, oversize input and trailing
/// bytes.
pub(crate) fn decode_versioned<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    version: u8,
    max_len: usize,
) -> Result<T, FormatError> {
    let (&got, body) = bytes.split_first().ok_or(FormatError::Empty)?;
    if got != version {
        return Err(FormatError::Version {
            supported: version,
            got,
        });
    }
    if bytes.len() > max_len {
        return Err(FormatError::TooLarge {
            what: "encoded length",
            got: bytes.len() as u64,
            max: max_len as u64,
        });
    }
    let (value, rest) = postcard::take_from_bytes(body).map_err(FormatError::Malformed)?;
    if !rest.is_empty() {
        return Err(FormatError::NotCanonical);
    }
    Ok(value)
}

fn share_len(blob_len: usize, k: u8) -> usize {
    blob_len.div_ceil(usize::from(k.max(1))).max(1)
}

/// Checks that `header_bytes` hash to `root`, then decodes them.
pub fn verify_header(root: &ShareRoot, header_bytes: &[u8]) -> Result<ChunkHeader, CoreError> {
    if blake3::hash(header_bytes).as_bytes() != root.as_bytes() {
        return Err(CoreError::RootMismatch);
    }
    ChunkHeader::decode(header_bytes)
}

fn codec(k: u8, n: u8) -> Result<ReedSolomon, CoreError> {
    ReedSolomon::new(usize::from(k), usize::from(n - k)).map_err(|source| CoreError::Erasure {
        k,
        n,
        source,
    })
}

/// Erasure-codes a blob into `enc.n` shares (shares `0..k` are the zero-padded blob itself)
/// and returns them with their header.
pub fn encode_blob(
    ciphertext: &[u8],
    enc: Encoding,
) -> Result<(ChunkHeader, Vec<Vec<u8>>), CoreError> {
    let enc = Encoding::new(enc.k, enc.n, enc.happy)?;
    let ciphertext_len = u32::try_from(ciphertext.len())
        .ok()
        .filter(|&len| len <= MAX_BLOB_LEN)
        .ok_or(CoreError::BlobTooLarge {
            len: ciphertext.len() as u64,
            max: MAX_BLOB_LEN.into(),
        })?;
    let (k, n) = (usize::from(enc.k), usize::from(enc.n));
    let len = share_len(ciphertext.len(), enc.k);
    let mut shares: Vec<Vec<u8>> = Vec::with_capacity(n);
    for i in 0..k {
        let start = (i * len).min(ciphertext.len());
        let end = ((i + 1) * len).min(ciphertext.len());
        let mut share = Vec::with_capacity(len);
        share.extend_from_slice(&ciphertext[start..end]);
        share.resize(len, 0);
        shares.push(share);
    }
    if n > k {
        let mut parity = vec![vec![0u8; len]; n - k];
        codec(enc.k, enc.n)?
            .encode_sep(&shares, &mut parity)
            .map_err(|source| CoreError::Erasure {
                k: enc.k,
                n: enc.n,
                source,
            })?;
        shares.append(&mut parity);
    }
    let header = ChunkHeader {
        k: enc.k,
        n: enc.n,
        chunk_id: ChunkId::from_bytes(*blake3::hash(ciphertext).as_bytes()),
        ciphertext_len,
        share_hashes: shares.iter().map(|s| *blake3::hash(s).as_bytes()).collect(),
    };
    Ok((header, shares))
}

/// Rebuilds a blob from at least `k` shares of distinct indices and checks its chunk id.
///
/// Shares should have been verified with [`ChunkHeader::verify_share`]; indices and lengths
/// are checked again here, duplicates are ignored. When shares `0..k` are all present no
/// Reed-Solomon decoding is done. Fails with [`CoreError::ChunkIdMismatch`] when the result does
/// not hash to the header's chunk id (inconsistent shares from the writer).
pub fn decode_blob(header: &ChunkHeader, shares: Vec<(u8, Vec<u8>)>) -> Result<Vec<u8>, CoreError> {
    let (k, n) = (usize::from(header.k), usize::from(header.n));
    if header.k == 0 || header.k > header.n || header.share_hashes.len() != n {
        return Err(CoreError::BadHeader(FormatError::KofN {
            k: header.k,
            n: header.n,
        }));
    }
    let len = header.share_len();
    let mut slots: Vec<Option<Vec<u8>>> = vec![None; n];
    let mut have = 0;
    for (index, data) in shares {
        let slot = slots
            .get_mut(usize::from(index))
            .ok_or(CoreError::ShareIndex { index, n: header.n })?;
        if data.len() != len {
            return Err(CoreError::ShareLength {
                index,
                expected: len,
                got: data.len(),
            });
        }
        if slot.is_none() {
            *slot = Some(data);
            have += 1;
        }
    }
    if have < k {
        return Err(CoreError::NotEnoughShares { have, need: k });
    }
    if slots[..k].iter().any(Option::is_none) {
        // Keep exactly k shares (data shards first): fewer rows to invert, same result.
        let mut kept = 0;
        for slot in &mut slots {
            if slot.is_some() {
                kept += 1;
                if kept > k {
                    *slot = None;
                }
            }
        }
        codec(header.k, header.n)?
            .reconstruct_data(&mut slots)
            .map_err(|source| CoreError::Erasure {
                k: header.k,
                n: header.n,
                source,
            })?;
    }
    let mut blob = Vec::with_capacity(k * len);
    for slot in slots.iter().take(k) {
        // After the fast-path check or `reconstruct_data`, every data slot is filled.
        let data = slot
            .as_deref()
            .ok_or(CoreError::NotEnoughShares { have, need: k })?;
        blob.extend_from_slice(data);
    }
    blob.truncate(header.ciphertext_len as usize);
    let got = ChunkId::from_bytes(*blake3::hash(&blob).as_bytes());
    if got != header.chunk_id {
        return Err(CoreError::ChunkIdMismatch {
            expected: header.chunk_id,
            got,
        });
    }
    Ok(blob)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn enc(k: u8, n: u8) -> Encoding {
        Encoding::new(k, n, k).unwrap()
    }

    #[test]
    fn systematic_shares_are_the_blob() {
        let blob: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let (header, shares) = encode_blob(&blob, Encoding::DEFAULT).unwrap();
        assert_eq!(shares.len(), 5);
        assert_eq!(header.share_len(), 334);
        let joined: Vec<u8> = shares[..3].concat();
        assert_eq!(&joined[..1000], &blob[..]);
        assert!(joined[1000..].iter().all(|&b| b == 0));
        for (i, share) in shares.iter().enumerate() {
            header.verify_share(i as u8, share).unwrap();
        }
    }

    #[test]
    fn decode_from_parity_shares() {
        let blob = vec![42u8; 5000];
        let (header, shares) = encode_blob(&blob, Encoding::DEFAULT).unwrap();
        let picked = vec![
            (4, shares[4].clone()),
            (3, shares[3].clone()),
            (1, shares[1].clone()),
        ];
        assert_eq!(decode_blob(&header, picked).unwrap(), blob);
    }

    #[test]
    fn flipped_byte_fails_verify_share() {
        let (header, mut shares) =
            encode_blob(b"some ciphertext bytes", Encoding::DEFAULT).unwrap();
        shares[2][0] ^= 0x80;
        assert!(matches!(
            header.verify_share(2, &shares[2]),
            Err(CoreError::ShareMismatch { index: 2 })
        ));
        assert!(matches!(
            header.verify_share(2, &shares[2][1..]),
            Err(CoreError::ShareLength { index: 2, .. })
        ));
        assert!(matches!(
            header.verify_share(5, &shares[1]),
            Err(CoreError::ShareIndex { index: 5, n: 5 })
        ));
    }

    #[test]
    fn corrupted_share_is_caught_by_chunk_id() {
        let (header, mut shares) = encode_blob(&[7u8; 3000], Encoding::DEFAULT).unwrap();
        shares[3][10] ^= 1;
        let picked = vec![
            (0, shares[0].clone()),
            (1, shares[1].clone()),
            (3, shares[3].clone()),
        ];
        assert!(matches!(
            decode_blob(&header, picked),
            Err(CoreError::ChunkIdMismatch { .. })
        ));
    }

    #[test]
    fn k_minus_one_shares_are_not_enough() {
        let (header, shares) = encode_blob(&[1u8; 999], Encoding::DEFAULT).unwrap();
        let picked = vec![
            (0, shares[0].clone()),
            (4, shares[4].clone()),
            (0, shares[0].clone()),
        ];
        assert!(matches!(
            decode_blob(&header, picked),
            Err(CoreError::NotEnoughShares { have: 2, need: 3 })
        ));
        assert!(matches!(
            decode_blob(&header, vec![(9, shares[0].clone())]),
            Err(CoreError::ShareIndex { index: 9, .. })
        ));
    }

    #[test]
    fn empty_blob_and_k_equals_n() {
        let (header, shares) = encode_blob(b"", enc(2, 2)).unwrap();
        assert_eq!(header.share_len(), 1);
        let picked = shares
            .into_iter()
            .enumerate()
            .map(|(i, s)| (i as u8, s))
            .collect();
        assert_eq!(decode_blob(&header, picked).unwrap(), b"");
    }

    #[test]
    fn header_checks() {
        let (header, _) = encode_blob(b"x", Encoding::DEFAULT).unwrap();
        let bytes = header.encode();
        assert_eq!(ChunkHeader::decode(&bytes).unwrap(), header);
        assert_eq!(verify_header(&header.root(), &bytes).unwrap(), header);
        assert!(matches!(
            verify_header(&ShareRoot::from_bytes([0; 32]), &bytes),
            Err(CoreError::RootMismatch)
        ));

        let mut wrong_version = bytes.clone();
        wrong_version[0] = 2;
        assert!(matches!(
            ChunkHeader::decode(&wrong_version),
            Err(CoreError::BadHeader(FormatError::Version { got: 2, .. }))
        ));
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(ChunkHeader::decode(&trailing).is_err());

        let mut bad = header.clone();
        bad.share_hashes.pop();
        assert!(matches!(
            ChunkHeader::decode(&bad.encode()),
            Err(CoreError::BadHeader(FormatError::ShareCount { .. }))
        ));
        let mut bad = header.clone();
        bad.k = 6;
        assert!(ChunkHeader::decode(&bad.encode()).is_err());
        let mut bad = header.clone();
        bad.k = 0;
        assert!(ChunkHeader::decode(&bad.encode()).is_err());
        let mut bad = header;
        bad.ciphertext_len = MAX_BLOB_LEN + 1;
        assert!(matches!(
            ChunkHeader::decode(&bad.encode()),
            Err(CoreError::BadHeader(FormatError::TooLarge { .. }))
        ));
    }

    proptest! {
        #[test]
        fn header_round_trip(
            k in 1u8..=8, extra in 0u8..8, len in 0u32..=MAX_BLOB_LEN, id in any::<[u8; 32]>(),
            seed in any::<u8>(),
        ) {
            let n = k + extra;
            let header = ChunkHeader {
                k, n, chunk_id: ChunkId::from_bytes(id), ciphertext_len: len,
                share_hashes: (0..n).map(|i| [i ^ seed; 32]).collect(),
            };
            let bytes = header.encode();
            prop_assert!(bytes.len() <= MAX_HEADER_BYTES);
            prop_assert_eq!(ChunkHeader::decode(&bytes).unwrap(), header);
        }

        #[test]
        fn header_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = ChunkHeader::decode(&bytes);
            let mut versioned = bytes.clone();
            versioned.insert(0, HEADER_VERSION);
            let _ = ChunkHeader::decode(&versioned);
        }

        #[test]
        fn decode_blob_garbage_never_panics(
            k in 1u8..=5, extra in 0u8..=3, len in 0u32..2000,
            shares in proptest::collection::vec(
                (0u8..10, proptest::collection::vec(any::<u8>(), 0..700)), 0..8),
        ) {
            let n = k + extra;
            let header = ChunkHeader {
                k, n, chunk_id: ChunkId::from_bytes([0; 32]), ciphertext_len: len,
                share_hashes: vec![[0; 32]; usize::from(n)],
            };
            // Also give shares of the right length, so the codec itself runs on garbage.
            let right: Vec<(u8, Vec<u8>)> = shares
                .iter()
                .map(|(i, d)| (*i % n, d.iter().copied().cycle().take(header.share_len()).collect()))
                .filter(|(_, d): &(u8, Vec<u8>)| d.len() == header.share_len())
                .collect();
            prop_assert!(decode_blob(&header, shares).is_err() || len == 0);
            let _ = decode_blob(&header, right);
        }

        #[test]
        fn any_k_shares_decode(
            blob in proptest::collection::vec(any::<u8>(), 0..3000),
            k in 1u8..=6, extra in 0u8..=5, picks in any::<u64>(),
        ) {
            let n = k + extra;
            let (header, shares) = encode_blob(&blob, enc(k, n)).unwrap();
            // A pseudo-random subset of exactly k indices.
            let mut order: Vec<u8> = (0..n).collect();
            let mut state = picks;
            for i in (1..order.len()).rev() {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                order.swap(i, (state >> 33) as usize % (i + 1));
            }
            let picked = order[..usize::from(k)]
                .iter()
                .map(|&i| (i, shares[usize::from(i)].clone()))
                .collect();
            prop_assert_eq!(decode_blob(&header, picked).unwrap(), blob);
        }
    }
}

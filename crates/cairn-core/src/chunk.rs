//! Chunks: content-defined chunking of a stream (FastCDC v2020) and the per-chunk pipeline
//! that turns plaintext into verifiable shares and back.
//!
//! Put: plaintext -> [`encode_payload`] (zstd or raw) -> key ([`convergent_key`] or random) ->
//! [`seal`] (AES-256-GCM) -> [`encode_blob`] (Reed-Solomon, header, share root).
//! Get: [`decode_blob`] (checks the chunk id) -> [`open`] -> [`decode_payload`] (bounded by the
//! plaintext length the manifest promises).

use std::io::Read;

use fastcdc::v2020::{Normalization, select_masks};

use crate::CoreError;
use crate::compress::{decode_payload, encode_payload};
use crate::crypto::{ChunkKey, ConvergenceSecret, convergent_key, open, seal};
use crate::erasure::{ChunkHeader, decode_blob, encode_blob};
use crate::id::{Encoding, ShareRoot};

/// Smallest chunk FastCDC cuts (except the last one of a stream).
pub const MIN_CHUNK: u32 = 256 * 1024;
/// Average chunk size FastCDC aims for.
pub const AVG_CHUNK: u32 = 1024 * 1024;
/// Largest chunk FastCDC cuts.
pub const MAX_CHUNK: u32 = 4 * 1024 * 1024;

/// How much of the stream the chunker holds at once: room for two of the largest chunks, so
/// that the bytes after the last cut are moved to the front only once every few chunks. Not
/// more: freeing a larger buffer raised the allocator's threshold for fresh mappings to its size,
/// which kept later large allocations in the heap (a 16 MiB buffer took a putting node's peak
/// RSS from 150 to 205 MiB).
const READ_BUFFER: usize = 2 * MAX_CHUNK as usize;

/// Streaming content-defined chunker over any reader: yields chunk bytes in order.
///
/// The cuts are FastCDC v2020's (normalization level 1, the default gear tables), the same as
/// `fastcdc::v2020::StreamCDC` makes. It reads into one buffer of [`READ_BUFFER`] bytes that
/// it reuses for the whole stream, and copies each chunk out of it once. Memory is bounded by
/// that buffer plus the chunk handed out. An empty input yields no chunks; after a read error
/// the chunker yields that error and then ends.
pub struct Chunker<R: Read> {
    reader: R,
    /// The read buffer (its length is its size; bytes past `end` are stale).
    buffer: Vec<u8>,
    /// The first byte not handed out yet.
    start: usize,
    /// The end of the bytes read.
    end: usize,
    /// The reader has ended (or failed).
    done: bool,
    mask_s: u64,
    mask_l: u64,
}

impl<R: Read> std::fmt::Debug for Chunker<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunker").finish_non_exhaustive()
    }
}

impl<R: Read> Chunker<R> {
    /// A chunker with Cairn's sizes ([`MIN_CHUNK`], [`AVG_CHUNK`], [`MAX_CHUNK`]).
    pub fn new(reader: R) -> Self {
        let (mask_s, mask_l) = select_masks(AVG_CHUNK as usize, Normalization::Level1);
        Self {
            reader,
            buffer: Vec::new(),
            start: 0,
            end: 0,
            done: false,
            mask_s,
            mask_l,
        }
    }

    /// Reads until a whole [`MAX_CHUNK`] is buffered past `start`, or the reader ends.
    fn fill(&mut self) -> std::io::Result<()> {
        while !self.done && self.end - self.start < MAX_CHUNK as usize {
            if self.buffer.is_empty() {
                self.buffer = vec![0; READ_BUFFER];
            }
            if self.end == self.buffer.len() {
                self.buffer.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            match self.reader.read(&mut self.buffer[self.end..]) {
                Ok(0) => self.done = true,
                Ok(n) => self.end += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.done = true;
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

impl<R: Read> Iterator for Chunker<R> {
    type Item = Result<Vec<u8>, CoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Err(e) = self.fill() {
            self.start = self.end;
            return Some(Err(CoreError::Io(e)));
        }
        let buffered = &self.buffer[self.start..self.end];
        if buffered.is_empty() {
            return None;
        }
        let (_, len) = fastcdc::v2020::cut(
            buffered,
            MIN_CHUNK as usize,
            AVG_CHUNK as usize,
            MAX_CHUNK as usize,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
        );
        let chunk = buffered[..len].to_vec();
        self.start += len;
        Some(Ok(chunk))
    }
}

/// The chunks of bytes already in memory, as slices of them: the cuts [`Chunker`] makes of
/// the same bytes, with no read buffer and no copy (for the small files of a batch).
pub fn chunk_slices(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    fastcdc::v2020::FastCDC::new(
        data,
        MIN_CHUNK as usize,
        AVG_CHUNK as usize,
        MAX_CHUNK as usize,
    )
    .map(move |chunk| &data[chunk.offset..chunk.offset + chunk.length])
}

/// How a chunk's key is chosen.
#[derive(Debug, Clone, Copy)]
pub enum KeyMode<'a> {
    /// Derived from the encoded bytes and this secret: same content, same chunk (dedup).
    Convergent(&'a ConvergenceSecret),
    /// A fresh random key for every chunk (`--private`): nobody can confirm the content.
    Private,
}

/// A sealed chunk, ready to upload: its header, share root, key and `n` shares.
#[derive(Debug, Clone)]
pub struct SealedChunk {
    /// The header listing the shares (stored next to them).
    pub header: ChunkHeader,
    /// BLAKE3 of the encoded header: the storage key of the shares.
    pub root: ShareRoot,
    /// The key that decrypts the chunk (goes into the manifest's read layer).
    pub key: ChunkKey,
    /// Plaintext length of the chunk.
    pub plain_len: u32,
    /// The `n` shares, by index.
    pub shares: Vec<Vec<u8>>,
}

/// Compresses, encrypts and erasure-codes one chunk of plaintext.
///
/// `random_key` is called only for [`KeyMode::Private`]. Fails with [`CoreError::BlobTooLarge`]
/// when `plain` does not fit the format and [`CoreError::InvalidEncoding`] for a bad `enc`.
pub fn seal_chunk(
    plain: &[u8],
    mode: KeyMode<'_>,
    random_key: impl FnOnce() -> [u8; 32],
    enc: Encoding,
) -> Result<SealedChunk, CoreError> {
    let plain_len = u32::try_from(plain.len()).map_err(|_| CoreError::BlobTooLarge {
        len: plain.len() as u64,
        max: u32::MAX.into(),
    })?;
    let encoded = encode_payload(plain);
    let key = match mode {
        KeyMode::Convergent(secret) => convergent_key(secret, &encoded),
        KeyMode::Private => ChunkKey::from_bytes(random_key()),
    };
    let ciphertext = seal(&key, encoded);
    let (header, shares) = encode_blob(&ciphertext, enc)?;
    let root = header.root();
    Ok(SealedChunk {
        header,
        root,
        key,
        plain_len,
        shares,
    })
}

/// Rebuilds, decrypts and decompresses one chunk from at least `k` verified shares.
///
/// Output is bounded by `plain_len` (from the manifest); any other length is an error.
pub fn open_chunk(
    header: &ChunkHeader,
    shares: Vec<(u8, Vec<u8>)>,
    key: &ChunkKey,
    plain_len: u32,
) -> Result<Vec<u8>, CoreError> {
    let ciphertext = decode_blob(header, shares)?;
    let encoded = open(key, ciphertext)?;
    decode_payload(&encoded, plain_len as usize)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::test_bytes::pseudo_random;

    #[test]
    fn chunker_empty_input_yields_nothing() {
        assert_eq!(Chunker::new(&b""[..]).count(), 0);
    }

    #[test]
    fn chunker_cuts_within_bounds_and_concatenates() {
        let data = pseudo_random(9 * 1024 * 1024 + 12_345, 1);
        let chunks: Vec<Vec<u8>> = Chunker::new(&data[..]).map(Result::unwrap).collect();
        assert!(chunks.len() >= 3);
        let (last, rest) = chunks.split_last().unwrap();
        for chunk in rest {
            assert!(chunk.len() >= MIN_CHUNK as usize && chunk.len() <= MAX_CHUNK as usize);
        }
        assert!(!last.is_empty() && last.len() <= MAX_CHUNK as usize);
        assert_eq!(chunks.concat(), data);
    }

    #[test]
    fn chunker_is_content_defined() {
        // Inserting bytes at the front changes only the first chunk(s).
        let data = pseudo_random(6 * 1024 * 1024, 2);
        let mut shifted = b"a few new bytes".to_vec();
        shifted.extend_from_slice(&data);
        let a: Vec<Vec<u8>> = Chunker::new(&data[..]).map(Result::unwrap).collect();
        let b: Vec<Vec<u8>> = Chunker::new(&shifted[..]).map(Result::unwrap).collect();
        let shared = a.iter().filter(|c| b.contains(c)).count();
        assert!(
            shared + 1 >= a.len(),
            "{shared} of {} chunks shared",
            a.len()
        );
    }

    #[test]
    fn chunker_passes_reader_errors() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("disk on fire"))
            }
        }
        let first = Chunker::new(Failing).next();
        assert!(matches!(first, Some(Err(CoreError::Io(_)))));
    }

    /// A reader that hands out at most `step` bytes per read, and sometimes fails with
    /// `Interrupted` first, as a pipe or a socket may.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
        reads: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.reads += 1;
            if self.reads.is_multiple_of(7) {
                return Err(std::io::ErrorKind::Interrupted.into());
            }
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]

        /// The cuts are FastCDC's own (its streaming chunker, same sizes and level), whatever
        /// the sizes of the reads: chunks already stored keep deduplicating.
        #[test]
        fn chunker_cuts_where_fastcdc_cuts(
            len in 0usize..(40 << 20),
            zeros in 0usize..(12 << 20),
            step in 1usize..(9 << 20),
            seed in 1u64..,
        ) {
            // Random bytes with a run of zeros (long runs cut at the maximum size).
            let mut data = pseudo_random(len, seed);
            let at = len / 3;
            let zeros = zeros.min(len - at);
            data[at..at + zeros].fill(0);
            let ours: Vec<Vec<u8>> = Chunker::new(Trickle { data: &data, step, reads: 0 })
                .map(Result::unwrap)
                .collect();
            let reference: Vec<Vec<u8>> = fastcdc::v2020::StreamCDC::new(
                &data[..],
                MIN_CHUNK as usize,
                AVG_CHUNK as usize,
                MAX_CHUNK as usize,
            )
            .map(|c| c.unwrap().data)
            .collect();
            prop_assert_eq!(ours.len(), reference.len());
            prop_assert!(ours == reference);
            let slices: Vec<&[u8]> = chunk_slices(&data).collect();
            prop_assert!(slices.iter().map(|s| s.to_vec()).eq(ours));
        }
    }

    #[test]
    fn convergent_is_deterministic_private_is_not() {
        let secret = ConvergenceSecret::from_bytes([5; 32]);
        let plain = b"hello hello hello hello hello hello".repeat(10);
        let no_rng = || -> [u8; 32] { panic!("random_key called in convergent mode") };
        let a = seal_chunk(
            &plain,
            KeyMode::Convergent(&secret),
            no_rng,
            Encoding::DEFAULT,
        )
        .unwrap();
        let b = seal_chunk(
            &plain,
            KeyMode::Convergent(&secret),
            no_rng,
            Encoding::DEFAULT,
        )
        .unwrap();
        assert_eq!(a.root, b.root);
        assert_eq!(a.shares, b.shares);
        let p = seal_chunk(&plain, KeyMode::Private, || [1; 32], Encoding::DEFAULT).unwrap();
        assert_ne!(p.root, a.root);
        assert_eq!(p.key, ChunkKey::from_bytes([1; 32]));
    }

    #[test]
    fn wrong_key_is_aead_error() {
        let sealed = seal_chunk(
            b"secret data",
            KeyMode::Private,
            || [3; 32],
            Encoding::DEFAULT,
        )
        .unwrap();
        let shares = sealed
            .shares
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, s)| (i as u8, s))
            .collect();
        let wrong = ChunkKey::from_bytes([4; 32]);
        assert!(matches!(
            open_chunk(&sealed.header, shares, &wrong, sealed.plain_len),
            Err(CoreError::Aead)
        ));
    }

    #[test]
    fn too_small_plain_len_is_refused() {
        let plain = vec![b'z'; 50_000];
        let sealed = seal_chunk(&plain, KeyMode::Private, || [3; 32], Encoding::DEFAULT).unwrap();
        let shares: Vec<(u8, Vec<u8>)> = sealed
            .shares
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, s)| (i as u8, s))
            .collect();
        assert!(open_chunk(&sealed.header, shares.clone(), &sealed.key, 49_999).is_err());
        assert_eq!(
            open_chunk(&sealed.header, shares, &sealed.key, 50_000).unwrap(),
            plain
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn seal_open_round_trip(
            plain in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..20_000),
                proptest::collection::vec(0u8..3, 0..20_000),
            ],
            k in 1u8..=6, extra in 0u8..=4, picks in any::<u64>(), convergent in any::<bool>(),
        ) {
            let n = k + extra;
            let enc = Encoding::new(k, n, k).unwrap();
            let secret = ConvergenceSecret::from_bytes([8; 32]);
            let mode = if convergent { KeyMode::Convergent(&secret) } else { KeyMode::Private };
            let sealed = seal_chunk(&plain, mode, || [9; 32], enc).unwrap();
            prop_assert_eq!(sealed.root, sealed.header.root());
            let mut order: Vec<u8> = (0..n).collect();
            let mut state = picks;
            for i in (1..order.len()).rev() {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                order.swap(i, (state >> 33) as usize % (i + 1));
            }
            let picked: Vec<(u8, Vec<u8>)> = order[..usize::from(k)]
                .iter()
                .map(|&i| (i, sealed.shares[usize::from(i)].clone()))
                .collect();
            for (i, share) in &picked {
                sealed.header.verify_share(*i, share).unwrap();
            }
            let opened = open_chunk(&sealed.header, picked, &sealed.key, sealed.plain_len).unwrap();
            prop_assert_eq!(opened, plain);
        }

        #[test]
        fn chunker_concatenation_is_input(
            len in 0usize..(3 * MAX_CHUNK as usize), seed in 1u64..u64::MAX,
        ) {
            let data = pseudo_random(len, seed);
            let chunks: Vec<Vec<u8>> = Chunker::new(&data[..]).map(Result::unwrap).collect();
            if let Some((_, rest)) = chunks.split_last() {
                for chunk in rest {
                    prop_assert!(chunk.len() >= MIN_CHUNK as usize);
                }
            }
            for chunk in &chunks {
                prop_assert!(!chunk.is_empty() && chunk.len() <= MAX_CHUNK as usize);
            }
            prop_assert_eq!(chunks.concat(), data);
        }
    }
}

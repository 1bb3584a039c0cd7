//! The encoded payload E of a chunk: one flag byte (0 = raw, 1 = zstd) followed by the bytes.
//!
//! zstd level 1 is tried on every chunk; the chunk is stored raw when zstd does not make it
//! smaller. A chunk of [`SAMPLE_FROM`] bytes or more is sampled first: zstd runs on
//! [`SAMPLE_SLICES`] slices spread over it, and the whole chunk is tried only if they shrink by
//! at least 1/32. So an incompressible chunk (photos, video, archives) costs zstd 6% of its
//! bytes instead of all of them; what the sample cannot see (a chunk that compresses only by
//! matches far apart) is stored raw. Decoding is bounded by the plaintext length the manifest
//! promises, so a decompression bomb costs at most that much memory and is refused.

use std::cell::RefCell;
use std::io::Cursor;

use crate::CoreError;

/// Flag byte of a payload stored as is.
pub const FLAG_RAW: u8 = 0;
/// Flag byte of a zstd-compressed payload.
pub const FLAG_ZSTD: u8 = 1;
/// The zstd level used.
pub const ZSTD_LEVEL: i32 = 1;
/// Bytes the AEAD appends, reserved up front so sealing in place does not reallocate.
const TAG_ROOM: usize = 16;
/// Chunks at least this long are sampled before zstd runs on all of them.
pub const SAMPLE_FROM: usize = 256 * 1024;
/// How many slices the sample takes, evenly spaced from the chunk's start.
pub const SAMPLE_SLICES: usize = 8;
/// The length of each slice of the sample.
const SAMPLE_SLICE: usize = 8 * 1024;

thread_local! {
    // zstd contexts are costly to set up (window tables); keep one per thread.
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Encodes `plain` as a payload: zstd level 1 when that shrinks it, raw otherwise.
///
/// The returned buffer has 16 bytes of spare capacity for the AEAD tag.
pub fn encode_payload(plain: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + plain.len() + TAG_ROOM);
    if let Some(compressed_len) = try_compress(plain, &mut out) {
        debug_assert_eq!(out.len(), 1 + compressed_len);
        return out;
    }
    out.clear();
    out.push(FLAG_RAW);
    out.extend_from_slice(plain);
    out
}

/// Writes FLAG_ZSTD || zstd(plain) into `out` when that is shorter than `plain`.
fn try_compress(plain: &[u8], out: &mut Vec<u8>) -> Option<usize> {
    if plain.is_empty() || !sample_shrinks(plain) {
        return None;
    }
    out.push(FLAG_ZSTD);
    // zstd writes after the flag byte, into the capacity reserved by the caller.
    let mut cursor = Cursor::new(std::mem::take(out));
    cursor.set_position(1);
    let result = with_compressor(|c| c.compress_to_buffer(plain, &mut cursor).ok());
    *out = cursor.into_inner();
    match result {
        Some(n) if n < plain.len() => Some(n),
        _ => None,
    }
}

/// Whether zstd shrinks a sample of `plain` by at least 1/32 (always true below
/// [`SAMPLE_FROM`] bytes, where the whole chunk is cheap enough to try).
fn sample_shrinks(plain: &[u8]) -> bool {
    if plain.len() < SAMPLE_FROM {
        return true;
    }
    let step = plain.len() / SAMPLE_SLICES;
    let mut sample = Vec::with_capacity(SAMPLE_SLICES * SAMPLE_SLICE);
    for i in 0..SAMPLE_SLICES {
        sample.extend_from_slice(&plain[i * step..i * step + SAMPLE_SLICE]);
    }
    let mut compressed = Vec::with_capacity(zstd::zstd_safe::compress_bound(sample.len()));
    match with_compressor(|c| c.compress_to_buffer(&sample, &mut compressed).ok()) {
        Some(n) => n < sample.len() - sample.len() / 32,
        // zstd failing on the sample will fail on the chunk too.
        None => false,
    }
}

/// Runs `f` with this thread's zstd compressor (made on first use); `None` if it cannot be made.
fn with_compressor<T>(
    f: impl FnOnce(&mut zstd::bulk::Compressor<'static>) -> Option<T>,
) -> Option<T> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = zstd::bulk::Compressor::new(ZSTD_LEVEL).ok();
        }
        f(slot.as_mut()?)
    })
}

/// Decodes a payload into exactly `expected_len` bytes of plaintext.
///
/// Refuses an unknown flag, a zstd error, and any output of another length than
/// `expected_len`; never allocates more than `expected_len` bytes for the output.
pub fn decode_payload(encoded: &[u8], expected_len: usize) -> Result<Vec<u8>, CoreError> {
    let (&flag, body) = encoded
        .split_first()
        .ok_or(CoreError::BadPayloadFlag { flag: None })?;
    let plain = match flag {
        FLAG_RAW => body.to_vec(),
        FLAG_ZSTD => decompress(body, expected_len)?,
        other => return Err(CoreError::BadPayloadFlag { flag: Some(other) }),
    };
    if plain.len() != expected_len {
        return Err(CoreError::Decompression {
            expected: expected_len,
            got: plain.len(),
        });
    }
    Ok(plain)
}

fn decompress(body: &[u8], expected_len: usize) -> Result<Vec<u8>, CoreError> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let decompressor = match slot.as_mut() {
            Some(d) => d,
            None => slot.insert(zstd::bulk::Decompressor::new().map_err(|source| {
                CoreError::DecompressionFailed {
                    expected: expected_len,
                    source,
                }
            })?),
        };
        // `decompress` allocates at most `expected_len` and fails when the output would exceed it.
        decompressor
            .decompress(body, expected_len)
            .map_err(|source| CoreError::DecompressionFailed {
                expected: expected_len,
                source,
            })
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn text_is_compressed_random_is_raw() {
        let text = b"the quick brown fox jumps over the lazy dog. ".repeat(1000);
        let e = encode_payload(&text);
        assert_eq!(e[0], FLAG_ZSTD);
        assert!(e.len() < text.len() / 10);
        assert_eq!(decode_payload(&e, text.len()).unwrap(), text);

        let random: Vec<u8> = (0..10_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let e = encode_payload(&random);
        if e[0] == FLAG_RAW {
            assert_eq!(&e[1..], &random[..]);
        }
        assert_eq!(decode_payload(&e, random.len()).unwrap(), random);
    }

    /// Large chunks are sampled: incompressible ones stay raw, and a chunk whose sampled slices
    /// compress is compressed whole, even where the rest of it would not.
    #[test]
    fn large_chunks_are_sampled_before_zstd() {
        let random = |seed: u8, len: usize| {
            let mut out = vec![0u8; len];
            blake3::Hasher::new()
                .update(&[seed])
                .finalize_xof()
                .fill(&mut out);
            out
        };
        let noise = random(1, 1 << 20);
        let e = encode_payload(&noise);
        assert_eq!(e[0], FLAG_RAW);
        assert_eq!(&e[1..], &noise[..]);

        // Text everywhere the sample looks, noise between: compressed, and it round-trips.
        let mut mixed = random(2, 1 << 20);
        let step = mixed.len() / SAMPLE_SLICES;
        let text = b"the quick brown fox jumps over the lazy dog. ".repeat(200);
        for i in 0..SAMPLE_SLICES {
            mixed[i * step..i * step + text.len()].copy_from_slice(&text);
        }
        let e = encode_payload(&mixed);
        assert_eq!(e[0], FLAG_ZSTD);
        assert_eq!(decode_payload(&e, mixed.len()).unwrap(), mixed);

        // Noise where the sample looks and zeros between: the sample decides, raw.
        let mut sparse = vec![0u8; 1 << 20];
        for i in 0..SAMPLE_SLICES {
            sparse[i * step..i * step + 8192].copy_from_slice(&random(4 + i as u8, 8192));
        }
        assert_eq!(encode_payload(&sparse)[0], FLAG_RAW);

        // Below the sampling size the whole chunk is tried: half text, half noise compresses.
        let mut small = random(3, SAMPLE_FROM - 1);
        small[..SAMPLE_FROM / 2].fill(b'a');
        assert_eq!(encode_payload(&small)[0], FLAG_ZSTD);
    }

    #[test]
    fn empty_and_tiny_inputs() {
        assert_eq!(encode_payload(b""), vec![FLAG_RAW]);
        assert_eq!(decode_payload(&[FLAG_RAW], 0).unwrap(), b"");
        assert_eq!(encode_payload(b"a"), vec![FLAG_RAW, b'a']);
    }

    #[test]
    fn wrong_expected_length_is_refused() {
        let text = vec![b'x'; 100_000];
        let e = encode_payload(&text);
        assert_eq!(e[0], FLAG_ZSTD);
        // A bomb: the manifest says 1000 bytes, the payload expands to 100 000.
        assert!(matches!(
            decode_payload(&e, 1000),
            Err(CoreError::DecompressionFailed { expected: 1000, .. })
        ));
        assert!(matches!(
            decode_payload(&e, 200_000),
            Err(CoreError::Decompression {
                expected: 200_000,
                got: 100_000
            })
        ));
        assert!(matches!(
            decode_payload(&[FLAG_RAW, 1, 2, 3], 2),
            Err(CoreError::Decompression {
                expected: 2,
                got: 3
            })
        ));
    }

    #[test]
    fn bad_flags_are_refused() {
        assert!(matches!(
            decode_payload(&[], 0),
            Err(CoreError::BadPayloadFlag { flag: None })
        ));
        assert!(matches!(
            decode_payload(&[7, 1], 1),
            Err(CoreError::BadPayloadFlag { flag: Some(7) })
        ));
        assert!(decode_payload(&[FLAG_ZSTD, 1, 2, 3, 4], 4).is_err());
    }

    proptest! {
        #[test]
        fn round_trip(plain in proptest::collection::vec(0u8..4, 0..5000)) {
            let e = encode_payload(&plain);
            prop_assert!(e.len() <= plain.len() + 1);
            prop_assert_eq!(decode_payload(&e, plain.len()).unwrap(), plain);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300), len in 0usize..5000) {
            let _ = decode_payload(&bytes, len);
        }
    }
}

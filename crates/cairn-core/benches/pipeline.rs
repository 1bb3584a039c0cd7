//! Throughput of each stage of the put/get pipeline next to its raw primitive, on 64 MiB of
//! random data and 64 MiB of text-like data, one thread. Best of 3 passes.
//!
//! Run with `cargo bench -p cairn-core --bench pipeline`.

#![allow(missing_docs, clippy::unwrap_used)]

#[path = "../src/test_bytes.rs"]
mod test_bytes;

use std::hint::black_box;
use std::time::Instant;

use cairn_core::compress::{decode_payload, encode_payload};
use cairn_core::crypto::{open, seal};
use cairn_core::{
    ChunkKey, Chunker, ConvergenceSecret, Encoding, KeyMode, SealedChunk, decode_blob, encode_blob,
    open_chunk, seal_chunk,
};
use reed_solomon_erasure::galois_8::ReedSolomon;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

use crate::test_bytes::pseudo_random as random_bytes;

const TOTAL: usize = 64 * 1024 * 1024;
const PASSES: usize = 3;

/// Words drawn with a skewed distribution, some numbers and punctuation: compresses to about a
/// quarter with zstd-1, like source code or logs.
fn text_bytes(len: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "with", "was", "on",
        "chunk", "share", "node", "grid", "file", "manifest", "cap", "key", "repair", "fn", "let",
        "mut", "return", "struct", "impl", "error", "value", "result", "stream",
    ];
    let mut out = Vec::with_capacity(len + 32);
    let mut state = 0x2545_f491_4f6c_dd1du64;
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let r = state as usize;
        let word = WORDS[(r % WORDS.len()).min(r % 7 + (r >> 8) % WORDS.len())];
        out.extend_from_slice(word.as_bytes());
        match (r >> 16) % 16 {
            0 => out.extend_from_slice(b".\n"),
            1 => out.extend_from_slice(format!(" {} ", (r >> 20) % 10_000).as_bytes()),
            2 => out.extend_from_slice(b", "),
            _ => out.push(b' '),
        }
    }
    out.truncate(len);
    out
}

/// Best MB/s over `PASSES` runs of `f`, which processes `bytes` bytes.
fn mbps(bytes: usize, mut f: impl FnMut()) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..PASSES {
        let start = Instant::now();
        f();
        best = best.min(start.elapsed().as_secs_f64());
    }
    bytes as f64 / best / 1e6
}

fn line(stage: &str, value: f64, raw: &str) {
    println!("{stage:<34} {value:>7.0} MB/s   {raw}");
}

fn chunks_of(data: &[u8]) -> Vec<Vec<u8>> {
    Chunker::new(data).map(Result::unwrap).collect()
}

fn shares_of(sealed: &SealedChunk, picks: &[u8]) -> Vec<(u8, Vec<u8>)> {
    picks
        .iter()
        .map(|&i| (i, sealed.shares[usize::from(i)].clone()))
        .collect()
}

fn main() {
    let random = random_bytes(TOTAL, 0x9e37_79b9_7f4a_7c15);
    let text = text_bytes(TOTAL);
    let secret = ConvergenceSecret::from_bytes([7; 32]);
    let enc = Encoding::DEFAULT;
    println!("cairn-core pipeline, 64 MiB inputs, one thread, best of {PASSES}");
    println!("(MB/s of plaintext; the parenthesis gives the raw primitive on the same bytes)\n");

    // Raw primitives.
    let blake3 = mbps(TOTAL, || {
        black_box(blake3::hash(black_box(&random)));
    });
    let key_bytes = [3u8; 32];
    let mut buf = random[..1 << 20].to_vec();
    let aes = mbps(TOTAL, || {
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key_bytes).unwrap());
        for _ in 0..TOTAL >> 20 {
            let tag = key
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key([0; 12]),
                    Aad::from(b"x"),
                    &mut buf,
                )
                .unwrap();
            let _ = black_box(tag);
        }
    });
    let cdc_raw = mbps(TOTAL, || {
        let n = fastcdc::v2020::FastCDC::new(&random, 256 << 10, 1 << 20, 4 << 20).count();
        black_box(n);
    });
    let rs = ReedSolomon::new(3, 2).unwrap();
    let shard = 350 * 1024;
    let rs_raw = mbps(TOTAL, || {
        let data: Vec<&[u8]> = random.chunks(shard).take(3).collect();
        let mut parity = vec![vec![0u8; shard]; 2];
        for _ in 0..TOTAL / (3 * shard) {
            rs.encode_sep(&data, &mut parity).unwrap();
        }
        black_box(&parity);
    });
    let zstd_raw = |data: &[u8]| {
        mbps(TOTAL, || {
            for chunk in data.chunks(1 << 20) {
                black_box(zstd::bulk::compress(chunk, 1).unwrap());
            }
        })
    };
    let zstd_raw_random = zstd_raw(&random);
    let zstd_raw_text = zstd_raw(&text);

    line("BLAKE3 (raw)", blake3, "");
    line("AES-256-GCM seal (ring, raw)", aes, "");
    line("FastCDC v2020 (raw, slice)", cdc_raw, "");
    line("RS 3-of-5 encode (raw, 350 KiB)", rs_raw, "");
    line("zstd-1 random (raw, 1 MiB)", zstd_raw_random, "");
    line("zstd-1 text (raw, 1 MiB)", zstd_raw_text, "");
    println!();

    // Our stages.
    let chunker = mbps(TOTAL, || {
        black_box(Chunker::new(&random[..]).count());
    });
    line(
        "Chunker (streaming)",
        chunker,
        &format!("(raw FastCDC {cdc_raw:.0})"),
    );

    let random_chunks = chunks_of(&random);
    let text_chunks = chunks_of(&text);
    for (label, chunks, raw) in [
        ("random", &random_chunks, zstd_raw_random),
        ("text", &text_chunks, zstd_raw_text),
    ] {
        let encode = mbps(TOTAL, || {
            for chunk in chunks {
                black_box(encode_payload(chunk));
            }
        });
        line(
            &format!("encode_payload {label}"),
            encode,
            &format!("(raw zstd-1 {raw:.0})"),
        );
        let encoded: Vec<Vec<u8>> = chunks.iter().map(|c| encode_payload(c)).collect();
        let ratio = encoded.iter().map(Vec::len).sum::<usize>() as f64 / TOTAL as f64;
        let decode = mbps(TOTAL, || {
            for (e, c) in encoded.iter().zip(chunks.iter()) {
                black_box(decode_payload(e, c.len()).unwrap());
            }
        });
        line(
            &format!("decode_payload {label}"),
            decode,
            &format!("(encoded size {:.1}% of plain)", ratio * 100.0),
        );
    }

    let key = ChunkKey::from_bytes([5; 32]);
    let sealed_bufs: Vec<Vec<u8>> = random_chunks
        .iter()
        .map(|c| seal(&key, c.clone()))
        .collect();
    let seal_rate = mbps(TOTAL, || {
        for c in &random_chunks {
            black_box(seal(&key, c.clone()));
        }
    });
    line(
        "crypto::seal (incl. copy)",
        seal_rate,
        &format!("(raw AES-GCM {aes:.0})"),
    );
    let open_rate = mbps(TOTAL, || {
        for s in &sealed_bufs {
            black_box(open(&key, s.clone()).unwrap());
        }
    });
    line(
        "crypto::open (incl. copy)",
        open_rate,
        &format!("(raw AES-GCM {aes:.0})"),
    );

    let blob_rate = mbps(TOTAL, || {
        for s in &sealed_bufs {
            black_box(encode_blob(s, enc).unwrap());
        }
    });
    line(
        "encode_blob 3-of-5 (RS + hashes)",
        blob_rate,
        &format!("(raw RS {rs_raw:.0}, BLAKE3 {blake3:.0})"),
    );
    let blobs: Vec<_> = sealed_bufs
        .iter()
        .map(|s| encode_blob(s, enc).unwrap())
        .collect();
    for (label, picks) in [("shares 0,1,2", [0u8, 1, 2]), ("shares 2,3,4", [2, 3, 4])] {
        let rate = mbps(TOTAL, || {
            for (header, shares) in &blobs {
                let picked = picks
                    .iter()
                    .map(|&i| (i, shares[usize::from(i)].clone()))
                    .collect();
                black_box(decode_blob(header, picked).unwrap());
            }
        });
        line(
            &format!("decode_blob {label}"),
            rate,
            "(incl. BLAKE3 chunk id check)",
        );
    }
    println!();

    for (label, chunks) in [("random", &random_chunks), ("text", &text_chunks)] {
        let put = mbps(TOTAL, || {
            for chunk in chunks {
                let sealed = seal_chunk(chunk, KeyMode::Convergent(&secret), || [0; 32], enc);
                black_box(sealed.unwrap());
            }
        });
        line(
            &format!("seal_chunk {label}"),
            put,
            &format!("(raw AES-GCM {aes:.0}, BLAKE3 {blake3:.0}, RS {rs_raw:.0})"),
        );
        let sealed: Vec<SealedChunk> = chunks
            .iter()
            .map(|c| seal_chunk(c, KeyMode::Convergent(&secret), || [0; 32], enc).unwrap())
            .collect();
        for (picks_label, picks) in [("systematic", [0u8, 1, 2]), ("2 parity", [0, 3, 4])] {
            let get = mbps(TOTAL, || {
                for s in &sealed {
                    let shares = shares_of(s, &picks);
                    black_box(open_chunk(&s.header, shares, &s.key, s.plain_len).unwrap());
                }
            });
            line(
                &format!("open_chunk {label}, {picks_label}"),
                get,
                "(incl. share copies)",
            );
        }
    }
}

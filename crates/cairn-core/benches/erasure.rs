//! Reed-Solomon crate choice at Cairn's shapes: reed-solomon-simd 3.1 vs reed-solomon-erasure 6
//! (simd-accel), 3-of-5, large (~350 KiB) and small (~2 KiB) shards, encode and decode with one
//! and two data shards missing. Prints MB/s of chunk (original) bytes per second, single thread.
//!
//! Run with `cargo bench -p cairn-core --bench erasure`.

#![allow(missing_docs, clippy::unwrap_used)]

#[path = "../src/test_bytes.rs"]
mod test_bytes;

use std::hint::black_box;
use std::time::{Duration, Instant};

use reed_solomon_erasure::galois_8::ReedSolomon;

use crate::test_bytes::pseudo_random as random_bytes;

const K: usize = 3;
const N: usize = 5;
const BUDGET: Duration = Duration::from_millis(700);

/// Runs `f` repeatedly for about `BUDGET` and returns MB/s of `bytes` per call.
fn measure(bytes: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm up
    let start = Instant::now();
    let mut iters = 0u64;
    while start.elapsed() < BUDGET {
        f();
        iters += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    (bytes as f64 * iters as f64) / secs / 1e6
}

fn simd_encode(data: &[Vec<u8>]) -> Vec<Vec<u8>> {
    reed_solomon_simd::encode(K, N - K, data).unwrap()
}

fn simd_decode(data: &[Vec<u8>], parity: &[Vec<u8>], missing: &[usize]) -> Vec<Vec<u8>> {
    let originals = (0..K)
        .filter(|i| !missing.contains(i))
        .map(|i| (i, &data[i]));
    let recovery = (0..missing.len()).map(|j| (j, &parity[j]));
    let restored = reed_solomon_simd::decode(K, N - K, originals, recovery).unwrap();
    restored.into_values().collect()
}

fn rse_encode(rs: &ReedSolomon, data: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let len = data[0].len();
    let mut parity = vec![vec![0u8; len]; N - K];
    rs.encode_sep(data, &mut parity).unwrap();
    parity
}

fn rse_decode(
    rs: &ReedSolomon,
    data: &[Vec<u8>],
    parity: &[Vec<u8>],
    missing: &[usize],
) -> Vec<Option<Vec<u8>>> {
    let mut shards: Vec<Option<Vec<u8>>> = Vec::with_capacity(N);
    for (i, d) in data.iter().enumerate() {
        shards.push((!missing.contains(&i)).then(|| d.clone()));
    }
    for (j, p) in parity.iter().enumerate() {
        // Give the decoder exactly K shards, as a reader fetching k shares would.
        shards.push((j < missing.len()).then(|| p.clone()));
    }
    rs.reconstruct_data(&mut shards).unwrap();
    shards
}

fn main() {
    let rs = ReedSolomon::new(K, N - K).unwrap();
    println!("Reed-Solomon {K}-of-{N}, MB/s of chunk bytes, one thread");
    println!(
        "{:<28} {:>12} {:>12}",
        "shape / operation", "rs-simd 3.1", "rs-erasure 6"
    );
    for (label, shard_len) in [("shard 350 KiB", 350 * 1024), ("shard 2 KiB", 2 * 1024)] {
        let data: Vec<Vec<u8>> = (0..K)
            .map(|i| random_bytes(shard_len, 0x9e37_79b9_7f4a_7c15 ^ i as u64))
            .collect();
        let chunk_bytes = K * shard_len;

        let parity_simd = simd_encode(&data);
        let parity_rse = rse_encode(&rs, &data);
        // Both are systematic, but the parity codes differ; check each against itself.
        assert_eq!(simd_decode(&data, &parity_simd, &[0])[0], data[0]);
        assert_eq!(
            rse_decode(&rs, &data, &parity_rse, &[0, 1])[1].as_deref(),
            Some(&data[1][..])
        );

        let enc_simd = measure(chunk_bytes, || {
            black_box(simd_encode(black_box(&data)));
        });
        let enc_rse = measure(chunk_bytes, || {
            black_box(rse_encode(&rs, black_box(&data)));
        });
        println!(
            "{:<28} {:>12.0} {:>12.0}",
            format!("{label} encode"),
            enc_simd,
            enc_rse
        );
        for missing in [&[0usize][..], &[0, 1][..]] {
            let dec_simd = measure(chunk_bytes, || {
                black_box(simd_decode(black_box(&data), &parity_simd, missing));
            });
            let dec_rse = measure(chunk_bytes, || {
                black_box(rse_decode(&rs, black_box(&data), &parity_rse, missing));
            });
            println!(
                "{:<28} {:>12.0} {:>12.0}",
                format!("{label} decode, {} lost", missing.len()),
                dec_simd,
                dec_rse
            );
        }
    }
}

//! A small deterministic input generator for the smoke runner: a fixed-seed PRNG and the usual
//! byte-level mutations (bit flips, interesting values, truncation, insertion, deletion,
//! splicing, huge varints and lengths). No coverage feedback: that is the fuzz engines' job.

/// SplitMix64: tiny, fast, and the same sequence on every machine.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a fixed seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// A random byte.
    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

const INTERESTING: [u8; 9] = [0, 1, 2, 0x3f, 0x40, 0x7f, 0x80, 0xfe, 0xff];
const TEXTY: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567ABCDEFGHIJKLMNOPQRSTUVWXYZ:=-1 \n";

/// A fresh random input: mostly short, sometimes a few KiB.
pub fn random_input(rng: &mut Rng) -> Vec<u8> {
    let len = match rng.below(10) {
        0..=5 => rng.below(64),
        6..=8 => rng.below(512),
        _ => rng.below(8192),
    };
    rng.bytes(len)
}

/// Applies 1 to 4 random mutations to `input`; `other` is a second corpus entry to splice from.
pub fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        mutate_once(rng, &mut out, other);
    }
    out
}

fn mutate_once(rng: &mut Rng, out: &mut Vec<u8>, other: &[u8]) {
    let len = out.len();
    match rng.below(11) {
        // Flip one bit.
        0 if len > 0 => {
            let at = rng.below(len);
            out[at] ^= 1 << rng.below(8);
        }
        // Set a byte to an interesting value.
        1 if len > 0 => {
            let at = rng.below(len);
            out[at] = INTERESTING[rng.below(INTERESTING.len())];
        }
        // Set a byte to a random value.
        2 if len > 0 => {
            let at = rng.below(len);
            out[at] = rng.byte();
        }
        // Truncate.
        3 => out.truncate(rng.below(len + 1)),
        // Insert random bytes.
        4 => {
            let at = rng.below(len + 1);
            let n = 1 + rng.below(16);
            let bytes = rng.bytes(n);
            out.splice(at..at, bytes);
        }
        // Delete a range.
        5 if len > 0 => {
            let at = rng.below(len);
            let n = 1 + rng.below((len - at).min(32));
            out.drain(at..at + n);
        }
        // Splice: our prefix, the other input's suffix.
        6 => {
            let cut = rng.below(len + 1);
            let from = rng.below(other.len() + 1);
            out.truncate(cut);
            out.extend_from_slice(&other[from..]);
        }
        // A huge postcard varint (a length or count of 2^32 - 1 or more).
        7 => {
            let at = rng.below(len + 1);
            let varint: &[u8] = match rng.below(3) {
                0 => &[0xff, 0xff, 0xff, 0xff, 0x0f],
                1 => &[0xff, 0xff, 0xff, 0x7f],
                _ => &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            };
            if rng.below(2) == 0 && at + varint.len() <= len {
                out[at..at + varint.len()].copy_from_slice(varint);
            } else {
                out.splice(at..at, varint.iter().copied());
            }
        }
        // Overwrite a little-endian u32 with an extreme value.
        8 if len >= 4 => {
            let at = rng.below(len - 3);
            let v: u32 = [
                0,
                1,
                0x7fff_ffff,
                0x8000_0000,
                u32::MAX,
                20 * 1024 * 1024 + 1,
            ][rng.below(6)];
            out[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
        // Replace a byte with a text character (base32, separators, case).
        9 if len > 0 => {
            let at = rng.below(len);
            out[at] = TEXTY[rng.below(TEXTY.len())];
        }
        // Duplicate a range.
        _ if len > 0 => {
            let at = rng.below(len);
            let n = 1 + rng.below((len - at).min(64));
            let copy = out[at..at + n].to_vec();
            let to = rng.below(len + 1);
            out.splice(to..to, copy);
        }
        _ => out.push(rng.byte()),
    }
}

//! One function per fuzz target. Each takes arbitrary bytes, feeds them to a decoder of
//! untrusted input and, where the decoder accepts them, checks properties that must hold for
//! every accepted input (canonical re-encoding, round trips, "a verified share is the real
//! share", "a decoded blob is the real blob", "no certificate verifies unless the grid key
//! signed it"). A failed check panics, which both libFuzzer and the smoke runner report.
//!
//! Input layouts of the targets that take more than one value are documented on each function;
//! the seed generator in [`crate::seeds`] writes inputs in exactly those layouts.

use std::fmt::Debug;
use std::sync::OnceLock;

use cairn_core::cap::{Cap, DirReadCap, LiteralCap, ReadCap, VerifyCap};
use cairn_core::cert::{CLOCK_SKEW_SECS, GridKey, MemberCert};
use cairn_core::chunk::MAX_CHUNK;
use cairn_core::compress::{FLAG_RAW, decode_payload, encode_payload};
use cairn_core::id::{ChunkId, GridId, NodeId, ShareRoot};
use cairn_core::wire::{
    self, Bounded, Hello, InviteCode, JoinRequest, JoinResponse, MAX_FRAME, Request, Response,
    WireError,
};
use cairn_core::{ChunkHeader, DirWriteCap, Encoding, Manifest, ReadKey, decode_blob, encode_blob};
use cairn_dir::{DirState, Listing, MAX_PARENTS, Version, VersionBody};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The grid key every seed certificate is issued by.
pub fn grid_key() -> GridKey {
    GridKey::from_bytes(&[0x11; 32])
}

/// The directory every seed version belongs to.
pub fn dir_cap() -> DirWriteCap {
    DirWriteCap::from_seed([0x42; 32])
}

fn known_versions() -> &'static [Vec<u8>] {
    static VERSIONS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    VERSIONS.get_or_init(crate::seeds::dir_versions)
}

fn grid_id() -> GridId {
    static ID: OnceLock<GridId> = OnceLock::new();
    *ID.get_or_init(|| grid_key().grid_id())
}

fn known_certs() -> &'static [MemberCert] {
    static CERTS: OnceLock<Vec<MemberCert>> = OnceLock::new();
    CERTS.get_or_init(crate::seeds::issued_certs)
}

fn u16_at(data: &[u8], at: usize) -> u16 {
    let mut b = [0u8; 2];
    for (i, slot) in b.iter_mut().enumerate() {
        *slot = data.get(at + i).copied().unwrap_or(0);
    }
    u16::from_le_bytes(b)
}

/// `Cap::from_str` and the five kind-specific parsers, on the input as (lossy) UTF-8.
/// Accepted caps must print canonically and parse back to themselves, through exactly one of
/// the kind-specific parsers.
pub fn cap(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let read = text.parse::<ReadCap>();
    let verify = text.parse::<VerifyCap>();
    let literal = text.parse::<LiteralCap>();
    let dir_write = text.parse::<DirWriteCap>();
    let dir_read = text.parse::<DirReadCap>();
    let accepted = [
        read.is_ok(),
        verify.is_ok(),
        literal.is_ok(),
        dir_write.is_ok(),
        dir_read.is_ok(),
    ]
    .iter()
    .filter(|ok| **ok)
    .count();
    match text.parse::<Cap>() {
        Ok(cap) => {
            let canonical = cap.to_string();
            let again: Cap = canonical.parse().expect("a printed cap parses");
            assert_eq!(again, cap);
            assert_eq!(again.to_string(), canonical, "cap text is not canonical");
            let _ = format!("{cap:?}");
            match &cap {
                Cap::Read(c) => {
                    assert_eq!(read.as_ref(), Ok(c));
                    let v = c.verify_cap();
                    assert_eq!(v.to_string().parse::<VerifyCap>(), Ok(v));
                    assert_eq!(v.size, c.size);
                }
                Cap::Verify(c) => assert_eq!(verify.as_ref(), Ok(c)),
                Cap::Literal(c) => {
                    assert_eq!(literal.as_ref(), Ok(c));
                    assert!(c.data.len() <= cairn_core::INLINE_LIMIT);
                }
                Cap::DirWrite(c) => {
                    assert_eq!(dir_write.as_ref(), Ok(c));
                    let r = c.read_cap();
                    assert_eq!(r.to_string().parse::<DirReadCap>().as_ref(), Ok(&r));
                    assert_eq!(r.slot(), c.slot());
                }
                Cap::DirRead(c) => assert_eq!(dir_read.as_ref(), Ok(c)),
            }
            assert_eq!(accepted, 1);
        }
        Err(e) => {
            let _ = e.to_string();
            assert_eq!(accepted, 0);
        }
    }
}

/// `InviteCode::from_str` twice: on the input as text, and on `cairn-invite:1:` followed by
/// the base32 of the input (so the fuzzer reaches the postcard body directly).
pub fn invite_code(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    check_invite(&text);
    let body = data_encoding::BASE32_NOPAD
        .encode(data)
        .to_ascii_lowercase();
    check_invite(&format!("cairn-invite:1:{body}"));
}

fn check_invite(text: &str) {
    match text.parse::<InviteCode>() {
        Ok(code) => {
            assert!(code.addrs.len() <= 64);
            let canonical = code.to_string();
            assert_eq!(canonical.parse::<InviteCode>().as_ref(), Ok(&code));
            let debug = format!("{code:?}");
            assert!(!debug.contains("secret"), "invite Debug shows its secret");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// `Manifest::decode`. Accepted manifests are canonical and consistent.
pub fn manifest(data: &[u8]) {
    match Manifest::decode(data) {
        Ok(m) => {
            assert_eq!(m.encode(), data, "accepted manifest is not canonical");
            let sum: u64 = m.chunks().iter().map(|c| u64::from(c.plain_len)).sum();
            assert_eq!(sum, m.file_size);
            assert!(
                m.chunks()
                    .iter()
                    .all(|c| c.plain_len >= 1 && c.plain_len <= MAX_CHUNK)
            );
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// Layout: read key (32) `||` encoded manifest. `Manifest::decode`, then `chunk_keys`.
pub fn manifest_keys(data: &[u8]) {
    let Some((key, body)) = data.split_first_chunk::<32>() else {
        return;
    };
    let key = ReadKey::from_bytes(*key);
    if let Ok(m) = Manifest::decode(body) {
        match m.chunk_keys(&key) {
            Ok(keys) => assert_eq!(keys.len(), m.chunks().len()),
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
}

/// `ChunkHeader::decode`. Accepted headers are canonical and pass `verify_header` under their
/// own root.
pub fn chunk_header(data: &[u8]) {
    match ChunkHeader::decode(data) {
        Ok(h) => {
            assert_eq!(h.encode(), data, "accepted header is not canonical");
            assert!(h.k >= 1 && h.k <= h.n && h.n <= cairn_core::id::MAX_SHARES);
            assert_eq!(h.share_hashes.len(), usize::from(h.n));
            assert!(h.share_len() >= 1);
            let root = h.root();
            assert_eq!(root.as_bytes(), blake3::hash(data).as_bytes());
            assert_eq!(
                cairn_core::verify_header(&root, data).ok().as_ref(),
                Some(&h)
            );
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// Layout: root (32) `||` header length (u16 LE) `||` header `||` share index (1) `||` share
/// bytes (the rest). `verify_header`, then `ChunkHeader::verify_share`, as a holder does for a
/// `PutShare` and a reader for every share it fetches.
pub fn verify_header(data: &[u8]) {
    let Some((root, rest)) = data.split_first_chunk::<32>() else {
        return;
    };
    let root = ShareRoot::from_bytes(*root);
    let hlen = usize::from(u16_at(rest, 0));
    let rest = rest.get(2..).unwrap_or_default();
    let (header, rest) = rest.split_at(hlen.min(rest.len()));
    let (index, share) = match rest.split_first() {
        Some((i, s)) => (*i, s),
        None => (0, &[][..]),
    };
    let Ok(h) = cairn_core::verify_header(&root, header) else {
        return;
    };
    assert_eq!(h.root(), root);
    match h.verify_share(index, share) {
        Ok(()) => {
            assert_eq!(share.len(), h.share_len());
            assert_eq!(
                Some(blake3::hash(share).as_bytes()),
                h.share_hashes.get(usize::from(index))
            );
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// `wire::decode::<T>` on a frame body. An accepted message re-encodes to a frame no longer
/// than the input, whose length prefix passes `frame_len` and which decodes to the same
/// message.
fn wire_message<T>(body: &[u8])
where
    T: Serialize + DeserializeOwned + Bounded + PartialEq + Debug,
{
    match wire::decode::<T>(body) {
        Ok(msg) => {
            let _ = format!("{msg:?}");
            let frame = wire::encode_frame(&msg);
            let prefix: [u8; 4] = frame[..4].try_into().expect("a frame has a 4-byte prefix");
            let len = wire::frame_len(prefix).expect("a re-encoded accepted message fits a frame");
            assert_eq!(len, frame.len() - 4);
            assert!(len <= body.len(), "re-encoding grew the message");
            let back: T = wire::decode(&frame[4..]).expect("a re-encoded message decodes");
            assert_eq!(back, msg);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// `wire::decode::<Hello>`.
pub fn wire_hello(data: &[u8]) {
    wire_message::<Hello>(data);
}

/// `wire::decode::<Request>`.
pub fn wire_request(data: &[u8]) {
    wire_message::<Request>(data);
}

/// `wire::decode::<Response>`.
pub fn wire_response(data: &[u8]) {
    wire_message::<Response>(data);
}

/// `wire::decode::<JoinRequest>`.
pub fn wire_join_request(data: &[u8]) {
    wire_message::<JoinRequest>(data);
}

/// `wire::decode::<JoinResponse>`.
pub fn wire_join_response(data: &[u8]) {
    wire_message::<JoinResponse>(data);
}

/// Layout: selector (1: message type, mod 5) `||` a stream of frames. Reads frames the way
/// `cairn-net` does: 4-byte prefix through `frame_len` (refused above `MAX_FRAME`), then that
/// many bytes of body (the stream ends early when they are missing), then `wire::decode`.
pub fn wire_frames(data: &[u8]) {
    let Some((&selector, mut rest)) = data.split_first() else {
        return;
    };
    let decode: fn(&[u8]) = match selector % 5 {
        0 => wire_hello,
        1 => wire_request,
        2 => wire_response,
        3 => wire_join_request,
        _ => wire_join_response,
    };
    while let Some((prefix, after)) = rest.split_first_chunk::<4>() {
        match wire::frame_len(*prefix) {
            Ok(len) => {
                assert!(len <= MAX_FRAME);
                assert_eq!(len, u32::from_le_bytes(*prefix) as usize);
                let Some(body) = after.get(..len) else {
                    return;
                };
                decode(body);
                rest = &after[len..];
            }
            Err(WireError::TooLarge { len, max }) => {
                assert!(len > max && max == MAX_FRAME);
                return;
            }
            Err(e) => panic!("frame_len failed with an unexpected error: {e}"),
        }
    }
}

/// `decode_blob` with shares chosen by the input. Two modes, by the low bit of byte 0:
///
/// - 1, adversarial shares of a real blob: byte 1 picks `k` (1..=8), byte 2 `n - k` (0..=7),
///   bytes 3..5 the blob length (u16 LE, mod 4096), byte 5 the blob's contents; then up to
///   `2n + 4` pairs `(op, arg)` pick shares: genuine, bit-flipped, truncated, under a wrong index, duplicated,
///   or replaced by garbage. `verify_share` must accept exactly the genuine ones, and
///   `decode_blob` must return either an error or the real blob, and must succeed when `k`
///   distinct genuine shares and nothing else were given.
/// - 0, arbitrary header and shares: bytes 1, 2 are `k` and `n` (mod 66: any value up to
///   one past `MAX_SHARES`, including 0 and `k > n`), bytes 3..5 the length (u16 LE), then shares as `index (1) || len (u16 LE) || bytes`. Only no panic is
///   checked, and that any accepted blob hashes to the header's chunk id.
pub fn decode_blob_target(data: &[u8]) {
    if data.first().is_some_and(|b| b & 1 == 1) {
        decode_blob_real(data);
    } else {
        decode_blob_arbitrary(data);
    }
}

fn decode_blob_arbitrary(data: &[u8]) {
    // Up to one past MAX_SHARES: `ChunkHeader::decode` never yields more, and above that the
    // Reed-Solomon crate's matrix caches alone take megabytes (not reachable from the wire).
    let bound = cairn_core::id::MAX_SHARES + 2;
    let k = data.get(1).copied().unwrap_or(0) % bound;
    let n = data.get(2).copied().unwrap_or(0) % bound;
    let len = u16_at(data, 3);
    let mut rest = data.get(5..).unwrap_or_default();
    let chunk_id = ChunkId::from_bytes(*blake3::hash(rest).as_bytes());
    let header = ChunkHeader {
        k,
        n,
        chunk_id,
        ciphertext_len: u32::from(len),
        share_hashes: vec![[0; 32]; usize::from(n)],
    };
    let mut shares = Vec::new();
    while let Some((&index, after)) = rest.split_first() {
        let slen = usize::from(u16_at(after, 0));
        let after = after.get(2..).unwrap_or_default();
        let (bytes, after) = after.split_at(slen.min(after.len()));
        shares.push((index, bytes.to_vec()));
        rest = after;
    }
    if let Ok(blob) = decode_blob(&header, shares) {
        assert_eq!(blob.len(), usize::from(len));
        assert_eq!(blake3::hash(&blob).as_bytes(), header.chunk_id.as_bytes());
    }
}

fn decode_blob_real(data: &[u8]) {
    let k = 1 + data.get(1).copied().unwrap_or(0) % 8;
    let n = k + data.get(2).copied().unwrap_or(0) % 8;
    let len = usize::from(u16_at(data, 3) % 4096);
    let fill = data.get(5).copied().unwrap_or(0);
    let blob: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(fill) ^ (i >> 8) as u8)
        .collect();
    let enc = Encoding::new(k, n, k).expect("1 <= k <= n <= 15");
    let (header, shares) = encode_blob(&blob, enc).expect("a small blob encodes");
    let mut picked: Vec<(u8, Vec<u8>)> = Vec::new();
    let mut only_genuine = true;
    let mut genuine = std::collections::BTreeSet::new();
    // At most 2n + 4 shares: more only repeats work and heaps up copies in this harness.
    let ops = data.get(6..).unwrap_or_default().chunks(2);
    for pair in ops.take(2 * usize::from(n) + 4) {
        let (op, arg) = (pair[0], pair.get(1).copied().unwrap_or(0));
        let i = arg % n;
        let real = &shares[usize::from(i)];
        let (index, bytes, is_genuine) = match op % 6 {
            0 => (i, real.clone(), true),
            1 => {
                let mut s = real.clone();
                let at = usize::from(op / 6) % s.len();
                s[at] ^= 1 << (arg % 8);
                (i, s, false)
            }
            2 => (i, real[..real.len() - 1].to_vec(), false),
            3 => {
                let j = (i + 1 + op / 6 % n.max(1)) % n;
                (j, real.clone(), j == i || shares[usize::from(j)] == *real)
            }
            4 => (i.wrapping_add(n), real.clone(), false),
            _ => {
                let s: Vec<u8> = (0..real.len()).map(|b| (b as u8) ^ op ^ arg).collect();
                let same = s == *real;
                (i, s, same)
            }
        };
        let verified = header.verify_share(index, &bytes).is_ok();
        let really = shares.get(usize::from(index)) == Some(&bytes);
        assert_eq!(
            verified, really,
            "verify_share disagrees with the real share #{index}"
        );
        if is_genuine {
            genuine.insert(index);
        } else {
            only_genuine = false;
        }
        picked.push((index, bytes));
    }
    match decode_blob(&header, picked) {
        Ok(got) => assert_eq!(got, blob, "decode_blob returned wrong bytes"),
        Err(e) => {
            assert!(
                !(only_genuine && genuine.len() >= usize::from(k)),
                "decode_blob refused {} genuine shares of a {k}-of-{n} blob: {e}",
                genuine.len()
            );
        }
    }
}

/// Layout: expected length (u24 LE, capped at `MAX_CHUNK`) `||` encoded payload.
/// `decode_payload`, which must return exactly the expected length or an error; then the input
/// itself as plaintext through `encode_payload` and back.
pub fn payload(data: &[u8]) {
    if data.len() >= 3 {
        let expected = u32::from_le_bytes([data[0], data[1], data[2], 0]).min(MAX_CHUNK) as usize;
        let body = &data[3..];
        match decode_payload(body, expected) {
            Ok(plain) => {
                assert_eq!(plain.len(), expected);
                if body[0] == FLAG_RAW {
                    assert_eq!(plain, &body[1..]);
                }
            }
            Err(e) => {
                let _ = e.to_string();
                if body.first() == Some(&FLAG_RAW) {
                    assert_ne!(body.len() - 1, expected);
                }
            }
        }
    }
    let encoded = encode_payload(data);
    assert!(encoded.len() <= data.len() + 1);
    assert_eq!(
        decode_payload(&encoded, data.len()).expect("an encoded payload decodes"),
        data
    );
}

/// `MemberCert` from postcard, then `verify` against the fuzz grid at several times. No
/// certificate may verify unless it is one the grid key really issued (no forgery, no
/// malleability), and an accepted one must have re-encoded to the same value.
pub fn member_cert(data: &[u8]) {
    let Ok((cert, _rest)) = postcard::take_from_bytes::<MemberCert>(data) else {
        return;
    };
    let _ = format!("{cert:?}");
    let bytes = postcard::to_stdvec(&cert).expect("postcard into a Vec");
    assert_eq!(
        postcard::from_bytes::<MemberCert>(&bytes).ok().as_ref(),
        Some(&cert)
    );
    let grid = grid_id();
    let signed = cert.verify_signature(&grid).is_ok();
    if signed {
        assert!(
            known_certs().contains(&cert),
            "a certificate the grid key never issued verifies"
        );
    }
    let _ = cert.verify_signature(&cert.grid());
    let other = NodeId::from_bytes([0xee; 32]);
    for now in [
        0,
        cert.issued_at(),
        cert.expires_at().saturating_sub(1),
        cert.expires_at(),
        u64::MAX,
    ] {
        match cert.verify(&grid, &cert.node(), now) {
            Ok(()) => {
                assert!(
                    signed
                        && cert.grid() == grid
                        && now < cert.expires_at()
                        && cert.issued_at() <= now.saturating_add(CLOCK_SKEW_SECS)
                );
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
        if cert.node() != other {
            assert!(cert.verify(&grid, &other, now).is_err());
        }
    }
}

/// `cairn_dir::Version::decode` (signature, bounds, canonical encoding), then `open` with the
/// fuzz directory's readcap and the state checks of [`dir_body`]. A version that decodes is
/// canonical and within bounds; one that verifies under the fuzz directory's key is one it
/// really signed (a seed): nothing else may verify, and nothing opens with another readcap.
pub fn dir_version(data: &[u8]) {
    let version = match Version::decode(data) {
        Ok(v) => v,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    assert_eq!(
        version.as_bytes(),
        data,
        "accepted version is not its bytes"
    );
    assert!(version.parents().len() <= MAX_PARENTS);
    assert_eq!(
        version.id().as_bytes(),
        blake3::hash(data).as_bytes(),
        "version id is not the hash of its bytes"
    );
    let cap = dir_cap();
    if version.slot() == cap.slot() {
        assert!(
            known_versions().iter().any(|v| v == data),
            "a version the directory key never signed verifies"
        );
    }
    match version.open(&cap.read_cap()) {
        Ok(body) => {
            assert_eq!(
                version.slot(),
                cap.slot(),
                "opened with another directory's cap"
            );
            check_dir_state(&body.state);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// `VersionBody` from postcard (what a reader decodes after decryption), then
/// [`check_dir_state`] on its state: a listing with unique names, and a join with itself that
/// changes no listing and is idempotent.
pub fn dir_body(data: &[u8]) {
    let Ok(body) = postcard::from_bytes::<VersionBody>(data) else {
        return;
    };
    let bytes = postcard::to_stdvec(&body).expect("postcard into a Vec");
    assert_eq!(
        postcard::from_bytes::<VersionBody>(&bytes).ok().as_ref(),
        Some(&body),
        "a decoded body does not round-trip"
    );
    check_dir_state(&body.state);
}

fn check_dir_state(state: &DirState) {
    let listing = Listing::of(state);
    assert!(
        listing.entries.windows(2).all(|w| w[0].name < w[1].name),
        "listing names are not unique and sorted"
    );
    assert!(listing.entries.len() <= state.entries.values().map(|e| e.content.0.len()).sum());
    let mut joined = state.clone();
    joined.join(state);
    assert_eq!(
        Listing::of(&joined),
        listing,
        "joining a state with itself changed its listing"
    );
    let mut again = joined.clone();
    again.join(&joined);
    assert_eq!(again, joined, "join is not idempotent");
    let mut empty = DirState::default();
    empty.join(state);
    assert_eq!(Listing::of(&empty), listing);
    let _ = joined.collect_garbage();
}

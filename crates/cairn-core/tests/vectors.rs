//! Golden vectors: fixed inputs (the AES-GCM one was cross-checked with Python's
//! `cryptography` package) -> exact keys, ids, roots and caps. A change here is a format
//! change: bump the version it belongs to and update `docs/specs/encoding.md` and `caps.md`.

#![allow(missing_docs, clippy::unwrap_used)]

use cairn_core::compress::encode_payload;
use cairn_core::crypto::{convergent_key, seal};
use cairn_core::{
    Cap, ChunkRef, Chunker, ConvergenceSecret, Encoding, KeyMode, LiteralCap, ManifestBuilder,
    NodeId, ReadCap, ShareRoot, encode_blob, rank, seal_chunk,
};
use data_encoding::HEXLOWER;

fn secret() -> ConvergenceSecret {
    let mut bytes = [0u8; 32];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = i as u8;
    }
    ConvergenceSecret::from_bytes(bytes)
}

fn hex(bytes: &[u8]) -> String {
    HEXLOWER.encode(bytes)
}

fn no_rng() -> [u8; 32] {
    panic!("convergent mode must not ask for randomness")
}

/// 1000 bytes: `i * 7 mod 251`.
fn thousand_bytes() -> Vec<u8> {
    (0..1000u32).map(|i| (i * 7 % 251) as u8).collect()
}

/// Puts `data` the way a client does: chunk, seal each chunk, build the manifest, store it as
/// a blob. Returns the readcap.
fn put(data: &[u8], secret: &ConvergenceSecret, enc: Encoding) -> ReadCap {
    let mut builder = ManifestBuilder::new();
    for chunk in Chunker::new(data) {
        let chunk = chunk.unwrap();
        let sealed = seal_chunk(&chunk, KeyMode::Convergent(secret), no_rng, enc).unwrap();
        builder.push(
            ChunkRef {
                root: sealed.root,
                plain_len: sealed.plain_len,
            },
            &sealed.key,
        );
    }
    let (manifest, key) = builder.finish(KeyMode::Convergent(secret), no_rng).unwrap();
    let (header, _shares) = encode_blob(&manifest.encode(), enc).unwrap();
    ReadCap {
        root: header.root(),
        key,
        size: data.len() as u64,
    }
}

#[test]
fn convergent_key_vector() {
    let encoded = encode_payload(b"cairn golden vector");
    assert_eq!(hex(&encoded), "00636169726e20676f6c64656e20766563746f72");
    let key = convergent_key(&secret(), &encoded);
    assert_eq!(
        hex(key.as_bytes()),
        "462d086a6c901d1a3e7d0ee64d921591ede13206b2c9a08a5653aae695ba5340"
    );
}

#[test]
fn seal_vector() {
    let encoded = encode_payload(b"cairn golden vector");
    let key = convergent_key(&secret(), &encoded);
    let sealed = seal(&key, encoded);
    assert_eq!(sealed.len(), 20 + 16);
    assert_eq!(hex(&sealed[..4]), "12253ae8");
    assert_eq!(hex(&sealed[sealed.len() - 4..]), "aaaeedef");
    assert_eq!(
        blake3::hash(&sealed).to_hex().as_str(),
        "92db9a8cd68d3cf16133661099ee9330bf1e7bfbd522e129c6b420a730659c81"
    );
}

#[test]
fn seal_chunk_vector() {
    let sealed = seal_chunk(
        &thousand_bytes(),
        KeyMode::Convergent(&secret()),
        no_rng,
        Encoding::DEFAULT,
    )
    .unwrap();
    // Periodic input: the zstd path (flag 1).
    assert_eq!(sealed.header.ciphertext_len, 1 + 271 + 16);
    assert_eq!(
        sealed.header.chunk_id.to_string(),
        "7fd157144984215a6cd65278b741c466b981a9527d90795e02ce2575a0a73195"
    );
    assert_eq!(
        sealed.root.to_string(),
        "06b65da3d07431049a3c44c39db534cd494e408aeba41e06c9cfae5e3c261af0"
    );
    assert_eq!(
        hex(sealed.key.as_bytes()),
        "4dd80555233b13f0a4b5415701a58964981e59e1bbf1a3f19dafbb95e6d439b9"
    );
}

#[test]
fn share_root_vector() {
    let (header, shares) =
        encode_blob(b"a small blob for the share root", Encoding::DEFAULT).unwrap();
    assert_eq!(header.share_len(), 11);
    assert_eq!(
        hex(&header.encode()),
        "010305d9ab35e98f5a021fe98b1ca52b254807beda35c9172e93615bfedc026a392e211f055da7b1827a9c8df855b19a2154d3a1118a856aa0b41bc60bccf72b81fb3c48f954456ad556254f14992b85de34f24e5706b19df8feba884824bdf1875547aa4d12c7274ad20fcbcb7921ab92acc17a241c4526564c07ee40fc6098506e7a39cc2c6a783d9b9433afb11d6501e872f2a96fcd5b86a67687d2cf90a7aeeca2c15136f401adc309a15e3202b8dd20898916d5f65875f3d33e022f9c6a515722cfca"
    );
    assert_eq!(hex(&shares[3]), "6b616767333e7727734c1c");
    assert_eq!(hex(&shares[4]), "4fbbdd4d6272a6e52e43f0");
    assert_eq!(
        header.root().to_string(),
        "7b652747b4551771c81edf49f742b68acc3fd039813c28d58b879719ee695aaa"
    );
}

#[test]
fn read_cap_vector() {
    let cap = put(&thousand_bytes(), &secret(), Encoding::DEFAULT);
    assert_eq!(
        cap.to_string(),
        "cairn:chk:1:jtwyxpmr2i3uha4umbv6brpyonc2iqmsix4phmyiwnnnzk2kqocxezs2kxdbyitc6bxwsbvmqf54xvrbz7eghq6gq7yyh2vpirvcbcxiamaaaaaaaaaa"
    );
    assert_eq!(
        cap.verify_cap().to_string(),
        "cairn:vchk:1:jtwyxpmr2i3uha4umbv6brpyonc2iqmsix4phmyiwnnnzk2kqoc6qayaaaaaaaaa"
    );
    // Same input, same secret: same cap.
    assert_eq!(put(&thousand_bytes(), &secret(), Encoding::DEFAULT), cap);
}

#[test]
fn literal_cap_vector() {
    let cap = Cap::Literal(LiteralCap {
        data: b"hi\n".to_vec(),
    });
    assert_eq!(cap.to_string(), "cairn:lit:1:nbuqu");
}

#[test]
fn rank_vector() {
    let root = ShareRoot::from_bytes([0x42; 32]);
    let nodes: Vec<NodeId> = (0..6u8).map(|i| NodeId::from_bytes([i; 32])).collect();
    let order: Vec<u8> = rank(&root, &nodes)
        .iter()
        .map(|n| n.as_bytes()[0])
        .collect();
    assert_eq!(order, vec![2, 5, 0, 4, 1, 3]);
}

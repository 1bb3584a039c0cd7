//! The seed corpus: real encodings of every input kind, made with fixed keys and ids so the
//! files under `fuzz/seeds/<target>/` are reproducible (`cargo test --test smoke -- --write-seeds` rewrites them).

use std::net::SocketAddr;

use cairn_core::cap::{Cap, LiteralCap, ReadCap, VerifyCap};
use cairn_core::cert::{MemberCert, Roles};
use cairn_core::compress::encode_payload;
use cairn_core::id::{GridId, NodeId, ShareRoot};
use cairn_core::wire::{
    GridInfo, Hello, InviteCode, JoinRefusal, JoinRequest, JoinResponse, Lease, PROTOCOL_VERSION,
    Refusal, Request, Response, RosterEntry, encode_frame,
};
use cairn_core::{
    ChunkKey, ChunkRef, Encoding, KeyMode, Manifest, ManifestBuilder, ReadKey, encode_blob,
};

use cairn_core::DirWriteCap;
use cairn_dir::{
    Content, DirState, Edit, EntryId, FileRef, Hlc, Meta, Version, VersionBody, VersionId,
};

use crate::targets::{dir_cap, grid_key};

/// One seed: the target it is for, a file name, the bytes.
#[derive(Debug, Clone)]
pub struct Seed {
    /// Target name (a key of [`crate::TARGETS`]).
    pub target: &'static str,
    /// File name under `seeds/<target>/`.
    pub name: String,
    /// The input.
    pub bytes: Vec<u8>,
}

/// Every certificate the fuzz grid key issues; `member_cert` checks that nothing else verifies.
pub fn issued_certs() -> Vec<MemberCert> {
    let key = grid_key();
    vec![
        key.issue(NodeId::from_bytes([0x22; 32]), Roles::MEMBER, 1000, 2000),
        key.issue(
            NodeId::from_bytes([0x33; 32]),
            Roles::MEMBER.with(Roles::ADMIN),
            0,
            u64::MAX,
        ),
        key.issue(
            NodeId::from_bytes([0x44; 32]),
            Roles::CLIENT,
            1_700_000_000,
            1_800_000_000,
        ),
    ]
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("a valid socket address literal")
}

fn blob(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

fn enc(k: u8, n: u8) -> Encoding {
    Encoding::new(k, n, k).expect("valid encoding")
}

/// Manifests with their read keys: empty, one chunk, three chunks.
fn manifests() -> Vec<(Manifest, ReadKey)> {
    [&[][..], &[1000][..], &[4 << 20, 1, 777][..]]
        .iter()
        .map(|lens| {
            let mut builder = ManifestBuilder::new();
            for (i, &plain_len) in lens.iter().enumerate() {
                let root = ShareRoot::from_bytes([0x60 + i as u8; 32]);
                builder.push(
                    ChunkRef { root, plain_len },
                    &ChunkKey::from_bytes([0x70 + i as u8; 32]),
                );
            }
            builder
                .finish(KeyMode::Private, || [0x55; 32])
                .expect("a small manifest seals")
        })
        .collect()
}

fn roster() -> Vec<RosterEntry> {
    issued_certs()
        .into_iter()
        .enumerate()
        .map(|(i, cert)| RosterEntry {
            cert,
            addrs: match i {
                0 => vec![],
                1 => vec![addr("192.0.2.1:4433")],
                _ => vec![addr("192.0.2.2:1"), addr("[2001:db8::1]:65535")],
            },
            announced_at: 1_700_000_000 + i as u64,
        })
        .collect()
}

fn body<T: serde::Serialize>(msg: &T) -> Vec<u8> {
    encode_frame(msg)[4..].to_vec()
}

/// Every message of every wire type used as a seed, by target name.
pub fn messages() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let certs = issued_certs();
    let (header, shares) = encode_blob(&blob(1000), Encoding::DEFAULT).expect("encodes");
    let root = header.root();
    let hellos = [
        Hello {
            version: PROTOCOL_VERSION,
            cert: certs[0].clone(),
            addrs: vec![],
        },
        Hello {
            version: PROTOCOL_VERSION,
            cert: certs[1].clone(),
            addrs: vec![addr("127.0.0.1:4000"), addr("[::1]:4001")],
        },
    ];
    let requests = [
        Request::PutShare {
            root,
            index: 1,
            header: header.encode(),
            lease: Lease {
                owner: NodeId::from_bytes([0x22; 32]),
                expires_at: 1_800_000_000,
            },
            data: shares[1].clone(),
        },
        Request::GetShare {
            root,
            index: 4,
            range: None,
        },
        Request::GetShare {
            root,
            index: 0,
            range: Some((10, 300)),
        },
        Request::HeldShares {
            roots: vec![root, ShareRoot::from_bytes([9; 32])],
        },
        Request::Roster { entries: roster() },
        Request::Revocations {
            revocations: vec![grid_key().revoke(NodeId::from_bytes([0x33; 32]), 1_800_000_000)],
        },
        Request::Space,
    ];
    let mut responses = vec![
        Response::Stored { already: false },
        Response::Stored { already: true },
        Response::Share {
            header: header.encode(),
            data: shares[0][10..300].to_vec(),
        },
        Response::NotFound,
        Response::Held(vec![vec![0, 1, 4], vec![]]),
        Response::Roster(roster()),
        Response::Revocations(vec![
            grid_key().revoke(NodeId::from_bytes([0x33; 32]), 1_800_000_000),
        ]),
    ];
    for r in [
        Refusal::Full,
        Refusal::InvalidShare,
        Refusal::BadRequest,
        Refusal::Internal,
        Refusal::NotStorage,
        Refusal::InvalidVersion,
        Refusal::BadLease,
    ] {
        responses.push(Response::Refused(r));
    }
    responses.push(Response::Space {
        offered_bytes: 10 << 30,
        used_bytes: 123_456_789,
    });
    let join_requests = [
        JoinRequest {
            secret: [0x5e; 32],
            addrs: vec![],
        },
        JoinRequest {
            secret: [0xa5; 32],
            addrs: vec![addr("10.0.0.7:4433")],
        },
    ];
    let mut join_responses = vec![JoinResponse::Admitted {
        cert: certs[2].clone(),
        grid: GridInfo {
            id: grid_key().grid_id(),
            encoding: Encoding::DEFAULT,
        },
        roster: roster(),
    }];
    for r in [
        JoinRefusal::UnknownInvite,
        JoinRefusal::Expired,
        JoinRefusal::NotAdmin,
    ] {
        join_responses.push(JoinResponse::Refused(r));
    }
    vec![
        ("wire_hello", hellos.iter().map(body).collect()),
        ("wire_request", requests.iter().map(body).collect()),
        ("wire_response", responses.iter().map(body).collect()),
        (
            "wire_join_request",
            join_requests.iter().map(body).collect(),
        ),
        (
            "wire_join_response",
            join_responses.iter().map(body).collect(),
        ),
    ]
}

fn invites() -> Vec<InviteCode> {
    vec![
        InviteCode {
            grid: grid_key().grid_id(),
            inviter: NodeId::from_bytes([0x33; 32]),
            addrs: vec![addr("192.0.2.1:4433")],
            secret: [0x5e; 32],
        },
        InviteCode {
            grid: GridId::from_bytes([1; 32]),
            inviter: NodeId::from_bytes([2; 32]),
            addrs: vec![],
            secret: [3; 32],
        },
        InviteCode {
            grid: GridId::from_bytes([4; 32]),
            inviter: NodeId::from_bytes([5; 32]),
            addrs: (0..64)
                .map(|i| SocketAddr::from(([10, 0, 0, i as u8], 4000 + i)))
                .collect(),
            secret: [6; 32],
        },
    ]
}

/// 2026-11-23T16:32:32Z, in milliseconds.
const DIR_T0: u64 = 1_795_451_552_000;

fn dir_edit(
    state: &mut DirState,
    writer: u8,
    millis: u64,
    ops: impl FnOnce(&mut Edit<'_>) -> Result<(), cairn_dir::DirError>,
) -> DirState {
    let mut edit = Edit::new(
        state,
        NodeId::from_bytes([writer; 32]),
        Hlc { millis, counter: 0 },
        0,
    );
    ops(&mut edit).expect("a valid seed edit");
    edit.finish().expect("the seed edit changes something")
}

/// Directory version bodies: an empty snapshot, a delta with every kind of entry (a file by
/// readcap, a literal file, a subdirectory with its sealed writecap, a symlink, a deleted
/// entry), and a merged state with a content conflict, a name clash and an edit that survived
/// a concurrent delete.
pub fn dir_bodies() -> Vec<(&'static str, VersionBody)> {
    let meta = Meta {
        mode: 0o644,
        mtime_ns: 1_700_000_000_000_000_000,
        ..Default::default()
    };
    let literal = |text: &str| Content::File {
        file: FileRef::new(Cap::Literal(LiteralCap {
            data: text.as_bytes().to_vec(),
        }))
        .expect("a literal cap is a file"),
        meta,
    };
    let body = |writer: u8, millis: u64, state: DirState| VersionBody {
        writer: NodeId::from_bytes([writer; 32]),
        hlc: Hlc { millis, counter: 0 },
        state,
    };

    let mut a = DirState::default();
    let kinds = dir_edit(&mut a, 0xa1, DIR_T0, |e| {
        let read = Cap::Read(ReadCap {
            root: ShareRoot::from_bytes([1; 32]),
            key: ReadKey::from_bytes([2; 32]),
            size: 123_456,
        });
        let file = FileRef::new(read).expect("a readcap is a file");
        e.create(EntryId([1; 16]), "big.bin", Content::File { file, meta })?;
        e.create(EntryId([2; 16]), "notes.txt", literal("hello\n"))?;
        let child = DirWriteCap::from_seed([0x50; 32]);
        e.create(
            EntryId([3; 16]),
            "photos",
            Content::dir(&dir_cap(), &child, [0x51; 32], meta),
        )?;
        e.create(
            EntryId([4; 16]),
            "link",
            Content::Symlink {
                target: "../elsewhere".into(),
                meta,
            },
        )?;
        e.create(EntryId([5; 16]), "old", literal("gone"))?;
        e.remove(EntryId([5; 16]))
    });

    // B starts from A's delta; then both edit concurrently and exchange.
    let mut b = kinds.clone();
    let from_a = dir_edit(&mut a, 0xa1, DIR_T0 + 1000, |e| {
        e.set_content(EntryId([2; 16]), literal("a's notes"))?;
        e.create(EntryId([6; 16]), "todo", literal("a"))?;
        e.remove(EntryId([4; 16]))
    });
    let from_b = dir_edit(&mut b, 0xb2, DIR_T0 + 2000, |e| {
        e.set_content(EntryId([2; 16]), literal("b's notes"))?;
        e.create(EntryId([7; 16]), "todo", literal("b"))?;
        e.rename(EntryId([4; 16]), "link2")
    });
    a.join(&from_b);
    b.join(&from_a);
    assert_eq!(a, b, "seed replicas converge");

    vec![
        ("empty", body(0xa1, DIR_T0, DirState::default())),
        ("kinds", body(0xa1, DIR_T0, kinds)),
        ("delta", body(0xb2, DIR_T0 + 2000, from_b)),
        ("merged", body(0xa1, DIR_T0 + 2000, a)),
    ]
}

/// Sealed versions of [`dir_bodies`], all but the `foreign` one signed by [`dir_cap`].
fn dir_seed_versions() -> Vec<(String, Version)> {
    let cap = dir_cap();
    let mut out = Vec::new();
    for (i, (name, body)) in dir_bodies().into_iter().enumerate() {
        let parents: Vec<VersionId> = (0..i as u8)
            .map(|p| VersionId::from_bytes([0x30 + p; 32]))
            .collect();
        let snapshot = name != "delta";
        let version = Version::seal(
            &cap,
            parents,
            i as u64 + 1,
            snapshot,
            &body,
            [0x60 + i as u8; 32],
        );
        out.push((name.to_string(), version));
    }
    let foreign = DirWriteCap::from_seed([0x43; 32]);
    let (_, body) = dir_bodies().swap_remove(1);
    out.push((
        "foreign-kinds".into(),
        Version::seal(&foreign, vec![], 1, true, &body, [0x70; 32]),
    ));
    out
}

/// The bytes of every version the fuzz directory key signed: nothing else may verify under it.
pub fn dir_versions() -> Vec<Vec<u8>> {
    dir_seed_versions()
        .into_iter()
        .filter(|(name, _)| !name.starts_with("foreign"))
        .map(|(_, v)| v.into_bytes())
        .collect()
}

/// The whole seed corpus.
pub fn all() -> Vec<Seed> {
    let mut out = Vec::new();
    let mut add = |target: &'static str, name: String, bytes: Vec<u8>| {
        out.push(Seed {
            target,
            name,
            bytes,
        })
    };

    // cap
    let read = ReadCap {
        root: ShareRoot::from_bytes([1; 32]),
        key: ReadKey::from_bytes([2; 32]),
        size: 123_456,
    };
    let caps = [
        Cap::Read(read.clone()),
        Cap::Verify(read.verify_cap()),
        Cap::Verify(VerifyCap {
            root: ShareRoot::from_bytes([0xff; 32]),
            size: u64::MAX,
        }),
        Cap::Literal(LiteralCap { data: vec![] }),
        Cap::Literal(LiteralCap {
            data: b"hi\n".to_vec(),
        }),
        Cap::Literal(LiteralCap {
            data: vec![0xa5; cairn_core::INLINE_LIMIT],
        }),
        Cap::DirWrite(dir_cap()),
        Cap::DirRead(dir_cap().read_cap()),
    ];
    for (i, cap) in caps.iter().enumerate() {
        add(
            "cap",
            format!("{}-{i}", cap.kind()),
            cap.to_string().into_bytes(),
        );
    }
    add(
        "cap",
        "upper-spaced".into(),
        format!("  {}\n", read.to_string().to_uppercase()).into_bytes(),
    );

    // invite_code: text forms, and raw postcard bodies (the target also base32-wraps its input)
    for (i, code) in invites().iter().enumerate() {
        add(
            "invite_code",
            format!("text-{i}"),
            code.to_string().into_bytes(),
        );
        add(
            "invite_code",
            format!("body-{i}"),
            postcard::to_stdvec(code).expect("postcard into a Vec"),
        );
    }

    // manifest, manifest_keys
    for (i, (m, key)) in manifests().iter().enumerate() {
        let bytes = m.encode();
        add(
            "manifest",
            format!("chunks-{}", m.chunks().len()),
            bytes.clone(),
        );
        let mut keyed = key.as_bytes().to_vec();
        keyed.extend_from_slice(&bytes);
        add(
            "manifest_keys",
            format!("chunks-{}", m.chunks().len()),
            keyed,
        );
        let mut wrong = [0x99u8; 32].to_vec();
        wrong.extend_from_slice(&bytes);
        add("manifest_keys", format!("wrong-key-{i}"), wrong);
    }

    // chunk_header, verify_header
    for (k, n, len) in [
        (1, 1, 0),
        (3, 5, 1000),
        (2, 3, 1),
        (10, 30, 4096),
        (64, 64, 200),
    ] {
        let (header, shares) = encode_blob(&blob(len), enc(k, n)).expect("encodes");
        let bytes = header.encode();
        add(
            "chunk_header",
            format!("{k}-of-{n}-len-{len}"),
            bytes.clone(),
        );
        for index in [0, n - 1] {
            let mut input = header.root().as_bytes().to_vec();
            input.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
            input.extend_from_slice(&bytes);
            input.push(index);
            input.extend_from_slice(&shares[usize::from(index)]);
            add(
                "verify_header",
                format!("{k}-of-{n}-len-{len}-share-{index}"),
                input,
            );
        }
    }

    // wire_*, wire_frames
    for (i, (target, bodies)) in messages().into_iter().enumerate() {
        let mut stream = vec![i as u8];
        for (j, b) in bodies.iter().enumerate() {
            add(target, format!("msg-{j}"), b.clone());
            stream.extend_from_slice(&(b.len() as u32).to_le_bytes());
            stream.extend_from_slice(b);
        }
        add("wire_frames", format!("{target}-stream"), stream);
    }
    let mut huge = vec![1u8];
    huge.extend_from_slice(&u32::MAX.to_le_bytes());
    add("wire_frames", "oversized-prefix".into(), huge);

    // decode_blob (layouts documented on `targets::decode_blob_target`)
    // mode 1, 3-of-5 of 1000 bytes: systematic shares; parity path; a bad share among them.
    add(
        "decode_blob",
        "real-systematic".into(),
        vec![1, 2, 2, 0xe8, 0x03, 7, 0, 0, 0, 1, 0, 2],
    );
    add(
        "decode_blob",
        "real-parity".into(),
        vec![1, 2, 2, 0xe8, 0x03, 7, 0, 4, 0, 3, 0, 1],
    );
    add(
        "decode_blob",
        "real-corrupt".into(),
        vec![1, 2, 2, 0xe8, 0x03, 7, 0, 0, 1, 1, 0, 2, 0, 3],
    );
    add("decode_blob", "real-8-of-15-all".into(), {
        let mut v = vec![1, 7, 7, 0x00, 0x0f, 9];
        for i in 0..15u8 {
            v.extend_from_slice(&[0, 14 - i]);
        }
        v
    });
    // mode 0: k = 2, n = 3, 10 bytes, two shares of 5 bytes.
    add("decode_blob", "arbitrary".into(), {
        let mut v = vec![0, 2, 3, 10, 0];
        for i in [0u8, 2] {
            v.extend_from_slice(&[i, 5, 0, 1, 2, 3, 4, 5]);
        }
        v
    });

    // payload: expected length (u24 LE) || encoded payload
    let text = b"the quick brown fox jumps over the lazy dog. ".repeat(40);
    for (name, plain) in [
        ("zstd-text", text),
        ("raw-short", b"abc".to_vec()),
        ("empty", vec![]),
    ] {
        let mut input = (plain.len() as u32).to_le_bytes()[..3].to_vec();
        input.extend_from_slice(&encode_payload(&plain));
        add("payload", name.into(), input);
    }

    // dir_version, dir_body
    for (name, version) in dir_seed_versions() {
        add("dir_version", name, version.into_bytes());
    }
    for (name, body) in dir_bodies() {
        add(
            "dir_body",
            name.into(),
            postcard::to_stdvec(&body).expect("postcard into a Vec"),
        );
    }

    // member_cert
    for (i, cert) in issued_certs().iter().enumerate() {
        add(
            "member_cert",
            format!("cert-{i}"),
            postcard::to_stdvec(cert).expect("postcard into a Vec"),
        );
    }
    out
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Frame bodies as large as `MAX_FRAME` allows, each a list that breaks its protocol bound
/// (or none) only after it has been decoded: what a peer can make a node build in memory
/// before `check_bounds` runs. For `cargo test --test smoke -- --large`.
pub fn large() -> Vec<Seed> {
    let max = cairn_core::wire::MAX_FRAME;
    let mut out = Vec::new();
    // `prefix` ends just before a list's count, `item` is one element, `suffix` follows the
    // list; the list fills the frame.
    let mut list =
        |target: &'static str, name: &str, prefix: Vec<u8>, item: &[u8], suffix: &[u8]| {
            let n = (max - prefix.len() - suffix.len() - 5) / item.len();
            let mut bytes = prefix;
            varint(n as u64, &mut bytes);
            bytes.reserve(n * item.len() + suffix.len());
            for _ in 0..n {
                bytes.extend_from_slice(item);
            }
            bytes.extend_from_slice(suffix);
            assert!(bytes.len() <= max);
            out.push(Seed {
                target,
                name: format!("{name} ({n} items)"),
                bytes,
            });
        };
    let v4: [u8; 6] = [0, 127, 0, 0, 1, 80];
    let certs = issued_certs();
    let mut hello = body(&Hello {
        version: PROTOCOL_VERSION,
        cert: certs[0].clone(),
        addrs: vec![],
    });
    hello.pop();
    list("wire_hello", "Hello.addrs, IPv4", hello, &v4, &[]);
    let mut join = body(&JoinRequest {
        secret: [0x5e; 32],
        addrs: vec![],
    });
    join.pop();
    list(
        "wire_join_request",
        "JoinRequest.addrs, IPv4",
        join,
        &v4,
        &[],
    );
    list(
        "wire_request",
        "Request::HeldShares.roots",
        vec![2],
        &[7; 32],
        &[],
    );
    list(
        "wire_response",
        "Response::Held, empty lists",
        vec![3],
        &[0],
        &[],
    );
    let entry = postcard::to_stdvec(&RosterEntry {
        cert: certs[0].clone(),
        addrs: vec![],
        announced_at: 0,
    })
    .expect("postcard into a Vec");
    list(
        "wire_request",
        "Request::Roster.entries",
        vec![3],
        &entry,
        &[],
    );
    list("wire_response", "Response::Roster", vec![4], &entry, &[]);
    // One roster entry with a frame full of addresses.
    let mut one = vec![3, 1];
    one.extend_from_slice(&entry[..entry.len() - 2]);
    list(
        "wire_request",
        "Request::Roster, one entry's addrs",
        one,
        &v4,
        &[0],
    );
    out
}

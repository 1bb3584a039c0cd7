//! Wire protocol properties (`docs/specs/wire.md`): every message type round-trips through a
//! frame, arbitrary bytes never panic a decoder, every protocol bound is enforced, and golden
//! vectors pin the exact bytes of a few fixed messages. A change to a golden vector is a
//! protocol change: bump `PROTOCOL_VERSION` (or `CERT_VERSION`) and update the spec.

#![allow(missing_docs, clippy::unwrap_used)]

use std::fmt::Debug;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use cairn_core::cert::{GridKey, MemberCert, Revocation, Roles};
use cairn_core::id::{GridId, NodeId, ShareRoot, SlotId};
use cairn_core::wire::{
    self, Bounded, FoundShare, GridInfo, Hello, InviteCode, InviteError, JoinRefusal, JoinRequest,
    JoinResponse, Lease, MAX_FRAME, MAX_HELD_QUERY, MAX_REVOCATIONS, MAX_ROSTER, MAX_SHARE_BATCH,
    PROTOCOL_VERSION, PutAnswer, Refusal, Request, Response, RosterEntry, ShareItem, WireError,
    decode, encode_frame, frame_len,
};
use cairn_core::{Encoding, encode_blob};
use data_encoding::HEXLOWER;
use proptest::collection::vec;
use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;

// ---------------------------------------------------------------------------------------------
// Strategies

fn node_id() -> impl Strategy<Value = NodeId> {
    any::<[u8; 32]>().prop_map(NodeId::from_bytes)
}

fn grid_id() -> impl Strategy<Value = GridId> {
    any::<[u8; 32]>().prop_map(GridId::from_bytes)
}

fn share_root() -> impl Strategy<Value = ShareRoot> {
    any::<[u8; 32]>().prop_map(ShareRoot::from_bytes)
}

/// Socket addresses as the wire carries them: IPv6 flow info and scope id are not sent, so
/// they are generated as zero (see `ipv6_flowinfo_and_scope_are_not_carried`).
fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| (Ipv4Addr::from(ip), port).into()),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| (Ipv6Addr::from(ip), port).into()),
    ]
}

fn addrs() -> impl Strategy<Value = Vec<SocketAddr>> {
    vec(socket_addr(), 0..=64)
}

fn roles() -> impl Strategy<Value = Roles> {
    (0u8..16).prop_map(|bits| {
        [Roles::CLIENT, Roles::STORAGE, Roles::CACHE, Roles::ADMIN]
            .iter()
            .enumerate()
            .filter(|(i, _)| bits & (1 << i) != 0)
            .fold(Roles::default(), |acc, (_, r)| acc.with(*r))
    })
}

/// A certificate really signed by one of four grid keys (signing is the costly part, so the
/// number of certificates per case is kept small).
fn cert() -> impl Strategy<Value = MemberCert> {
    (0u8..4, node_id(), roles(), any::<u64>(), any::<u64>()).prop_map(
        |(key, node, roles, issued, expires)| {
            GridKey::from_bytes(&[key; 32]).issue(node, roles, issued, expires)
        },
    )
}

/// A revocation really signed by one of four grid keys.
fn revocation() -> impl Strategy<Value = Revocation> {
    (0u8..4, node_id(), any::<u64>())
        .prop_map(|(key, node, at)| GridKey::from_bytes(&[key; 32]).revoke(node, at))
}

fn roster_entry() -> impl Strategy<Value = RosterEntry> {
    (cert(), vec(socket_addr(), 0..=8), any::<u64>()).prop_map(|(cert, addrs, announced_at)| {
        RosterEntry {
            cert,
            addrs,
            announced_at,
        }
    })
}

fn roster() -> impl Strategy<Value = Vec<RosterEntry>> {
    vec(roster_entry(), 0..4)
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}

fn lease() -> impl Strategy<Value = Lease> {
    (node_id(), any::<u64>()).prop_map(|(owner, expires_at)| Lease { owner, expires_at })
}

fn hello() -> impl Strategy<Value = Hello> {
    (any::<u16>(), cert(), addrs()).prop_map(|(version, cert, addrs)| Hello {
        version,
        cert,
        addrs,
    })
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (share_root(), any::<u8>(), bytes(300), lease(), bytes(3000)).prop_map(
            |(root, index, header, lease, data)| Request::PutShare {
                root,
                index,
                header,
                lease,
                data,
            }
        ),
        (
            share_root(),
            any::<u8>(),
            proptest::option::of((any::<u64>(), any::<u64>()))
        )
            .prop_map(|(root, index, range)| Request::GetShare {
                root,
                index,
                range: range.map(|(a, b)| (a.min(b), a.max(b))),
            }),
        vec(share_root(), 0..64).prop_map(|roots| Request::HeldShares { roots }),
        roster().prop_map(|entries| Request::Roster { entries }),
        (lease(), vec(share_item(), 0..8))
            .prop_map(|(lease, shares)| Request::PutShares { lease, shares }),
        vec((share_root(), any::<u8>()), 0..64).prop_map(|shares| Request::GetShares { shares }),
        (vec(any::<[u8; 32]>(), 0..16), any::<u32>()).prop_map(|(slots, ttl_secs)| {
            Request::Watch {
                slots: slots.into_iter().map(SlotId::from_bytes).collect(),
                ttl_secs,
            }
        }),
        bytes(3000).prop_map(|version| Request::Changed { version }),
        vec(revocation(), 0..4).prop_map(|revocations| Request::Revocations { revocations }),
        Just(Request::Space),
    ]
}

fn share_item() -> impl Strategy<Value = ShareItem> {
    (share_root(), any::<u8>(), bytes(300), bytes(2000)).prop_map(|(root, index, header, data)| {
        ShareItem {
            root,
            index,
            header,
            data,
        }
    })
}

fn put_answer() -> impl Strategy<Value = PutAnswer> {
    prop_oneof![
        any::<bool>().prop_map(|already| PutAnswer::Stored { already }),
        refusal().prop_map(PutAnswer::Refused),
    ]
}

fn refusal() -> impl Strategy<Value = Refusal> {
    prop_oneof![
        Just(Refusal::Full),
        Just(Refusal::InvalidShare),
        Just(Refusal::BadRequest),
        Just(Refusal::Internal),
        Just(Refusal::NotStorage),
        Just(Refusal::InvalidVersion),
        Just(Refusal::BadLease),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        any::<bool>().prop_map(|already| Response::Stored { already }),
        (bytes(300), bytes(3000)).prop_map(|(header, data)| Response::Share { header, data }),
        Just(Response::NotFound),
        vec(bytes(64), 0..64).prop_map(Response::Held),
        roster().prop_map(Response::Roster),
        refusal().prop_map(Response::Refused),
        vec(put_answer(), 0..64).prop_map(Response::StoredMany),
        vec(
            proptest::option::of(
                (bytes(300), bytes(2000)).prop_map(|(header, data)| FoundShare { header, data })
            ),
            0..8
        )
        .prop_map(Response::Shares),
        vec(revocation(), 0..4).prop_map(Response::Revocations),
        (any::<u64>(), any::<u64>()).prop_map(|(offered_bytes, used_bytes)| Response::Space {
            offered_bytes,
            used_bytes,
        }),
    ]
}

fn join_request() -> impl Strategy<Value = JoinRequest> {
    (any::<[u8; 32]>(), addrs()).prop_map(|(secret, addrs)| JoinRequest { secret, addrs })
}

fn encoding() -> impl Strategy<Value = Encoding> {
    (1u8..=64)
        .prop_flat_map(|k| (Just(k), k..=64))
        .prop_flat_map(|(k, happy)| (Just(k), Just(happy), happy..=64))
        .prop_map(|(k, happy, n)| Encoding::new(k, n, happy).unwrap())
}

fn join_response() -> impl Strategy<Value = JoinResponse> {
    prop_oneof![
        (cert(), grid_id(), encoding(), roster()).prop_map(|(cert, id, encoding, roster)| {
            JoinResponse::Admitted {
                cert,
                grid: GridInfo { id, encoding },
                roster,
            }
        }),
        prop_oneof![
            Just(JoinRefusal::UnknownInvite),
            Just(JoinRefusal::Expired),
            Just(JoinRefusal::NotAdmin),
        ]
        .prop_map(JoinResponse::Refused),
    ]
}

fn invite_code() -> impl Strategy<Value = InviteCode> {
    (grid_id(), node_id(), addrs(), any::<[u8; 32]>()).prop_map(|(grid, inviter, addrs, secret)| {
        InviteCode {
            grid,
            inviter,
            addrs,
            secret,
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Frames `msg`, checks the prefix, decodes the body back.
fn round_trip<T>(msg: &T) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + Bounded + PartialEq + Debug,
{
    let frame = encode_frame(msg);
    let len = frame_len(frame[..4].try_into().unwrap()).unwrap();
    prop_assert_eq!(len, frame.len() - 4);
    let back: T = decode(&frame[4..]).unwrap();
    prop_assert_eq!(&back, msg);
    Ok(())
}

/// Decodes arbitrary bytes; an accepted message must re-encode to an accepted message.
fn never_panics<T>(body: &[u8])
where
    T: Serialize + DeserializeOwned + Bounded + PartialEq + Debug,
{
    if let Ok(msg) = decode::<T>(body) {
        let frame = encode_frame(&msg);
        assert!(frame.len() - 4 <= body.len());
        assert_eq!(decode::<T>(&frame[4..]).unwrap(), msg);
    }
}

/// `body` with one bit flipped, truncated, or with a byte inserted, chosen by `how`.
fn damage(body: &[u8], how: (u8, usize, u8)) -> Vec<u8> {
    let mut out = body.to_vec();
    if out.is_empty() {
        return vec![how.2];
    }
    let at = how.1 % out.len();
    match how.0 % 3 {
        0 => out[at] ^= 1 << (how.2 % 8),
        1 => out.truncate(at),
        _ => out.insert(at, how.2),
    }
    out
}

/// Over-long lists are refused while decoding (before the list is built), so the error is a
/// malformed message rather than a broken bound.
fn refused<T: DeserializeOwned + Bounded + Debug>(msg_frame: &[u8]) {
    match decode::<T>(&msg_frame[4..]) {
        Err(WireError::Limit(_) | WireError::Malformed(_)) => {}
        other => panic!("expected the message to be refused, got {other:?}"),
    }
}

fn limit<T: DeserializeOwned + Bounded + Debug>(msg_frame: &[u8]) -> &'static str {
    match decode::<T>(&msg_frame[4..]) {
        Err(WireError::Limit(what)) => what,
        other => panic!("expected a limit error, got {other:?}"),
    }
}

fn sample_cert() -> MemberCert {
    GridKey::from_bytes(&[0x11; 32]).issue(
        NodeId::from_bytes([0x22; 32]),
        Roles::MEMBER,
        1_700_000_000,
        1_800_000_000,
    )
}

fn v4(port: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], port))
}

// ---------------------------------------------------------------------------------------------
// Round trips and garbage

proptest! {
    #[test]
    fn hello_round_trips(msg in hello()) {
        round_trip(&msg)?;
    }

    #[test]
    fn request_round_trips(msg in request()) {
        round_trip(&msg)?;
    }

    #[test]
    fn response_round_trips(msg in response()) {
        round_trip(&msg)?;
    }

    #[test]
    fn join_request_round_trips(msg in join_request()) {
        round_trip(&msg)?;
    }

    #[test]
    fn join_response_round_trips(msg in join_response()) {
        round_trip(&msg)?;
    }

    #[test]
    fn invite_code_text_round_trips(code in invite_code()) {
        let text = code.to_string();
        prop_assert!(text.starts_with("cairn-invite:1:"));
        let body = &text["cairn-invite:1:".len()..];
        prop_assert!(body.bytes().all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b)));
        prop_assert_eq!(text.parse::<InviteCode>().unwrap(), code.clone());
        prop_assert_eq!(text.to_uppercase().replace("CAIRN-INVITE", "cairn-invite")
            .parse::<InviteCode>().unwrap(), code.clone());
        prop_assert_eq!(format!("  {text}\n").parse::<InviteCode>().unwrap(), code);
    }

    #[test]
    fn damaged_invite_text_never_panics(code in invite_code(), how in any::<(u8, usize, u8)>()) {
        let text = code.to_string();
        let damaged = damage(text.as_bytes(), how);
        if let Ok(back) = String::from_utf8_lossy(&damaged).parse::<InviteCode>() {
            prop_assert!(back.addrs.len() <= 64);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(body in bytes(2048)) {
        never_panics::<Hello>(&body);
        never_panics::<Request>(&body);
        never_panics::<Response>(&body);
        never_panics::<JoinRequest>(&body);
        never_panics::<JoinResponse>(&body);
        let _ = String::from_utf8_lossy(&body).parse::<InviteCode>();
        let mut text = "cairn-invite:1:".to_string();
        text.push_str(&data_encoding::BASE32_NOPAD.encode(&body).to_ascii_lowercase());
        let _ = text.parse::<InviteCode>();
    }

    #[test]
    fn damaged_messages_never_panic(
        hello in hello(), req in request(), resp in response(), jreq in join_request(),
        jresp in join_response(), how in any::<(u8, usize, u8)>(),
    ) {
        never_panics::<Hello>(&damage(&encode_frame(&hello)[4..], how));
        never_panics::<Request>(&damage(&encode_frame(&req)[4..], how));
        never_panics::<Response>(&damage(&encode_frame(&resp)[4..], how));
        never_panics::<JoinRequest>(&damage(&encode_frame(&jreq)[4..], how));
        never_panics::<JoinResponse>(&damage(&encode_frame(&jresp)[4..], how));
    }

    #[test]
    fn frame_len_refuses_exactly_the_lengths_over_max_frame(len in any::<u32>()) {
        match frame_len(len.to_le_bytes()) {
            Ok(got) => {
                prop_assert!(len as usize <= MAX_FRAME);
                prop_assert_eq!(got, len as usize);
            }
            Err(WireError::TooLarge { len: got, max }) => {
                prop_assert!(len as usize > MAX_FRAME);
                prop_assert_eq!((got, max), (len as usize, MAX_FRAME));
            }
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }

    #[test]
    fn frame_len_refuses_announced_lengths_over_max_frame(
        extra in 1u32..=(u32::MAX - MAX_FRAME as u32),
    ) {
        let announced = MAX_FRAME as u32 + extra;
        let refused = matches!(
            frame_len(announced.to_le_bytes()),
            Err(WireError::TooLarge { len, max: MAX_FRAME }) if len == announced as usize
        );
        prop_assert!(refused);
    }
}

// ---------------------------------------------------------------------------------------------
// Frames and bounds

#[test]
fn frame_len_edges() {
    assert_eq!(frame_len(0u32.to_le_bytes()).unwrap(), 0);
    assert_eq!(
        frame_len((MAX_FRAME as u32).to_le_bytes()).unwrap(),
        MAX_FRAME
    );
    for len in [MAX_FRAME as u32 + 1, u32::MAX] {
        assert!(matches!(
            frame_len(len.to_le_bytes()),
            Err(WireError::TooLarge { .. })
        ));
    }
    // The prefix is little-endian: 00 00 40 01 is 0x0140_0000 = 20 MiB = MAX_FRAME.
    assert_eq!(frame_len([0x00, 0x00, 0x40, 0x01]).unwrap(), MAX_FRAME);
    assert!(frame_len([0x01, 0x00, 0x40, 0x01]).is_err());
}

#[test]
fn body_over_max_frame_is_refused() {
    let body = vec![0u8; MAX_FRAME + 1];
    assert!(matches!(
        decode::<Response>(&body),
        Err(WireError::TooLarge { len, max: MAX_FRAME }) if len == MAX_FRAME + 1
    ));
}

#[test]
fn trailing_bytes_and_empty_bodies_are_refused() {
    let mut frame = encode_frame(&Response::NotFound);
    frame.push(0);
    assert!(matches!(
        decode::<Response>(&frame[4..]),
        Err(WireError::Limit("trailing bytes after message"))
    ));
    assert!(matches!(
        decode::<Request>(&[]),
        Err(WireError::Malformed(_))
    ));
}

/// Enums are closed: a variant index past the last one known is malformed. This is what a node
/// of an older build does with a request it does not know (`Request::Space`, variant 11, is
/// the newest): it drops it unanswered, and the asker counts the peer as not answering.
#[test]
fn unknown_variants_are_malformed() {
    assert_eq!(decode::<Request>(&[0x0b]).unwrap(), Request::Space);
    for body in [&[0x0c][..], &[0x7f], &[0x80, 0x01]] {
        assert!(
            matches!(decode::<Request>(body), Err(WireError::Malformed(_))),
            "{body:02x?}"
        );
    }
    assert!(matches!(
        decode::<Response>(&[0x0c]),
        Err(WireError::Malformed(_))
    ));
    // A truncated `Space` answer is malformed too, never read as zeros.
    assert!(matches!(
        decode::<Response>(&[0x0b, 0x05]),
        Err(WireError::Malformed(_))
    ));
}

#[test]
fn address_lists_are_bounded_at_64() {
    let cert = sample_cert();
    let ok: Vec<SocketAddr> = (0..64).map(v4).collect();
    let over: Vec<SocketAddr> = (0..65).map(v4).collect();
    let hello = |addrs: &Vec<SocketAddr>| Hello {
        version: PROTOCOL_VERSION,
        cert: cert.clone(),
        addrs: addrs.clone(),
    };
    assert!(decode::<Hello>(&encode_frame(&hello(&ok))[4..]).is_ok());
    refused::<Hello>(&encode_frame(&hello(&over)));

    let join = |addrs: &Vec<SocketAddr>| JoinRequest {
        secret: [1; 32],
        addrs: addrs.clone(),
    };
    assert!(decode::<JoinRequest>(&encode_frame(&join(&ok))[4..]).is_ok());
    refused::<JoinRequest>(&encode_frame(&join(&over)));

    let entry = |addrs: &Vec<SocketAddr>| RosterEntry {
        cert: cert.clone(),
        addrs: addrs.clone(),
        announced_at: 5,
    };
    let req = |addrs| Request::Roster {
        entries: vec![entry(addrs)],
    };
    assert!(decode::<Request>(&encode_frame(&req(&ok))[4..]).is_ok());
    refused::<Request>(&encode_frame(&req(&over)));
    refused::<Response>(&encode_frame(&Response::Roster(vec![entry(&over)])));

    let code = |addrs: &Vec<SocketAddr>| InviteCode {
        grid: GridId::from_bytes([1; 32]),
        inviter: NodeId::from_bytes([2; 32]),
        addrs: addrs.clone(),
        secret: [3; 32],
    };
    assert!(code(&ok).to_string().parse::<InviteCode>().is_ok());
    assert_eq!(
        code(&over).to_string().parse::<InviteCode>(),
        Err(InviteError::Body)
    );
}

#[test]
fn held_queries_are_bounded() {
    let roots = |n: usize| Request::HeldShares {
        roots: vec![ShareRoot::from_bytes([7; 32]); n],
    };
    assert!(decode::<Request>(&encode_frame(&roots(MAX_HELD_QUERY))[4..]).is_ok());
    refused::<Request>(&encode_frame(&roots(MAX_HELD_QUERY + 1)));
    let held = |n: usize| Response::Held(vec![vec![0, 1]; n]);
    assert!(decode::<Response>(&encode_frame(&held(MAX_HELD_QUERY))[4..]).is_ok());
    refused::<Response>(&encode_frame(&held(MAX_HELD_QUERY + 1)));
}

#[test]
fn share_batches_are_bounded() {
    let item = ShareItem {
        root: ShareRoot::from_bytes([7; 32]),
        index: 1,
        header: vec![],
        data: vec![],
    };
    let lease = Lease {
        owner: NodeId::from_bytes([9; 32]),
        expires_at: 1,
    };
    let puts = |n: usize| Request::PutShares {
        lease,
        shares: vec![item.clone(); n],
    };
    assert!(decode::<Request>(&encode_frame(&puts(MAX_SHARE_BATCH))[4..]).is_ok());
    refused::<Request>(&encode_frame(&puts(MAX_SHARE_BATCH + 1)));
    let gets = |n: usize| Request::GetShares {
        shares: vec![(ShareRoot::from_bytes([7; 32]), 0); n],
    };
    assert!(decode::<Request>(&encode_frame(&gets(MAX_SHARE_BATCH))[4..]).is_ok());
    refused::<Request>(&encode_frame(&gets(MAX_SHARE_BATCH + 1)));
    let stored = |n: usize| Response::StoredMany(vec![PutAnswer::Stored { already: false }; n]);
    assert!(decode::<Response>(&encode_frame(&stored(MAX_SHARE_BATCH))[4..]).is_ok());
    refused::<Response>(&encode_frame(&stored(MAX_SHARE_BATCH + 1)));
    let found = |n: usize| Response::Shares(vec![None; n]);
    assert!(decode::<Response>(&encode_frame(&found(MAX_SHARE_BATCH))[4..]).is_ok());
    refused::<Response>(&encode_frame(&found(MAX_SHARE_BATCH + 1)));
    // The check on an already-built message (a local caller) names the bound.
    assert!(puts(MAX_SHARE_BATCH + 1).check_bounds().is_err());
    assert!(
        Response::Shares(vec![None; MAX_SHARE_BATCH + 1])
            .check_bounds()
            .is_err()
    );
}

#[test]
fn rosters_are_bounded() {
    let entry = RosterEntry {
        cert: sample_cert(),
        addrs: vec![v4(1)],
        announced_at: 1,
    };
    for n in [MAX_ROSTER, MAX_ROSTER + 1] {
        let entries = vec![entry.clone(); n];
        let frames = [
            encode_frame(&Request::Roster {
                entries: entries.clone(),
            }),
            encode_frame(&Response::Roster(entries.clone())),
            encode_frame(&JoinResponse::Admitted {
                cert: sample_cert(),
                grid: GridInfo {
                    id: GridId::from_bytes([1; 32]),
                    encoding: Encoding::DEFAULT,
                },
                roster: entries,
            }),
        ];
        if n == MAX_ROSTER {
            assert!(decode::<Request>(&frames[0][4..]).is_ok());
            assert!(decode::<Response>(&frames[1][4..]).is_ok());
            assert!(decode::<JoinResponse>(&frames[2][4..]).is_ok());
        } else {
            refused::<Request>(&frames[0]);
            refused::<Response>(&frames[1]);
            refused::<JoinResponse>(&frames[2]);
        }
    }
}

#[test]
fn revocation_lists_are_bounded() {
    let one = GridKey::from_bytes(&[1; 32]).revoke(NodeId::from_bytes([2; 32]), 7);
    for n in [MAX_REVOCATIONS, MAX_REVOCATIONS + 1] {
        let list = vec![one.clone(); n];
        let request = encode_frame(&Request::Revocations {
            revocations: list.clone(),
        });
        let response = encode_frame(&Response::Revocations(list));
        if n == MAX_REVOCATIONS {
            assert!(decode::<Request>(&request[4..]).is_ok());
            assert!(decode::<Response>(&response[4..]).is_ok());
        } else {
            refused::<Request>(&request);
            refused::<Response>(&response);
        }
    }
}

#[test]
fn inverted_ranges_are_refused_and_empty_ranges_are_not() {
    let get = |range| Request::GetShare {
        root: ShareRoot::from_bytes([1; 32]),
        index: 0,
        range,
    };
    assert_eq!(
        limit::<Request>(&encode_frame(&get(Some((6, 5))))),
        "inverted byte range"
    );
    for range in [None, Some((5, 5)), Some((0, u64::MAX))] {
        assert!(decode::<Request>(&encode_frame(&get(range))[4..]).is_ok());
    }
}

#[test]
fn invalid_encoding_in_join_response_is_malformed() {
    let mut frame = encode_frame(&JoinResponse::Admitted {
        cert: sample_cert(),
        grid: GridInfo {
            id: GridId::from_bytes([1; 32]),
            encoding: Encoding::DEFAULT,
        },
        roster: vec![],
    });
    // The body ends with k, n, happy (3, 5, 4) and the roster length (0).
    let at = frame.len() - 4;
    assert_eq!(&frame[at..], &[3, 5, 4, 0]);
    frame[at] = 0; // k = 0
    assert!(matches!(
        decode::<JoinResponse>(&frame[4..]),
        Err(WireError::Malformed(_))
    ));
}

#[test]
fn non_minimal_varints_are_accepted() {
    // `Stored { already: true }` is 00 01; the variant index 0 may also be written 80 00.
    assert_eq!(
        decode::<Response>(&[0x80, 0x00, 0x01]).unwrap(),
        Response::Stored { already: true }
    );
    // But a bool or an option tag other than 0 or 1 is refused.
    assert!(decode::<Response>(&[0x00, 0x02]).is_err());
}

#[test]
fn ipv6_flowinfo_and_scope_are_not_carried() {
    let addr = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 4433, 7, 9));
    let msg = JoinRequest {
        secret: [0; 32],
        addrs: vec![addr],
    };
    let back: JoinRequest = decode(&encode_frame(&msg)[4..]).unwrap();
    assert_eq!(
        back.addrs,
        vec![SocketAddr::from((Ipv6Addr::LOCALHOST, 4433))]
    );
}

#[test]
fn a_put_share_of_a_real_blob_round_trips_and_verifies() {
    let (header, shares) = encode_blob(&[9u8; 5000], Encoding::DEFAULT).unwrap();
    let req = Request::PutShare {
        root: header.root(),
        index: 4,
        header: header.encode(),
        lease: Lease {
            owner: NodeId::from_bytes([3; 32]),
            expires_at: 10,
        },
        data: shares[4].clone(),
    };
    let back: Request = decode(&encode_frame(&req)[4..]).unwrap();
    let Request::PutShare {
        root,
        index,
        header,
        data,
        ..
    } = back
    else {
        panic!("not a PutShare");
    };
    let header = cairn_core::verify_header(&root, &header).unwrap();
    header.verify_share(index, &data).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Golden vectors (also in docs/specs/wire.md)

fn hex_frame<T: Serialize>(msg: &T) -> String {
    HEXLOWER.encode(&encode_frame(msg))
}

#[test]
fn golden_wire_constants() {
    assert_eq!(wire::ALPN, b"cairn/1");
    assert_eq!(wire::JOIN_ALPN, b"cairn/join/1");
    assert_eq!(PROTOCOL_VERSION, 1);
    assert_eq!(cairn_core::cert::CERT_VERSION, 1);
    assert_eq!(MAX_FRAME, 20 * 1024 * 1024);
    assert_eq!(MAX_HELD_QUERY, 1024);
    assert_eq!(MAX_ROSTER, 4096);
    assert_eq!(MAX_SHARE_BATCH, 1024);
}

#[test]
fn golden_frames() {
    let cert = sample_cert();
    let watch_hex = format!("230000000801{}78", "07".repeat(32));
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "Response::Stored { already: true }",
            hex_frame(&Response::Stored { already: true }),
            "020000000001",
        ),
        (
            "Response::NotFound",
            hex_frame(&Response::NotFound),
            "0100000002",
        ),
        (
            "Response::Held([[0, 2], []])",
            hex_frame(&Response::Held(vec![vec![0, 2], vec![]])),
            "06000000030202000200",
        ),
        (
            "Response::Refused(Full)",
            hex_frame(&Response::Refused(Refusal::Full)),
            "020000000500",
        ),
        (
            "Request::GetShare",
            hex_frame(&Request::GetShare {
                root: ShareRoot::from_bytes([0xab; 32]),
                index: 2,
                range: Some((0, 4096)),
            }),
            GOLDEN_GET_SHARE,
        ),
        (
            "Request::PutShare",
            hex_frame(&Request::PutShare {
                root: ShareRoot::from_bytes([7; 32]),
                index: 0,
                header: vec![1, 2, 3],
                lease: Lease {
                    owner: NodeId::from_bytes([9; 32]),
                    expires_at: 99,
                },
                data: vec![5; 4],
            }),
            GOLDEN_PUT_SHARE,
        ),
        (
            "Request::PutShares",
            hex_frame(&Request::PutShares {
                lease: Lease {
                    owner: NodeId::from_bytes([9; 32]),
                    expires_at: 99,
                },
                shares: vec![ShareItem {
                    root: ShareRoot::from_bytes([7; 32]),
                    index: 1,
                    header: vec![1, 2, 3],
                    data: vec![5; 4],
                }],
            }),
            GOLDEN_PUT_SHARES,
        ),
        (
            "Request::GetShares",
            hex_frame(&Request::GetShares {
                shares: vec![(ShareRoot::from_bytes([0xab; 32]), 2)],
            }),
            GOLDEN_GET_SHARES,
        ),
        (
            "Request::Watch",
            hex_frame(&Request::Watch {
                slots: vec![SlotId::from_bytes([7; 32])],
                ttl_secs: 120,
            }),
            // length 35; variant 8; one slot of 32 bytes; ttl 120
            &watch_hex,
        ),
        (
            "Request::Changed",
            hex_frame(&Request::Changed {
                version: vec![1, 2, 3],
            }),
            // length 5; variant 9; three bytes
            "050000000903010203",
        ),
        (
            "Request::Revocations([])",
            hex_frame(&Request::Revocations {
                revocations: vec![],
            }),
            // length 2; variant 10; none
            "020000000a00",
        ),
        (
            "Response::Revocations([])",
            hex_frame(&Response::Revocations(vec![])),
            // length 2; variant 10; none
            "020000000a00",
        ),
        (
            "Request::Space",
            hex_frame(&Request::Space),
            // length 1; variant 11
            "010000000b",
        ),
        (
            "Response::Space { offered_bytes: 1000000, used_bytes: 300 }",
            hex_frame(&Response::Space {
                offered_bytes: 1_000_000,
                used_bytes: 300,
            }),
            // length 6; variant 11; 1000000 = c0 84 3d; 300 = ac 02
            "060000000bc0843dac02",
        ),
        (
            "Response::Refused(BadLease)",
            hex_frame(&Response::Refused(Refusal::BadLease)),
            "020000000506",
        ),
        (
            "Response::Watching",
            hex_frame(&Response::Watching { ttl_secs: 120 }),
            // length 2; variant 9; ttl 120
            "020000000978",
        ),
        (
            "Response::StoredMany([Stored { already: false }, Refused(InvalidShare)])",
            hex_frame(&Response::StoredMany(vec![
                PutAnswer::Stored { already: false },
                PutAnswer::Refused(Refusal::InvalidShare),
            ])),
            // variant 7, two answers: Stored(false); Refused(InvalidShare)
            "06000000070200000101",
        ),
        (
            "Response::Shares([Some, None])",
            hex_frame(&Response::Shares(vec![
                Some(FoundShare {
                    header: vec![1, 2],
                    data: vec![3],
                }),
                None,
            ])),
            // variant 8, two: Some { header [1, 2], data [3] }; None
            "09000000080201020102010300",
        ),
        (
            "Hello",
            hex_frame(&Hello {
                version: PROTOCOL_VERSION,
                cert: cert.clone(),
                addrs: vec!["127.0.0.1:4433".parse().unwrap()],
            }),
            GOLDEN_HELLO,
        ),
        (
            "JoinRequest",
            hex_frame(&JoinRequest {
                secret: [0x5e; 32],
                addrs: vec!["[::1]:4433".parse().unwrap()],
            }),
            GOLDEN_JOIN_REQUEST,
        ),
        (
            "JoinResponse::Refused(Expired)",
            hex_frame(&JoinResponse::Refused(JoinRefusal::Expired)),
            "020000000101",
        ),
        (
            "JoinResponse::Admitted",
            hex_frame(&JoinResponse::Admitted {
                cert,
                grid: GridInfo {
                    id: GridKey::from_bytes(&[0x11; 32]).grid_id(),
                    encoding: Encoding::DEFAULT,
                },
                roster: vec![],
            }),
            GOLDEN_ADMITTED,
        ),
    ];
    let mut wrong = Vec::new();
    for (name, got, want) in &cases {
        if got != want {
            wrong.push(format!("{name}:\n  got  {got}\n  want {want}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "wire format changed:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn golden_invite_code() {
    let code = InviteCode {
        grid: GridId::from_bytes([1; 32]),
        inviter: NodeId::from_bytes([2; 32]),
        addrs: vec!["192.0.2.1:4433".parse().unwrap()],
        secret: [3; 32],
    };
    assert_eq!(code.to_string(), GOLDEN_INVITE);
    assert_eq!(GOLDEN_INVITE.parse::<InviteCode>().unwrap(), code);
}

/// `GetShare { root: [ab; 32], index: 2, range: Some((0, 4096)) }`.
const GOLDEN_GET_SHARE: &str = concat!(
    "26000000", // length 38
    "01",       // variant 1: GetShare
    "abababababababababababababababababababababababababababababababab",
    "02",   // index
    "01",   // Some
    "00",   // start 0
    "8020", // end 4096
);
/// `PutShare { root: [07; 32], index: 0, header: [1, 2, 3], lease: ([09; 32], 99), data: [5; 4] }`.
const GOLDEN_PUT_SHARE: &str = concat!(
    "4c000000", // length 76
    "00",       // variant 0: PutShare
    "0707070707070707070707070707070707070707070707070707070707070707",
    "00",       // index
    "03010203", // header: length 3, bytes
    "0909090909090909090909090909090909090909090909090909090909090909",
    "63",         // lease expires_at 99
    "0405050505", // data: length 4, bytes
);
/// `Hello { version: 1, cert, addrs: [127.0.0.1:4433] }` with the cert of `sample_cert()`.
const GOLDEN_HELLO: &str = concat!(
    "96000000", // length 150
    "01",       // version 1
    // cert: version, grid id, node id, roles, issued_at, expires_at (varints), signature
    "01",
    "d04ab232742bb4ab3a1368bd4615e4e6d0224ab71a016baf8520a332c9778737",
    "2222222222222222222222222222222222222222222222222222222222222222",
    "03",
    "80e2cfaa06",
    "80a4a7da06",
    "40", // signature length 64
    "6ccf1a5f071eaa25f45075f99b7fbf7bae60b28b38f370451b1775e8be279283",
    "7c89c9105c2d627314a3acbeb7efcbbe375fee3f5efc6a3883059fe064468d0b",
    "01",       // one address
    "00",       // V4
    "7f000001", // 127.0.0.1
    "d122",     // port 4433
);
/// `JoinRequest { secret: [5e; 32], addrs: [[::1]:4433] }`.
const GOLDEN_JOIN_REQUEST: &str = concat!(
    "34000000", // length 52
    "5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e",
    "01", // one address
    "01", // V6
    "00000000000000000000000000000001",
    "d122",
);
/// `JoinResponse::Admitted { cert, grid: (grid id, 3-of-5 happy 4), roster: [] }`.
const GOLDEN_ADMITTED: &str = concat!(
    "b2000000", // length 178
    "00",       // variant 0: Admitted
    // cert: version, grid id, node id, roles, issued_at, expires_at (varints), signature
    "01",
    "d04ab232742bb4ab3a1368bd4615e4e6d0224ab71a016baf8520a332c9778737",
    "2222222222222222222222222222222222222222222222222222222222222222",
    "03",
    "80e2cfaa06",
    "80a4a7da06",
    "40", // signature length 64
    "6ccf1a5f071eaa25f45075f99b7fbf7bae60b28b38f370451b1775e8be279283",
    "7c89c9105c2d627314a3acbeb7efcbbe375fee3f5efc6a3883059fe064468d0b",
    "d04ab232742bb4ab3a1368bd4615e4e6d0224ab71a016baf8520a332c9778737", // grid id
    "030504",                                                           // k, n, happy
    "00",                                                               // empty roster
);
/// The invite code of `golden_invite_code`.
const GOLDEN_INVITE: &str = concat!(
    "cairn-invite:1:",
    "aeaqcaibaeaqcaibaeaqcaibaeaqcaibaeaqcaibaeaqcaibaeaqeaqcaibaeaqcaibaeaqcaibaeaqcaibaeaqcai",
    "baeaqcaibaeaqbadaaaaqb2eragaydambqgaydambqgaydambqgaydambqgaydambqgaydambqgay",
);

#[test]
fn invite_code_text_is_strict() {
    // The last base32 character carries 2 bits of data and 3 zero bits: `y` is 11000.
    assert!(GOLDEN_INVITE.ends_with('y'));
    let mut bits = GOLDEN_INVITE.to_string();
    bits.pop();
    bits.push('z'); // 11001: a non-zero trailing bit
    assert_eq!(bits.parse::<InviteCode>(), Err(InviteError::Base32));
    let padded = format!("{GOLDEN_INVITE}=");
    assert_eq!(padded.parse::<InviteCode>(), Err(InviteError::Base32));
    // The prefix is case-sensitive; the body is not.
    let upper_prefix = GOLDEN_INVITE.replace("cairn-invite", "CAIRN-INVITE");
    assert_eq!(upper_prefix.parse::<InviteCode>(), Err(InviteError::Prefix));
    let upper_body = GOLDEN_INVITE
        .to_uppercase()
        .replace("CAIRN-INVITE", "cairn-invite");
    assert!(upper_body.parse::<InviteCode>().is_ok());
    // Trailing bytes after the postcard body are refused.
    let code: InviteCode = GOLDEN_INVITE.parse().unwrap();
    let mut body = postcard::to_stdvec(&code).unwrap();
    body.push(0);
    let text = format!(
        "cairn-invite:1:{}",
        data_encoding::BASE32_NOPAD
            .encode(&body)
            .to_ascii_lowercase()
    );
    assert_eq!(text.parse::<InviteCode>(), Err(InviteError::Body));
}
/// `PutShares { lease: ([09; 32], 99), shares: [{ root: [07; 32], index: 1, header: [1, 2, 3],
/// data: [5; 4] }] }`.
const GOLDEN_PUT_SHARES: &str = concat!(
    "4d000000", // length 77
    "06",       // variant 6: PutShares
    "0909090909090909090909090909090909090909090909090909090909090909",
    "63", // lease expires_at 99
    "01", // one share
    "0707070707070707070707070707070707070707070707070707070707070707",
    "01",         // index
    "03010203",   // header: length 3, bytes
    "0405050505", // data: length 4, bytes
);
/// `GetShares { shares: [([ab; 32], 2)] }`.
const GOLDEN_GET_SHARES: &str = concat!(
    "23000000", // length 35
    "07",       // variant 7: GetShares
    "01",       // one share
    "abababababababababababababababababababababababababababababababab",
    "02", // index
);

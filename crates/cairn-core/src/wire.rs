//! Wire messages of the Cairn protocols and their postcard codec.
//!
//! Two ALPN protocols run over iroh (QUIC, peers authenticated by their ed25519 node id):
//!
//! - [`ALPN`] (`cairn/1`), between members. The dialer opens a bi-directional stream and sends a
//!   [`Hello`] carrying its member certificate; the acceptor checks it and answers with its own
//!   [`Hello`]; the dialer checks that. Until both checks pass nothing else is read or served.
//!   After that, every request travels on a fresh bi-directional stream: one [`Request`] frame
//!   out, one [`Response`] frame back.
//! - [`JOIN_ALPN`] (`cairn/join/1`), for a device that holds an invite code but no certificate
//!   yet: one [`JoinRequest`] out, one [`JoinResponse`] back.
//!
//! A frame is a little-endian `u32` length followed by that many bytes of postcard. Every frame
//! is bounded by [`MAX_FRAME`]; a larger announced length is refused before any allocation.
//! Goals: few round trips, bounded memory, nothing served before authentication. Non-goals:
//! compatibility with other protocols.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::Encoding;
use crate::cert::{MemberCert, Revocation};
use crate::id::{GridId, NodeId, ShareRoot, SlotId, VersionId};

/// The member protocol.
pub const ALPN: &[u8] = b"cairn/1";
/// The join protocol, for holders of an invite code.
pub const JOIN_ALPN: &[u8] = b"cairn/join/1";
/// Version of the member protocol spoken by this build.
pub const PROTOCOL_VERSION: u16 = 1;
/// The largest frame accepted: one share plus its header. Data chunks make shares of at most
/// 4 MiB; a manifest whose shares would not fit is refused by the writer.
pub const MAX_FRAME: usize = 20 * 1024 * 1024;
/// The largest number of roots one [`Request::HeldShares`] may ask about.
pub const MAX_HELD_QUERY: usize = 1024;
/// The most shares one [`Request::PutShares`] or [`Request::GetShares`] may carry (and so the
/// most answers one [`Response::StoredMany`] or [`Response::Shares`] may carry).
pub const MAX_SHARE_BATCH: usize = 1024;
/// The largest roster a message may carry.
pub const MAX_ROSTER: usize = 4096;
/// The most revocations in one message.
pub const MAX_REVOCATIONS: usize = 4096;
/// The most slots one [`Request::Watch`] may name.
pub const MAX_WATCH: usize = 1024;
/// The most version ids a [`Request::GetVersions`] may list as already held, and the most
/// versions one [`Response::Versions`] may carry.
pub const MAX_VERSIONS: usize = 4096;
/// The most addresses one member may announce.
pub const MAX_ADDRS: usize = 64;
/// The largest handshake frame ([`Hello`], [`JoinRequest`]): these arrive before the peer is
/// authenticated, so they are held to a few KiB.
pub const MAX_HANDSHAKE_FRAME: usize = 16 * 1024;

/// Why bytes from a peer could not be decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The frame announced more bytes than [`MAX_FRAME`].
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes are not a valid message.
    #[error("malformed message: {0}")]
    Malformed(#[from] postcard::Error),
    /// The message is well-formed but breaks a protocol bound.
    #[error("message breaks a protocol limit: {0}")]
    Limit(&'static str),
}

/// The longest a lease may run from the moment it is stored: a year and a month.
pub const MAX_LEASE_SECS: u64 = 396 * 86_400;

/// A lease on a stored share: who wants it kept, and until when. A holder records only a lease
/// whose owner is the node that sent it and that ends within [`MAX_LEASE_SECS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The node whose owner renews this lease.
    pub owner: NodeId,
    /// Unix seconds after which the lease no longer protects the share.
    pub expires_at: u64,
}

impl Lease {
    /// Whether a holder may record this lease from `sender` at `now` (unix seconds).
    pub fn acceptable_from(&self, sender: &NodeId, now: u64) -> bool {
        self.owner == *sender && self.expires_at <= now.saturating_add(MAX_LEASE_SECS)
    }
}

/// The first message each way on a member connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The sender's protocol version.
    pub version: u16,
    /// The sender's member certificate.
    pub cert: MemberCert,
    /// Addresses the sender can be reached at, as it sees them.
    #[serde(deserialize_with = "bounded::addrs")]
    pub addrs: Vec<SocketAddr>,
}

/// What a node knows of one member: its certificate and where it was last heard from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosterEntry {
    /// The member's certificate (checked against the grid key on receipt).
    pub cert: MemberCert,
    /// Addresses it announced.
    #[serde(deserialize_with = "bounded::addrs")]
    pub addrs: Vec<SocketAddr>,
    /// Unix seconds when these addresses were announced by the member itself.
    pub announced_at: u64,
}

/// The grid facts a new member needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GridInfo {
    /// The grid id (the grid key's public half).
    pub id: GridId,
    /// The grid's erasure coding parameters.
    pub encoding: Encoding,
}

/// A request on a member connection.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Store share `index` of the chunk whose header hashes to `root`.
    PutShare {
        /// The chunk's share root.
        root: ShareRoot,
        /// Which of the n shares.
        index: u8,
        /// The encoded chunk header (hashes to `root`).
        #[serde(with = "serde_bytes")]
        header: Vec<u8>,
        /// The lease to record.
        lease: Lease,
        /// The share bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Fetch share `index` of `root`, optionally only a byte range of it.
    GetShare {
        /// The chunk's share root.
        root: ShareRoot,
        /// Which share.
        index: u8,
        /// `(start, end)` byte range, end exclusive.
        range: Option<(u64, u64)>,
    },
    /// Which shares of these roots do you hold?
    HeldShares {
        /// The roots asked about.
        #[serde(deserialize_with = "bounded::roots")]
        roots: Vec<ShareRoot>,
    },
    /// Exchange rosters: here is what I know; answer with what you know.
    Roster {
        /// The sender's roster.
        #[serde(deserialize_with = "bounded::roster")]
        entries: Vec<RosterEntry>,
    },
    /// Keep this signed version of a mutable slot (a directory).
    PutVersion {
        /// The encoded version (its signature names the slot).
        #[serde(with = "serde_bytes")]
        version: Vec<u8>,
    },
    /// Send the versions of `slot` a reader lacks: everything reachable from the current heads,
    /// stopping at versions in `have` and below snapshots.
    GetVersions {
        /// The slot.
        slot: SlotId,
        /// Versions the reader already has (its heads).
        #[serde(deserialize_with = "bounded::version_ids")]
        have: Vec<VersionId>,
    },
    /// Store many shares under one lease, as one batch (each one checked on its own, as
    /// [`Request::PutShare`] would be). Answered by [`Response::StoredMany`], in order.
    PutShares {
        /// The lease to record on every share.
        lease: Lease,
        /// The shares.
        #[serde(deserialize_with = "bounded::share_items")]
        shares: Vec<ShareItem>,
    },
    /// Fetch many whole shares. Answered by [`Response::Shares`], in order.
    GetShares {
        /// `(root, index)` of each share.
        #[serde(deserialize_with = "bounded::share_ids")]
        shares: Vec<(ShareRoot, u8)>,
    },
    /// Push new versions of these slots to me for `ttl_secs` (renewed by asking again).
    /// Answered by [`Response::Watching`].
    Watch {
        /// The slots.
        #[serde(deserialize_with = "bounded::slot_ids")]
        slots: Vec<SlotId>,
        /// Seconds the subscription lasts (the holder caps it).
        ttl_secs: u32,
    },
    /// A holder's push: a new version of a slot the receiver watches. Answered by
    /// [`Response::Stored`].
    Changed {
        /// The encoded version.
        #[serde(with = "serde_bytes")]
        version: Vec<u8>,
    },
    /// "Here are the revocations I know; answer with yours." Answered by
    /// [`Response::Revocations`].
    Revocations {
        /// Revocations signed by the grid key (at most [`MAX_REVOCATIONS`]).
        #[serde(deserialize_with = "bounded::revocations")]
        revocations: Vec<Revocation>,
    },
    /// "How much disk do you offer, and how much of it holds shares?" Answered by
    /// [`Response::Space`], or [`Response::Refused`] with [`Refusal::NotStorage`] by a node
    /// that stores nothing.
    Space,
}

/// One share of a [`Request::PutShares`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareItem {
    /// The chunk's share root.
    pub root: ShareRoot,
    /// Which of the n shares.
    pub index: u8,
    /// The encoded chunk header (hashes to `root`).
    #[serde(with = "serde_bytes")]
    pub header: Vec<u8>,
    /// The share bytes.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

impl fmt::Debug for ShareItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ShareItem({} #{}, {} B)",
            self.root.fmt_short(),
            self.index,
            self.data.len()
        )
    }
}

/// The answer for one share of a [`Request::PutShares`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PutAnswer {
    /// Stored (`already`: it was held before; only the lease changed).
    Stored {
        /// Whether the share was already held.
        already: bool,
    },
    /// This share was refused.
    Refused(Refusal),
}

/// One share of a [`Response::Shares`]: the chunk header and the whole share.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FoundShare {
    /// The encoded chunk header.
    #[serde(with = "serde_bytes")]
    pub header: Vec<u8>,
    /// The share bytes.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

impl fmt::Debug for FoundShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FoundShare({} B)", self.data.len())
    }
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::PutShare {
                root, index, data, ..
            } => write!(
                f,
                "PutShare({} #{index}, {} B)",
                root.fmt_short(),
                data.len()
            ),
            Request::GetShare { root, index, range } => {
                write!(f, "GetShare({} #{index}, {range:?})", root.fmt_short())
            }
            Request::HeldShares { roots } => write!(f, "HeldShares({} roots)", roots.len()),
            Request::Roster { entries } => write!(f, "Roster({} entries)", entries.len()),
            Request::PutVersion { version } => write!(f, "PutVersion({} B)", version.len()),
            Request::GetVersions { slot, have } => {
                write!(f, "GetVersions({}, have {})", slot.fmt_short(), have.len())
            }
            Request::PutShares { shares, .. } => write!(
                f,
                "PutShares({} shares, {} B)",
                shares.len(),
                shares.iter().map(|s| s.data.len()).sum::<usize>()
            ),
            Request::GetShares { shares } => write!(f, "GetShares({} shares)", shares.len()),
            Request::Watch { slots, ttl_secs } => {
                write!(f, "Watch({} slots, {ttl_secs} s)", slots.len())
            }
            Request::Changed { version } => write!(f, "Changed({} B)", version.len()),
            Request::Revocations { revocations } => {
                write!(f, "Revocations({})", revocations.len())
            }
            Request::Space => f.write_str("Space"),
        }
    }
}

/// Why a request failed on the serving side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Refusal {
    /// The node has no room for the share.
    Full,
    /// The header does not hash to the root, or the data does not match the header.
    InvalidShare,
    /// The request breaks a protocol limit.
    BadRequest,
    /// The node failed internally (disk error); another holder may do.
    Internal,
    /// The node does not store shares (no storage role).
    NotStorage,
    /// A slot version whose signature does not verify.
    InvalidVersion,
    /// A lease that names another node than the sender, or lasts longer than
    /// [`MAX_LEASE_SECS`].
    BadLease,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::Full => "storage full",
            Refusal::InvalidShare => "share does not match its root",
            Refusal::BadRequest => "bad request",
            Refusal::Internal => "internal error on the serving node",
            Refusal::NotStorage => "node does not offer storage",
            Refusal::InvalidVersion => "version signature does not verify",
            Refusal::BadLease => "lease names another node or lasts too long",
        })
    }
}

/// The answer to a [`Request`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The share is stored (`already`: it was held before; only the lease changed).
    Stored {
        /// Whether the share was already held.
        already: bool,
    },
    /// The share asked for.
    Share {
        /// The encoded chunk header.
        #[serde(with = "serde_bytes")]
        header: Vec<u8>,
        /// The share bytes (the requested range).
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// The node does not hold that share.
    NotFound,
    /// For each root asked about, the share indices held.
    Held(#[serde(deserialize_with = "bounded::held")] Vec<Vec<u8>>),
    /// The answering node's roster.
    Roster(#[serde(deserialize_with = "bounded::roster")] Vec<RosterEntry>),
    /// The request was refused.
    Refused(Refusal),
    /// Versions of a slot, and the holder's current heads.
    Versions {
        /// Encoded versions, oldest first.
        #[serde(deserialize_with = "bounded::versions")]
        versions: Vec<serde_bytes::ByteBuf>,
        /// The holder's heads.
        #[serde(deserialize_with = "bounded::version_ids")]
        heads: Vec<VersionId>,
        /// More versions are missing than one answer carries: ask again, listing these as held.
        more: bool,
    },
    /// The answers to a [`Request::PutShares`], one per share, in order.
    StoredMany(#[serde(deserialize_with = "bounded::put_answers")] Vec<PutAnswer>),
    /// The answers to a [`Request::GetShares`], one per share asked for, in order (`None`: not
    /// held, or not readable).
    Shares(#[serde(deserialize_with = "bounded::found_shares")] Vec<Option<FoundShare>>),
    /// The subscription of a [`Request::Watch`] holds for this many seconds.
    Watching {
        /// Seconds granted.
        ttl_secs: u32,
    },
    /// Every revocation the answering node knows.
    Revocations(#[serde(deserialize_with = "bounded::revocations")] Vec<Revocation>),
    /// The answer to a [`Request::Space`]: the answering node's own store.
    Space {
        /// Bytes the node offers to the grid (its store's capacity).
        offered_bytes: u64,
        /// Bytes of shares it stores.
        used_bytes: u64,
    },
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Response::Stored { already } => write!(f, "Stored(already: {already})"),
            Response::Share { data, .. } => write!(f, "Share({} B)", data.len()),
            Response::NotFound => f.write_str("NotFound"),
            Response::Held(h) => write!(f, "Held({} roots)", h.len()),
            Response::Roster(r) => write!(f, "Roster({} entries)", r.len()),
            Response::Versions {
                versions,
                heads,
                more,
            } => write!(
                f,
                "Versions({}, {} heads, more: {more})",
                versions.len(),
                heads.len()
            ),
            Response::Refused(r) => write!(f, "Refused({r:?})"),
            Response::StoredMany(a) => write!(f, "StoredMany({} answers)", a.len()),
            Response::Shares(s) => write!(
                f,
                "Shares({} asked, {} found)",
                s.len(),
                s.iter().flatten().count()
            ),
            Response::Watching { ttl_secs } => write!(f, "Watching({ttl_secs} s)"),
            Response::Revocations(r) => write!(f, "Revocations({})", r.len()),
            Response::Space {
                offered_bytes,
                used_bytes,
            } => write!(f, "Space({used_bytes} of {offered_bytes} B)"),
        }
    }
}

/// First message of the join protocol.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The secret from the invite code.
    pub secret: [u8; 32],
    /// Addresses the joining node listens on.
    #[serde(deserialize_with = "bounded::addrs")]
    pub addrs: Vec<SocketAddr>,
}

impl fmt::Debug for JoinRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinRequest")
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

/// Why a join was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum JoinRefusal {
    /// No such invite (wrong code, or already used).
    UnknownInvite,
    /// The invite expired.
    Expired,
    /// The node asked is not an admin of the grid.
    NotAdmin,
}

impl fmt::Display for JoinRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JoinRefusal::UnknownInvite => "invite code is unknown or was already used",
            JoinRefusal::Expired => "invite code has expired",
            JoinRefusal::NotAdmin => "the inviting node cannot admit members",
        })
    }
}

/// The answer to a [`JoinRequest`].
#[allow(clippy::large_enum_variant)] // sent once per join; boxing buys nothing
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinResponse {
    /// Welcome: the new member's certificate, the grid, and the roster.
    Admitted {
        /// The certificate for the joining node's id.
        cert: MemberCert,
        /// The grid's facts.
        grid: GridInfo,
        /// The members known to the admitting node.
        #[serde(deserialize_with = "bounded::roster")]
        roster: Vec<RosterEntry>,
    },
    /// Refused.
    Refused(JoinRefusal),
}

/// Deserializers that refuse a list longer than its bound before building it, so that a peer
/// cannot make a node allocate more than the bound allows (a one-byte list item may become a
/// 24-byte `Vec`).
mod bounded {
    use std::fmt;
    use std::marker::PhantomData;
    use std::net::SocketAddr;

    use serde::de::{Deserialize, Deserializer, Error, SeqAccess, Visitor};

    use super::{
        FoundShare, MAX_ADDRS, MAX_HELD_QUERY, MAX_REVOCATIONS, MAX_ROSTER, MAX_SHARE_BATCH,
        MAX_VERSIONS, MAX_WATCH, PutAnswer, Revocation, RosterEntry, ShareItem,
    };
    use crate::id::{ShareRoot, SlotId, VersionId};

    struct BoundedVisitor<T, const N: usize>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>, const N: usize> Visitor<'de> for BoundedVisitor<T, N> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a list of at most {N} items")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            if let Some(len) = seq.size_hint()
                && len > N
            {
                return Err(A::Error::invalid_length(len, &self));
            }
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(N));
            while let Some(item) = seq.next_element()? {
                if out.len() == N {
                    return Err(A::Error::invalid_length(N + 1, &self));
                }
                out.push(item);
            }
            Ok(out)
        }
    }

    fn vec<'de, D: Deserializer<'de>, T: Deserialize<'de>, const N: usize>(
        d: D,
    ) -> Result<Vec<T>, D::Error> {
        d.deserialize_seq(BoundedVisitor::<T, N>(PhantomData))
    }

    pub(super) fn addrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
        vec::<D, SocketAddr, MAX_ADDRS>(d)
    }

    pub(super) fn roots<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ShareRoot>, D::Error> {
        vec::<D, ShareRoot, MAX_HELD_QUERY>(d)
    }

    pub(super) fn held<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        vec::<D, Vec<u8>, MAX_HELD_QUERY>(d)
    }

    pub(super) fn slot_ids<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SlotId>, D::Error> {
        vec::<D, SlotId, MAX_WATCH>(d)
    }

    pub(super) fn version_ids<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<VersionId>, D::Error> {
        vec::<D, VersionId, MAX_VERSIONS>(d)
    }

    pub(super) fn versions<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<serde_bytes::ByteBuf>, D::Error> {
        vec::<D, serde_bytes::ByteBuf, MAX_VERSIONS>(d)
    }

    pub(super) fn roster<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<RosterEntry>, D::Error> {
        vec::<D, RosterEntry, MAX_ROSTER>(d)
    }

    pub(super) fn revocations<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<Revocation>, D::Error> {
        vec::<D, Revocation, MAX_REVOCATIONS>(d)
    }

    pub(super) fn share_items<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ShareItem>, D::Error> {
        vec::<D, ShareItem, MAX_SHARE_BATCH>(d)
    }

    pub(super) fn share_ids<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<(ShareRoot, u8)>, D::Error> {
        vec::<D, (ShareRoot, u8), MAX_SHARE_BATCH>(d)
    }

    pub(super) fn put_answers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PutAnswer>, D::Error> {
        vec::<D, PutAnswer, MAX_SHARE_BATCH>(d)
    }

    pub(super) fn found_shares<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<Option<FoundShare>>, D::Error> {
        vec::<D, Option<FoundShare>, MAX_SHARE_BATCH>(d)
    }
}

/// Encodes a message as a frame: `u32` LE length, then postcard.
pub fn encode_frame<T: Serialize>(msg: &T) -> Vec<u8> {
    // Postcard writes straight after a 4-byte placeholder for the length, into a buffer sized
    // exactly (no regrowing copies of share bytes). Neither pass can fail for our types (no
    // maps with non-string keys, no unsupported serde features).
    let size = postcard::experimental::serialized_size(msg).unwrap_or(0);
    let mut out = Vec::with_capacity(4 + size);
    out.extend_from_slice(&[0u8; 4]);
    let mut out = postcard::to_extend(msg, out).unwrap_or_else(|_| vec![0u8; 4]);
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_le_bytes());
    out
}

/// Reads a frame's announced length from its 4-byte prefix, refusing lengths over [`MAX_FRAME`].
pub fn frame_len(prefix: [u8; 4]) -> Result<usize, WireError> {
    let len = u32::from_le_bytes(prefix) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge {
            len,
            max: MAX_FRAME,
        });
    }
    Ok(len)
}

/// Decodes a frame body (without its length prefix). Trailing bytes are an error.
pub fn decode<T: DeserializeOwned + Bounded>(body: &[u8]) -> Result<T, WireError> {
    if body.len() > MAX_FRAME {
        return Err(WireError::TooLarge {
            len: body.len(),
            max: MAX_FRAME,
        });
    }
    let (msg, rest): (T, &[u8]) = postcard::take_from_bytes(body)?;
    if !rest.is_empty() {
        return Err(WireError::Limit("trailing bytes after message"));
    }
    msg.check_bounds()?;
    Ok(msg)
}

/// Protocol bounds a decoded message must respect beyond its shape.
pub trait Bounded {
    /// Returns an error naming the broken bound.
    fn check_bounds(&self) -> Result<(), WireError>;
}

impl Bounded for Hello {
    fn check_bounds(&self) -> Result<(), WireError> {
        bound(self.addrs.len() <= MAX_ADDRS, "too many addresses")
    }
}

impl Bounded for Request {
    fn check_bounds(&self) -> Result<(), WireError> {
        match self {
            Request::HeldShares { roots } => bound(roots.len() <= MAX_HELD_QUERY, "too many roots"),
            Request::Roster { entries } => check_roster(entries),
            Request::GetShare {
                range: Some((start, end)),
                ..
            } => bound(start <= end, "inverted byte range"),
            Request::GetVersions { have, .. } => {
                bound(have.len() <= MAX_VERSIONS, "too many version ids")
            }
            Request::PutShares { shares, .. } => {
                bound(shares.len() <= MAX_SHARE_BATCH, "too many shares")
            }
            Request::GetShares { shares } => {
                bound(shares.len() <= MAX_SHARE_BATCH, "too many shares")
            }
            Request::Watch { slots, .. } => bound(slots.len() <= MAX_WATCH, "too many slots"),
            Request::Revocations { revocations } => {
                bound(revocations.len() <= MAX_REVOCATIONS, "too many revocations")
            }
            _ => Ok(()),
        }
    }
}

impl Bounded for Response {
    fn check_bounds(&self) -> Result<(), WireError> {
        match self {
            Response::Held(h) => bound(h.len() <= MAX_HELD_QUERY, "too many roots"),
            Response::Roster(entries) => check_roster(entries),
            Response::Versions {
                versions, heads, ..
            } => bound(
                versions.len() <= MAX_VERSIONS && heads.len() <= MAX_VERSIONS,
                "too many versions",
            ),
            Response::StoredMany(a) => bound(a.len() <= MAX_SHARE_BATCH, "too many answers"),
            Response::Shares(s) => bound(s.len() <= MAX_SHARE_BATCH, "too many shares"),
            Response::Revocations(r) => bound(r.len() <= MAX_REVOCATIONS, "too many revocations"),
            _ => Ok(()),
        }
    }
}

impl Bounded for JoinRequest {
    fn check_bounds(&self) -> Result<(), WireError> {
        bound(self.addrs.len() <= MAX_ADDRS, "too many addresses")
    }
}

impl Bounded for JoinResponse {
    fn check_bounds(&self) -> Result<(), WireError> {
        match self {
            JoinResponse::Admitted { roster, .. } => check_roster(roster),
            JoinResponse::Refused(_) => Ok(()),
        }
    }
}

fn check_roster(entries: &[RosterEntry]) -> Result<(), WireError> {
    bound(entries.len() <= MAX_ROSTER, "roster too large")?;
    bound(
        entries.iter().all(|e| e.addrs.len() <= MAX_ADDRS),
        "too many addresses in a roster entry",
    )
}

fn bound(ok: bool, what: &'static str) -> Result<(), WireError> {
    if ok {
        Ok(())
    } else {
        Err(WireError::Limit(what))
    }
}

/// A one-time invitation to join a grid: the grid, the admitting node and its addresses, and a
/// secret that the joining device proves it holds. Text form: `cairn-invite:1:<base32>`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteCode {
    /// The grid being joined.
    pub grid: GridId,
    /// The admin node that issued the invite.
    pub inviter: NodeId,
    /// Where the inviter listens.
    #[serde(deserialize_with = "bounded::addrs")]
    pub addrs: Vec<SocketAddr>,
    /// The one-time secret.
    pub secret: [u8; 32],
}

const INVITE_PREFIX: &str = "cairn-invite:1:";

impl fmt::Debug for InviteCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InviteCode")
            .field("grid", &self.grid)
            .field("inviter", &self.inviter)
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for InviteCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = postcard::to_stdvec(self).unwrap_or_default();
        write!(
            f,
            "{INVITE_PREFIX}{}",
            data_encoding::BASE32_NOPAD
                .encode(&bytes)
                .to_ascii_lowercase()
        )
    }
}

/// Why an invite code could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InviteError {
    /// It does not start with `cairn-invite:1:`.
    #[error("not a cairn invite code (expected it to start with \"{INVITE_PREFIX}\")")]
    Prefix,
    /// The body is not valid base32.
    #[error("invite code is damaged: not valid base32")]
    Base32,
    /// The body does not decode.
    #[error("invite code is damaged or truncated")]
    Body,
}

impl FromStr for InviteCode {
    type Err = InviteError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let body = s.strip_prefix(INVITE_PREFIX).ok_or(InviteError::Prefix)?;
        let bytes = data_encoding::BASE32_NOPAD
            .decode(body.to_ascii_uppercase().as_bytes())
            .map_err(|_| InviteError::Base32)?;
        let (code, rest): (InviteCode, &[u8]) =
            postcard::take_from_bytes(&bytes).map_err(|_| InviteError::Body)?;
        if !rest.is_empty() || code.addrs.len() > MAX_ADDRS {
            return Err(InviteError::Body);
        }
        Ok(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::{GridKey, Roles};

    fn sample_cert() -> MemberCert {
        GridKey::from_bytes(&[1; 32]).issue(NodeId::from_bytes([2; 32]), Roles::MEMBER, 1, 2)
    }

    #[test]
    fn request_round_trips_through_a_frame() {
        let req = Request::PutShare {
            root: ShareRoot::from_bytes([7; 32]),
            index: 3,
            header: vec![1, 2, 3],
            lease: Lease {
                owner: NodeId::from_bytes([9; 32]),
                expires_at: 99,
            },
            data: vec![5; 1000],
        };
        let frame = encode_frame(&req);
        let len = frame_len(frame[..4].try_into().unwrap()).unwrap();
        assert_eq!(len, frame.len() - 4);
        let back: Request = decode(&frame[4..]).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn oversized_frame_is_refused_before_reading() {
        let prefix = ((MAX_FRAME + 1) as u32).to_le_bytes();
        assert!(matches!(frame_len(prefix), Err(WireError::TooLarge { .. })));
    }

    #[test]
    fn garbage_and_trailing_bytes_are_errors() {
        assert!(decode::<Request>(&[0xff, 0xff, 0xff]).is_err());
        let mut frame = encode_frame(&Response::NotFound);
        frame.push(0);
        assert!(decode::<Response>(&frame[4..]).is_err());
    }

    #[test]
    fn inverted_range_is_refused() {
        let req = Request::GetShare {
            root: ShareRoot::from_bytes([7; 32]),
            index: 0,
            range: Some((10, 5)),
        };
        let frame = encode_frame(&req);
        assert!(matches!(
            decode::<Request>(&frame[4..]),
            Err(WireError::Limit(_))
        ));
    }

    #[test]
    fn hello_round_trips() {
        let hello = Hello {
            version: PROTOCOL_VERSION,
            cert: sample_cert(),
            addrs: vec!["127.0.0.1:4000".parse().unwrap()],
        };
        let frame = encode_frame(&hello);
        assert_eq!(decode::<Hello>(&frame[4..]).unwrap(), hello);
    }

    #[test]
    fn invite_code_text_round_trips_and_rejects_damage() {
        let code = InviteCode {
            grid: GridId::from_bytes([1; 32]),
            inviter: NodeId::from_bytes([2; 32]),
            addrs: vec!["127.0.0.1:4000".parse().unwrap()],
            secret: [3; 32],
        };
        let text = code.to_string();
        assert!(text.starts_with("cairn-invite:1:"));
        assert_eq!(text.parse::<InviteCode>().unwrap(), code);
        assert_eq!("hello".parse::<InviteCode>(), Err(InviteError::Prefix));
        let truncated = &text[..text.len() - 10];
        assert!(truncated.parse::<InviteCode>().is_err());
        assert!(!format!("{code:?}").contains("secret"));
    }
}

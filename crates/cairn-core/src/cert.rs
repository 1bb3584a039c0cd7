//! Member certificates: the grid key's signature over (grid id, node id, roles, validity).
//!
//! A node without a valid certificate gets nothing from the grid. A certificate is bound to a
//! node id, and the network layer checks that the id equals the peer's QUIC-authenticated key,
//! so a copied certificate is useless to anyone else.

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::id::{GridId, NodeId};

/// Domain separation for the bytes a grid key signs.
const CERT_CONTEXT: &[u8] = b"cairn-member-cert-v1";
/// Domain separation for a revocation's signed bytes.
const REVOCATION_CONTEXT: &[u8] = b"cairn-revocation-v1";
/// Current revocation format version.
pub const REVOCATION_VERSION: u8 = 1;

/// Current certificate format version.
pub const CERT_VERSION: u8 = 1;
/// How far ahead of the checking node's clock a certificate's issue time may be (clocks of
/// friends' machines drift; a certificate dated later than this was not issued honestly).
pub const CLOCK_SKEW_SECS: u64 = 300;

/// Why a certificate was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// The certificate was signed for another grid.
    #[error("certificate is for grid {got}, not this grid ({expected})")]
    WrongGrid {
        /// The grid this node belongs to.
        expected: GridId,
        /// The grid named in the certificate.
        got: GridId,
    },
    /// The certificate names another node than the one that presented it.
    #[error("certificate names node {named}, but was presented by node {peer}")]
    WrongNode {
        /// The node id inside the certificate.
        named: NodeId,
        /// The authenticated id of the peer that sent it.
        peer: NodeId,
    },
    /// The certificate's validity ended.
    #[error("certificate expired at {expired_at} (now {now})")]
    Expired {
        /// Expiry, unix seconds.
        expired_at: u64,
        /// The checking node's clock, unix seconds.
        now: u64,
    },
    /// The signature does not verify under the grid key.
    #[error("certificate signature does not verify under the grid key")]
    BadSignature,
    /// The grid id is not a valid ed25519 public key.
    #[error("grid id is not a valid public key")]
    BadGridKey,
    /// The certificate has a format version this build does not know.
    #[error("unsupported certificate version {0}")]
    UnsupportedVersion(u8),
    /// The node was revoked by the grid's admins.
    #[error("node {0} has been revoked from this grid")]
    Revoked(NodeId),
    /// The certificate is dated later than the checking node's clock allows.
    #[error("certificate issued at {issued_at}, in the future (now {now})")]
    NotYetValid {
        /// Issue time, unix seconds.
        issued_at: u64,
        /// The checking node's clock, unix seconds.
        now: u64,
    },
}

/// What a member may do in the grid, as a small bit set.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct Roles(u8);

impl Roles {
    /// Mounts, CLI and web: reads and writes files.
    pub const CLIENT: Roles = Roles(1);
    /// Offers disk and stores shares for others.
    pub const STORAGE: Roles = Roles(2);
    /// Headless, always-on mirror of hot chunks.
    pub const CACHE: Roles = Roles(4);
    /// Holds the grid key: may invite and revoke.
    pub const ADMIN: Roles = Roles(8);
    /// The roles of an ordinary member node.
    pub const MEMBER: Roles = Roles(1 | 2);

    /// Whether every role in `other` is in `self`.
    pub fn contains(self, other: Roles) -> bool {
        self.0 & other.0 == other.0
    }

    /// The union of two role sets.
    pub fn with(self, other: Roles) -> Roles {
        Roles(self.0 | other.0)
    }
}

impl fmt::Display for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (Roles::CLIENT, "client"),
            (Roles::STORAGE, "storage"),
            (Roles::CACHE, "cache"),
            (Roles::ADMIN, "admin"),
        ];
        let mut first = true;
        for (role, name) in names {
            if self.contains(role) {
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Roles({self})")
    }
}

/// The grid's signing key, held by its admins. Zeroized on drop; `Debug` prints only the grid id.
#[derive(Clone)]
pub struct GridKey(SigningKey);

impl GridKey {
    /// The key from its 32 secret bytes (the caller draws them from a CSPRNG).
    pub fn from_bytes(bytes: &[u8; 32]) -> GridKey {
        GridKey(SigningKey::from_bytes(bytes))
    }

    /// The 32 secret bytes, for the node's private key file.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// The grid id: the public half of this key.
    pub fn grid_id(&self) -> GridId {
        GridId::from_bytes(self.0.verifying_key().to_bytes())
    }

    /// Signs a member certificate for `node`.
    pub fn issue(&self, node: NodeId, roles: Roles, issued_at: u64, expires_at: u64) -> MemberCert {
        let body = CertBody {
            version: CERT_VERSION,
            grid: self.grid_id(),
            node,
            roles,
            issued_at,
            expires_at,
        };
        let signature = self.0.sign(&body.signed_bytes());
        MemberCert { body, signature }
    }

    /// Signs the statement that `node` is no longer a member, as of `revoked_at`.
    pub fn revoke(&self, node: NodeId, revoked_at: u64) -> Revocation {
        let body = RevocationBody {
            version: REVOCATION_VERSION,
            grid: self.grid_id(),
            node,
            revoked_at,
        };
        let signature = self.0.sign(&body.signed_bytes());
        Revocation { body, signature }
    }
}

impl fmt::Debug for GridKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GridKey(grid {})", self.grid_id().fmt_short())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct CertBody {
    version: u8,
    grid: GridId,
    node: NodeId,
    roles: Roles,
    issued_at: u64,
    expires_at: u64,
}

impl CertBody {
    fn signed_bytes(&self) -> Vec<u8> {
        let mut out = CERT_CONTEXT.to_vec();
        out.push(self.version);
        out.extend_from_slice(self.grid.as_bytes());
        out.extend_from_slice(self.node.as_bytes());
        out.push(self.roles.0);
        out.extend_from_slice(&self.issued_at.to_le_bytes());
        out.extend_from_slice(&self.expires_at.to_le_bytes());
        out
    }
}

/// A grid key's signature binding a node id to the grid, with roles and a validity period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberCert {
    body: CertBody,
    signature: Signature,
}

impl MemberCert {
    /// The grid that issued this certificate.
    pub fn grid(&self) -> GridId {
        self.body.grid
    }

    /// The node this certificate admits.
    pub fn node(&self) -> NodeId {
        self.body.node
    }

    /// The roles granted.
    pub fn roles(&self) -> Roles {
        self.body.roles
    }

    /// When it was issued, unix seconds.
    pub fn issued_at(&self) -> u64 {
        self.body.issued_at
    }

    /// When it stops being valid, unix seconds.
    pub fn expires_at(&self) -> u64 {
        self.body.expires_at
    }

    /// Checks the certificate for a connection: issued by `grid`, naming exactly `peer` (the
    /// peer's authenticated id), not expired at `now`, not issued more than
    /// [`CLOCK_SKEW_SECS`] after `now`, and signed by the grid key.
    pub fn verify(&self, grid: &GridId, peer: &NodeId, now: u64) -> Result<(), CertError> {
        self.verify_signature(grid)?;
        if self.body.node != *peer {
            return Err(CertError::WrongNode {
                named: self.body.node,
                peer: *peer,
            });
        }
        if now >= self.body.expires_at {
            return Err(CertError::Expired {
                expired_at: self.body.expires_at,
                now,
            });
        }
        if self.body.issued_at > now.saturating_add(CLOCK_SKEW_SECS) {
            return Err(CertError::NotYetValid {
                issued_at: self.body.issued_at,
                now,
            });
        }
        Ok(())
    }

    /// Checks only that the grid key signed this certificate (for roster entries, which are
    /// relayed by third parties and checked again when their node connects).
    pub fn verify_signature(&self, grid: &GridId) -> Result<(), CertError> {
        check_grid_signature(
            grid,
            (self.body.version, CERT_VERSION),
            &self.body.grid,
            &self.body.signed_bytes(),
            &self.signature,
        )
    }
}

/// The checks shared by everything a grid key signs, in order: a known format version
/// (`(found, expected)`), the grid named is `grid`, the grid id is a valid key, and the
/// signature over `signed` verifies under it.
fn check_grid_signature(
    grid: &GridId,
    (version, expected_version): (u8, u8),
    named: &GridId,
    signed: &[u8],
    signature: &Signature,
) -> Result<(), CertError> {
    if version != expected_version {
        return Err(CertError::UnsupportedVersion(version));
    }
    if named != grid {
        return Err(CertError::WrongGrid {
            expected: *grid,
            got: *named,
        });
    }
    let key = VerifyingKey::from_bytes(grid.as_bytes()).map_err(|_| CertError::BadGridKey)?;
    key.verify_strict(signed, signature)
        .map_err(|_| CertError::BadSignature)
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct RevocationBody {
    version: u8,
    grid: GridId,
    node: NodeId,
    revoked_at: u64,
}

impl RevocationBody {
    fn signed_bytes(&self) -> Vec<u8> {
        let mut out = REVOCATION_CONTEXT.to_vec();
        out.push(self.version);
        out.extend_from_slice(self.grid.as_bytes());
        out.extend_from_slice(self.node.as_bytes());
        out.extend_from_slice(&self.revoked_at.to_le_bytes());
        out
    }
}

/// A grid key's signature stating that a node is no longer a member: every certificate naming
/// that node is refused from then on. Members pass revocations on to each other, so one
/// admin's `cairn revoke` reaches the whole grid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    body: RevocationBody,
    signature: Signature,
}

impl Revocation {
    /// The node revoked.
    pub fn node(&self) -> NodeId {
        self.body.node
    }

    /// When the admin revoked it, unix seconds.
    pub fn revoked_at(&self) -> u64 {
        self.body.revoked_at
    }

    /// Checks that the grid key of `grid` signed this revocation.
    pub fn verify(&self, grid: &GridId) -> Result<(), CertError> {
        check_grid_signature(
            grid,
            (self.body.version, REVOCATION_VERSION),
            &self.body.grid,
            &self.body.signed_bytes(),
            &self.signature,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revocation_verifies_only_under_its_grid_and_unaltered() {
        let key = grid_key(1);
        let revocation = key.revoke(node(2), 1234);
        assert_eq!(revocation.verify(&key.grid_id()), Ok(()));
        assert_eq!(revocation.node(), node(2));
        assert!(matches!(
            revocation.verify(&grid_key(9).grid_id()),
            Err(CertError::WrongGrid { .. })
        ));
        let mut forged = grid_key(9).revoke(node(2), 1234);
        forged.body.grid = key.grid_id();
        assert_eq!(forged.verify(&key.grid_id()), Err(CertError::BadSignature));
        let mut altered = revocation.clone();
        altered.body.node = node(3);
        assert_eq!(altered.verify(&key.grid_id()), Err(CertError::BadSignature));
    }

    fn grid_key(seed: u8) -> GridKey {
        GridKey::from_bytes(&[seed; 32])
    }

    fn node(seed: u8) -> NodeId {
        NodeId::from_bytes(
            SigningKey::from_bytes(&[seed; 32])
                .verifying_key()
                .to_bytes(),
        )
    }

    #[test]
    fn issued_cert_verifies_for_its_node() {
        let key = grid_key(1);
        let cert = key.issue(node(2), Roles::MEMBER, 100, 200);
        assert_eq!(cert.verify(&key.grid_id(), &node(2), 150), Ok(()));
        assert!(cert.roles().contains(Roles::STORAGE));
    }

    #[test]
    fn cert_presented_by_another_node_is_refused() {
        let key = grid_key(1);
        let cert = key.issue(node(2), Roles::MEMBER, 100, 200);
        assert!(matches!(
            cert.verify(&key.grid_id(), &node(3), 150),
            Err(CertError::WrongNode { .. })
        ));
    }

    #[test]
    fn cert_of_another_grid_is_refused() {
        let cert = grid_key(1).issue(node(2), Roles::MEMBER, 100, 200);
        assert!(matches!(
            cert.verify(&grid_key(9).grid_id(), &node(2), 150),
            Err(CertError::WrongGrid { .. })
        ));
    }

    #[test]
    fn cert_dated_in_the_future_is_refused_beyond_the_clock_skew() {
        let key = grid_key(1);
        let cert = key.issue(node(2), Roles::MEMBER, 10_000, 20_000);
        let early = 10_000 - CLOCK_SKEW_SECS;
        assert_eq!(cert.verify(&key.grid_id(), &node(2), early), Ok(()));
        assert!(matches!(
            cert.verify(&key.grid_id(), &node(2), early - 1),
            Err(CertError::NotYetValid {
                issued_at: 10_000,
                ..
            })
        ));
    }

    #[test]
    fn expired_cert_is_refused() {
        let key = grid_key(1);
        let cert = key.issue(node(2), Roles::MEMBER, 100, 200);
        assert!(matches!(
            cert.verify(&key.grid_id(), &node(2), 200),
            Err(CertError::Expired { .. })
        ));
    }

    #[test]
    fn tampered_roles_break_the_signature() {
        let key = grid_key(1);
        let mut cert = key.issue(node(2), Roles::CLIENT, 100, 200);
        cert.body.roles = Roles::CLIENT.with(Roles::ADMIN);
        assert_eq!(
            cert.verify(&key.grid_id(), &node(2), 150),
            Err(CertError::BadSignature)
        );
    }

    #[test]
    fn forged_grid_field_is_refused() {
        // A cert signed by grid 9 but claiming to be of grid 1.
        let real = grid_key(1);
        let mut cert = grid_key(9).issue(node(2), Roles::MEMBER, 100, 200);
        cert.body.grid = real.grid_id();
        assert_eq!(
            cert.verify(&real.grid_id(), &node(2), 150),
            Err(CertError::BadSignature)
        );
    }

    #[test]
    fn roles_display() {
        assert_eq!(
            Roles::MEMBER.with(Roles::ADMIN).to_string(),
            "client,storage,admin"
        );
    }
}

//! What an entry points at: a file (by cap), a subdirectory (readcap, plus its writecap sealed
//! so only the parent's writers can open it) or a symlink; and the metadata kept beside it.

use cairn_core::crypto::{ReadKey, open_with, seal_with};
use cairn_core::{Cap, DirReadCap, DirWriteCap, LiteralCap, NodeId, ReadCap, ShareRoot, SlotId};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

use crate::DirError;
use crate::hlc::Hlc;

/// Derive-key context of the key that seals a child's writecap (from parent seed and salt).
const CHILD_WRITECAP_CONTEXT: &str = "cairn 2026 dir child writecap v1";

/// File metadata kept in the entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Meta {
    /// Unix permission bits (`0o644`).
    pub mode: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Owner user and group ids as set by `chown`; `None`: whoever mounts it.
    #[serde(default)]
    pub owner: Option<(u32, u32)>,
    /// Access time as last set (`utimens`), nanoseconds since the epoch; `None`: the mtime.
    /// Reads do not change it.
    #[serde(default)]
    pub atime_ns: Option<i64>,
}

/// An entry's target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Content {
    /// An immutable file.
    File {
        /// Its cap (a readcap or a literal).
        file: FileRef,
        /// Mode and mtime.
        meta: Meta,
    },
    /// A subdirectory.
    Dir {
        /// Its readcap.
        read: DirReadCap,
        /// Its writecap, sealed under the parent's writecap (absent: linked read-only).
        write: Option<SealedWriteCap>,
        /// Mode and mtime.
        meta: Meta,
        /// Set when the directory came here, or left from here, by a move between directories.
        moved: Option<Box<MoveMark>>,
    },
    /// A symbolic link.
    Symlink {
        /// The link's target, as given.
        target: String,
        /// Mode and mtime.
        meta: Meta,
    },
}

impl PartialEq for Content {
    /// Equal targets and metadata; a subdirectory compares by its readcap only (two sealings of
    /// one writecap differ in their salt but name the same directory).
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Content::File { file: a, meta: m }, Content::File { file: b, meta: n }) => {
                a == b && m == n
            }
            (
                Content::Dir {
                    read: a,
                    write: wa,
                    meta: m,
                    moved: ma,
                },
                Content::Dir {
                    read: b,
                    write: wb,
                    meta: n,
                    moved: mb,
                },
            ) => a == b && wa.is_some() == wb.is_some() && m == n && ma == mb,
            (Content::Symlink { target: a, meta: m }, Content::Symlink { target: b, meta: n }) => {
                a == b && m == n
            }
            _ => false,
        }
    }
}

impl Eq for Content {}

impl Content {
    /// The size to show: file bytes, target length for a symlink, 0 for a directory.
    pub fn size(&self) -> u64 {
        match self {
            Content::File { file, .. } => file.size(),
            Content::Dir { .. } => 0,
            Content::Symlink { target, .. } => target.len() as u64,
        }
    }

    /// The metadata.
    pub fn meta(&self) -> Meta {
        match self {
            Content::File { meta, .. }
            | Content::Dir { meta, .. }
            | Content::Symlink { meta, .. } => *meta,
        }
    }

    /// The same target (and move mark) with other metadata.
    pub fn with_meta(&self, meta: Meta) -> Content {
        let mut out = self.clone();
        match &mut out {
            Content::File { meta: m, .. }
            | Content::Dir { meta: m, .. }
            | Content::Symlink { meta: m, .. } => *m = meta,
        }
        out
    }

    /// Whether this is a subdirectory.
    pub fn is_dir(&self) -> bool {
        matches!(self, Content::Dir { .. })
    }

    /// A subdirectory entry for `child`, its writecap sealed under `parent` with `salt`.
    pub fn dir(parent: &DirWriteCap, child: &DirWriteCap, salt: [u8; 32], meta: Meta) -> Content {
        Content::Dir {
            read: child.read_cap(),
            write: Some(SealedWriteCap::seal(parent, child, salt)),
            meta,
            moved: None,
        }
    }

    /// The move mark of a subdirectory entry, if any.
    pub fn move_mark(&self) -> Option<&MoveMark> {
        match self {
            Content::Dir { moved, .. } => moved.as_deref(),
            _ => None,
        }
    }

    /// The same content without a move mark (how a listing shows a subdirectory).
    pub fn without_move_mark(&self) -> Content {
        match self {
            Content::Dir {
                read, write, meta, ..
            } => Content::Dir {
                read: read.clone(),
                write: write.clone(),
                meta: *meta,
                moved: None,
            },
            other => other.clone(),
        }
    }
}

/// One move of a directory between directories, recorded in both: in the source entry (which
/// then hides) as [`MoveMark::Out`], in the new destination entry as [`MoveMark::In`]. Readers
/// order moves by [`Move::order`] and cancel one that would put a directory inside itself (see
/// [`Listing::of_with`](crate::Listing::of_with)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    /// The directory moved.
    pub dir: SlotId,
    /// The directory it left.
    pub from: SlotId,
    /// The directory it went to.
    pub to: SlotId,
    /// The directories from the mover's starting point down to `to` (inclusive), as the mover
    /// saw them: where to look for earlier moves that changed `to`'s ancestors.
    pub path: Vec<SlotId>,
    /// When.
    pub at: Hlc,
    /// Who moved it.
    pub writer: NodeId,
}

impl Move {
    /// The order moves are applied in: time, then writer, then the directories.
    pub fn order(&self) -> (Hlc, NodeId, SlotId, SlotId, SlotId) {
        (self.at, self.writer, self.dir, self.from, self.to)
    }
}

/// Which side of a move an entry is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MoveMark {
    /// The directory arrived here by this move (shown unless the move is cancelled).
    In(Move),
    /// The directory left here by this move (hidden unless the move is cancelled).
    Out(Move),
}

impl MoveMark {
    /// The move.
    pub fn movement(&self) -> &Move {
        match self {
            MoveMark::In(m) | MoveMark::Out(m) => m,
        }
    }
}

/// A file cap inside an entry: a readcap or a literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef(FileCap);

#[derive(Debug, Clone, PartialEq, Eq)]
enum FileCap {
    Read(ReadCap),
    Literal(LiteralCap),
}

impl FileRef {
    /// The entry form of `cap`; `None` for caps that do not read a file.
    pub fn new(cap: Cap) -> Option<FileRef> {
        match cap {
            Cap::Read(cap) => Some(FileRef(FileCap::Read(cap))),
            Cap::Literal(cap) => Some(FileRef(FileCap::Literal(cap))),
            _ => None,
        }
    }

    /// The file's cap.
    pub fn cap(&self) -> Cap {
        match &self.0 {
            FileCap::Read(cap) => Cap::Read(cap.clone()),
            FileCap::Literal(cap) => Cap::Literal(cap.clone()),
        }
    }

    /// The file's size.
    pub fn size(&self) -> u64 {
        match &self.0 {
            FileCap::Read(cap) => cap.size,
            FileCap::Literal(cap) => cap.data.len() as u64,
        }
    }
}

/// Serde form of a [`FileRef`]: raw fields, the key zeroized after use.
#[derive(Serialize, Deserialize)]
enum FileRefRepr {
    Read {
        root: [u8; 32],
        key: [u8; 32],
        size: u64,
    },
    Literal(#[serde(with = "serde_bytes")] Vec<u8>),
}

impl Drop for FileRefRepr {
    fn drop(&mut self) {
        if let FileRefRepr::Read { key, .. } = self {
            zeroize::Zeroize::zeroize(key);
        }
    }
}

impl Serialize for FileRef {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let repr = match &self.0 {
            FileCap::Read(cap) => FileRefRepr::Read {
                root: *cap.root.as_bytes(),
                key: *cap.key.as_bytes(),
                size: cap.size,
            },
            FileCap::Literal(cap) => FileRefRepr::Literal(cap.data.clone()),
        };
        repr.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for FileRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut repr = FileRefRepr::deserialize(deserializer)?;
        Ok(FileRef(match &mut repr {
            FileRefRepr::Read { root, key, size } => FileCap::Read(ReadCap {
                root: ShareRoot::from_bytes(*root),
                key: ReadKey::from_bytes(*key),
                size: *size,
            }),
            FileRefRepr::Literal(data) => {
                if data.len() > cairn_core::INLINE_LIMIT {
                    return Err(serde::de::Error::custom("literal file too long"));
                }
                FileCap::Literal(LiteralCap {
                    data: std::mem::take(data),
                })
            }
        }))
    }
}

/// A child directory's writecap, encrypted under a key only the parent's writers can derive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedWriteCap {
    salt: [u8; 32],
    #[serde(with = "serde_bytes")]
    sealed: Vec<u8>,
}

impl SealedWriteCap {
    fn key(parent: &DirWriteCap, salt: &[u8; 32]) -> Zeroizing<[u8; 32]> {
        let mut hasher = blake3::Hasher::new_derive_key(CHILD_WRITECAP_CONTEXT);
        hasher.update(parent.seed());
        hasher.update(salt);
        Zeroizing::new(*hasher.finalize().as_bytes())
    }

    /// Seals `child` under `parent` with a fresh random `salt`.
    pub fn seal(parent: &DirWriteCap, child: &DirWriteCap, salt: [u8; 32]) -> SealedWriteCap {
        let key = Self::key(parent, &salt);
        let aad = child.slot();
        SealedWriteCap {
            salt,
            sealed: seal_with(&key, aad.as_bytes(), child.seed().to_vec()),
        }
    }

    /// Opens the child writecap whose readcap is `read`, with the parent's writecap.
    pub fn open(&self, parent: &DirWriteCap, read: &DirReadCap) -> Result<DirWriteCap, DirError> {
        let key = Self::key(parent, &self.salt);
        let plain = Zeroizing::new(
            open_with(&key, read.slot().as_bytes(), self.sealed.clone())
                .map_err(|_| DirError::Decrypt)?,
        );
        let seed: [u8; 32] = plain.as_slice().try_into().map_err(|_| DirError::Decrypt)?;
        let cap = DirWriteCap::from_seed(seed);
        if &cap.read_cap() != read {
            return Err(DirError::Decrypt);
        }
        Ok(cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_child_writecap_opens_only_with_the_parent() {
        let parent = DirWriteCap::from_seed([1; 32]);
        let other = DirWriteCap::from_seed([2; 32]);
        let child = DirWriteCap::from_seed([3; 32]);
        let content = Content::dir(&parent, &child, [9; 32], Meta::default());
        let Content::Dir { read, write, .. } = &content else {
            panic!("not a dir");
        };
        let sealed = write.as_ref().unwrap();
        assert_eq!(sealed.open(&parent, read).unwrap(), child);
        assert!(sealed.open(&other, read).is_err());
        assert!(sealed.open(&parent, &other.read_cap()).is_err());
        // Another sealing of the same child is the same content.
        assert_eq!(
            content,
            Content::dir(&parent, &child, [8; 32], Meta::default())
        );
    }

    #[test]
    fn file_refs_round_trip() {
        let cap: Cap = "cairn:lit:1:nbswy3dp".parse().unwrap();
        let file = FileRef::new(cap.clone()).unwrap();
        let bytes = postcard::to_stdvec(&file).unwrap();
        let back: FileRef = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.cap(), cap);
        assert!(FileRef::new(Cap::DirWrite(DirWriteCap::from_seed([1; 32]))).is_none());
    }
}

//! Inode numbers: a stable map from (parent inode, name) to a `u64`, kept in memory for the
//! life of one mount.
//!
//! The kernel names files by inode number; Cairn names them by a directory cap and a name. An
//! inode is created the first time a name is seen (lookup, readdir, create) and keeps its
//! number until the mount ends, also across renames made through the mount (the entry moves,
//! the number stays). A directory's inode remembers its cap once resolved, so operations inside
//! it start from that cap and need not walk from the mount's root.

use std::collections::HashMap;

use cairn_node::DirCap;

/// The root inode's number.
pub(crate) const ROOT: u64 = 1;

/// What the mount knows of one inode.
#[derive(Clone, Debug)]
pub(crate) struct Inode {
    /// The directory holding it (the root is its own parent).
    pub(crate) parent: u64,
    /// Its name there.
    pub(crate) name: String,
    /// For a directory: its cap, once resolved.
    pub(crate) dir: Option<DirCap>,
}

/// The table (see the module docs).
#[derive(Debug)]
pub(crate) struct Inodes {
    by_ino: HashMap<u64, Inode>,
    by_name: HashMap<(u64, String), u64>,
    next: u64,
}

impl Inodes {
    /// A table holding only the root, at `root`.
    pub(crate) fn new(root: DirCap) -> Inodes {
        let mut by_ino = HashMap::new();
        by_ino.insert(
            ROOT,
            Inode {
                parent: ROOT,
                name: String::new(),
                dir: Some(root),
            },
        );
        Inodes {
            by_ino,
            by_name: HashMap::new(),
            next: ROOT + 1,
        }
    }

    /// The inode `ino`, if known.
    pub(crate) fn get(&self, ino: u64) -> Option<&Inode> {
        self.by_ino.get(&ino)
    }

    /// The inode named `name` in `parent`, if known.
    pub(crate) fn child(&self, parent: u64, name: &str) -> Option<u64> {
        self.by_name.get(&(parent, name.to_owned())).copied()
    }

    /// The inode of `name` in `parent`, made if new.
    pub(crate) fn ensure(&mut self, parent: u64, name: &str) -> u64 {
        if let Some(ino) = self.child(parent, name) {
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.by_ino.insert(
            ino,
            Inode {
                parent,
                name: name.to_owned(),
                dir: None,
            },
        );
        self.by_name.insert((parent, name.to_owned()), ino);
        ino
    }

    /// Records the cap of directory `ino`.
    pub(crate) fn set_dir(&mut self, ino: u64, cap: Option<DirCap>) {
        if let Some(inode) = self.by_ino.get_mut(&ino) {
            inode.dir = cap;
        }
    }

    /// Forgets the name `name` in `parent` (the inode stays for open handles).
    pub(crate) fn unlink(&mut self, parent: u64, name: &str) -> Option<u64> {
        self.by_name.remove(&(parent, name.to_owned()))
    }

    /// Moves the inode at (`parent`, `name`) to (`new_parent`, `new_name`); whatever was at the
    /// destination loses its name.
    pub(crate) fn rename(&mut self, parent: u64, name: &str, new_parent: u64, new_name: &str) {
        self.by_name.remove(&(new_parent, new_name.to_owned()));
        if let Some(ino) = self.by_name.remove(&(parent, name.to_owned())) {
            self.by_name.insert((new_parent, new_name.to_owned()), ino);
            if let Some(inode) = self.by_ino.get_mut(&ino) {
                inode.parent = new_parent;
                inode.name = new_name.to_owned();
            }
        }
    }

    /// The directory inodes whose cap names `slot`.
    pub(crate) fn dirs_of_slot(&self, slot: &cairn_core::SlotId) -> Vec<u64> {
        self.by_ino
            .iter()
            .filter(|(_, i)| i.dir.as_ref().is_some_and(|d| d.slot() == *slot))
            .map(|(ino, _)| *ino)
            .collect()
    }

    /// The known children of `parent`: (name, inode).
    pub(crate) fn children(&self, parent: u64) -> Vec<(String, u64)> {
        self.by_name
            .iter()
            .filter(|((p, _), _)| *p == parent)
            .map(|((_, name), ino)| (name.clone(), *ino))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use cairn_core::DirWriteCap;

    #[test]
    fn numbers_are_stable_across_renames() {
        let mut t = Inodes::new(DirCap::Write(DirWriteCap::from_seed([7; 32])));
        let a = t.ensure(ROOT, "a");
        let b = t.ensure(ROOT, "b");
        assert_ne!(a, b);
        assert_eq!(t.ensure(ROOT, "a"), a);
        t.rename(ROOT, "a", b, "c");
        assert_eq!(t.child(b, "c"), Some(a));
        assert_eq!(t.child(ROOT, "a"), None);
        assert_eq!(t.get(a).unwrap().parent, b);
        assert_eq!(t.unlink(b, "c"), Some(a));
        assert!(t.get(a).is_some());
        assert_ne!(t.ensure(ROOT, "a"), a);
    }
}

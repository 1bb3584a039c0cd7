//! Inode numbers: a map from (parent inode, name) to a `u64`, kept in memory for the life of
//! one mount, with numbers that come out the same at the next mount.
//!
//! The kernel names files by inode number; Cairn names them by a directory cap and a name. An
//! inode is created the first time a name is seen (lookup, readdir, create) and keeps its
//! number until the mount ends, also across renames made through the mount (the entry moves,
//! the number stays). A directory's inode remembers its cap once resolved, so operations inside
//! it start from that cap and need not walk from the mount's root.
//!
//! A new inode's number is a hash of its parent's number and its name, so a path mounted again
//! gets the number it had before. Tools that keep inode numbers between runs rely on that: git
//! re-reads every file whose number changed since its index was written. A number already taken
//! (a file renamed away keeps its old one) or reserved is skipped for the hash's next output.

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
    /// Each directory's named children: name to inode.
    by_parent: HashMap<u64, HashMap<String, u64>>,
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
            by_parent: HashMap::new(),
        }
    }

    /// The inode `ino`, if known.
    pub(crate) fn get(&self, ino: u64) -> Option<&Inode> {
        self.by_ino.get(&ino)
    }

    /// The inode named `name` in `parent`, if known.
    pub(crate) fn child(&self, parent: u64, name: &str) -> Option<u64> {
        self.by_parent.get(&parent)?.get(name).copied()
    }

    /// The inode of `name` in `parent`, made if new.
    pub(crate) fn ensure(&mut self, parent: u64, name: &str) -> u64 {
        if let Some(ino) = self.child(parent, name) {
            return ino;
        }
        let ino = self.free_number(parent, name);
        self.by_ino.insert(
            ino,
            Inode {
                parent,
                name: name.to_owned(),
                dir: None,
            },
        );
        self.name(parent, name, ino);
        ino
    }

    /// Gives `ino` the name `name` in `parent`.
    fn name(&mut self, parent: u64, name: &str, ino: u64) {
        self.by_parent
            .entry(parent)
            .or_default()
            .insert(name.to_owned(), ino);
    }

    /// The first output of the hash of (`parent`, `name`) that no inode has and that is not
    /// reserved (0, the root), kept to 63 bits for tools that hold numbers signed.
    fn free_number(&self, parent: u64, name: &str) -> u64 {
        let mut hasher = blake3::Hasher::new_derive_key("cairn mount inode number 2026-12 v1");
        hasher.update(&parent.to_le_bytes());
        hasher.update(name.as_bytes());
        let mut output = hasher.finalize_xof();
        loop {
            let mut bytes = [0u8; 8];
            output.fill(&mut bytes);
            let ino = u64::from_le_bytes(bytes) >> 1;
            if ino > ROOT && !self.by_ino.contains_key(&ino) {
                return ino;
            }
        }
    }

    /// Records the cap of directory `ino`.
    pub(crate) fn set_dir(&mut self, ino: u64, cap: Option<DirCap>) {
        if let Some(inode) = self.by_ino.get_mut(&ino) {
            inode.dir = cap;
        }
    }

    /// Forgets the name `name` in `parent` (the inode stays for open handles).
    pub(crate) fn unlink(&mut self, parent: u64, name: &str) -> Option<u64> {
        let names = self.by_parent.get_mut(&parent)?;
        let ino = names.remove(name);
        if names.is_empty() {
            self.by_parent.remove(&parent);
        }
        ino
    }

    /// Moves the inode at (`parent`, `name`) to (`new_parent`, `new_name`); whatever was at the
    /// destination loses its name.
    pub(crate) fn rename(&mut self, parent: u64, name: &str, new_parent: u64, new_name: &str) {
        self.unlink(new_parent, new_name);
        if let Some(ino) = self.unlink(parent, name) {
            self.name(new_parent, new_name, ino);
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
        self.by_parent.get(&parent).map_or_else(Vec::new, |names| {
            names
                .iter()
                .map(|(name, ino)| (name.clone(), *ino))
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use cairn_core::DirWriteCap;

    fn table() -> Inodes {
        Inodes::new(DirCap::Write(DirWriteCap::from_seed([7; 32])))
    }

    #[test]
    fn numbers_are_stable_across_renames() {
        let mut t = table();
        let a = t.ensure(ROOT, "a");
        let b = t.ensure(ROOT, "b");
        assert_ne!(a, b);
        assert_eq!(t.ensure(ROOT, "a"), a);
        t.rename(ROOT, "a", b, "c");
        assert_eq!(t.child(b, "c"), Some(a));
        assert_eq!(t.child(ROOT, "a"), None);
        assert_eq!(t.get(a).unwrap().parent, b);
        assert_eq!(t.children(b), vec![("c".to_owned(), a)]);
        assert_eq!(t.unlink(b, "c"), Some(a));
        assert!(t.get(a).is_some());
        assert!(t.children(b).is_empty());
        assert_ne!(
            t.ensure(ROOT, "a"),
            a,
            "a number is never given to a second file"
        );
    }

    #[test]
    fn a_path_gets_the_same_number_in_every_table_whatever_the_order_of_lookups() {
        let mut first = table();
        let dir = first.ensure(ROOT, "src");
        let file = first.ensure(dir, "main.rs");
        let mut second = table();
        let other = second.ensure(ROOT, "README.md");
        let dir2 = second.ensure(ROOT, "src");
        assert_eq!(dir2, dir);
        assert_eq!(second.ensure(dir2, "main.rs"), file);
        assert_ne!(other, dir);
        for ino in [dir, file, other] {
            assert!(ino > ROOT && ino < 1 << 63, "{ino}");
        }
    }

    #[test]
    fn renamed_files_keep_their_numbers_and_the_name_left_behind_gets_a_new_one() {
        let mut t = table();
        let a = t.ensure(ROOT, "a");
        t.rename(ROOT, "a", ROOT, "b");
        let new_a = t.ensure(ROOT, "a");
        assert_ne!(new_a, a);
        assert_eq!(t.child(ROOT, "b"), Some(a));
        assert_eq!(t.get(new_a).unwrap().name, "a");
        // Renaming over a name takes it from the inode that had it.
        t.rename(ROOT, "b", ROOT, "a");
        assert_eq!(t.child(ROOT, "a"), Some(a));
        assert_eq!(t.child(ROOT, "b"), None);
    }
}

//! Paths over directories: what `ls`, `mkdir`, `put FILE PATH`, `get PATH`, `mv`, `rm`,
//! `ln -s`, `share` and `attach` do.
//!
//! A location is a path in the owner's root (`/photos/2026/a.jpg`; a leading `/` is optional)
//! or a cap followed by a path (`cairn:dir:1:.../sub/file`). Walking a path loads each
//! directory on the way; a subdirectory reached through a writecap is writable when its entry
//! carries its sealed writecap, read-only otherwise.

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use cairn_core::cap::Cap;
use cairn_core::{DirWriteCap, SlotId};
use cairn_dir::{
    Content, DirState, Edit, EntryId, Listed, Listing, Meta, Move, MoveMark, SealedWriteCap,
    check_name,
};
use serde::{Deserialize, Serialize};

use crate::NodeError;
use crate::dir::{read_secret, write_secret};
use crate::dirs::DirCap;
use crate::moves::{Verdicts, marks};
use crate::node::Node;

/// A parsed location: where the walk starts, and the names below it.
#[derive(Clone, Debug)]
pub struct Location {
    start: Option<Cap>,
    parts: Vec<String>,
}

impl Location {
    /// Parses `text`: a path, or a cap optionally followed by `/path`.
    pub fn parse(text: &str) -> Result<Location, NodeError> {
        let text = text.trim();
        let (start, path) = if text.len() >= 6 && text[..6].eq_ignore_ascii_case("cairn:") {
            let (cap, rest) = text.split_once('/').unwrap_or((text, ""));
            (Some(cap.parse::<Cap>()?), rest)
        } else {
            (None, text)
        };
        let mut parts: Vec<String> = Vec::new();
        for part in path.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    parts.pop();
                }
                name => parts.push(name.to_owned()),
            }
        }
        Ok(Location { start, parts })
    }

    /// The entry `name` of the directory `dir`, without the round trip through text that
    /// would re-derive a writecap's public key.
    pub fn in_dir(dir: &DirCap, name: &str) -> Location {
        Location {
            start: Some(dir.to_cap()),
            parts: vec![name.to_owned()],
        }
    }

    /// The path part as text (`/a/b`), for messages.
    pub fn display(&self) -> String {
        let path = format!("/{}", self.parts.join("/"));
        match &self.start {
            Some(cap) => format!(
                "<{} cap>{}",
                cap.kind(),
                if self.parts.is_empty() { "" } else { &path }
            ),
            None => path,
        }
    }

    fn parent(&self) -> Option<(Location, String)> {
        let mut parts = self.parts.clone();
        let name = parts.pop()?;
        Some((
            Location {
                start: self.start.clone(),
                parts,
            },
            name,
        ))
    }
}

/// One line of `ls`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LsEntry {
    /// The name (a conflict name for a conflict copy).
    pub name: String,
    /// `file`, `dir` or `symlink`.
    pub kind: String,
    /// Bytes (files), target length (symlinks), 0 (directories).
    pub size: u64,
    /// Unix permission bits.
    pub mode: u32,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Owner user and group ids, if set (`chown` through a mount).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<(u32, u32)>,
    /// Access time, nanoseconds since the epoch, if set (`utimens` through a mount).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atime_ns: Option<i64>,
    /// When the entry last changed in the directory, milliseconds since the epoch.
    pub ctime_ms: u64,
    /// Whether the line takes part in a conflict.
    pub conflict: bool,
    /// A symlink's target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Whether a subdirectory is writable from here.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub writable: bool,
}

/// What `ls` prints.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LsReport {
    /// The location listed.
    pub path: String,
    /// Whether the directory is writable with the cap used.
    pub writable: bool,
    /// The lines, sorted by name (names are unique).
    pub entries: Vec<LsEntry>,
    /// How many lines take part in a conflict.
    pub conflicts: usize,
}

impl LsReport {
    /// The line named `name` (a binary search: a mount looks names up one by one).
    pub fn get(&self, name: &str) -> Option<&LsEntry> {
        self.entries
            .binary_search_by(|e| e.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// Puts `line` under `name`, or takes `name` out when `line` is `None`, keeping the lines
    /// sorted and the conflict count right.
    pub fn set(&mut self, name: &str, line: Option<LsEntry>) {
        debug_assert!(line.as_ref().is_none_or(|line| line.name == name));
        let at = self.entries.binary_search_by(|e| e.name.as_str().cmp(name));
        if let Ok(i) = at
            && self.entries[i].conflict
        {
            self.conflicts = self.conflicts.saturating_sub(1);
        }
        if line.as_ref().is_some_and(|line| line.conflict) {
            self.conflicts += 1;
        }
        match (at, line) {
            (Ok(i), Some(line)) => self.entries[i] = line,
            (Ok(i), None) => {
                self.entries.remove(i);
            }
            (Err(i), Some(line)) => self.entries.insert(i, line),
            (Err(_), None) => {}
        }
    }
}

/// What a walk ended on.
enum Target {
    Dir(DirCap),
    Other(Content),
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn ls_entry(line: &Listed, parent: &DirCap) -> LsEntry {
    let meta = line.content.meta();
    let (kind, target, writable) = match &line.content {
        Content::File { .. } => ("file", None, false),
        Content::Dir { write, .. } => {
            ("dir", None, write.is_some() && parent.write_cap().is_some())
        }
        Content::Symlink { target, .. } => ("symlink", Some(target.clone()), false),
    };
    LsEntry {
        name: line.name.clone(),
        kind: kind.into(),
        size: line.content.size(),
        mode: meta.mode,
        mtime_ns: meta.mtime_ns,
        owner: meta.owner,
        atime_ns: meta.atime_ns,
        ctime_ms: line.changed.millis,
        conflict: line.conflict,
        target,
        writable,
    }
}

/// Removes what `line` shows: the whole entry, or just its value when the entry holds other
/// concurrent values (a conflict copy, or the name holder of one).
fn unlink(edit: &mut cairn_dir::Edit<'_>, line: &Listed) -> Result<(), NodeError> {
    let values = edit
        .state()
        .entries
        .get(&line.id)
        .map_or(0, |entry| entry.content.0.len());
    if line.conflict && values > 1 {
        edit.drop_value(line.id, line.dot)?;
    } else {
        edit.remove(line.id)?;
    }
    Ok(())
}

/// Gives the value `line` shows the metadata `meta`, keeping the rest of it (a directory its
/// move mark, so moves are judged as before).
fn set_line_meta(
    edit: &mut cairn_dir::Edit<'_>,
    line: Listed,
    meta: Meta,
) -> Result<(), NodeError> {
    // The value as stored (a listing drops move marks).
    let stored = edit
        .state()
        .entries
        .get(&line.id)
        .and_then(|e| e.content.0.get(&line.dot))
        .map_or(line.content, |s| s.value.clone());
    if stored.meta() != meta {
        edit.set_content(line.id, stored.with_meta(meta))?;
    }
    Ok(())
}

/// The cap of the subdirectory `content` as reached from `parent`.
fn child_cap(parent: &DirCap, content: &Content) -> Option<DirCap> {
    let Content::Dir { read, write, .. } = content else {
        return None;
    };
    match (parent.write_cap(), write) {
        (Some(parent), Some(sealed)) => match sealed.open(parent, read) {
            Ok(cap) => Some(DirCap::Write(cap)),
            Err(_) => Some(DirCap::Read(read.clone())),
        },
        _ => Some(DirCap::Read(read.clone())),
    }
}

impl Node {
    /// The owner's root directory (created at init; nodes made before that get one on first
    /// use).
    pub fn root_dir(&self) -> Result<DirWriteCap, NodeError> {
        let path = self.dir().root_dir_key();
        if !path.exists() {
            write_secret(&path, &rand::random::<[u8; 32]>())?;
        }
        Ok(DirWriteCap::from_seed(*read_secret(&path)?))
    }

    /// Judges the moves recorded in `state` (those of entries that may be named `names`, or
    /// all). Costs nothing when there are none.
    async fn verdicts_in(&self, state: &DirState, names: Option<&[&str]>) -> Verdicts {
        let moves = marks(state, names);
        if moves.is_empty() {
            return Verdicts::default();
        }
        self.judge(moves).await
    }

    /// [`verdicts_in`](Self::verdicts_in) the directory as last read (read now if it never was):
    /// for an edit, which reads it afresh anyway.
    async fn verdicts(&self, cap: &DirCap, names: Option<&[&str]>) -> Result<Verdicts, NodeError> {
        let cached = match self.cached(&cap.slot()) {
            Some(cached) => cached,
            None => self.load_dir(&cap.read_cap()).await?,
        };
        Ok(self.verdicts_in(&cached.state, names).await)
    }

    /// The line named `name` in the directory.
    async fn lookup(&self, cap: &DirCap, name: &str) -> Result<Option<Listed>, NodeError> {
        let cached = self.load_dir(&cap.read_cap()).await?;
        let verdicts = self.verdicts_in(&cached.state, Some(&[name])).await;
        Ok(Listing::lookup_with(&cached.state, name, &|m| {
            verdicts.cancelled(m)
        }))
    }

    async fn listing(&self, cap: &DirCap) -> Result<Listing, NodeError> {
        let cached = self.load_dir(&cap.read_cap()).await?;
        let verdicts = self.verdicts_in(&cached.state, None).await;
        Ok(Listing::of_with(&cached.state, &|m| verdicts.cancelled(m)))
    }

    fn walk_start(&self, location: &Location) -> Result<Target, NodeError> {
        Ok(match &location.start {
            None => Target::Dir(DirCap::Write(self.root_dir()?)),
            Some(Cap::DirWrite(w)) => Target::Dir(DirCap::Write(w.clone())),
            Some(Cap::DirRead(r)) => Target::Dir(DirCap::Read(r.clone())),
            Some(Cap::Verify(_)) => return Err(NodeError::VerifyCapCannotRead),
            Some(cap) => {
                let file = cairn_dir::FileRef::new(cap.clone())
                    .ok_or_else(|| NodeError::Invalid("unsupported cap".into()))?;
                Target::Other(Content::File {
                    file,
                    meta: Meta {
                        mode: 0o644,
                        mtime_ns: 0,
                        ..Default::default()
                    },
                })
            }
        })
    }

    /// Walks `location`; returns the target and the slots of the directories passed through.
    async fn walk(&self, location: &Location) -> Result<(Target, Vec<SlotId>), NodeError> {
        let mut target = self.walk_start(location)?;
        let mut passed = Vec::new();
        for (i, name) in location.parts.iter().enumerate() {
            let here = || format!("/{}", location.parts[..=i].join("/"));
            let Target::Dir(dir) = &target else {
                return Err(NodeError::NotADirectory(format!(
                    "/{}",
                    location.parts[..i].join("/")
                )));
            };
            passed.push(dir.slot());
            let line = self
                .lookup(dir, name)
                .await?
                .ok_or_else(|| NodeError::NotFound(here()))?;
            target = match child_cap(dir, &line.content) {
                Some(child) => Target::Dir(child),
                None => Target::Other(line.content.clone()),
            };
        }
        Ok((target, passed))
    }

    async fn walk_dir(&self, location: &Location) -> Result<(DirCap, Vec<SlotId>), NodeError> {
        match self.walk(location).await? {
            (Target::Dir(cap), passed) => Ok((cap, passed)),
            (Target::Other(_), _) => Err(NodeError::NotADirectory(location.display())),
        }
    }

    /// The writable parent directory of `location` and the last name.
    async fn parent_for_write(
        &self,
        location: &Location,
    ) -> Result<(DirWriteCap, String, Vec<SlotId>), NodeError> {
        let (parent, name) = location
            .parent()
            .ok_or_else(|| NodeError::Invalid(format!("{}: needs a name", location.display())))?;
        check_name(&name)?;
        let (dir, passed) = self.walk_dir(&parent).await?;
        match dir {
            DirCap::Write(w) => Ok((w, name, passed)),
            DirCap::Read(_) => Err(NodeError::ReadOnly(parent.display())),
        }
    }

    /// Lists the directory at `location` (or the one entry, for a file).
    pub async fn ls(&self, location: &str) -> Result<LsReport, NodeError> {
        let location = Location::parse(location)?;
        match self.walk(&location).await? {
            (Target::Dir(cap), _) => {
                let listing = self.listing(&cap).await?;
                let entries: Vec<LsEntry> =
                    listing.entries.iter().map(|l| ls_entry(l, &cap)).collect();
                let conflicts = entries.iter().filter(|e| e.conflict).count();
                self.note_conflicts(cap.slot(), &location.display(), conflicts);
                Ok(LsReport {
                    path: location.display(),
                    writable: cap.write_cap().is_some(),
                    conflicts,
                    entries,
                })
            }
            (Target::Other(_), _) => {
                let (parent, name) = location
                    .parent()
                    .ok_or_else(|| NodeError::NotADirectory(location.display()))?;
                let (cap, _) = self.walk_dir(&parent).await?;
                let line = self
                    .lookup(&cap, &name)
                    .await?
                    .ok_or_else(|| NodeError::NotFound(location.display()))?;
                let entry = ls_entry(&line, &cap);
                Ok(LsReport {
                    path: location.display(),
                    writable: cap.write_cap().is_some(),
                    conflicts: usize::from(entry.conflict),
                    entries: vec![entry],
                })
            }
        }
    }

    /// The lines `names` show in the directory `dir` (each `None` when nothing shows under
    /// it), told without listing the whole directory; `None` when one of them takes part in a
    /// conflict, which only [`ls`](Self::ls) shows right. A mount keeps its listing of a large
    /// directory current with it after its own changes.
    pub async fn plain_lines(
        &self,
        dir: &DirCap,
        names: &[&str],
    ) -> Result<Option<Vec<Option<LsEntry>>>, NodeError> {
        let cached = self.load_dir(&dir.read_cap()).await?;
        let verdicts = self.verdicts_in(&cached.state, Some(names)).await;
        Ok(names
            .iter()
            .map(|name| {
                Listing::plain_line(&cached.state, name, &|m| verdicts.cancelled(m))
                    .map(|line| line.map(|line| ls_entry(&line, dir)))
            })
            .collect())
    }

    /// Creates the directory at `location` (and missing parents with `parents`), mode 0755.
    pub async fn mkdir(&self, location: &str, parents: bool) -> Result<(), NodeError> {
        self.mkdir_with_mode(location, parents, 0o755).await
    }

    /// Creates the directory at `location` with permission bits `mode`, in one edit of its
    /// parent. Missing parents, made with `parents`, get 0755.
    pub async fn mkdir_with_mode(
        &self,
        location: &str,
        parents: bool,
        mode: u32,
    ) -> Result<(), NodeError> {
        let location = Location::parse(location)?;
        if location.parts.is_empty() {
            return if parents {
                Ok(())
            } else {
                Err(NodeError::AlreadyExists(location.display()))
            };
        }
        let mut cap = match self.walk_start(&location)? {
            Target::Dir(cap) => cap,
            Target::Other(_) => return Err(NodeError::NotADirectory(location.display())),
        };
        for (i, name) in location.parts.iter().enumerate() {
            let here = format!("/{}", location.parts[..=i].join("/"));
            let last = i + 1 == location.parts.len();
            if let Some(line) = self.lookup(&cap, name).await? {
                match child_cap(&cap, &line.content) {
                    Some(child) if !last || parents => {
                        cap = child;
                        continue;
                    }
                    Some(_) => return Err(NodeError::AlreadyExists(here)),
                    None => return Err(NodeError::NotADirectory(here)),
                }
            }
            if !last && !parents {
                return Err(NodeError::NotFound(here));
            }
            check_name(name)?;
            let DirCap::Write(parent) = &cap else {
                return Err(NodeError::ReadOnly(here));
            };
            let child = DirWriteCap::from_seed(rand::random());
            let content = Content::dir(
                parent,
                &child,
                rand::random(),
                Meta {
                    mode: if last { mode & 0o7777 } else { 0o755 },
                    mtime_ns: now_ns(),
                    ..Default::default()
                },
            );
            let name = name.clone();
            let taken = here.clone();
            let verdicts = self.verdicts(&cap, Some(&[name.as_str()])).await?;
            // The new directory's first version and its entry in the parent go out together:
            // a reader that finds the entry before the version reads an empty directory,
            // which it is (and so does one if no holder took the version: mkdir then fails,
            // but the directory there works).
            let (created, linked) = tokio::join!(
                self.create_dir(&child),
                self.edit_dir(parent, move |edit| {
                    if Listing::lookup_with(edit.state(), &name, &|m| verdicts.cancelled(m))
                        .is_some()
                    {
                        return Err(NodeError::AlreadyExists(taken));
                    }
                    edit.create(EntryId(rand::random()), &name, content)?;
                    Ok(())
                })
            );
            linked?;
            created?;
            cap = DirCap::Write(child);
        }
        Ok(())
    }

    /// Links `content` at `location`. An existing file or symlink there is replaced when
    /// `replace`; a directory never is.
    pub async fn link(
        &self,
        location: &str,
        content: Content,
        replace: bool,
    ) -> Result<(), NodeError> {
        self.link_at(&Location::parse(location)?, content, replace)
            .await
    }

    /// Edits the writable parent of `location` with `change`, which is handed the line named by
    /// the location's last part (if there is one), that name, and the location as shown.
    async fn edit_named<R>(
        &self,
        location: &Location,
        change: impl FnOnce(&mut Edit<'_>, Option<Listed>, &str, String) -> Result<R, NodeError>,
    ) -> Result<R, NodeError> {
        let (parent, name, _) = self.parent_for_write(location).await?;
        let shown = location.display();
        let verdicts = self
            .verdicts(&DirCap::Write(parent.clone()), Some(&[name.as_str()]))
            .await?;
        self.edit_dir(&parent, move |edit| {
            let line = Listing::lookup_with(edit.state(), &name, &|m| verdicts.cancelled(m));
            change(edit, line, &name, shown)
        })
        .await
    }

    async fn link_at(
        &self,
        location: &Location,
        content: Content,
        replace: bool,
    ) -> Result<(), NodeError> {
        self.edit_named(location, move |edit, existing, name, shown| {
            match existing {
                None => edit.create(EntryId(rand::random()), name, content)?,
                Some(line) if line.content.is_dir() => {
                    return Err(NodeError::IsADirectory(shown));
                }
                Some(_) if !replace => return Err(NodeError::AlreadyExists(shown)),
                Some(line) => edit.set_content(line.id, content)?,
            }
            Ok(())
        })
        .await
    }

    /// Links a file at `location`, or at `location/name` when `location` is a directory or ends
    /// in `/`; replaces a file already there. Returns the path linked.
    pub async fn link_file(
        &self,
        location: &str,
        name: Option<&str>,
        content: Content,
    ) -> Result<String, NodeError> {
        let mut parsed = Location::parse(location)?;
        let into_dir = location.trim_end().ends_with('/')
            || parsed.parts.is_empty()
            || matches!(self.walk(&parsed).await, Ok((Target::Dir(_), _)));
        if into_dir {
            let name = name.ok_or_else(|| {
                NodeError::IsADirectory(format!("{} (give the file a name)", parsed.display()))
            })?;
            parsed.parts.push(name.to_owned());
        }
        self.link_at(&parsed, content, true).await?;
        Ok(parsed.display())
    }

    /// Sets the mode and mtime of the entry at `location` (file, directory or symlink), keeping
    /// its target; a directory keeps its move mark, so moves are judged as before.
    pub async fn set_meta(&self, location: &str, meta: Meta) -> Result<(), NodeError> {
        let location = Location::parse(location)?;
        self.edit_named(&location, move |edit, line, _, shown| {
            set_line_meta(edit, line.ok_or(NodeError::NotFound(shown))?, meta)
        })
        .await
    }

    /// Sets the mode and mtime of many entries of the directory at `location` in one version,
    /// as [`set_meta`](Self::set_meta) does for one. Names no longer there are passed over.
    pub async fn set_meta_many(
        &self,
        location: &str,
        items: Vec<(String, Meta)>,
    ) -> Result<(), NodeError> {
        let location = Location::parse(location)?;
        let (dir, _) = self.walk_dir(&location).await?;
        let DirCap::Write(parent) = dir else {
            return Err(NodeError::ReadOnly(location.display()));
        };
        let names: Vec<&str> = items.iter().map(|(name, _)| name.as_str()).collect();
        let verdicts = self
            .verdicts(&DirCap::Write(parent.clone()), Some(&names))
            .await?;
        self.edit_dir(&parent, move |edit| {
            for (name, meta) in items {
                let line = Listing::lookup_with(edit.state(), &name, &|m| verdicts.cancelled(m));
                if let Some(line) = line {
                    set_line_meta(edit, line, meta)?;
                }
            }
            Ok(())
        })
        .await
    }

    /// Links many entries into the directory at `location` in one version (what `cp -r` uses).
    /// Existing files of the same names are replaced; directories are not.
    pub async fn link_many(
        &self,
        location: &str,
        items: Vec<(String, Content)>,
    ) -> Result<usize, NodeError> {
        let location = Location::parse(location)?;
        for (name, _) in &items {
            check_name(name)?;
        }
        let (dir, _) = self.walk_dir(&location).await?;
        let DirCap::Write(parent) = dir else {
            return Err(NodeError::ReadOnly(location.display()));
        };
        let shown = location.display();
        let names: Vec<&str> = items.iter().map(|(name, _)| name.as_str()).collect();
        let verdicts = self
            .verdicts(&DirCap::Write(parent.clone()), Some(&names))
            .await?;
        self.edit_dir(&parent, move |edit| {
            let count = items.len();
            // Names this batch created, so a name given twice replaces instead of doubling.
            let mut created: std::collections::HashMap<String, EntryId> = Default::default();
            for (name, content) in items {
                if let Some(&id) = created.get(&name) {
                    edit.set_content(id, content)?;
                    continue;
                }
                match Listing::lookup_with(edit.state(), &name, &|m| verdicts.cancelled(m)) {
                    None => {
                        let id = EntryId(rand::random());
                        edit.create(id, &name, content)?;
                        created.insert(name, id);
                    }
                    Some(line) if line.content.is_dir() => {
                        return Err(NodeError::IsADirectory(format!("{shown}/{name}")));
                    }
                    Some(line) => edit.set_content(line.id, content)?,
                }
            }
            Ok(count)
        })
        .await
    }

    /// Removes the entry at `location`; a directory needs `recursive`.
    pub async fn rm(&self, location: &str, recursive: bool) -> Result<(), NodeError> {
        let location = Location::parse(location)?;
        self.edit_named(&location, move |edit, line, _, shown| {
            let line = line.ok_or_else(|| NodeError::NotFound(shown.clone()))?;
            if line.content.is_dir() && !recursive {
                return Err(NodeError::IsADirectory(format!(
                    "{shown} (use -r to remove a directory)"
                )));
            }
            unlink(edit, &line)
        })
        .await
    }

    /// Creates a symlink at `location` pointing at `target`.
    pub async fn symlink(&self, target: &str, location: &str) -> Result<(), NodeError> {
        if target.is_empty() || target.contains('\0') || target.len() > 4096 {
            return Err(NodeError::Invalid(
                "a symlink target must be 1 to 4096 bytes without NUL".into(),
            ));
        }
        let content = Content::Symlink {
            target: target.to_owned(),
            meta: Meta {
                mode: 0o777,
                mtime_ns: now_ns(),
                ..Default::default()
            },
        };
        self.link(location, content, false).await
    }

    /// Moves the entry at `from` to `to` (into `to` when it is a directory).
    pub async fn mv(&self, from: &str, to: &str) -> Result<(), NodeError> {
        let from_loc = Location::parse(from)?;
        let (src_dir, src_name, _) = self.parent_for_write(&from_loc).await?;
        let line = self
            .lookup(&DirCap::Write(src_dir.clone()), &src_name)
            .await?
            .ok_or_else(|| NodeError::NotFound(from_loc.display()))?;
        let mut to_loc = Location::parse(to)?;
        if let Ok((Target::Dir(_), _)) = self.walk(&to_loc).await {
            to_loc.parts.push(src_name.clone());
        }
        let (dst_dir, dst_name, passed) = self.parent_for_write(&to_loc).await?;
        if let Some(child) = child_cap(&DirCap::Write(src_dir.clone()), &line.content) {
            let dst_slot = dst_dir.slot();
            if passed.contains(&child.slot()) || dst_slot == child.slot() {
                return Err(NodeError::Invalid(format!(
                    "cannot move {} into itself",
                    from_loc.display()
                )));
            }
        }
        let shown = to_loc.display();
        if dst_dir.slot() == src_dir.slot() {
            let id = line.id;
            let verdicts = self
                .verdicts(&DirCap::Write(src_dir.clone()), Some(&[dst_name.as_str()]))
                .await?;
            return self
                .edit_dir(&src_dir, move |edit| {
                    let existing =
                        Listing::lookup_with(edit.state(), &dst_name, &|m| verdicts.cancelled(m));
                    if let Some(existing) = existing {
                        if existing.id == id {
                            return Ok(());
                        }
                        if existing.content.is_dir() {
                            return Err(NodeError::IsADirectory(shown));
                        }
                        edit.remove(existing.id)?;
                    }
                    edit.rename(id, &dst_name)?;
                    Ok(())
                })
                .await;
        }
        // Between directories: add at the destination first, then mark or remove at the source,
        // so a failure in between leaves the entry in both places, never in neither. A
        // directory's move is recorded on both sides, so that readers can cancel one of two
        // concurrent moves that would nest directories in each other (see `moves`).
        let single_value = !line.conflict;
        match (
            &line.content,
            child_cap(&DirCap::Write(src_dir.clone()), &line.content),
        ) {
            (
                Content::Dir {
                    read, write, meta, ..
                },
                Some(child),
            ) if single_value => {
                let mut path = passed;
                path.push(dst_dir.slot());
                let movement = Move {
                    dir: child.slot(),
                    from: src_dir.slot(),
                    to: dst_dir.slot(),
                    path,
                    at: self.tick_clock(),
                    writer: self.id(),
                };
                let incoming = Content::Dir {
                    read: child.read_cap(),
                    write: child
                        .write_cap()
                        .map(|c| SealedWriteCap::seal(&dst_dir, c, rand::random())),
                    meta: *meta,
                    moved: Some(Box::new(MoveMark::In(movement.clone()))),
                };
                self.link_at(&to_loc, incoming, true).await?;
                let outgoing = Content::Dir {
                    read: read.clone(),
                    write: write.clone(),
                    meta: *meta,
                    moved: Some(Box::new(MoveMark::Out(movement))),
                };
                let id = line.id;
                self.edit_dir(&src_dir, move |edit| {
                    edit.set_content(id, outgoing)?;
                    Ok(())
                })
                .await
            }
            (content, child) => {
                let content = match (content, child) {
                    (Content::Dir { meta, .. }, Some(DirCap::Write(child))) => {
                        Content::dir(&dst_dir, &child, rand::random(), *meta)
                    }
                    (other, _) => other.clone(),
                };
                self.link_at(&to_loc, content, true).await?;
                self.edit_dir(&src_dir, move |edit| unlink(edit, &line))
                    .await
            }
        }
    }

    /// The cap of the entry at `location`: for a directory its readcap, or its writecap with
    /// `write`; for a file its readcap.
    pub async fn share(&self, location: &str, write: bool) -> Result<String, NodeError> {
        let location = Location::parse(location)?;
        match self.walk(&location).await?.0 {
            Target::Dir(DirCap::Write(w)) if write => Ok(w.to_string()),
            Target::Dir(DirCap::Read(_)) if write => Err(NodeError::ReadOnly(location.display())),
            Target::Dir(cap) => Ok(cap.read_cap().to_string()),
            Target::Other(Content::File { file, .. }) => {
                if write {
                    return Err(NodeError::Invalid(
                        "files are immutable: --write applies to directories".into(),
                    ));
                }
                Ok(file.cap().to_string())
            }
            Target::Other(Content::Symlink { .. }) => Err(NodeError::Invalid(format!(
                "{} is a symlink; share its target",
                location.display()
            ))),
            Target::Other(Content::Dir { .. }) => Err(NodeError::Invalid("unreachable".into())),
        }
    }

    /// Links the file or directory `cap` (from a friend) at `location`.
    pub async fn attach(&self, cap: &str, location: &str) -> Result<(), NodeError> {
        let cap: Cap = cap.parse()?;
        let meta = Meta {
            mode: if cap.is_dir() { 0o755 } else { 0o644 },
            mtime_ns: now_ns(),
            ..Default::default()
        };
        let content = match cap {
            Cap::DirWrite(w) => {
                let location = Location::parse(location)?;
                let (parent, _, _) = self.parent_for_write(&location).await?;
                Content::dir(&parent, &w, rand::random(), meta)
            }
            Cap::DirRead(read) => Content::Dir {
                read,
                write: None,
                meta,
                moved: None,
            },
            Cap::Verify(_) => return Err(NodeError::VerifyCapCannotRead),
            other => Content::File {
                file: cairn_dir::FileRef::new(other)
                    .ok_or_else(|| NodeError::Invalid("unsupported cap".into()))?,
                meta,
            },
        };
        self.link(location, content, false).await
    }

    /// The file cap at `location` (a cap string passes through).
    pub async fn resolve_file(&self, location: &str) -> Result<Cap, NodeError> {
        self.resolve_file_at(&Location::parse(location)?).await
    }

    /// The file cap at a parsed location.
    pub async fn resolve_file_at(&self, parsed: &Location) -> Result<Cap, NodeError> {
        match self.walk(parsed).await?.0 {
            Target::Other(Content::File { file, .. }) => Ok(file.cap()),
            Target::Other(Content::Symlink { target, .. }) => Err(NodeError::Invalid(format!(
                "{} is a symlink to {target}",
                parsed.display()
            ))),
            _ => Err(NodeError::IsADirectory(parsed.display())),
        }
    }

    /// What pinning `location` keeps: the caps of the directories on the way to it and below
    /// it, and the caps of the files below it (or of the file itself).
    pub(crate) async fn pin_set(
        &self,
        location: &str,
    ) -> Result<(Vec<DirCap>, Vec<Cap>), NodeError> {
        let parsed = Location::parse(location)?;
        let mut dirs: Vec<DirCap> = Vec::new();
        let mut target = self.walk_start(&parsed)?;
        for name in &parsed.parts {
            let Target::Dir(dir) = &target else {
                return Err(NodeError::NotADirectory(parsed.display()));
            };
            let line = self
                .lookup(dir, name)
                .await?
                .ok_or_else(|| NodeError::NotFound(parsed.display()))?;
            dirs.push(dir.clone());
            target = match child_cap(dir, &line.content) {
                Some(child) => Target::Dir(child),
                None => Target::Other(line.content.clone()),
            };
        }
        let root = match target {
            Target::Dir(cap) => cap,
            Target::Other(Content::File { file, .. }) => return Ok((dirs, vec![file.cap()])),
            Target::Other(_) => {
                return Err(NodeError::Invalid(format!(
                    "{} is a symlink: pin what it points to",
                    parsed.display()
                )));
            }
        };
        let mut files = Vec::new();
        let mut visited: HashSet<SlotId> = dirs.iter().map(DirCap::slot).collect();
        let mut stack = vec![root];
        while let Some(cap) = stack.pop() {
            if !visited.insert(cap.slot()) {
                continue;
            }
            for line in self.listing(&cap).await?.entries {
                match (child_cap(&cap, &line.content), line.content) {
                    (Some(child), _) => stack.push(child),
                    (None, Content::File { file, .. }) => files.push(file.cap()),
                    (None, _) => {}
                }
            }
            dirs.push(cap);
        }
        Ok((dirs, files))
    }

    /// Every file and directory below `location`, depth first: `(relative path, content)`.
    /// Directories are visited once (a cycle or a directory linked twice is not followed).
    pub async fn walk_tree(&self, location: &str) -> Result<Vec<(String, Content)>, NodeError> {
        let parsed = Location::parse(location)?;
        let (root, _) = self.walk_dir(&parsed).await?;
        let mut out = Vec::new();
        let mut visited: HashSet<SlotId> = HashSet::new();
        let mut stack = vec![(String::new(), root)];
        while let Some((prefix, cap)) = stack.pop() {
            if !visited.insert(cap.slot()) {
                continue;
            }
            let listing = self.listing(&cap).await?;
            for line in listing.entries {
                let path = if prefix.is_empty() {
                    line.name.clone()
                } else {
                    format!("{prefix}/{}", line.name)
                };
                if let Some(child) = child_cap(&cap, &line.content) {
                    stack.push((path.clone(), child));
                }
                out.push((path, line.content));
            }
        }
        Ok(out)
    }
}

//! Changing a directory: each operation becomes a small delta state, joined into the local state
//! at once and collected for publishing as one version.

use cairn_core::NodeId;

use crate::content::Content;
use crate::context::{CausalContext, Dot};
use crate::error::DirError;
use crate::hlc::Hlc;
use crate::name::check_name;
use crate::state::{DirState, Entry, EntryId, MvReg, Stamped};

/// A batch of changes by one writer at one timestamp.
#[derive(Debug)]
pub struct Edit<'a> {
    state: &'a mut DirState,
    writer: NodeId,
    hlc: Hlc,
    next: u64,
    delta: DirState,
    undo: Undo,
}

/// What an edit changed in its state, to put it back when the edit cannot be published.
#[derive(Debug, Default)]
pub struct Undo {
    context: CausalContext,
    frontiers: std::collections::BTreeMap<NodeId, crate::context::VersionVector>,
    entries: std::collections::BTreeMap<EntryId, Option<Entry>>,
}

impl Undo {
    /// Restores `state` to what it was before the edit.
    pub fn undo(self, state: &mut DirState) {
        state.context = self.context;
        state.frontiers = self.frontiers;
        for (id, entry) in self.entries {
            match entry {
                Some(entry) => {
                    state.entries.insert(id, entry);
                }
                None => {
                    state.entries.remove(&id);
                }
            }
        }
    }
}

impl<'a> Edit<'a> {
    /// Starts a batch on `state` by `writer` at `hlc`. `min_counter` is the highest counter the
    /// writer knows it used on this directory (kept locally, in case the state lacks its latest
    /// writes); dots continue after it and after anything the state has seen.
    pub fn new(state: &'a mut DirState, writer: NodeId, hlc: Hlc, min_counter: u64) -> Edit<'a> {
        let next = state.context.max_counter(&writer).max(min_counter) + 1;
        let undo = Undo {
            context: state.context.clone(),
            frontiers: state.frontiers.clone(),
            entries: Default::default(),
        };
        Edit {
            state,
            writer,
            hlc,
            next,
            delta: DirState::default(),
            undo,
        }
    }

    /// The state as changed so far.
    pub fn state(&self) -> &DirState {
        self.state
    }

    fn dot(&mut self) -> Dot {
        let dot = Dot {
            writer: self.writer,
            counter: self.next,
        };
        self.next += 1;
        dot
    }

    fn entry(&self, id: EntryId) -> Result<&Entry, DirError> {
        self.state.entries.get(&id).ok_or(DirError::NoSuchEntry)
    }

    /// Applies one operation's delta: `writes` set registers of `id`, overwriting the dots in
    /// `overwritten`.
    fn apply(&mut self, id: EntryId, op: Entry, overwritten: Vec<Dot>) {
        let mut context = CausalContext::default();
        for dot in overwritten.into_iter().chain(op.dots()) {
            context.insert(dot);
        }
        context.compact();
        let mut delta = DirState {
            context,
            ..DirState::default()
        };
        delta.entries.insert(id, op);
        if !self.undo.entries.contains_key(&id) {
            let before = self.state.entries.get(&id).cloned();
            self.undo.entries.insert(id, before);
        }
        self.state.join_delta(&delta);
        self.delta.join_delta(&delta);
    }

    fn stamp<T>(&self, value: T) -> Stamped<T> {
        Stamped {
            hlc: self.hlc,
            value,
        }
    }

    fn reg<T>(&mut self, value: T) -> MvReg<T> {
        let dot = self.dot();
        let mut reg = MvReg::default();
        reg.0.insert(dot, self.stamp(value));
        reg
    }

    /// Adds a new entry `id` named `name`.
    pub fn create(&mut self, id: EntryId, name: &str, content: Content) -> Result<(), DirError> {
        check_name(name)?;
        let op = Entry {
            name: self.reg(name.to_owned()),
            content: self.reg(content),
            alive: self.reg(true),
        };
        self.apply(id, op, Vec::new());
        Ok(())
    }

    /// Replaces the target of `id` (every current value, so a conflict is resolved) and revives
    /// it if deleted.
    pub fn set_content(&mut self, id: EntryId, content: Content) -> Result<(), DirError> {
        let entry = self.entry(id)?;
        let mut overwritten: Vec<Dot> = entry.content.dots().chain(entry.alive.dots()).collect();
        let revived = self.revival(id, &mut overwritten, true, false)?;
        let op = Entry {
            name: revived.name,
            content: self.reg(content),
            alive: self.reg(true),
        };
        self.apply(id, op, overwritten);
        Ok(())
    }

    /// When `id` is deleted, what a write that brings it back must carry again besides its own
    /// change: its name (`name`) or its content (`content`) as they were, under fresh dots (the
    /// dots they overwrite are added to `overwritten`). A replica that has already forgotten
    /// the deleted entry ([`DirState::collect_garbage`]) receives it whole this way. Nothing for
    /// a live entry.
    fn revival(
        &mut self,
        id: EntryId,
        overwritten: &mut Vec<Dot>,
        name: bool,
        content: bool,
    ) -> Result<Entry, DirError> {
        let entry = self.entry(id)?;
        if entry.is_alive() {
            return Ok(Entry::default());
        }
        let mut again = Entry::default();
        if name {
            again.name = entry.name.clone();
        }
        if content {
            again.content = entry.content.clone();
        }
        overwritten.extend(again.dots());
        again.name = self.redot(again.name);
        again.content = self.redot(again.content);
        Ok(again)
    }

    /// The same values and stamps under fresh dots.
    fn redot<T>(&mut self, reg: MvReg<T>) -> MvReg<T> {
        let mut out = MvReg::default();
        for (_, value) in reg.0 {
            let dot = self.dot();
            out.0.insert(dot, value);
        }
        out
    }

    /// Renames `id` to `name` (keeping its id, so a concurrent edit follows it) and revives it if
    /// deleted.
    pub fn rename(&mut self, id: EntryId, name: &str) -> Result<(), DirError> {
        check_name(name)?;
        let entry = self.entry(id)?;
        let mut overwritten: Vec<Dot> = entry.name.dots().chain(entry.alive.dots()).collect();
        let revived = self.revival(id, &mut overwritten, false, true)?;
        let op = Entry {
            name: self.reg(name.to_owned()),
            content: revived.content,
            alive: self.reg(true),
        };
        self.apply(id, op, overwritten);
        Ok(())
    }

    /// Deletes `id`. A concurrent edit or rename of it wins over this.
    pub fn remove(&mut self, id: EntryId) -> Result<(), DirError> {
        let overwritten = self.entry(id)?.alive.dots().collect();
        let op = Entry {
            alive: self.reg(false),
            ..Entry::default()
        };
        self.apply(id, op, overwritten);
        Ok(())
    }

    /// Drops the concurrent content value written at `drop` from `id`, keeping the others (how a
    /// conflict copy is deleted). The values kept are written again, so every replica ends with
    /// exactly them; with none left the entry is deleted.
    pub fn drop_value(&mut self, id: EntryId, drop: Dot) -> Result<(), DirError> {
        let entry = self.entry(id)?;
        let dropped = entry.content.0.get(&drop).map(|d| d.value.clone());
        let mut keep: Vec<Content> = Vec::new();
        for value in entry.content.0.values() {
            if Some(&value.value) != dropped.as_ref() && !keep.contains(&value.value) {
                keep.push(value.value.clone());
            }
        }
        if keep.is_empty() {
            return self.remove(id);
        }
        let mut overwritten: Vec<Dot> = entry.content.dots().chain(entry.alive.dots()).collect();
        let revived = self.revival(id, &mut overwritten, true, false)?;
        let mut content = MvReg::default();
        for value in keep {
            let dot = self.dot();
            content.0.insert(dot, self.stamp(value));
        }
        let op = Entry {
            name: revived.name,
            content,
            alive: self.reg(true),
        };
        self.apply(id, op, overwritten);
        Ok(())
    }

    /// The delta of the whole batch, with the writer's frontier; `None` if nothing changed.
    pub fn finish(self) -> Option<DirState> {
        self.finish_undoable().map(|(delta, _)| delta)
    }

    /// Undoes every change of the batch.
    pub fn abort(self) {
        self.undo.undo(self.state);
    }

    /// [`finish`](Self::finish), also returning how to undo the batch (if publishing fails).
    pub fn finish_undoable(self) -> Option<(DirState, Undo)> {
        let mut delta = self.delta;
        if delta.entries.is_empty() {
            return None;
        }
        let frontier = self.state.context.vv.clone();
        delta.frontiers.insert(self.writer, frontier.clone());
        self.state
            .frontiers
            .entry(self.writer)
            .or_default()
            .join(&frontier);
        Some((delta, self.undo))
    }
}

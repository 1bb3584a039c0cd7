//! The directory CRDT: entries with stable ids, each a set of multi-value registers, under one
//! causal context (a delta-state "dot store" in the sense of Almeida, Shoker and Baquero).
//!
//! A register maps the [`Dot`] of each write to the value written. Joining two states keeps a
//! value when both have it, or when the other side has not seen its dot; a value the other side
//! has seen but no longer holds was overwritten there and goes. So sequential writes replace,
//! concurrent ones are both kept, and joining is commutative, associative and idempotent.

use std::collections::{BTreeMap, HashMap};

use cairn_core::NodeId;
use serde::{Deserialize, Serialize};

use crate::content::Content;
use crate::context::{CausalContext, Dot, VersionVector};
use crate::hlc::Hlc;

/// A stable entry id: random at creation; the name is an attribute, so a rename keeps the id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EntryId(pub [u8; 16]);

impl EntryId {
    /// The first 8 hex characters, for display.
    pub fn fmt_short(&self) -> String {
        self.0[..4].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// A value and the time it was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamped<T> {
    /// When it was written (orders concurrent values for display only).
    pub hlc: Hlc,
    /// The value.
    pub value: T,
}

/// A small map from dots to values, kept as a sorted vector: a register almost always holds
/// one value, and a tree node per register would cost kilobytes per entry. Encoded exactly as a
/// map (length, then `(dot, value)` pairs in dot order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DotMap<V>(Vec<(Dot, V)>);

impl<V> Default for DotMap<V> {
    fn default() -> Self {
        DotMap(Vec::new())
    }
}

impl<V> DotMap<V> {
    fn find(&self, dot: &Dot) -> Result<usize, usize> {
        self.0.binary_search_by(|(d, _)| d.cmp(dot))
    }

    /// The number of values.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is no value.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value at `dot`.
    pub fn get(&self, dot: &Dot) -> Option<&V> {
        self.find(dot).ok().map(|i| &self.0[i].1)
    }

    /// Whether a value sits at `dot`.
    pub fn contains_key(&self, dot: &Dot) -> bool {
        self.find(dot).is_ok()
    }

    /// Sets the value at `dot`, returning the one it replaces.
    pub fn insert(&mut self, dot: Dot, value: V) -> Option<V> {
        match self.find(&dot) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (dot, value));
                None
            }
        }
    }

    /// Keeps the values `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&Dot, &mut V) -> bool) {
        self.0.retain_mut(|(dot, value)| keep(dot, value));
    }

    /// `(dot, value)` pairs in dot order.
    pub fn iter(&self) -> impl Iterator<Item = (&Dot, &V)> + '_ {
        self.0.iter().map(|(d, v)| (d, v))
    }

    /// The dots, in order.
    pub fn keys(&self) -> impl Iterator<Item = &Dot> + '_ {
        self.0.iter().map(|(d, _)| d)
    }

    /// The values, in dot order.
    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.0.iter().map(|(_, v)| v)
    }
}

impl<'a, V> IntoIterator for &'a DotMap<V> {
    type Item = (&'a Dot, &'a V);
    type IntoIter =
        std::iter::Map<std::slice::Iter<'a, (Dot, V)>, fn(&'a (Dot, V)) -> (&'a Dot, &'a V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(d, v)| (d, v))
    }
}

impl<V> IntoIterator for DotMap<V> {
    type Item = (Dot, V);
    type IntoIter = std::vec::IntoIter<(Dot, V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<V: Serialize> Serialize for DotMap<V> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(d, v)| (d, v)))
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for DotMap<V> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // As a map would: sorted by dot, a repeated dot keeps its last value.
        let pairs: BTreeMap<Dot, V> = BTreeMap::deserialize(deserializer)?;
        Ok(DotMap(pairs.into_iter().collect()))
    }
}

/// A multi-value register: the values of the writes not yet overwritten.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MvReg<T>(pub DotMap<Stamped<T>>);

impl<T> Default for MvReg<T> {
    fn default() -> Self {
        MvReg(DotMap::default())
    }
}

impl<T: Clone> MvReg<T> {
    /// The dots of the current values.
    pub fn dots(&self) -> impl Iterator<Item = Dot> + '_ {
        self.0.keys().copied()
    }

    /// Whether the register holds no value.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value shown when several are concurrent: latest timestamp, then highest dot.
    pub fn winner(&self) -> Option<(Dot, &Stamped<T>)> {
        self.0
            .iter()
            .max_by(|a, b| (a.1.hlc, a.0).cmp(&(b.1.hlc, b.0)))
            .map(|(dot, value)| (*dot, value))
    }

    /// Joins `other` (under `other_ctx`) into `self` (under `self_ctx`).
    fn join(&mut self, self_ctx: &CausalContext, other: &MvReg<T>, other_ctx: &CausalContext) {
        self.0
            .retain(|dot, _| other.0.contains_key(dot) || !other_ctx.contains(dot));
        for (dot, value) in &other.0 {
            if !self.0.contains_key(dot) && !self_ctx.contains(dot) {
                self.0.insert(*dot, value.clone());
            }
        }
    }
}

/// One entry: its name, its target and whether it exists, each a multi-value register.
///
/// Delete writes `false` to `alive`; an edit or rename writes `true`. A listing shows an entry
/// when any alive value is `true`, so an edit concurrent with a delete survives it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Entry {
    /// The entry's name in the directory.
    pub name: MvReg<String>,
    /// What it points at.
    pub content: MvReg<Content>,
    /// Whether it exists.
    pub alive: MvReg<bool>,
}

impl Entry {
    /// Whether a listing shows the entry.
    pub fn is_alive(&self) -> bool {
        self.alive.0.values().any(|v| v.value)
    }

    fn is_empty(&self) -> bool {
        self.name.is_empty() && self.content.is_empty() && self.alive.is_empty()
    }

    /// Every dot the entry holds.
    pub fn dots(&self) -> impl Iterator<Item = Dot> + '_ {
        self.name
            .dots()
            .chain(self.content.dots())
            .chain(self.alive.dots())
    }
}

/// A directory's state, or a delta of it (the same type: a delta is a small state).
///
/// Beside the data it keeps an index from names to the entries that have held them, kept up by
/// [`join`](Self::join) and [`join_delta`](Self::join_delta) (so by every [`Edit`](crate::Edit));
/// code that changes `entries` directly calls [`reindex`](Self::reindex) afterwards.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DirState {
    /// Every write this state has seen.
    pub context: CausalContext,
    /// The entries, by id.
    pub entries: BTreeMap<EntryId, Entry>,
    /// For each writer, what it had seen at its latest write (decides when a deleted entry may
    /// be forgotten).
    pub frontiers: BTreeMap<NodeId, VersionVector>,
    #[serde(skip, default = "NameIndex::unbuilt")]
    pub(crate) names: NameIndex,
}

impl Default for DirState {
    fn default() -> Self {
        DirState {
            context: CausalContext::default(),
            entries: BTreeMap::new(),
            frontiers: BTreeMap::new(),
            names: NameIndex {
                built: true,
                by_name: HashMap::new(),
            },
        }
    }
}

impl PartialEq for DirState {
    /// The data only (not the name index).
    fn eq(&self, other: &Self) -> bool {
        self.context == other.context
            && self.entries == other.entries
            && self.frontiers == other.frontiers
    }
}

impl Eq for DirState {}

/// Which entries have held each name: a superset (a lookup checks each entry's current name),
/// so it only ever grows between rebuilds.
#[derive(Clone)]
pub(crate) struct NameIndex {
    built: bool,
    by_name: HashMap<u64, Vec<EntryId>>,
}

impl std::fmt::Debug for NameIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NameIndex({} names)", self.by_name.len())
    }
}

fn name_key(name: &str) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(name, &mut hasher);
    std::hash::Hasher::finish(&hasher)
}

impl NameIndex {
    fn unbuilt() -> NameIndex {
        NameIndex {
            built: false,
            by_name: HashMap::new(),
        }
    }

    fn note(&mut self, id: EntryId, entry: &Entry) {
        if !self.built {
            return;
        }
        for name in entry.name.0.values() {
            let ids = self.by_name.entry(name_key(&name.value)).or_default();
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
}

impl DirState {
    /// Merges `other` into `self`.
    pub fn join(&mut self, other: &DirState) {
        for (id, theirs) in &other.entries {
            let mine = self.entries.entry(*id).or_default();
            mine.name.join(&self.context, &theirs.name, &other.context);
            mine.content
                .join(&self.context, &theirs.content, &other.context);
            mine.alive
                .join(&self.context, &theirs.alive, &other.context);
            self.names.note(*id, mine);
        }
        // Entries `other` lacks lose the values `other` has seen (overwritten there).
        for (id, mine) in &mut self.entries {
            if !other.entries.contains_key(id) {
                let empty = Entry::default();
                mine.name.join(&self.context, &empty.name, &other.context);
                mine.content
                    .join(&self.context, &empty.content, &other.context);
                mine.alive.join(&self.context, &empty.alive, &other.context);
            }
        }
        self.entries.retain(|_, entry| !entry.is_empty());
        self.context.join(&other.context);
        for (writer, frontier) in &other.frontiers {
            self.frontiers.entry(*writer).or_default().join(frontier);
        }
    }

    /// Merges a delta whose context covers only dots of the entries it carries (every delta an
    /// [`Edit`](crate::Edit) makes: an operation overwrites dots of its own entry only). The
    /// result equals [`join`](Self::join) for such deltas, in time proportional to the delta,
    /// not to this state.
    pub fn join_delta(&mut self, delta: &DirState) {
        for (id, theirs) in &delta.entries {
            let mine = self.entries.entry(*id).or_default();
            mine.name.join(&self.context, &theirs.name, &delta.context);
            mine.content
                .join(&self.context, &theirs.content, &delta.context);
            mine.alive
                .join(&self.context, &theirs.alive, &delta.context);
            self.names.note(*id, mine);
            if mine.is_empty() {
                self.entries.remove(id);
            }
        }
        self.context.join(&delta.context);
        for (writer, frontier) in &delta.frontiers {
            self.frontiers.entry(*writer).or_default().join(frontier);
        }
    }

    /// Rebuilds the name index (after changing `entries` directly).
    pub fn reindex(&mut self) {
        self.names = NameIndex {
            built: true,
            by_name: HashMap::new(),
        };
        for (id, entry) in &self.entries {
            self.names.note(*id, entry);
        }
    }

    /// The entries that may hold `name` (every one that does, and perhaps others); `None` when
    /// the index is not built (a decoded state before [`reindex`](Self::reindex)).
    pub fn name_candidates(&self, name: &str) -> Option<&[EntryId]> {
        if !self.names.built {
            return None;
        }
        Some(
            self.names
                .by_name
                .get(&name_key(name))
                .map_or(&[][..], Vec::as_slice),
        )
    }

    /// The number of entries a listing shows.
    pub fn live_len(&self) -> usize {
        self.entries.values().filter(|e| e.is_alive()).count()
    }

    /// Forgets deleted entries that no known writer can still edit concurrently: every known
    /// writer's frontier covers the delete, and this state has seen each writer's writes up to
    /// its frontier. Returns how many were dropped. Their dots stay in the context, so a replay
    /// of the old writes cannot bring them back.
    pub fn collect_garbage(&mut self) -> usize {
        let writers: Vec<(&NodeId, &VersionVector)> = self.frontiers.iter().collect();
        let settled = |entry: &Entry| {
            !entry.is_alive()
                && entry.alive.dots().all(|dot| {
                    writers.iter().all(|(writer, frontier)| {
                        frontier.covers(&dot) && self.context.vv.get(writer) >= frontier.get(writer)
                    }) && self.frontiers.contains_key(&dot.writer)
                })
        };
        let dead: Vec<EntryId> = self
            .entries
            .iter()
            .filter(|(_, entry)| settled(entry))
            .map(|(id, _)| *id)
            .collect();
        for id in &dead {
            self.entries.remove(id);
        }
        dead.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn a_dot_map_encodes_as_a_map(pairs in proptest::collection::vec((0u8..4, 1u64..9, proptest::prelude::any::<u16>()), 0..8)) {
            let mut tree = BTreeMap::new();
            let mut small = DotMap::default();
            for (w, counter, v) in pairs {
                let dot = Dot { writer: NodeId::from_bytes([w; 32]), counter };
                tree.insert(dot, v);
                small.insert(dot, v);
            }
            let bytes = postcard::to_stdvec(&tree).unwrap();
            proptest::prop_assert_eq!(&postcard::to_stdvec(&small).unwrap(), &bytes);
            let back: DotMap<u16> = postcard::from_bytes(&bytes).unwrap();
            proptest::prop_assert_eq!(back, small);
        }
    }

    #[test]
    fn join_with_an_empty_state_changes_nothing() {
        let mut a = DirState::default();
        let dot = Dot {
            writer: NodeId::from_bytes([1; 32]),
            counter: 1,
        };
        a.context.insert(dot);
        a.context.compact();
        a.entries
            .entry(EntryId([1; 16]))
            .or_default()
            .alive
            .0
            .insert(
                dot,
                Stamped {
                    hlc: Hlc::default(),
                    value: true,
                },
            );
        let before = a.clone();
        a.join(&DirState::default());
        assert_eq!(a, before);
        let mut empty = DirState::default();
        empty.join(&before);
        assert_eq!(empty, before);
    }
}

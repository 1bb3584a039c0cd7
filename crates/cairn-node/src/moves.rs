//! Deciding which moves between directories stand.
//!
//! Two moves made at once can nest two directories in each other (`mv a b/` against
//! `mv b a/`): each alone is fine, together they would cut both from the tree. Every reader
//! decides the same way, without writing anything: moves apply in [`Move::order`] (time, then
//! writer), and a move that would put a directory inside itself, given the earlier moves that
//! stand, is cancelled (its directory stays where it was and does not show at the destination).
//!
//! "Inside itself" is judged on the destination's ancestors as the mover walked them
//! ([`Move::path`]), corrected for earlier moves of those ancestors, which the source directories
//! record. A directory this node cannot read is taken as unmoved.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use cairn_core::id::SlotId;
use cairn_dir::{DirState, Move};

use crate::node::Node;

/// The ordering key of a move.
pub(crate) type MoveKey = (cairn_dir::Hlc, cairn_core::NodeId, SlotId, SlotId, SlotId);

/// Which moves were cancelled, as decided so far.
#[derive(Debug, Default, Clone)]
pub(crate) struct Verdicts(HashMap<MoveKey, bool>);

impl Verdicts {
    /// Whether `m` was cancelled (a move not judged stands).
    pub(crate) fn cancelled(&self, m: &Move) -> bool {
        self.0.get(&m.order()).copied().unwrap_or(false)
    }
}

/// The deepest chain of earlier moves followed before giving up (taken as standing).
const MAX_DEPTH: usize = 32;

/// The move marks in `state`'s entries (all of them, or those of entries that may be named
/// `names`).
pub(crate) fn marks(state: &DirState, names: Option<&[&str]>) -> Vec<Move> {
    let mut out = Vec::new();
    let mut visit = |entry: &cairn_dir::Entry| {
        for value in entry.content.0.values() {
            if let Some(mark) = value.value.move_mark() {
                out.push(mark.movement().clone());
            }
        }
    };
    match names.and_then(|names| {
        names
            .iter()
            .map(|n| state.name_candidates(n))
            .collect::<Option<Vec<_>>>()
    }) {
        Some(candidates) => {
            for id in candidates.into_iter().flatten() {
                if let Some(entry) = state.entries.get(id) {
                    visit(entry);
                }
            }
        }
        None => state.entries.values().for_each(visit),
    }
    out
}

impl Node {
    /// Judges every move in `moves` (and the earlier ones they depend on).
    pub(crate) async fn judge(&self, moves: Vec<Move>) -> Verdicts {
        let mut verdicts = Verdicts::default();
        for m in moves {
            self.cancelled(&m, &mut verdicts, 0).await;
        }
        verdicts
    }

    fn cancelled<'a>(
        &'a self,
        m: &'a Move,
        verdicts: &'a mut Verdicts,
        depth: usize,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>> {
        Box::pin(async move {
            if let Some(&known) = verdicts.0.get(&m.order()) {
                return known;
            }
            if depth > MAX_DEPTH {
                return false;
            }
            // Provisionally standing, so a malformed history cannot recurse forever.
            verdicts.0.insert(m.order(), false);
            let chain = self.chain(m, verdicts, depth).await;
            let cancelled = chain.contains(&m.dir);
            verdicts.0.insert(m.order(), cancelled);
            cancelled
        })
    }

    /// The ancestors of `m.to` (inclusive) when `m` applies: its recorded path, with the deepest
    /// ancestor that an earlier standing move took elsewhere re-rooted under that move's chain.
    fn chain<'a>(
        &'a self,
        m: &'a Move,
        verdicts: &'a mut Verdicts,
        depth: usize,
    ) -> Pin<Box<dyn Future<Output = Vec<SlotId>> + Send + 'a>> {
        Box::pin(async move {
            let path = &m.path;
            for i in (1..path.len()).rev() {
                let (parent, child) = (path[i - 1], path[i]);
                let Some(marks) = self.known_marks(&parent).await else {
                    continue;
                };
                let mut earlier: Vec<Move> = marks
                    .into_iter()
                    .filter(|e| e.dir == child && e.from == parent && e.order() < m.order())
                    .collect();
                earlier.sort_by_key(|e| std::cmp::Reverse(e.order()));
                for e in earlier {
                    if !self.cancelled(&e, verdicts, depth + 1).await {
                        let mut chain = self.chain(&e, verdicts, depth + 1).await;
                        chain.extend_from_slice(&path[i..]);
                        return chain;
                    }
                }
            }
            path.clone()
        })
    }

    /// The move marks of a directory this node has read (as cached, or fetched again with the
    /// cap it used); `None` for a directory it cannot read.
    async fn known_marks(&self, slot: &SlotId) -> Option<Vec<Move>> {
        let cached = match self.cached(slot) {
            Some(cached) => cached,
            None => self.load_dir(&self.known_cap(slot)?).await.ok()?,
        };
        Some(marks(&cached.state, None))
    }
}

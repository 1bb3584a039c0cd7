//! Dots and causal contexts: which writes a replica has seen.
//!
//! Every write gets a [`Dot`]: its writer and that writer's next counter. A [`CausalContext`]
//! is the set of dots seen, kept as a [`VersionVector`] (every counter up to a maximum) plus the
//! few dots seen out of order; [`CausalContext::compact`] folds those in once the gaps close.

use std::collections::{BTreeMap, BTreeSet};

use cairn_core::NodeId;
use serde::{Deserialize, Serialize};

/// One write: the writer's node id and its counter (from 1).
///
/// Decoding refuses counter 0: every context "contains" it (it is below every version vector),
/// so a value written at it would show in the state that carries it and vanish from any state
/// it is joined into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "DotRepr")]
pub struct Dot {
    /// The node that wrote.
    pub writer: NodeId,
    /// The writer's counter for this write (1, 2, 3, ...).
    pub counter: u64,
}

/// Serde form of a [`Dot`] before its counter is checked.
#[derive(Deserialize)]
struct DotRepr {
    writer: NodeId,
    counter: u64,
}

impl TryFrom<DotRepr> for Dot {
    type Error = &'static str;

    fn try_from(repr: DotRepr) -> Result<Dot, Self::Error> {
        if repr.counter == 0 {
            return Err("dot counter 0");
        }
        Ok(Dot {
            writer: repr.writer,
            counter: repr.counter,
        })
    }
}

/// For each writer, the highest counter up to which every write has been seen.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VersionVector(pub BTreeMap<NodeId, u64>);

impl VersionVector {
    /// The counter seen up to for `writer` (0 when none).
    pub fn get(&self, writer: &NodeId) -> u64 {
        self.0.get(writer).copied().unwrap_or(0)
    }

    /// Whether every write up to `dot` by its writer has been seen.
    pub fn covers(&self, dot: &Dot) -> bool {
        self.get(&dot.writer) >= dot.counter
    }

    /// Pointwise maximum.
    pub fn join(&mut self, other: &VersionVector) {
        for (writer, &counter) in &other.0 {
            let mine = self.0.entry(*writer).or_insert(0);
            *mine = (*mine).max(counter);
        }
    }
}

/// The set of dots a state has seen.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CausalContext {
    /// Contiguous prefix per writer.
    pub vv: VersionVector,
    /// Dots seen beyond the contiguous prefix.
    pub cloud: BTreeSet<Dot>,
}

impl CausalContext {
    /// Whether `dot` has been seen.
    pub fn contains(&self, dot: &Dot) -> bool {
        self.vv.covers(dot) || self.cloud.contains(dot)
    }

    /// Records `dot` as seen. A dot that extends its writer's contiguous prefix goes into the
    /// version vector, with any cloud dots it connects.
    pub fn insert(&mut self, dot: Dot) {
        let seen = self.vv.get(&dot.writer);
        if dot.counter <= seen {
            return;
        }
        if dot.counter == seen + 1 {
            self.vv.0.insert(dot.writer, dot.counter);
            self.absorb(dot.writer);
        } else {
            self.cloud.insert(dot);
        }
    }

    /// Drops `writer`'s cloud dots the version vector covers and moves the ones that continue
    /// it into the version vector.
    fn absorb(&mut self, writer: NodeId) {
        let mut seen = self.vv.get(&writer);
        let covered: Vec<Dot> = self
            .cloud
            .range(
                Dot { writer, counter: 0 }..=Dot {
                    writer,
                    counter: seen,
                },
            )
            .copied()
            .collect();
        for dot in covered {
            self.cloud.remove(&dot);
        }
        while self.cloud.remove(&Dot {
            writer,
            counter: seen + 1,
        }) {
            seen += 1;
        }
        if seen > 0 {
            self.vv.0.insert(writer, seen);
        }
    }

    /// The highest counter seen for `writer`, contiguous or not.
    pub fn max_counter(&self, writer: &NodeId) -> u64 {
        let cloud_max = self
            .cloud
            .range(
                Dot {
                    writer: *writer,
                    counter: 0,
                }..=Dot {
                    writer: *writer,
                    counter: u64::MAX,
                },
            )
            .next_back()
            .map_or(0, |dot| dot.counter);
        self.vv.get(writer).max(cloud_max)
    }

    /// Union with `other`. Costs about the size of `other`, not of `self`.
    pub fn join(&mut self, other: &CausalContext) {
        let advanced: Vec<NodeId> = other
            .vv
            .0
            .iter()
            .filter(|(writer, counter)| **counter > self.vv.get(writer))
            .map(|(writer, _)| *writer)
            .collect();
        self.vv.join(&other.vv);
        for writer in advanced {
            self.absorb(writer);
        }
        for dot in &other.cloud {
            self.insert(*dot);
        }
    }

    /// Moves cloud dots that extend a writer's contiguous prefix into the version vector (a
    /// context built only through [`insert`](Self::insert) and [`join`](Self::join) is always
    /// compact already).
    pub fn compact(&mut self) {
        let mut writers: Vec<NodeId> = self.cloud.iter().map(|dot| dot.writer).collect();
        writers.dedup();
        for writer in writers {
            self.absorb(writer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dot(w: u8, counter: u64) -> Dot {
        Dot {
            writer: NodeId::from_bytes([w; 32]),
            counter,
        }
    }

    #[test]
    fn out_of_order_dots_compact_when_the_gap_closes() {
        let mut ctx = CausalContext::default();
        ctx.insert(dot(1, 2));
        ctx.insert(dot(1, 3));
        ctx.compact();
        assert!(!ctx.contains(&dot(1, 1)) && ctx.contains(&dot(1, 3)));
        assert_eq!(ctx.max_counter(&NodeId::from_bytes([1; 32])), 3);
        ctx.insert(dot(1, 1));
        ctx.compact();
        assert!(ctx.cloud.is_empty());
        assert_eq!(ctx.vv.get(&NodeId::from_bytes([1; 32])), 3);
        assert_eq!(ctx.max_counter(&NodeId::from_bytes([2; 32])), 0);
    }

    #[test]
    fn a_dot_with_counter_zero_does_not_decode() {
        let bytes = postcard::to_stdvec(&dot(1, 5)).unwrap();
        assert_eq!(postcard::from_bytes::<Dot>(&bytes).unwrap(), dot(1, 5));
        let zero = postcard::to_stdvec(&dot(1, 0)).unwrap();
        assert!(postcard::from_bytes::<Dot>(&zero).is_err());
    }
}

//! Share placement: rendezvous (highest random weight) hashing of a share root over nodes.
//!
//! Each node's score for a root is the first 8 bytes (big-endian) of
//! `BLAKE3-derive_key("cairn-rank-v1", root || node id)`. Nodes are ranked by descending score,
//! ties broken by ascending node id. Adding a node moves only the roots that node now wins;
//! removing one moves only the roots it held.

use crate::id::{NodeId, ShareRoot};

/// Key-derivation context of placement scores.
const RANK_CONTEXT: &str = "cairn-rank-v1";

/// The score of `node` for `root`.
fn score(root: &ShareRoot, node: &NodeId) -> u64 {
    let mut hasher = blake3::Hasher::new_derive_key(RANK_CONTEXT);
    hasher.update(root.as_bytes());
    hasher.update(node.as_bytes());
    let hash = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    u64::from_be_bytes(first)
}

/// Ranks `nodes` for `root`, best first; duplicates are dropped. Share `i` goes to the `i`-th
/// node of the ranking (wrapping when there are fewer nodes than shares).
pub fn rank(root: &ShareRoot, nodes: &[NodeId]) -> Vec<NodeId> {
    let mut scored: Vec<(u64, NodeId)> = nodes.iter().map(|n| (score(root, n), *n)).collect();
    scored.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().map(|(_, node)| node).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(count: u8) -> Vec<NodeId> {
        (0..count).map(|i| NodeId::from_bytes([i; 32])).collect()
    }

    #[test]
    fn rank_is_a_permutation_independent_of_input_order() {
        let root = ShareRoot::from_bytes([9; 32]);
        let all = nodes(10);
        let ranked = rank(&root, &all);
        let mut reversed = all.clone();
        reversed.reverse();
        assert_eq!(rank(&root, &reversed), ranked);
        let mut sorted = ranked.clone();
        sorted.sort();
        assert_eq!(sorted, all);
        let mut doubled = all.clone();
        doubled.extend_from_slice(&all);
        assert_eq!(rank(&root, &doubled), ranked);
    }

    #[test]
    fn adding_a_node_only_inserts_it() {
        let all = nodes(12);
        for r in 0..50u8 {
            let root = ShareRoot::from_bytes([r; 32]);
            let before = rank(&root, &all[..11]);
            let mut after = rank(&root, &all);
            after.retain(|n| *n != all[11]);
            assert_eq!(before, after);
        }
    }

    #[test]
    fn roots_spread_over_nodes() {
        let all = nodes(5);
        let mut firsts = [0u32; 5];
        for r in 0..=255u8 {
            let root = ShareRoot::from_bytes([r; 32]);
            let best = rank(&root, &all)[0];
            firsts[usize::from(best.as_bytes()[0])] += 1;
        }
        assert!(firsts.iter().all(|&c| c > 20), "{firsts:?}");
    }
}

//! Properties of the directory CRDT under random histories.
//!
//! Three writers edit one directory: create (a name from a small pool, so names collide),
//! set_content, rename, remove and drop_value, in edits of one to three operations. Between
//! edits, replicas exchange whole states or receive the deltas `Edit::finish` returned, in any
//! order, late, or twice. The checks:
//!
//! - join is commutative, associative and idempotent, as states and as listings;
//! - once every delta reaches every replica (each in its own order, with duplicates), all
//!   replicas hold the same state and the same listing;
//! - an entry no remove ever targeted is never lost;
//! - listing names are unique;
//! - a writer's own writes are never missing from its own causal context;
//! - writes that are sequential (one writer, or each writer having seen everything before it
//!   writes) never show a conflict;
//! - collecting garbage where the rule allows it never changes what replicas converge to.
//!
//! Callers behave like a file system: creating a name that exists writes to that entry, and
//! renaming onto a name that exists replaces it (deletes the entry holding it).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure should panic"
)]

use std::collections::BTreeSet;

use cairn_core::{Cap, LiteralCap, NodeId};
use cairn_dir::{Content, DirState, Dot, Edit, EntryId, FileRef, Hlc, Listing, Meta};
use proptest::prelude::*;

const NAMES: &[&str] = &["a", "b", "c", "d", "e"];
/// Milliseconds each replica's clock is off by.
const SKEW: [i64; 3] = [0, 700, -1300];
/// 2026-11-23T16:32:32Z.
const T0: u64 = 1_795_451_552_000;

#[derive(Debug, Clone)]
enum Op {
    /// Create `NAMES[name]`, or write to the entry already holding it.
    Create { name: usize, content: u8 },
    /// Write to a picked entry.
    SetContent { pick: usize, content: u8 },
    /// Rename a picked entry to `NAMES[name]` (replacing the entry that holds it).
    Rename { pick: usize, name: usize },
    /// Delete a picked entry.
    Remove { pick: usize },
    /// Drop the picked line's value (how a conflict copy is deleted).
    DropValue { pick: usize },
}

#[derive(Debug, Clone)]
enum Action {
    /// Replica `r` makes one edit, `advance` ms after the previous action.
    Edit {
        r: usize,
        ops: Vec<Op>,
        advance: u16,
    },
    /// Replica `to` joins replica `from`'s whole state.
    Sync { from: usize, to: usize },
    /// Replica `to` receives published delta number `pick` (modulo their count).
    Deliver { to: usize, pick: usize },
    /// Replica `r` collects garbage (if it knows all three writers).
    Gc { r: usize },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// Anything goes; picks may target deleted entries (which revives them).
    Concurrent,
    /// Before each edit the writer receives every delta published so far, so all writes are
    /// causally ordered; other replicas receive deltas in that order.
    Sequential,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..NAMES.len(), 0..4u8).prop_map(|(name, content)| Op::Create { name, content }),
        3 => (any::<usize>(), 0..4u8).prop_map(|(pick, content)| Op::SetContent { pick, content }),
        2 => (any::<usize>(), 0..NAMES.len()).prop_map(|(pick, name)| Op::Rename { pick, name }),
        2 => any::<usize>().prop_map(|pick| Op::Remove { pick }),
        1 => any::<usize>().prop_map(|pick| Op::DropValue { pick }),
    ]
}

fn action(writers: usize, gc: bool) -> impl Strategy<Value = Action> {
    prop_oneof![
        5 => (0..writers, prop::collection::vec(op(), 1..=3), 0..3000u16)
            .prop_map(|(r, ops, advance)| Action::Edit { r, ops, advance }),
        1 => (0..3usize, 0..3usize).prop_map(|(from, to)| Action::Sync { from, to }),
        4 => (0..3usize, any::<usize>()).prop_map(|(to, pick)| Action::Deliver { to, pick }),
        (if gc { 1 } else { 0 }) => (0..3usize).prop_map(|r| Action::Gc { r }),
    ]
}

fn file(byte: u8) -> Content {
    let cap = Cap::Literal(LiteralCap { data: vec![byte] });
    Content::File {
        file: FileRef::new(cap).unwrap(),
        meta: Meta {
            mode: 0o644,
            mtime_ns: 0,
            ..Default::default()
        },
    }
}

struct Replica {
    writer: NodeId,
    state: DirState,
    hlc: Hlc,
}

struct World {
    mode: Mode,
    replicas: Vec<Replica>,
    published: Vec<DirState>,
    now: u64,
    next_id: u64,
    /// Every entry ever created.
    created: BTreeSet<EntryId>,
    /// Entries some remove or drop_value targeted.
    targeted: BTreeSet<EntryId>,
    collected: bool,
}

impl World {
    fn new(mode: Mode) -> World {
        World {
            mode,
            replicas: (0..3u8)
                .map(|i| Replica {
                    writer: NodeId::from_bytes([0x10 * (i + 1); 32]),
                    state: DirState::default(),
                    hlc: Hlc::default(),
                })
                .collect(),
            published: Vec::new(),
            now: T0,
            next_id: 0,
            created: BTreeSet::new(),
            targeted: BTreeSet::new(),
            collected: false,
        }
    }

    fn run(&mut self, action: &Action) {
        match action {
            Action::Edit { r, ops, advance } => {
                self.now += u64::from(*advance);
                if self.mode == Mode::Sequential {
                    for delta in &self.published {
                        self.replicas[*r].state.join(delta);
                    }
                }
                self.edit(*r, ops);
            }
            Action::Sync { from, to } => {
                let other = self.replicas[*from].state.clone();
                self.replicas[*to].state.join(&other);
            }
            Action::Deliver { to, pick } => {
                if !self.published.is_empty() {
                    let pick = pick % self.published.len();
                    if self.mode == Mode::Sequential {
                        // Deltas in publishing order: a reader follows parents, so what it
                        // holds is causally closed (out-of-order deltas may show a conflict
                        // for a while that no writer ever saw).
                        for delta in &self.published[..=pick] {
                            self.replicas[*to].state.join(delta);
                        }
                    } else {
                        // A delta merges the same way through the fast path.
                        let mut fast = self.replicas[*to].state.clone();
                        fast.join_delta(&self.published[pick]);
                        self.replicas[*to].state.join(&self.published[pick]);
                        assert_eq!(
                            fast, self.replicas[*to].state,
                            "join_delta differs from join"
                        );
                    }
                }
            }
            Action::Gc { r } => {
                let state = &mut self.replicas[*r].state;
                // The rule covers known writers only: wait until all three have written.
                if state.frontiers.len() == 3 && state.collect_garbage() > 0 {
                    self.collected = true;
                }
            }
        }
    }

    fn edit(&mut self, r: usize, ops: &[Op]) {
        let wall = self.now.saturating_add_signed(SKEW[r]);
        let replica = &mut self.replicas[r];
        replica.hlc = replica.hlc.next(wall);
        let min_counter = replica.state.context.max_counter(&replica.writer);
        let mut edit = Edit::new(&mut replica.state, replica.writer, replica.hlc, min_counter);
        for op in ops {
            let listing = Listing::of(edit.state());
            // Lines of the listing (id and shown dot), then, when allowed, deleted entries.
            let mut targets: Vec<(EntryId, Option<Dot>)> = listing
                .entries
                .iter()
                .map(|l| (l.id, Some(l.dot)))
                .collect();
            if self.mode == Mode::Concurrent {
                targets.extend(
                    edit.state()
                        .entries
                        .iter()
                        .filter(|(_, e)| !e.is_alive())
                        .map(|(id, _)| (*id, None)),
                );
            }
            let pick = |i: usize| (!targets.is_empty()).then(|| targets[i % targets.len()]);
            match *op {
                Op::Create { name, content } => {
                    let name = NAMES[name];
                    match listing.get(name) {
                        Some(line) => edit.set_content(line.id, file(content)).unwrap(),
                        None => {
                            self.next_id += 1;
                            let mut id = [0u8; 16];
                            id[..8].copy_from_slice(&self.next_id.to_be_bytes());
                            let id = EntryId(id);
                            self.created.insert(id);
                            edit.create(id, name, file(content)).unwrap();
                        }
                    }
                }
                Op::SetContent { pick: i, content } => {
                    if let Some((id, _)) = pick(i) {
                        edit.set_content(id, file(content)).unwrap();
                    }
                }
                Op::Rename { pick: i, name } => {
                    if let Some((id, _)) = pick(i) {
                        let name = NAMES[name];
                        if let Some(holder) = listing.get(name)
                            && holder.id != id
                        {
                            self.targeted.insert(holder.id);
                            edit.remove(holder.id).unwrap();
                        }
                        edit.rename(id, name).unwrap();
                    }
                }
                Op::Remove { pick: i } => {
                    if let Some((id, _)) = pick(i) {
                        self.targeted.insert(id);
                        edit.remove(id).unwrap();
                    }
                }
                Op::DropValue { pick: i } => {
                    if let Some((id, Some(dot))) = pick(i) {
                        self.targeted.insert(id);
                        edit.drop_value(id, dot).unwrap();
                    }
                }
            }
        }
        if let Some(delta) = edit.finish() {
            self.published.push(delta);
        }
    }

    /// Invariants that hold at every step, on every replica.
    fn check(&self) -> Result<(), TestCaseError> {
        for (r, replica) in self.replicas.iter().enumerate() {
            let listing = Listing::of(&replica.state);
            for line in &listing.entries {
                let found = Listing::lookup(&replica.state, &line.name);
                prop_assert_eq!(
                    found.as_ref(),
                    Some(line),
                    "lookup differs from the listing"
                );
            }
            for name in NAMES {
                if let Some(plain) = Listing::plain_line(&replica.state, name, &|_| false) {
                    prop_assert_eq!(
                        plain.as_ref(),
                        listing.get(name),
                        "the plain line of {} differs from the listing",
                        name
                    );
                }
            }
            let names: BTreeSet<&str> = listing.entries.iter().map(|l| l.name.as_str()).collect();
            prop_assert_eq!(
                names.len(),
                listing.entries.len(),
                "duplicate names at {}",
                r
            );
            let shown: BTreeSet<EntryId> = listing.entries.iter().map(|l| l.id).collect();
            for (id, entry) in &replica.state.entries {
                if !self.targeted.contains(id) {
                    prop_assert!(entry.is_alive(), "replica {} lost {:?}", r, id);
                    // A replica that got a later write before the create (deltas out of
                    // order) knows no content yet and cannot show the entry.
                    prop_assert!(
                        shown.contains(id) || entry.content.is_empty(),
                        "replica {} hides {:?}",
                        r,
                        id
                    );
                }
            }
            prop_assert!(
                replica
                    .state
                    .context
                    .cloud
                    .iter()
                    .all(|dot| dot.writer != replica.writer),
                "replica {} misses some of its own writes: {:?}",
                r,
                replica.state.context
            );
            if self.mode == Mode::Sequential {
                prop_assert!(
                    !listing.has_conflicts(),
                    "sequential writes show a conflict at {}: {:#?}",
                    r,
                    listing
                );
            }
        }
        Ok(())
    }

    /// Delivers every delta to every replica, each in its own order given by `seed`, some twice.
    fn deliver_everything(&mut self, seed: u64) {
        let mut rng = seed | 1;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let n = self.published.len();
        for replica in &mut self.replicas {
            let mut order: Vec<usize> = (0..n).collect();
            for i in (1..n).rev() {
                order.swap(i, (next() % (i as u64 + 1)) as usize);
            }
            for _ in 0..n / 3 {
                order.push((next() % n as u64) as usize);
            }
            for i in order {
                replica.state.join(&self.published[i]);
            }
        }
    }
}

fn joined(a: &DirState, b: &DirState) -> DirState {
    let mut out = a.clone();
    out.join(b);
    out
}

/// Commutativity, associativity and idempotence on three states.
fn check_join_laws(a: &DirState, b: &DirState, c: &DirState) -> Result<(), TestCaseError> {
    let ab = joined(a, b);
    let ba = joined(b, a);
    prop_assert_eq!(Listing::of(&ab), Listing::of(&ba));
    prop_assert_eq!(&ab, &ba, "join is not commutative");
    let left = joined(&ab, c);
    let right = joined(a, &joined(b, c));
    prop_assert_eq!(Listing::of(&left), Listing::of(&right));
    prop_assert_eq!(&left, &right, "join is not associative");
    for s in [a, b, c, &ab] {
        prop_assert_eq!(&joined(s, s), s, "join is not idempotent");
    }
    Ok(())
}

fn run_history(mode: Mode, actions: &[Action], seed: u64) -> Result<World, TestCaseError> {
    let mut world = World::new(mode);
    for action in actions {
        world.run(action);
        world.check()?;
    }
    let [a, b, c] = [0, 1, 2].map(|r| world.replicas[r].state.clone());
    check_join_laws(&a, &b, &c)?;
    // Deltas are states too: the laws hold between a replica and deltas.
    if world.published.len() >= 2 {
        let first = world.published[0].clone();
        let last = world.published[world.published.len() - 1].clone();
        check_join_laws(&a, &first, &last)?;
    }

    world.deliver_everything(seed);
    world.check()?;
    let listing = Listing::of(&world.replicas[0].state);
    for replica in &world.replicas[1..] {
        prop_assert_eq!(&Listing::of(&replica.state), &listing, "replicas diverge");
        if !world.collected {
            prop_assert_eq!(&replica.state, &world.replicas[0].state);
        }
    }
    let shown: BTreeSet<EntryId> = listing.entries.iter().map(|l| l.id).collect();
    for id in world.created.difference(&world.targeted) {
        prop_assert!(shown.contains(id), "{:?} was never removed but is gone", id);
    }
    Ok(world)
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(96)
}

proptest! {
    // A few seconds in a debug build; PROPTEST_CASES=5000 for a longer hunt.
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn concurrent_histories_converge(
        actions in prop::collection::vec(action(3, false), 1..40),
        seed in any::<u64>(),
    ) {
        run_history(Mode::Concurrent, &actions, seed)?;
    }

    #[test]
    fn histories_with_garbage_collection_converge(
        actions in prop::collection::vec(action(3, true), 1..40),
        seed in any::<u64>(),
    ) {
        let mut world = run_history(Mode::Concurrent, &actions, seed)?;
        // Once everything is delivered, collecting anywhere changes no listing, and replaying
        // every delta into a collected replica brings nothing back.
        let before = Listing::of(&world.replicas[0].state);
        world.replicas[1].state.collect_garbage();
        prop_assert_eq!(&Listing::of(&world.replicas[1].state), &before);
        world.deliver_everything(seed.rotate_left(17));
        for replica in &world.replicas {
            prop_assert_eq!(&Listing::of(&replica.state), &before);
        }
        let kept = world.replicas[0].state.clone();
        world.replicas[1].state.join(&kept);
        prop_assert_eq!(&Listing::of(&world.replicas[1].state), &before);
    }

    #[test]
    fn sequential_writes_by_several_writers_never_conflict(
        actions in prop::collection::vec(action(3, false), 1..40),
        seed in any::<u64>(),
    ) {
        run_history(Mode::Sequential, &actions, seed)?;
    }

    #[test]
    fn a_single_writer_never_conflicts(
        actions in prop::collection::vec(action(1, false), 1..40),
        seed in any::<u64>(),
    ) {
        let world = run_history(Mode::Sequential, &actions, seed)?;
        prop_assert!(!Listing::of(&world.replicas[2].state).has_conflicts());
    }
}

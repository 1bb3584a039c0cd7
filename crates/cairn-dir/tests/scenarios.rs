//! Scenario tests of the directory CRDT: two replicas, A and B, each make an edit concurrently
//! (neither has seen the other's), then exchange the deltas their edits returned. Each test
//! reads as the story it checks; both replicas must end with the same listing.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure should panic"
)]

use cairn_core::{Cap, DirReadCap, DirWriteCap, LiteralCap, NodeId, ReadCap, ReadKey, ShareRoot};
use cairn_dir::{
    Content, DirError, DirState, Edit, EntryId, FileRef, Hlc, Listing, MAX_FUTURE_MS, Meta,
    Version, VersionBody, VersionId, conflict_name,
};

/// 2026-11-23T16:32:32Z, in milliseconds.
const T0: u64 = 1_795_451_552_000;

fn at(millis: u64) -> Hlc {
    Hlc { millis, counter: 0 }
}

fn meta() -> Meta {
    Meta {
        mode: 0o644,
        mtime_ns: 1_700_000_000_000_000_000,
        ..Default::default()
    }
}

/// A small file whose bytes are `text` (a literal cap).
fn file(text: &str) -> Content {
    let cap = Cap::Literal(LiteralCap {
        data: text.as_bytes().to_vec(),
    });
    Content::File {
        file: FileRef::new(cap).unwrap(),
        meta: meta(),
    }
}

fn id(n: u8) -> EntryId {
    EntryId([n; 16])
}

struct Replica {
    writer: NodeId,
    state: DirState,
}

impl Replica {
    fn new(byte: u8) -> Replica {
        Replica {
            writer: NodeId::from_bytes([byte; 32]),
            state: DirState::default(),
        }
    }

    /// One edit at `millis`; returns the delta to publish.
    fn edit(&mut self, millis: u64, ops: impl FnOnce(&mut Edit<'_>)) -> DirState {
        let mut edit = Edit::new(&mut self.state, self.writer, at(millis), 0);
        ops(&mut edit);
        edit.finish().expect("the edit changed something")
    }

    fn receive(&mut self, delta: &DirState) {
        self.state.join(delta);
    }

    fn listing(&self) -> Listing {
        Listing::of(&self.state)
    }

    /// The first 8 hex characters of the writer's id, as in conflict names.
    fn short(&self) -> String {
        self.writer.fmt_short()[..8].to_string()
    }
}

/// A and B, both holding a directory with `a.txt` (entry 1, "v1") written by A.
fn two_replicas_with_a_file() -> (Replica, Replica) {
    let mut a = Replica::new(0xaa);
    let mut b = Replica::new(0xbb);
    let d = a.edit(T0, |e| e.create(id(1), "a.txt", file("v1")).unwrap());
    b.receive(&d);
    assert_eq!(a.listing(), b.listing());
    (a, b)
}

/// Delivers each side's delta to the other and checks that both now list the same.
fn exchange(a: &mut Replica, da: &DirState, b: &mut Replica, db: &DirState) -> Listing {
    a.receive(db);
    b.receive(da);
    let listing = a.listing();
    assert_eq!(listing, b.listing(), "replicas disagree after the exchange");
    assert_eq!(a.state, b.state, "replica states differ after the exchange");
    listing
}

fn names(listing: &Listing) -> Vec<&str> {
    listing.entries.iter().map(|l| l.name.as_str()).collect()
}

#[test]
fn different_names_created_concurrently_are_both_kept() {
    let mut a = Replica::new(0xaa);
    let mut b = Replica::new(0xbb);
    let da = a.edit(T0, |e| e.create(id(1), "a.txt", file("from a")).unwrap());
    let db = b.edit(T0 + 5, |e| {
        e.create(id(2), "b.txt", file("from b")).unwrap()
    });
    let listing = exchange(&mut a, &da, &mut b, &db);
    assert_eq!(names(&listing), ["a.txt", "b.txt"]);
    assert!(!listing.has_conflicts());
}

#[test]
fn same_name_created_concurrently_keeps_both_under_a_conflict_name() {
    let mut a = Replica::new(0xaa);
    let mut b = Replica::new(0xbb);
    let da = a.edit(T0, |e| e.create(id(1), "notes", file("from a")).unwrap());
    // B writes one second later: B's entry keeps the plain name.
    let db = b.edit(T0 + 1000, |e| {
        e.create(id(2), "notes", file("from b")).unwrap()
    });
    let listing = exchange(&mut a, &da, &mut b, &db);
    let copy = format!("notes.conflict-{}-20261123T163232Z", a.short());
    assert_eq!(conflict_name("notes", &a.writer, at(T0)), copy);
    assert_eq!(names(&listing), ["notes", copy.as_str()]);
    let main = listing.get("notes").unwrap();
    assert_eq!((main.id, &main.content), (id(2), &file("from b")));
    let other = listing.get(&copy).unwrap();
    assert_eq!((other.id, &other.content), (id(1), &file("from a")));
    assert!(main.conflict && other.conflict);
}

#[test]
fn concurrent_content_writes_are_both_kept_as_a_conflict() {
    let (mut a, mut b) = two_replicas_with_a_file();
    let da = a.edit(T0 + 2000, |e| e.set_content(id(1), file("a's v2")).unwrap());
    let db = b.edit(T0 + 3000, |e| e.set_content(id(1), file("b's v2")).unwrap());
    let listing = exchange(&mut a, &da, &mut b, &db);
    let copy = format!("a.txt.conflict-{}-20261123T163234Z", a.short());
    assert_eq!(names(&listing), ["a.txt", copy.as_str()]);
    assert_eq!(listing.get("a.txt").unwrap().content, file("b's v2"));
    assert_eq!(listing.get(&copy).unwrap().content, file("a's v2"));
    assert!(listing.entries.iter().all(|l| l.conflict && l.id == id(1)));
}

#[test]
fn concurrent_writes_of_the_same_bytes_are_no_conflict() {
    let (mut a, mut b) = two_replicas_with_a_file();
    let da = a.edit(T0 + 2000, |e| e.set_content(id(1), file("same")).unwrap());
    let db = b.edit(T0 + 3000, |e| e.set_content(id(1), file("same")).unwrap());
    let listing = exchange(&mut a, &da, &mut b, &db);
    assert_eq!(names(&listing), ["a.txt"]);
    assert!(!listing.has_conflicts());
}

#[test]
fn edit_wins_over_a_concurrent_delete() {
    let (mut a, mut b) = two_replicas_with_a_file();
    let da = a.edit(T0 + 2000, |e| e.set_content(id(1), file("v2")).unwrap());
    // The delete is later in wall-clock time, and still loses.
    let db = b.edit(T0 + 9000, |e| e.remove(id(1)).unwrap());
    let listing = exchange(&mut a, &da, &mut b, &db);
    assert_eq!(names(&listing), ["a.txt"]);
    assert_eq!(listing.get("a.txt").unwrap().content, file("v2"));
    assert!(!listing.has_conflicts());
}

#[test]
fn rename_and_concurrent_edit_both_apply_without_conflict() {
    let (mut a, mut b) = two_replicas_with_a_file();
    let da = a.edit(T0 + 2000, |e| e.rename(id(1), "renamed.txt").unwrap());
    let db = b.edit(T0 + 3000, |e| e.set_content(id(1), file("v2")).unwrap());
    let listing = exchange(&mut a, &da, &mut b, &db);
    assert_eq!(names(&listing), ["renamed.txt"]);
    let line = listing.get("renamed.txt").unwrap();
    assert_eq!((line.id, &line.content), (id(1), &file("v2")));
    assert!(!line.conflict);
}

#[test]
fn rename_wins_over_a_concurrent_delete() {
    let (mut a, mut b) = two_replicas_with_a_file();
    let da = a.edit(T0 + 2000, |e| e.rename(id(1), "kept.txt").unwrap());
    let db = b.edit(T0 + 3000, |e| e.remove(id(1)).unwrap());
    let listing = exchange(&mut a, &da, &mut b, &db);
    assert_eq!(names(&listing), ["kept.txt"]);
    assert_eq!(listing.get("kept.txt").unwrap().content, file("v1"));
    assert!(!listing.has_conflicts());
}

#[test]
fn concurrent_renames_to_the_same_name_are_no_conflict() {
    let (mut a, mut b) = two_replicas_with_a_file();
    let da = a.edit(T0 + 2000, |e| e.rename(id(1), "same").unwrap());
    let db = b.edit(T0 + 3000, |e| e.rename(id(1), "same").unwrap());
    let listing = exchange(&mut a, &da, &mut b, &db);
    assert_eq!(names(&listing), ["same"]);
    assert!(!listing.has_conflicts());
}

#[test]
fn concurrent_renames_to_different_names_show_the_latest_as_a_conflict() {
    let (mut a, mut b) = two_replicas_with_a_file();
    let da = a.edit(T0 + 2000, |e| e.rename(id(1), "by-a").unwrap());
    let db = b.edit(T0 + 3000, |e| e.rename(id(1), "by-b").unwrap());
    let listing = exchange(&mut a, &da, &mut b, &db);
    assert_eq!(names(&listing), ["by-b"]);
    assert!(listing.get("by-b").unwrap().conflict);
    // Renaming again (having seen both) settles it.
    let d = a.edit(T0 + 4000, |e| e.rename(id(1), "settled").unwrap());
    b.receive(&d);
    assert_eq!(names(&b.listing()), ["settled"]);
    assert!(!b.listing().has_conflicts());
}

#[test]
fn a_write_after_seeing_the_other_replaces_without_conflict() {
    let (mut a, mut b) = two_replicas_with_a_file();
    let db = b.edit(T0 + 2000, |e| e.set_content(id(1), file("b's v2")).unwrap());
    a.receive(&db);
    // A writes after having seen B's write, even with an older clock: it replaces.
    let da = a.edit(T0 + 1000, |e| e.set_content(id(1), file("a's v3")).unwrap());
    b.receive(&da);
    for r in [&a, &b] {
        let listing = r.listing();
        assert_eq!(names(&listing), ["a.txt"]);
        assert_eq!(listing.get("a.txt").unwrap().content, file("a's v3"));
        assert!(!listing.has_conflicts());
    }
    assert_eq!(a.state, b.state);
}

#[test]
fn dropping_a_conflict_copy_resolves_the_conflict_everywhere() {
    let (mut a, mut b) = two_replicas_with_a_file();
    let da = a.edit(T0 + 2000, |e| e.set_content(id(1), file("a's v2")).unwrap());
    let db = b.edit(T0 + 3000, |e| e.set_content(id(1), file("b's v2")).unwrap());
    let listing = exchange(&mut a, &da, &mut b, &db);
    let copy = listing
        .entries
        .iter()
        .find(|l| l.name != "a.txt")
        .unwrap()
        .clone();
    // A deletes the conflict copy (its own value); B, meanwhile, changes nothing.
    let d = a.edit(T0 + 4000, |e| e.drop_value(copy.id, copy.dot).unwrap());
    b.receive(&d);
    for r in [&a, &b] {
        let listing = r.listing();
        assert_eq!(names(&listing), ["a.txt"]);
        assert_eq!(listing.get("a.txt").unwrap().content, file("b's v2"));
        assert!(!listing.has_conflicts());
    }
    assert_eq!(a.state, b.state);
}

#[test]
fn dropping_the_only_value_deletes_the_entry() {
    let (mut a, mut b) = two_replicas_with_a_file();
    let line = a.listing().get("a.txt").unwrap().clone();
    let d = a.edit(T0 + 2000, |e| e.drop_value(line.id, line.dot).unwrap());
    b.receive(&d);
    assert!(a.listing().entries.is_empty() && b.listing().entries.is_empty());
}

#[test]
fn edits_of_a_missing_entry_are_refused() {
    let mut a = Replica::new(0xaa);
    let mut edit = Edit::new(&mut a.state, a.writer, at(T0), 0);
    assert!(matches!(
        edit.set_content(id(9), file("x")),
        Err(DirError::NoSuchEntry)
    ));
    assert!(matches!(edit.remove(id(9)), Err(DirError::NoSuchEntry)));
    assert!(matches!(
        edit.create(id(9), "a/b", file("x")),
        Err(DirError::BadName { .. })
    ));
    assert!(edit.finish().is_none());
}

#[test]
fn garbage_collection_waits_for_every_writer_and_replays_do_not_resurrect() {
    let mut a = Replica::new(0xaa);
    let mut b = Replica::new(0xbb);
    let created = a.edit(T0, |e| e.create(id(1), "gone.txt", file("v1")).unwrap());
    b.receive(&created);
    let touched = b.edit(T0 + 1000, |e| e.set_content(id(1), file("v2")).unwrap());
    a.receive(&touched);
    let deleted = a.edit(T0 + 2000, |e| e.remove(id(1)).unwrap());
    b.receive(&deleted);
    assert!(a.listing().entries.is_empty() && b.listing().entries.is_empty());

    // B's frontier (its latest write) predates the delete: B might still be editing
    // concurrently, so nobody may forget the entry yet.
    assert_eq!(a.state.collect_garbage(), 0);
    assert_eq!(b.state.collect_garbage(), 0);
    assert!(a.state.entries.contains_key(&id(1)));

    // B writes something else, having seen the delete: its frontier now covers it.
    let later = b.edit(T0 + 3000, |e| e.create(id(2), "other", file("x")).unwrap());
    // A has not seen B's new write yet: still no.
    assert_eq!(a.state.collect_garbage(), 0);
    a.receive(&later);
    assert_eq!(a.state.collect_garbage(), 1);
    assert!(!a.state.entries.contains_key(&id(1)));
    assert_eq!(b.state.collect_garbage(), 1);

    // Old deltas delivered again (late or duplicated) do not bring the entry back.
    for old in [&created, &touched, &deleted, &later] {
        a.receive(old);
    }
    assert!(!a.state.entries.contains_key(&id(1)));
    assert_eq!(names(&a.listing()), ["other"]);
    assert_eq!(a.listing(), b.listing());
}

#[test]
fn a_state_that_still_holds_the_tombstone_agrees_with_a_collected_one() {
    let mut a = Replica::new(0xaa);
    let mut b = Replica::new(0xbb);
    let created = a.edit(T0, |e| e.create(id(1), "gone.txt", file("v1")).unwrap());
    b.receive(&created);
    let deleted = a.edit(T0 + 1000, |e| e.remove(id(1)).unwrap());
    b.receive(&deleted);
    let d = b.edit(T0 + 2000, |e| e.create(id(2), "other", file("x")).unwrap());
    a.receive(&d);
    let kept = a.state.clone();
    assert_eq!(a.state.collect_garbage(), 1);
    // Joining the uncollected state either way forgets the tombstone.
    let mut merged = kept.clone();
    merged.join(&a.state);
    assert!(!merged.entries.contains_key(&id(1)));
    a.state.join(&kept);
    assert_eq!(a.state, merged);
}

#[test]
fn reviving_a_collected_entry_shows_it_the_same_everywhere() {
    // A deletes an entry; every writer has seen the delete, so A forgets it. B still holds the
    // tombstone and brings the entry back by writing to it (a sequential write, not a
    // concurrent one). A must show the revived entry as B does, name included.
    let mut a = Replica::new(0xaa);
    let mut b = Replica::new(0xbb);
    let created = a.edit(T0, |e| e.create(id(1), "phoenix", file("v1")).unwrap());
    b.receive(&created);
    let deleted = a.edit(T0 + 1000, |e| e.remove(id(1)).unwrap());
    b.receive(&deleted);
    let other = b.edit(T0 + 2000, |e| e.create(id(2), "other", file("x")).unwrap());
    a.receive(&other);
    assert_eq!(a.state.collect_garbage(), 1);

    let revived = b.edit(T0 + 3000, |e| e.set_content(id(1), file("v2")).unwrap());
    a.receive(&revived);
    assert_eq!(names(&b.listing()), ["other", "phoenix"]);
    assert_eq!(a.listing(), b.listing());

    // The same for a rename of the deleted entry.
    let deleted = b.edit(T0 + 4000, |e| e.remove(id(1)).unwrap());
    a.receive(&deleted);
    let d = a.edit(T0 + 5000, |e| e.create(id(3), "third", file("y")).unwrap());
    b.receive(&d);
    assert_eq!(b.state.collect_garbage(), 1);
    let renamed = a.edit(T0 + 6000, |e| e.rename(id(1), "risen").unwrap());
    b.receive(&renamed);
    assert_eq!(names(&a.listing()), ["other", "risen", "third"]);
    assert_eq!(a.listing(), b.listing());
}

#[test]
fn far_future_timestamps_are_clamped() {
    let now = T0;
    // A peer whose clock is a year ahead: we follow it no further than MAX_FUTURE_MS.
    let seen = Hlc {
        millis: now + 365 * 86_400_000,
        counter: 42,
    };
    let next = seen.next(now);
    assert_eq!(
        next,
        Hlc {
            millis: now + MAX_FUTURE_MS,
            counter: 1
        }
    );
    assert_eq!(seen.clamped(now), at(now + MAX_FUTURE_MS));
    // Within the limit a later peer is followed, and our clock never goes back.
    let near = Hlc {
        millis: now + 1000,
        counter: 3,
    };
    assert_eq!(
        near.next(now),
        Hlc {
            millis: now + 1000,
            counter: 4
        }
    );
    assert!(next.next(now) > next);
    assert_eq!(
        next.next(now + MAX_FUTURE_MS + 1),
        at(now + MAX_FUTURE_MS + 1)
    );
}

/// A delta holding a file (readcap), a literal file, a subdirectory and a symlink.
fn rich_delta(parent: &DirWriteCap, child: &DirWriteCap) -> (DirState, NodeId) {
    let mut a = Replica::new(0xaa);
    let read = Cap::Read(ReadCap {
        root: ShareRoot::from_bytes([1; 32]),
        key: ReadKey::from_bytes([2; 32]),
        size: 123_456,
    });
    let delta = a.edit(T0, |e| {
        e.create(
            id(1),
            "big.bin",
            Content::File {
                file: FileRef::new(read).unwrap(),
                meta: meta(),
            },
        )
        .unwrap();
        e.create(id(2), "small.txt", file("hello\n")).unwrap();
        e.create(
            id(3),
            "sub",
            Content::dir(
                parent,
                child,
                [7; 32],
                Meta {
                    mode: 0o755,
                    mtime_ns: 0,
                    owner: Some((1000, 100)),
                    atime_ns: Some(42),
                },
            ),
        )
        .unwrap();
        e.create(
            id(4),
            "link",
            Content::Symlink {
                target: "../elsewhere/ünï".into(),
                meta: meta(),
            },
        )
        .unwrap();
        e.remove(id(2)).unwrap();
    });
    (delta, a.writer)
}

#[test]
fn a_version_round_trips_through_seal_decode_and_open() {
    let cap = DirWriteCap::from_seed([1; 32]);
    let child = DirWriteCap::from_seed([2; 32]);
    let (state, writer) = rich_delta(&cap, &child);
    let body = VersionBody {
        writer,
        hlc: at(T0),
        state,
    };
    let parents = vec![
        VersionId::from_bytes([5; 32]),
        VersionId::from_bytes([6; 32]),
    ];
    let version = Version::seal(&cap, parents.clone(), 3, false, &body, [9; 32]);

    // A holder checks it without any key...
    let held = Version::decode(version.as_bytes()).unwrap();
    assert_eq!(held.id(), version.id());
    assert_eq!(held.slot(), cap.slot());
    assert_eq!(held.parents(), parents.as_slice());
    assert_eq!((held.depth(), held.is_snapshot()), (3, false));
    // ...and a reader opens it.
    let opened = held.open(&cap.read_cap()).unwrap();
    assert_eq!(opened, body);

    let listing = Listing::of(&opened.state);
    assert_eq!(
        listing
            .entries
            .iter()
            .map(|l| l.name.as_str())
            .collect::<Vec<_>>(),
        ["big.bin", "link", "sub"]
    );
    assert_eq!(listing.get("big.bin").unwrap().content.size(), 123_456);
    // The subdirectory's writecap opens with the parent's writecap only.
    let Content::Dir {
        read,
        write: Some(sealed),
        ..
    } = &listing.get("sub").unwrap().content
    else {
        panic!("sub is not a writable subdirectory");
    };
    assert_eq!(read, &child.read_cap());
    assert_eq!(sealed.open(&cap, read).unwrap(), child);
    assert!(sealed.open(&child, read).is_err());
    let Content::Dir {
        write: Some(original),
        ..
    } = &body.state.entries[&id(3)]
        .content
        .0
        .values()
        .next()
        .unwrap()
        .value
    else {
        panic!("not a dir");
    };
    assert_eq!(sealed, original);
}

#[test]
fn a_version_does_not_open_with_another_directorys_readcap() {
    let cap = DirWriteCap::from_seed([1; 32]);
    let (state, writer) = rich_delta(&cap, &DirWriteCap::from_seed([2; 32]));
    let body = VersionBody {
        writer,
        hlc: at(T0),
        state,
    };
    let version = Version::seal(&cap, vec![], 1, true, &body, [9; 32]);
    let other = DirWriteCap::from_seed([3; 32]).read_cap();
    assert!(matches!(
        version.open(&other),
        Err(DirError::WrongSlot { .. })
    ));
    // The right verifying key with a wrong read key does not decrypt either.
    let forged = DirReadCap {
        verifying: cap.read_cap().verifying,
        key: ReadKey::from_bytes([4; 32]),
    };
    assert!(matches!(version.open(&forged), Err(DirError::Decrypt)));
}

#[test]
fn tampered_version_bytes_are_refused() {
    let cap = DirWriteCap::from_seed([1; 32]);
    let (state, writer) = rich_delta(&cap, &DirWriteCap::from_seed([2; 32]));
    let body = VersionBody {
        writer,
        hlc: at(T0),
        state,
    };
    let version = Version::seal(&cap, vec![], 1, true, &body, [9; 32]);
    let bytes = version.as_bytes();
    // One byte in the middle of the ciphertext, the last signature byte, a truncation, a tail.
    let mut mid = bytes.to_vec();
    mid[bytes.len() / 2] ^= 0x20;
    let mut sig = bytes.to_vec();
    *sig.last_mut().unwrap() ^= 1;
    let mut longer = bytes.to_vec();
    longer.push(0);
    for bad in [&mid[..], &sig[..], &bytes[..bytes.len() - 1], &longer[..]] {
        assert!(Version::decode(bad).is_err());
    }
    assert!(matches!(Version::decode(&mid), Err(DirError::BadSignature)));
}

//! Directories on a real in-process grid: paths, sharing, concurrent writers, faults.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cairn_core::cap::Cap;
use cairn_core::wire::{Refusal, Request, Response};
use cairn_core::{DirReadCap, DirWriteCap};
use cairn_dir::{Content, FileRef, Meta};
use cairn_node::{DirCap, LsReport, Node, NodeError, PutOptions};
use cairn_testkit::{TestGrid, random_bytes};

const LIMIT: Duration = Duration::from_secs(120);

async fn put_file(node: &Node, data: &[u8]) -> Content {
    let report = node
        .put(std::io::Cursor::new(data.to_vec()), PutOptions::default())
        .await
        .expect("put");
    Content::File {
        file: FileRef::new(report.cap.parse().expect("cap")).expect("file cap"),
        meta: Meta {
            mode: 0o640,
            mtime_ns: 1_700_000_000_000_000_000,
            ..Default::default()
        },
    }
}

async fn read(node: &Node, path: &str) -> Result<Vec<u8>, NodeError> {
    let cap = node.resolve_file(path).await?;
    let mut out = Vec::new();
    node.get(&cap, &mut out).await?;
    Ok(out)
}

/// Makes `/shared` on `writer` and returns its writecap.
async fn shared_dir(writer: &Node) -> DirWriteCap {
    writer.mkdir("/shared", false).await.unwrap();
    writer
        .share("/shared", true)
        .await
        .unwrap()
        .parse()
        .unwrap()
}

fn names(report: &LsReport) -> Vec<&str> {
    report.entries.iter().map(|e| e.name.as_str()).collect()
}

/// The directory a writecap's text names.
fn dir_cap(text: &str) -> DirCap {
    DirCap::from_cap(text.parse::<Cap>().expect("cap")).expect("a directory cap")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_round_trip_through_the_tree() {
    tokio::time::timeout(LIMIT, async {
        let grid = TestGrid::start(5).await;
        let node = grid.node(0);
        node.mkdir("/photos/2026", true).await.unwrap();
        let data = random_bytes(1, 300_000);
        node.link("/photos/2026/a.jpg", put_file(node, &data).await, false)
            .await
            .unwrap();
        node.link("/photos/small.txt", put_file(node, b"tiny").await, false)
            .await
            .unwrap();
        node.symlink("2026/a.jpg", "/photos/latest").await.unwrap();

        let ls = node.ls("/photos").await.unwrap();
        assert_eq!(names(&ls), ["2026", "latest", "small.txt"]);
        assert_eq!(ls.entries[0].kind, "dir");
        assert_eq!(ls.entries[1].target.as_deref(), Some("2026/a.jpg"));
        assert_eq!(ls.entries[2].size, 4);
        assert_eq!(ls.entries[2].mode, 0o640);
        assert!(ls.entries[2].ctime_ms > 0 && ls.conflicts == 0 && ls.writable);
        assert_eq!(ls.get("latest"), Some(&ls.entries[1]));
        assert_eq!(ls.get("small.txt").map(|e| e.size), Some(4));
        assert!(ls.get("missing").is_none() && ls.get("").is_none());

        // Lines told one by one are the listing's lines; a listing patched with them is the
        // listing read afresh.
        let photos = dir_cap(&node.share("/photos", true).await.unwrap());
        let lines = node
            .plain_lines(&photos, &["latest", "missing", "small.txt"])
            .await
            .unwrap()
            .expect("no conflicts");
        assert_eq!(
            lines,
            [
                ls.get("latest").cloned(),
                None,
                ls.get("small.txt").cloned()
            ]
        );
        let mut patched = ls.clone();
        node.link("/photos/b.txt", put_file(node, b"b").await, false)
            .await
            .unwrap();
        node.set_meta(
            "/photos/small.txt",
            Meta {
                mode: 0o600,
                mtime_ns: 5,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let changed = ["b.txt", "small.txt"];
        let lines = node
            .plain_lines(&photos, &changed)
            .await
            .unwrap()
            .expect("no conflicts");
        for (name, line) in changed.iter().zip(lines) {
            patched.set(name, line);
        }
        assert_eq!(patched, node.ls("/photos").await.unwrap());
        assert_eq!(names(&patched), ["2026", "b.txt", "latest", "small.txt"]);
        node.rm("/photos/b.txt", false).await.unwrap();
        let lines = node.plain_lines(&photos, &["b.txt"]).await.unwrap();
        patched.set("b.txt", lines.expect("no conflicts").remove(0));
        assert_eq!(patched, node.ls("/photos").await.unwrap());
        assert_eq!(read(node, "/photos/2026/a.jpg").await.unwrap(), data);

        // Another node of the same owner sees it through a shared writecap.
        let cap = node.share("/photos", true).await.unwrap();
        assert!(cap.starts_with("cairn:dir:1:"));
        let other = grid.node(3);
        assert_eq!(
            read(other, &format!("{cap}/2026/a.jpg")).await.unwrap(),
            data
        );

        // mv within a directory and between directories; rm.
        node.mv("/photos/small.txt", "/photos/renamed.txt")
            .await
            .unwrap();
        node.mv("/photos/renamed.txt", "/photos/2026")
            .await
            .unwrap();
        assert_eq!(
            names(&node.ls("/photos/2026").await.unwrap()),
            ["a.jpg", "renamed.txt"]
        );
        assert_eq!(
            names(&node.ls("/photos").await.unwrap()),
            ["2026", "latest"]
        );
        assert_eq!(
            read(node, "/photos/2026/renamed.txt").await.unwrap(),
            b"tiny"
        );
        node.mv("/photos/2026", "/archive").await.unwrap();
        assert_eq!(read(node, "/archive/a.jpg").await.unwrap(), data);
        assert!(matches!(
            node.mv("/archive", "/archive/inner").await,
            Err(NodeError::Invalid(_))
        ));
        node.rm("/archive/renamed.txt", false).await.unwrap();
        assert_eq!(names(&node.ls("/archive").await.unwrap()), ["a.jpg"]);

        // Errors, each clean.
        let err = |r: Result<(), NodeError>| r.unwrap_err().to_string();
        assert!(matches!(
            node.ls("/nope").await,
            Err(NodeError::NotFound(_))
        ));
        assert!(matches!(
            node.ls("/archive/a.jpg/x").await,
            Err(NodeError::NotADirectory(_))
        ));
        assert!(matches!(
            node.rm("/archive", false).await,
            Err(NodeError::IsADirectory(_))
        ));
        assert!(matches!(
            node.resolve_file("/archive").await,
            Err(NodeError::IsADirectory(_))
        ));
        assert!(matches!(
            node.mkdir("/archive", false).await,
            Err(NodeError::AlreadyExists(_))
        ));
        assert!(matches!(
            node.mkdir("/x/y", false).await,
            Err(NodeError::NotFound(_))
        ));
        for bad in ["/a\0b", &format!("/{}", "n".repeat(256))] {
            let e = err(node.mkdir(bad, false).await);
            assert!(e.starts_with("invalid name"), "{e}");
        }
        assert!(Node::ls(node, "cairn:dir:1:zz").await.is_err());
        node.rm("/archive", true).await.unwrap();
        assert_eq!(names(&node.ls("/").await.unwrap()), ["photos"]);
        grid.shutdown().await;
    })
    .await
    .expect("within the time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_readcap_lists_but_never_writes() {
    tokio::time::timeout(LIMIT, async {
        let grid = TestGrid::start(5).await;
        let owner = grid.node(0);
        owner.mkdir("/shared/sub", true).await.unwrap();
        owner
            .link("/shared/f", put_file(owner, b"hello friend").await, false)
            .await
            .unwrap();
        let read_cap = owner.share("/shared", false).await.unwrap();
        assert!(read_cap.starts_with("cairn:dir-ro:1:"));
        let friend = grid.node(2);
        friend.attach(&read_cap, "/from-owner").await.unwrap();
        let ls = friend.ls("/from-owner").await.unwrap();
        assert!(!ls.writable);
        assert_eq!(names(&ls), ["f", "sub"]);
        assert!(!ls.entries[1].writable);
        assert_eq!(
            read(friend, "/from-owner/f").await.unwrap(),
            b"hello friend"
        );
        let refusals = [
            friend.mkdir("/from-owner/new", false).await,
            friend.rm("/from-owner/f", false).await,
            friend.mkdir("/from-owner/sub/deeper", false).await,
            friend.symlink("x", &format!("{read_cap}/link")).await,
        ];
        for refusal in refusals {
            let e = refusal.unwrap_err().to_string();
            assert!(e.contains("read-only capability"), "{e}");
        }
        assert!(
            friend
                .share("/from-owner", true)
                .await
                .unwrap_err()
                .to_string()
                .contains("read-only")
        );
        // Nothing changed.
        assert_eq!(names(&owner.ls("/shared").await.unwrap()), ["f", "sub"]);
        grid.shutdown().await;
    })
    .await
    .expect("within the time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_merge_without_loss() {
    tokio::time::timeout(LIMIT, async {
        let grid = TestGrid::start(5).await;
        let (a, b) = (grid.node(0), grid.node(1));
        a.mkdir("/team", false).await.unwrap();
        let cap = a.share("/team", true).await.unwrap();
        b.attach(&cap, "/team").await.unwrap();
        a.link("/team/edit-me", put_file(a, b"v1").await, false)
            .await
            .unwrap();
        a.link("/team/delete-me", put_file(a, b"old").await, false)
            .await
            .unwrap();
        a.link("/team/rename-me", put_file(a, b"r1").await, false)
            .await
            .unwrap();
        assert_eq!(
            names(&b.ls("/team").await.unwrap()),
            ["delete-me", "edit-me", "rename-me"]
        );

        let fa = put_file(a, b"from a").await;
        let fb = put_file(b, b"from b").await;
        let (ea, eb) = (
            put_file(a, b"edit by a").await,
            put_file(b, b"edit by b").await,
        );
        let keep = put_file(b, b"kept edit").await;
        let r2 = put_file(b, b"r2").await;
        // Each edit loads, waits, then publishes: the two writers never see each other's
        // pending edit, so every pair below is truly concurrent.
        a.set_edit_delay(Some(Duration::from_millis(400)));
        b.set_edit_delay(Some(Duration::from_millis(400)));
        let (ra, rb) = tokio::join!(
            async {
                a.link("/team/only-a", fa.clone(), false).await?;
                a.link("/team/same", ea.clone(), false).await?;
                a.link("/team/edit-me", ea.clone(), true).await?;
                a.rm("/team/delete-me", false).await?;
                a.mv("/team/rename-me", "/team/renamed").await
            },
            async {
                b.link("/team/only-b", fb.clone(), false).await?;
                b.link("/team/same", eb.clone(), false).await?;
                b.link("/team/edit-me", eb.clone(), true).await?;
                b.link("/team/delete-me", keep.clone(), true).await?;
                b.link("/team/rename-me", r2.clone(), true).await
            }
        );
        ra.unwrap();
        rb.unwrap();
        a.set_edit_delay(None);
        b.set_edit_delay(None);
        let la = a.ls("/team").await.unwrap();
        let lb = b.ls("/team").await.unwrap();
        assert_eq!(
            la.entries, lb.entries,
            "both writers see the same merged directory"
        );
        let n = names(&la);
        let conflict_names: Vec<&&str> = n.iter().filter(|x| x.contains(".conflict-")).collect();
        assert_eq!(conflict_names.len(), 2, "{n:?}");
        assert!(
            conflict_names
                .iter()
                .any(|x| x.starts_with("same.conflict-")),
            "{n:?}"
        );
        assert!(
            conflict_names
                .iter()
                .any(|x| x.starts_with("edit-me.conflict-")),
            "{n:?}"
        );
        for name in [
            "only-a",
            "only-b",
            "same",
            "edit-me",
            "delete-me",
            "renamed",
        ] {
            assert!(n.contains(&name), "{name} missing from {n:?}");
        }
        assert!(!n.contains(&"rename-me"), "{n:?}");
        assert_eq!(la.conflicts, 4, "{la:?}");
        // Names in a conflict are only told by the whole listing.
        let team = dir_cap(&cap);
        assert_eq!(a.plain_lines(&team, &["same"]).await.unwrap(), None);
        assert_eq!(
            a.plain_lines(&team, &["only-a"]).await.unwrap(),
            Some(vec![la.get("only-a").cloned()])
        );
        let status = a.status().await.unwrap();
        assert_eq!(status.conflicts.len(), 1, "{:?}", status.conflicts);
        assert_eq!(status.conflicts[0].lines, 4);
        // An edit survives a concurrent delete; a rename and a concurrent edit both apply.
        assert_eq!(read(a, "/team/delete-me").await.unwrap(), b"kept edit");
        assert_eq!(read(a, "/team/renamed").await.unwrap(), b"r2");
        // Both concurrent values of each contested name are kept.
        let mut values = Vec::new();
        for name in &n {
            values.push(read(a, &format!("/team/{name}")).await.unwrap());
        }
        for value in [&b"edit by a"[..], b"edit by b"] {
            assert_eq!(
                values.iter().filter(|c| c.as_slice() == value).count(),
                2,
                "{value:?}"
            );
        }
        // A later write replaces every value: the conflict is resolved, with no new one.
        a.link("/team/edit-me", put_file(a, b"final").await, true)
            .await
            .unwrap();
        let conflict_copy = conflict_names
            .iter()
            .find(|x| x.starts_with("same."))
            .unwrap()
            .to_string();
        b.rm(&format!("/team/{conflict_copy}"), false)
            .await
            .unwrap();
        let la = a.ls("/team").await.unwrap();
        assert_eq!(la.conflicts, 0, "{la:?}");
        assert!(a.status().await.unwrap().conflicts.is_empty());
        assert_eq!(la.entries, b.ls("/team").await.unwrap().entries);
        assert_eq!(read(b, "/team/edit-me").await.unwrap(), b"final");
        grid.shutdown().await;
    })
    .await
    .expect("within the time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directories_survive_holders_down_and_refuse_forgeries() {
    tokio::time::timeout(LIMIT, async {
        let mut grid = TestGrid::start(5).await;
        let writer = grid.node(0).clone();
        writer.mkdir("/d", false).await.unwrap();
        let cap: DirWriteCap = writer.share("/d", true).await.unwrap().parse().unwrap();
        let slot = cap.slot();
        let holders = writer.slot_holders(&slot);
        let ids: Vec<_> = (0..5).map(|i| grid.node(i).id()).collect();
        let holder_index: Vec<usize> = holders[..3]
            .iter()
            .map(|h| ids.iter().position(|id| id == h).unwrap())
            .collect();
        // Stop two of the three holders (never the writer itself).
        let down: Vec<usize> = holder_index
            .iter()
            .copied()
            .filter(|&i| i != 0)
            .take(2)
            .collect();
        for &i in &down {
            grid.stop(i).await;
        }
        let writer = grid.node(0).clone();
        writer
            .link("/d/while-down", put_file(&writer, b"x").await, false)
            .await
            .unwrap();
        assert_eq!(names(&writer.ls("/d").await.unwrap()), ["while-down"]);
        // The holders come back and catch up from the others.
        for &i in &down {
            grid.restart(i).await;
        }
        for &i in &down {
            grid.node(i).sync_slots().await.unwrap();
        }
        let reader = grid.node(holder_index[0]);
        let fresh = grid.node(down[0]);
        assert!(!fresh.held_versions(&slot).unwrap().is_empty());
        assert_eq!(
            names(&reader.ls(&cap.to_string()).await.unwrap()),
            ["while-down"]
        );

        // A forged version (signed by another key, or altered) is refused by a holder.
        let holder = grid.node(down[0]);
        let held = holder.held_versions(&slot).unwrap();
        let mut tampered = held[held.len() - 1].clone();
        let last = tampered.len() - 10;
        tampered[last] ^= 1;
        let answer = writer
            .net()
            .request(
                holder.id(),
                &holder.addrs(),
                &Request::PutVersion { version: tampered },
            )
            .await
            .unwrap();
        assert_eq!(answer, Response::Refused(Refusal::InvalidVersion));
        // A replayed old version is accepted as already held and changes nothing.
        let answer = writer
            .net()
            .request(
                holder.id(),
                &holder.addrs(),
                &Request::PutVersion {
                    version: held[0].clone(),
                },
            )
            .await
            .unwrap();
        assert_eq!(answer, Response::Stored { already: true });
        assert_eq!(
            names(&reader.ls(&cap.to_string()).await.unwrap()),
            ["while-down"]
        );
        // A readcap of another directory cannot read this one's versions.
        let other: DirReadCap = DirWriteCap::from_seed([9; 32]).read_cap();
        assert!(
            writer
                .ls(&Cap::DirRead(other).to_string())
                .await
                .unwrap()
                .entries
                .is_empty()
        );
        grid.shutdown().await;
    })
    .await
    .expect("within the time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_refuses_a_rolled_back_directory() {
    tokio::time::timeout(LIMIT, async {
        let mut grid = TestGrid::start(5).await;
        grid.node(0).mkdir("/d", false).await.unwrap();
        let cap = grid.node(0).share("/d", true).await.unwrap();
        let slot = cap.parse::<DirWriteCap>().unwrap().slot();
        let ids: Vec<_> = (0..5).map(|i| grid.node(i).id()).collect();
        let holders: Vec<usize> = grid.node(0).slot_holders(&slot)[..3]
            .iter()
            .map(|h| ids.iter().position(|id| id == h).unwrap())
            .collect();
        let reader = (1..5).find(|i| !holders.contains(i)).unwrap();
        let one = put_file(grid.node(0), b"one").await;
        grid.node(0).link("/d/one", one, false).await.unwrap();
        assert_eq!(names(&grid.node(reader).ls(&cap).await.unwrap()), ["one"]);

        // Keep the holders' databases as they are now.
        for &h in &holders {
            grid.stop(h).await;
            let db = grid.dir(h).meta_db();
            std::fs::copy(&db, db.with_extension("old")).unwrap();
            grid.restart(h).await;
        }
        let two = put_file(grid.node(0), b"two").await;
        grid.node(0).link("/d/two", two, false).await.unwrap();
        assert_eq!(
            names(&grid.node(reader).ls(&cap).await.unwrap()),
            ["one", "two"]
        );

        // Every holder goes back to the old state; the reader restarts and forgets its cache,
        // but not the frontier it has seen.
        for &h in &holders {
            grid.stop(h).await;
            let db = grid.dir(h).meta_db();
            std::fs::copy(db.with_extension("old"), &db).unwrap();
        }
        for &h in &holders {
            grid.restart(h).await;
        }
        grid.restart(reader).await;
        let err = grid.node(reader).ls(&cap).await.unwrap_err();
        assert!(matches!(err, NodeError::DirRolledBack(_)), "{err}");
        assert!(
            err.to_string()
                .contains("lack versions this node has already seen"),
            "{err}"
        );
        grid.shutdown().await;
    })
    .await
    .expect("within the time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_moves_never_nest_two_directories_in_each_other() {
    tokio::time::timeout(LIMIT, async {
        let grid = TestGrid::start(5).await;
        let (a, b, c) = (grid.node(0), grid.node(1), grid.node(2));
        a.mkdir("/team/x", true).await.unwrap();
        a.mkdir("/team/y", true).await.unwrap();
        a.link("/team/x/in-x", put_file(a, b"x").await, false)
            .await
            .unwrap();
        a.link("/team/y/in-y", put_file(a, b"y").await, false)
            .await
            .unwrap();
        let cap = a.share("/team", true).await.unwrap();
        b.attach(&cap, "/team").await.unwrap();
        let read_cap = a.share("/team", false).await.unwrap();
        assert_eq!(names(&b.ls("/team").await.unwrap()), ["x", "y"]);

        // `mv x y/` against `mv y x/`, truly concurrent.
        a.set_edit_delay(Some(Duration::from_millis(400)));
        b.set_edit_delay(Some(Duration::from_millis(400)));
        let (ra, rb) = tokio::join!(a.mv("/team/x", "/team/y"), b.mv("/team/y", "/team/x"));
        ra.unwrap();
        rb.unwrap();
        a.set_edit_delay(None);
        b.set_edit_delay(None);

        // One move stands, the other is cancelled: one directory stays, the other is inside it,
        // and every member sees the same.
        let top = names(&a.ls("/team").await.unwrap())
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        assert_eq!(top.len(), 1, "{top:?}");
        let (outer, inner) = if top[0] == "x" {
            ("x", "y")
        } else {
            ("y", "x")
        };
        assert_eq!(names(&b.ls("/team").await.unwrap()), [outer]);
        assert_eq!(names(&c.ls(&read_cap).await.unwrap()), [outer]);
        let outer_listing = a.ls(&format!("/team/{outer}")).await.unwrap();
        assert_eq!(
            names(&outer_listing),
            [format!("in-{outer}").as_str(), inner]
        );
        let inner_listing = b.ls(&format!("/team/{outer}/{inner}")).await.unwrap();
        assert_eq!(names(&inner_listing), [format!("in-{inner}")]);
        // Nothing lost, no cycle: the tree walk ends and holds both files.
        let tree = c.walk_tree(&read_cap).await.unwrap();
        let paths: Vec<&str> = tree.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths.len(), 4, "{paths:?}");
        for file in ["in-x", "in-y"] {
            assert!(
                paths.iter().any(|p| p.ends_with(file)),
                "{file} lost: {paths:?}"
            );
        }
        grid.shutdown().await;
    })
    .await
    .expect("within the time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_history_is_read_from_its_latest_snapshot() {
    tokio::time::timeout(LIMIT, async {
        let grid = TestGrid::start(5).await;
        let writer = grid.node(0);
        writer.mkdir("/log", false).await.unwrap();
        let file = put_file(writer, b"same small file").await;
        for i in 0..300 {
            writer
                .link(&format!("/log/{i:03}"), file.clone(), false)
                .await
                .unwrap();
        }
        for i in 0..20 {
            writer.rm(&format!("/log/{i:03}"), false).await.unwrap();
        }
        let cap: DirReadCap = writer.share("/log", false).await.unwrap().parse().unwrap();
        // A holder answers a reader with no copy from the snapshot on: not the 320 edits.
        let holder = writer.slot_holders(&cap.slot())[0];
        let holder = (0..5)
            .map(|i| grid.node(i))
            .find(|n| n.id() == holder)
            .unwrap();
        let sent = holder.held_versions(&cap.slot()).unwrap();
        assert!(sent.len() < 80, "{} versions sent", sent.len());
        // And that is the whole directory.
        let reader = (0..5)
            .map(|i| grid.node(i))
            .find(|n| n.id() != writer.id() && n.id() != holder.id())
            .unwrap();
        let listing = reader.ls(&Cap::DirRead(cap).to_string()).await.unwrap();
        assert_eq!(listing.entries.len(), 280);
        assert_eq!(listing.entries[0].name, "020");
        grid.shutdown().await;
    })
    .await
    .expect("within the time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_hears_of_a_change_within_a_second() {
    tokio::time::timeout(LIMIT, async {
        let grid = TestGrid::start(5).await;
        let writer = grid.node(0);
        let cap = shared_dir(writer).await;
        let slot = cap.slot();
        // One watcher that holds the directory's versions, one that does not.
        let holders = writer.slot_holders(&slot);
        let others: Vec<&Node> = (1..5).map(|i| grid.node(i)).collect();
        let holding = *others
            .iter()
            .find(|n| holders[..3].contains(&n.id()))
            .unwrap();
        let outside = *others
            .iter()
            .find(|n| !holders[..3].contains(&n.id()))
            .unwrap();
        let mut heard = Vec::new();
        for watcher in [holding, outside] {
            heard.push(watcher.dir_changes());
            watcher
                .watch(&cairn_node::DirCap::Read(cap.read_cap()))
                .await
                .unwrap();
        }
        let started = std::time::Instant::now();
        writer
            .link("/shared/new", put_file(writer, b"news").await, false)
            .await
            .unwrap();
        for changes in &mut heard {
            let changed = tokio::time::timeout(Duration::from_secs(1), changes.recv())
                .await
                .expect("a change announced within a second")
                .unwrap();
            assert_eq!(changed, slot);
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        for watcher in [holding, outside] {
            let listing = watcher.ls(&Cap::DirRead(cap.read_cap()).to_string()).await;
            assert_eq!(names(&listing.unwrap()), ["new"]);
        }
        grid.shutdown().await;
    })
    .await
    .expect("within the time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_directory_lists_without_asking_its_holders() {
    tokio::time::timeout(LIMIT, async {
        let grid = TestGrid::start(6).await;
        let writer = grid.node(0);
        let cap = shared_dir(writer).await;
        let text = Cap::DirRead(cap.read_cap()).to_string();
        let holders = writer.slot_holders(&cap.slot());
        let mut readers = (1..6)
            .map(|i| grid.node(i))
            .filter(|n| !holders[..3].contains(&n.id()));
        // Of six nodes, three hold the directory: at least two others are not its writer.
        let (watcher, other) = (readers.next().unwrap(), readers.next().unwrap());
        watcher
            .watch(&cairn_node::DirCap::Read(cap.read_cap()))
            .await
            .unwrap();
        other.ls(&text).await.unwrap();
        // Every holder now takes 5 s to answer a read of the directory.
        for i in 0..6 {
            grid.node(i).set_serve_delay(Some(Duration::from_secs(5)));
        }
        let quick = Duration::from_secs(2);
        let listing = tokio::time::timeout(quick, watcher.ls(&text))
            .await
            .expect("the watcher lists from what it holds");
        assert!(names(&listing.unwrap()).is_empty());
        assert!(
            tokio::time::timeout(quick, other.ls(&text)).await.is_err(),
            "a node that does not watch asks the holders"
        );
        for i in 0..6 {
            grid.node(i).set_serve_delay(None);
        }
        // A change is still pushed to the watcher, which then lists it.
        let mut changes = watcher.dir_changes();
        let content = put_file(writer, b"news").await;
        writer.link("/shared/new", content, false).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), changes.recv())
            .await
            .expect("the change is pushed")
            .unwrap();
        let listing = tokio::time::timeout(quick, watcher.ls(&text))
            .await
            .expect("the watcher lists from what it holds");
        assert_eq!(names(&listing.unwrap()), ["new"]);
        grid.shutdown().await;
    })
    .await
    .expect("within the time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reads_of_a_changed_directory_all_see_the_change() {
    tokio::time::timeout(LIMIT, async {
        let grid = TestGrid::start(5).await;
        let (writer, reader) = (grid.node(0), grid.node(1));
        writer.mkdir("/shared", false).await.unwrap();
        let cap = writer.share("/shared", true).await.unwrap();
        reader.attach(&cap, "/from-writer").await.unwrap();
        for round in 0..20u8 {
            // Each round replaces the file's content in place: a delta that carries no name.
            let content = put_file(writer, &[round; 100]).await;
            writer.link("/shared/note", content, true).await.unwrap();
            // Each load on its own task, so their merges run at once on several threads.
            let mut loads = tokio::task::JoinSet::new();
            for _ in 0..8 {
                let reader = reader.clone();
                loads.spawn(async move { reader.ls("/from-writer").await });
            }
            while let Some(listing) = loads.join_next().await {
                assert_eq!(names(&listing.unwrap().unwrap()), ["note"], "round {round}");
            }
            assert_eq!(
                read(reader, "/from-writer/note").await.unwrap(),
                [round; 100]
            );
        }
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_meta_changes_mode_and_mtime_and_keeps_the_target() {
    tokio::time::timeout(LIMIT, async {
        let grid = TestGrid::start(5).await;
        let node = grid.node(0);
        node.mkdir("/docs/inner", true).await.unwrap();
        let data = random_bytes(9, 50_000);
        node.link("/docs/a.txt", put_file(node, &data).await, false)
            .await
            .unwrap();
        let meta = |mode, mtime_ns| Meta {
            mode,
            mtime_ns,
            ..Default::default()
        };
        node.set_meta("/docs/inner", meta(0o700, 1_234_000_000_007))
            .await
            .unwrap();
        node.set_meta("/docs/a.txt", meta(0o600, 42)).await.unwrap();
        let ls = node.ls("/docs").await.unwrap();
        let line = |name: &str| ls.entries.iter().find(|e| e.name == name).unwrap().clone();
        assert_eq!(
            (line("inner").mode, line("inner").mtime_ns),
            (0o700, 1_234_000_000_007)
        );
        assert_eq!((line("a.txt").mode, line("a.txt").mtime_ns), (0o600, 42));
        // Same targets: the file reads, the directory still holds what it held.
        assert_eq!(read(node, "/docs/a.txt").await.unwrap(), data);
        node.mkdir("/docs/inner/x", false).await.unwrap();
        assert_eq!(names(&node.ls("/docs/inner").await.unwrap()), ["x"]);
        // Another member with the cap sees the new metadata.
        let cap = node.share("/docs", false).await.unwrap();
        let other = grid.node(3).ls(&cap).await.unwrap();
        assert!(
            other
                .entries
                .iter()
                .any(|e| e.name == "inner" && e.mode == 0o700)
        );
        assert!(matches!(
            node.set_meta("/docs/nope", meta(0o644, 0)).await,
            Err(NodeError::NotFound(_))
        ));
        assert!(matches!(
            grid.node(3)
                .set_meta(&format!("{cap}/a.txt"), meta(0o644, 0))
                .await,
            Err(NodeError::ReadOnly(_))
        ));
    })
    .await
    .expect("test timed out");
}

//! Multi-node behaviour on a real in-process grid (5 nodes on loopback, 3-of-5, happy 4).

use std::sync::Arc;
use std::time::Duration;

use cairn_core::cap::Cap;
use cairn_core::cert::{GridKey, Roles};
use cairn_core::id::{NodeId, ShareRoot};
use cairn_core::wire::{Hello, Lease, MAX_LEASE_SECS, Refusal, Request, Response, RosterEntry};
use cairn_net::{BoxFuture, Membership, Net, NetConfig, NetError, ShareService};
use cairn_node::{NodeError, NodeKeys, PutOptions};
use cairn_testkit::{GridOptions, TestGrid, random_bytes};

const LIMIT: Duration = Duration::from_secs(120);

async fn put(grid: &TestGrid, from: usize, data: &[u8]) -> cairn_node::PutReport {
    grid.node(from)
        .put(std::io::Cursor::new(data.to_vec()), PutOptions::default())
        .await
        .expect("put succeeds")
}

async fn get(grid: &TestGrid, at: usize, cap: &str) -> Result<Vec<u8>, NodeError> {
    let cap: Cap = cap.parse().expect("cap parses");
    let mut out = Vec::new();
    grid.node(at).get(&cap, &mut out).await?;
    Ok(out)
}

fn used_bytes(grid: &TestGrid) -> u64 {
    (0..grid.len())
        .map(|i| grid.node(i).store().usage().expect("usage").used_bytes)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_of_edge_sizes_round_trip() {
    tokio::time::timeout(LIMIT, async {
        let grid = TestGrid::start(5).await;
        let kib = 1024;
        let sizes = [
            0,
            1,
            63,
            64,
            65,
            1000,
            256 * kib - 1,
            256 * kib,
            256 * kib + 1,
            1024 * kib,
            4096 * kib - 1,
            4096 * kib,
            4096 * kib + 1,
            9 * 1024 * kib + 7,
        ];
        for (i, size) in sizes.into_iter().enumerate() {
            let data = random_bytes(i as u64, size);
            let report = put(&grid, i % 5, &data).await;
            assert_eq!(report.size, size as u64);
            let back = get(&grid, (i + 1) % 5, &report.cap).await.expect("get");
            assert!(back == data, "size {size} did not round-trip");
            if size <= cairn_core::cap::INLINE_LIMIT {
                assert!(
                    report.cap.starts_with("cairn:lit:1:"),
                    "{size}: {}",
                    report.cap
                );
            } else {
                assert!(
                    report.cap.starts_with("cairn:chk:1:"),
                    "{size}: {}",
                    report.cap
                );
            }
        }
        grid.shutdown().await;
    })
    .await
    .expect("within the time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_file_twice_gives_same_cap_and_no_new_disk() {
    tokio::time::timeout(LIMIT, async {
        let grid = TestGrid::start(5).await;
        let data = random_bytes(7, 3 << 20);
        let first = put(&grid, 0, &data).await;
        assert!(first.shares_sent > 0);
        let used = used_bytes(&grid);
        let second = put(&grid, 0, &data).await;
        assert_eq!(first.cap, second.cap);
        assert_eq!(second.shares_sent, 0, "nothing is sent again");
        assert_eq!(second.bytes_sent, 0);
        assert_eq!(used_bytes(&grid), used, "no new disk is used");
        // Another device of the same owner (same convergence secret) dedups too.
        let third = put(&grid, 3, &data).await;
        assert_eq!(third.cap, first.cap);
        assert_eq!(third.shares_sent, 0);
        // A private put of the same bytes gives another cap.
        let private = grid
            .node(0)
            .put(
                std::io::Cursor::new(data.clone()),
                PutOptions {
                    private: true,
                    ..Default::default()
                },
            )
            .await
            .expect("private put");
        assert_ne!(private.cap, first.cap);
        assert_eq!(get(&grid, 1, &private.cap).await.expect("get"), data);
        grid.shutdown().await;
    })
    .await
    .expect("within the time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_changed_byte_sends_only_the_changed_chunk() {
    tokio::time::timeout(LIMIT, async {
        let grid = TestGrid::start(5).await;
        let mut data = random_bytes(11, 24 << 20);
        let first = put(&grid, 0, &data).await;
        let total_shares = first.shares_sent;
        assert!(
            first.chunks >= 6,
            "24 MiB makes several chunks: {}",
            first.chunks
        );
        let sent_before: u64 = grid.node(0).net().counters().values().map(|c| c.sent).sum();
        data[12 << 20] ^= 0xff;
        let second = put(&grid, 0, &data).await;
        assert_ne!(second.cap, first.cap);
        let sent_after: u64 = grid.node(0).net().counters().values().map(|c| c.sent).sum();
        // One byte touches one chunk (two if it moved a cut point), plus the new manifest.
        assert!(
            second.shares_sent <= 3 * 5,
            "sent {} of {} shares",
            second.shares_sent,
            total_shares
        );
        let max_chunk_shares = 2 * 5 * (4 << 20) / 3 + 64 * 1024;
        assert!(
            sent_after - sent_before <= max_chunk_shares as u64,
            "network bytes sent for the change: {}",
            sent_after - sent_before
        );
        assert_eq!(get(&grid, 2, &second.cap).await.expect("get"), data);
        grid.shutdown().await;
    })
    .await
    .expect("within the time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_survives_two_nodes_down_and_fails_clearly_with_three() {
    tokio::time::timeout(LIMIT, async {
        let mut grid = TestGrid::start(5).await;
        let data = random_bytes(3, 5 << 20);
        let report = put(&grid, 0, &data).await;
        grid.stop(3).await;
        grid.stop(4).await;
        assert_eq!(
            get(&grid, 1, &report.cap).await.expect("get with 2 down"),
            data
        );
        grid.stop(2).await;
        let err = get(&grid, 1, &report.cap).await.expect_err("3 of 5 down");
        let msg = err.to_string();
        assert!(msg.starts_with("not enough shares for chunk"), "{msg}");
        assert!(msg.contains("need 3"), "{msg}");
        assert!(matches!(err, NodeError::NotEnoughShares { found, .. } if found <= 2));
        grid.restart(2).await;
        assert_eq!(
            get(&grid, 1, &report.cap).await.expect("get after restart"),
            data
        );
        grid.shutdown().await;
    })
    .await
    .expect("within the time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_with_a_node_down_warns_and_below_happy_fails() {
    tokio::time::timeout(LIMIT, async {
        let mut grid = TestGrid::start(5).await;
        grid.stop(4).await;
        let data = random_bytes(5, 2 << 20);
        let report = put(&grid, 0, &data).await;
        assert!(
            report
                .warnings
                .iter()
                .any(|w| w.contains("fewer than 5 distinct nodes")),
            "{:?}",
            report.warnings
        );
        assert_eq!(get(&grid, 1, &report.cap).await.expect("get"), data);
        grid.stop(3).await;
        let err = grid
            .node(0)
            .put(
                std::io::Cursor::new(random_bytes(6, 2 << 20)),
                PutOptions::default(),
            )
            .await
            .expect_err("3 live nodes < happy 4");
        assert!(
            matches!(
                err,
                NodeError::NotHappy {
                    placed: 3,
                    happy: 4,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("need at least 4"), "{err}");
        grid.shutdown().await;
    })
    .await
    .expect("within the time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_node_is_passed_over() {
    tokio::time::timeout(LIMIT, async {
        let grid = TestGrid::start_with(GridOptions {
            capacities: vec![10 << 30, 10 << 30, 1024, 10 << 30, 10 << 30],
            ..GridOptions::default()
        })
        .await;
        let data = random_bytes(8, 6 << 20);
        let report = put(&grid, 0, &data).await;
        // The full node took at most what fits (the tiny manifest share); the chunks went elsewhere.
        assert!(grid.node(2).store().usage().expect("usage").used_bytes <= 1024);
        assert!(
            report.warnings.iter().any(|w| w.contains("distinct nodes")),
            "{:?}",
            report.warnings
        );
        assert_eq!(get(&grid, 1, &report.cap).await.expect("get"), data);
        grid.shutdown().await;
    })
    .await
    .expect("within the time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_share_on_disk_is_detected_and_others_used() {
    tokio::time::timeout(LIMIT, async {
        let grid = TestGrid::start(5).await;
        let data = random_bytes(9, 3 << 20);
        let report = put(&grid, 0, &data).await;
        // Flip a byte in every 64 KiB of every share file and pack file of two nodes: every
        // share they hold is damaged (a packed share is larger than 64 KiB here).
        let mut flipped = 0;
        for i in [1, 2] {
            let store = grid.dir(i).store();
            let mut paths = files_under(&store.join("shares"));
            paths.extend(files_under(&store.join("packs")));
            for path in paths {
                let mut bytes = std::fs::read(&path).expect("read share");
                for at in (32 << 10..bytes.len()).step_by(64 << 10) {
                    bytes[at] ^= 0x01;
                }
                std::fs::write(&path, bytes).expect("write share");
                flipped += 1;
            }
        }
        assert!(flipped > 0, "share files exist on disk");
        assert_eq!(get(&grid, 3, &report.cap).await.expect("get"), data);
        grid.shutdown().await;
    })
    .await
    .expect("within the time limit");
}

fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// A member that stores nothing and answers every share request with garbage.
#[derive(Debug)]
struct Liar;

impl ShareService for Liar {
    fn handle(&self, _peer: NodeId, request: Request) -> BoxFuture<Response> {
        Box::pin(async move {
            match request {
                Request::PutShare { .. } => Response::Stored { already: false },
                Request::GetShare { .. } => Response::Share {
                    header: random_bytes(1, 300),
                    data: random_bytes(2, 1000),
                },
                Request::HeldShares { roots } => {
                    Response::Held(vec![vec![0, 1, 2, 3, 4]; roots.len()])
                }
                Request::Roster { .. } => Response::Roster(vec![]),
                Request::PutVersion { .. } => Response::Stored { already: false },
                Request::PutShares { .. } | Request::GetShares { .. } | Request::Space => {
                    Response::Refused(Refusal::Internal)
                }
                Request::Watch { .. } => Response::Watching { ttl_secs: 1 },
                Request::Changed { .. } => Response::Stored { already: true },
                Request::Revocations { .. } => Response::Revocations(vec![]),
                Request::GetVersions { .. } => Response::Versions {
                    versions: vec![serde_bytes::ByteBuf::from(random_bytes(3, 500))],
                    heads: vec![],
                    more: false,
                },
            }
        })
    }

    fn peer_hello(&self, _peer: NodeId, _hello: &Hello) {}
}

async fn bind_net(secret: [u8; 32], membership: Membership) -> Net {
    Net::bind(
        NetConfig {
            secret_key: zeroize::Zeroizing::new(secret),
            bind: "127.0.0.1:0".parse().expect("addr"),
            request_timeout: Duration::from_secs(5),
        },
        membership,
        Arc::new(Liar),
        None,
    )
    .await
    .expect("bind")
}

fn node_id(secret: &[u8; 32]) -> NodeId {
    NodeId::from_bytes(*GridKey::from_bytes(secret).grid_id().as_bytes())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_serving_garbage_is_skipped() {
    tokio::time::timeout(LIMIT, async {
        let grid = TestGrid::start(5).await;
        let admin = NodeKeys::load(grid.dir(0)).expect("keys");
        let grid_key = admin.grid_key.expect("admin holds the grid key");
        let secret = [42u8; 32];
        let cert = grid_key.issue(node_id(&secret), Roles::MEMBER, now(), now() + 3600);
        let liar = bind_net(
            secret,
            Membership {
                grid: grid_key.grid_id(),
                cert: cert.clone(),
            },
        )
        .await;
        // Introduce the liar to every member.
        let entry = RosterEntry {
            cert,
            addrs: liar.local_addrs(),
            announced_at: now(),
        };
        for i in 0..5 {
            let r = liar
                .request(
                    grid.node(i).id(),
                    &grid.node(i).addrs(),
                    &Request::Roster {
                        entries: vec![entry.clone()],
                    },
                )
                .await
                .expect("roster exchange");
            assert!(matches!(r, Response::Roster(_)));
        }
        for seed in 0..4 {
            let data = random_bytes(100 + seed, 2 << 20);
            let report = put(&grid, 0, &data).await;
            assert_eq!(get(&grid, 1, &report.cap).await.expect("get"), data);
        }
        // Directories too: with 6 members the liar holds some of them; its garbage versions
        // are dropped and the directory reads from the honest holders.
        let node = grid.node(0);
        for i in 0..8 {
            node.mkdir(&format!("/d{i}/sub"), true)
                .await
                .expect("mkdir");
        }
        let listing = grid
            .node(2)
            .ls(&node.share("/", false).await.expect("share"))
            .await;
        assert_eq!(listing.expect("ls through the readcap").entries.len(), 8);
        liar.shutdown().await;
        grid.shutdown().await;
    })
    .await
    .expect("within the time limit");
}

/// Asks `target` something from an endpoint with key `secret` presenting `membership`: the
/// answer, and the bytes `target` sent that endpoint.
async fn ask_as(
    target: &cairn_node::Node,
    secret: [u8; 32],
    membership: Membership,
) -> (Result<Response, NetError>, u64) {
    let net = bind_net(secret, membership).await;
    let result = net
        .request(
            target.id(),
            &target.addrs(),
            &Request::HeldShares { roots: vec![] },
        )
        .await;
    let served = target
        .net()
        .counters()
        .get(&node_id(&secret))
        .copied()
        .unwrap_or_default();
    net.shutdown().await;
    (result, served.sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_another_grid_is_refused_and_served_nothing() {
    tokio::time::timeout(LIMIT, async {
        let grid = TestGrid::start(3).await;
        let other = GridKey::from_bytes(&[9u8; 32]);
        let secret = [43u8; 32];
        let cert = other.issue(node_id(&secret), Roles::MEMBER, now(), now() + 3600);
        let membership = Membership {
            grid: other.grid_id(),
            cert,
        };
        let (result, served) = ask_as(grid.node(0), secret, membership).await;
        assert!(
            matches!(
                result,
                Err(NetError::NotMember { .. } | NetError::Refused { .. })
            ),
            "{result:?}"
        );
        assert_eq!(served, 0, "nothing served to a stranger");
        grid.shutdown().await;
    })
    .await
    .expect("within the time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_presented_by_another_node_is_refused() {
    tokio::time::timeout(LIMIT, async {
        let grid = TestGrid::start(3).await;
        // Node 1's real certificate, presented by an endpoint with a different key.
        let stolen = NodeKeys::load(grid.dir(1)).expect("keys").cert;
        let membership = Membership {
            grid: stolen.grid(),
            cert: stolen,
        };
        let (result, served) = ask_as(grid.node(0), [44u8; 32], membership).await;
        assert!(result.is_err(), "{result:?}");
        assert_eq!(served, 0);
        grid.shutdown().await;
    })
    .await
    .expect("within the time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_dated_in_the_future_is_refused() {
    tokio::time::timeout(LIMIT, async {
        let grid = TestGrid::start(3).await;
        let key = NodeKeys::load(grid.dir(0))
            .expect("keys")
            .grid_key
            .expect("node 0 is the admin");
        let secret = [45u8; 32];
        let issued = now() + 3600;
        let cert = key.issue(node_id(&secret), Roles::MEMBER, issued, issued + 3600);
        let membership = Membership {
            grid: key.grid_id(),
            cert,
        };
        let (result, served) = ask_as(grid.node(0), secret, membership).await;
        assert!(result.is_err(), "{result:?}");
        assert_eq!(served, 0);
        grid.shutdown().await;
    })
    .await
    .expect("within the time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_for_another_node_or_too_long_is_refused() {
    tokio::time::timeout(LIMIT, async {
        let grid = TestGrid::start(3).await;
        let (sender, target) = (grid.node(1), grid.node(0));
        let share = |owner: NodeId, expires_at: u64| Request::PutShare {
            root: ShareRoot::from_bytes([7; 32]),
            index: 0,
            header: random_bytes(4, 64),
            lease: Lease { owner, expires_at },
            data: random_bytes(5, 64),
        };
        let ask = |request: Request| async move {
            sender
                .net()
                .request(target.id(), &target.addrs(), &request)
                .await
                .expect("answer")
        };
        let month = now() + 31 * 86_400;
        // Another node's lease (here the target's own) is refused before anything else.
        assert_eq!(
            ask(share(target.id(), month)).await,
            Response::Refused(Refusal::BadLease)
        );
        // So is a lease of the sender's that runs past the limit.
        assert_eq!(
            ask(share(sender.id(), now() + MAX_LEASE_SECS + 86_400)).await,
            Response::Refused(Refusal::BadLease)
        );
        // The sender's own lease passes that check and reaches the share check.
        assert_eq!(
            ask(share(sender.id(), month)).await,
            Response::Refused(Refusal::InvalidShare)
        );
        // Batches are held to the same rule.
        assert_eq!(
            ask(Request::PutShares {
                lease: Lease {
                    owner: grid.node(2).id(),
                    expires_at: month,
                },
                shares: vec![],
            })
            .await,
            Response::Refused(Refusal::BadLease)
        );
        grid.shutdown().await;
    })
    .await
    .expect("within the time limit");
}

/// Whether `from` can get an answer from `to` at all.
async fn answers(from: &cairn_node::Node, to: &cairn_node::Node) -> bool {
    from.net()
        .request(to.id(), &to.addrs(), &Request::HeldShares { roots: vec![] })
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_node_is_refused_by_every_member_and_gets_no_shares() {
    tokio::time::timeout(LIMIT, async {
        let mut grid = TestGrid::start(5).await;
        let gone = grid.node(4).id();
        assert!(answers(grid.node(4), grid.node(1)).await, "a member before");

        // Only an admin may revoke, and never itself.
        let err = grid.node(1).revoke(gone).await.expect_err("not admin");
        assert!(err.to_string().contains("grid key"), "{err}");
        let err = grid
            .node(0)
            .revoke(grid.node(0).id())
            .await
            .expect_err("self");
        assert!(err.to_string().contains("itself"), "{err}");

        // A revocation signed by another key is dropped.
        let forged = GridKey::from_bytes(&[9u8; 32]).revoke(grid.node(3).id(), now());
        let answer = grid
            .node(2)
            .net()
            .request(
                grid.node(1).id(),
                &grid.node(1).addrs(),
                &Request::Revocations {
                    revocations: vec![forged],
                },
            )
            .await
            .expect("answer");
        assert_eq!(answer, Response::Revocations(vec![]));
        assert!(answers(grid.node(3), grid.node(1)).await);

        grid.node(0).revoke(gone).await.expect("revoke");
        // The admin told every member at once: each refuses the revoked node, whose open
        // connections are cut.
        for i in 0..4 {
            assert_eq!(grid.node(i).revoked(), vec![gone], "node {i} knows");
            assert!(
                !answers(grid.node(4), grid.node(i)).await,
                "node {i} refuses it"
            );
        }
        let before = grid
            .node(1)
            .net()
            .counters()
            .get(&gone)
            .copied()
            .unwrap_or_default();
        assert!(!answers(grid.node(4), grid.node(1)).await);
        let after = grid
            .node(1)
            .net()
            .counters()
            .get(&gone)
            .copied()
            .unwrap_or_default();
        assert_eq!(after.sent, before.sent, "nothing served to a revoked node");

        // Placement passes it over: 3-of-5 on the 4 members left, none on the revoked node.
        let held_before = grid.node(4).status().await.expect("status").storage.shares;
        let report = put(&grid, 0, &random_bytes(11, 3 << 20)).await;
        assert_eq!(
            get(&grid, 1, &report.cap).await.expect("get").len(),
            3 << 20
        );
        let held_after = grid.node(4).status().await.expect("status").storage.shares;
        assert_eq!(held_after, held_before, "a share went to the revoked node");
        let status = grid.node(2).status().await.expect("status");
        assert!(
            status.peers.iter().all(|p| p.id != gone),
            "gone from the roster"
        );
        assert_eq!(status.revoked, vec![gone]);

        // A restarted member remembers.
        grid.restart(2).await;
        assert_eq!(grid.node(2).revoked(), vec![gone]);
        assert!(!answers(grid.node(4), grid.node(2)).await);
        grid.shutdown().await;
    })
    .await
    .expect("within the time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marker_in_a_file_appears_nowhere_on_disk() {
    tokio::time::timeout(LIMIT, async {
        let grid = TestGrid::start(5).await;
        let marker = format!("CAIRN-MARKER-{:016x}", rand_u64());
        let compressible = marker.repeat(50_000).into_bytes();
        let mut incompressible = random_bytes(77, 2 << 20);
        incompressible[1 << 20..(1 << 20) + marker.len()].copy_from_slice(marker.as_bytes());
        let a = put(&grid, 0, &compressible).await;
        let b = put(&grid, 1, &incompressible).await;
        assert!(!a.cap.contains(&marker) && !b.cap.contains(&marker));
        for path in files_under(grid.base()) {
            let bytes = std::fs::read(&path).unwrap_or_default();
            assert!(
                !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
                "marker found in {}",
                path.display()
            );
        }
        assert_eq!(get(&grid, 2, &a.cap).await.expect("get"), compressible);
        grid.shutdown().await;
    })
    .await
    .expect("within the time limit");
}

fn rand_u64() -> u64 {
    u64::from_le_bytes(random_bytes(now(), 8).try_into().expect("8 bytes"))
}

//! The grid's storage space (`Node::grid_space`) on real in-process grids: the totals are the
//! sum of every storage node's own figures, members that are stopped or never answer are
//! counted as unknown within the deadline, and answers are cached so callers do not flood
//! the peers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cairn_core::cert::{GridKey, Roles};
use cairn_core::id::NodeId;
use cairn_core::wire::{Hello, Refusal, Request, Response, RosterEntry};
use cairn_net::{BoxFuture, Membership, Net, NetConfig, ShareService};
use cairn_node::{GridSpace, NodeKeys, PutOptions, SPACE_CACHE_TTL, SPACE_TIMEOUT};
use cairn_testkit::{GridOptions, TestGrid, random_bytes};

const LIMIT: Duration = Duration::from_secs(120);
const GIB: u64 = 1 << 30;

async fn put(grid: &TestGrid, from: usize, data: Vec<u8>) {
    grid.node(from)
        .put(std::io::Cursor::new(data), PutOptions::default())
        .await
        .expect("put succeeds");
}

/// The sum of the `status().storage` figures of the running nodes in `nodes`.
async fn sum_of_own(grid: &TestGrid, nodes: &[usize]) -> (u64, u64) {
    let mut offered = 0;
    let mut used = 0;
    for &i in nodes {
        let storage = grid.node(i).status().await.expect("status").storage;
        offered += storage.offered_bytes;
        used += storage.used_bytes;
    }
    (offered, used)
}

/// The used bytes of the running nodes in `nodes`, read from their stores directly.
fn used_now(grid: &TestGrid, nodes: &[usize]) -> u64 {
    nodes
        .iter()
        .map(|&i| grid.node(i).store().usage().expect("usage").used_bytes)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grid_space_is_the_sum_of_every_storage_nodes_own_figures() {
    tokio::time::timeout(LIMIT, async {
        let grid = TestGrid::start_with(GridOptions {
            capacities: vec![GIB, 2 * GIB, 3 * GIB, 4 * GIB, 5 * GIB],
            ..GridOptions::default()
        })
        .await;
        let all = [0, 1, 2, 3, 4];
        put(&grid, 0, random_bytes(1, 3 << 20)).await;
        put(&grid, 3, random_bytes(2, 200 * 1024)).await;

        let (offered, used) = sum_of_own(&grid, &all).await;
        assert_eq!(offered, 15 * GIB);
        // 3 MiB + 200 KiB of incompressible data, as 3-of-5 shares: about 5/3 of it.
        assert!(used > 5 << 20, "only {used} bytes of shares");
        for i in all {
            let space = grid.node(i).grid_space().await;
            assert_eq!(
                space,
                GridSpace {
                    offered_bytes: offered,
                    used_bytes: used,
                    free_bytes: offered - used,
                    nodes: 5,
                    unknown: 0,
                },
                "as seen from node {i}"
            );
            let status = grid.node(i).status().await.expect("status");
            assert_eq!(status.grid_space, space, "status of node {i}");
        }

        // Answers are reused for a few seconds, then measured again.
        let asked = Instant::now();
        let before = grid.node(1).grid_space().await;
        put(&grid, 2, random_bytes(3, 1 << 20)).await;
        let grown = used_now(&grid, &all);
        assert!(grown > used, "the second put stored shares");
        let cached = grid.node(1).grid_space().await;
        if asked.elapsed() < SPACE_CACHE_TTL {
            assert_eq!(cached, before, "a fresh answer within the cache's lifetime");
        }
        let waited = Instant::now();
        loop {
            let space = grid.node(1).grid_space().await;
            if space.used_bytes == grown {
                assert_eq!((space.nodes, space.unknown), (5, 0));
                break;
            }
            assert!(
                waited.elapsed() < SPACE_CACHE_TTL + Duration::from_secs(10),
                "the grid space never showed the new shares: {space:?}, want {grown} used"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        grid.shutdown().await;
    })
    .await
    .expect("within the time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_storage_node_is_unknown_and_does_not_hang_the_call() {
    tokio::time::timeout(LIMIT, async {
        let mut grid = TestGrid::start(5).await;
        put(&grid, 0, random_bytes(4, 2 << 20)).await;
        grid.stop(4).await;
        let live = [0, 1, 2, 3];
        let (offered, used) = (4 * (10 * GIB), used_now(&grid, &live));

        let started = Instant::now();
        let space = grid.node(1).grid_space().await;
        let took = started.elapsed();
        assert!(
            took < SPACE_TIMEOUT + Duration::from_secs(2),
            "grid_space took {took:?}"
        );
        assert_eq!(
            space,
            GridSpace {
                offered_bytes: offered,
                used_bytes: used,
                free_bytes: offered - used,
                nodes: 4,
                unknown: 1,
            }
        );
        // The status shows the same, and stays quick.
        let started = Instant::now();
        let status = grid.node(2).status().await.expect("status");
        assert!(started.elapsed() < SPACE_TIMEOUT + Duration::from_secs(2));
        assert_eq!(status.grid_space, space);
        grid.shutdown().await;
    })
    .await
    .expect("within the time limit");
}

/// A member that answers only rosters and, by `mode`, space requests: never (`Mute`), with
/// "I store nothing" (`NoStorage`), or with fixed figures, counting the requests (`Fixed`).
#[derive(Debug)]
enum Fake {
    Mute,
    NoStorage,
    Fixed(Arc<AtomicU64>),
}

const FIXED_OFFERED: u64 = 7_000_000;
const FIXED_USED: u64 = 1_000_000;

impl ShareService for Fake {
    fn handle(&self, _peer: NodeId, request: Request) -> BoxFuture<Response> {
        let answer = match (self, request) {
            (_, Request::Roster { .. }) => Some(Response::Roster(vec![])),
            (Fake::Mute, Request::Space) => None,
            (Fake::NoStorage, Request::Space) => Some(Response::Refused(Refusal::NotStorage)),
            (Fake::Fixed(asked), Request::Space) => {
                asked.fetch_add(1, Ordering::SeqCst);
                Some(Response::Space {
                    offered_bytes: FIXED_OFFERED,
                    used_bytes: FIXED_USED,
                })
            }
            _ => Some(Response::Refused(Refusal::Internal)),
        };
        Box::pin(async move {
            match answer {
                Some(answer) => answer,
                None => std::future::pending().await,
            }
        })
    }

    fn peer_hello(&self, _peer: NodeId, _hello: &Hello) {}
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Starts a fake member with key `secret` (certified by the grid's admin, roles client and
/// storage) and introduces it to every node of `grid`.
async fn fake_member(grid: &TestGrid, secret: [u8; 32], fake: Fake) -> Net {
    let admin = NodeKeys::load(grid.dir(0)).expect("keys");
    let grid_key = admin.grid_key.expect("admin holds the grid key");
    let id = NodeId::from_bytes(*GridKey::from_bytes(&secret).grid_id().as_bytes());
    let cert = grid_key.issue(id, Roles::MEMBER, now(), now() + 3600);
    let net = Net::bind(
        NetConfig {
            secret_key: zeroize::Zeroizing::new(secret),
            bind: "127.0.0.1:0".parse().expect("addr"),
            request_timeout: Duration::from_secs(5),
        },
        Membership {
            grid: grid_key.grid_id(),
            cert: cert.clone(),
        },
        Arc::new(fake),
        None,
    )
    .await
    .expect("bind");
    let entry = RosterEntry {
        cert,
        addrs: net.local_addrs(),
        announced_at: now(),
    };
    for i in 0..grid.len() {
        let node = grid.node(i);
        let r = net
            .request(
                node.id(),
                &node.addrs(),
                &Request::Roster {
                    entries: vec![entry.clone()],
                },
            )
            .await
            .expect("roster exchange");
        assert!(matches!(r, Response::Roster(_)));
    }
    net
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_never_answers_is_unknown_and_callers_share_one_round() {
    tokio::time::timeout(LIMIT, async {
        let grid = TestGrid::start(3).await;
        let mute = fake_member(&grid, [50; 32], Fake::Mute).await;
        let no_storage = fake_member(&grid, [51; 32], Fake::NoStorage).await;
        let asked = Arc::new(AtomicU64::new(0));
        let fixed = fake_member(&grid, [52; 32], Fake::Fixed(asked.clone())).await;
        let real = [0, 1, 2];
        let (offered, used) = (
            3 * (10 * GIB) + FIXED_OFFERED,
            used_now(&grid, &real) + FIXED_USED,
        );

        let node = grid.node(0);
        let started = Instant::now();
        let space = node.grid_space().await;
        let took = started.elapsed();
        let measured = Instant::now();
        assert!(
            took >= SPACE_TIMEOUT - Duration::from_millis(100),
            "answered before the silent member's deadline: {took:?}"
        );
        assert!(
            took < SPACE_TIMEOUT + Duration::from_secs(2),
            "grid_space took {took:?}"
        );
        // The 3 real nodes and the fixed fake are counted; the silent one is unknown; the one
        // that stores nothing is neither.
        assert_eq!(
            space,
            GridSpace {
                offered_bytes: offered,
                used_bytes: used,
                free_bytes: offered - used,
                nodes: 4,
                unknown: 1,
            }
        );
        assert_eq!(asked.load(Ordering::SeqCst), 1);

        // Within the cache's lifetime, many callers at once cost the peers nothing more.
        let calls: Vec<_> = (0..20)
            .map(|_| {
                let node = node.clone();
                tokio::spawn(async move { node.grid_space().await })
            })
            .collect();
        for call in calls {
            assert_eq!(call.await.expect("joins"), space);
        }
        if measured.elapsed() < SPACE_CACHE_TTL {
            assert_eq!(asked.load(Ordering::SeqCst), 1, "peers asked again");
        }

        for net in [mute, no_storage, fixed] {
            net.shutdown().await;
        }
        grid.shutdown().await;
    })
    .await
    .expect("within the time limit");
}

/// A status asked right after a restart dials members that may still be down; when such a
/// member comes back and connects while the dial is under way, the dial's failure must not
/// hold back the next request to it (`cairn-net`'s dial backoff).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_back_while_a_dial_to_it_is_under_way_is_asked_at_once() {
    tokio::time::timeout(LIMIT, async {
        let mut grid = TestGrid::start(3).await;
        let (id, addrs) = (grid.node(2).id(), grid.node(2).addrs());
        grid.stop(2).await;
        let net = grid.node(0).net().clone();
        let ask = Request::HeldShares { roots: vec![] };
        let dial = tokio::spawn({
            let (net, addrs, ask) = (net.clone(), addrs.clone(), ask.clone());
            async move { net.request(id, &addrs, &ask).await }
        });
        // The dial is under way (a down peer costs it 3 s) when node 2 comes back; restarting
        // greets every member, node 0 included. Back after the dial's first resend (about 1 s
        // in), the dial's own handshake does not finish before its deadline.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        grid.restart(2).await;
        let first = dial.await.expect("joins");
        eprintln!("the dial begun while node 2 was down: {first:?}");
        let again = net.request(id, &addrs, &ask).await;
        assert!(
            matches!(again, Ok(Response::Held(_))),
            "node 2 is back but not asked: {again:?}"
        );
        grid.shutdown().await;
    })
    .await
    .expect("within the time limit");
}

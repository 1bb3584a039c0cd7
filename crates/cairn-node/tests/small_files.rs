//! Batched puts and gets of many small files (`Node::put_many`, `Node::get_many`) on a real
//! in-process grid (5 nodes on loopback, 3-of-5, happy 4): the same caps as single puts, dedup,
//! a node down, fewer live nodes than `happy`, bad caps in a batch, and bad shares in a
//! batched request.

use std::time::Duration;

use cairn_core::Encoding;
use cairn_core::cap::Cap;
use cairn_core::erasure::encode_blob;
use cairn_core::wire::{Lease, PutAnswer, Refusal, Request, Response, ShareItem};
use cairn_node::{NodeError, PutOptions};
use cairn_testkit::{TestGrid, random_bytes};

const LIMIT: Duration = Duration::from_secs(180);

/// `count` files of sizes around 4 KiB (and a few edge sizes), different per seed.
fn files(seed: u64, count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let size = match i % 50 {
                0 => 0,
                1 => 64,
                2 => 65,
                3 => 300 * 1024,
                _ => 4096 + i % 7,
            };
            random_bytes(seed * 1_000_000 + i as u64, size)
        })
        .collect()
}

fn caps(reports: &[Result<cairn_node::PutReport, NodeError>]) -> Vec<Cap> {
    reports
        .iter()
        .map(|r| r.as_ref().expect("put succeeds").cap.parse().expect("cap"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_small_files_round_trip_batched_and_dedup() {
    tokio::time::timeout(LIMIT, async {
        let grid = TestGrid::start(5).await;
        let data = files(1, 300);
        let reports = grid
            .node(0)
            .put_many(data.clone(), PutOptions::default())
            .await;
        assert_eq!(reports.len(), data.len());
        for (r, d) in reports.iter().zip(&data) {
            let r = r.as_ref().expect("put succeeds");
            assert_eq!(r.size, d.len() as u64);
            assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        }
        let caps = caps(&reports);

        // The same caps as the streaming put gives.
        for i in [4, 7, 3] {
            let single = grid
                .node(0)
                .put(std::io::Cursor::new(data[i].clone()), PutOptions::default())
                .await
                .expect("put");
            assert_eq!(single.cap, caps[i].to_string());
            assert_eq!(single.shares_sent, 0, "already stored by the batch");
        }

        // Read back through another node, batched and one by one.
        let got = grid.node(2).get_many(&caps).await;
        for (g, d) in got.into_iter().zip(&data) {
            assert_eq!(&g.expect("get succeeds"), d);
        }
        let mut out = Vec::new();
        grid.node(1).get(&caps[5], &mut out).await.expect("get");
        assert_eq!(out, data[5]);

        // Again: everything is held, nothing is sent.
        let again = grid
            .node(1)
            .put_many(data.clone(), PutOptions::default())
            .await;
        for (r, cap) in again.iter().zip(&caps) {
            let r = r.as_ref().expect("put succeeds");
            assert_eq!(r.cap, cap.to_string());
            assert_eq!(r.shares_sent, 0);
        }

        // Shares landed where placement says: each node holds about a fifth of them.
        let shares: Vec<u64> = (0..5)
            .map(|i| grid.node(i).store().usage().expect("usage").shares)
            .collect();
        assert!(shares.iter().all(|&s| s > 300), "{shares:?}");

        // A bad cap fails alone; the others still come back.
        let Cap::Read(mut wrong) = caps[6].clone() else {
            panic!("a 4 KiB file has a read cap")
        };
        wrong.size += 1;
        let mixed = vec![caps[4].clone(), Cap::Read(wrong), caps[5].clone()];
        let got = grid.node(3).get_many(&mixed).await;
        assert_eq!(got[0].as_ref().expect("first"), &data[4]);
        assert!(
            matches!(got[1], Err(NodeError::SizeMismatch { .. })),
            "{:?}",
            got[1].as_ref().map(Vec::len)
        );
        assert_eq!(got[2].as_ref().expect("third"), &data[5]);
        grid.shutdown().await;
    })
    .await
    .expect("within the time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_a_bad_share_stores_only_the_good_ones() {
    tokio::time::timeout(LIMIT, async {
        let grid = TestGrid::start(5).await;
        let encoding = Encoding::DEFAULT;
        let (header, shares) = encode_blob(&random_bytes(9, 5000), encoding).expect("encode");
        let root = header.root();
        let header = header.encode();
        let mut bad = shares[1].clone();
        bad[0] ^= 1;
        let item = |index: u8, data: Vec<u8>| ShareItem {
            root,
            index,
            header: header.clone(),
            data,
        };
        let request = Request::PutShares {
            lease: Lease {
                owner: grid.node(0).id(),
                // A month: holders refuse leases that run past MAX_LEASE_SECS.
                expires_at: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("clock")
                    .as_secs()
                    + 31 * 86_400,
            },
            shares: vec![
                item(0, shares[0].clone()),
                item(1, bad),
                item(2, shares[2].clone()),
            ],
        };
        let target = grid.node(1);
        let answer = grid
            .node(0)
            .net()
            .request(target.id(), &target.addrs(), &request)
            .await
            .expect("answer");
        assert_eq!(
            answer,
            Response::StoredMany(vec![
                PutAnswer::Stored { already: false },
                PutAnswer::Refused(Refusal::InvalidShare),
                PutAnswer::Stored { already: false },
            ])
        );
        assert_eq!(target.store().held(&root).expect("held"), vec![0, 2]);
        assert_eq!(
            target.store().leases(&root, 0).expect("leases")[0].owner,
            grid.node(0).id()
        );
        // Batched reads hand back what is held, and nothing for the rest.
        let answer = grid
            .node(0)
            .net()
            .request(
                target.id(),
                &target.addrs(),
                &Request::GetShares {
                    shares: vec![(root, 0), (root, 1)],
                },
            )
            .await
            .expect("answer");
        let Response::Shares(found) = answer else {
            panic!("unexpected answer {answer:?}")
        };
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].as_ref().expect("held").data, shares[0]);
        assert!(found[1].is_none());
        grid.shutdown().await;
    })
    .await
    .expect("within the time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_survive_a_node_down_and_fail_per_file_below_happy() {
    tokio::time::timeout(LIMIT, async {
        let mut grid = TestGrid::start(5).await;
        let before = files(2, 200);
        let before_caps = caps(
            &grid
                .node(0)
                .put_many(before.clone(), PutOptions::default())
                .await,
        );

        grid.stop(4).await;
        // Puts with one node down: shares go to the next members, with a warning.
        let data = files(3, 200);
        let reports = grid
            .node(0)
            .put_many(data.clone(), PutOptions::default())
            .await;
        let warned = reports
            .iter()
            .filter(|r| {
                r.as_ref()
                    .expect("put succeeds with one node down")
                    .warnings
                    .iter()
                    .any(|w| w.contains("fewer than 5 distinct nodes"))
            })
            .count();
        assert!(warned > 0, "no file warned of a crowded chunk");
        let caps = caps(&reports);

        // Gets with one node down: the files put before and after.
        let got = grid.node(1).get_many(&before_caps).await;
        for (g, d) in got.into_iter().zip(&before) {
            assert_eq!(&g.expect("get with a node down"), d);
        }
        let got = grid.node(2).get_many(&caps).await;
        for (g, d) in got.into_iter().zip(&data) {
            assert_eq!(&g.expect("get with a node down"), d);
        }

        // Three live nodes < happy 4: every stored file fails with the clear error; literal
        // ones still succeed.
        grid.stop(3).await;
        let reports = grid
            .node(0)
            .put_many(files(4, 60), PutOptions::default())
            .await;
        for (i, r) in reports.iter().enumerate() {
            if i % 50 == 0 || i % 50 == 1 {
                assert!(r.is_ok(), "literal file {i} fails: {r:?}");
                continue;
            }
            let err = r.as_ref().expect_err("3 live nodes < happy 4");
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
        }
        grid.shutdown().await;
    })
    .await
    .expect("within the time limit");
}

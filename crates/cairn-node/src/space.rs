//! The grid's storage space: what the storage members offer and how much of it holds shares,
//! for `cairn status` and the mount's `statfs`.
//!
//! [`Node::grid_space`] asks every storage member at once with [`Request::Space`] (this node
//! answers from its own store, without the network) and adds up the answers that arrive within
//! [`SPACE_TIMEOUT`]. A member that has not answered by then (stopped, slow, or of an older
//! build that drops the request unanswered) is counted in [`GridSpace::unknown`] and left out
//! of the totals. The result is kept for [`SPACE_CACHE_TTL`] (or until a storage member joins or
//! leaves the roster), and callers that arrive while a round is under way wait for it instead
//! of starting their own, so a `df` loop or a busy mount costs the peers at most one small
//! request each per few seconds.
//!
//! Each ask runs in a task of its own and is never cut short by the caller's deadline: it ends
//! with the answer, when the network gives up (dial and request timeouts, like any other
//! request), or at shutdown, so no dial or handshake is abandoned halfway. A member whose ask
//! from an earlier round is still under way is not asked again (and counts as unknown), so
//! there is at most one space request in flight per member.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_core::cert::Roles;
use cairn_core::id::NodeId;
use cairn_core::wire::{Refusal, Request, Response};
use cairn_net::NetError;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::node::{Inner, Member, Node};

/// How long [`Node::grid_space`] waits for the members' answers.
pub const SPACE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an answer of [`Node::grid_space`] is reused.
pub const SPACE_CACHE_TTL: Duration = Duration::from_secs(5);

/// The space of the grid's storage nodes, added up over those that answered.
///
/// Figures are raw share bytes as the nodes' stores count them: a file of `S` bytes takes
/// about `S * n / k` of them once stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GridSpace {
    /// Bytes offered to the grid by the counted storage nodes.
    pub offered_bytes: u64,
    /// Bytes of shares stored on the counted storage nodes.
    pub used_bytes: u64,
    /// Bytes still free: each counted node's offer less its use (never below zero per node),
    /// added up.
    pub free_bytes: u64,
    /// Storage nodes whose figures are in the totals (this node included when it stores).
    pub nodes: usize,
    /// Storage members that did not answer in time; their space is not in the totals.
    pub unknown: usize,
}

/// The last [`GridSpace`] and the asks under way.
#[derive(Debug, Default)]
pub(crate) struct SpaceCache {
    /// The last result. Held while a round is under way, so that concurrent callers share one
    /// round.
    last: tokio::sync::Mutex<Option<Measured>>,
    /// Members whose space request has not ended yet.
    asking: Mutex<HashSet<NodeId>>,
}

impl SpaceCache {
    fn asking(&self) -> std::sync::MutexGuard<'_, HashSet<NodeId>> {
        self.asking.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A [`GridSpace`], when it was measured, and over which members.
#[derive(Debug)]
struct Measured {
    at: Instant,
    members: Vec<NodeId>,
    space: GridSpace,
}

/// One member's answer.
#[derive(Debug)]
enum Answer {
    Space { offered: u64, used: u64 },
    NotStorage,
    Unknown,
}

impl Answer {
    fn of(peer: NodeId, result: Result<Response, NetError>) -> Answer {
        match result {
            Ok(Response::Space {
                offered_bytes,
                used_bytes,
            }) => Answer::Space {
                offered: offered_bytes,
                used: used_bytes,
            },
            Ok(Response::Refused(Refusal::NotStorage)) => Answer::NotStorage,
            Ok(other) => {
                debug!(peer = %peer.fmt_short(), answer = ?other, "unexpected answer to a space request");
                Answer::Unknown
            }
            Err(e) => {
                debug!(peer = %peer.fmt_short(), error = %e, "space request failed");
                Answer::Unknown
            }
        }
    }
}

impl Node {
    /// The space of the grid's storage nodes: offered, used and free bytes added up over the
    /// members that offer storage and answered, with how many were counted and how many did
    /// not answer.
    ///
    /// Takes at most about [`SPACE_TIMEOUT`] (2 s): a member that does not answer by then is
    /// counted as unknown, never waited for. Answers are reused for [`SPACE_CACHE_TTL`] (5 s)
    /// unless the storage members changed meanwhile, so the figures may be that old; concurrent
    /// calls share one round of requests. Cancel-safe: dropping the future leaves the cache as
    /// it was (the requests already sent finish on their own).
    pub async fn grid_space(&self) -> GridSpace {
        let mut last = self.inner.space.last.lock().await;
        let members = self.inner.storage_members();
        let ids: Vec<NodeId> = members.iter().map(|m| m.id).collect();
        if let Some(m) = &*last
            && m.at.elapsed() < SPACE_CACHE_TTL
            && m.members == ids
        {
            return m.space;
        }
        let space = self.inner.measure_space(members).await;
        *last = Some(Measured {
            at: Instant::now(),
            members: ids,
            space,
        });
        space
    }
}

impl Inner {
    /// Members that offer storage, sorted by id (this node included when it stores).
    fn storage_members(&self) -> Vec<Member> {
        self.members()
            .into_iter()
            .filter(|m| m.roles.contains(Roles::STORAGE))
            .filter(|m| m.id != self.id || self.config.storage)
            .collect()
    }

    /// Asks `members` for their space.
    async fn measure_space(self: &Arc<Self>, members: Vec<Member>) -> GridSpace {
        let deadline = tokio::time::Instant::now() + SPACE_TIMEOUT;
        let mut space = GridSpace::default();
        // Room for every answer, so no ask ever waits to report.
        let (tx, mut rx) = tokio::sync::mpsc::channel(members.len().max(1));
        let mut asked = 0;
        for member in members {
            if !self.space.asking().insert(member.id) {
                // Still asking it since an earlier round.
                space.unknown += 1;
                continue;
            }
            asked += 1;
            let inner = self.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let answer = tokio::select! {
                    _ = inner.cancel.cancelled() => Answer::Unknown,
                    r = inner.request(&member, &Request::Space) => Answer::of(member.id, r),
                };
                inner.space.asking().remove(&member.id);
                // The caller may have stopped waiting; then the answer is not needed.
                let _ = tx.try_send(answer);
            });
        }
        drop(tx);
        let mut answered = 0;
        while answered < asked {
            let Ok(Some(answer)) = tokio::time::timeout_at(deadline, rx.recv()).await else {
                break;
            };
            answered += 1;
            match answer {
                Answer::Space { offered, used } => {
                    space.offered_bytes = space.offered_bytes.saturating_add(offered);
                    space.used_bytes = space.used_bytes.saturating_add(used);
                    space.free_bytes = space
                        .free_bytes
                        .saturating_add(offered.saturating_sub(used));
                    space.nodes += 1;
                }
                Answer::NotStorage => {}
                Answer::Unknown => space.unknown += 1,
            }
        }
        if answered < asked {
            debug!(
                missing = asked - answered,
                "storage members did not answer a space request in time"
            );
        }
        space.unknown += asked - answered;
        space
    }

    /// Answers a [`Request::Space`] from this node's store.
    pub(crate) async fn serve_space(&self) -> Response {
        if !self.config.storage {
            return Response::Refused(Refusal::NotStorage);
        }
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.usage()).await {
            Ok(Ok(usage)) => Response::Space {
                offered_bytes: usage.capacity_bytes,
                used_bytes: usage.used_bytes,
            },
            Ok(Err(e)) => {
                warn!(error = %e, "cannot read the store's usage");
                Response::Refused(Refusal::Internal)
            }
            Err(_) => Response::Refused(Refusal::Internal),
        }
    }
}

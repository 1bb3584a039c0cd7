//! Watching directories: holders push new versions to the nodes that asked, so a mount sees a
//! change within a second instead of at its next read.
//!
//! A reader sends [`Request::Watch`] for its slots to their holders and renews it before it
//! lapses; a holder that stores a new version of a watched slot sends it to each watcher as
//! [`Request::Changed`] (not back to the node it came from). The watcher checks it like any
//! version (it fetches what it lacks from the holders, so a holder cannot feed it anything it
//! would not accept on a read) and announces the slot on [`Node::dir_changes`].
//!
//! While every holder of a watched slot has agreed to push, the watcher trusts its cached state
//! and lists the directory without asking them, for up to
//! [`TRUST_WATCHED_FOR`](crate::dirs::TRUST_WATCHED_FOR) after its last read from them: a
//! mount's `stat` of a watched directory costs no network round trip.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_core::id::{NodeId, SlotId};
use cairn_core::wire::{Refusal, Request, Response};
use cairn_dir::Version;
use tokio::sync::broadcast;
use tracing::debug;

use crate::NodeError;
use crate::dirs::{DIR_REPLICAS, DirCap, locked};
use crate::node::{Inner, Node};

/// The longest subscription a holder grants.
const MAX_WATCH_TTL: Duration = Duration::from_secs(300);
/// The subscription a watcher asks for; it renews at half of it.
const WATCH_TTL: Duration = Duration::from_secs(120);

impl Inner {
    /// Records `peer`'s subscription to `slots`.
    pub(crate) fn serve_watch(&self, peer: NodeId, slots: Vec<SlotId>, ttl_secs: u32) -> Response {
        if !self.config.storage {
            return Response::Refused(Refusal::NotStorage);
        }
        let ttl = Duration::from_secs(u64::from(ttl_secs)).min(MAX_WATCH_TTL);
        let until = Instant::now() + ttl;
        let mut watchers = locked(&self.dirs.watchers);
        for slot in slots {
            watchers.entry(slot).or_default().insert(peer, until);
        }
        Response::Watching {
            ttl_secs: ttl.as_secs() as u32,
        }
    }

    /// Sends a newly stored version to the nodes watching its slot (except its sender).
    pub(crate) fn notify_watchers(self: &Arc<Self>, sender: NodeId, version: Version) {
        let slot = version.slot();
        if sender != self.id {
            // This holder may watch the slot itself.
            self.follow_change(slot);
        }
        let targets: Vec<NodeId> = {
            let mut watchers = locked(&self.dirs.watchers);
            let Some(of_slot) = watchers.get_mut(&slot) else {
                return;
            };
            let now = Instant::now();
            of_slot.retain(|_, until| *until > now);
            of_slot
                .keys()
                .copied()
                .filter(|w| *w != sender && *w != self.id)
                .collect()
        };
        if targets.is_empty() {
            return;
        }
        let members = self.members();
        let bytes = version.into_bytes();
        for target in targets {
            let Some(member) = members.iter().find(|m| m.id == target).cloned() else {
                continue;
            };
            let inner = self.clone();
            let request = Request::Changed {
                version: bytes.clone(),
            };
            tokio::spawn(async move {
                if let Err(e) = inner.request(&member, &request).await {
                    debug!(peer = %member.id.fmt_short(), error = %e, "could not push a directory change");
                }
            });
        }
    }

    /// A holder pushed a version of a slot this node may watch.
    pub(crate) fn serve_changed(self: &Arc<Self>, bytes: Vec<u8>) -> Response {
        let Ok(version) = Version::decode(&bytes) else {
            return Response::Refused(Refusal::InvalidVersion);
        };
        if self.follow_change(version.slot()) {
            Response::Stored { already: false }
        } else {
            Response::Stored { already: true }
        }
    }

    /// If this node watches `slot`, merges what changed (from the holders) and announces it.
    /// Returns whether it watches the slot.
    pub(crate) fn follow_change(self: &Arc<Self>, slot: SlotId) -> bool {
        let Some(cap) = locked(&self.dirs.watched).get(&slot).cloned() else {
            return false;
        };
        let node = Node {
            inner: self.clone(),
        };
        tokio::spawn(async move {
            match node.refresh_dir(&cap).await {
                Ok(_) => {
                    let _ = node.inner.dirs.changes.send(slot);
                }
                Err(e) => {
                    debug!(slot = %slot.fmt_short(), error = %e, "could not follow a pushed change")
                }
            }
        });
        true
    }
}

impl Node {
    /// Watches the directory: its holders push every new version here, and each change is
    /// announced on [`dir_changes`](Self::dir_changes). Renewed in the background while the
    /// node runs.
    pub async fn watch(&self, cap: &DirCap) -> Result<(), NodeError> {
        let read = cap.read_cap();
        self.load_dir(&read).await?;
        let slot = read.slot();
        let first = locked(&self.inner.dirs.watched)
            .insert(slot, read)
            .is_none();
        if first {
            self.subscribe(&[slot]).await;
        }
        Ok(())
    }

    /// Announces the slot of each watched directory that changed (after the change is merged).
    pub fn dir_changes(&self) -> broadcast::Receiver<SlotId> {
        self.inner.dirs.changes.subscribe()
    }

    /// Asks the holders of `slots` to push their changes here. A slot whose every holder
    /// agreed is trusted without asking them until the first subscription lapses (see
    /// [`TRUST_WATCHED_FOR`](crate::dirs::TRUST_WATCHED_FOR)).
    async fn subscribe(&self, slots: &[SlotId]) {
        for slot in slots {
            let asked = Instant::now();
            let mut until = Some(asked + MAX_WATCH_TTL);
            for holder in self.inner.slot_holders(slot).into_iter().take(DIR_REPLICAS) {
                if holder.id == self.id() {
                    continue;
                }
                let request = Request::Watch {
                    slots: vec![*slot],
                    ttl_secs: WATCH_TTL.as_secs() as u32,
                };
                match self.inner.request(&holder, &request).await {
                    Ok(Response::Watching { ttl_secs }) => {
                        let granted = asked + Duration::from_secs(u64::from(ttl_secs));
                        until = until.map(|u| u.min(granted));
                    }
                    Ok(other) => {
                        debug!(peer = %holder.id.fmt_short(), answer = ?other, "a holder would not push a directory's changes");
                        until = None;
                    }
                    Err(e) => {
                        debug!(peer = %holder.id.fmt_short(), error = %e, "could not watch a directory");
                        until = None;
                    }
                }
            }
            let mut pushed = locked(&self.inner.dirs.pushed_until);
            match until {
                Some(until) => pushed.insert(*slot, until),
                None => pushed.remove(slot),
            };
        }
    }

    /// Renews every subscription at half its lifetime (holders forget lapsed ones).
    pub(crate) async fn spawn_watch_renewal(&self) {
        let weak = Arc::downgrade(&self.inner);
        let cancel = self.inner.cancel.clone();
        self.inner.tasks.lock().await.spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(WATCH_TTL / 2) => {}
                }
                let Some(inner) = weak.upgrade() else { return };
                let node = Node { inner };
                let slots: Vec<SlotId> = locked(&node.inner.dirs.watched).keys().copied().collect();
                node.subscribe(&slots).await;
            }
        });
    }
}

//! Directories on the grid: fetching, merging and publishing slot versions.
//!
//! A directory's versions live on the first [`DIR_REPLICAS`] storage members in rendezvous order
//! of its slot id. A read asks them all at once for what it lacks and joins every version it can
//! verify and open into the state cached in memory; a write joins its delta into that state and
//! pushes one new version, citing the heads it merged, to the holders. A holder that was offline
//! catches up from the others ([`Node::sync_slots`]).
//!
//! The node remembers, per slot, the heads and version vector it has seen, and refuses a state
//! that lacks them (a holder rolling a directory back).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_core::cap::Cap;
use cairn_core::id::{ShareRoot, SlotId, VersionId};
use cairn_core::wire::{MAX_VERSIONS, Refusal, Request, Response};
use cairn_core::{DirReadCap, DirWriteCap};
use cairn_dir::{CausalContext, DirState, Edit, Hlc, Version, VersionBody};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::NodeError;
use crate::node::{Inner, Member, Node};
use crate::slots::{self, Frontier};

/// How often a holder compares the slots it holds with the other holders.
const SLOT_SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
/// Delay before the first comparison after start (the others are reachable by then).
const FIRST_SLOT_SYNC: std::time::Duration = std::time::Duration::from_secs(3);

/// A writer snapshots a directory once this many versions follow the latest snapshot.
const SNAPSHOT_EVERY: u64 = 256;
/// The largest encoded snapshot (it must fit one answer of a holder, with room to spare).
const SNAPSHOT_LIMIT: usize = 16 * 1024 * 1024;

/// A node forgets settled deleted entries of a directory once per this many of its edits.
const GC_EVERY_EDITS: u32 = 64;

/// How many holders keep each directory's versions.
pub const DIR_REPLICAS: usize = 3;
/// How long a watched directory's state is trusted without asking its holders, while every
/// holder has promised to push its changes here: a push that was lost (a holder restarted and
/// forgot its watchers) is made up for within this time.
pub(crate) const TRUST_WATCHED_FOR: Duration = Duration::from_secs(30);

/// A directory capability: writecap or readcap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirCap {
    /// May read and write.
    Write(DirWriteCap),
    /// May only read.
    Read(DirReadCap),
}

impl DirCap {
    /// The readcap.
    pub fn read_cap(&self) -> DirReadCap {
        match self {
            DirCap::Write(w) => w.read_cap(),
            DirCap::Read(r) => r.clone(),
        }
    }

    /// The writecap, if this is one.
    pub fn write_cap(&self) -> Option<&DirWriteCap> {
        match self {
            DirCap::Write(w) => Some(w),
            DirCap::Read(_) => None,
        }
    }

    /// The slot id.
    pub fn slot(&self) -> SlotId {
        match self {
            DirCap::Write(w) => w.slot(),
            DirCap::Read(r) => r.slot(),
        }
    }

    /// The directory `cap` names, or `None` for a file or verify cap.
    pub fn from_cap(cap: Cap) -> Option<DirCap> {
        match cap {
            Cap::DirWrite(w) => Some(DirCap::Write(w)),
            Cap::DirRead(r) => Some(DirCap::Read(r)),
            _ => None,
        }
    }

    /// The same cap as a [`Cap`] (whose `Display` is the cap's text).
    pub fn to_cap(&self) -> Cap {
        match self {
            DirCap::Write(w) => Cap::DirWrite(w.clone()),
            DirCap::Read(r) => Cap::DirRead(r.clone()),
        }
    }
}

/// A directory state as this node knows it, with the heads it descends from.
#[derive(Clone, Debug, Default)]
pub(crate) struct Cached {
    pub(crate) state: DirState,
    pub(crate) heads: Vec<VersionId>,
    pub(crate) depth: u64,
    /// Edits made here since deleted entries were last collected.
    edits_since_gc: u32,
    /// Depth of the latest snapshot joined or written (0: none).
    snapshot_depth: u64,
}

/// The node's directory caches and clock.
#[derive(Debug)]
pub(crate) struct Dirs {
    cache: Mutex<HashMap<SlotId, Arc<Cached>>>,
    clock: Mutex<Hlc>,
    /// Serialises this node's edits, so two local commands never race on one state.
    edit_lock: tokio::sync::Mutex<()>,
    /// One lock per directory, held while its cached state is taken out to merge or edit, so
    /// a concurrent load never starts from an empty state.
    merge_locks: Mutex<HashMap<SlotId, Arc<tokio::sync::Mutex<()>>>>,
    /// The readcap of every directory this node has read, to judge moves through it.
    caps: Mutex<HashMap<SlotId, DirReadCap>>,
    /// Directories with conflicts, as last listed: slot -> (location, lines in conflict).
    conflicts: Mutex<HashMap<SlotId, (String, usize)>>,
    /// Test knob: a pause between loading a directory and publishing an edit of it.
    edit_delay: Mutex<Option<std::time::Duration>>,
    /// As a holder: who watches which slot, until when.
    pub(crate) watchers: Mutex<HashMap<SlotId, HashMap<cairn_core::NodeId, std::time::Instant>>>,
    /// As a reader: the slots this node watches, with their caps.
    pub(crate) watched: Mutex<HashMap<SlotId, DirReadCap>>,
    /// As a reader: per watched slot, until when every holder asked has promised to push its
    /// changes here.
    pub(crate) pushed_until: Mutex<HashMap<SlotId, Instant>>,
    /// When each slot was last gathered from its holders (with at least one answer).
    gathered_at: Mutex<HashMap<SlotId, Instant>>,
    /// Announces each watched slot that changed.
    pub(crate) changes: tokio::sync::broadcast::Sender<SlotId>,
}

impl Default for Dirs {
    fn default() -> Self {
        Dirs {
            cache: Mutex::default(),
            clock: Mutex::default(),
            edit_lock: tokio::sync::Mutex::default(),
            merge_locks: Mutex::default(),
            caps: Mutex::default(),
            conflicts: Mutex::default(),
            edit_delay: Mutex::default(),
            watchers: Mutex::default(),
            watched: Mutex::default(),
            pushed_until: Mutex::default(),
            gathered_at: Mutex::default(),
            changes: tokio::sync::broadcast::channel(256).0,
        }
    }
}

/// Locks `mutex`, going on after a panic elsewhere (the data stays consistent: every critical
/// section here is a single map or clock update).
pub(crate) fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Whether every dot of `inner` is in `outer`.
fn context_within(inner: &CausalContext, outer: &CausalContext) -> bool {
    inner.vv.0.iter().all(|(writer, &counter)| {
        let seen = outer.vv.get(writer);
        seen >= counter
            || (seen + 1..=counter).all(|c| {
                outer.contains(&cairn_dir::Dot {
                    writer: *writer,
                    counter: c,
                })
            })
    }) && inner.cloud.iter().all(|dot| outer.contains(dot))
}

fn decode_error(e: cairn_dir::DirError) -> NodeError {
    NodeError::Dir(e)
}

impl Inner {
    /// Storage members that hold `slot`, in rendezvous order.
    pub(crate) fn slot_holders(&self, slot: &SlotId) -> Vec<Member> {
        self.ranked(&ShareRoot::from_bytes(*slot.as_bytes()))
    }

    /// Stores a version this node was sent, after checking its signature.
    pub(crate) async fn serve_put_version(
        self: &Arc<Self>,
        peer: cairn_core::NodeId,
        bytes: Vec<u8>,
    ) -> Response {
        if !self.config.storage {
            return Response::Refused(Refusal::NotStorage);
        }
        let inner = self.clone();
        let result = tokio::task::spawn_blocking(move || {
            let version = Version::decode(&bytes).map_err(decode_error)?;
            let already = slots::put_version(inner.meta.db(), &version)?;
            Ok::<_, NodeError>((already, version))
        })
        .await;
        match result {
            Ok(Ok((already, version))) => {
                if !already {
                    self.notify_watchers(peer, version);
                }
                Response::Stored { already }
            }
            Ok(Err(NodeError::Dir(e))) => {
                warn!(peer = %peer.fmt_short(), error = %e, "refusing directory version");
                Response::Refused(Refusal::InvalidVersion)
            }
            Ok(Err(e)) => {
                warn!(error = %e, "cannot store directory version");
                Response::Refused(Refusal::Internal)
            }
            Err(_) => Response::Refused(Refusal::Internal),
        }
    }

    /// Answers a reader with the versions of `slot` it lacks.
    pub(crate) async fn serve_get_versions(
        self: &Arc<Self>,
        slot: SlotId,
        have: Vec<VersionId>,
    ) -> Response {
        let inner = self.clone();
        let result =
            tokio::task::spawn_blocking(move || slots::versions(inner.meta.db(), &slot, &have))
                .await;
        match result {
            Ok(Ok(answer)) => Response::Versions {
                versions: answer
                    .versions
                    .into_iter()
                    .map(serde_bytes::ByteBuf::from)
                    .collect(),
                heads: answer.heads,
                more: answer.more,
            },
            Ok(Err(e)) => {
                warn!(error = %e, "cannot read directory versions");
                Response::Refused(Refusal::Internal)
            }
            Err(_) => Response::Refused(Refusal::Internal),
        }
    }
}

/// Versions gathered from holders, verified, with the holders that answered.
struct Gathered {
    versions: Vec<(Version, VersionBody)>,
    answered: usize,
}

/// Asks `holder` for every version of `slot` after `have`, over as many answers as it takes.
async fn fetch_versions(
    inner: &Arc<Inner>,
    holder: &Member,
    slot: SlotId,
    mut have: Vec<VersionId>,
) -> Result<Vec<(VersionId, Vec<u8>)>, String> {
    let mut out = Vec::new();
    loop {
        let request = Request::GetVersions {
            slot,
            have: have.clone(),
        };
        match inner.request(holder, &request).await {
            Ok(Response::Versions { versions, more, .. }) => {
                let complete = !more || versions.is_empty();
                for bytes in versions {
                    let id = VersionId::from_bytes(*blake3::hash(&bytes).as_bytes());
                    have.push(id);
                    out.push((id, bytes.into_vec()));
                }
                if complete {
                    return Ok(out);
                }
                if have.len() > MAX_VERSIONS {
                    return Err(format!(
                        "more than {MAX_VERSIONS} versions since the last snapshot"
                    ));
                }
            }
            Ok(other) => return Err(format!("unexpected answer {other:?}")),
            Err(e) => return Err(e.to_string()),
        }
    }
}

impl Node {
    pub(crate) fn cached(&self, slot: &SlotId) -> Option<Arc<Cached>> {
        let cache = locked(&self.inner.dirs.cache);
        cache.get(slot).cloned()
    }

    /// Takes the slot's merge lock (see [`Dirs::merge_locks`]).
    async fn merge_lock(&self, slot: &SlotId) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = locked(&self.inner.dirs.merge_locks)
            .entry(*slot)
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    fn store_cached(&self, slot: SlotId, cached: Arc<Cached>) {
        let mut cache = locked(&self.inner.dirs.cache);
        cache.insert(slot, cached);
    }

    fn observe_clock(&self, hlc: Hlc) {
        let now = now_ms();
        let mut clock = locked(&self.inner.dirs.clock);
        let seen = hlc.clamped(now);
        if seen > *clock {
            *clock = seen;
        }
    }

    pub(crate) fn tick_clock(&self) -> Hlc {
        let mut clock = locked(&self.inner.dirs.clock);
        *clock = clock.next(now_ms());
        *clock
    }

    /// Asks the slot's holders for the versions after `have`; verifies and opens each.
    async fn gather(&self, cap: &DirReadCap, have: &[VersionId]) -> Gathered {
        let slot = cap.slot();
        let mut holders: Vec<Member> = self
            .inner
            .slot_holders(&slot)
            .into_iter()
            .take(DIR_REPLICAS)
            .collect();
        // A copy this node keeps (a pinned directory) is asked too, last: it answers when the
        // grid does not, and read repair keeps it current.
        if holders.iter().all(|h| h.id != self.id())
            && slots::holds(self.inner.meta.db(), &slot).unwrap_or(false)
            && let Some(me) = self.inner.members().into_iter().find(|m| m.id == self.id())
        {
            holders.push(me);
        }
        let mut set = JoinSet::new();
        let mut holders = holders.into_iter();
        // A reader with nothing yet takes the bulk from one holder, then asks the others only
        // for what that one lacked: a large directory crosses the network once, not three times.
        let mut assumed: Vec<VersionId> = have.to_vec();
        if have.is_empty()
            && let Some(first) = holders.next()
        {
            let answer = fetch_versions(&self.inner, &first, slot, Vec::new()).await;
            if let Ok(versions) = &answer
                && versions.len() < MAX_VERSIONS
            {
                assumed = versions.iter().map(|(id, _)| *id).collect();
            }
            set.spawn(async move { (first, answer) });
        }
        for holder in holders {
            let inner = self.inner.clone();
            let have = assumed.clone();
            set.spawn(async move {
                let answer = fetch_versions(&inner, &holder, slot, have).await;
                (holder, answer)
            });
        }
        let mut seen: HashSet<VersionId> = HashSet::new();
        let mut gathered = Gathered {
            versions: Vec::new(),
            answered: 0,
        };
        // Which versions each holder sent, to hand the others what they lack.
        let mut sent_by: Vec<(Member, HashSet<VersionId>)> = Vec::new();
        while let Some(joined) = set.join_next().await {
            let Ok((holder, answer)) = joined else {
                continue;
            };
            let peer = holder.id;
            let versions = match answer {
                Ok(versions) => versions,
                Err(e) => {
                    debug!(peer = %peer.fmt_short(), error = %e, "holder did not send versions");
                    continue;
                }
            };
            gathered.answered += 1;
            // What it was told the reader has counts as sent (holders catch up among
            // themselves).
            let mut sent: HashSet<VersionId> = versions.iter().map(|(id, _)| *id).collect();
            sent.extend(assumed.iter().copied());
            sent_by.push((holder, sent));
            // Versions another holder already sent were checked then.
            let versions: Vec<Vec<u8>> = versions
                .into_iter()
                .filter(|(id, _)| !seen.contains(id))
                .map(|(_, bytes)| bytes)
                .collect();
            let cap = cap.clone();
            let opened = tokio::task::spawn_blocking(move || {
                let mut out = Vec::new();
                let mut bad = 0usize;
                for bytes in versions {
                    match Version::decode(&bytes).and_then(|v| {
                        let body = v.open(&cap)?;
                        Ok((v, body))
                    }) {
                        Ok(pair) => out.push(pair),
                        Err(_) => bad += 1,
                    }
                }
                (out, bad)
            })
            .await;
            let Ok((opened, bad)) = opened else { continue };
            if bad > 0 {
                warn!(peer = %peer.fmt_short(), bad, "holder sent directory versions that do not verify; ignoring them");
                self.inner.note_bad_share(peer);
            }
            for (version, body) in opened {
                if seen.insert(version.id()) {
                    gathered.versions.push((version, body));
                }
            }
        }
        self.repair_holders(&gathered, sent_by);
        gathered
    }

    /// Stores every version of the directory on this node, so it lists without the grid
    /// (see [`gather`](Self::gather)).
    pub(crate) async fn keep_versions(&self, cap: &DirReadCap) -> Result<(), NodeError> {
        let gathered = self.gather(cap, &[]).await;
        if gathered.answered == 0 {
            return Err(NodeError::DirUnreachable(cap.slot().fmt_short()));
        }
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            for (version, _) in &gathered.versions {
                slots::put_version(inner.meta.db(), version)?;
            }
            Ok(())
        })
        .await
        .map_err(|e| NodeError::Control(e.to_string()))?
    }

    /// Read repair: hands each holder that answered the versions the others sent and it
    /// lacked (it was offline during an update), in the background.
    fn repair_holders(&self, gathered: &Gathered, sent_by: Vec<(Member, HashSet<VersionId>)>) {
        for (holder, sent) in sent_by {
            let missing: Vec<Vec<u8>> = gathered
                .versions
                .iter()
                .filter(|(v, _)| !sent.contains(&v.id()))
                .map(|(v, _)| v.as_bytes().to_vec())
                .collect();
            if missing.is_empty() {
                continue;
            }
            debug!(peer = %holder.id.fmt_short(), versions = missing.len(), "repairing a holder that lacks directory versions");
            let inner = self.inner.clone();
            tokio::spawn(async move {
                for version in missing {
                    let request = Request::PutVersion { version };
                    if inner.request(&holder, &request).await.is_err() {
                        return;
                    }
                }
            });
        }
    }

    /// The readcap this node used for `slot`, if it has read it.
    pub(crate) fn known_cap(&self, slot: &SlotId) -> Option<DirReadCap> {
        let caps = locked(&self.inner.dirs.caps);
        caps.get(slot).cloned()
    }

    /// Removes the slot's state from the cache, for an edit in place. Only under the slot's
    /// [`merge_lock`](Self::merge_lock), which is held until the state is stored again.
    fn take_cached(&self, slot: &SlotId) -> Option<Cached> {
        let taken = {
            let mut cache = locked(&self.inner.dirs.cache);
            cache.remove(slot)
        };
        taken.map(|arc| Arc::try_unwrap(arc).unwrap_or_else(|shared| (*shared).clone()))
    }

    /// Whether the cached state of `slot` is current without asking its holders: every holder
    /// pushes its changes here, and the last gather is under [`TRUST_WATCHED_FOR`] old.
    fn trusted(&self, slot: &SlotId) -> bool {
        let now = Instant::now();
        locked(&self.inner.dirs.pushed_until)
            .get(slot)
            .is_some_and(|until| *until > now)
            && locked(&self.inner.dirs.gathered_at)
                .get(slot)
                .is_some_and(|at| now.duration_since(*at) < TRUST_WATCHED_FOR)
    }

    /// The directory's current state: the cached state joined with whatever the holders have
    /// that it lacks. A watched directory whose holders push every change is not asked again
    /// (see [`trusted`](Self::trusted)).
    pub(crate) async fn load_dir(&self, cap: &DirReadCap) -> Result<Arc<Cached>, NodeError> {
        if let Some(cached) = self.cached(&cap.slot())
            && self.trusted(&cap.slot())
        {
            return Ok(cached);
        }
        self.refresh_dir(cap).await
    }

    /// Like [`load_dir`](Self::load_dir), but always asks the holders (a change was pushed).
    pub(crate) async fn refresh_dir(&self, cap: &DirReadCap) -> Result<Arc<Cached>, NodeError> {
        let slot = cap.slot();
        locked(&self.inner.dirs.caps)
            .entry(slot)
            .or_insert_with(|| cap.clone());
        let (fresh, _merging, taken) = loop {
            let cached = match self.cached(&slot) {
                Some(cached) => Some(cached),
                // An edit or merge holds the state out of the cache while it works: wait for it
                // rather than fetch every version from the holders again.
                None => {
                    drop(self.merge_lock(&slot).await);
                    self.cached(&slot)
                }
            };
            let have: Vec<VersionId> = cached.as_ref().map(|c| c.heads.clone()).unwrap_or_default();
            let asked = Instant::now();
            let gathered = self.gather(cap, &have).await;
            if gathered.answered == 0 && cached.is_none() {
                return Err(NodeError::DirUnreachable(slot.fmt_short()));
            }
            if gathered.answered > 0 {
                locked(&self.inner.dirs.gathered_at).insert(slot, asked);
            }
            let mut fresh: Vec<(Version, VersionBody)> = gathered
                .versions
                .into_iter()
                .filter(|(v, _)| !have.contains(&v.id()))
                .collect();
            if fresh.is_empty()
                && let Some(cached) = cached
            {
                return Ok(cached);
            }
            fresh.sort_by_key(|(v, _)| (v.depth(), v.id()));
            drop(cached);
            // Merge into the state as it is now: another load may have merged some of `fresh`
            // meanwhile (joining it again changes nothing).
            let merging = self.merge_lock(&slot).await;
            let now = self.take_cached(&slot);
            if now.is_none() && !have.is_empty() {
                // What was gathered is only what follows a state no longer held: start over.
                continue;
            }
            break (fresh, merging, now);
        };
        let from_cache = taken.is_some();
        let mut next = taken.unwrap_or_default();
        let mut heads: BTreeSet<VersionId> = next.heads.iter().copied().collect();
        let mut cited: HashSet<VersionId> = HashSet::new();
        for (version, body) in &fresh {
            self.observe_clock(body.hlc);
            // A version is new if it brings writes not seen, follows a head, or is the first
            // version of a directory read afresh (a snapshot brings no writes); otherwise it is
            // history a lagging holder sent again.
            let follows = version.parents().iter().any(|p| heads.contains(p))
                || (heads.is_empty() && version.parents().is_empty());
            cited.extend(version.parents().iter().copied());
            if follows || !context_within(&body.state.context, &next.state.context) {
                heads.insert(version.id());
                next.depth = next.depth.max(version.depth());
            }
            if version.is_snapshot() {
                next.snapshot_depth = next.snapshot_depth.max(version.depth());
                next.state.join(&body.state);
            } else {
                next.state.join_delta(&body.state);
            }
        }
        heads.retain(|h| !cited.contains(h));
        next.heads = heads.into_iter().collect();
        if !from_cache && let Some(frontier) = slots::frontier(self.inner.meta.db(), &slot)? {
            let seen_all = frontier
                .seen
                .0
                .iter()
                .all(|(writer, &counter)| next.state.context.max_counter(writer) >= counter);
            if !seen_all {
                return Err(NodeError::DirRolledBack(slot.fmt_short()));
            }
        }
        let next = Arc::new(next);
        self.remember(&slot, &next)?;
        Ok(next)
    }

    fn remember(&self, slot: &SlotId, cached: &Arc<Cached>) -> Result<(), NodeError> {
        let frontier = Frontier {
            heads: cached.heads.clone(),
            depth: cached.depth,
            seen: cached.state.context.vv.clone(),
        };
        self.store_cached(*slot, cached.clone());
        slots::set_frontier(self.inner.meta.db(), slot, &frontier)
    }

    /// Pushes one encoded version to the slot's holders: the first [`DIR_REPLICAS`] at once,
    /// then further ones in rank order for each that failed. Returns how many stored it.
    async fn push_version(&self, slot: &SlotId, bytes: Vec<u8>) -> usize {
        let holders = self.inner.slot_holders(slot);
        let mut stored = 0usize;
        let mut next = 0usize;
        let request = Request::PutVersion { version: bytes };
        while stored < DIR_REPLICAS && next < holders.len() {
            let want = (DIR_REPLICAS - stored).min(holders.len() - next);
            let mut set = JoinSet::new();
            for holder in &holders[next..next + want] {
                let inner = self.inner.clone();
                let holder = holder.clone();
                let request = request.clone();
                set.spawn(async move { (holder.id, inner.request(&holder, &request).await) });
            }
            next += want;
            while let Some(joined) = set.join_next().await {
                match joined {
                    Ok((_, Ok(Response::Stored { .. }))) => stored += 1,
                    Ok((peer, other)) => {
                        debug!(peer = %peer.fmt_short(), answer = ?other, "holder did not store version");
                    }
                    Err(_) => {}
                }
            }
        }
        stored
    }

    /// Publishes an empty first version of a new directory, so readers find it.
    pub(crate) async fn create_dir(&self, cap: &DirWriteCap) -> Result<(), NodeError> {
        let body = VersionBody {
            writer: self.id(),
            hlc: self.tick_clock(),
            state: DirState::default(),
        };
        let version = Version::seal(cap, Vec::new(), 1, true, &body, rand::random());
        let slot = cap.slot();
        let id = version.id();
        if self.push_version(&slot, version.into_bytes()).await == 0 {
            return Err(NodeError::DirUnreachable(slot.fmt_short()));
        }
        let cached = Arc::new(Cached {
            state: DirState::default(),
            heads: vec![id],
            depth: 1,
            edits_since_gc: 0,
            snapshot_depth: 1,
        });
        self.remember(&slot, &cached)
    }

    /// Loads the directory, runs `change` on an [`Edit`] of it, and publishes the delta as one
    /// version. Nothing is published, and the cache is unchanged, if `change` fails or no
    /// holder stores the version.
    pub(crate) async fn edit_dir<R>(
        &self,
        cap: &DirWriteCap,
        change: impl FnOnce(&mut Edit<'_>) -> Result<R, NodeError>,
    ) -> Result<R, NodeError> {
        let _guard = self.inner.dirs.edit_lock.lock().await;
        let slot = cap.slot();
        self.load_dir(&cap.read_cap()).await?;
        let delay = *locked(&self.inner.dirs.edit_delay);
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        let _merging = self.merge_lock(&slot).await;
        // Edit the cached state in place (no copy of a large directory); an edit that fails or
        // cannot be published is undone.
        let mut next = self.take_cached(&slot).unwrap_or_default();
        next.edits_since_gc += 1;
        if next.edits_since_gc >= GC_EVERY_EDITS {
            next.edits_since_gc = 0;
            let dropped = next.state.collect_garbage();
            if dropped > 0 {
                debug!(slot = %slot.fmt_short(), dropped, "forgot deleted entries no writer can still edit");
            }
        }
        let hlc = self.tick_clock();
        let me = self.id();
        let min_counter = next.state.frontiers.get(&me).map_or(0, |f| f.get(&me));
        let mut edit = Edit::new(&mut next.state, me, hlc, min_counter);
        let result = match change(&mut edit) {
            Ok(result) => result,
            Err(e) => {
                edit.abort();
                self.store_cached(slot, Arc::new(next));
                return Err(e);
            }
        };
        let Some((delta, undo)) = edit.finish_undoable() else {
            self.store_cached(slot, Arc::new(next));
            return Ok(result);
        };
        let body = VersionBody {
            writer: me,
            hlc,
            state: delta,
        };
        let depth = next.depth + 1;
        let version = Version::seal(cap, next.heads.clone(), depth, false, &body, rand::random());
        let id = version.id();
        if self.push_version(&slot, version.into_bytes()).await == 0 {
            undo.undo(&mut next.state);
            self.store_cached(slot, Arc::new(next));
            return Err(NodeError::DirUnreachable(slot.fmt_short()));
        }
        next.heads = vec![id];
        next.depth = depth;
        if depth.saturating_sub(next.snapshot_depth) >= SNAPSHOT_EVERY {
            self.publish_snapshot(cap, &mut next).await;
        }
        self.remember(&slot, &Arc::new(next))?;
        Ok(result)
    }

    /// Publishes the whole state as a snapshot version after the current heads, so readers
    /// without a copy fetch it and what follows instead of the whole history. A state too large
    /// for one answer is not snapshotted (its history keeps growing; noted in the log).
    async fn publish_snapshot(&self, cap: &DirWriteCap, next: &mut Cached) {
        let slot = cap.slot();
        next.state.collect_garbage();
        let me = self.id();
        let hlc = self.tick_clock();
        let plain = Version::encode_body(&me, &hlc, &next.state);
        if plain.len() > SNAPSHOT_LIMIT {
            warn!(slot = %slot.fmt_short(), bytes = plain.len(), "directory too large to snapshot in one version; readers without a copy fetch its whole history");
            next.snapshot_depth = next.depth;
            return;
        }
        let depth = next.depth + 1;
        let version =
            Version::seal_encoded(cap, next.heads.clone(), depth, true, plain, rand::random());
        let id = version.id();
        if self.push_version(&slot, version.into_bytes()).await == 0 {
            return;
        }
        debug!(slot = %slot.fmt_short(), depth, "published a directory snapshot");
        next.heads = vec![id];
        next.depth = depth;
        next.snapshot_depth = depth;
    }

    /// Starts the background catch-up of held slots: soon after start (a holder that was
    /// offline), then every [`SLOT_SYNC_INTERVAL`].
    pub(crate) async fn spawn_slot_sync(&self) {
        let weak = Arc::downgrade(&self.inner);
        let cancel = self.inner.cancel.clone();
        self.inner.tasks.lock().await.spawn(async move {
            let mut wait = FIRST_SLOT_SYNC;
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                let Some(inner) = weak.upgrade() else { return };
                let node = Node { inner };
                match node.sync_slots().await {
                    Ok(0) => {}
                    Ok(added) => debug!(added, "caught up on directory versions"),
                    Err(e) => warn!(error = %e, "directory catch-up failed"),
                }
                drop(node);
                wait = SLOT_SYNC_INTERVAL;
            }
        });
    }

    /// Records how many lines of a listed directory are in conflict (for `status`).
    pub(crate) fn note_conflicts(&self, slot: SlotId, path: &str, lines: usize) {
        let mut seen = locked(&self.inner.dirs.conflicts);
        if lines == 0 {
            seen.remove(&slot);
        } else {
            seen.insert(slot, (path.to_owned(), lines));
        }
    }

    /// Directories last listed with conflicts, by location.
    pub(crate) fn conflicts_seen(&self) -> Vec<crate::report::DirConflicts> {
        let seen = locked(&self.inner.dirs.conflicts);
        let mut out: Vec<crate::report::DirConflicts> = seen
            .values()
            .map(|(path, lines)| crate::report::DirConflicts {
                path: path.clone(),
                lines: *lines,
            })
            .collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }

    /// Test knob: pause `delay` between loading a directory and publishing each edit of it,
    /// so edits on two nodes are truly concurrent.
    pub fn set_edit_delay(&self, delay: Option<std::time::Duration>) {
        *locked(&self.inner.dirs.edit_delay) = delay;
    }

    /// The nodes that hold `slot`'s versions, in rank order (the first [`DIR_REPLICAS`] are
    /// written to; later ones stand in when those are down).
    pub fn slot_holders(&self, slot: &SlotId) -> Vec<cairn_core::NodeId> {
        self.inner
            .slot_holders(slot)
            .into_iter()
            .map(|m| m.id)
            .collect()
    }

    /// The versions this node holds of `slot`, as a holder (encoded).
    pub fn held_versions(&self, slot: &SlotId) -> Result<Vec<Vec<u8>>, NodeError> {
        Ok(slots::versions(self.inner.meta.db(), slot, &[])?.versions)
    }

    /// Brings this node's copies of the slots it holds up to date with the other holders (a
    /// holder that was offline during an update catches up here). Returns the versions added.
    pub async fn sync_slots(&self) -> Result<usize, NodeError> {
        let db_slots = slots::held_slots(self.inner.meta.db())?;
        let mut added = 0;
        for slot in db_slots {
            let have = slots::heads(self.inner.meta.db(), &slot)?;
            for holder in self
                .inner
                .slot_holders(&slot)
                .into_iter()
                .take(DIR_REPLICAS + 1)
            {
                if holder.id == self.id() {
                    continue;
                }
                let Ok(versions) = fetch_versions(&self.inner, &holder, slot, have.clone()).await
                else {
                    continue;
                };
                for (_, bytes) in versions {
                    match Version::decode(&bytes) {
                        Ok(version) if version.slot() == slot => {
                            if !slots::put_version(self.inner.meta.db(), &version)? {
                                added += 1;
                            }
                        }
                        _ => self.inner.note_bad_share(holder.id),
                    }
                }
            }
        }
        Ok(added)
    }
}

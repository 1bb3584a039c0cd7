//! The running node: its store, roster, network endpoint and the services on top.
//!
//! Ownership: [`Node`] is a cheap handle around one `Inner`, which owns the store, the
//! metadata database, the roster (behind a lock, persisted on change) and the per-peer health
//! table. The network endpoint calls back into the node through a [`Service`] that holds only a
//! weak reference, so dropping the last handle ends everything. Background work (roster
//! gossip) hangs off a cancellation token and is awaited on [`Node::shutdown`].

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_core::cert::{Revocation, Roles};
use cairn_core::erasure::verify_header;
use cairn_core::id::{NodeId, ShareRoot};
use cairn_core::wire::{
    FoundShare, GridInfo, Hello, InviteCode, JoinRefusal, JoinRequest, JoinResponse, Lease,
    MAX_LEASE_SECS, PutAnswer, Refusal, Request, Response, RosterEntry, ShareItem,
};
use cairn_net::{BoxFuture, JoinService, Membership, Net, NetConfig, NetError, ShareService};
use cairn_store::{DiskStore, PutItem, PutOutcome, ShareStore, StoreError};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::NodeError;
use crate::config::{GridConfig, NodeConfig};
use crate::dir::{NodeDir, NodeKeys};
use crate::meta::Meta;

/// How often a node exchanges rosters with the members it knows.
const GOSSIP_INTERVAL: Duration = Duration::from_secs(10);
/// Delay before the first roster exchange after start.
const FIRST_GOSSIP_DELAY: Duration = Duration::from_millis(1500);
/// A peer that failed is skipped by placement for this long.
const DOWN_BACKOFF: Duration = Duration::from_secs(15);
/// The most share and header bytes one [`Response::Shares`] carries (under the frame limit).
const SHARES_ANSWER_BUDGET: usize = cairn_core::wire::MAX_FRAME - 1024 * 1024;
/// Environment variable naming a delay (ms) added before this node serves each share or
/// directory-version request: a test-only knob to simulate a slow holder.
pub const SERVE_DELAY_ENV: &str = "CAIRN_TEST_SERVE_DELAY_MS";
/// How long a new member certificate is valid (about 100 years: revocation, not expiry, is how
/// members are removed).
pub(crate) const CERT_LIFETIME_SECS: u64 = 100 * 365 * 24 * 3600;

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What the node knows of a peer's health, from its own requests.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PeerHealth {
    /// Smoothed latency of share requests, in seconds.
    pub(crate) latency: Option<f64>,
    /// When the last request failed.
    pub(crate) failed_at: Option<Instant>,
    /// When the last request succeeded.
    pub(crate) ok_at: Option<Instant>,
    /// Shares that failed verification.
    pub(crate) bad_shares: u64,
}

impl PeerHealth {
    pub(crate) fn recently_failed(&self) -> bool {
        match (self.failed_at, self.ok_at) {
            (Some(f), Some(ok)) if ok > f => false,
            (Some(f), _) => f.elapsed() < DOWN_BACKOFF,
            _ => false,
        }
    }
}

/// A member's id and where to dial it.
#[derive(Clone, Debug)]
pub(crate) struct Member {
    pub(crate) id: NodeId,
    pub(crate) addrs: Vec<SocketAddr>,
    pub(crate) roles: Roles,
}

pub(crate) struct Inner {
    pub(crate) dir: NodeDir,
    pub(crate) config: NodeConfig,
    pub(crate) grid: GridConfig,
    pub(crate) keys: NodeKeys,
    pub(crate) id: NodeId,
    pub(crate) store: Arc<dyn ShareStore>,
    pub(crate) meta: Meta,
    pub(crate) dirs: crate::dirs::Dirs,
    /// Decrypted chunks and manifests kept on disk (see [`crate::blocks`]).
    pub(crate) blocks: Arc<crate::blocks::BlockCache>,
    roster: RwLock<BTreeMap<NodeId, RosterEntry>>,
    /// Revoked nodes, each with the grid key's signed statement.
    pub(crate) revoked: RwLock<BTreeMap<NodeId, Revocation>>,
    /// What the node has done since it started.
    pub(crate) activity: crate::activity::Activity,
    pub(crate) health: Mutex<HashMap<NodeId, PeerHealth>>,
    /// The grid's space as last measured (see [`Node::grid_space`]).
    pub(crate) space: crate::space::SpaceCache,
    net: OnceLock<Net>,
    serve_delay: Mutex<Option<Duration>>,
    pub(crate) cancel: CancellationToken,
    pub(crate) tasks: tokio::sync::Mutex<JoinSet<()>>,
}

/// A running node. Clone to share.
#[derive(Clone)]
pub struct Node {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.inner.id)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Opens the node at `dir` and starts serving the grid.
    pub async fn start(dir: &NodeDir) -> Result<Node, NodeError> {
        dir.require_initialised()?;
        if crate::control::is_running(dir) {
            return Err(NodeError::AlreadyRunning(dir.root().to_path_buf()));
        }
        let config = NodeConfig::load(&dir.config())?;
        let grid = GridConfig::load(&dir.grid())?;
        let keys = NodeKeys::load(dir)?;
        let id = keys.node_id();
        let store_dir = dir.store();
        let capacity = if config.storage {
            config.capacity_bytes
        } else {
            0
        };
        let opened = tokio::task::spawn_blocking(move || DiskStore::open(&store_dir, capacity))
            .await
            .map_err(|e| NodeError::Control(e.to_string()))?;
        let store: Arc<dyn ShareStore> = match opened {
            Ok(store) => Arc::new(store),
            // Another process holds the store: a node is already running here.
            Err(StoreError::Db(e)) if matches!(*e, redb::Error::DatabaseAlreadyOpen) => {
                return Err(NodeError::AlreadyRunning(dir.root().to_path_buf()));
            }
            Err(e) => return Err(e.into()),
        };
        let meta = Meta::open(&dir.meta_db())?;
        let cache_dir = dir.cache();
        let budget = config.block_cache_bytes;
        let blocks = tokio::task::spawn_blocking(move || {
            crate::blocks::BlockCache::open(&cache_dir, budget)
        })
        .await
        .map_err(|e| NodeError::Control(e.to_string()))??;
        blocks.pin(&crate::pins::pinned_blocks(meta.db())?);
        let roster: BTreeMap<NodeId, RosterEntry> = meta
            .roster(&grid.grid)?
            .into_iter()
            .map(|e| (e.cert.node(), e))
            .collect();
        let revoked: BTreeMap<NodeId, Revocation> = meta
            .revocations(&grid.grid)?
            .into_iter()
            .map(|r| (r.node(), r))
            .collect();
        let serve_delay = std::env::var(SERVE_DELAY_ENV)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_millis);
        let inner = Arc::new(Inner {
            dir: dir.clone(),
            config: config.clone(),
            grid: grid.clone(),
            id,
            store,
            meta,
            dirs: crate::dirs::Dirs::default(),
            blocks: Arc::new(blocks),
            roster: RwLock::new(roster),
            revoked: RwLock::new(revoked),
            activity: Default::default(),
            health: Mutex::new(HashMap::new()),
            space: Default::default(),
            net: OnceLock::new(),
            serve_delay: Mutex::new(serve_delay),
            cancel: CancellationToken::new(),
            tasks: tokio::sync::Mutex::new(JoinSet::new()),
            keys,
        });
        let service = Arc::new(Service(Arc::downgrade(&inner)));
        let join: Option<Arc<dyn JoinService>> = if inner.keys.grid_key.is_some() {
            Some(service.clone())
        } else {
            None
        };
        let net = Net::bind(
            NetConfig {
                secret_key: inner.keys.node_secret.clone(),
                bind: config.listen,
                request_timeout: Duration::from_secs(config.request_timeout_secs.max(1)),
            },
            Membership {
                grid: grid.grid,
                cert: inner.keys.cert.clone(),
            },
            service,
            join,
        )
        .await?;
        let addrs = net.local_addrs();
        for node in inner.revoked_nodes() {
            net.revoke(node);
        }
        let _ = inner.net.set(net);
        let own = RosterEntry {
            cert: inner.keys.cert.clone(),
            addrs,
            announced_at: now_secs(),
        };
        inner.merge_roster(vec![own]);
        let node = Node { inner };
        node.spawn_gossip().await;
        node.spawn_slot_sync().await;
        node.spawn_watch_renewal().await;
        node.spawn_pin_refresh().await;
        info!(node = %id, grid = %grid.grid.fmt_short(), "node started");
        Ok(node)
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// The grid's encoding (k, n, happy).
    pub fn encoding(&self) -> cairn_core::Encoding {
        self.inner.grid.encoding
    }

    /// The node's settings (`node.toml`), as loaded at start.
    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    /// The node's directory.
    pub fn dir(&self) -> &NodeDir {
        &self.inner.dir
    }

    /// The network endpoint.
    pub fn net(&self) -> &Net {
        self.inner.net()
    }

    /// Addresses other members dial this node at.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.net().local_addrs()
    }

    async fn spawn_gossip(&self) {
        let weak = Arc::downgrade(&self.inner);
        let cancel = self.inner.cancel.clone();
        self.inner.tasks.lock().await.spawn(async move {
            // The first round waits a moment, so that members started together (a restarted
            // grid) are all listening before they dial each other.
            let mut wait = FIRST_GOSSIP_DELAY;
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                let Some(inner) = weak.upgrade() else { return };
                inner.gossip_round().await;
                drop(inner);
                wait = GOSSIP_INTERVAL;
            }
        });
    }

    /// Exchanges rosters with every known member now (also done every few seconds).
    pub async fn gossip_now(&self) {
        self.inner.gossip_round().await;
    }

    /// Issues a one-time invite code valid for `ttl` (admin nodes only).
    pub fn create_invite(&self, ttl: Duration) -> Result<InviteCode, NodeError> {
        if self.inner.keys.grid_key.is_none() {
            return Err(NodeError::NotAllowed(
                "this node does not hold the grid key, so it cannot invite (ask the grid's admin)",
            ));
        }
        let secret: [u8; 32] = rand::random();
        self.inner
            .meta
            .add_invite(&secret, now_secs().saturating_add(ttl.as_secs()))?;
        Ok(InviteCode {
            grid: self.inner.grid.grid,
            inviter: self.inner.id,
            addrs: self.addrs(),
            secret,
        })
    }

    /// Test knob: delay every share and directory-version request this node serves by `delay`
    /// (a slow holder). The
    /// [`SERVE_DELAY_ENV`] variable sets it at start.
    pub fn set_serve_delay(&self, delay: Option<Duration>) {
        *self
            .inner
            .serve_delay
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = delay;
    }

    /// The local share store.
    pub fn store(&self) -> Arc<dyn ShareStore> {
        self.inner.store.clone()
    }

    /// Stops background work and the endpoint. Awaits both.
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        let mut tasks = self.inner.tasks.lock().await;
        while tasks.join_next().await.is_some() {}
        self.net().shutdown().await;
    }
}

impl Inner {
    pub(crate) fn net(&self) -> &Net {
        // Set in `Node::start` before any handle is handed out.
        self.net.get().expect("net is set at start")
    }

    /// Members known, sorted by id.
    pub(crate) fn members(&self) -> Vec<Member> {
        let roster = self.roster.read().unwrap_or_else(|p| p.into_inner());
        roster
            .values()
            .map(|e| Member {
                id: e.cert.node(),
                addrs: e.addrs.clone(),
                roles: e.cert.roles(),
            })
            .collect()
    }

    pub(crate) fn roster_entries(&self) -> Vec<RosterEntry> {
        let roster = self.roster.read().unwrap_or_else(|p| p.into_inner());
        roster.values().cloned().collect()
    }

    /// Drops `node` from the in-memory roster (the database row goes with its revocation).
    pub(crate) fn forget_member(&self, node: &NodeId) {
        let mut roster = self.roster.write().unwrap_or_else(|p| p.into_inner());
        roster.remove(node);
    }

    /// Adds entries signed by the grid key, keeping the newer announcement of each member.
    pub(crate) fn merge_roster(&self, entries: Vec<RosterEntry>) {
        let mut changed = Vec::new();
        {
            let mut roster = self.roster.write().unwrap_or_else(|p| p.into_inner());
            for entry in entries {
                if self.is_revoked(&entry.cert.node()) {
                    continue;
                }
                if entry.cert.verify_signature(&self.grid.grid).is_err() {
                    warn!(node = %entry.cert.node().fmt_short(), "dropping roster entry with a bad certificate");
                    continue;
                }
                if entry.cert.expires_at() <= now_secs() {
                    continue;
                }
                let node = entry.cert.node();
                let newer = match roster.get(&node) {
                    None => true,
                    Some(old) => {
                        entry.announced_at > old.announced_at
                            || (entry.announced_at == old.announced_at
                                && entry.addrs != old.addrs
                                && node == self.id)
                    }
                };
                if newer {
                    roster.insert(node, entry.clone());
                    changed.push(entry);
                }
            }
        }
        if !changed.is_empty()
            && let Err(e) = self.meta.put_roster(&changed)
        {
            warn!(error = %e, "could not persist roster");
        }
    }

    pub(crate) async fn gossip_round(self: &Arc<Self>) {
        let members = self.members();
        let entries = self.roster_entries();
        let revocations = self.revocations();
        let mut set = JoinSet::new();
        for m in members.into_iter().filter(|m| m.id != self.id) {
            let inner = self.clone();
            let request = Request::Roster {
                entries: entries.clone(),
            };
            let revocations = revocations.clone();
            set.spawn(async move {
                if let Ok(Response::Roster(theirs)) = inner.request(&m, &request).await {
                    inner.merge_roster(theirs);
                }
                // Members that know of revocations pass them on; the answer brings the
                // receiver's.
                if !revocations.is_empty() {
                    let request = Request::Revocations { revocations };
                    if let Ok(Response::Revocations(theirs)) = inner.request(&m, &request).await {
                        inner.merge_revocations(theirs);
                    }
                }
            });
        }
        while set.join_next().await.is_some() {}
    }

    /// Sends `request` to `member` (served locally when it is this node), recording health.
    pub(crate) async fn request(
        self: &Arc<Self>,
        member: &Member,
        request: &Request,
    ) -> Result<Response, NetError> {
        if member.id == self.id {
            return Ok(self.serve(self.id, request.clone()).await);
        }
        let started = Instant::now();
        let mut waiting = Waiting {
            inner: self,
            peer: member.id,
            started,
            answered: false,
        };
        let result = self.net().request(member.id, &member.addrs, request).await;
        waiting.answered = true;
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let h = health.entry(member.id).or_default();
        match &result {
            Ok(_) => {
                let secs = started.elapsed().as_secs_f64();
                h.latency = Some(match h.latency {
                    Some(old) => old * 0.7 + secs * 0.3,
                    None => secs,
                });
                h.ok_at = Some(Instant::now());
            }
            Err(e) => {
                debug!(peer = %member.id.fmt_short(), error = %e, "request failed");
                h.failed_at = Some(Instant::now());
            }
        }
        result
    }

    /// Notes that `peer` served a share that failed verification.
    pub(crate) fn note_bad_share(&self, peer: NodeId) {
        warn!(peer = %peer.fmt_short(), "peer served a share that does not match its hash; skipping it");
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        health.entry(peer).or_default().bad_shares += 1;
    }

    pub(crate) fn health_of(&self, peer: &NodeId) -> PeerHealth {
        let health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        health.get(peer).copied().unwrap_or_default()
    }

    pub(crate) fn lease(&self) -> Lease {
        Lease {
            owner: self.id,
            expires_at: now_secs().saturating_add(
                self.config
                    .lease_days
                    .saturating_mul(86_400)
                    .min(MAX_LEASE_SECS),
            ),
        }
    }

    /// Answers one member request (from the network, or from this node itself).
    pub(crate) async fn serve(self: &Arc<Self>, peer: NodeId, request: Request) -> Response {
        match request {
            Request::PutShare {
                root,
                index,
                header,
                lease,
                data,
            } => {
                if !self.config.storage {
                    return Response::Refused(Refusal::NotStorage);
                }
                if !lease.acceptable_from(&peer, now_secs()) {
                    warn!(peer = %peer.fmt_short(), "refusing a lease that names another node or lasts too long");
                    return Response::Refused(Refusal::BadLease);
                }
                let valid =
                    verify_header(&root, &header).and_then(|h| h.verify_share(index, &data));
                if valid.is_err() {
                    warn!(peer = %peer.fmt_short(), root = %root.fmt_short(), index, "refusing share that does not match its root");
                    return Response::Refused(Refusal::InvalidShare);
                }
                let store = self.store.clone();
                let result = tokio::task::spawn_blocking(move || {
                    store.put(&root, index, &header, &data, lease)
                })
                .await;
                match result {
                    Ok(Ok(PutOutcome::Stored)) => Response::Stored { already: false },
                    Ok(Ok(_)) => Response::Stored { already: true },
                    Ok(Err(StoreError::Full { .. })) => Response::Refused(Refusal::Full),
                    Ok(Err(e)) => {
                        warn!(error = %e, "store failed");
                        Response::Refused(Refusal::Internal)
                    }
                    Err(_) => Response::Refused(Refusal::Internal),
                }
            }
            Request::GetShare { root, index, range } => {
                self.serve_pause().await;
                let store = self.store.clone();
                let result = tokio::task::spawn_blocking(move || {
                    store.get(&root, index, range.map(|(s, e)| s..e))
                })
                .await;
                match result {
                    Ok(Ok(Some(share))) => Response::Share {
                        header: share.header,
                        data: share.data,
                    },
                    Ok(Ok(None)) => Response::NotFound,
                    Ok(Err(e)) => {
                        warn!(root = %root.fmt_short(), index, error = %e, "cannot serve share");
                        Response::NotFound
                    }
                    Err(_) => Response::Refused(Refusal::Internal),
                }
            }
            Request::HeldShares { roots } => {
                let store = self.store.clone();
                let result = tokio::task::spawn_blocking(move || {
                    roots
                        .iter()
                        .map(|r| store.held(r).unwrap_or_default())
                        .collect::<Vec<_>>()
                })
                .await;
                match result {
                    Ok(held) => Response::Held(held),
                    Err(_) => Response::Refused(Refusal::Internal),
                }
            }
            Request::Roster { entries } => {
                self.merge_roster(entries);
                Response::Roster(self.roster_entries())
            }
            Request::PutShares { lease, shares } => {
                self.serve_put_shares(peer, lease, shares).await
            }
            Request::GetShares { shares } => self.serve_get_shares(shares).await,
            Request::PutVersion { version } => self.serve_put_version(peer, version).await,
            Request::GetVersions { slot, have } => {
                self.serve_pause().await;
                self.serve_get_versions(slot, have).await
            }
            Request::Watch { slots, ttl_secs } => self.serve_watch(peer, slots, ttl_secs),
            Request::Changed { version } => self.serve_changed(version),
            Request::Revocations { revocations } => {
                self.merge_revocations(revocations);
                Response::Revocations(self.revocations())
            }
            Request::Space => self.serve_space().await,
        }
    }

    /// Checks each share against its header and root, then stores the valid ones in one batch.
    async fn serve_put_shares(
        self: &Arc<Self>,
        peer: NodeId,
        lease: Lease,
        shares: Vec<ShareItem>,
    ) -> Response {
        if !self.config.storage {
            return Response::Refused(Refusal::NotStorage);
        }
        if !lease.acceptable_from(&peer, now_secs()) {
            warn!(peer = %peer.fmt_short(), "refusing a lease that names another node or lasts too long");
            return Response::Refused(Refusal::BadLease);
        }
        let store = self.store.clone();
        let result = tokio::task::spawn_blocking(move || {
            let valid: Vec<bool> = shares
                .iter()
                .map(|s| {
                    let ok = verify_header(&s.root, &s.header)
                        .and_then(|h| h.verify_share(s.index, &s.data))
                        .is_ok();
                    if !ok {
                        warn!(peer = %peer.fmt_short(), root = %s.root.fmt_short(), index = s.index, "refusing share that does not match its root");
                    }
                    ok
                })
                .collect();
            let items: Vec<PutItem<'_>> = shares
                .iter()
                .zip(&valid)
                .filter(|(_, ok)| **ok)
                .map(|(s, _)| PutItem {
                    root: s.root,
                    index: s.index,
                    header: &s.header,
                    data: &s.data,
                })
                .collect();
            let mut stored = store.put_many(&items, lease).into_iter();
            valid
                .iter()
                .map(|ok| {
                    if !ok {
                        return PutAnswer::Refused(Refusal::InvalidShare);
                    }
                    match stored.next() {
                        Some(Ok(PutOutcome::Stored)) => PutAnswer::Stored { already: false },
                        Some(Ok(_)) => PutAnswer::Stored { already: true },
                        Some(Err(StoreError::Full { .. })) => PutAnswer::Refused(Refusal::Full),
                        Some(Err(e)) => {
                            warn!(error = %e, "store failed");
                            PutAnswer::Refused(Refusal::Internal)
                        }
                        None => PutAnswer::Refused(Refusal::Internal),
                    }
                })
                .collect::<Vec<_>>()
        })
        .await;
        match result {
            Ok(answers) => Response::StoredMany(answers),
            Err(_) => Response::Refused(Refusal::Internal),
        }
    }

    /// The test knob's pause before serving a share or directory versions (see
    /// [`Node::set_serve_delay`]).
    async fn serve_pause(&self) {
        let delay = *self.serve_delay.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
    }

    /// Reads whole shares; the reader verifies them.
    async fn serve_get_shares(self: &Arc<Self>, shares: Vec<(ShareRoot, u8)>) -> Response {
        self.serve_pause().await;
        let store = self.store.clone();
        let result = tokio::task::spawn_blocking(move || {
            // The answer must fit in a frame: past the budget, the rest are not read and
            // answered as missing (the reader asks for them again on their own).
            let mut budget = SHARES_ANSWER_BUDGET;
            shares
                .iter()
                .map(|(root, index)| {
                    if budget == 0 {
                        return None;
                    }
                    match store.get(root, *index, None) {
                        Ok(Some(share)) => {
                            let cost = share.header.len() + share.data.len() + 16;
                            if cost > budget {
                                budget = 0;
                                return None;
                            }
                            budget -= cost;
                            Some(FoundShare {
                                header: share.header,
                                data: share.data,
                            })
                        }
                        Ok(None) => None,
                        Err(e) => {
                            warn!(root = %root.fmt_short(), index, error = %e, "cannot serve share");
                            None
                        }
                    }
                })
                .collect::<Vec<_>>()
        })
        .await;
        match result {
            Ok(found) => Response::Shares(found),
            Err(_) => Response::Refused(Refusal::Internal),
        }
    }

    fn admit(&self, peer: NodeId, request: JoinRequest) -> Result<JoinResponse, NodeError> {
        let Some(grid_key) = &self.keys.grid_key else {
            return Ok(JoinResponse::Refused(JoinRefusal::NotAdmin));
        };
        if let Err(refusal) = self.meta.take_invite(&request.secret, now_secs())? {
            warn!(peer = %peer.fmt_short(), reason = %refusal, "join refused");
            return Ok(JoinResponse::Refused(refusal));
        }
        let now = now_secs();
        let cert = grid_key.issue(peer, Roles::MEMBER, now, now + CERT_LIFETIME_SECS);
        self.merge_roster(vec![RosterEntry {
            cert: cert.clone(),
            addrs: request.addrs,
            announced_at: now,
        }]);
        info!(peer = %peer, "admitted new member");
        Ok(JoinResponse::Admitted {
            cert,
            grid: GridInfo {
                id: self.grid.grid,
                encoding: self.grid.encoding,
            },
            roster: self.roster_entries(),
        })
    }

    /// Storage members ranked for `root` (rendezvous order).
    pub(crate) fn ranked(&self, root: &ShareRoot) -> Vec<Member> {
        let members: Vec<Member> = self
            .members()
            .into_iter()
            .filter(|m| m.roles.contains(Roles::STORAGE))
            .filter(|m| m.id != self.id || self.config.storage)
            .collect();
        let ids: Vec<NodeId> = members.iter().map(|m| m.id).collect();
        let by_id: HashMap<NodeId, Member> = members.into_iter().map(|m| (m.id, m)).collect();
        cairn_core::placement::rank(root, &ids)
            .into_iter()
            .filter_map(|id| by_id.get(&id).cloned())
            .collect()
    }
}

/// The network's way back into the node.
#[derive(Debug)]
struct Service(Weak<Inner>);

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl ShareService for Service {
    fn handle(&self, peer: NodeId, request: Request) -> BoxFuture<Response> {
        let inner = self.0.upgrade();
        Box::pin(async move {
            match inner {
                Some(inner) => {
                    let response = inner.serve(peer, request).await;
                    match &response {
                        Response::Share { .. } => inner.activity.served(1),
                        Response::Shares(found) => {
                            inner.activity.served(found.iter().flatten().count() as u64)
                        }
                        _ => {}
                    }
                    response
                }
                None => Response::Refused(Refusal::Internal),
            }
        })
    }

    fn peer_hello(&self, _peer: NodeId, hello: &Hello) {
        if let Some(inner) = self.0.upgrade() {
            inner.merge_roster(vec![RosterEntry {
                cert: hello.cert.clone(),
                addrs: hello.addrs.clone(),
                announced_at: now_secs(),
            }]);
        }
    }
}

impl JoinService for Service {
    fn join(&self, peer: NodeId, request: JoinRequest) -> BoxFuture<JoinResponse> {
        let inner = self.0.upgrade();
        Box::pin(async move {
            let Some(inner) = inner else {
                return JoinResponse::Refused(JoinRefusal::NotAdmin);
            };
            match inner.admit(peer, request) {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = %e, "join failed");
                    JoinResponse::Refused(JoinRefusal::UnknownInvite)
                }
            }
        })
    }
}

/// A request to a peer under way. Dropped before the answer (a hedged request that another
/// holder beat), it still tells how long the peer had kept us waiting: its latency is at least
/// that, so a holder that is always outrun comes to be known as slow.
struct Waiting<'a> {
    inner: &'a Inner,
    peer: NodeId,
    started: Instant,
    answered: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let waited = self.started.elapsed().as_secs_f64();
        let mut health = self.inner.health.lock().unwrap_or_else(|p| p.into_inner());
        let h = health.entry(self.peer).or_default();
        // Only ever raises the estimate: the peer took at least `waited`.
        match h.latency {
            Some(old) if old < waited => h.latency = Some(old * 0.7 + waited * 0.3),
            Some(_) => {}
            None => h.latency = Some(waited),
        }
    }
}

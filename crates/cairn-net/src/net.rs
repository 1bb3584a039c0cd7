//! The endpoint, the member protocol and the join protocol.
//!
//! Ownership: [`Net`] is a cheap clone around one iroh endpoint and its router. Outbound
//! connections are cached per peer (one QUIC connection each, many streams on it); dialling
//! the same peer from many tasks at once makes one connection. Inbound connections each run in
//! a task of the router; each request stream in a task of its own, bounded per connection.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_core::cert::{CertError, MemberCert};
use cairn_core::id::{GridId, NodeId};
use cairn_core::wire::{
    ALPN, Hello, InviteCode, JOIN_ALPN, JoinRequest, JoinResponse, MAX_FRAME, MAX_HANDSHAKE_FRAME,
    PROTOCOL_VERSION, Request, Response,
};
use iroh::endpoint::{Connection, QuicTransportConfig, presets};
use iroh::protocol::{AcceptError, ProtocolHandler, Router};
use iroh::{Endpoint, EndpointAddr, PublicKey, SecretKey};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::NetError;
use crate::frame::{FrameError, read_frame, write_frame};

/// A boxed future, for the object-safe service traits.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// How long a handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long dialling a peer may take. A peer whose port is closed never answers over UDP, so
/// this is also how long it takes to learn that a peer is down.
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);
/// After a failed dial, requests to that peer fail at once for this long (unless the peer
/// connects to us meanwhile, or did while the dial was under way), so that a down peer does not
/// stall every request.
const DIAL_BACKOFF: Duration = Duration::from_secs(2);
/// How many requests one inbound connection may have in progress at once.
const MAX_STREAMS_PER_CONN: usize = 64;
/// QUIC close code sent to a peer whose certificate was refused.
const CLOSE_NOT_MEMBER: u32 = 0x4e4d; // "NM"

/// Serves inbound member requests. Implemented by the node.
pub trait ShareService: Send + Sync + fmt::Debug + 'static {
    /// Answers one request from an authenticated member.
    fn handle(&self, peer: NodeId, request: Request) -> BoxFuture<Response>;
    /// Called once per connection with the peer's checked [`Hello`] (its cert and addresses).
    fn peer_hello(&self, peer: NodeId, hello: &Hello);
}

/// Serves the join protocol. Implemented by admin nodes.
pub trait JoinService: Send + Sync + fmt::Debug + 'static {
    /// Answers a join request from a node that has no certificate yet.
    fn join(&self, peer: NodeId, request: JoinRequest) -> BoxFuture<JoinResponse>;
}

/// Settings of the endpoint.
#[derive(Clone)]
pub struct NetConfig {
    /// The node's ed25519 secret key (its identity); zeroized on drop.
    pub secret_key: zeroize::Zeroizing<[u8; 32]>,
    /// Where to listen.
    pub bind: SocketAddr,
    /// How long to wait for a peer's answer to one request.
    pub request_timeout: Duration,
}

impl fmt::Debug for NetConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetConfig")
            .field("bind", &self.bind)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

/// This node's place in the grid: the grid id and its own certificate.
#[derive(Clone, Debug)]
pub struct Membership {
    /// The grid this node belongs to.
    pub grid: GridId,
    /// This node's certificate.
    pub cert: MemberCert,
}

/// Bytes exchanged with one peer, and when it was last heard from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerCounters {
    /// Bytes of frames sent to the peer.
    pub sent: u64,
    /// Bytes of frames received from the peer.
    pub received: u64,
    /// Unix seconds of the last successful exchange.
    pub last_contact: Option<u64>,
}

/// The cached connection to one peer, or when the last dial failed.
#[derive(Default)]
struct Slot {
    conn: Option<Connection>,
    failed: Option<(Instant, String)>,
}

type ConnSlot = Arc<tokio::sync::Mutex<Slot>>;

struct Shared {
    endpoint: Endpoint,
    membership: Membership,
    request_timeout: Duration,
    service: Arc<dyn ShareService>,
    conns: Mutex<HashMap<NodeId, ConnSlot>>,
    counters: Mutex<HashMap<NodeId, PeerCounters>>,
    /// Nodes the grid's admins revoked: refused at the handshake, cut off mid-connection.
    revoked: Mutex<HashSet<NodeId>>,
    /// When each peer last connected to us (completed a handshake as the dialer).
    up: Mutex<HashMap<NodeId, Instant>>,
}

/// A node's network endpoint. Clone to share.
#[derive(Clone)]
pub struct Net {
    shared: Arc<Shared>,
    router: Arc<Router>,
}

impl fmt::Debug for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Net")
            .field("node", &self.node_id())
            .finish_non_exhaustive()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn node_id_of(key: &PublicKey) -> NodeId {
    NodeId::from_bytes(*key.as_bytes())
}

fn public_key_of(peer: &NodeId) -> Result<PublicKey, NetError> {
    PublicKey::from_bytes(peer.as_bytes()).map_err(|e| NetError::Connect {
        peer: *peer,
        detail: format!("not a valid node id: {e}"),
    })
}

/// A connection with no packets for this long is dead (a peer killed or cut off): its pending
/// requests fail and the next request redials.
const IDLE_TIMEOUT: Duration = Duration::from_secs(6);
/// Keep-alive pings keep a quiet but live connection from idling out.
const KEEP_ALIVE: Duration = Duration::from_secs(1);

async fn bind_endpoint(
    secret_key: &[u8; 32],
    bind: SocketAddr,
    alpns: Vec<Vec<u8>>,
) -> Result<Endpoint, NetError> {
    let bind_err = |detail: String| NetError::Bind { addr: bind, detail };
    let idle = IDLE_TIMEOUT
        .try_into()
        .map_err(|e: iroh::endpoint::VarIntBoundsExceeded| bind_err(e.to_string()))?;
    let transport = QuicTransportConfig::builder()
        .max_idle_timeout(Some(idle))
        .keep_alive_interval(KEEP_ALIVE)
        .default_path_max_idle_timeout(IDLE_TIMEOUT)
        .default_path_keep_alive_interval(KEEP_ALIVE)
        .build();
    Endpoint::builder(presets::Minimal)
        .secret_key(SecretKey::from_bytes(secret_key))
        .transport_config(transport)
        .clear_ip_transports()
        .bind_addr(bind)
        .map_err(|e| bind_err(e.to_string()))?
        .alpns(alpns)
        .bind()
        .await
        .map_err(|e| bind_err(e.to_string()))
}

impl Net {
    /// Opens the endpoint and starts serving the member protocol (and the join protocol when
    /// `join` is given).
    pub async fn bind(
        config: NetConfig,
        membership: Membership,
        service: Arc<dyn ShareService>,
        join: Option<Arc<dyn JoinService>>,
    ) -> Result<Net, NetError> {
        let mut alpns = vec![ALPN.to_vec()];
        if join.is_some() {
            alpns.push(JOIN_ALPN.to_vec());
        }
        let endpoint = bind_endpoint(&config.secret_key, config.bind, alpns).await?;
        let shared = Arc::new(Shared {
            endpoint: endpoint.clone(),
            membership,
            request_timeout: config.request_timeout,
            service,
            conns: Mutex::new(HashMap::new()),
            counters: Mutex::new(HashMap::new()),
            revoked: Mutex::new(HashSet::new()),
            up: Mutex::new(HashMap::new()),
        });
        let mut router = Router::builder(endpoint).accept(
            ALPN,
            MemberProtocol {
                shared: shared.clone(),
            },
        );
        if let Some(join) = join {
            router = router.accept(JOIN_ALPN, JoinProtocol { service: join });
        }
        Ok(Net {
            shared,
            router: Arc::new(router.spawn()),
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        node_id_of(&self.shared.endpoint.id())
    }

    /// The addresses other members can dial this node at: the bound sockets, or, where a
    /// socket is bound to an unspecified address, the interface addresses iroh found.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.shared.advertised_addrs()
    }

    /// Refuses `node` from now on: its handshakes fail, open connections to it are closed, and
    /// requests it sends on a connection already open are not served.
    pub fn revoke(&self, node: NodeId) {
        self.shared
            .revoked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node);
        let slot = self.slot(node);
        if let Ok(mut slot) = slot.try_lock()
            && let Some(conn) = slot.conn.take()
        {
            conn.close(CLOSE_NOT_MEMBER.into(), b"revoked");
        }
    }

    /// Whether `node` was revoked.
    pub fn is_revoked(&self, node: &NodeId) -> bool {
        self.shared.is_revoked(node)
    }

    /// Bytes exchanged with each peer so far.
    pub fn counters(&self) -> HashMap<NodeId, PeerCounters> {
        self.shared
            .counters
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default()
    }

    /// Sends one request to `peer` (dialling it at `addrs` if no connection is open) and waits
    /// for the answer. Cancel-safe: dropping the future abandons the stream.
    pub async fn request(
        &self,
        peer: NodeId,
        addrs: &[SocketAddr],
        request: &Request,
    ) -> Result<Response, NetError> {
        let conn = self.connection(peer, addrs).await?;
        let result = self.exchange(&conn, peer, request).await;
        if let Err(NetError::Stream { .. }) = &result {
            // A broken connection is dropped from the cache so that the next request redials.
            self.forget(peer, &conn).await;
        }
        result
    }

    async fn exchange(
        &self,
        conn: &Connection,
        peer: NodeId,
        request: &Request,
    ) -> Result<Response, NetError> {
        let stream_err = |detail: String| NetError::Stream { peer, detail };
        let timeout = self.shared.request_timeout;
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| stream_err(e.to_string()))?;
        let sent = write_frame(&mut send, request)
            .await
            .map_err(|e| frame_err(peer, e, timeout))?;
        send.finish().map_err(|e| stream_err(e.to_string()))?;
        let (response, received) = read_frame::<Response>(&mut recv, timeout, MAX_FRAME)
            .await
            .map_err(|e| frame_err(peer, e, timeout))?;
        self.shared.count(peer, sent as u64, received as u64);
        Ok(response)
    }

    async fn forget(&self, peer: NodeId, conn: &Connection) {
        let slot = self.slot(peer);
        let mut guard = slot.lock().await;
        if guard.conn.as_ref().map(|c| c.stable_id()) == Some(conn.stable_id()) {
            guard.conn = None;
        }
    }

    fn slot(&self, peer: NodeId) -> ConnSlot {
        self.shared.slot(peer)
    }

    /// The open connection to `peer`, dialling and shaking hands if there is none.
    async fn connection(&self, peer: NodeId, addrs: &[SocketAddr]) -> Result<Connection, NetError> {
        if self.shared.is_revoked(&peer) {
            return Err(NetError::NotMember {
                peer,
                source: CertError::Revoked(peer),
            });
        }
        let slot = self.slot(peer);
        let mut guard = slot.lock().await;
        if let Some(conn) = guard.conn.as_ref()
            && conn.close_reason().is_none()
        {
            return Ok(conn.clone());
        }
        if let Some((at, detail)) = &guard.failed
            && at.elapsed() < DIAL_BACKOFF
            && !self.shared.up_since(&peer, *at)
        {
            return Err(NetError::Connect {
                peer,
                detail: format!("{detail} (not retried yet)"),
            });
        }
        let dialled_at = Instant::now();
        match self.dial(peer, addrs).await {
            Ok(conn) => {
                guard.conn = Some(conn.clone());
                guard.failed = None;
                Ok(conn)
            }
            Err(e) => {
                // A dial begun while the peer was down can still time out after the peer came
                // back and connected to us; that failure says nothing about the peer now.
                if matches!(e, NetError::Connect { .. } | NetError::Timeout { .. })
                    && !self.shared.up_since(&peer, dialled_at)
                {
                    guard.failed = Some((Instant::now(), e.to_string()));
                }
                Err(e)
            }
        }
    }

    async fn dial(&self, peer: NodeId, addrs: &[SocketAddr]) -> Result<Connection, NetError> {
        let key = public_key_of(&peer)?;
        let addr = addrs
            .iter()
            .fold(EndpointAddr::new(key), |a, s| a.with_ip_addr(*s));
        let conn = tokio::time::timeout(DIAL_TIMEOUT, self.shared.endpoint.connect(addr, ALPN))
            .await
            .map_err(|_| NetError::Timeout {
                peer,
                secs: DIAL_TIMEOUT.as_secs(),
            })?
            .map_err(|e| NetError::Connect {
                peer,
                detail: e.to_string(),
            })?;
        let hello = self.shared.hello();
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| NetError::Connect {
            peer,
            detail: e.to_string(),
        })?;
        write_frame(&mut send, &hello)
            .await
            .map_err(|e| frame_err(peer, e, HANDSHAKE_TIMEOUT))?;
        let _ = send.finish();
        let (theirs, _) =
            match read_frame::<Hello>(&mut recv, HANDSHAKE_TIMEOUT, MAX_HANDSHAKE_FRAME).await {
                Ok(h) => h,
                Err(e) => {
                    // A peer that closes the connection instead of answering has refused our cert.
                    if let Some(reason) = conn.close_reason() {
                        return Err(NetError::Refused {
                            peer,
                            detail: reason.to_string(),
                        });
                    }
                    return Err(frame_err(peer, e, HANDSHAKE_TIMEOUT));
                }
            };
        let shared = &self.shared;
        if let Err(source) = shared.check_cert(&theirs.cert, &peer) {
            warn!(peer = %peer.fmt_short(), error = %source, "refusing peer: certificate check failed");
            conn.close(CLOSE_NOT_MEMBER.into(), b"not a member of this grid");
            return Err(NetError::NotMember { peer, source });
        }
        shared.service.peer_hello(peer, &theirs);
        debug!(peer = %peer.fmt_short(), "connected");
        Ok(conn)
    }

    /// Uses an invite: dials the inviting admin over the join protocol with this node's key and
    /// returns its answer. Needs no membership; the endpoint lives only for this exchange.
    pub async fn join_grid(
        secret_key: &[u8; 32],
        bind: SocketAddr,
        code: &InviteCode,
        my_addrs: Vec<SocketAddr>,
    ) -> Result<JoinResponse, NetError> {
        let peer = code.inviter;
        let endpoint = bind_endpoint(secret_key, bind, vec![]).await?;
        let key = public_key_of(&peer)?;
        let addr = code
            .addrs
            .iter()
            .fold(EndpointAddr::new(key), |a, s| a.with_ip_addr(*s));
        let result = async {
            let conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, endpoint.connect(addr, JOIN_ALPN))
                .await
                .map_err(|_| NetError::Timeout {
                    peer,
                    secs: HANDSHAKE_TIMEOUT.as_secs(),
                })?
                .map_err(|e| NetError::Connect {
                    peer,
                    detail: e.to_string(),
                })?;
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| NetError::Connect {
                peer,
                detail: e.to_string(),
            })?;
            let request = JoinRequest {
                secret: code.secret,
                addrs: my_addrs,
            };
            write_frame(&mut send, &request)
                .await
                .map_err(|e| frame_err(peer, e, HANDSHAKE_TIMEOUT))?;
            let _ = send.finish();
            let (response, _) = read_frame::<JoinResponse>(&mut recv, HANDSHAKE_TIMEOUT, MAX_FRAME)
                .await
                .map_err(|e| frame_err(peer, e, HANDSHAKE_TIMEOUT))?;
            conn.close(0u32.into(), b"done");
            Ok(response)
        }
        .await;
        endpoint.close().await;
        result
    }

    /// Stops serving and closes the endpoint.
    pub async fn shutdown(&self) {
        if let Err(e) = self.router.shutdown().await {
            warn!(error = %e, "router shutdown failed");
        }
    }
}

fn frame_err(peer: NodeId, e: FrameError, timeout: Duration) -> NetError {
    match e {
        FrameError::Io(detail) => NetError::Stream { peer, detail },
        FrameError::Wire(source) => NetError::Garbage { peer, source },
        FrameError::Timeout => NetError::Timeout {
            peer,
            secs: timeout.as_secs().max(1),
        },
    }
}

impl Shared {
    fn hello(&self) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            cert: self.membership.cert.clone(),
            addrs: self.advertised_addrs(),
        }
    }

    fn advertised_addrs(&self) -> Vec<SocketAddr> {
        let bound = self.endpoint.bound_sockets();
        if bound.iter().all(|a| !a.ip().is_unspecified()) {
            return bound;
        }
        let found: Vec<SocketAddr> = self.endpoint.addr().ip_addrs().copied().collect();
        if found.is_empty() { bound } else { found }
    }

    fn slot(&self, peer: NodeId) -> ConnSlot {
        let mut conns = match self.conns.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        conns.entry(peer).or_default().clone()
    }

    fn is_revoked(&self, node: &NodeId) -> bool {
        self.revoked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(node)
    }

    /// The handshake's check of a peer's certificate: valid for this grid and `peer`, and
    /// `peer` not revoked.
    fn check_cert(&self, cert: &MemberCert, peer: &NodeId) -> Result<(), CertError> {
        cert.verify(&self.membership.grid, peer, now_secs())?;
        if self.is_revoked(peer) {
            return Err(CertError::Revoked(*peer));
        }
        Ok(())
    }

    /// A peer that just connected to us is up: forget an earlier failed dial (and one under
    /// way now, see [`Shared::up_since`]).
    fn peer_is_up(&self, peer: NodeId) {
        self.up
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer, Instant::now());
        if let Ok(mut slot) = self.slot(peer).try_lock() {
            slot.failed = None;
        }
    }

    /// Whether `peer` connected to us at or after `since`.
    fn up_since(&self, peer: &NodeId, since: Instant) -> bool {
        self.up
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer)
            .is_some_and(|at| *at >= since)
    }

    fn count(&self, peer: NodeId, sent: u64, received: u64) {
        if let Ok(mut counters) = self.counters.lock() {
            let c = counters.entry(peer).or_default();
            c.sent += sent;
            c.received += received;
            c.last_contact = Some(now_secs());
        }
    }
}

#[derive(Clone)]
struct MemberProtocol {
    shared: Arc<Shared>,
}

impl fmt::Debug for MemberProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MemberProtocol")
    }
}

impl MemberProtocol {
    /// Reads the peer's Hello, checks its certificate, answers with ours.
    async fn handshake(&self, conn: &Connection, peer: NodeId) -> Option<()> {
        let shared = &self.shared;
        let accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.accept_bi()).await;
        let Ok(Ok((mut send, mut recv))) = accepted else {
            debug!(peer = %peer.fmt_short(), "peer opened no handshake stream");
            return None;
        };
        let hello =
            match read_frame::<Hello>(&mut recv, HANDSHAKE_TIMEOUT, MAX_HANDSHAKE_FRAME).await {
                Ok((hello, _)) => hello,
                Err(e) => {
                    warn!(peer = %peer.fmt_short(), error = ?e, "refusing peer: bad handshake");
                    conn.close(CLOSE_NOT_MEMBER.into(), b"bad handshake");
                    return None;
                }
            };
        if let Err(e) = shared.check_cert(&hello.cert, &peer) {
            warn!(peer = %peer.fmt_short(), error = %e, "refusing peer: certificate check failed");
            conn.close(CLOSE_NOT_MEMBER.into(), b"not a member of this grid");
            return None;
        }
        if write_frame(&mut send, &shared.hello()).await.is_err() {
            return None;
        }
        let _ = send.finish();
        shared.peer_is_up(peer);
        shared.service.peer_hello(peer, &hello);
        Some(())
    }
}

impl ProtocolHandler for MemberProtocol {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let peer = node_id_of(&conn.remote_id());
        if self.handshake(&conn, peer).await.is_none() {
            return Ok(());
        }
        let limit = Arc::new(Semaphore::new(MAX_STREAMS_PER_CONN));
        loop {
            let Ok((mut send, mut recv)) = conn.accept_bi().await else {
                return Ok(());
            };
            let Ok(permit) = limit.clone().acquire_owned().await else {
                return Ok(());
            };
            if self.shared.is_revoked(&peer) {
                warn!(peer = %peer.fmt_short(), "closing the connection of a revoked node");
                conn.close(CLOSE_NOT_MEMBER.into(), b"revoked");
                return Ok(());
            }
            let shared = self.shared.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let timeout = shared.request_timeout;
                let (request, received) =
                    match read_frame::<Request>(&mut recv, timeout, MAX_FRAME).await {
                        Ok(r) => r,
                        Err(e) => {
                            warn!(peer = %peer.fmt_short(), error = ?e, "dropping bad request");
                            return;
                        }
                    };
                let response = shared.service.handle(peer, request).await;
                match write_frame(&mut send, &response).await {
                    Ok(sent) => {
                        let _ = send.finish();
                        shared.count(peer, sent as u64, received as u64);
                    }
                    Err(e) => {
                        debug!(peer = %peer.fmt_short(), error = ?e, "response not delivered")
                    }
                }
            });
        }
    }
}

struct JoinProtocol {
    service: Arc<dyn JoinService>,
}

impl fmt::Debug for JoinProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JoinProtocol")
    }
}

impl ProtocolHandler for JoinProtocol {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let peer = node_id_of(&conn.remote_id());
        let Ok(Ok((mut send, mut recv))) =
            tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.accept_bi()).await
        else {
            return Ok(());
        };
        let request = match read_frame::<JoinRequest>(
            &mut recv,
            HANDSHAKE_TIMEOUT,
            MAX_HANDSHAKE_FRAME,
        )
        .await
        {
            Ok((r, _)) => r,
            Err(e) => {
                warn!(peer = %peer.fmt_short(), error = ?e, "bad join request");
                return Ok(());
            }
        };
        let response = self.service.join(peer, request).await;
        if write_frame(&mut send, &response).await.is_ok() {
            let _ = send.finish();
            // Wait for the joiner to read the answer and close.
            let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.closed()).await;
        }
        Ok(())
    }
}

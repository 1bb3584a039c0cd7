//! Creating node directories: a new grid (`init`), a member by invite (`join`), and members
//! admitted directly by a local admin (the one-machine quickstart grid).

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use cairn_core::Encoding;
use cairn_core::cert::{GridKey, Roles};
use cairn_core::crypto::ConvergenceSecret;
use cairn_core::id::NodeId;
use cairn_core::wire::{InviteCode, JoinResponse, RosterEntry};
use cairn_net::Net;
use zeroize::Zeroizing;

use crate::NodeError;
use crate::config::{GridConfig, NodeConfig, save_toml};
use crate::dir::{NodeDir, NodeKeys, node_id_from_secret};
use crate::meta::Meta;
use crate::node::{CERT_LIFETIME_SECS, now_secs};

/// Settings chosen when a node directory is created.
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// The grid's encoding (for a new grid; a joining node takes the grid's).
    pub encoding: Encoding,
    /// Where to listen; port 0 picks a free port now and keeps it.
    pub listen: SocketAddr,
    /// Bytes offered to the grid.
    pub capacity_bytes: Option<u64>,
    /// Whether the node stores shares for others.
    pub storage: bool,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            encoding: Encoding::DEFAULT,
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            capacity_bytes: None,
            storage: true,
        }
    }
}

/// Picks a free UDP port on `listen`'s address when its port is 0.
fn fixed_listen(listen: SocketAddr) -> Result<SocketAddr, NodeError> {
    if listen.port() != 0 {
        return Ok(listen);
    }
    let socket = UdpSocket::bind(listen).map_err(|e| NodeError::Io {
        path: std::path::PathBuf::from(listen.to_string()),
        source: e,
    })?;
    let port = socket
        .local_addr()
        .map_err(|e| NodeError::Io {
            path: std::path::PathBuf::from(listen.to_string()),
            source: e,
        })?
        .port();
    Ok(SocketAddr::new(listen.ip(), port))
}

fn write_config(dir: &NodeDir, options: &InitOptions) -> Result<NodeConfig, NodeError> {
    let mut config = NodeConfig {
        listen: fixed_listen(options.listen)?,
        storage: options.storage,
        ..NodeConfig::default()
    };
    if let Some(capacity) = options.capacity_bytes {
        config.capacity_bytes = capacity;
    }
    if !options.storage {
        config.capacity_bytes = 0;
    }
    save_toml(&dir.config(), &config)?;
    Ok(config)
}

/// Creates a new grid with this node as its first member and admin. Returns the node id.
pub fn init_grid(dir: &NodeDir, options: &InitOptions) -> Result<NodeId, NodeError> {
    dir.create()?;
    let grid_key = GridKey::from_bytes(&rand::random());
    let node_secret = Zeroizing::new(rand::random::<[u8; 32]>());
    let node = node_id_from_secret(&node_secret);
    let now = now_secs();
    let cert = grid_key.issue(
        node,
        Roles::MEMBER.with(Roles::ADMIN),
        now,
        now + CERT_LIFETIME_SECS,
    );
    let grid = GridConfig {
        grid: grid_key.grid_id(),
        encoding: options.encoding,
    };
    let keys = NodeKeys {
        node_secret,
        grid_key: Some(grid_key),
        convergence: ConvergenceSecret::from_bytes(rand::random()),
        cert,
    };
    let config = write_config(dir, options)?;
    save_toml(&dir.grid(), &grid)?;
    keys.save(dir)?;
    create_root_dir(dir)?;
    let meta = Meta::open(&dir.meta_db())?;
    meta.put_roster(&[RosterEntry {
        cert: keys.cert.clone(),
        addrs: vec![config.listen],
        announced_at: now,
    }])?;
    Ok(node)
}

/// Joins a grid with an invite code: dials the inviting admin, proves the code's secret and
/// receives a certificate and the roster. Returns the node id.
pub async fn join_grid(
    dir: &NodeDir,
    code: &InviteCode,
    options: &InitOptions,
) -> Result<NodeId, NodeError> {
    if dir.node_key().exists() {
        return Err(NodeError::AlreadyInitialised(dir.root().to_path_buf()));
    }
    let node_secret = Zeroizing::new(rand::random::<[u8; 32]>());
    let node = node_id_from_secret(&node_secret);
    let listen = fixed_listen(options.listen)?;
    let bind = SocketAddr::new(listen.ip(), 0);
    let response = Net::join_grid(&node_secret, bind, code, vec![listen]).await?;
    let (cert, grid, roster) = match response {
        JoinResponse::Admitted { cert, grid, roster } => (cert, grid, roster),
        JoinResponse::Refused(refusal) => return Err(NodeError::JoinRefused(refusal)),
    };
    if cert.node() != node || grid.id != code.grid || cert.verify_signature(&grid.id).is_err() {
        return Err(NodeError::Control(
            "the admin answered with a certificate that does not fit this node".into(),
        ));
    }
    dir.create()?;
    let keys = NodeKeys {
        node_secret,
        grid_key: None,
        convergence: ConvergenceSecret::from_bytes(rand::random()),
        cert,
    };
    write_config(
        dir,
        &InitOptions {
            listen,
            ..options.clone()
        },
    )?;
    save_toml(
        &dir.grid(),
        &GridConfig {
            grid: grid.id,
            encoding: grid.encoding,
        },
    )?;
    let meta = Meta::open(&dir.meta_db())?;
    meta.put_roster(&roster)?;
    keys.save(dir)?;
    create_root_dir(dir)?;
    Ok(node)
}

/// Creates a member directly with a local admin's grid key, without the network (used to
/// build a whole grid on one machine at once). The new member shares the admin's convergence
/// secret, as devices of one owner do. Returns the node id.
pub fn init_member_offline(
    dir: &NodeDir,
    admin: &NodeDir,
    options: &InitOptions,
) -> Result<NodeId, NodeError> {
    let admin_keys = NodeKeys::load(admin)?;
    let Some(grid_key) = &admin_keys.grid_key else {
        return Err(NodeError::NotAllowed(
            "the admin directory holds no grid key",
        ));
    };
    let grid = GridConfig::load(&admin.grid())?;
    dir.create()?;
    let node_secret = Zeroizing::new(rand::random::<[u8; 32]>());
    let node = node_id_from_secret(&node_secret);
    let now = now_secs();
    let keys = NodeKeys {
        node_secret,
        grid_key: None,
        convergence: admin_keys.convergence.clone(),
        cert: grid_key.issue(node, Roles::MEMBER, now, now + CERT_LIFETIME_SECS),
    };
    write_config(dir, options)?;
    save_toml(&dir.grid(), &grid)?;
    keys.save(dir)?;
    create_root_dir(dir)?;
    Ok(node)
}

/// Writes every listed node's own roster entry into every listed node's roster, so a grid
/// made on one machine starts fully connected.
pub fn introduce(dirs: &[NodeDir]) -> Result<(), NodeError> {
    let mut entries = Vec::new();
    for dir in dirs {
        let keys = NodeKeys::load(dir)?;
        let config = NodeConfig::load(&dir.config())?;
        entries.push(RosterEntry {
            cert: keys.cert.clone(),
            addrs: vec![config.listen],
            announced_at: now_secs(),
        });
    }
    for dir in dirs {
        Meta::open(&dir.meta_db())?.put_roster(&entries)?;
    }
    Ok(())
}

/// The default lifetime of an invite code.
pub const INVITE_TTL: Duration = Duration::from_secs(24 * 3600);

/// Creates the owner's root directory key (`secrets/root.key`, mode 0600). The directory's
/// first version is published when the node first uses it.
fn create_root_dir(dir: &NodeDir) -> Result<(), NodeError> {
    let path = dir.root_dir_key();
    if !path.exists() {
        crate::dir::write_secret(&path, &rand::random::<[u8; 32]>())?;
    }
    Ok(())
}

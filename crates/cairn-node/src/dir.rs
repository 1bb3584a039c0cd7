//! A node's directory: where each file lives, and the node's keys.
//!
//! ```text
//! DIR/node.toml          settings (NodeConfig)
//! DIR/grid.toml          grid id and encoding
//! DIR/member.cert        this node's member certificate
//! DIR/secrets/node.key   the node's ed25519 secret (mode 0600)
//! DIR/secrets/grid.key   the grid key, on admin nodes only (mode 0600)
//! DIR/secrets/convergence.key  the owner's convergence secret (mode 0600)
//! DIR/secrets/root.key   the seed of the owner's root directory writecap (mode 0600)
//! DIR/meta.redb          roster and invites
//! DIR/store/             shares (cairn-store)
//! DIR/control.sock       the local control API (mode 0600)
//! ```
//!
//! Secret files are written to a temporary name with mode 0600, fsynced and renamed, so a crash
//! never leaves a half-written key.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use cairn_core::cert::{GridKey, MemberCert};
use cairn_core::crypto::ConvergenceSecret;
use cairn_core::id::NodeId;
use zeroize::Zeroizing;

use crate::NodeError;

/// Paths inside one node directory.
#[derive(Clone, Debug)]
pub struct NodeDir {
    root: PathBuf,
}

impl NodeDir {
    /// The directory at `root` (not checked).
    pub fn new(root: impl Into<PathBuf>) -> NodeDir {
        NodeDir { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `node.toml`.
    pub fn config(&self) -> PathBuf {
        self.root.join("node.toml")
    }

    /// `grid.toml`.
    pub fn grid(&self) -> PathBuf {
        self.root.join("grid.toml")
    }

    /// `member.cert`.
    pub fn cert(&self) -> PathBuf {
        self.root.join("member.cert")
    }

    fn secrets(&self) -> PathBuf {
        self.root.join("secrets")
    }

    /// `secrets/node.key`.
    pub fn node_key(&self) -> PathBuf {
        self.secrets().join("node.key")
    }

    /// `secrets/grid.key`.
    pub fn grid_key(&self) -> PathBuf {
        self.secrets().join("grid.key")
    }

    /// `secrets/convergence.key`.
    pub fn convergence(&self) -> PathBuf {
        self.secrets().join("convergence.key")
    }

    /// `secrets/root.key`: the signing seed of the owner's root directory.
    pub fn root_dir_key(&self) -> PathBuf {
        self.secrets().join("root.key")
    }

    /// `meta.redb`.
    pub fn meta_db(&self) -> PathBuf {
        self.root.join("meta.redb")
    }

    /// `cache/`: the block cache and its key.
    pub fn cache(&self) -> PathBuf {
        self.root.join("cache")
    }

    /// `store/`.
    pub fn store(&self) -> PathBuf {
        self.root.join("store")
    }

    /// `control.sock`.
    pub fn control_socket(&self) -> PathBuf {
        self.root.join("control.sock")
    }

    /// Whether a node was initialised here (its key and certificate exist).
    pub fn is_initialised(&self) -> bool {
        self.node_key().exists() && self.cert().exists() && self.grid().exists()
    }

    /// Fails with a clear error unless a node was initialised here.
    pub fn require_initialised(&self) -> Result<(), NodeError> {
        if self.is_initialised() {
            Ok(())
        } else {
            Err(NodeError::NotInitialised(self.root.clone()))
        }
    }

    /// Creates the directory and its `secrets/` (mode 0700).
    pub(crate) fn create(&self) -> Result<(), NodeError> {
        if self.node_key().exists() {
            return Err(NodeError::AlreadyInitialised(self.root.clone()));
        }
        let secrets = self.secrets();
        fs::create_dir_all(&secrets).map_err(|e| NodeError::io(&secrets, e))?;
        fs::set_permissions(&secrets, fs::Permissions::from_mode(0o700))
            .map_err(|e| NodeError::io(&secrets, e))?;
        Ok(())
    }
}

/// The secrets and certificate a node runs with.
pub struct NodeKeys {
    /// The node's ed25519 secret key.
    pub node_secret: Zeroizing<[u8; 32]>,
    /// The grid key, on admin nodes.
    pub grid_key: Option<GridKey>,
    /// The owner's convergence secret.
    pub convergence: ConvergenceSecret,
    /// The node's member certificate.
    pub cert: MemberCert,
}

impl std::fmt::Debug for NodeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKeys")
            .field("node", &self.cert.node())
            .field("admin", &self.grid_key.is_some())
            .finish_non_exhaustive()
    }
}

impl NodeKeys {
    /// Reads the keys of the node at `dir`.
    pub fn load(dir: &NodeDir) -> Result<NodeKeys, NodeError> {
        dir.require_initialised()?;
        let node_secret = read_secret(&dir.node_key())?;
        let grid_key = if dir.grid_key().exists() {
            Some(GridKey::from_bytes(&*read_secret(&dir.grid_key())?))
        } else {
            None
        };
        let convergence = ConvergenceSecret::from_bytes(*read_secret(&dir.convergence())?);
        let cert_path = dir.cert();
        let bytes = fs::read(&cert_path).map_err(|e| NodeError::io(&cert_path, e))?;
        let cert: MemberCert = postcard::from_bytes(&bytes).map_err(|e| NodeError::Damaged {
            path: cert_path.clone(),
            detail: e.to_string(),
        })?;
        Ok(NodeKeys {
            node_secret,
            grid_key,
            convergence,
            cert,
        })
    }

    /// Writes the keys into `dir` (secrets with mode 0600).
    pub(crate) fn save(&self, dir: &NodeDir) -> Result<(), NodeError> {
        write_secret(&dir.node_key(), &self.node_secret)?;
        if let Some(grid_key) = &self.grid_key {
            write_secret(&dir.grid_key(), &grid_key.to_bytes())?;
        }
        write_secret(&dir.convergence(), self.convergence.as_bytes())?;
        let cert = postcard::to_stdvec(&self.cert).map_err(|e| NodeError::Damaged {
            path: dir.cert(),
            detail: e.to_string(),
        })?;
        write_atomic(&dir.cert(), &cert, false)
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        node_id_from_secret(&self.node_secret)
    }
}

/// The node id (ed25519 public key) of a node secret key.
pub(crate) fn node_id_from_secret(secret: &[u8; 32]) -> NodeId {
    let signing = ed25519_public(secret);
    NodeId::from_bytes(signing)
}

fn ed25519_public(secret: &[u8; 32]) -> [u8; 32] {
    // The grid key type is a plain ed25519 key; reuse it to derive the public half.
    GridKey::from_bytes(secret).grid_id().as_bytes().to_owned()
}

pub(crate) fn read_secret(path: &Path) -> Result<Zeroizing<[u8; 32]>, NodeError> {
    let text = Zeroizing::new(fs::read_to_string(path).map_err(|e| NodeError::io(path, e))?);
    let bytes = Zeroizing::new(
        data_encoding::HEXLOWER_PERMISSIVE
            .decode(text.trim().as_bytes())
            .map_err(|_| NodeError::Damaged {
                path: path.to_path_buf(),
                detail: "not hex".into(),
            })?,
    );
    let mut out = Zeroizing::new([0u8; 32]);
    if bytes.len() != 32 {
        return Err(NodeError::Damaged {
            path: path.to_path_buf(),
            detail: format!("expected 32 bytes, found {}", bytes.len()),
        });
    }
    out.copy_from_slice(&bytes);
    Ok(out)
}

pub(crate) fn write_secret(path: &Path, bytes: &[u8; 32]) -> Result<(), NodeError> {
    let text = Zeroizing::new(data_encoding::HEXLOWER.encode(bytes) + "\n");
    write_atomic(path, text.as_bytes(), true)
}

/// Writes `bytes` to `path` atomically: temporary file (mode 0600 when `secret`), fsync,
/// rename, fsync of the parent directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], secret: bool) -> Result<(), NodeError> {
    let parent = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    let mode = if secret { 0o600 } else { 0o644 };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| NodeError::io(&tmp, e))?;
    file.write_all(bytes).map_err(|e| NodeError::io(&tmp, e))?;
    file.sync_all().map_err(|e| NodeError::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| NodeError::io(path, e))?;
    if let Ok(d) = fs::File::open(parent) {
        let _ = d.sync_all();
    }
    Ok(())
}

//! Revocation: how a grid's admin removes a member (a lost phone, a friend who left).
//!
//! [`Node::revoke`] signs a [`Revocation`] with the grid key. Every node keeps the revocations
//! it knows in its database, refuses revoked nodes at the handshake and cuts their open
//! connections ([`cairn_net::Net::revoke`]), drops them from its roster (so placement never
//! picks them again), and passes the revocations on in each gossip round, so one admin's
//! revocation reaches every member within a round or two.

use cairn_core::cert::Revocation;
use cairn_core::id::NodeId;
use tracing::{error, info, warn};

use crate::NodeError;
use crate::node::{Inner, Node, now_secs};

impl Node {
    /// Revokes `node` (this node must hold the grid key) and tells the members at once.
    pub async fn revoke(&self, node: NodeId) -> Result<Revocation, NodeError> {
        let Some(key) = self.inner.keys.grid_key.as_ref() else {
            return Err(NodeError::NotAllowed(
                "this node does not hold the grid key, so it cannot revoke (ask the grid's admin)",
            ));
        };
        if node == self.inner.id {
            return Err(NodeError::NotAllowed(
                "a node cannot revoke itself (run `cairn revoke` on another admin node)",
            ));
        }
        if let Some(known) = self.inner.revocation_of(&node) {
            return Ok(known);
        }
        let revocation = key.revoke(node, now_secs());
        self.inner.merge_revocations(vec![revocation.clone()]);
        self.gossip_now().await;
        Ok(revocation)
    }

    /// The nodes revoked from this grid, as this node knows them.
    pub fn revoked(&self) -> Vec<NodeId> {
        self.inner.revoked_nodes()
    }
}

impl Inner {
    /// Whether `node` was revoked.
    pub(crate) fn is_revoked(&self, node: &NodeId) -> bool {
        self.revoked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(node)
    }

    fn revocation_of(&self, node: &NodeId) -> Option<Revocation> {
        self.revoked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
            .cloned()
    }

    /// The revoked nodes.
    pub(crate) fn revoked_nodes(&self) -> Vec<NodeId> {
        let revoked = self.revoked.read().unwrap_or_else(|p| p.into_inner());
        revoked.keys().copied().collect()
    }

    /// Every revocation known, to pass on.
    pub(crate) fn revocations(&self) -> Vec<Revocation> {
        let revoked = self.revoked.read().unwrap_or_else(|p| p.into_inner());
        revoked.values().cloned().collect()
    }

    /// Adds the revocations the grid key signed; for each new one, cuts the node off and
    /// drops it from the roster.
    pub(crate) fn merge_revocations(&self, revocations: Vec<Revocation>) {
        let mut news = Vec::new();
        {
            let mut revoked = self.revoked.write().unwrap_or_else(|p| p.into_inner());
            for revocation in revocations {
                if revocation.verify(&self.grid.grid).is_err() {
                    warn!(node = %revocation.node().fmt_short(), "dropping a revocation the grid key did not sign");
                    continue;
                }
                if revoked.contains_key(&revocation.node()) {
                    continue;
                }
                revoked.insert(revocation.node(), revocation.clone());
                news.push(revocation);
            }
        }
        if news.is_empty() {
            return;
        }
        if let Err(e) = self.meta.put_revocations(&news) {
            warn!(error = %e, "could not persist revocations");
        }
        for revocation in &news {
            let node = revocation.node();
            if node == self.id {
                error!("this node has been revoked from the grid; other members will refuse it");
                continue;
            }
            info!(node = %node.fmt_short(), "node revoked from the grid");
            self.forget_member(&node);
            self.net().revoke(node);
        }
    }
}

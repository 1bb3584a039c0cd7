//! What every handler shares: the node, the settings, the auth state, the download tickets and
//! the metrics.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_core::cap::Cap;
use cairn_node::{Node, WebConfig};

use crate::auth::Auth;
use crate::metrics::Metrics;

/// Download tickets kept at once; the one closest to expiry goes first.
const MAX_TICKETS: usize = 4096;

/// The handlers' shared state (cheap to clone).
#[derive(Clone)]
pub(crate) struct AppState(Arc<Shared>);

pub(crate) struct Shared {
    pub(crate) node: Node,
    pub(crate) web_dir: PathBuf,
    pub(crate) config: WebConfig,
    /// `https://HOST:PORT`, the origin share links are made for.
    pub(crate) base_url: String,
    pub(crate) auth: Auth,
    pub(crate) tickets: Tickets,
    pub(crate) metrics: Metrics,
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    pub(crate) fn new(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }
}

/// A short-lived download link: a random id standing for one file's cap, so the cap itself
/// never appears in a URL.
#[derive(Clone)]
pub(crate) struct Ticket {
    pub(crate) cap: Cap,
    pub(crate) name: String,
    expires: Instant,
}

/// The live download tickets.
#[derive(Default)]
pub(crate) struct Tickets {
    map: Mutex<HashMap<String, Ticket>>,
}

impl Tickets {
    /// A new ticket for `cap`, valid for `ttl`: returns its id (32 hex digits).
    pub(crate) fn issue(&self, cap: Cap, name: String, ttl: Duration) -> String {
        let id = data_encoding::HEXLOWER.encode(&rand::random::<[u8; 16]>());
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, t| t.expires > now);
        if map.len() >= MAX_TICKETS {
            let first = map
                .iter()
                .min_by_key(|(_, t)| t.expires)
                .map(|(k, _)| k.clone());
            if let Some(k) = first {
                map.remove(&k);
            }
        }
        map.insert(
            id.clone(),
            Ticket {
                cap,
                name,
                expires: now + ttl,
            },
        );
        id
    }

    /// The ticket `id`, unless unknown or expired.
    pub(crate) fn get(&self, id: &str) -> Option<Ticket> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(id).filter(|t| t.expires > Instant::now()).cloned()
    }
}

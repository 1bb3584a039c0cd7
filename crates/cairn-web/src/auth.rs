//! Who may use the API: the persistent API token, one-time login tokens, browser sessions and
//! their CSRF tokens.
//!
//! Files under `DIR/web/` (mode 0600, in a 0700 directory) are the trust boundary, like the
//! control socket: whoever can read the node directory may use the node.
//! - `api-token`: 32 random bytes, hex; sent as `Authorization: Bearer TOKEN` by scripts and
//!   Prometheus. Made on first use; delete it and restart the node to change it.
//! - `logins/HASH`: one file per one-time login token, named by the BLAKE3 hash of the token
//!   (the token itself is never stored) and holding its expiry (Unix seconds). The daemon takes
//!   a token once: it removes the file before it answers, so a second use fails.
//! - Sessions live in the daemon's memory only: a random id in a `Secure; HttpOnly;
//!   SameSite=Strict` cookie, and a per-session CSRF token that every state-changing request
//!   must carry in the `X-Cairn-CSRF` header. Bearer requests need no CSRF token (a browser
//!   never adds that header on its own).

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, Method, header};
use cairn_node::NodeDir;

use crate::error::{ApiError, WebError};

/// The cookie that carries a browser session's id.
pub(crate) const SESSION_COOKIE: &str = "cairn_session";
/// The header that carries a session's CSRF token.
pub(crate) const CSRF_HEADER: &str = "x-cairn-csrf";
/// How long a one-time login link stays valid.
pub const LOGIN_TTL: Duration = Duration::from_secs(10 * 60);
/// Sessions kept at once; the oldest goes first.
const MAX_SESSIONS: usize = 256;
/// Login files kept at once; more are refused until some are used or expire.
const MAX_LOGINS: usize = 64;

/// The directory of the web server's files: `DIR/web`.
pub fn web_dir(dir: &NodeDir) -> PathBuf {
    dir.root().join("web")
}

/// Creates `DIR/web` (mode 0700) and `DIR/web/logins`.
pub(crate) fn ensure_web_dir(dir: &NodeDir) -> Result<PathBuf, WebError> {
    let web = web_dir(dir);
    for d in [web.clone(), web.join("logins")] {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&d)
            .map_err(|e| WebError::io(&d, e))?;
    }
    Ok(web)
}

/// Writes `bytes` to `path` with mode 0600 (or 0644 when not `secret`): a temporary file, then
/// a rename, so a reader never sees half a file.
pub(crate) fn write_file(path: &Path, bytes: &[u8], secret: bool) -> Result<(), WebError> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(|e| WebError::io(&tmp, e))?;
    file.write_all(bytes).map_err(|e| WebError::io(&tmp, e))?;
    file.sync_all().map_err(|e| WebError::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| WebError::io(path, e))
}

fn random_hex() -> String {
    data_encoding::HEXLOWER.encode(&rand::random::<[u8; 32]>())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The node's API token (for `Authorization: Bearer`), made on first use.
pub fn api_token(dir: &NodeDir) -> Result<String, WebError> {
    dir.require_initialised().map_err(WebError::Node)?;
    let web = ensure_web_dir(dir)?;
    let path = web.join("api-token");
    match fs::read_to_string(&path) {
        Ok(text) if text.trim().len() == 64 => Ok(text.trim().to_owned()),
        Ok(_) => Err(WebError::Config(format!(
            "{} is damaged: delete it and restart the node to make a new token",
            path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = random_hex();
            // Created exclusively, so two first uses at once agree on one token.
            let created = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path);
            match created {
                Ok(mut file) => {
                    file.write_all(format!("{token}\n").as_bytes())
                        .and_then(|()| file.sync_all())
                        .map_err(|e| WebError::io(&path, e))?;
                    Ok(token)
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => api_token(dir),
                Err(e) => Err(WebError::io(&path, e)),
            }
        }
        Err(e) => Err(WebError::io(&path, e)),
    }
}

/// The URL the running node's web UI answers on, from `DIR/web/url`.
pub fn server_url(dir: &NodeDir) -> Result<String, WebError> {
    let path = web_dir(dir).join("url");
    match fs::read_to_string(&path) {
        Ok(url) if !url.trim().is_empty() => Ok(url.trim().to_owned()),
        _ => Err(WebError::NotRunning(dir.root().to_path_buf())),
    }
}

/// Mints a one-time login token valid for [`LOGIN_TTL`] and returns the login URL that holds
/// it (in the fragment, so it is never sent in a request line): `https://HOST:PORT/login#TOKEN`.
pub fn login_url(dir: &NodeDir) -> Result<String, WebError> {
    let url = server_url(dir)?;
    let logins = ensure_web_dir(dir)?.join("logins");
    prune_logins(&logins);
    let count = fs::read_dir(&logins)
        .map_err(|e| WebError::io(&logins, e))?
        .count();
    if count >= MAX_LOGINS {
        return Err(WebError::Config(format!(
            "{count} unused login links are pending; use one or wait {} minutes",
            LOGIN_TTL.as_secs() / 60
        )));
    }
    let token = random_hex();
    let name = blake3::hash(token.as_bytes()).to_hex().to_string();
    let expiry = now_secs() + LOGIN_TTL.as_secs();
    write_file(&logins.join(name), format!("{expiry}\n").as_bytes(), true)?;
    Ok(format!("{url}/login#{token}"))
}

/// Removes expired login files.
fn prune_logins(logins: &Path) {
    let Ok(entries) = fs::read_dir(logins) else {
        return;
    };
    let now = now_secs();
    for entry in entries.flatten() {
        let path = entry.path();
        let expired = fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .is_none_or(|expiry| expiry < now);
        if expired {
            let _ = fs::remove_file(&path);
        }
    }
}

/// Takes the one-time login `token`: true when it was valid (its file is gone afterwards, so a
/// second use fails).
pub(crate) fn take_login(web: &Path, token: &str) -> bool {
    let token = token.trim();
    if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return false;
    }
    let path = web
        .join("logins")
        .join(blake3::hash(token.as_bytes()).to_hex().as_str());
    let Ok(text) = fs::read_to_string(&path) else {
        return false;
    };
    // Whoever removes the file owns the login; a concurrent second use loses the race.
    if fs::remove_file(&path).is_err() {
        return false;
    }
    text.trim()
        .parse::<u64>()
        .is_ok_and(|expiry| expiry >= now_secs())
}

/// One browser session.
struct Session {
    csrf: String,
    expires: Instant,
}

/// The API token's hash and the live sessions.
pub(crate) struct Auth {
    token_hash: blake3::Hash,
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    session_ttl: Duration,
}

/// How a request proved who it is.
#[derive(Clone, Debug)]
pub(crate) enum Caller {
    /// `Authorization: Bearer` with the API token.
    Token,
    /// A browser session, with its CSRF token.
    Session {
        /// The session's CSRF token.
        csrf: String,
    },
}

impl Auth {
    pub(crate) fn new(token: &str, session_ttl: Duration) -> Auth {
        Auth {
            token_hash: blake3::hash(token.as_bytes()),
            sessions: Mutex::new(HashMap::new()),
            session_ttl,
        }
    }

    /// Starts a session: returns its id (for the cookie) and its CSRF token.
    pub(crate) fn start_session(&self) -> (String, String) {
        let id = random_hex();
        let csrf = random_hex();
        let now = Instant::now();
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS {
            let oldest = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                sessions.remove(&k);
            }
        }
        sessions.insert(
            *blake3::hash(id.as_bytes()).as_bytes(),
            Session {
                csrf: csrf.clone(),
                expires: now + self.session_ttl,
            },
        );
        (id, csrf)
    }

    /// Ends the session of `headers`' cookie, if any.
    pub(crate) fn end_session(&self, headers: &HeaderMap) {
        if let Some(id) = session_cookie(headers) {
            let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            sessions.remove(blake3::hash(id.as_bytes()).as_bytes());
        }
    }

    /// The session cookie's lifetime, for `Max-Age`.
    pub(crate) fn session_ttl(&self) -> Duration {
        self.session_ttl
    }

    /// Whether `token` is the API token (compared in constant time through its hash).
    pub(crate) fn is_api_token(&self, token: &str) -> bool {
        blake3::hash(token.trim().as_bytes()) == self.token_hash
    }

    /// Who sent a request with these headers: 401 without a valid token or session.
    pub(crate) fn caller(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let value = value.to_str().unwrap_or("");
            return match value.strip_prefix("Bearer ") {
                Some(token) if self.is_api_token(token) => Ok(Caller::Token),
                _ => Err(ApiError::unauthorized()),
            };
        }
        let id = session_cookie(headers).ok_or_else(ApiError::unauthorized)?;
        let key = *blake3::hash(id.as_bytes()).as_bytes();
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        match sessions.get(&key) {
            Some(s) if s.expires > Instant::now() => Ok(Caller::Session {
                csrf: s.csrf.clone(),
            }),
            _ => Err(ApiError::unauthorized()),
        }
    }

    /// Checks a request: a valid token or session, and for a session a state-changing method
    /// needs the session's CSRF token in [`CSRF_HEADER`] (403 otherwise).
    pub(crate) fn check(&self, method: &Method, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let caller = self.caller(headers)?;
        if let Caller::Session { csrf } = &caller {
            let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
            let sent = headers
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !safe && blake3::hash(sent.as_bytes()) != blake3::hash(csrf.as_bytes()) {
                return Err(ApiError::new(
                    axum::http::StatusCode::FORBIDDEN,
                    "missing or wrong X-Cairn-CSRF header (reload the page)",
                ));
            }
        }
        Ok(caller)
    }
}

/// The session id in the request's cookies.
fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn csrf_is_needed_for_writes_by_session_only() {
        let auth = Auth::new("t0ken", Duration::from_secs(60));
        let (id, csrf) = auth.start_session();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("other=1; {SESSION_COOKIE}={id}")).expect("ascii"),
        );
        assert!(auth.check(&Method::GET, &headers).is_ok());
        let err = auth.check(&Method::POST, &headers).expect_err("no csrf");
        assert_eq!(err.status, axum::http::StatusCode::FORBIDDEN);
        headers.insert(CSRF_HEADER, HeaderValue::from_str(&csrf).expect("ascii"));
        assert!(auth.check(&Method::POST, &headers).is_ok());
        auth.end_session(&headers);
        let err = auth.check(&Method::GET, &headers).expect_err("ended");
        assert_eq!(err.status, axum::http::StatusCode::UNAUTHORIZED);

        let mut bearer = HeaderMap::new();
        bearer.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer t0ken"),
        );
        assert!(auth.check(&Method::POST, &bearer).is_ok());
        bearer.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer nope"),
        );
        assert!(auth.check(&Method::GET, &bearer).is_err());
    }

    #[test]
    fn a_login_token_works_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let web = dir.path();
        fs::create_dir_all(web.join("logins")).expect("mkdir");
        let token = random_hex();
        let name = blake3::hash(token.as_bytes()).to_hex().to_string();
        let expiry = now_secs() + 60;
        fs::write(web.join("logins").join(&name), format!("{expiry}\n")).expect("write");
        assert!(take_login(web, &token));
        assert!(!take_login(web, &token));
        let old = random_hex();
        let name = blake3::hash(old.as_bytes()).to_hex().to_string();
        fs::write(web.join("logins").join(&name), "5\n").expect("write");
        assert!(!take_login(web, &old), "expired");
        assert!(!take_login(web, "../../etc/passwd"));
    }
}

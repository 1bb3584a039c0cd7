//! The JSON endpoints under `/api/` (documented in `docs/api/openapi.yaml`).
//!
//! Paths in the tree may travel in a query (`/api/ls?path=/photos`); a cap never does: it goes
//! in the JSON body (`{"cap": "cairn:...", "path": "/sub"}`) or the `X-Cairn-Cap` header. A
//! path holding `..`, `.` or NUL is refused with 400 before the node sees it.

use axum::Json;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cairn_core::cap::Cap;
use cairn_node::{CheckReport, LsReport, StatusReport};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// The longest path accepted.
const MAX_PATH: usize = 4096;
/// The longest text a QR code is made of.
const MAX_QR_TEXT: usize = 1024;

/// A JSON body whose refusal is a JSON error (400), like every other error.
pub(crate) struct Body<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Body(value)),
            Err(rejection) => Err(ApiError::new(
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    StatusCode::PAYLOAD_TOO_LARGE
                } else {
                    StatusCode::BAD_REQUEST
                },
                format!("bad request body: {}", rejection.body_text()),
            )),
        }
    }
}

/// A query string whose refusal is a JSON error (400).
pub(crate) struct Query<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::try_from_uri(&parts.uri) {
            Ok(axum::extract::Query(value)) => Ok(Query(value)),
            Err(rejection) => Err(ApiError::bad_request(format!(
                "bad query: {}",
                rejection.body_text()
            ))),
        }
    }
}

/// Checks a path in the tree: no `.`/`..` parts, no NUL, not a cap. Returns it with one
/// leading `/` and no trailing one.
pub(crate) fn check_path(path: &str) -> Result<String, ApiError> {
    if path.len() > MAX_PATH {
        return Err(ApiError::bad_request(format!(
            "path longer than {MAX_PATH} bytes"
        )));
    }
    if path.contains('\0') {
        return Err(ApiError::bad_request("path contains a NUL byte"));
    }
    if path.trim_start().to_ascii_lowercase().starts_with("cairn:") {
        return Err(ApiError::bad_request(
            "a cap goes in the `cap` field of the body (or the X-Cairn-Cap header), not in a path",
        ));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" => {}
            "." | ".." => {
                return Err(ApiError::bad_request(format!(
                    "path {path:?}: '.' and '..' are not allowed (path traversal)"
                )));
            }
            name => parts.push(name),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

/// Checks a cap string (it must parse, and carry no path).
pub(crate) fn check_cap(cap: &str) -> Result<Cap, ApiError> {
    let cap = cap.trim();
    if cap.contains('/') {
        return Err(ApiError::bad_request(
            "bad cap: a cap holds no '/'; give the path below it in `path`",
        ));
    }
    cap.parse::<Cap>()
        .map_err(|e| ApiError::bad_request(format!("bad cap: {e}")))
}

/// The node location of `path` in the owner's tree, or below `cap` when given.
pub(crate) fn location(cap: Option<&str>, path: &str) -> Result<String, ApiError> {
    let path = check_path(path)?;
    match cap.map(str::trim).filter(|c| !c.is_empty()) {
        None => Ok(path),
        Some(cap) => {
            check_cap(cap)?;
            Ok(if path == "/" {
                cap.to_owned()
            } else {
                format!("{cap}{path}")
            })
        }
    }
}

/// The cap in the `X-Cairn-Cap` header, if any.
pub(crate) fn header_cap(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get("x-cairn-cap") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim().to_owned()))
            .map_err(|_| ApiError::bad_request("bad cap: X-Cairn-Cap is not ASCII")),
    }
}

/// `GET /api/status`.
pub(crate) async fn status(State(state): State<AppState>) -> Result<Json<StatusReport>, ApiError> {
    Ok(Json(state.node.status().await?))
}

/// `GET /api/session`: who the caller is, and the session's CSRF token.
pub(crate) async fn session(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let caller = state.auth.caller(&headers)?;
    Ok(Json(match caller {
        Caller::Token => {
            serde_json::json!({ "kind": "token", "csrf": null, "node": state.node.id() })
        }
        Caller::Session { csrf } => {
            serde_json::json!({ "kind": "session", "csrf": csrf, "node": state.node.id() })
        }
    }))
}

/// `POST /api/logout`: ends the session and clears its cookie.
pub(crate) async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    state.auth.end_session(&headers);
    let mut response = Json(serde_json::json!({ "ok": true })).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "cairn_session=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Strict",
        ),
    );
    response
}

/// A path query.
#[derive(Deserialize)]
pub(crate) struct PathQuery {
    /// A path in the owner's tree.
    #[serde(default)]
    path: Option<String>,
}

/// A path query that must name something.
#[derive(Deserialize)]
pub(crate) struct PathQueryRequired {
    /// A path in the owner's tree (or below the `X-Cairn-Cap` cap).
    pub(crate) path: String,
}

/// A location in a body: a path, below `cap` when given.
#[derive(Deserialize)]
pub(crate) struct LocBody {
    #[serde(default)]
    cap: Option<String>,
    #[serde(default)]
    path: Option<String>,
}

impl LocBody {
    fn location(&self) -> Result<String, ApiError> {
        location(self.cap.as_deref(), self.path.as_deref().unwrap_or("/"))
    }
}

/// `GET /api/ls?path=P`.
pub(crate) async fn ls_path(
    State(state): State<AppState>,
    Query(q): Query<PathQuery>,
) -> Result<Json<LsReport>, ApiError> {
    let location = location(None, q.path.as_deref().unwrap_or("/"))?;
    Ok(Json(state.node.ls(&location).await?))
}

/// `POST /api/ls {cap?, path?}`: browse below a cap.
pub(crate) async fn ls_body(
    State(state): State<AppState>,
    Body(body): Body<LocBody>,
) -> Result<Json<LsReport>, ApiError> {
    Ok(Json(state.node.ls(&body.location()?).await?))
}

/// `POST /api/mkdir` body.
#[derive(Deserialize)]
pub(crate) struct MkdirBody {
    #[serde(default)]
    cap: Option<String>,
    path: String,
    #[serde(default)]
    parents: bool,
}

/// `POST /api/mkdir {cap?, path, parents?}`.
pub(crate) async fn mkdir(
    State(state): State<AppState>,
    Body(body): Body<MkdirBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let location = location(body.cap.as_deref(), &body.path)?;
    state.node.mkdir(&location, body.parents).await?;
    Ok(Json(serde_json::json!({ "ok": true })))
}

/// `POST /api/rm` body.
#[derive(Deserialize)]
pub(crate) struct RmBody {
    #[serde(default)]
    cap: Option<String>,
    path: String,
    #[serde(default)]
    recursive: bool,
}

/// `POST /api/rm {cap?, path, recursive?}`.
pub(crate) async fn rm(
    State(state): State<AppState>,
    Body(body): Body<RmBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let location = location(body.cap.as_deref(), &body.path)?;
    if location == "/" {
        return Err(ApiError::bad_request(
            "the root directory cannot be removed",
        ));
    }
    state.node.rm(&location, body.recursive).await?;
    Ok(Json(serde_json::json!({ "ok": true })))
}

/// `POST /api/mv` body.
#[derive(Deserialize)]
pub(crate) struct MvBody {
    #[serde(default)]
    cap: Option<String>,
    from: String,
    to: String,
}

/// `POST /api/mv {cap?, from, to}`: both paths below `cap` when given.
pub(crate) async fn mv(
    State(state): State<AppState>,
    Body(body): Body<MvBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let from = location(body.cap.as_deref(), &body.from)?;
    let to = location(body.cap.as_deref(), &body.to)?;
    state.node.mv(&from, &to).await?;
    Ok(Json(serde_json::json!({ "ok": true })))
}

/// `POST /api/symlink` body.
#[derive(Deserialize)]
pub(crate) struct SymlinkBody {
    #[serde(default)]
    cap: Option<String>,
    path: String,
    target: String,
}

/// `POST /api/symlink {cap?, path, target}`.
pub(crate) async fn symlink(
    State(state): State<AppState>,
    Body(body): Body<SymlinkBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let location = location(body.cap.as_deref(), &body.path)?;
    state.node.symlink(&body.target, &location).await?;
    Ok(Json(serde_json::json!({ "ok": true })))
}

/// `POST /api/share` body.
#[derive(Deserialize)]
pub(crate) struct ShareBody {
    #[serde(default)]
    cap: Option<String>,
    path: String,
    #[serde(default)]
    write: bool,
}

/// `POST /api/share {cap?, path, write?}`: the entry's cap and a share link that carries it in
/// the fragment.
pub(crate) async fn share(
    State(state): State<AppState>,
    Body(body): Body<ShareBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let location = location(body.cap.as_deref(), &body.path)?;
    let cap = state.node.share(&location, body.write).await?;
    let name = body.path.rsplit('/').find(|p| !p.is_empty()).unwrap_or("");
    let link = share_link(&state.base_url, &cap, name);
    Ok(Json(serde_json::json!({ "cap": cap, "link": link })))
}

/// `BASE/s#CAP`, and `&n=NAME` (percent-encoded) so the page can name a downloaded file.
pub(crate) fn share_link(base: &str, cap: &str, name: &str) -> String {
    if name.is_empty() {
        format!("{base}/s#{cap}")
    } else {
        format!("{base}/s#{cap}&n={}", percent_encode(name))
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub(crate) fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `POST /api/attach` body.
#[derive(Deserialize)]
pub(crate) struct AttachBody {
    cap: String,
    path: String,
}

/// `POST /api/attach {cap, path}`: links a friend's cap at `path` in the owner's tree.
pub(crate) async fn attach(
    State(state): State<AppState>,
    Body(body): Body<AttachBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_cap(&body.cap)?;
    let location = location(None, &body.path)?;
    state.node.attach(body.cap.trim(), &location).await?;
    Ok(Json(serde_json::json!({ "ok": true })))
}

/// `POST /api/check {cap?, path?}`: the health of a file, by cap, by path, or by a path below
/// a directory cap.
pub(crate) async fn check(
    State(state): State<AppState>,
    Body(body): Body<LocBody>,
) -> Result<Json<CheckReport>, ApiError> {
    let cap = match (&body.cap, &body.path) {
        (Some(cap), None) => check_cap(cap)?,
        (None, None) => return Err(ApiError::bad_request("give a `cap` or a `path`")),
        _ => state.node.resolve_file(&body.location()?).await?,
    };
    Ok(Json(state.node.check(&cap).await?))
}

/// `POST /api/invite` body.
#[derive(Deserialize)]
pub(crate) struct InviteBody {
    /// Hours the code stays valid (24 when absent).
    #[serde(default)]
    ttl_hours: Option<u64>,
}

/// The longest an invite may stay valid: a week.
const MAX_INVITE_HOURS: u64 = 7 * 24;

/// `POST /api/invite {ttl_hours?}`: a one-time invite code for a new device (admin nodes).
pub(crate) async fn invite(
    State(state): State<AppState>,
    Body(body): Body<InviteBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let hours = body.ttl_hours.unwrap_or(24);
    if hours == 0 || hours > MAX_INVITE_HOURS {
        return Err(ApiError::bad_request(format!(
            "ttl_hours must be 1 to {MAX_INVITE_HOURS}"
        )));
    }
    let code = state
        .node
        .create_invite(std::time::Duration::from_secs(hours * 3600))?;
    Ok(Json(
        serde_json::json!({ "code": code.to_string(), "ttl_hours": hours }),
    ))
}

/// `POST /api/revoke` body.
#[derive(Deserialize)]
pub(crate) struct RevokeBody {
    node: String,
}

/// `POST /api/revoke {node}`: removes a member from the grid for good (admin nodes).
pub(crate) async fn revoke(
    State(state): State<AppState>,
    Body(body): Body<RevokeBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let node: cairn_core::id::NodeId = body
        .node
        .trim()
        .parse()
        .map_err(|_| ApiError::bad_request("`node` is not a node id (64 hex characters)"))?;
    let revocation = state.node.revoke(node).await?;
    Ok(Json(serde_json::json!({
        "node": revocation.node(),
        "revoked_at": revocation.revoked_at(),
    })))
}

/// `POST /api/qr` body.
#[derive(Deserialize)]
pub(crate) struct QrBody {
    text: String,
}

/// `POST /api/qr {text}`: an SVG QR code of `text` (a share link), made here so the link never
/// leaves the node.
pub(crate) async fn qr(Body(body): Body<QrBody>) -> Result<Response, ApiError> {
    if body.text.is_empty() || body.text.len() > MAX_QR_TEXT {
        return Err(ApiError::bad_request(format!(
            "text must be 1 to {MAX_QR_TEXT} bytes"
        )));
    }
    let code = qrcode::QrCode::new(body.text.as_bytes())
        .map_err(|e| ApiError::bad_request(format!("cannot make a QR code: {e}")))?;
    let svg = code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(240, 240)
        .quiet_zone(true)
        .build();
    Ok((
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        svg,
    )
        .into_response())
}

/// The JSON 404 of an unknown `/api/` route.
pub(crate) async fn no_route() -> ApiError {
    ApiError::not_found("no such API endpoint (see docs/api/openapi.yaml)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked() {
        assert_eq!(check_path("a//b/").expect("ok"), "/a/b");
        assert_eq!(check_path("").expect("ok"), "/");
        for bad in ["/a/../b", "..", "/a/./b", "a\0b", "cairn:dir:x", " CAIRN:x"] {
            let e = check_path(bad).expect_err(bad);
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn share_links_carry_the_cap_in_the_fragment() {
        assert_eq!(
            share_link("https://h:1", "cairn:x", "a b.txt"),
            "https://h:1/s#cairn:x&n=a%20b.txt"
        );
        assert_eq!(
            share_link("https://h:1", "cairn:x", ""),
            "https://h:1/s#cairn:x"
        );
    }
}

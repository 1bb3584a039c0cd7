//! Uploads and downloads.
//!
//! Uploads (`PUT /api/files?path=/dir/name`) stream the request body into [`Node::put`] and link
//! the file at the path; a body over `[web] max_upload_bytes` is refused with 413, before any
//! byte is read when it says its length, as soon as it passes the limit otherwise.
//!
//! Downloads stream the file through a [`FileReader`], one window at a time with the next
//! windows prefetched, so memory stays bounded whatever the size; a `Range: bytes=...` request
//! fetches only the chunks it touches and is answered 206. Every download is an attachment, its
//! type guessed from the name, with `nosniff`. Files reached through a cap are downloaded
//! through a ticket: `POST /api/download` (or the public `POST /s/open` of the share page) trades
//! the cap for a random `/d/ID` URL valid `[web] download_link_secs`.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Body as HttpBody;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use cairn_core::cap::Cap;
use cairn_dir::{Content, FileRef, Meta};
use cairn_node::{FileReader, NodeError, PutOptions};
use futures_util::StreamExt;
use serde::Deserialize;
use tokio_util::io::StreamReader;

use crate::api::{Body, Query, check_cap, header_cap, location};
use crate::error::ApiError;
use crate::state::AppState;

/// Bytes one step of a download reads.
const WINDOW: usize = 1 << 20;
/// Bytes fetched ahead of a download's position.
const AHEAD: usize = 8 << 20;

/// `PUT /api/files` query.
#[derive(Deserialize)]
pub(crate) struct UploadQuery {
    path: String,
    #[serde(default)]
    private: bool,
    #[serde(default = "yes")]
    replace: bool,
}

fn yes() -> bool {
    true
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("upload larger than the limit of {limit} bytes ([web] max_upload_bytes)"),
    )
}

/// `PUT /api/files?path=/dir/name[&private=true][&replace=false]`, the body being the file
/// (`X-Cairn-Cap` names a directory cap the path is below).
pub(crate) async fn upload(
    State(state): State<AppState>,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: HttpBody,
) -> Result<Response, ApiError> {
    let limit = state.config.max_upload_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    let cap = header_cap(&headers)?;
    let target = location(cap.as_deref(), &q.path)?;
    let (parent, name) = match target.rsplit_once('/') {
        Some((parent, name)) if !name.is_empty() => (parent.to_owned(), name.to_owned()),
        _ => {
            return Err(ApiError::bad_request(
                "give the file's path, with its name: ?path=/dir/name",
            ));
        }
    };
    cairn_dir::check_name(&name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    // Refuse before the upload when the directory is missing or read-only.
    let listing = state
        .node
        .ls(if parent.is_empty() { "/" } else { &parent })
        .await?;
    if !listing.writable {
        return Err(NodeError::ReadOnly(listing.path).into());
    }
    let over = Arc::new(AtomicBool::new(false));
    let mut seen = 0u64;
    let stream = body.into_data_stream().map({
        let over = over.clone();
        let metrics = state.clone();
        move |chunk| {
            let chunk = chunk.map_err(|e| io::Error::other(e.to_string()))?;
            seen += chunk.len() as u64;
            if seen > limit {
                over.store(true, Ordering::Relaxed);
                return Err(io::Error::other("upload too large"));
            }
            metrics
                .metrics
                .upload_bytes
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            Ok::<Bytes, io::Error>(chunk)
        }
    });
    let put = state
        .node
        .put(
            StreamReader::new(stream),
            PutOptions {
                private: q.private,
                ..Default::default()
            },
        )
        .await;
    let report = match put {
        Ok(report) => report,
        Err(_) if over.load(Ordering::Relaxed) => return Err(too_large(limit)),
        Err(e) => return Err(e.into()),
    };
    let cap: Cap = report
        .cap
        .parse()
        .map_err(|e: cairn_core::cap::CapError| ApiError::from(NodeError::from(e)))?;
    let file = FileRef::new(cap).ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the put returned a cap that is not a file cap",
        )
    })?;
    let content = Content::File {
        file,
        meta: Meta {
            mode: 0o644,
            mtime_ns: now_ns(),
            ..Default::default()
        },
    };
    state.node.link(&target, content, q.replace).await?;
    // The path as the caller gave it, below its cap: a cap never goes back out here.
    let shown = crate::api::check_path(&q.path)?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "put": report, "path": shown })),
    )
        .into_response())
}

/// `GET /api/files?path=P` (with `X-Cairn-Cap` for a path below a cap): the file's bytes.
pub(crate) async fn download(
    State(state): State<AppState>,
    Query(q): Query<crate::api::PathQueryRequired>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let cap = header_cap(&headers)?;
    let target = location(cap.as_deref(), &q.path)?;
    let file = state.node.resolve_file(&target).await?;
    let name = target.rsplit('/').next().unwrap_or("download").to_owned();
    send(&state, &file, &name, &headers).await
}

/// `POST /api/download` and `POST /s/open` body.
#[derive(Deserialize)]
pub(crate) struct OpenBody {
    cap: String,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

/// What a cap (and a path below it) names, for a download or a listing.
enum Opened {
    File { cap: Cap, name: String, size: u64 },
    Dir(cairn_node::LsReport),
}

async fn open(state: &AppState, body: &OpenBody) -> Result<Opened, ApiError> {
    let cap = check_cap(&body.cap)?;
    let path = body.path.as_deref().unwrap_or("/");
    let target = location(Some(body.cap.trim()), path)?;
    let file = if cap.is_dir() {
        match state.node.resolve_file(&target).await {
            Ok(file) => Some(file),
            Err(NodeError::IsADirectory(_)) => None,
            Err(e) => return Err(e.into()),
        }
    } else if crate::api::check_path(path)? == "/" {
        Some(cap)
    } else {
        return Err(ApiError::bad_request("a file cap has no paths below it"));
    };
    match file {
        Some(cap) => {
            let from_path = path.rsplit('/').find(|p| !p.is_empty());
            let name = from_path
                .map(str::to_owned)
                .or_else(|| body.name.clone())
                .filter(|n| cairn_dir::check_name(n).is_ok())
                .unwrap_or_else(|| "download".into());
            let size = file_size(&cap);
            Ok(Opened::File { cap, name, size })
        }
        None => Ok(Opened::Dir(state.node.ls(&target).await?)),
    }
}

fn file_size(cap: &Cap) -> u64 {
    match cap {
        Cap::Read(r) => r.size,
        Cap::Literal(l) => l.data.len() as u64,
        _ => 0,
    }
}

fn ticket_answer(state: &AppState, cap: Cap, name: String, size: u64) -> serde_json::Value {
    let ttl = Duration::from_secs(state.config.download_link_secs.max(1));
    let id = state.tickets.issue(cap, name.clone(), ttl);
    serde_json::json!({
        "kind": "file",
        "name": name,
        "size": size,
        "url": format!("/d/{id}"),
        "expires_secs": ttl.as_secs(),
    })
}

/// `POST /api/download {cap, path?, name?}`: a short-lived download URL for a file named by a
/// cap (and a path below a directory cap).
pub(crate) async fn ticket(
    State(state): State<AppState>,
    Body(body): Body<OpenBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    match open(&state, &body).await? {
        Opened::File { cap, name, size } => Ok(Json(ticket_answer(&state, cap, name, size))),
        Opened::Dir(_) => Err(NodeError::IsADirectory("the cap names a directory".into()).into()),
    }
}

/// `POST /s/open {cap, path?, name?}`, public (the cap is the authority): for a file, a
/// short-lived download URL; for a directory, its listing (read-only, whatever the cap).
pub(crate) async fn open_share(
    State(state): State<AppState>,
    Body(body): Body<OpenBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    match open(&state, &body).await? {
        Opened::File { cap, name, size } => Ok(Json(ticket_answer(&state, cap, name, size))),
        Opened::Dir(report) => {
            let entries: Vec<_> = report
                .entries
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "name": e.name, "kind": e.kind, "size": e.size, "mtime_ns": e.mtime_ns,
                    })
                })
                .collect();
            Ok(Json(serde_json::json!({
                "kind": "dir",
                "path": crate::api::check_path(body.path.as_deref().unwrap_or("/"))?,
                "entries": entries,
            })))
        }
    }
}

/// `GET /d/ID`: the file of a download ticket (public; the random id is the authority).
pub(crate) async fn by_ticket(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let ticket = state.tickets.get(&id).ok_or_else(|| {
        ApiError::not_found(
            "this download link is unknown or has expired; open the share link again",
        )
    })?;
    send(&state, &ticket.cap, &ticket.name, &headers).await
}

/// A parsed `Range` header: `Some((start, end_inclusive))`, `None` for the whole file.
fn parse_range(headers: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(value) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        // Several ranges: answered with the whole file, which RFC 9110 allows.
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| ())?;
        if n == 0 || size == 0 {
            return Err(());
        }
        (size.saturating_sub(n), size - 1)
    } else {
        let start: u64 = a.parse().map_err(|_| ())?;
        let end = if b.is_empty() {
            size.saturating_sub(1)
        } else {
            b.parse::<u64>()
                .map_err(|_| ())?
                .min(size.saturating_sub(1))
        };
        if start >= size || end < start {
            return Err(());
        }
        (start, end)
    };
    Ok(Some(range))
}

/// `attachment; filename="ascii"; filename*=UTF-8''encoded`.
fn disposition(name: &str) -> String {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "attachment; filename=\"{ascii}\"; filename*=UTF-8''{}",
        crate::api::percent_encode(name)
    )
}

/// Streams `cap`'s bytes (or the asked range) as an attachment named `name`.
async fn send(
    state: &AppState,
    cap: &Cap,
    name: &str,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let reader = state.node.open_file(cap).await?;
    let size = reader.size();
    let (status, start, end) = match parse_range(headers, size) {
        Ok(None) => (StatusCode::OK, 0, size),
        Ok(Some((a, b))) => (StatusCode::PARTIAL_CONTENT, a, b + 1),
        Err(()) => {
            let mut response = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!("the range asked for is outside the file's {size} bytes"),
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                response.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(response);
        }
    };
    // The first window is read before the answer starts, so a file out of reach gets an
    // error status rather than a cut transfer (its manifest may well be cached here).
    let first = if start < end {
        reader.prefetch(start, AHEAD.min((end - start) as usize));
        read_window(&reader, start, end, state).await?
    } else {
        Bytes::new()
    };
    let rest = stream(reader, start + first.len() as u64, end, state.clone());
    let mime = mime_guess::from_path(name).first_or_octet_stream();
    let body = HttpBody::from_stream(futures_util::stream::once(async { Ok(first) }).chain(rest));
    let mut response = (status, body).into_response();
    let h = response.headers_mut();
    let set = |h: &mut HeaderMap, k: header::HeaderName, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    };
    set(h, header::CONTENT_TYPE, mime.essence_str().to_owned());
    set(h, header::CONTENT_LENGTH, (end - start).to_string());
    set(h, header::CONTENT_DISPOSITION, disposition(name));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::PARTIAL_CONTENT {
        set(
            h,
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{size}", end - 1),
        );
    }
    Ok(response)
}

/// The bytes `start..end` of `reader`, a window at a time, fetching ahead. A failure midway
/// ends the stream with an error, so the client sees a cut transfer, never a short file.
fn stream(
    reader: FileReader,
    start: u64,
    end: u64,
    state: AppState,
) -> impl futures_util::Stream<Item = io::Result<Bytes>> + Send + 'static {
    futures_util::stream::try_unfold(start, move |at| {
        let reader = reader.clone();
        let state = state.clone();
        async move {
            if at >= end {
                return Ok(None);
            }
            let bytes = read_window(&reader, at, end, &state)
                .await
                .map_err(|e| io::Error::other(e.message))?;
            let at = at + bytes.len() as u64;
            Ok(Some((bytes, at)))
        }
    })
}

/// The window of `reader` at `at` (before `end`, never empty), the next one fetched ahead;
/// counted as downloaded.
async fn read_window(
    reader: &FileReader,
    at: u64,
    end: u64,
    state: &AppState,
) -> Result<Bytes, ApiError> {
    let len = (end - at).min(WINDOW as u64) as usize;
    let next = at + len as u64;
    if next < end {
        reader.prefetch(next, AHEAD.min((end - next) as usize));
    }
    let bytes = reader.read_at(at, len).await?;
    if bytes.is_empty() {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the file ended before its size",
        ));
    }
    state
        .metrics
        .download_bytes
        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(v: &str, size: u64) -> Result<Option<(u64, u64)>, ()> {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_str(v).expect("ascii"));
        parse_range(&h, size)
    }

    #[test]
    fn ranges_parse() {
        assert_eq!(range("bytes=0-9", 100), Ok(Some((0, 9))));
        assert_eq!(range("bytes=90-", 100), Ok(Some((90, 99))));
        assert_eq!(range("bytes=-10", 100), Ok(Some((90, 99))));
        assert_eq!(range("bytes=50-500", 100), Ok(Some((50, 99))));
        assert_eq!(range("bytes=100-", 100), Err(()));
        assert_eq!(range("bytes=9-3", 100), Err(()));
        assert_eq!(range("bytes=x-3", 100), Err(()));
        assert_eq!(range("bytes=0-1,5-6", 100), Ok(None));
        assert_eq!(range("items=0-1", 100), Ok(None));
    }

    #[test]
    fn disposition_is_safe() {
        assert_eq!(
            disposition("a\"b é.txt"),
            "attachment; filename=\"a_b _.txt\"; filename*=UTF-8''a%22b%20%C3%A9.txt"
        );
    }
}

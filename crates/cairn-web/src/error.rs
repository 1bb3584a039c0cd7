//! Errors of the web server, and how node errors become HTTP answers.
//!
//! Rules: every failed request is answered with a JSON body `{"error": "one line"}` and the
//! status that says what went wrong (400 bad input or bad cap, 401 no valid token or session,
//! 403 CSRF or read-only, 404 not found, 409 name taken, 413 too large, 503 the grid could not
//! be reached or too few shares were found). A [`NodeError`] keeps its one-line `Display`,
//! which never holds a cap or a key. [`WebError`] is what starting the server can fail with.

use std::path::PathBuf;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cairn_node::NodeError;

/// Starting the web server failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebError {
    /// A file under the web directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The listen address could not be bound.
    #[error("web UI: cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The settings are refused (e.g. a public address without `allow_remote`).
    #[error("web UI settings: {0}")]
    Config(String),
    /// The TLS certificate or key could not be made or loaded.
    #[error("web UI certificate: {0}")]
    Tls(String),
    /// The node directory is unusable (not initialised, ...).
    #[error("{0}")]
    Node(NodeError),
    /// The node is not running, so there is no URL to print.
    #[error(
        "the web UI of the node at {} is not running (start the node with `cairn run --dir {}`)",
        .0.display(), .0.display()
    )]
    NotRunning(PathBuf),
}

impl WebError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> WebError {
        WebError::Io {
            path: path.into(),
            source,
        }
    }
}

/// A failed API request: a status and one line for the user.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub(crate) fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "not logged in: open the link `cairn web` prints, or send `Authorization: Bearer TOKEN` (`cairn web --print-token`)",
        )
    }

    pub(crate) fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
}

/// The HTTP status of a node error.
pub(crate) fn status_of(e: &NodeError) -> StatusCode {
    match e {
        NodeError::BadCap(_)
        | NodeError::BadInvite(_)
        | NodeError::Invalid(_)
        | NodeError::Dir(_)
        | NodeError::Input(_)
        | NodeError::Aborted(_)
        | NodeError::NotADirectory(_)
        | NodeError::IsADirectory(_)
        | NodeError::VerifyCapCannotRead => StatusCode::BAD_REQUEST,
        NodeError::NotFound(_) => StatusCode::NOT_FOUND,
        NodeError::AlreadyExists(_) => StatusCode::CONFLICT,
        NodeError::ReadOnly(_) | NodeError::NotAllowed(_) => StatusCode::FORBIDDEN,
        NodeError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        NodeError::NotEnoughShares { .. }
        | NodeError::NotHappy { .. }
        | NodeError::DirUnreachable(_)
        | NodeError::DirRolledBack(_)
        | NodeError::Net(_)
        | NodeError::NotRunning(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        ApiError::new(status_of(&e), e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_errors_map_to_statuses() {
        assert_eq!(
            status_of(&NodeError::NotFound("/a".into())),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status_of(&NodeError::AlreadyExists("/a".into())),
            StatusCode::CONFLICT
        );
        assert_eq!(
            status_of(&NodeError::DirUnreachable("/a".into())),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let bad: Result<cairn_core::cap::Cap, _> = "cairn:nonsense".parse();
        let e = NodeError::from(bad.expect_err("not a cap"));
        assert_eq!(status_of(&e), StatusCode::BAD_REQUEST);
    }
}

//! The HTTPS server: binding, the routes, the accept loop, and the login exchange.
//!
//! One task per connection, at most [`MAX_CONNECTIONS`] at once; a TLS handshake that takes
//! longer than [`HANDSHAKE_TIMEOUT`] is dropped. Nothing about a request is logged but its
//! route pattern, status and time (at debug level): never a URL, header or body, since those
//! may carry tokens.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cairn_node::{Node, NodeDir, WebConfig};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::api::{self, Body};
use crate::auth::{self, Auth, SESSION_COOKIE};
use crate::error::{ApiError, WebError};
use crate::state::{AppState, Shared, Tickets};
use crate::{files, metrics, pages, tls};

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 256;
/// Time a client has to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A bound web server, not yet serving. [`WebServer::bind`] then [`WebServer::run`]; or
/// [`serve`](crate::serve) for both.
pub struct WebServer {
    listener: TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    app: Router,
    url: String,
    cert_pem: String,
    url_file: PathBuf,
}

impl std::fmt::Debug for WebServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebServer").field("url", &self.url).finish()
    }
}

impl WebServer {
    /// Checks the settings, makes or loads the certificate and the API token, binds the listen
    /// address and writes the URL to `DIR/web/url`.
    pub async fn bind(node: Node, dir: &NodeDir, config: WebConfig) -> Result<WebServer, WebError> {
        if !config.listen.ip().is_loopback() && !config.allow_remote {
            return Err(WebError::Config(format!(
                "listen = {} is not a loopback address; set allow_remote = true in [web] to serve other machines",
                config.listen
            )));
        }
        let web = auth::ensure_web_dir(dir)?;
        let tls = tls::load(&web, &config, config.listen)?;
        let token = auth::api_token(dir)?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| WebError::Bind {
                addr: config.listen,
                source,
            })?;
        let local = listener.local_addr().map_err(|source| WebError::Bind {
            addr: config.listen,
            source,
        })?;
        let url = base_url(local);
        let state = AppState::new(Shared {
            node,
            web_dir: web.clone(),
            base_url: url.clone(),
            auth: Auth::new(
                &token,
                Duration::from_secs(config.session_hours.max(1) * 3600),
            ),
            tickets: Tickets::default(),
            metrics: Default::default(),
            config,
        });
        let url_file = web.join("url");
        auth::write_file(&url_file, format!("{url}\n").as_bytes(), false)?;
        Ok(WebServer {
            listener,
            tls: tokio_rustls::TlsAcceptor::from(tls.config),
            app: router(state),
            url,
            cert_pem: tls.cert_pem,
            url_file,
        })
    }

    /// `https://HOST:PORT`, where the server answers.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The PEM of the certificate the server presents (to pin it in a client).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Serves until `stop` is cancelled, then removes `DIR/web/url`. Cancel-safe.
    pub async fn run(self, stop: CancellationToken) -> Result<(), WebError> {
        tracing::info!(url = %self.url, "web UI listening");
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let open = CancellationToken::new();
        loop {
            let permit = tokio::select! {
                _ = stop.cancelled() => break,
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let (tcp, _) = tokio::select! {
                _ = stop.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::debug!(error = %e, "web accept failed");
                        continue;
                    }
                },
            };
            let tls = self.tls.clone();
            let app = self.app.clone();
            let open = open.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let Ok(Ok(stream)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await
                else {
                    return;
                };
                let service = TowerToHyperService::new(app);
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    _ = open.cancelled() => {}
                    served = conn => {
                        if let Err(e) = served {
                            tracing::debug!(error = %e, "web connection ended");
                        }
                    }
                }
            });
        }
        open.cancel();
        let _ = std::fs::remove_file(&self.url_file);
        Ok(())
    }
}

/// The URL of a listener at `local` (loopback when it listens on every address).
fn base_url(local: SocketAddr) -> String {
    let ip = local.ip();
    match ip {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => {
            format!("https://127.0.0.1:{}", local.port())
        }
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => {
            format!("https://[::1]:{}", local.port())
        }
        std::net::IpAddr::V4(v4) => format!("https://{v4}:{}", local.port()),
        std::net::IpAddr::V6(v6) => format!("https://[{v6}]:{}", local.port()),
    }
}

fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/status", get(api::status))
        .route("/session", get(api::session))
        .route("/logout", post(api::logout))
        .route("/ls", get(api::ls_path).post(api::ls_body))
        .route("/mkdir", post(api::mkdir))
        .route("/rm", post(api::rm))
        .route("/mv", post(api::mv))
        .route("/symlink", post(api::symlink))
        .route("/share", post(api::share))
        .route("/attach", post(api::attach))
        .route("/check", post(api::check))
        .route("/qr", post(api::qr))
        .route("/invite", post(api::invite))
        .route("/revoke", post(api::revoke))
        .route("/download", post(files::ticket))
        .route(
            "/files",
            get(files::download)
                .put(files::upload)
                .layer(DefaultBodyLimit::disable()),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_auth))
        .fallback(api::no_route);
    Router::new()
        .nest("/api", api)
        .route("/", get(pages::index))
        .route("/login", get(pages::login).post(login))
        .route("/s", get(pages::share))
        .route("/s/open", post(files::open_share))
        .route("/d/{id}", get(files::by_ticket))
        .route("/assets/{name}", get(pages::asset))
        .route("/metrics", get(metrics::render))
        .fallback(|| async { ApiError::not_found("no such page") })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .with_state(state)
}

/// Middleware of `/api/`: a valid token or session, and CSRF for state changes.
async fn require_auth(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match state.auth.check(request.method(), request.headers()) {
        Ok(_) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

/// `POST /login` body.
#[derive(Deserialize)]
struct LoginBody {
    token: String,
}

/// `POST /login {token}`: takes a one-time login token, starts a session (cookie) and returns
/// its CSRF token. A token works once.
async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    Body(body): Body<LoginBody>,
) -> Result<Response, ApiError> {
    let _ = headers;
    let web = state.web_dir.clone();
    let token = body.token;
    let valid = tokio::task::spawn_blocking(move || auth::take_login(&web, &token))
        .await
        .unwrap_or(false);
    if !valid {
        return Err(ApiError::new(
            axum::http::StatusCode::UNAUTHORIZED,
            "this login link is not valid: it was used already, has expired or is mistyped; run `cairn web` for a new one",
        ));
    }
    let (id, csrf) = state.auth.start_session();
    let cookie = format!(
        "{SESSION_COOKIE}={id}; Path=/; Max-Age={}; Secure; HttpOnly; SameSite=Strict",
        state.auth.session_ttl().as_secs()
    );
    let mut response = axum::Json(serde_json::json!({ "ok": true, "csrf": csrf })).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(response)
}

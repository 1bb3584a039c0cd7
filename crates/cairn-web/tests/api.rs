//! The JSON API against a real grid: five in-process nodes on loopback, the web server of node
//! 0 on 127.0.0.1:0 over HTTPS (its self-signed certificate pinned in the client).

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use cairn_node::WebConfig;
use cairn_testkit::{TestGrid, random_bytes};
use cairn_web::WebServer;
use reqwest::header;
use reqwest::{Client, Method, Response, StatusCode};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Everything every test logged, at every level.
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || Capture(sink.clone()))
            .init();
        buf
    })
    .clone()
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Fails when any of `secrets` appears in the captured logs.
fn assert_not_logged(secrets: &[&str]) {
    let text = String::from_utf8_lossy(&logs().lock().expect("log buffer")).into_owned();
    assert!(text.len() > 100, "the logs were captured");
    for secret in secrets {
        assert!(!secret.is_empty());
        assert!(
            !text.contains(secret),
            "a secret reached the logs: {}",
            &secret[..secret.len().min(24)]
        );
    }
}

struct Web {
    url: String,
    client: Client,
    token: String,
    stop: CancellationToken,
}

impl Drop for Web {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve(grid: &TestGrid, i: usize, edit: impl FnOnce(&mut WebConfig)) -> Web {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = WebConfig::default();
    edit(&mut config);
    let server = WebServer::bind(grid.node(i).clone(), grid.dir(i), config)
        .await
        .expect("web server binds");
    let url = server.url().to_owned();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    assert_eq!(cairn_web::server_url(grid.dir(i)).expect("url file"), url);
    let cert = reqwest::Certificate::from_pem(server.cert_pem().as_bytes()).expect("pem");
    // HTTP/2, as browsers use it here: an early answer (413) to an upload still being sent
    // ends just that stream.
    let client = Client::builder()
        .tls_certs_only([cert])
        .build()
        .expect("client");
    let stop = CancellationToken::new();
    tokio::spawn(server.run(stop.clone()));
    let token = cairn_web::api_token(grid.dir(i)).expect("token");
    Web {
        url,
        client,
        token,
        stop,
    }
}

impl Web {
    fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, format!("{}{path}", self.url))
    }

    fn authed(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.req(method, path).bearer_auth(&self.token)
    }

    async fn post(&self, path: &str, body: Value) -> Response {
        self.authed(Method::POST, path)
            .json(&body)
            .send()
            .await
            .expect("request")
    }

    async fn get(&self, path: &str) -> Response {
        self.authed(Method::GET, path)
            .send()
            .await
            .expect("request")
    }

    async fn put_file(&self, path: &str, bytes: Vec<u8>) -> Response {
        self.authed(Method::PUT, &format!("/api/files?path={}", enc(path)))
            .body(bytes)
            .send()
            .await
            .expect("request")
    }
}

fn enc(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The status, and the JSON body of an answer.
async fn json_of(r: Response) -> (StatusCode, Value) {
    let status = r.status();
    let ty = r
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let text = r.text().await.expect("body");
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{status}: not JSON ({ty}): {e}: {text}"));
    (status, value)
}

/// Asserts a JSON error with `status` and a message.
async fn expect_error(r: Response, status: StatusCode) -> String {
    let (got, body) = json_of(r).await;
    assert_eq!(got, status, "{body}");
    let msg = body["error"].as_str().expect("an error message").to_owned();
    assert!(!msg.is_empty() && !msg.contains('\n'), "{msg:?}");
    msg
}

fn session_cookie(r: &Response) -> String {
    let set = r
        .headers()
        .get(header::SET_COOKIE)
        .expect("a cookie")
        .to_str()
        .expect("ascii");
    for attr in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attr), "{set}");
    }
    set.split(';').next().expect("pair").to_owned()
}

async fn timed<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(240), f)
        .await
        .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_needs_a_token_or_a_session_and_csrf() {
    timed(async {
        logs();
        let grid = TestGrid::start(5).await;
        let web = serve(&grid, 0, |_| {}).await;

        // No token, a wrong token, a malformed header: 401 with a JSON error.
        expect_error(
            web.req(Method::GET, "/api/status")
                .send()
                .await
                .expect("send"),
            StatusCode::UNAUTHORIZED,
        )
        .await;
        let r = web
            .req(Method::GET, "/api/status")
            .bearer_auth("0".repeat(64))
            .send()
            .await
            .expect("send");
        expect_error(r, StatusCode::UNAUTHORIZED).await;
        let r = web
            .req(Method::GET, "/api/ls?path=/")
            .header(header::AUTHORIZATION, "Basic xyz")
            .send()
            .await
            .expect("send");
        expect_error(r, StatusCode::UNAUTHORIZED).await;
        let r = web
            .req(Method::PUT, "/api/files?path=/x")
            .body("data")
            .send()
            .await
            .expect("send");
        expect_error(r, StatusCode::UNAUTHORIZED).await;

        // The right token.
        let (status, body) = json_of(web.get("/api/status").await).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["node"], json!(grid.node(0).id()));
        assert_eq!(body["peers"].as_array().expect("peers").len(), 4);
        assert_eq!(body["encoding"]["k"], json!(3));
        // The grid's space: the 5 storage nodes of 10 GiB each.
        assert_eq!(body["grid_space"]["nodes"], json!(5), "{body:#}");
        assert_eq!(body["grid_space"]["unknown"], json!(0), "{body:#}");
        assert_eq!(
            body["grid_space"]["offered_bytes"],
            json!(5 * (10u64 << 30)),
            "{body:#}"
        );
        let (_, session) = json_of(web.get("/api/session").await).await;
        assert_eq!(session["kind"], "token");

        // Metrics need the token here.
        let r = web.req(Method::GET, "/metrics").send().await.expect("send");
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let r = web.get("/metrics").await;
        assert_eq!(r.status(), StatusCode::OK);
        let text = r.text().await.expect("text");
        assert!(
            text.contains("cairn_node_peers{state=\"online\"}"),
            "{text}"
        );
        assert!(
            text.contains("cairn_web_responses_total{route=\"/api/status\",status=\"200\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "cairn_web_request_duration_seconds_bucket{route=\"/api/status\",le=\"+Inf\"} 3"
            ),
            "{text}"
        );
        assert!(text.contains("cairn_node_storage_offered_bytes"), "{text}");

        // A login link works once.
        let link = cairn_web::login_url(grid.dir(0)).expect("login link");
        assert!(link.starts_with(&format!("{}/login#", web.url)), "{link}");
        let login_token = link.split_once('#').expect("fragment").1.to_owned();
        let r = web
            .req(Method::POST, "/login")
            .json(&json!({ "token": "f".repeat(64) }))
            .send()
            .await
            .expect("send");
        expect_error(r, StatusCode::UNAUTHORIZED).await;
        let r = web
            .req(Method::POST, "/login")
            .json(&json!({ "token": login_token }))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::OK);
        let cookie = session_cookie(&r);
        let (_, body) = json_of(r).await;
        let csrf = body["csrf"].as_str().expect("csrf").to_owned();
        let r = web
            .req(Method::POST, "/login")
            .json(&json!({ "token": login_token }))
            .send()
            .await
            .expect("send");
        let msg = expect_error(r, StatusCode::UNAUTHORIZED).await;
        assert!(msg.contains("used already"), "{msg}");

        // The session reads without CSRF, but writes need the session's CSRF token.
        let with_cookie = |m: Method, p: &str| web.req(m, p).header(header::COOKIE, &cookie);
        let r = with_cookie(Method::GET, "/api/session")
            .send()
            .await
            .expect("send");
        let (status, body) = json_of(r).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["csrf"], json!(csrf));
        let r = with_cookie(Method::GET, "/api/ls?path=/")
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::OK);
        let r = with_cookie(Method::POST, "/api/mkdir")
            .json(&json!({ "path": "/docs" }))
            .send()
            .await
            .expect("send");
        expect_error(r, StatusCode::FORBIDDEN).await;
        let r = with_cookie(Method::POST, "/api/mkdir")
            .header("X-Cairn-CSRF", "0".repeat(64))
            .json(&json!({ "path": "/docs" }))
            .send()
            .await
            .expect("send");
        expect_error(r, StatusCode::FORBIDDEN).await;
        let r = with_cookie(Method::PUT, "/api/files?path=/docs.txt")
            .body("x")
            .send()
            .await
            .expect("send");
        expect_error(r, StatusCode::FORBIDDEN).await;
        let r = with_cookie(Method::POST, "/api/mkdir")
            .header("X-Cairn-CSRF", &csrf)
            .json(&json!({ "path": "/docs" }))
            .send()
            .await
            .expect("send");
        assert_eq!(json_of(r).await.0, StatusCode::OK);
        // A session may read the metrics too.
        let r = with_cookie(Method::GET, "/metrics")
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::OK);
        // Logging out ends the session.
        let r = with_cookie(Method::POST, "/api/logout")
            .header("X-Cairn-CSRF", &csrf)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::OK);
        let r = with_cookie(Method::GET, "/api/status")
            .send()
            .await
            .expect("send");
        expect_error(r, StatusCode::UNAUTHORIZED).await;

        // Pages and assets are public and carry a strict policy; unknown API routes are JSON 404s.
        for page in ["/", "/login", "/s"] {
            let r = web.req(Method::GET, page).send().await.expect("send");
            assert_eq!(r.status(), StatusCode::OK, "{page}");
            let csp = r
                .headers()
                .get(header::CONTENT_SECURITY_POLICY)
                .expect("csp")
                .to_str()
                .expect("ascii");
            assert!(csp.contains("script-src 'self'"), "{csp}");
            assert!(r.text().await.expect("html").contains("<!doctype html>"));
        }
        for asset in ["app.js", "login.js", "share.js", "style.css"] {
            let r = web
                .req(Method::GET, &format!("/assets/{asset}"))
                .send()
                .await
                .expect("send");
            assert_eq!(r.status(), StatusCode::OK, "{asset}");
        }
        expect_error(
            web.req(Method::GET, "/assets/nope.js")
                .send()
                .await
                .expect("send"),
            StatusCode::NOT_FOUND,
        )
        .await;
        expect_error(web.get("/api/nope").await, StatusCode::NOT_FOUND).await;
        // A body that is not the JSON asked for.
        let r = web
            .authed(Method::POST, "/api/mkdir")
            .header(header::CONTENT_TYPE, "application/json")
            .body("{")
            .send()
            .await
            .expect("send");
        expect_error(r, StatusCode::BAD_REQUEST).await;
        let r = web.post("/api/mkdir", json!({ "nope": 1 })).await;
        expect_error(r, StatusCode::BAD_REQUEST).await;

        // A second server (node 1) with public metrics and one-second download links.
        let other = serve(&grid, 1, |c| {
            c.public_metrics = true;
            c.download_link_secs = 1;
        })
        .await;
        let r = other
            .req(Method::GET, "/metrics")
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::OK);
        let r = other
            .put_file("/short.txt", b"a short-lived download link".repeat(10))
            .await;
        let (status, body) = json_of(r).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let cap = body["put"]["cap"].as_str().expect("cap").to_owned();
        let r = other
            .req(Method::POST, "/s/open")
            .json(&json!({ "cap": cap }))
            .send()
            .await
            .expect("send");
        let (_, ticket) = json_of(r).await;
        let url = ticket["url"].as_str().expect("url").to_owned();
        assert_eq!(
            other
                .req(Method::GET, &url)
                .send()
                .await
                .expect("send")
                .status(),
            StatusCode::OK
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let r = other.req(Method::GET, &url).send().await.expect("send");
        let msg = expect_error(r, StatusCode::NOT_FOUND).await;
        assert!(msg.contains("expired"), "{msg}");

        // Invites and revocations: the admin node only.
        let r = web.post("/api/invite", json!({ "ttl_hours": 2 })).await;
        let (status, body) = json_of(r).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let invite = body["code"].as_str().expect("code").to_owned();
        assert!(invite.starts_with("cairn-invite:1:"), "{invite}");
        expect_error(
            web.post("/api/invite", json!({ "ttl_hours": 0 })).await,
            StatusCode::BAD_REQUEST,
        )
        .await;
        expect_error(
            other.post("/api/invite", json!({})).await,
            StatusCode::FORBIDDEN,
        )
        .await;
        expect_error(
            web.post("/api/revoke", json!({ "node": "nope" })).await,
            StatusCode::BAD_REQUEST,
        )
        .await;
        let own = grid.node(0).id().to_string();
        let msg = expect_error(
            web.post("/api/revoke", json!({ "node": own })).await,
            StatusCode::FORBIDDEN,
        )
        .await;
        assert!(msg.contains("itself"), "{msg}");
        let stranger = "ab".repeat(32);
        expect_error(
            other.post("/api/revoke", json!({ "node": stranger })).await,
            StatusCode::FORBIDDEN,
        )
        .await;
        let r = web.post("/api/revoke", json!({ "node": stranger })).await;
        let (status, body) = json_of(r).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (_, status) = json_of(web.get("/api/status").await).await;
        assert_eq!(status["revoked"], json!([stranger]));

        // Binding a public address needs the explicit setting.
        let public = WebConfig {
            listen: "0.0.0.0:0".parse().expect("addr"),
            ..WebConfig::default()
        };
        let err = WebServer::bind(grid.node(2).clone(), grid.dir(2), public)
            .await
            .expect_err("refused");
        assert!(err.to_string().contains("allow_remote"), "{err}");

        assert_not_logged(&[
            &web.token,
            &login_token,
            &csrf,
            cookie.split_once('=').expect("pair").1,
            &cap,
            url.trim_start_matches("/d/"),
            invite.trim_start_matches("cairn-invite:1:"),
        ]);
        drop(other);
        drop(web);
        grid.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn files_go_up_and_down_and_share_links_work_without_a_session() {
    timed(async {
        logs();
        let grid = TestGrid::start(5).await;
        let web = serve(&grid, 0, |c| c.max_upload_bytes = 4 << 20).await;

        let r = web.post("/api/mkdir", json!({ "path": "/photos" })).await;
        assert_eq!(json_of(r).await.0, StatusCode::OK);
        let r = web.post("/api/mkdir", json!({ "path": "/photos" })).await;
        expect_error(r, StatusCode::CONFLICT).await;
        let r = web
            .post("/api/mkdir", json!({ "path": "/a/b/c", "parents": true }))
            .await;
        assert_eq!(json_of(r).await.0, StatusCode::OK);

        // Upload, list, download byte-identical.
        let data = random_bytes(7, 3 << 20);
        let r = web.put_file("/photos/a.bin", data.clone()).await;
        let (status, body) = json_of(r).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["path"], "/photos/a.bin");
        assert_eq!(body["put"]["size"], json!(data.len()));
        let file_cap = body["put"]["cap"].as_str().expect("cap").to_owned();
        let (_, ls) = json_of(web.get("/api/ls?path=/photos").await).await;
        let entries = ls["entries"].as_array().expect("entries");
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0]["name"], "a.bin");
        assert_eq!(entries[0]["size"], json!(data.len()));
        let r = web.get("/api/files?path=/photos/a.bin").await;
        assert_eq!(r.status(), StatusCode::OK);
        let h = r.headers().clone();
        assert_eq!(h[header::CONTENT_TYPE], "application/octet-stream");
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(h[header::ACCEPT_RANGES], "bytes");
        assert!(
            h[header::CONTENT_DISPOSITION]
                .to_str()
                .expect("ascii")
                .starts_with("attachment; filename=\"a.bin\"")
        );
        assert_eq!(h[header::CONTENT_LENGTH], data.len().to_string().as_str());
        assert!(
            r.bytes().await.expect("body") == data,
            "downloaded bytes differ"
        );

        // Ranges: 206 with exactly those bytes; outside the file 416.
        let range = |spec: &str| {
            web.authed(Method::GET, "/api/files?path=/photos/a.bin")
                .header(header::RANGE, spec.to_owned())
                .send()
        };
        let r = range("bytes=1000000-1999999").await.expect("send");
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(
            r.headers()[header::CONTENT_RANGE],
            format!("bytes 1000000-1999999/{}", data.len()).as_str()
        );
        assert!(r.bytes().await.expect("body") == data[1_000_000..2_000_000]);
        let r = range("bytes=-100").await.expect("send");
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        assert!(r.bytes().await.expect("body") == data[data.len() - 100..]);
        let r = range(&format!("bytes={}-", data.len()))
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(
            r.headers()[header::CONTENT_RANGE],
            format!("bytes */{}", data.len()).as_str()
        );

        // The type comes from the name.
        let r = web
            .put_file("/photos/note.txt", b"hello from the web".to_vec())
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let r = web.get("/api/files?path=/photos/note.txt").await;
        assert_eq!(r.headers()[header::CONTENT_TYPE], "text/plain");
        assert_eq!(r.text().await.expect("text"), "hello from the web");

        // Bad input.
        for bad in ["/photos/../x", "/photos/./x", "/../etc/passwd"] {
            expect_error(
                web.put_file(bad, b"x".to_vec()).await,
                StatusCode::BAD_REQUEST,
            )
            .await;
            expect_error(
                web.post("/api/mkdir", json!({ "path": bad })).await,
                StatusCode::BAD_REQUEST,
            )
            .await;
        }
        expect_error(
            web.put_file("/photos/", b"x".to_vec()).await,
            StatusCode::BAD_REQUEST,
        )
        .await;
        expect_error(
            web.post("/api/mkdir", json!({ "path": "/a\u{0}b" })).await,
            StatusCode::BAD_REQUEST,
        )
        .await;
        expect_error(
            web.get("/api/ls?path=/photos/%2e%2e/x").await,
            StatusCode::BAD_REQUEST,
        )
        .await;
        let msg = expect_error(
            web.get(&format!("/api/ls?path={file_cap}")).await,
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert!(msg.contains("body"), "{msg}");
        expect_error(web.get("/api/ls?path=/nope").await, StatusCode::NOT_FOUND).await;
        expect_error(
            web.get("/api/files?path=/photos/nope.bin").await,
            StatusCode::NOT_FOUND,
        )
        .await;
        expect_error(
            web.post("/api/rm", json!({ "path": "/nope" })).await,
            StatusCode::NOT_FOUND,
        )
        .await;
        expect_error(
            web.put_file("/nope/x.txt", b"x".to_vec()).await,
            StatusCode::NOT_FOUND,
        )
        .await;
        expect_error(
            web.post("/api/ls", json!({ "cap": "cairn:nonsense" }))
                .await,
            StatusCode::BAD_REQUEST,
        )
        .await;
        expect_error(
            web.post("/api/check", json!({ "cap": "not a cap" })).await,
            StatusCode::BAD_REQUEST,
        )
        .await;
        expect_error(
            web.post("/api/download", json!({ "cap": "cairn:chk:1:aaaa" }))
                .await,
            StatusCode::BAD_REQUEST,
        )
        .await;
        expect_error(
            web.req(Method::POST, "/s/open")
                .json(&json!({ "cap": "cairn:dir:1:zz" }))
                .send()
                .await
                .expect("send"),
            StatusCode::BAD_REQUEST,
        )
        .await;
        expect_error(
            web.post("/api/rm", json!({ "path": "/photos" })).await,
            StatusCode::BAD_REQUEST,
        )
        .await;

        // Too large: refused by its declared length, and by counting when it declares none.
        let msg = expect_error(
            web.put_file("/photos/big.bin", vec![7u8; 5 << 20]).await,
            StatusCode::PAYLOAD_TOO_LARGE,
        )
        .await;
        assert!(msg.contains("max_upload_bytes"), "{msg}");
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            (0..5).map(|_| Ok(vec![1u8; 1 << 20])).collect();
        let r = web
            .authed(Method::PUT, "/api/files?path=/photos/big2.bin")
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks,
            )))
            .send()
            .await
            .expect("send");
        expect_error(r, StatusCode::PAYLOAD_TOO_LARGE).await;
        let (_, ls) = json_of(web.get("/api/ls?path=/photos").await).await;
        assert_eq!(
            ls["entries"].as_array().expect("entries").len(),
            2,
            "nothing of the refused uploads was linked"
        );

        // Rename, symlink, remove.
        let r = web
            .post(
                "/api/mv",
                json!({ "from": "/photos/note.txt", "to": "/photos/renamed.txt" }),
            )
            .await;
        assert_eq!(json_of(r).await.0, StatusCode::OK);
        let r = web
            .post(
                "/api/symlink",
                json!({ "path": "/latest", "target": "photos/a.bin" }),
            )
            .await;
        assert_eq!(json_of(r).await.0, StatusCode::OK);
        let (_, ls) = json_of(web.get("/api/ls?path=/").await).await;
        let names: Vec<&str> = ls["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .filter_map(|e| e["name"].as_str())
            .collect();
        assert_eq!(names, ["a", "latest", "photos"]);
        let r = web
            .post("/api/rm", json!({ "path": "/a", "recursive": true }))
            .await;
        assert_eq!(json_of(r).await.0, StatusCode::OK);

        // Health, by path and by cap.
        let (status, check) = json_of(
            web.post("/api/check", json!({ "path": "/photos/a.bin" }))
                .await,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{check}");
        assert_eq!(check["readable"], json!(true));
        let chunks = check["chunks"].as_array().expect("chunks");
        assert!(chunks.len() >= 2, "a manifest and chunks");
        for c in chunks {
            assert_eq!(c["need"], json!(3));
            assert_eq!(c["total"], json!(5));
            assert!(c["found"].as_u64().expect("found") >= 3);
        }
        let (status, _) = json_of(web.post("/api/check", json!({ "cap": file_cap })).await).await;
        assert_eq!(status, StatusCode::OK);

        // A file share link: the cap travels in the fragment, the public page trades it for a
        // short-lived download URL that needs no session and serves ranges.
        let (_, share) = json_of(
            web.post("/api/share", json!({ "path": "/photos/a.bin" }))
                .await,
        )
        .await;
        assert_eq!(share["cap"], json!(file_cap));
        let link = share["link"].as_str().expect("link");
        assert_eq!(link, format!("{}/s#{file_cap}&n=a.bin", web.url));
        let r = web
            .req(Method::POST, "/s/open")
            .json(&json!({ "cap": file_cap, "name": "a.bin" }))
            .send()
            .await
            .expect("send");
        let (status, opened) = json_of(r).await;
        assert_eq!(status, StatusCode::OK, "{opened}");
        assert_eq!(opened["kind"], "file");
        assert_eq!(opened["name"], "a.bin");
        let url = opened["url"].as_str().expect("url").to_owned();
        assert!(url.starts_with("/d/") && !url.contains("cairn:"), "{url}");
        let r = web.req(Method::GET, &url).send().await.expect("send");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert!(r.bytes().await.expect("body") == data);
        let r = web
            .req(Method::GET, &url)
            .header(header::RANGE, "bytes=10-19")
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        assert!(r.bytes().await.expect("body") == data[10..20]);
        expect_error(
            web.req(Method::GET, "/d/00000000000000000000000000000000")
                .send()
                .await
                .expect("send"),
            StatusCode::NOT_FOUND,
        )
        .await;

        // A directory share link lists, and opens its files; writes through a readcap fail.
        let (_, share) = json_of(web.post("/api/share", json!({ "path": "/photos" })).await).await;
        let dir_cap = share["cap"].as_str().expect("cap").to_owned();
        assert!(dir_cap.starts_with("cairn:dir-ro:"), "{dir_cap}");
        let r = web
            .req(Method::POST, "/s/open")
            .json(&json!({ "cap": dir_cap }))
            .send()
            .await
            .expect("send");
        let (_, listing) = json_of(r).await;
        assert_eq!(listing["kind"], "dir");
        let names: Vec<&str> = listing["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .filter_map(|e| e["name"].as_str())
            .collect();
        assert_eq!(names, ["a.bin", "renamed.txt"]);
        let r = web
            .req(Method::POST, "/s/open")
            .json(&json!({ "cap": dir_cap, "path": "/renamed.txt" }))
            .send()
            .await
            .expect("send");
        let (_, opened) = json_of(r).await;
        assert_eq!(opened["name"], "renamed.txt");
        let r = web
            .req(Method::GET, opened["url"].as_str().expect("url"))
            .send()
            .await
            .expect("send");
        assert_eq!(r.text().await.expect("text"), "hello from the web");
        let r = web
            .req(Method::POST, "/s/open")
            .json(&json!({ "cap": dir_cap, "path": "/../x" }))
            .send()
            .await
            .expect("send");
        expect_error(r, StatusCode::BAD_REQUEST).await;
        let r = web
            .req(Method::POST, "/s/open")
            .json(&json!({ "cap": dir_cap, "path": "/missing" }))
            .send()
            .await
            .expect("send");
        expect_error(r, StatusCode::NOT_FOUND).await;
        let r = web
            .authed(Method::PUT, "/api/files?path=/x.txt")
            .header("X-Cairn-Cap", &dir_cap)
            .body("x")
            .send()
            .await
            .expect("send");
        expect_error(r, StatusCode::FORBIDDEN).await;

        // Browse and write below a writecap (the cap in the body or header only).
        let (_, share) = json_of(
            web.post("/api/share", json!({ "path": "/photos", "write": true }))
                .await,
        )
        .await;
        let write_cap = share["cap"].as_str().expect("cap").to_owned();
        let r = web
            .authed(Method::PUT, "/api/files?path=/b.txt")
            .header("X-Cairn-Cap", &write_cap)
            .body("below a cap")
            .send()
            .await
            .expect("send");
        let (status, body) = json_of(r).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["path"], "/b.txt");
        let (_, ls) = json_of(
            web.post("/api/ls", json!({ "cap": write_cap, "path": "/" }))
                .await,
        )
        .await;
        assert_eq!(ls["writable"], json!(true));
        assert_eq!(ls["entries"].as_array().expect("entries").len(), 3);
        let r = web
            .authed(Method::GET, "/api/files?path=/b.txt")
            .header("X-Cairn-Cap", &write_cap)
            .send()
            .await
            .expect("send");
        assert_eq!(r.text().await.expect("text"), "below a cap");
        let (status, ticket) = json_of(
            web.post(
                "/api/download",
                json!({ "cap": write_cap, "path": "/b.txt" }),
            )
            .await,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{ticket}");
        let r = web
            .req(Method::GET, ticket["url"].as_str().expect("url"))
            .send()
            .await
            .expect("send");
        assert_eq!(r.text().await.expect("text"), "below a cap");
        expect_error(
            web.post("/api/download", json!({ "cap": write_cap })).await,
            StatusCode::BAD_REQUEST,
        )
        .await;

        // Attach a friend's cap into the tree.
        let r = web
            .post(
                "/api/attach",
                json!({ "cap": file_cap, "path": "/linked.bin" }),
            )
            .await;
        assert_eq!(json_of(r).await.0, StatusCode::OK);
        let r = web.get("/api/files?path=/linked.bin").await;
        assert!(r.bytes().await.expect("body") == data);

        // A QR code of a link, as SVG.
        let r = web.post("/api/qr", json!({ "text": link })).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "image/svg+xml");
        assert!(r.text().await.expect("svg").contains("<svg"));
        expect_error(
            web.post("/api/qr", json!({ "text": "" })).await,
            StatusCode::BAD_REQUEST,
        )
        .await;

        // The metrics count the bytes.
        let text = web.get("/metrics").await.text().await.expect("text");
        let uploaded: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("cairn_web_upload_bytes_total "))
            .expect("counter")
            .parse()
            .expect("number");
        assert!(uploaded >= data.len() as u64, "{uploaded}");
        let node_counter = |name: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .unwrap_or_else(|| panic!("{name} missing: {text}"))
                .parse()
                .expect("number")
        };
        assert!(node_counter("cairn_node_put_bytes_total") >= data.len() as u64);
        assert!(node_counter("cairn_node_files_put_total") >= 1);
        assert!(node_counter("cairn_node_got_bytes_total") >= data.len() as u64);
        assert!(node_counter("cairn_node_files_got_total") >= 1);
        assert!(text.contains("cairn_node_shares_served_total "), "{text}");
        assert!(
            text.contains("cairn_web_responses_total{route=\"/api/files\",status=\"413\"} 2"),
            "{text}"
        );

        assert_not_logged(&[
            &web.token,
            &file_cap,
            &dir_cap,
            &write_cap,
            url.trim_start_matches("/d/"),
        ]);
        drop(web);
        grid.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_whose_shares_are_out_of_reach_answers_503() {
    timed(async {
        logs();
        let mut grid = TestGrid::start(5).await;
        let web = serve(&grid, 0, |_| {}).await;
        let data = random_bytes(9, 1 << 20);
        let r = web.put_file("/far.bin", data.clone()).await;
        assert_eq!(r.status(), StatusCode::CREATED);
        for i in 1..5 {
            grid.stop(i).await;
        }
        // Node 0 alone holds at most one share of each chunk; three are needed.
        let r = web.get("/api/files?path=/far.bin").await;
        let msg = expect_error(r, StatusCode::SERVICE_UNAVAILABLE).await;
        assert!(msg.contains("not enough shares"), "{msg}");
        drop(web);
        grid.shutdown().await;
    })
    .await;
}

/// The OpenAPI file documents every route the server has.
#[test]
fn the_openapi_file_lists_every_route() {
    let spec = include_str!("../../../docs/api/openapi.yaml");
    for route in [
        "/api/status",
        "/api/session",
        "/api/logout",
        "/api/ls",
        "/api/mkdir",
        "/api/rm",
        "/api/mv",
        "/api/symlink",
        "/api/share",
        "/api/attach",
        "/api/check",
        "/api/qr",
        "/api/invite",
        "/api/revoke",
        "/api/download",
        "/api/files",
        "/login",
        "/s",
        "/s/open",
        "/d/{id}",
        "/metrics",
        "/",
    ] {
        assert!(
            spec.contains(&format!("\n  {route}:\n")),
            "{route} is not documented"
        );
    }
}

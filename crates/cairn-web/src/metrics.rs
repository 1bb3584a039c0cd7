//! Prometheus metrics at `/metrics`, in the text exposition format: the web server's own
//! counters (requests by route and status, latency histograms, bytes up- and downloaded) and
//! the node's (peers online, storage, files and bytes put and read, shares served, bytes
//! exchanged with peers) from [`Node::status`].
//!
//! Routes are labelled by their pattern (`/d/{id}`), never by the URL, so no token or path
//! reaches a label; the label set stays small.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cairn_node::Node;

use crate::state::AppState;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.counts[i] += 1;
            }
        }
        self.sum += secs;
        self.count += 1;
    }
}

/// The web server's counters.
#[derive(Default)]
pub(crate) struct Metrics {
    responses: Mutex<BTreeMap<(String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    /// File bytes received by uploads.
    pub(crate) upload_bytes: AtomicU64,
    /// File bytes sent by downloads.
    pub(crate) download_bytes: AtomicU64,
}

impl Metrics {
    fn record(&self, route: &str, status: StatusCode, took: Duration) {
        let mut responses = self.responses.lock().unwrap_or_else(|p| p.into_inner());
        *responses
            .entry((route.to_owned(), status.as_u16()))
            .or_default() += 1;
        drop(responses);
        let mut latency = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        latency
            .entry(route.to_owned())
            .or_default()
            .observe(took.as_secs_f64());
    }

    /// The exposition text.
    async fn render(&self, node: &Node) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP cairn_web_responses_total HTTP responses by route pattern and status."
        );
        let _ = writeln!(out, "# TYPE cairn_web_responses_total counter");
        let responses = self
            .responses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for ((route, status), n) in &responses {
            let _ = writeln!(
                out,
                "cairn_web_responses_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP cairn_web_request_duration_seconds Time to the response head, by route pattern."
        );
        let _ = writeln!(out, "# TYPE cairn_web_request_duration_seconds histogram");
        let latency = self
            .latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (route, h) in &latency {
            for (bound, n) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(
                    out,
                    "cairn_web_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "cairn_web_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "cairn_web_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "cairn_web_request_duration_seconds_count{{route=\"{route}\"}} {}",
                h.count
            );
        }
        counter(
            &mut out,
            "cairn_web_upload_bytes_total",
            "File bytes received by web uploads (put into the grid).",
            self.upload_bytes.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "cairn_web_download_bytes_total",
            "File bytes sent by web downloads (got from the grid).",
            self.download_bytes.load(Ordering::Relaxed),
        );
        match node.status().await {
            Ok(status) => {
                let online = status.peers.iter().filter(|p| p.online).count();
                let _ = writeln!(
                    out,
                    "# HELP cairn_node_peers Other members of the grid, by whether they answered recently."
                );
                let _ = writeln!(out, "# TYPE cairn_node_peers gauge");
                let _ = writeln!(out, "cairn_node_peers{{state=\"online\"}} {online}");
                let _ = writeln!(
                    out,
                    "cairn_node_peers{{state=\"offline\"}} {}",
                    status.peers.len() - online
                );
                gauge(
                    &mut out,
                    "cairn_node_storage_used_bytes",
                    "Bytes of shares this node stores.",
                    status.storage.used_bytes,
                );
                gauge(
                    &mut out,
                    "cairn_node_storage_offered_bytes",
                    "Bytes this node offers to the grid.",
                    status.storage.offered_bytes,
                );
                gauge(
                    &mut out,
                    "cairn_node_shares_stored",
                    "Shares this node stores.",
                    status.storage.shares,
                );
                let activity = status.activity;
                for (name, help, value) in [
                    (
                        "cairn_node_files_put_total",
                        "Files stored through this node since it started.",
                        activity.files_put,
                    ),
                    (
                        "cairn_node_put_bytes_total",
                        "Bytes of files stored through this node since it started.",
                        activity.bytes_put,
                    ),
                    (
                        "cairn_node_files_got_total",
                        "Files read through this node since it started.",
                        activity.files_got,
                    ),
                    (
                        "cairn_node_got_bytes_total",
                        "Bytes of files read through this node since it started.",
                        activity.bytes_got,
                    ),
                    (
                        "cairn_node_shares_served_total",
                        "Shares this node sent to other members since it started.",
                        activity.shares_served,
                    ),
                ] {
                    counter(&mut out, name, help, value);
                }
                counter(
                    &mut out,
                    "cairn_node_peer_sent_bytes_total",
                    "Bytes sent to other members since the node started.",
                    status.peers.iter().map(|p| p.sent).sum(),
                );
                counter(
                    &mut out,
                    "cairn_node_peer_received_bytes_total",
                    "Bytes received from other members since the node started.",
                    status.peers.iter().map(|p| p.received).sum(),
                );
            }
            Err(e) => {
                let _ = writeln!(out, "# node status unavailable: {e}");
            }
        }
        out
    }
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} counter");
    let _ = writeln!(out, "{name} {value}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
    let _ = writeln!(out, "{name} {value}");
}

/// Middleware: counts every response by route pattern and status, and times it.
pub(crate) async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_owned();
    let method = request.method().clone();
    let started = Instant::now();
    let response = next.run(request).await;
    let took = started.elapsed();
    state.metrics.record(&route, response.status(), took);
    tracing::debug!(%method, route, status = response.status().as_u16(), ms = took.as_millis() as u64, "web request");
    response
}

/// `GET /metrics`: needs the API token (or a session) unless `[web] public_metrics`.
pub(crate) async fn render(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !state.config.public_metrics
        && let Err(e) = state.auth.caller(&headers)
    {
        return e.into_response();
    }
    let text = state.metrics.render(&state.node).await;
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

//! A per-replica HTTP proxy in front of the Kubernetes API stand-in or the Konnect simulator. Each
//! operator replica talks through its own proxies, so the test knows which replica sent each
//! request (one log shared by every proxy of a [`Net`], in arrival order), and can cut one replica
//! off: `Cut` (nothing answers it any more, open watches go silent) or `HangLeases` (its Lease
//! calls never answer, everything else passes). A request held back is never forwarded.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// Nothing is forwarded; requests hang; open response streams stall.
    Cut,
    /// Requests for Leases hang (a renewal that never answers); the rest passes.
    HangLeases,
}

/// One request a proxy forwarded.
#[derive(Debug, Clone)]
pub struct Seen {
    pub seq: u64,
    pub at: Instant,
    pub replica: String,
    /// "kube" or "konnect".
    pub upstream: &'static str,
    pub method: String,
    pub path: String,
}

impl Seen {
    /// A write to Kubernetes or Konnect, other than leader election's own Lease calls.
    pub fn is_write(&self) -> bool {
        self.method != "GET" && !self.path.contains("/leases")
    }
}

/// The proxies of one test, sharing a log.
#[derive(Clone, Default)]
pub struct Net {
    log: Arc<Mutex<Vec<Seen>>>,
    seq: Arc<AtomicU64>,
}

impl Net {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a proxy for `replica` in front of `upstream` (e.g. `http://127.0.0.1:1234`).
    pub async fn proxy(&self, replica: &str, upstream_kind: &'static str, upstream: &str) -> Proxy {
        let (mode, _) = tokio::sync::watch::channel(Mode::Pass);
        let state = Arc::new(ProxyState {
            replica: replica.to_string(),
            upstream_kind,
            upstream: upstream.trim_end_matches('/').to_string(),
            mode,
            net: self.clone(),
            http: reqwest::Client::builder()
                .pool_idle_timeout(Duration::from_secs(5))
                .build()
                .expect("proxy client"),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(state.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Proxy {
            url: format!("http://{addr}"),
            state,
            server,
        }
    }

    /// Every forwarded request so far, in arrival order.
    pub fn log(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }

    /// The writes of `replica` so far.
    pub fn writes_of(&self, replica: &str) -> Vec<Seen> {
        self.log()
            .into_iter()
            .filter(|s| s.replica == replica && s.is_write())
            .collect()
    }
}

struct ProxyState {
    replica: String,
    upstream_kind: &'static str,
    upstream: String,
    mode: tokio::sync::watch::Sender<Mode>,
    net: Net,
    http: reqwest::Client,
}

impl ProxyState {
    fn blocks(&self, mode: Mode, path: &str) -> bool {
        match mode {
            Mode::Pass => false,
            Mode::Cut => true,
            Mode::HangLeases => path.contains("/leases"),
        }
    }
}

pub struct Proxy {
    pub url: String,
    state: Arc<ProxyState>,
    server: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub fn set_mode(&self, mode: Mode) {
        self.state.mode.send_replace(mode);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.mode.send_replace(Mode::Pass);
        self.server.abort();
    }
}

async fn forward(State(st): State<Arc<ProxyState>>, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let path_and_query = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| path.clone());
    let mut mode = st.mode.subscribe();
    if st.blocks(*mode.borrow(), &path) {
        // Held until the switch is turned back, then dropped: never forwarded.
        let _ = mode.wait_for(|m| !st.blocks(*m, &path)).await;
        return (StatusCode::SERVICE_UNAVAILABLE, "cut off by the test").into_response();
    }
    let headers = request.headers().clone();
    let body = match axum::body::to_bytes(request.into_body(), usize::MAX).await {
        Ok(b) => b,
        Err(_) => return StatusCode::BAD_REQUEST.into_response(),
    };
    {
        let mut log = st.net.log.lock().unwrap();
        log.push(Seen {
            seq: st.net.seq.fetch_add(1, Ordering::SeqCst),
            at: Instant::now(),
            replica: st.replica.clone(),
            upstream: st.upstream_kind,
            method: method.to_string(),
            path: path.clone(),
        });
    }
    let mut out = st
        .http
        .request(method, format!("{}{}", st.upstream, path_and_query))
        .body(body);
    for (name, value) in headers.iter() {
        if !matches!(
            name.as_str(),
            "host" | "connection" | "content-length" | "transfer-encoding"
        ) {
            out = out.header(name, value);
        }
    }
    let upstream = match out.send().await {
        Ok(r) => r,
        Err(_) => return StatusCode::BAD_GATEWAY.into_response(),
    };
    let status = upstream.status();
    let content_type = upstream.headers().get("content-type").cloned();
    // Streamed chunk by chunk (watches); a cut stalls the stream, then ends it.
    let stream = futures::stream::unfold((upstream, st.clone()), |(mut r, st)| async move {
        let chunk = r.chunk().await.ok().flatten()?;
        let mut mode = st.mode.subscribe();
        if *mode.borrow() == Mode::Cut {
            let _ = mode.wait_for(|m| *m != Mode::Cut).await;
            return None;
        }
        Some((Ok::<_, std::io::Error>(chunk), (r, st)))
    });
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    if let Some(ct) = content_type {
        response.headers_mut().insert("content-type", ct);
    }
    response
}

/// A kubeconfig for the real binary that points at `url` (a proxy in front of the stand-in).
pub fn write_kubeconfig(path: &std::path::Path, url: &str) {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: {url}\n\
         contexts:\n- name: standin\n  context:\n    cluster: standin\n    user: standin\n    namespace: default\n\
         current-context: standin\nusers:\n- name: standin\n  user: {{}}\n"
    );
    std::fs::write(path, text).unwrap();
}

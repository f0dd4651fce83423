//! The HTTP API: a thin router over the process table and the shared renderers.
// Handlers bail out with a ready `Response`, as axum handlers do; boxing it buys nothing here.
#![allow(clippy::result_large_err)]

mod control;

use std::{collections::HashMap, convert::Infallible, sync::Arc, time::Duration};

pub use control::CtlHttp;

use axum::{
    Router,
    extract::{Path, Query, State as AxState},
    http::{StatusCode, header},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::{get, post},
};
use futures_util::StreamExt as _;
use tokio_stream::wrappers::{BroadcastStream, errors::BroadcastStreamRecvError};

use crate::{
    state::{Snapshot, State},
    table::Process,
    view::{self, Host, ViewError},
};

#[derive(Clone)]
pub struct App {
    pub state: State,
    pub host: Host,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub listing: Arc<Listing>,
    /// The control commands (`control.rs`).
    pub ctl: control::CtlHttp,
}

pub fn router(app: App) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/v1/processes", get(list))
        .route("/v1/processes/{pid}", get(one))
        .route("/v1/processes/{pid}/{file}", get(file))
        .route("/v1/processes/{pid}/task/{tid}/stat", get(task_stat))
        .route("/v1/processes/{pid}/ctl", post(control::ctl))
        .route("/v1/processes/{pid}/wait", post(control::wait))
        .route("/v1/exited", get(exited))
        .route("/v1/events", get(events))
        .route("/v1/stats", get(stats))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(axum::middleware::map_response(json_errors))
        .with_state(app)
}

/// Rejections made before a handler runs (a path parameter that is not UTF-8, a body over the
/// limit, a method the route does not take) come as plain text or nothing: every 4xx of the API
/// is `{"error": …}` like the handlers' own, with the rejection's text as the message.
async fn json_errors(r: Response) -> Response {
    let status = r.status();
    let json = r
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !status.is_client_error() || json {
        return r;
    }
    let (parts, body) = r.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let msg = match String::from_utf8_lossy(&text).trim() {
        "" => status
            .canonical_reason()
            .unwrap_or("bad request")
            .to_string(),
        t => t.to_string(),
    };
    let mut out = error(status, msg);
    // Keep what the rejection said in headers (Allow, WWW-Authenticate).
    for (k, v) in &parts.headers {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    app: App,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    // The peer address lets the control routes answer loopback callers only.
    axum::serve(
        listener,
        router(app).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = shutdown.wait_for(|&s| s).await;
    })
    .await
}

fn error(code: StatusCode, msg: impl std::fmt::Display) -> Response {
    error_with(code, msg, None)
}

/// Every error body of the API: `{"error": …}`, and `"errno"` where a FUSE caller of the same
/// operation would get one.
fn error_with(code: StatusCode, msg: impl std::fmt::Display, errno: Option<i32>) -> Response {
    let mut body = serde_json::json!({ "error": msg.to_string() });
    if let Some(e) = errno {
        body["errno"] = e.into();
    }
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn unavailable() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the process table is shutting down",
    )
}

fn json_bytes(body: impl Into<bytes::Bytes>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body.into()).into_response()
}

/// `?comm=`, `?uid=`, `?ppid=`, `?pid=`, `?cgroup=`, `?pod_uid=`, `?container_id=`; anything
/// else, or a value that does not parse, is a 400.
#[derive(Default)]
struct Filter {
    comm: Option<String>,
    uid: Option<u32>,
    ppid: Option<u32>,
    pid: Option<u32>,
    /// The ids of the cgroup subtree named, read once when the request comes in.
    cgroup: Option<std::collections::HashSet<u64>>,
    pod_uid: Option<String>,
    /// The full id, or a prefix of at least 12 digits (as `docker ps` shows ids).
    container_id: Option<String>,
}

impl Filter {
    fn parse(q: &HashMap<String, String>) -> Result<Self, Response> {
        let mut f = Filter::default();
        let num = |k: &str, v: &str| -> Result<u32, Response> {
            v.parse().map_err(|_| {
                error(
                    StatusCode::BAD_REQUEST,
                    format!("{k}={v:?} is not a non-negative integer"),
                )
            })
        };
        for (k, v) in q {
            match k.as_str() {
                "comm" => f.comm = Some(v.clone()),
                "uid" => f.uid = Some(num(k, v)?),
                "ppid" => f.ppid = Some(num(k, v)?),
                "pid" => f.pid = Some(num(k, v)?),
                "cgroup" => {
                    f.cgroup = Some(
                        crate::sys::cgroup::dir(std::path::Path::new(v))
                            .map(|d| crate::sys::cgroup::subtree_ids(&d))
                            .map_err(|e| {
                                error(StatusCode::BAD_REQUEST, format!("cgroup={v:?}: {e}"))
                            })?,
                    )
                }
                "pod_uid" => f.pod_uid = Some(v.clone()),
                "container_id" if v.len() >= 12 => f.container_id = Some(v.clone()),
                "container_id" => {
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        format!("container_id={v:?}: give the id or at least its first 12 digits"),
                    ));
                }
                _ => {
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "unknown filter {k:?} (known: comm, uid, ppid, pid, cgroup, pod_uid, container_id)"
                        ),
                    ));
                }
            }
        }
        Ok(f)
    }

    fn is_empty(&self) -> bool {
        self.comm.is_none()
            && self.uid.is_none()
            && self.ppid.is_none()
            && self.pid.is_none()
            && self.cgroup.is_none()
            && self.pod_uid.is_none()
            && self.container_id.is_none()
    }

    fn matches(&self, p: &Process) -> bool {
        self.comm.as_ref().is_none_or(|c| c.as_bytes() == p.name())
            && self.uid.is_none_or(|u| u == p.uid)
            && self.ppid.is_none_or(|u| u == p.ppid)
            && self.pid.is_none_or(|u| u == p.pid)
            && self
                .cgroup
                .as_ref()
                .is_none_or(|ids| ids.contains(&p.cgroup_id()))
            && self.container_matches(p)
    }

    fn container_matches(&self, p: &Process) -> bool {
        if self.pod_uid.is_none() && self.container_id.is_none() {
            return true;
        }
        let Some(c) = crate::sys::cgroup::path_of(p.cgroup_id())
            .and_then(|path| crate::sys::cgroup::container(&path))
        else {
            return false;
        };
        self.pod_uid
            .as_ref()
            .is_none_or(|u| c.pod_uid.as_ref() == Some(u))
            && self.container_id.as_ref().is_none_or(|want| {
                c.container_id
                    .as_ref()
                    .is_some_and(|id| id.starts_with(want.as_str()))
            })
    }
}

/// The unfiltered listing, kept as one JSON block per chunk of the table (`table::Live`): a
/// chunk that is the same `Arc` as at the last listing holds the same processes, so its block
/// is sent again untouched; a chunk that changed has its block rebuilt from the fragments of
/// the processes that did not (keyed by pid and the entry's revision) and the few that did.
/// At 100,000 processes a listing after a refresh renders a few processes and copies nothing
/// else: its ~46 MB go out as the blocks they are.
pub struct Listing {
    host: Host,
    /// The last listing's blocks, in pid order.
    blocks: std::sync::Mutex<Vec<Block>>,
    /// When the listing was last asked for (boot-clock ns); pre-rendering only pays while
    /// someone is polling it.
    last_used: std::sync::atomic::AtomicU64,
    /// One pre-render at a time: a slow one must not queue up behind fast refreshes.
    rendering: std::sync::atomic::AtomicBool,
}

/// The JSON of one chunk's processes, comma-separated.
struct Block {
    /// The chunk it is of, kept so that no other chunk can take its address.
    chunk: Arc<crate::table::Chunk>,
    json: bytes::Bytes,
    /// Each process's (pid, revision, end of its object in `json`).
    index: Vec<(u32, u64, usize)>,
}

impl Block {
    /// The JSON of `pid` at revision `rev`, if this block has it.
    fn fragment(&self, pid: u32, rev: u64) -> Option<&[u8]> {
        let i = self.index.binary_search_by_key(&pid, |e| e.0).ok()?;
        let start = if i == 0 { 0 } else { self.index[i - 1].2 + 1 };
        let (_, r, end) = self.index[i];
        (r == rev).then(|| &self.json[start..end])
    }
}

impl Listing {
    pub fn new(host: Host) -> Self {
        Self {
            host,
            blocks: std::sync::Mutex::new(Vec::new()),
            last_used: std::sync::atomic::AtomicU64::new(0),
            rendering: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn body(&self, snap: &Snapshot) -> Vec<bytes::Bytes> {
        self.last_used.store(
            crate::sys::clock::boot_ns(),
            std::sync::atomic::Ordering::Relaxed,
        );
        snap.listing_json
            .get_or_init(|| self.render(&snap.processes))
            .clone()
    }

    /// The listing's parts: `[`, the blocks separated by commas, `]`.
    fn render(&self, live: &crate::table::Live) -> Vec<bytes::Bytes> {
        let Ok(mut cache) = self.blocks.lock() else {
            return vec![render_list(live.iter(), &self.host).into()];
        };
        let old = std::mem::take(&mut *cache);
        let same: HashMap<*const crate::table::Chunk, usize> = old
            .iter()
            .enumerate()
            .map(|(i, b)| (Arc::as_ptr(&b.chunk), i))
            .collect();
        // The old block that held `pid`, if any: blocks are in pid order.
        let holder = |pid: u32| {
            let i = old
                .partition_point(|b| b.index.first().is_some_and(|e| e.0 <= pid))
                .checked_sub(1)?;
            old.get(i)
        };
        let mut next = Vec::with_capacity(live.chunks().len());
        for chunk in live.chunks() {
            if let Some(&i) = same.get(&Arc::as_ptr(chunk)) {
                let b = &old[i];
                next.push(Block {
                    chunk: chunk.clone(),
                    json: b.json.clone(),
                    index: b.index.clone(),
                });
                continue;
            }
            let mut json = Vec::new();
            let mut index = Vec::with_capacity(chunk.processes().len());
            for p in chunk.processes() {
                if !json.is_empty() {
                    json.push(b',');
                }
                match holder(p.pid).and_then(|b| b.fragment(p.pid, p.rev)) {
                    Some(f) => json.extend_from_slice(f),
                    None => {
                        // Into the Vec: a JSON writer cannot fail.
                        let _ =
                            serde_json::to_writer(&mut json, &view::json::process(p, &self.host));
                    }
                }
                index.push((p.pid, p.rev, json.len()));
            }
            next.push(Block {
                chunk: chunk.clone(),
                json: json.into(),
                index,
            });
        }
        let mut parts = Vec::with_capacity(2 * next.len() + 1);
        parts.push(bytes::Bytes::from_static(b"["));
        for (i, b) in next.iter().enumerate() {
            if i > 0 {
                parts.push(bytes::Bytes::from_static(b","));
            }
            parts.push(b.json.clone());
        }
        parts.push(bytes::Bytes::from_static(b"]"));
        *cache = next;
        parts
    }

    /// Renders the listing of a fresh snapshot ahead of the request that will want it.
    pub fn prewarm(self: Arc<Self>) -> crate::state::Prewarm {
        use std::sync::atomic::Ordering;
        Arc::new(move |snap: &Snapshot| {
            let idle = crate::sys::clock::boot_ns()
                .saturating_sub(self.last_used.load(Ordering::Relaxed))
                > 2_000_000_000;
            if idle || self.rendering.swap(true, Ordering::AcqRel) {
                return;
            }
            snap.listing_json
                .get_or_init(|| self.render(&snap.processes));
            self.rendering.store(false, Ordering::Release);
        })
    }
}

/// A JSON body sent as the parts it is kept in, with its length.
fn json_parts(parts: Vec<bytes::Bytes>) -> Response {
    let len: usize = parts.iter().map(bytes::Bytes::len).sum();
    let body = axum::body::Body::from_stream(futures_util::stream::iter(
        parts.into_iter().map(Ok::<_, Infallible>),
    ));
    (
        [
            (header::CONTENT_TYPE, "application/json".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        body,
    )
        .into_response()
}

fn render_list<'a>(items: impl Iterator<Item = &'a Arc<Process>>, host: &Host) -> Vec<u8> {
    let list: Vec<_> = items.map(|p| view::json::process(p, host)).collect();
    serde_json::to_vec(&list).unwrap_or_else(|_| b"[]".to_vec())
}

async fn list(AxState(app): AxState<App>, Query(q): Query<HashMap<String, String>>) -> Response {
    let filter = match Filter::parse(&q) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let Ok(snap) = app.state.snapshot_fast().await else {
        return unavailable();
    };
    if filter.is_empty() {
        return json_parts(app.listing.body(&snap));
    }
    json_bytes(render_list(
        snap.processes.iter().filter(|p| filter.matches(p)),
        &app.host,
    ))
}

async fn exited(AxState(app): AxState<App>, Query(q): Query<HashMap<String, String>>) -> Response {
    let filter = match Filter::parse(&q) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let Ok(snap) = app.state.snapshot_within(Duration::MAX).await else {
        return unavailable();
    };
    json_bytes(render_list(
        snap.exited.iter().filter(|p| filter.matches(p)),
        &app.host,
    ))
}

fn parse_pid(raw: &str) -> Result<u32, Response> {
    raw.parse::<u32>()
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| error(StatusCode::BAD_REQUEST, format!("{raw:?} is not a pid")))
}

/// The snapshot and the process for `pid`, its numbers at most the staleness bound old.
async fn lookup(app: &App, raw: &str) -> Result<(Arc<Snapshot>, Arc<Process>), Response> {
    let pid = parse_pid(raw)?;
    let (snap, p) = app
        .state
        .process(pid, app.state.max_age, false)
        .await
        .map_err(|_| unavailable())?;
    let p = p.ok_or_else(|| error(StatusCode::NOT_FOUND, format!("no process {pid}")))?;
    Ok((snap, p))
}

async fn one(AxState(app): AxState<App>, Path(pid): Path<String>) -> Response {
    match lookup(&app, &pid).await {
        Ok((_, p)) => {
            json_bytes(serde_json::to_vec(&view::json::process(&p, &app.host)).unwrap_or_default())
        }
        Err(r) => r,
    }
}

/// One of the Linux view's per-process files, by its row of the view's table: the same show
/// function, the same rule for who may read it.
async fn file(
    AxState(app): AxState<App>,
    Path((pid, name)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
) -> Response {
    let Some(show) = crate::fs::tree::PROC_FILES
        .iter()
        .find_map(|e| match e.kind {
            crate::fs::tree::Kind::File(show) if e.name == name => Some(show),
            _ => None,
        })
    else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no file {name:?} (known: {})", http_files().join(", ")),
        );
    };
    // procfs lets only a caller who could ptrace the process read these (an address-space
    // layout defeats ASLR, an environment holds secrets), and every local user can reach this
    // port: they need the token.
    if show.ptrace_read
        && let Err(r) = control::authorize(&app.ctl, &headers)
    {
        return r;
    }
    let (_, p) = match lookup(&app, &pid).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let host = app.host;
    // Some files read the kernel's: keep them off the async workers.
    let rendered = {
        let p = p.clone();
        tokio::task::spawn_blocking(move || {
            show.read(&crate::fs::show::Ctx { host: &host }, &p, None)
        })
        .await
        .unwrap_or(Err(ViewError::NoProcess))
    };
    match rendered {
        Ok(bytes) => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], bytes).into_response(),
        // ESRCH: the kernel's own answer for a file of a live process that has none, as a
        // kernel thread's `environ`.
        Err(e) if matches!(e.errno(), libc::ENOENT | libc::ESRCH) => {
            error(StatusCode::NOT_FOUND, format!("process {}: {e}", p.pid))
        }
        // The kernel refused the agent itself (a process in another user namespace, or with
        // capabilities the agent dropped): the caller may not see it either.
        Err(e) if matches!(e.errno(), libc::EACCES | libc::EPERM) => {
            error(StatusCode::FORBIDDEN, format!("process {}: {e}", p.pid))
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// The names `GET /v1/processes/{pid}/{file}` serves: the Linux view's files.
fn http_files() -> Vec<&'static str> {
    crate::fs::tree::PROC_FILES
        .iter()
        .filter(|e| matches!(e.kind, crate::fs::tree::Kind::File(_)))
        .map(|e| e.name)
        .collect()
}

async fn task_stat(
    AxState(app): AxState<App>,
    Path((pid, tid)): Path<(String, String)>,
) -> Response {
    let tid = match parse_pid(&tid) {
        Ok(t) => t,
        Err(r) => return r,
    };
    match lookup(&app, &pid).await {
        Ok((_, p)) => match view::linux::task_stat(&p, tid, &app.host) {
            Ok(bytes) => {
                ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], bytes).into_response()
            }
            Err(e) => error(
                StatusCode::NOT_FOUND,
                format!("process {} thread {tid}: {e}", p.pid),
            ),
        },
        Err(r) => r,
    }
}

async fn metrics(AxState(app): AxState<App>) -> Response {
    match app.metrics.scrape(&app.state, &app.host).await {
        Ok(body) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body).into_response(),
        Err(_) => unavailable(),
    }
}

/// The OpenAPI description of this router; `agent/tests/cli.rs` checks that it and the
/// routes above name the same paths.
pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    json_bytes(OPENAPI)
}

/// The table's counters and the FUSE views', merged here: each owner gathers its own.
#[derive(serde::Serialize)]
struct Stats {
    #[serde(flatten)]
    agent: crate::state::AgentStats,
    #[serde(flatten)]
    fuse: crate::fs::FuseStats,
}

async fn stats(AxState(app): AxState<App>) -> Response {
    match app.state.stats().await {
        Ok(agent) => {
            let body = Stats {
                agent,
                fuse: crate::fs::FuseStats::now(),
            };
            json_bytes(serde_json::to_vec(&body).unwrap_or_default())
        }
        Err(_) => unavailable(),
    }
}

/// Server-Sent Events: one `data:` line of JSON per fork, exec and exit, filtered like the
/// listing. A subscriber too slow to keep up gets a `lagged` event saying how many it missed.
async fn events(AxState(app): AxState<App>, Query(q): Query<HashMap<String, String>>) -> Response {
    let filter = match Filter::parse(&q) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let host = app.host;
    let stream = BroadcastStream::new(app.state.subscribe()).filter_map(move |item| {
        let out = match item {
            Ok(change) => {
                let p = match &*change {
                    crate::table::Change::Fork(p)
                    | crate::table::Change::Exec(p)
                    | crate::table::Change::Exit(p) => p,
                };
                filter.matches(p).then(|| {
                    let ev = view::json::event(&change, &host);
                    Event::default()
                        .event(ev.event)
                        .data(serde_json::to_string(&ev).unwrap_or_default())
                })
            }
            Err(BroadcastStreamRecvError::Lagged(n)) => Some(
                Event::default()
                    .event("lagged")
                    .data(serde_json::json!({ "missed": n }).to_string()),
            ),
        };
        std::future::ready(out.map(Ok::<_, Infallible>))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_file_names_are_the_views_files() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        let params = doc["paths"]["/v1/processes/{pid}/{file}"]["get"]["parameters"]
            .as_array()
            .unwrap();
        let names: Vec<&str> =
            params.iter().find(|p| p["name"] == "file").unwrap()["schema"]["enum"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
        assert_eq!(names, http_files());
    }
}

//! `POST /v1/processes/{pid}/ctl` and `POST /v1/processes/{pid}/wait`: the control commands
//! over HTTP, for callers holding the agent's bearer token (who act as root). `mem`, `regs`
//! and `fpregs` are deliberately not served here.
// Handlers bail out with a ready `Response`, as in the rest of the router; boxing it buys
// nothing.
#![allow(clippy::result_large_err)]

use std::{net::SocketAddr, sync::Arc};

use axum::{
    body::Bytes,
    extract::{ConnectInfo, Path, State as AxState},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};

use super::App;
use crate::control::{Caller, Command, Control, CtlError, wait::Waiter};

/// What the control routes need from the app.
#[derive(Clone)]
pub struct CtlHttp {
    pub control: Control,
    pub waiter: Waiter,
    /// The secret the agent wrote to its token file at start.
    pub token: Arc<str>,
}

/// Longest ctl body accepted; every command is a word.
const BODY_MAX: usize = 256;

/// The API's `{"error": …}`, with the errno a FUSE caller would get where there is one.
fn reply(code: StatusCode, msg: impl std::fmt::Display, errno: Option<i32>) -> Response {
    let mut r = super::error_with(code, msg, errno);
    if code == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"bpfproc\""),
        );
    }
    r
}

fn ctl_error(e: &CtlError) -> Response {
    let code = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    reply(code, e, Some(e.errno()))
}

/// A control request's pid, once the caller is local and holds the token.
fn admitted(
    app: &App,
    ext: &axum::http::Extensions,
    headers: &HeaderMap,
    pid: &str,
) -> Result<u32, Response> {
    local_only(ext).and_then(|()| authorize(&app.ctl, headers))?;
    super::parse_pid(pid)
}

/// 401 without credentials, 403 with the wrong ones.
pub(crate) fn authorize(ctl: &CtlHttp, headers: &HeaderMap) -> Result<(), Response> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(reply(
            StatusCode::UNAUTHORIZED,
            "control needs Authorization: Bearer TOKEN (the agent's token file)",
            None,
        ));
    };
    let given = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(t) if constant_time_eq(t.as_bytes(), ctl.token.as_bytes()) => Ok(()),
        Some(_) => Err(reply(StatusCode::FORBIDDEN, "wrong token", None)),
        None => Err(reply(
            StatusCode::UNAUTHORIZED,
            "the Authorization header must be Bearer TOKEN",
            None,
        )),
    }
}

/// Compares without an early exit, so response timing does not leak how much of a guess
/// was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Control is for this host: a listener opened to the network (`--listen 0.0.0.0:…`, for
/// Prometheus) serves remote peers the read-only routes only, token or not. Without connection
/// information (a router driven directly) the caller is local.
fn local_only(ext: &axum::http::Extensions) -> Result<(), Response> {
    match ext.get::<ConnectInfo<SocketAddr>>() {
        Some(ConnectInfo(peer)) if !peer.ip().is_loopback() => Err(reply(
            StatusCode::FORBIDDEN,
            "control is served to loopback callers only",
            None,
        )),
        _ => Ok(()),
    }
}

pub async fn ctl(
    AxState(app): AxState<App>,
    Path(pid): Path<String>,
    ext: axum::http::Extensions,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let pid = match admitted(&app, &ext, &headers, &pid) {
        Ok(p) => p,
        Err(r) => return r,
    };
    if body.len() > BODY_MAX {
        return ctl_error(&CtlError::Invalid("ctl command too long".into()));
    }
    let cmd = match Command::parse(&body) {
        Ok(c) => c,
        Err(e) => return ctl_error(&e.into()),
    };
    match app.ctl.control.ctl_async(Caller::ROOT, pid, cmd).await {
        Ok(()) => ([(header::CONTENT_TYPE, "text/plain")], "ok\n").into_response(),
        Err(e) => ctl_error(&e),
    }
}

/// One Plan 9 Waitmsg from `pid`'s wait file (consumed, as a read of the file would).
pub async fn wait(
    AxState(app): AxState<App>,
    Path(pid): Path<String>,
    ext: axum::http::Extensions,
    headers: HeaderMap,
) -> Response {
    let pid = match admitted(&app, &ext, &headers, &pid) {
        Ok(p) => p,
        Err(r) => return r,
    };
    // Each request is a new reader, so it never reaches the end of a handle's records.
    match app.ctl.waiter.next(Caller::ROOT, pid, false).await {
        Ok(w) => (
            [(header::CONTENT_TYPE, "text/plain")],
            w.map(|w| w.render()).unwrap_or_default(),
        )
            .into_response(),
        Err(e) => ctl_error(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}

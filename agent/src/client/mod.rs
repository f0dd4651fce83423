//! The terminal clients of a running agent (`bpfproc ps`, `tree`, `events`, `top`): how they
//! find the agent, the HTTP calls they make, the process objects they read, and the small
//! formatting helpers they share. They only read the agent's public HTTP API, so they work the
//! same against a remote agent.

pub mod ctl;
pub mod events;
pub mod ps;
pub mod top;
pub mod tree;

use std::{
    io::{BufRead as _, Write as _},
    path::Path,
    time::Duration,
};

use serde::Deserialize;

/// Where the packaged config lives; clients read its `listen` so `bpfproc ps` follows an
/// agent moved to another port without a flag.
pub const DEFAULT_CONFIG: &str = "/etc/bpfproc/bpfproc.toml";

#[derive(clap::Args, Clone, Debug)]
pub struct AgentArg {
    /// The agent's HTTP API: `http://HOST:PORT` or `HOST:PORT`. Default: the `listen` address of
    /// /etc/bpfproc/bpfproc.toml when that file exists, else 127.0.0.1:9464.
    #[arg(long = "agent", env = "BPFPROC_URL", value_name = "URL")]
    pub agent: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the agent at {url}: {reason}\nhint: {hint}")]
    Unreachable {
        url: String,
        reason: String,
        hint: String,
    },
    #[error("the agent at {url} answered {path} with HTTP {status}: {message}")]
    Http {
        url: String,
        path: String,
        status: u16,
        message: String,
    },
    #[error(
        "{url}{path} did not answer like a bpfproc agent ({reason})\nhint: is --agent / BPFPROC_URL pointing at another service?"
    )]
    NotAnAgent {
        url: String,
        path: String,
        reason: String,
    },
    #[error("{0:?} is not an agent address (want http://HOST:PORT or HOST:PORT)")]
    BadUrl(String),
}

/// A connection to one agent's HTTP API.
pub struct Client {
    pub base: String,
    http: ureq::Agent,
}

impl Client {
    pub fn new(arg: &AgentArg) -> Result<Self, ClientError> {
        // BPFPROC_LISTEN, the agent's own variable, names the same address: a service's
        // environment file may set only that one.
        let raw = match &arg.agent {
            Some(a) => a.clone(),
            None => std::env::var("BPFPROC_LISTEN")
                .ok()
                .filter(|l| !l.is_empty())
                .or_else(|| configured_listen(Path::new(DEFAULT_CONFIG)))
                .unwrap_or_else(|| crate::config::DEFAULT_LISTEN.to_string()),
        };
        let base = normalize_url(&raw)?;
        let http = ureq::Agent::config_builder()
            // 4xx/5xx bodies carry the agent's JSON error: read them instead of failing early.
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(3)))
            .build()
            .new_agent();
        Ok(Self { base, http })
    }

    fn unreachable(&self, e: ureq::Error) -> ClientError {
        let hint = if Path::new(crate::socket::DEFAULT_SOCKET).exists() {
            format!(
                "an agent's control socket exists ({}), so one may be listening elsewhere: pass its address with --agent or BPFPROC_URL",
                crate::socket::DEFAULT_SOCKET
            )
        } else {
            "no agent seems to run here: start one with `sudo bpfproc agent` (or `sudo systemctl start bpfproc`), or point --agent / BPFPROC_URL at a running one".to_string()
        };
        ClientError::Unreachable {
            url: self.base.clone(),
            reason: e.to_string(),
            hint,
        }
    }

    fn check(
        &self,
        path: &str,
        resp: &mut ureq::http::Response<ureq::Body>,
    ) -> Result<(), ClientError> {
        let status = resp.status().as_u16();
        if status == 200 {
            return Ok(());
        }
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| body.trim().to_string());
        Err(ClientError::Http {
            url: self.base.clone(),
            path: path.to_string(),
            status,
            message,
        })
    }

    pub fn get_bytes(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        let mut resp = self
            .http
            .get(format!("{}{path}", self.base))
            .call()
            .map_err(|e| self.unreachable(e))?;
        self.check(path, &mut resp)?;
        resp.body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()
            .map_err(|e| self.unreachable(e))
    }

    pub fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let body = self.get_bytes(path)?;
        serde_json::from_slice(&body).map_err(|e| ClientError::NotAnAgent {
            url: self.base.clone(),
            path: path.to_string(),
            reason: e.to_string(),
        })
    }

    /// Live processes, with the raw objects kept for `--json` output.
    pub fn processes(&self, query: &str) -> Result<Vec<Proc>, ClientError> {
        self.list(&format!("/v1/processes{query}"))
    }

    pub fn exited(&self, query: &str) -> Result<Vec<Proc>, ClientError> {
        self.list(&format!("/v1/exited{query}"))
    }

    fn list(&self, path: &str) -> Result<Vec<Proc>, ClientError> {
        let raw: Vec<serde_json::Value> = self.get_json(path)?;
        raw.into_iter()
            .map(|v| {
                let mut p: Proc =
                    serde_json::from_value(v.clone()).map_err(|e| ClientError::NotAnAgent {
                        url: self.base.clone(),
                        path: path.to_string(),
                        reason: e.to_string(),
                    })?;
                p.raw = v;
                Ok(p)
            })
            .collect()
    }

    /// Opens the Server-Sent Events stream at `path` and calls `f(event, data)` for each event
    /// until `f` returns false or the stream ends.
    pub fn sse(
        &self,
        path: &str,
        mut f: impl FnMut(&str, &str) -> bool,
    ) -> Result<(), ClientError> {
        let mut resp = self
            .http
            .get(format!("{}{path}", self.base))
            .header("Accept", "text/event-stream")
            .call()
            .map_err(|e| self.unreachable(e))?;
        self.check(path, &mut resp)?;
        let reader = std::io::BufReader::new(resp.into_body().into_reader());
        let (mut event, mut data) = (String::new(), String::new());
        for line in reader.lines() {
            let line = line.map_err(|e| self.unreachable(ureq::Error::Io(e)))?;
            if line.is_empty() {
                if !data.is_empty() && !f(if event.is_empty() { "message" } else { &event }, &data)
                {
                    return Ok(());
                }
                event.clear();
                data.clear();
            } else if let Some(v) = line.strip_prefix("event:") {
                event = v.trim_start().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(v.strip_prefix(' ').unwrap_or(v));
            }
            // Anything else (`:` keep-alive comments, `id:`) carries nothing for us.
        }
        Ok(())
    }

    /// Sends one ctl command (`stop`, `start`, `kill`, …) through the agent's control route,
    /// with the bearer token from `token_file`.
    pub fn ctl(&self, pid: u32, command: &str, token_file: &Path) -> Result<(), CtlError> {
        let token = std::fs::read_to_string(token_file).map_err(|e| CtlError::Token {
            path: token_file.display().to_string(),
            reason: e.to_string(),
            permission: e.kind() == std::io::ErrorKind::PermissionDenied,
        })?;
        let path = format!("/v1/processes/{pid}/ctl");
        let mut resp = self
            .http
            .post(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", token.trim()))
            .header("Content-Type", "text/plain")
            .send(command)
            .map_err(|e| CtlError::Client(self.unreachable(e)))?;
        match self.check(&path, &mut resp) {
            Ok(()) => Ok(()),
            // The router's fallback answers 404 "no such endpoint" when the control routes
            // are not built in; a 404 for an unknown pid names the pid instead.
            Err(ClientError::Http {
                status: 404 | 405,
                message,
                ..
            }) if message.contains("no such endpoint") || message.is_empty() => {
                Err(CtlError::Unsupported)
            }
            Err(e) => Err(CtlError::Client(e)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error(
        "this agent has no control endpoint (POST /v1/processes/PID/ctl answered 404): it was built without process control"
    )]
    Unsupported,
    #[error("cannot read the agent's control token {path}: {reason}{}", if *permission { "\nhint: control needs root (sudo), or --token-file" } else { "\nhint: is the agent running with control enabled? pass --token-file if it writes the token elsewhere" })]
    Token {
        path: String,
        reason: String,
        permission: bool,
    },
    #[error(transparent)]
    Client(ClientError),
}

/// `HOST:PORT`, `http://HOST:PORT` or `http://HOST:PORT/` → `http://HOST:PORT`.
fn normalize_url(raw: &str) -> Result<String, ClientError> {
    let s = raw.trim().trim_end_matches('/');
    if s.starts_with("https://") {
        return Err(ClientError::BadUrl(format!(
            "{raw} (TLS is not supported: put a TLS proxy in front and use plain HTTP on loopback)"
        )));
    }
    let rest = s.strip_prefix("http://").unwrap_or(s);
    let ok = !rest.is_empty()
        && !rest.contains('/')
        && !rest.contains(char::is_whitespace)
        && rest
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
    if !ok {
        return Err(ClientError::BadUrl(raw.to_string()));
    }
    Ok(format!("http://{rest}"))
}

/// The `listen` address of the agent's config file, if that file is there and says one.
fn configured_listen(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let table: toml::Table = toml::from_str(&text).ok()?;
    let listen = table.get("listen")?.as_str()?;
    // An agent listening on every address is reached on loopback.
    Some(
        listen
            .replace("0.0.0.0:", "127.0.0.1:")
            .replace("[::]:", "[::1]:"),
    )
}

/// A process object of the HTTP API (see `view/json.rs`), live or exited.
#[derive(Clone, Debug, Deserialize)]
pub struct Proc {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub state: String,
    pub uid: u32,
    pub threads: u32,
    pub start_time: f64,
    #[serde(default)]
    pub cmdline: Vec<String>,
    #[serde(default)]
    pub kthread: bool,
    pub rss_bytes: u64,
    pub utime: f64,
    pub stime: f64,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub signal: Option<i32>,
    #[serde(default)]
    pub core_dumped: bool,
    #[serde(default)]
    pub exit_time: Option<f64>,
    #[serde(default)]
    pub runtime: Option<f64>,
    #[serde(default = "yes")]
    pub exit_known: bool,
    /// The object as the agent sent it, for `--json`.
    #[serde(skip)]
    pub raw: serde_json::Value,
}

fn yes() -> bool {
    true
}

impl Proc {
    pub fn cpu(&self) -> f64 {
        self.utime + self.stime
    }

    /// The command as ps prints it: the argv, or `[comm]` when there is none (kernel threads,
    /// zombies).
    pub fn command(&self) -> String {
        let s = if self.cmdline.is_empty() || self.kthread {
            format!("[{}]", self.comm)
        } else {
            self.cmdline.join(" ")
        };
        // As ps does: a newline in an argument must not break the one-line-per-process output.
        s.replace(char::is_control, "?")
    }

    /// How it ended: `0`, `1`, `SIGKILL`, `SIGSEGV (core)`, or `?` when the exit record was
    /// lost.
    pub fn how_ended(&self) -> String {
        if !self.exit_known {
            return "?".into();
        }
        match (self.exit_code, self.signal) {
            (_, Some(sig)) => format!(
                "{}{}",
                crate::control::signal_name(sig),
                if self.core_dumped { " (core)" } else { "" }
            ),
            (Some(code), None) => code.to_string(),
            (None, None) => "?".into(),
        }
    }
}

/// User names as this host's user database gives them (a remote agent's uids are shown with
/// these names too, as `ps` over ssh would not; numbers are shown for unknown uids).
#[derive(Default)]
pub struct Users;

impl Users {
    pub fn load() -> Self {
        Self
    }

    pub fn name(&self, uid: u32) -> String {
        crate::sys::users::name_or_number(uid)
    }

    /// A user name or a number.
    pub fn uid(&self, user: &str) -> Option<u32> {
        crate::sys::users::uid(user)
    }
}

pub fn split_list(values: &[String]) -> Vec<String> {
    values
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Writes a line to stdout; a closed pipe (`| head`) ends the program quietly, as it does for
/// ps.
pub fn out(line: impl std::fmt::Display) {
    let mut o = std::io::stdout().lock();
    if let Err(e) = writeln!(o, "{line}").and_then(|_| o.flush())
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(0);
    }
}

/// CPU time as ps's TIME column: `[DD-]HH:MM:SS`.
pub fn cpu_time(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    let (d, h, m, s) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}-{h:02}:{m:02}:{s:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}")
    }
}

/// A short duration: `12ms`, `3.41s`, `5m02s`, `2h05m`, `3d04h`.
pub fn duration(secs: f64) -> String {
    let secs = secs.max(0.0);
    if secs < 1.0 {
        return format!("{}ms", (secs * 1000.0).round() as u64);
    }
    if secs < 60.0 {
        return format!("{secs:.2}s");
    }
    let s = secs as u64;
    match s {
        ..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s / 60 % 60),
        _ => format!("{}d{:02}h", s / 86400, s / 3600 % 24),
    }
}

/// Local wall-clock time of a Unix timestamp, broken down. libc: nix has no localtime_r (the
/// C library's, which reads the time zone as `ps` and `date` do).
fn local(t: f64) -> libc::tm {
    let secs = t as libc::time_t;
    // SAFETY: an all-zero tm is a valid value; localtime_r writes into it and reads `secs`.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live locals of the right types.
    unsafe { libc::localtime_r(&secs, &mut tm) };
    tm
}

/// `HH:MM:SS.mmm`, local time.
pub fn clock_ms(t: f64) -> String {
    let tm = local(t);
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        ((t.fract()) * 1000.0) as u32
    )
}

/// ps's STIME: `HH:MM` today, `MonDD` before.
pub fn start_time(t: f64, now: f64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (then, today) = (local(t), local(now));
    if then.tm_yday == today.tm_yday && then.tm_year == today.tm_year {
        format!("{:02}:{:02}", then.tm_hour, then.tm_min)
    } else {
        format!(
            "{}{:02}",
            MONTHS[then.tm_mon.clamp(0, 11) as usize],
            then.tm_mday
        )
    }
}

pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Encodes one query value (`comm` may hold anything).
pub fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_addresses() {
        assert_eq!(
            normalize_url("127.0.0.1:9464").unwrap(),
            "http://127.0.0.1:9464"
        );
        assert_eq!(normalize_url("http://h:1/").unwrap(), "http://h:1");
        assert_eq!(
            normalize_url("http://[::1]:9464").unwrap(),
            "http://[::1]:9464"
        );
        for bad in [
            "",
            "localhost",
            "http://h:port",
            "http://h:1/v1",
            "https://h:1",
            ":9464",
        ] {
            assert!(normalize_url(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn listen_from_config() {
        let dir = std::env::temp_dir().join(format!("bpfproc-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(&f, "listen = \"0.0.0.0:9999\"\n").unwrap();
        assert_eq!(configured_listen(&f).as_deref(), Some("127.0.0.1:9999"));
        std::fs::write(&f, "exited = 5\n").unwrap();
        assert_eq!(configured_listen(&f), None);
        assert_eq!(configured_listen(&dir.join("missing")), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn formats() {
        assert_eq!(cpu_time(3661.9), "01:01:01");
        assert_eq!(cpu_time(90000.0), "1-01:00:00");
        assert_eq!(duration(0.0123), "12ms");
        assert_eq!(duration(3.414), "3.41s");
        assert_eq!(duration(302.0), "5m02s");
        assert_eq!(crate::control::signal_name(9), "SIGKILL");
        assert_eq!(crate::control::signal_name(40), "SIG40");
        assert_eq!(query_escape("a b&c"), "a%20b%26c");
    }

    #[test]
    fn how_a_process_ended() {
        let mut p: Proc = serde_json::from_value(serde_json::json!({
            "pid": 5, "ppid": 1, "comm": "x", "state": "X", "uid": 0, "threads": 1,
            "start_time": 0.0, "rss_bytes": 0, "utime": 0.0, "stime": 0.0,
            "exit_code": null, "signal": 11, "core_dumped": true, "exit_known": true
        }))
        .unwrap();
        assert_eq!(p.how_ended(), "SIGSEGV (core)");
        p.signal = None;
        p.exit_code = Some(3);
        assert_eq!(p.how_ended(), "3");
        p.exit_known = false;
        assert_eq!(p.how_ended(), "?");
    }
}

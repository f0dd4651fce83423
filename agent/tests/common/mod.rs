//! Helpers for the integration tests: a real agent on a free loopback port, and a minimal
//! HTTP client (the tests speak plain HTTP/1.1 so they depend on nothing but std).
#![allow(dead_code)]

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

pub mod view;

pub struct Agent {
    child: Option<Child>,
    pub addr: String,
    /// A private directory for this agent's socket and mount points.
    pub dir: std::path::PathBuf,
    pub socket: std::path::PathBuf,
    /// This agent's control token file (each test agent has its own).
    pub token_file: std::path::PathBuf,
}

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

impl Agent {
    pub fn start() -> Agent {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Agent {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let dir = std::env::temp_dir().join(format!("bpfproc-test-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("test dir");
        Self::start_in(dir, addr, extra)
    }

    /// Starts an agent with a proc view mounted from the start at `<its dir>/view`, which it
    /// returns; `extra` goes to the agent after `--mount`.
    pub fn start_with_view(extra: &[&str]) -> (Agent, std::path::PathBuf) {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("bpfproc-test-{}-{port}", std::process::id()));
        let view = dir.join("view");
        std::fs::create_dir_all(&view).expect("view dir");
        let mount = ["--mount", view.to_str().expect("utf-8 temp dir")];
        let args: Vec<&str> = mount.iter().chain(extra).copied().collect();
        (
            Self::start_in(dir, format!("127.0.0.1:{port}"), &args),
            view,
        )
    }

    /// `start_with`, with these environment variables set for the agent.
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Agent {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let dir = std::env::temp_dir().join(format!("bpfproc-test-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("test dir");
        Self::launch(dir, addr, extra, "warn", Stdio::inherit(), env)
    }

    /// Starts an agent reusing `dir` (its socket and mount points), e.g. after a crash.
    pub fn start_in(dir: std::path::PathBuf, addr: String, extra: &[&str]) -> Agent {
        Self::launch(dir, addr, extra, "warn", Stdio::inherit(), &[])
    }

    /// Starts an agent logging at `filter` (RUST_LOG), and the lines it logs, as it logs them.
    pub fn start_logging(
        filter: &str,
        extra: &[&str],
    ) -> (Agent, std::sync::mpsc::Receiver<String>) {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let dir = std::env::temp_dir().join(format!("bpfproc-test-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("test dir");
        let mut agent = Self::launch(dir, addr, extra, filter, Stdio::piped(), &[]);
        let stderr = agent.child.as_mut().and_then(|c| c.stderr.take());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr.expect("piped stderr")).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        (agent, rx)
    }

    fn launch(
        dir: std::path::PathBuf,
        addr: String,
        extra: &[&str],
        log: &str,
        stderr: Stdio,
        env: &[(&str, &str)],
    ) -> Agent {
        let socket = dir.join("bpfproc.sock");
        let token_file = dir.join("token");
        let child = Command::new(env!("CARGO_BIN_EXE_bpfproc"))
            .args(["agent", "--listen", &addr])
            .arg("--socket")
            .arg(&socket)
            .arg("--token-file")
            .arg(&token_file)
            .args(extra)
            .env("RUST_LOG", log)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn agent");
        let agent = Agent {
            child: Some(child),
            addr,
            dir,
            socket,
            token_file,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, _)) = agent.try_get("/healthz") {
                return agent;
            }
            assert!(Instant::now() < deadline, "agent did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn try_get(&self, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
        self.try_get_as(path, None)
    }

    /// GET with `Authorization: Bearer TOKEN` (the routes that need the token: `maps`).
    pub fn get_with_token(&self, path: &str) -> (u16, Vec<u8>) {
        self.try_get_as(path, Some(&self.token()))
            .expect("HTTP request")
    }

    fn try_get_as(&self, path: &str, token: Option<&str>) -> std::io::Result<(u16, Vec<u8>)> {
        get_as(&self.addr, path, token)
    }

    /// The control token the agent wrote at start.
    pub fn token(&self) -> String {
        std::fs::read_to_string(&self.token_file)
            .expect("token file")
            .trim()
            .to_string()
    }

    /// POSTs `body`, with `Authorization: Bearer TOKEN` when a token is given.
    pub fn post(&self, path: &str, body: &str, token: Option<&str>) -> (u16, Vec<u8>) {
        post(&self.addr, path, body, token)
    }

    /// Writes a ctl command as root (with the token).
    pub fn ctl(&self, pid: u32, cmd: &str) -> (u16, String) {
        let (status, body) = self.post(
            &format!("/v1/processes/{pid}/ctl"),
            cmd,
            Some(&self.token()),
        );
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    pub fn get(&self, path: &str) -> (u16, Vec<u8>) {
        self.try_get(path).expect("HTTP request")
    }

    pub fn json(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.get(path);
        assert_eq!(
            status,
            200,
            "GET {path}: {}",
            String::from_utf8_lossy(&body)
        );
        serde_json::from_slice(&body).expect("JSON body")
    }

    /// Opens `path` as a Server-Sent Events stream.
    pub fn sse(&self, path: &str) -> BufReader<TcpStream> {
        let mut s = TcpStream::connect(&self.addr).expect("connect");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
        )
        .expect("write");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut r = BufReader::new(s);
        let mut line = String::new();
        loop {
            line.clear();
            r.read_line(&mut line).expect("header line");
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        r
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGTERM and wait: the agent must exit cleanly.
    pub fn stop(mut self) -> ExitStatus {
        self.terminate()
    }

    /// SIGKILL: no clean-up at all, as after a crash.
    pub fn crash(mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("kill");
        child.wait().expect("wait");
    }

    /// Runs the `bpfproc` CLI against this agent's socket.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_bpfproc"))
            .args(args)
            .env("BPFPROC_SOCKET", &self.socket)
            .output()
            .expect("run bpfproc CLI")
    }

    fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child.
        unsafe { libc_kill(child.id() as i32, 15) };
        child.wait().expect("wait agent")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.terminate();
        }
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

pub fn kill(pid: u32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc_kill(pid as i32, sig) };
}

/// GETs `path` from the agent at `addr` (usable from threads that do not own the `Agent`).
pub fn get(addr: &str, path: &str) -> (u16, Vec<u8>) {
    get_as(addr, path, None).expect("HTTP request")
}

/// Longer than any answer a test waits for: an agent that never answers fails the test that
/// asked, with the request in the message, instead of hanging the suite.
const ANSWER_WITHIN: Duration = Duration::from_secs(120);

fn get_as(addr: &str, path: &str, token: Option<&str>) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(ANSWER_WITHIN))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let head_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no header end"))?;
    let status: u16 = String::from_utf8_lossy(&buf[9..12]).parse().unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let mut body = buf[head_end + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    Ok((status, body))
}

/// POSTs `body` to the agent at `addr` (usable from threads that do not own the `Agent`).
pub fn post(addr: &str, path: &str, body: &str, token: Option<&str>) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("connect");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    s.set_read_timeout(Some(ANSWER_WITHIN)).expect("timeout");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .unwrap_or_else(|e| panic!("POST {path}: no answer: {e}"));
    let head_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    let status: u16 = String::from_utf8_lossy(&buf[9..12]).parse().unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let mut body = buf[head_end + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (status, body)
}

/// Signals the process group `pgid` leads.
pub fn kill_group(pgid: u32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions; a negative pid names a group.
    unsafe { libc_kill(-(pgid as i32), sig) };
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
}

/// Fields of /proc/PID/stat after the comm, and the comm.
pub fn proc_stat(pid: u32) -> Option<(String, Vec<String>)> {
    let s = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    let open = s.iter().position(|&b| b == b'(')?;
    let close = s.iter().rposition(|&b| b == b')')?;
    let comm = String::from_utf8_lossy(&s[open + 1..close]).into_owned();
    let rest = String::from_utf8_lossy(&s[close + 1..]);
    Some((comm, rest.split_whitespace().map(str::to_owned).collect()))
}

/// Polls `f` until it returns Some, or panics after `secs`.
pub fn eventually<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `sleep SECS` run as uid and gid 65534 (nobody) with no supplementary groups, once it has
/// exec'd: another user's process for the permission tests.
pub fn sleep_as_nobody(secs: u32) -> Child {
    let child = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "sleep"])
        .arg(secs.to_string())
        .spawn()
        .expect("setpriv sleep");
    let pid = child.id();
    eventually(5, "exec", || {
        proc_stat(pid).filter(|(c, _)| c == "sleep").map(drop)
    });
    child
}

/// VmRSS of a process in KiB (0 if it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or `…/unified` on a hybrid host).
pub fn cgroup2_root() -> std::path::PathBuf {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| std::path::PathBuf::from(f[1]))
        })
        .expect("cgroup v2 mounted")
}

/// `sh -c SCRIPT` run as uid and gid 65534 (nobody) with no supplementary groups.
pub fn sh_as_nobody(script: &str) -> std::process::Output {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
        ])
        .arg(script)
        .output()
        .expect("setpriv sh")
}

/// A shell that execs `sleep 60` when told to: a process whose status changes on cue.
pub struct ExecOnCue(pub Child);

impl ExecOnCue {
    pub fn start() -> Self {
        Self::ready(Self::command().spawn().unwrap())
    }

    /// The shell, to be spawned and given to `ready`.
    pub fn command() -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "read line; exec sleep 60"])
            .stdin(Stdio::piped());
        cmd
    }

    /// `child`, spawned from `command`, once it waits for its cue.
    pub fn ready(child: Child) -> Self {
        // spawn() returns when the exec closed its pipe, which is before the exec hook runs:
        // wait until the kernel shows sh asleep in its read, so its exec is in the ring.
        let pid = child.id();
        eventually(5, "sh waiting for its cue", || {
            proc_stat(pid)
                .filter(|(c, f)| c == "sh" && f[0] == "S")
                .map(drop)
        });
        ExecOnCue(child)
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// `name` of this process in `view`, once the view shows the process.
    pub fn file_in(&self, view: &std::path::Path, name: &str) -> std::path::PathBuf {
        let path = view.join(format!("{}/{name}", self.0.id()));
        eventually(5, "the child in the view", || {
            std::fs::metadata(&path).ok().map(drop)
        });
        path
    }

    /// Tells it to exec, and returns at once.
    pub fn cue(&mut self) {
        writeln!(self.0.stdin.as_mut().unwrap()).unwrap();
    }

    /// Tells it to exec, and waits until it sleeps in the new image.
    pub fn exec(&mut self) {
        self.cue();
        let pid = self.0.id();
        eventually(5, "the exec", || {
            proc_stat(pid)
                .filter(|(c, f)| c == "sleep" && f[0] == "S")
                .map(drop)
        });
    }

    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ExecOnCue {
    fn drop(&mut self) {
        self.kill();
    }
}

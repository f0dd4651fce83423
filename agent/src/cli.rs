//! The client side of control: `bpfproc ctl` and `bpfproc run --stop-on-exec` talk to the
//! running agent over its HTTP API with the bearer token from the agent's token file (so they
//! need to be able to read that file: root, by default). Also the token itself.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

#[derive(clap::Args)]
pub struct Client {
    /// The agent's HTTP address.
    #[arg(long, default_value = crate::DEFAULT_LISTEN, env = "BPFPROC_LISTEN")]
    agent: String,
    /// The agent's token file.
    #[arg(long, default_value = crate::DEFAULT_TOKEN_FILE, env = "BPFPROC_TOKEN_FILE")]
    token_file: PathBuf,
}

#[derive(clap::Args)]
pub struct CtlArgs {
    #[command(flatten)]
    client: Client,
    pid: u32,
    /// stop, start, waitstop, startstop, hang, nohang, kill, attach, detach, run, step, wait,
    /// or a signal name without SIG (term, int, usr1, …).
    command: String,
}

#[derive(clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    client: Client,
    /// Stop the program before its first instruction (Plan 9 `hang` for one exec).
    #[arg(long)]
    stop_on_exec: bool,
    /// The program and its arguments (after `--`).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    program: Vec<String>,
}

/// 32 random bytes, hex.
pub fn new_token() -> anyhow::Result<String> {
    let mut raw = [0u8; 32];
    // SAFETY: getrandom writes at most raw.len() bytes into raw.
    let n = unsafe { libc::getrandom(raw.as_mut_ptr().cast(), raw.len(), 0) };
    if n != raw.len() as isize {
        bail!("getrandom: {}", std::io::Error::last_os_error());
    }
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes the token readable by root only. The old file is removed first and the new one
/// created exclusively, so a planted symlink or a file with looser permissions is never
/// written through.
pub fn write_token(path: &Path, token: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(f, "{token}")?;
    Ok(())
}

impl Client {
    fn token(&self) -> anyhow::Result<String> {
        let t = std::fs::read_to_string(&self.token_file).with_context(|| {
            format!(
                "reading the agent's token {} (control needs root, or --token-file)",
                self.token_file.display()
            )
        })?;
        Ok(t.trim().to_string())
    }

    /// POSTs `body` and returns the response body, or an error with the agent's message.
    fn post(&self, path: &str, body: &str) -> anyhow::Result<String> {
        let token = self.token()?;
        let mut s = TcpStream::connect(&self.agent)
            .with_context(|| format!("connecting to the agent at {}", self.agent))?;
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: bpfproc\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)?;
        let text = String::from_utf8_lossy(&buf);
        let (head, rest) = text
            .split_once("\r\n\r\n")
            .context("malformed HTTP response")?;
        let status: u16 = head
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .context("malformed HTTP status line")?;
        let rest = rest.to_string();
        if status == 200 {
            return Ok(rest);
        }
        let msg = serde_json::from_str::<serde_json::Value>(&rest)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or(rest);
        bail!("{msg} (HTTP {status})")
    }

    fn ctl(&self, pid: u32, cmd: &str) -> anyhow::Result<()> {
        self.post(&format!("/v1/processes/{pid}/ctl"), cmd)
            .with_context(|| format!("{cmd} on {pid}"))
            .map(drop)
    }
}

pub fn ctl(args: &CtlArgs) -> anyhow::Result<()> {
    args.client.ctl(args.pid, &args.command)
}

/// Sets the hang bit on ourselves for the length of one spawn, so only the child carries it
/// into its exec: the exec hook stops it there, untraced. Clears it on the child once it has
/// stopped (so the program's own children run freely), then stays its parent until it exits
/// — a stopped process whose parent left would be in an orphaned process group, which the
/// kernel wakes with SIGHUP and SIGCONT.
pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let me = std::process::id();
    let mut cmd = std::process::Command::new(&args.program[0]);
    cmd.args(&args.program[1..]);
    let child = if args.stop_on_exec {
        args.client.ctl(me, "hang")?;
        let child = cmd.spawn();
        let cleared = args.client.ctl(me, "nohang");
        let child = child.with_context(|| format!("starting {}", args.program[0]))?;
        cleared?;
        child
    } else {
        cmd.spawn()
            .with_context(|| format!("starting {}", args.program[0]))?
    };
    let pid = child.id();
    let mut status = 0;
    if args.stop_on_exec {
        // SAFETY: waitpid on our own child with a valid status pointer.
        let r = unsafe { libc::waitpid(pid as i32, &mut status, libc::WUNTRACED) };
        if r == pid as i32 && libc::WIFSTOPPED(status) {
            args.client.ctl(pid, "nohang")?;
            eprintln!(
                "bpfproc: {} is pid {pid}, stopped before its first instruction.\n\
                 bpfproc: attach with `gdb -p {pid}` (then `continue`), or resume it with \
                 `kill -CONT {pid}`.",
                args.program[0]
            );
        }
    }
    if !(libc::WIFEXITED(status) || libc::WIFSIGNALED(status)) {
        loop {
            // SAFETY: as above.
            let r = unsafe { libc::waitpid(pid as i32, &mut status, 0) };
            if r == pid as i32 && (libc::WIFEXITED(status) || libc::WIFSIGNALED(status)) {
                break;
            }
            if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                bail!("waiting for {pid}: {}", std::io::Error::last_os_error());
            }
        }
    }
    std::process::exit(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    })
}

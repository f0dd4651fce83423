//! The client side of control: `bpfproc ctl` and `bpfproc run --stop-on-exec` talk to the
//! running agent over its HTTP API, through the same client as `bpfproc ps`, with the bearer
//! token from the agent's token file (so they need to be able to read that file: root, by
//! default).

use std::path::PathBuf;

use anyhow::{Context as _, bail};

use crate::config::DEFAULT_TOKEN_FILE;

/// The agent to control and the token that lets us: the same client as `bpfproc ps`.
#[derive(clap::Args)]
pub struct Client {
    #[command(flatten)]
    agent: crate::client::AgentArg,
    /// The agent's token file.
    #[arg(long, default_value = DEFAULT_TOKEN_FILE, env = "BPFPROC_TOKEN_FILE")]
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

impl Client {
    fn ctl(&self, pid: u32, cmd: &str) -> anyhow::Result<()> {
        crate::client::Client::new(&self.agent)?
            .ctl(pid, cmd, &self.token_file)
            .with_context(|| format!("{cmd} on {pid}"))
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
    // libc's waitpid, not nix's: nix's `WaitStatus` has no real-time signals, so a child
    // killed by SIGRTMIN+n would be an error (its status lost) instead of exit 128+n.
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

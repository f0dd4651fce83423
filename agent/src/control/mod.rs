//! Process control: the Plan 9 / FreeBSD `ctl` commands, notes, `mem`, `regs`, `fpregs` and
//! the Plan 9 `wait` file, for the FUSE view and the HTTP API alike.
//!
//! This module owns the command language (parsing, signal and note names), the typed error
//! every control operation returns (it carries the errno a file system would give, and the
//! HTTP status), and the permission rule: every operation is checked against the *caller's*
//! credentials, never the agent's. All ptrace work happens on one dedicated thread
//! (`actor.rs`), because the kernel ties a tracee to the thread that attached it; `Control`
//! (`handle.rs`) is the cheap, cloneable handle to it, and `ptrace.rs` holds the raw ptrace and
//! process_vm wrappers the thread calls.

mod actor;
mod handle;
mod ptrace;
#[cfg(test)]
mod tests;
pub mod wait;
pub mod words;

use std::{
    os::fd::OwnedFd,
    sync::{Arc, Mutex},
    time::Duration,
};

use nix::errno::Errno;

use crate::sys::pidfd;

pub use handle::Control;
pub use words::{BadWord, Command, SIGNALS, note_signal, short_signal_name, signal_name};

/// Who is asking. The FUSE layer fills this from the request (`req.uid()`, `req.gid()`,
/// `req.pid()`); an HTTP caller holding the agent's token is root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    /// The calling process (0 when unknown, as for HTTP). Used where the manuals single the
    /// writer out: `notepg` skips it, and nobody may control the agent through itself.
    pub pid: u32,
}

impl Caller {
    pub const ROOT: Caller = Caller {
        uid: 0,
        gid: 0,
        pid: 0,
    };
}

/// Why a control operation failed, with the errno the FUSE layer returns and the HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CtlError {
    /// Malformed command, note or argument. EINVAL.
    #[error("{0}")]
    Invalid(String),
    /// The process does not exist (or exited meanwhile). ENOENT.
    #[error("no process {0}")]
    NoProcess(u32),
    /// The caller may not control this process (its credentials do not match, or the target
    /// changed credentials through exec). EACCES.
    #[error("permission denied: {0}")]
    Denied(String),
    /// Nobody may do this to this process (a kernel thread, the agent itself). EPERM.
    #[error("operation not permitted: {0}")]
    NotPermitted(String),
    /// The process is not in the state the command needs (`start` on a running process,
    /// `step` without `attach`, traced by another debugger). EBUSY.
    #[error("{0}")]
    Busy(String),
    /// `wait` on a process with no children, living or exited. ECHILD.
    #[error("process {0} has no children")]
    NoChildren(u32),
    /// An address that is not mapped in the target. EIO, as both manuals say for `mem`.
    #[error("address {0:#x} is not mapped in the target")]
    BadAddress(u64),
    /// The stop-on-exec bit needs the BPF programs, which this instance does not have.
    #[error("stop-on-exec needs the BPF process map")]
    NoKernel,
    /// The manual's operation has no counterpart on this machine. EOPNOTSUPP.
    #[cfg_attr(target_arch = "x86_64", allow(dead_code))] // the debug registers elsewhere
    #[error("not supported here: {0}")]
    Unsupported(&'static str),
    /// An unexpected error from the kernel.
    #[error("{what}: {}", std::io::Error::from(*errno))]
    Os { what: &'static str, errno: Errno },
    /// The control thread has stopped (the agent is shutting down).
    #[error("the control thread has shut down")]
    Gone,
    /// A wait for a stop was given up because the caller got a signal. EINTR.
    #[error("interrupted by a signal to the caller")]
    Interrupted,
}

impl From<BadWord> for CtlError {
    fn from(e: BadWord) -> Self {
        CtlError::Invalid(e.0)
    }
}

impl CtlError {
    pub fn errno(&self) -> i32 {
        match self {
            CtlError::Invalid(_) => libc::EINVAL,
            CtlError::NoProcess(_) => libc::ENOENT,
            CtlError::Denied(_) => libc::EACCES,
            CtlError::NotPermitted(_) => libc::EPERM,
            CtlError::Busy(_) => libc::EBUSY,
            CtlError::NoChildren(_) => libc::ECHILD,
            CtlError::BadAddress(_) => libc::EIO,
            CtlError::NoKernel => libc::ENOSYS,
            CtlError::Unsupported(_) => libc::EOPNOTSUPP,
            CtlError::Os { errno, .. } => *errno as i32,
            CtlError::Gone => libc::EIO,
            CtlError::Interrupted => libc::EINTR,
        }
    }

    /// 400 malformed, 403 not allowed, 404 no process, 409 wrong state, 503 shutting down.
    pub fn http_status(&self) -> u16 {
        match self {
            CtlError::Invalid(_) => 400,
            CtlError::Denied(_) | CtlError::NotPermitted(_) => 403,
            CtlError::NoProcess(_) => 404,
            CtlError::Busy(_) | CtlError::NoChildren(_) => 409,
            CtlError::BadAddress(_) => 400,
            CtlError::NoKernel | CtlError::Unsupported(_) => 501,
            CtlError::Gone | CtlError::Interrupted => 503,
            CtlError::Os { .. } => 500,
        }
    }
}

/// What the kernel says about a process right now, from `/proc/PID/stat` and `status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcInfo {
    /// The state letter (`R`, `S`, `T` stopped, `t` tracing stop, `Z` zombie, …).
    pub state: char,
    /// `stat` field 22, with the pid the identity of the process.
    pub start: u64,
    pub pgrp: u32,
    /// `PF_*` flags.
    pub flags: u64,
    /// real, effective, saved, fs
    pub uids: [u32; 4],
    pub gids: [u32; 4],
    pub tracer: u32,
    /// False after an exec of a setuid/setgid/capability binary or `PR_SET_DUMPABLE(0)`:
    /// the kernel then gives `/proc/PID/status` to root, which is how it is read here.
    pub dumpable: bool,
}

impl ProcInfo {
    /// Exact and cheap: the state letter is the one thing the table (refreshed at most every
    /// `--max-staleness-ms`) cannot give a blocking `waitstop`, and the credentials must be the
    /// ones in force at the moment of the check.
    pub fn read(pid: u32) -> Result<ProcInfo, CtlError> {
        let gone = |_| CtlError::NoProcess(pid);
        let stat = std::fs::read(format!("/proc/{pid}/stat")).map_err(gone)?;
        let mut file = std::fs::File::open(format!("/proc/{pid}/status")).map_err(gone)?;
        let meta = file.metadata().map_err(gone)?;
        let mut status = String::new();
        std::io::Read::read_to_string(&mut file, &mut status).map_err(gone)?;
        let close = stat
            .iter()
            .rposition(|&b| b == b')')
            .ok_or(CtlError::NoProcess(pid))?;
        let rest = String::from_utf8_lossy(&stat[close + 1..]);
        let f: Vec<&str> = rest.split_whitespace().collect();
        // Fields after the comm: state is field 3, so f[0]; pgrp f[2]; flags f[6]; start f[19].
        let num = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok());
        let state = f
            .first()
            .and_then(|s| s.chars().next())
            .ok_or(CtlError::NoProcess(pid))?;
        let ids = |key: &str| -> [u32; 4] {
            let mut out = [u32::MAX; 4];
            if let Some(line) = status.lines().find(|l| l.starts_with(key)) {
                for (o, v) in out.iter_mut().zip(line[key.len()..].split_whitespace()) {
                    *o = v.parse().unwrap_or(u32::MAX);
                }
            }
            out
        };
        let tracer = status
            .lines()
            .find_map(|l| l.strip_prefix("TracerPid:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let uids = ids("Uid:");
        let gids = ids("Gid:");
        use std::os::unix::fs::MetadataExt as _;
        Ok(ProcInfo {
            state,
            start: num(19).unwrap_or(0),
            pgrp: num(2).unwrap_or(0) as u32,
            flags: num(6).unwrap_or(0),
            uids,
            gids,
            tracer,
            // A dumpable process's files belong to its effective uid and gid; a
            // non-dumpable one's to root (fs/proc/base.c task_dump_owner). (The /proc/PID
            // directory itself is not re-owned, so it cannot tell.)
            dumpable: meta.uid() == uids[1] && meta.gid() == gids[1],
        })
    }

    pub fn stopped(&self) -> bool {
        matches!(self.state, 'T' | 't')
    }

    pub fn exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Whether `caller` may read what procfs guards with a ptrace-read check (`environ`, `io`,
/// `maps`, the `exe`/`cwd`/`root`/`fd` links): root, or the same uid and gid on every real,
/// effective and saved id of a dumpable process — the rule `Target::open` applies to control,
/// without its refusals of init, kernel threads and the agent, which procfs lets root read.
/// The agent reads these files as root, so without this check the view would show another
/// user's (or a non-dumpable process's, like ssh-agent's) memory layout and environment.
pub fn may_read(caller: &Caller, pid: u32) -> Result<(), CtlError> {
    if caller.uid == 0 {
        return Ok(());
    }
    let i = ProcInfo::read(pid)?;
    let same_uid = i.uids[..3].iter().all(|&u| u == caller.uid);
    let same_gid = i.gids[..3].iter().all(|&g| g == caller.gid);
    if same_uid && same_gid && i.dumpable {
        Ok(())
    } else {
        Err(CtlError::Denied(format!(
            "process {pid} is not readable by uid {}",
            caller.uid
        )))
    }
}

/// A process pinned by a pidfd after the permission check: signals sent through it can
/// never reach a newer process that reused the pid.
pub struct Target {
    pub pid: u32,
    pub info: ProcInfo,
    pidfd: OwnedFd,
}

impl Target {
    /// Opens `pid` for `caller`: the caller may control only what it could ptrace itself —
    /// root, or the same uid and gid on every real/effective/saved id and a target that has
    /// not changed credentials through exec (dumpable). Nothing happens to the target here.
    pub fn open(caller: &Caller, pid: u32) -> Result<Target, CtlError> {
        if pid == 0 {
            return Err(CtlError::NoProcess(pid));
        }
        // ESRCH: gone; EINVAL: a thread id, not a process.
        let pidfd = pidfd::open(pid).map_err(|_| CtlError::NoProcess(pid))?;
        let info = ProcInfo::read(pid)?;
        let target = Target { pid, info, pidfd };
        // The pidfd was opened before /proc was read: if the process is still the pidfd's,
        // what we read is that process's, not a successor's.
        target.signal(0)?;
        if info_is_kthread(&target.info) {
            return Err(CtlError::NotPermitted(format!("{pid} is a kernel thread")));
        }
        if pid == 1 {
            // The kernel ignores stop and kill signals sent to init from its own namespace, so a
            // `stop` would block its writer for ever; and a stopped init stops the system.
            return Err(CtlError::NotPermitted("pid 1 is init".into()));
        }
        if pid == std::process::id() {
            return Err(CtlError::NotPermitted(
                "the agent does not control itself".into(),
            ));
        }
        if caller.uid != 0 {
            let i = &target.info;
            let same_uid = i.uids[..3].iter().all(|&u| u == caller.uid);
            let same_gid = i.gids[..3].iter().all(|&g| g == caller.gid);
            if !same_uid || !same_gid {
                return Err(CtlError::Denied(format!(
                    "process {pid} belongs to uid {} gid {}, the caller is uid {} gid {}",
                    i.uids[1], i.gids[1], caller.uid, caller.gid
                )));
            }
            if !i.dumpable {
                return Err(CtlError::Denied(format!(
                    "process {pid} changed credentials (setuid exec or not dumpable)"
                )));
            }
        }
        Ok(target)
    }

    /// Sends `sig` (0: only check the process is still there) through the pidfd.
    pub fn signal(&self, sig: i32) -> Result<(), CtlError> {
        pidfd::send_signal(&self.pidfd, sig).map_err(|errno| match errno {
            Errno::ESRCH => CtlError::NoProcess(self.pid),
            errno => CtlError::Os {
                what: "pidfd_send_signal",
                errno,
            },
        })
    }

    /// Whether `pid` is still this process, and its state now.
    pub fn refresh(&self) -> Result<ProcInfo, CtlError> {
        let info = ProcInfo::read(self.pid)?;
        if info.start != self.info.start {
            return Err(CtlError::NoProcess(self.pid));
        }
        Ok(info)
    }
}

/// The processes whose process group is `pgrp`, from the kernel's /proc (exact at the
/// moment of the write, which the table's snapshot is not).
fn group_members(pgrp: u32) -> Vec<u32> {
    crate::procfs::pids()
        .into_iter()
        .filter(|&p| ProcInfo::read(p).is_ok_and(|i| i.pgrp == pgrp))
        .collect()
}

fn info_is_kthread(i: &ProcInfo) -> bool {
    i.flags & u64::from(bpfproc_common::PF_KTHREAD) != 0
}

/// How often a blocking command (`waitstop`, `stop`, `step`, …) looks at the target again.
/// The kernel has no "tell me when this non-child stops" notification; a few milliseconds of
/// latency is what the writer pays.
const POLL: Duration = Duration::from_millis(2);

/// Shared with the FUSE layer: the stop-on-exec map is reached through the BPF loader.
pub type KernelHandle = Arc<Mutex<crate::kernel::Kernel>>;

#[cfg(test)]
mod parse_tests {
    use super::{words::signal_by_name, *};

    #[test]
    fn every_plan9_and_freebsd_word_parses() {
        for (w, c) in [
            ("stop", Command::Stop),
            ("start", Command::Start),
            ("waitstop", Command::WaitStop),
            ("startstop", Command::StartStop),
            ("hang", Command::Hang),
            ("nohang", Command::NoHang),
            ("kill", Command::Kill),
            ("attach", Command::Attach),
            ("detach", Command::Detach),
            ("run", Command::Run),
            ("step", Command::Step),
            ("wait", Command::Wait),
            ("term", Command::Signal(libc::SIGTERM)),
            ("usr1", Command::Signal(libc::SIGUSR1)),
            ("cont", Command::Signal(libc::SIGCONT)),
        ] {
            assert_eq!(Command::parse(w.as_bytes()), Ok(c), "{w}");
            assert_eq!(Command::parse(format!("{w}\n").as_bytes()), Ok(c), "{w}\\n");
        }
    }

    #[test]
    fn anything_else_is_einval() {
        for bad in [
            &b""[..],
            b"\n",
            b"STOP",
            b"stop ",
            b" stop",
            b"stop\n\n",
            b"stop\nstart",
            b"sigterm",
            b"SIGTERM",
            b"15",
            b"hang now",
            b"\xff\xfe",
            b"stop\0",
        ] {
            let e = CtlError::from(
                Command::parse(bad).expect_err(&format!("{bad:?} must be rejected")),
            );
            assert_eq!(e.errno(), libc::EINVAL, "{bad:?}");
            assert_eq!(e.http_status(), 400);
        }
    }

    #[test]
    fn signal_names_match_the_kernel_numbers() {
        assert_eq!(signal_by_name("hup"), Some(1));
        assert_eq!(signal_by_name("int"), Some(2));
        assert_eq!(signal_by_name("term"), Some(15));
        assert_eq!(signal_by_name("usr2"), Some(12));
        assert_eq!(signal_by_name("winch"), Some(28));
        assert_eq!(signal_by_name("kill"), None, "kill is Plan 9's command");
        let mut names: Vec<_> = SIGNALS.iter().map(|(n, _)| n).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), SIGNALS.len(), "duplicate signal name");
    }

    #[test]
    fn notes_map_to_signals_and_unknown_notes_are_einval() {
        assert_eq!(note_signal(b"interrupt"), Ok(libc::SIGINT));
        assert_eq!(note_signal(b"hangup\n"), Ok(libc::SIGHUP));
        assert_eq!(note_signal(b"kill"), Ok(libc::SIGKILL));
        assert_eq!(note_signal(b"sys: write on closed pipe"), Ok(libc::SIGPIPE));
        for bad in [&b"int"[..], b"", b"Interrupt", b"interrupt now"] {
            assert_eq!(
                note_signal(bad).map_err(|e| CtlError::from(e).errno()),
                Err(libc::EINVAL)
            );
        }
    }

    #[test]
    fn errors_map_to_errno_and_http_status() {
        let cases = [
            (CtlError::Invalid("x".into()), libc::EINVAL, 400),
            (CtlError::NoProcess(7), libc::ENOENT, 404),
            (CtlError::Denied("x".into()), libc::EACCES, 403),
            (CtlError::NotPermitted("x".into()), libc::EPERM, 403),
            (CtlError::Busy("x".into()), libc::EBUSY, 409),
            (CtlError::NoChildren(7), libc::ECHILD, 409),
            (CtlError::BadAddress(0), libc::EIO, 400),
            (CtlError::Interrupted, libc::EINTR, 503),
        ];
        for (e, errno, status) in cases {
            assert_eq!((e.errno(), e.http_status()), (errno, status), "{e:?}");
        }
    }
}

//! The control thread: the one thread in the agent that calls ptrace(2) or waits for a
//! tracee. The kernel makes the thread that attached a tracee its only tracer, so every
//! request that may touch a tracee comes here over a channel and is answered on a reply
//! channel. The thread never blocks on a target: commands that must wait for a stop
//! (`stop`, `attach`, `step`, `waitstop`, …) issue their action here and the *caller* polls
//! `Status` until the target is stopped, so one slow target never holds up another caller.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use bpfproc_common::pflag;

use super::{Caller, Command, CtlError, KernelHandle, POLL, ProcInfo, Target};

/// A tracee that exits or stops is noticed (and, if it exited, reaped so that its real parent
/// can reap it in turn) at most this late while the thread is otherwise idle.
const REAP_EVERY: Duration = Duration::from_millis(20);
/// How long a tracee may take to reach a ptrace stop after PTRACE_INTERRUPT before we give up
/// (a task in an uninterruptible sleep cannot stop until it wakes).
const INTERRUPT_TIMEOUT: Duration = Duration::from_secs(2);

pub const REGS_SIZE: usize = size_of::<libc::user_regs_struct>();
pub const FPREGS_SIZE: usize = size_of::<libc::user_fpregs_struct>();
/// x86-64's eight debug registers, `u_debugreg` in `struct user` (dr4 and dr5 do not exist
/// and read as 0).
pub const DBREGS_SIZE: usize = 8 * 8;
/// Largest single `mem` read; FUSE reads are at most 128 KiB anyway.
const MEM_MAX: usize = 16 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RunState {
    Running,
    Stopped,
    Gone,
}

/// What a command needs after its immediate action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Then {
    Done,
    /// Poll until stopped; an exit instead is success (`waitstop`) or ENOENT (`stop`, …).
    WaitStop {
        start: u64,
        exit_ok: bool,
    },
}

enum Op {
    Ctl(Command),
    Status { start: u64 },
    ReadMem { addr: u64, len: usize },
    WriteMem { addr: u64, data: Vec<u8> },
    GetRegs { set: RegSet },
    SetRegs { set: RegSet, data: Vec<u8> },
    // SVR4's PFC* requests that are more than a ctl command: the signal trace mask (non-zero
    // traces the process so that a signal in the mask stops it; zero ends that), clearing the
    // signal a stopped tracee would be resumed with, making a process runnable whatever
    // stopped it, and a single step that traces a stopped process for it if need be.
    SetSigMask(u64),
    GetSigMask,
    ClearSignal,
    MakeRunnable,
    StepStopped,
}

/// A register set, read and written whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RegSet {
    /// `user_regs_struct`.
    General,
    /// `user_fpregs_struct`.
    Float,
    /// `u_debugreg[8]`.
    Debug,
}

impl RegSet {
    fn size(self) -> usize {
        match self {
            RegSet::General => REGS_SIZE,
            RegSet::Float => FPREGS_SIZE,
            RegSet::Debug => DBREGS_SIZE,
        }
    }
}

enum Reply {
    Then(Then),
    Mask(u64),
    State(RunState),
    Bytes(Vec<u8>),
    Written(usize),
    Done,
}

enum Msg {
    Req {
        caller: Caller,
        pid: u32,
        op: Op,
        reply: mpsc::SyncSender<Result<Reply, CtlError>>,
    },
    Shutdown,
}

/// Handle to the control thread. Every method blocks the calling thread (the FUSE layer calls
/// them from its own threads; async code uses the `_async` wrappers or `spawn_blocking`).
#[derive(Clone)]
pub struct Control {
    tx: mpsc::Sender<Msg>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
    changed: Arc<OnceLock<Changed>>,
}

/// Told the pid of every process a command may have changed, once the change is made.
pub type Changed = Box<dyn Fn(u32) + Send + Sync>;

impl Op {
    /// Whether carrying it out may change the process (its state, memory or registers).
    fn changes(&self) -> bool {
        !matches!(
            self,
            Op::Status { .. } | Op::ReadMem { .. } | Op::GetRegs { .. } | Op::GetSigMask
        )
    }
}

impl Control {
    /// Starts the control thread. `kernel` is the BPF loader, for `hang`/`nohang`; without it
    /// (tests of the ptrace side alone) those two commands fail with ENOSYS.
    pub fn spawn(kernel: Option<KernelHandle>) -> std::io::Result<Control> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("bpfproc-control".into())
            .spawn(move || Actor::new(kernel).run(rx))?;
        Ok(Control {
            tx,
            thread: Arc::new(Mutex::new(Some(thread))),
            changed: Arc::default(),
        })
    }

    /// Sets who is told of the changes commands make (the process table, so that what is read
    /// after a command returns shows its effect, whatever the staleness bound).
    pub fn on_change(&self, f: Changed) {
        let _ = self.changed.set(f);
    }

    fn touch(&self, pid: u32) {
        if let Some(f) = self.changed.get() {
            f(pid);
        }
    }

    fn call(&self, caller: &Caller, pid: u32, op: Op) -> Result<Reply, CtlError> {
        let (reply, rx) = mpsc::sync_channel(1);
        let changes = op.changes();
        self.tx
            .send(Msg::Req {
                caller: *caller,
                pid,
                op,
                reply,
            })
            .map_err(|_| CtlError::Gone)?;
        let r = rx.recv().map_err(|_| CtlError::Gone)?;
        if changes {
            self.touch(pid);
        }
        r
    }

    /// Parses one write to `ctl` and carries it out. A malformed command is EINVAL and the
    /// target is not looked at.
    pub fn write_ctl(&self, caller: &Caller, pid: u32, raw: &[u8]) -> Result<(), CtlError> {
        let cmd = Command::parse(raw)?;
        self.ctl(caller, pid, cmd)
    }

    /// Carries out a ctl command, blocking for the ones that wait for a stop.
    pub fn ctl(&self, caller: &Caller, pid: u32, cmd: Command) -> Result<(), CtlError> {
        self.ctl_until(caller, pid, cmd, &|| false)
    }

    /// `ctl`, but a wait for a stop ends with `Interrupted` (EINTR) once `interrupted` says
    /// so: the FUSE layer asks whether the caller has a signal to take.
    pub fn ctl_until(
        &self,
        caller: &Caller,
        pid: u32,
        cmd: Command,
        interrupted: &dyn Fn() -> bool,
    ) -> Result<(), CtlError> {
        self.then(caller, pid, Op::Ctl(cmd), interrupted)
    }

    /// Sends `op` and, if it asks for it, polls until the target is stopped.
    fn then(
        &self,
        caller: &Caller,
        pid: u32,
        op: Op,
        interrupted: &dyn Fn() -> bool,
    ) -> Result<(), CtlError> {
        /// How many polls between two looks at the caller (a /proc read each).
        const CHECK_EVERY: u32 = 10;
        match self.call(caller, pid, op)? {
            Reply::Then(Then::WaitStop { start, exit_ok }) => {
                let mut polls = 0u32;
                loop {
                    polls = polls.wrapping_add(1);
                    match self.call(caller, pid, Op::Status { start })? {
                        Reply::State(RunState::Stopped) => {
                            self.touch(pid);
                            return Ok(());
                        }
                        Reply::State(RunState::Gone) if exit_ok => return Ok(()),
                        Reply::State(RunState::Gone) => return Err(CtlError::NoProcess(pid)),
                        _ if polls.is_multiple_of(CHECK_EVERY) && interrupted() => {
                            return Err(CtlError::Interrupted);
                        }
                        _ => std::thread::sleep(POLL),
                    }
                }
            }
            _ => Ok(()),
        }
    }

    /// Sets the signal trace mask (bit n-1 for signal n). A non-zero mask traces the process
    /// (PTRACE_SEIZE, without stopping it): a signal in the mask then stops it, as if by a
    /// debugger, and any other signal is passed straight on. Zero ends the tracing, leaving
    /// the process stopped or running as it is.
    pub fn set_sigmask(&self, caller: &Caller, pid: u32, mask: u64) -> Result<(), CtlError> {
        self.call(caller, pid, Op::SetSigMask(mask)).map(drop)
    }

    /// The signal trace mask: 0 when the agent does not trace the process; every bit for a
    /// process attached through ctl (every signal stops it).
    pub fn sigmask(&self, caller: &Caller, pid: u32) -> Result<u64, CtlError> {
        match self.call(caller, pid, Op::GetSigMask)? {
            Reply::Mask(m) => Ok(m),
            _ => unreachable!("GetSigMask answers Mask"),
        }
    }

    /// Forgets the signal a stopped tracee stopped for, so it is not delivered when the
    /// process resumes. A process with no such signal has nothing to clear.
    pub fn clear_signal(&self, caller: &Caller, pid: u32) -> Result<(), CtlError> {
        self.call(caller, pid, Op::ClearSignal).map(drop)
    }

    /// Makes the process runnable: a stopped tracee resumes (untraced again if the agent
    /// traced it only for a single step), a process in a group stop gets SIGCONT, a running
    /// one is left alone. EBUSY if another debugger holds it.
    pub fn make_runnable(&self, caller: &Caller, pid: u32) -> Result<(), CtlError> {
        self.call(caller, pid, Op::MakeRunnable).map(drop)
    }

    /// Single-steps a stopped process and waits for the step to end; a process in a group
    /// stop is traced for it (and stays traced, stopped, until `make_runnable`). EBUSY if it
    /// is running.
    pub fn step_stopped(
        &self,
        caller: &Caller,
        pid: u32,
        interrupted: &dyn Fn() -> bool,
    ) -> Result<(), CtlError> {
        self.then(caller, pid, Op::StepStopped, interrupted)
    }

    /// `ctl` for async callers (HTTP): runs on the blocking pool, since it may wait.
    pub async fn ctl_async(&self, caller: Caller, pid: u32, cmd: Command) -> Result<(), CtlError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.ctl(&caller, pid, cmd))
            .await
            .unwrap_or(Err(CtlError::Gone))
    }

    /// Reads `mem` at virtual address `addr`. Reading does not need the target stopped. A
    /// read that starts on an unmapped page is EIO; one that runs into one is short.
    pub fn read_mem(
        &self,
        caller: &Caller,
        pid: u32,
        addr: u64,
        len: usize,
    ) -> Result<Vec<u8>, CtlError> {
        match self.call(caller, pid, Op::ReadMem { addr, len })? {
            Reply::Bytes(b) => Ok(b),
            _ => unreachable!("ReadMem answers Bytes"),
        }
    }

    /// Writes `mem` at `addr` (text pages included, as a debugger's breakpoints need); only
    /// while the target is stopped, EBUSY otherwise. Returns the bytes written.
    pub fn write_mem(
        &self,
        caller: &Caller,
        pid: u32,
        addr: u64,
        data: &[u8],
    ) -> Result<usize, CtlError> {
        match self.call(
            caller,
            pid,
            Op::WriteMem {
                addr,
                data: data.to_vec(),
            },
        )? {
            Reply::Written(n) => Ok(n),
            _ => unreachable!("WriteMem answers Written"),
        }
    }

    /// The main thread's `user_regs_struct` (x86-64, `REGS_SIZE` bytes). The target must be
    /// stopped: attached and stopped, or stopped by a signal (then the agent attaches for
    /// just this read and leaves it stopped).
    pub fn regs(&self, caller: &Caller, pid: u32) -> Result<Vec<u8>, CtlError> {
        self.get_regs(caller, pid, RegSet::General)
    }

    /// The main thread's `user_fpregs_struct` (`FPREGS_SIZE` bytes); as `regs`.
    pub fn fpregs(&self, caller: &Caller, pid: u32) -> Result<Vec<u8>, CtlError> {
        self.get_regs(caller, pid, RegSet::Float)
    }

    /// The main thread's debug registers dr0…dr7 (`DBREGS_SIZE` bytes, PTRACE_PEEKUSER of
    /// `u_debugreg`); as `regs`, the target must be stopped. EOPNOTSUPP off x86-64.
    pub fn dbregs(&self, caller: &Caller, pid: u32) -> Result<Vec<u8>, CtlError> {
        self.get_regs(caller, pid, RegSet::Debug)
    }

    fn get_regs(&self, caller: &Caller, pid: u32, set: RegSet) -> Result<Vec<u8>, CtlError> {
        match self.call(caller, pid, Op::GetRegs { set })? {
            Reply::Bytes(b) => Ok(b),
            _ => unreachable!("GetRegs answers Bytes"),
        }
    }

    /// Replaces the register set; `data` must be exactly `REGS_SIZE` bytes. Only while stopped.
    pub fn set_regs(&self, caller: &Caller, pid: u32, data: &[u8]) -> Result<(), CtlError> {
        self.set(caller, pid, RegSet::General, data)
    }

    /// Replaces the FP register set; exactly `FPREGS_SIZE` bytes. Only while stopped.
    pub fn set_fpregs(&self, caller: &Caller, pid: u32, data: &[u8]) -> Result<(), CtlError> {
        self.set(caller, pid, RegSet::Float, data)
    }

    /// Replaces the debug registers; exactly `DBREGS_SIZE` bytes, with dr4 and dr5 (which do
    /// not exist) zero. Only while stopped. The addresses go first and dr7 (which enables
    /// them) last; a value the kernel refuses is EINVAL, and the registers before it stay
    /// written.
    pub fn set_dbregs(&self, caller: &Caller, pid: u32, data: &[u8]) -> Result<(), CtlError> {
        self.set(caller, pid, RegSet::Debug, data)
    }

    fn set(&self, caller: &Caller, pid: u32, set: RegSet, data: &[u8]) -> Result<(), CtlError> {
        self.call(
            caller,
            pid,
            Op::SetRegs {
                set,
                data: data.to_vec(),
            },
        )
        .map(drop)
    }

    /// Posts a Plan 9 note (see `NOTES` for the names and their signals).
    pub fn note(&self, caller: &Caller, pid: u32, raw: &[u8]) -> Result<(), CtlError> {
        let sig = super::note_signal(raw)?;
        Target::open(caller, pid)?.signal(sig)
    }

    /// Posts a note to every process in `pid`'s process group (Plan 9's note group) except
    /// the writer, as the manual says. Members the caller may not control are skipped; if it
    /// may control none, EACCES.
    pub fn notepg(&self, caller: &Caller, pid: u32, raw: &[u8]) -> Result<(), CtlError> {
        let sig = super::note_signal(raw)?;
        let group = Target::open(caller, pid)?.info.pgrp;
        let mut sent = 0;
        let mut denied = None;
        for member in super::group_members(group) {
            if member == caller.pid {
                continue;
            }
            match Target::open(caller, member).and_then(|t| t.signal(sig)) {
                Ok(()) => sent += 1,
                Err(CtlError::NoProcess(_)) => {}
                Err(e) => denied = Some(e),
            }
        }
        match (sent, denied) {
            (0, Some(e)) => Err(e),
            _ => Ok(()),
        }
    }

    /// The note group (process group) id, for `noteid`.
    pub fn noteid(&self, caller: &Caller, pid: u32) -> Result<u32, CtlError> {
        Ok(Target::open(caller, pid)?.info.pgrp)
    }

    /// Detaches every tracee, leaving each as it was (stopped stays stopped, running keeps
    /// running), and stops the thread. Later calls fail with `Gone`.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Msg::Shutdown);
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

/// A process the agent traces (its main thread; see the module notes in README).
struct Tracee {
    /// With the pid, the identity of the process.
    start: u64,
    /// In a ptrace stop now (as far as the last waitpid told).
    stopped: bool,
    /// The signal it stopped for, to be delivered when it resumes (0: none).
    pending: i32,
    /// A single step is in flight: its SIGTRAP is the step's, not a signal to deliver.
    stepping: bool,
    /// `None`: attached through ctl, every signal stops it. `Some(mask)`: traced for SVR4's
    /// signal trace mask, only the signals in it stop it (0: traced for a single step only).
    sigmask: Option<u64>,
}

struct Actor {
    kernel: Option<KernelHandle>,
    tracees: HashMap<u32, Tracee>,
}

fn ptrace(req: libc::c_uint, pid: u32, addr: u64, data: u64) -> Result<libc::c_long, i32> {
    // SAFETY: errno is this thread's; PEEK requests return data in-band, so -1 is an error
    // only if errno was set by the call.
    unsafe { *libc::__errno_location() = 0 };
    // SAFETY: every request used here takes (pid, addr, data) by value or points `data` at a
    // buffer the caller owns and sized for the request.
    let r = unsafe { libc::ptrace(req, pid as libc::pid_t, addr, data) };
    // SAFETY: this thread's errno, read right after the call.
    let errno = unsafe { *libc::__errno_location() };
    if r == -1 && errno != 0 {
        Err(errno)
    } else {
        Ok(r)
    }
}

fn ptrace_err(pid: u32, what: &'static str, errno: i32) -> CtlError {
    match errno {
        libc::ESRCH => CtlError::NoProcess(pid),
        libc::EPERM => CtlError::NotPermitted(format!("{what}: the kernel refused")),
        libc::EIO | libc::EFAULT => CtlError::BadAddress(0),
        errno => CtlError::Os { what, errno },
    }
}

impl Actor {
    fn new(kernel: Option<KernelHandle>) -> Self {
        Self {
            kernel,
            tracees: HashMap::new(),
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        loop {
            let msg = if self.tracees.is_empty() {
                rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected)
            } else {
                rx.recv_timeout(REAP_EVERY)
            };
            match msg {
                Ok(Msg::Req {
                    caller,
                    pid,
                    op,
                    reply,
                }) => {
                    let _ = reply.send(self.handle(&caller, pid, op));
                }
                Ok(Msg::Shutdown) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            let pids: Vec<u32> = self.tracees.keys().copied().collect();
            for pid in pids {
                self.reap(pid);
            }
        }
        self.detach_all();
    }

    fn handle(&mut self, caller: &Caller, pid: u32, op: Op) -> Result<Reply, CtlError> {
        if let Op::Status { start } = op {
            // Only for a caller already let through by a command; the answer is a state.
            return Ok(Reply::State(self.status(pid, start)));
        }
        let target = Target::open(caller, pid)?;
        self.reap(pid);
        if let Some(t) = self.tracees.get(&pid)
            && t.start != target.info.start
        {
            // Our tracee died and the pid was reused: forget the old one.
            self.tracees.remove(&pid);
        }
        match op {
            Op::Ctl(cmd) => self.ctl(&target, cmd).map(Reply::Then),
            Op::SetSigMask(mask) => self.set_sigmask(&target, mask).map(|()| Reply::Done),
            Op::GetSigMask => Ok(Reply::Mask(
                self.tracees
                    .get(&pid)
                    .map_or(0, |t| t.sigmask.unwrap_or(u64::MAX)),
            )),
            Op::ClearSignal => {
                if let Some(t) = self.tracees.get_mut(&pid)
                    && t.stopped
                {
                    t.pending = 0;
                }
                Ok(Reply::Done)
            }
            Op::MakeRunnable => self.make_runnable(&target).map(|()| Reply::Done),
            Op::StepStopped => {
                if !self.tracees.contains_key(&pid) {
                    if target.info.state != 'T' {
                        return Err(CtlError::Busy(format!("process {pid} is not stopped")));
                    }
                    self.seize(&target, Some(0))?;
                    self.interrupt_and_wait(pid)?;
                }
                self.resume(pid, libc::PTRACE_SINGLESTEP)?;
                Ok(Reply::Then(Then::WaitStop {
                    start: target.info.start,
                    exit_ok: false,
                }))
            }
            Op::Status { .. } => unreachable!("handled above"),
            Op::ReadMem { addr, len } => read_mem(pid, addr, len.min(MEM_MAX)).map(Reply::Bytes),
            Op::WriteMem { addr, data } => self
                .with_stopped(&target, |pid| poke(pid, addr, &data))
                .map(Reply::Written),
            Op::GetRegs { set } => self
                .with_stopped(&target, |pid| get_regs(pid, set))
                .map(Reply::Bytes),
            Op::SetRegs { set, data } => {
                let want = set.size();
                if data.len() != want {
                    return Err(CtlError::Invalid(format!(
                        "a register set is {want} bytes, got {}",
                        data.len()
                    )));
                }
                self.with_stopped(&target, |pid| set_regs(pid, set, &data))
                    .map(|()| Reply::Done)
            }
        }
    }

    fn status(&mut self, pid: u32, start: u64) -> RunState {
        self.reap(pid);
        if let Some(t) = self.tracees.get(&pid)
            && t.start == start
        {
            return if t.stopped {
                RunState::Stopped
            } else {
                RunState::Running
            };
        }
        match ProcInfo::read(pid) {
            Ok(i) if i.start != start || i.exited() => RunState::Gone,
            Ok(i) if i.stopped() => RunState::Stopped,
            Ok(_) => RunState::Running,
            Err(_) => RunState::Gone,
        }
    }

    fn ctl(&mut self, target: &Target, cmd: Command) -> Result<Then, CtlError> {
        let pid = target.pid;
        let start = target.info.start;
        let wait = |exit_ok| Then::WaitStop { start, exit_ok };
        let traced = self.tracees.contains_key(&pid);
        match cmd {
            Command::WaitStop | Command::Wait => Ok(wait(true)),
            Command::Stop => {
                if traced {
                    if !self.tracees[&pid].stopped {
                        ptrace(libc::PTRACE_INTERRUPT, pid, 0, 0)
                            .map_err(|e| ptrace_err(pid, "PTRACE_INTERRUPT", e))?;
                    }
                } else if !target.info.stopped() {
                    target.signal(libc::SIGSTOP)?;
                }
                Ok(wait(false))
            }
            Command::Start | Command::StartStop => {
                if traced {
                    self.resume(pid, libc::PTRACE_CONT)?;
                } else {
                    match target.info.state {
                        'T' => target.signal(libc::SIGCONT)?,
                        't' => {
                            return Err(CtlError::Busy(format!(
                                "process {pid} is held by debugger {}",
                                target.info.tracer
                            )));
                        }
                        _ => {
                            return Err(CtlError::Busy(format!("process {pid} is not stopped")));
                        }
                    }
                }
                Ok(if cmd == Command::StartStop {
                    wait(false)
                } else {
                    Then::Done
                })
            }
            Command::Kill => target.signal(libc::SIGKILL).map(|()| Then::Done),
            Command::Signal(sig) => target.signal(sig).map(|()| Then::Done),
            Command::Hang | Command::NoHang => {
                let kernel = self.kernel.as_ref().ok_or(CtlError::NoKernel)?;
                let (set, clear) = if cmd == Command::Hang {
                    (pflag::HANG, 0)
                } else {
                    (0, pflag::HANG)
                };
                kernel
                    .lock()
                    .map_err(|_| CtlError::Gone)?
                    .set_flags(pid, set, clear)
                    .map_err(|e| {
                        tracing::warn!("setting the hang bit of {pid}: {e}");
                        CtlError::Os {
                            what: "updating the BPF process map",
                            errno: libc::EIO,
                        }
                    })?;
                Ok(Then::Done)
            }
            Command::Attach => {
                if traced {
                    return Err(CtlError::Busy(format!("process {pid} is already attached")));
                }
                self.seize(target, None)?;
                Ok(wait(false))
            }
            Command::Detach => {
                if !traced {
                    return Err(CtlError::Busy(format!("process {pid} is not attached")));
                }
                self.detach(pid, false)?;
                // FreeBSD: detach lets the target continue. A group stop (a SIGSTOP before or
                // during the attach) outlives the detach; end it too.
                if target.refresh().is_ok_and(|i| i.state == 'T') {
                    target.signal(libc::SIGCONT)?;
                }
                Ok(Then::Done)
            }
            Command::Run => {
                if !traced {
                    return Err(CtlError::Busy(format!("process {pid} is not attached")));
                }
                self.resume(pid, libc::PTRACE_CONT).map(|()| Then::Done)
            }
            Command::Step => {
                if !traced {
                    return Err(CtlError::Busy(format!("process {pid} is not attached")));
                }
                self.resume(pid, libc::PTRACE_SINGLESTEP)?;
                Ok(wait(false))
            }
        }
    }

    /// SVR4's PFCSMASK: trace for the mask, change it, or (zero) stop tracing.
    fn set_sigmask(&mut self, target: &Target, mask: u64) -> Result<(), CtlError> {
        let pid = target.pid;
        match (self.tracees.get_mut(&pid), mask) {
            (Some(_), 0) => self.detach(pid, true),
            (Some(t), mask) => {
                t.sigmask = Some(mask);
                Ok(())
            }
            (None, 0) => Ok(()),
            // Traced for the mask only: left running.
            (None, mask) => self.seize_only(target, Some(mask)),
        }
    }

    /// PTRACE_SEIZE and the bookkeeping of a new tracee, which is left running.
    fn seize_only(&mut self, target: &Target, sigmask: Option<u64>) -> Result<(), CtlError> {
        let pid = target.pid;
        if target.info.tracer != 0 {
            return Err(CtlError::Busy(format!(
                "process {pid} is traced by {}",
                target.info.tracer
            )));
        }
        ptrace(libc::PTRACE_SEIZE, pid, 0, 0).map_err(|e| match e {
            libc::EPERM => CtlError::Busy(format!("process {pid} cannot be traced now")),
            e => ptrace_err(pid, "PTRACE_SEIZE", e),
        })?;
        self.tracees.insert(
            pid,
            Tracee {
                start: target.info.start,
                stopped: false,
                pending: 0,
                stepping: false,
                sigmask,
            },
        );
        Ok(())
    }

    /// SVR4's PFCRUN.
    fn make_runnable(&mut self, target: &Target) -> Result<(), CtlError> {
        let pid = target.pid;
        match self.tracees.get(&pid) {
            Some(t) if !t.stopped => Ok(()),
            // Traced only for a step, which needed it in a group stop: nothing left to trace,
            // so let it go untraced, and end the group stop (which outlives the detach; the
            // state may not show it yet, as the detached process re-enters it).
            Some(t) if t.sigmask == Some(0) => {
                self.detach(pid, false)?;
                target.signal(libc::SIGCONT)
            }
            Some(_) => self.resume(pid, libc::PTRACE_CONT),
            None => match target.info.state {
                'T' => target.signal(libc::SIGCONT),
                't' => Err(CtlError::Busy(format!(
                    "process {pid} is held by debugger {}",
                    target.info.tracer
                ))),
                _ => Ok(()),
            },
        }
    }

    /// PTRACE_SEIZE and make the tracee stop. A process already in a group stop traps by
    /// itself as it is seized (the kernel waits for that before the seize returns); an
    /// interrupt on top of it would leave a second trap pending for after the next resume.
    fn seize(&mut self, target: &Target, sigmask: Option<u64>) -> Result<(), CtlError> {
        let pid = target.pid;
        self.seize_only(target, sigmask)?;
        if !ProcInfo::read(pid).is_ok_and(|i| i.state == 't') {
            ptrace(libc::PTRACE_INTERRUPT, pid, 0, 0)
                .map_err(|e| ptrace_err(pid, "PTRACE_INTERRUPT", e))?;
        }
        Ok(())
    }

    /// Resumes a stopped tracee, delivering the signal it stopped for (except a single step,
    /// which FreeBSD defines as delivering none).
    fn resume(&mut self, pid: u32, how: libc::c_uint) -> Result<(), CtlError> {
        let t = self.tracees.get_mut(&pid).ok_or(CtlError::NoProcess(pid))?;
        if !t.stopped {
            return Err(CtlError::Busy(format!("process {pid} is not stopped")));
        }
        let step = how == libc::PTRACE_SINGLESTEP;
        let sig = if step { 0 } else { t.pending };
        ptrace(how, pid, 0, sig as u64).map_err(|e| ptrace_err(pid, "resuming", e))?;
        t.stopped = false;
        t.stepping = step;
        if !step {
            t.pending = 0;
        }
        Ok(())
    }

    /// Collects what the kernel has to say about a tracee: stops, and its exit (which also
    /// hands the zombie on to its real parent).
    fn reap(&mut self, pid: u32) {
        loop {
            let Some(t) = self.tracees.get_mut(&pid) else {
                return;
            };
            let mut status = 0;
            // SAFETY: waitpid on a specific pid with a valid status pointer.
            let r = unsafe {
                libc::waitpid(
                    pid as libc::pid_t,
                    &mut status,
                    libc::WNOHANG | libc::__WALL,
                )
            };
            if r == 0 {
                return;
            }
            if r < 0 || libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
                // ECHILD: no longer ours (the process is gone).
                self.tracees.remove(&pid);
                return;
            }
            if libc::WIFSTOPPED(status) {
                let sig = libc::WSTOPSIG(status);
                let event = status >> 16;
                if event == 0
                    && !(sig == libc::SIGTRAP && t.stepping)
                    && let Some(mask) = t.sigmask
                    && !sig_in(mask, sig)
                {
                    // A signal the trace mask does not name: on to the process at once.
                    if ptrace(libc::PTRACE_CONT, pid, 0, sig as u64).is_err() {
                        self.tracees.remove(&pid);
                        return;
                    }
                    continue;
                }
                t.stopped = true;
                if event != 0 || (sig == libc::SIGTRAP && t.stepping) {
                    // A group stop, an interrupt, or the end of a step: nothing to deliver.
                } else {
                    t.pending = sig;
                }
                t.stepping = false;
            }
        }
    }

    /// Blocks (briefly, bounded) until the tracee is in a ptrace stop.
    fn interrupt_and_wait(&mut self, pid: u32) -> Result<(), CtlError> {
        self.reap(pid);
        if self.tracees.get(&pid).is_some_and(|t| t.stopped) {
            return Ok(());
        }
        ptrace(libc::PTRACE_INTERRUPT, pid, 0, 0)
            .map_err(|e| ptrace_err(pid, "PTRACE_INTERRUPT", e))?;
        let deadline = Instant::now() + INTERRUPT_TIMEOUT;
        loop {
            self.reap(pid);
            match self.tracees.get(&pid) {
                None => return Err(CtlError::NoProcess(pid)),
                Some(t) if t.stopped => return Ok(()),
                Some(_) if Instant::now() > deadline => {
                    return Err(CtlError::Busy(format!(
                        "process {pid} did not stop (uninterruptible sleep?)"
                    )));
                }
                Some(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }

    /// PTRACE_DETACH, the tracee continuing with the signal it stopped for. `keep_stopped`:
    /// a tracee in a ptrace stop is sent SIGSTOP first, which it takes as soon as it leaves
    /// the stop — untraced by then, so it enters an ordinary group stop before running any
    /// instruction of its own. (PTRACE_DETACH's own signal argument would not do: the kernel
    /// ignores it for interrupt and group stops.)
    fn detach(&mut self, pid: u32, keep_stopped: bool) -> Result<(), CtlError> {
        self.reap(pid);
        let was_stopped = self.tracees.get(&pid).is_some_and(|t| t.stopped);
        self.interrupt_and_wait(pid)?;
        let Some(t) = self.tracees.remove(&pid) else {
            return Err(CtlError::NoProcess(pid));
        };
        if keep_stopped && was_stopped {
            // SAFETY: kill(2). The pid cannot have been reused: our tracee, alive or a zombie
            // only we can reap, still holds it.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) };
        }
        ptrace(libc::PTRACE_DETACH, pid, 0, t.pending as u64)
            .map_err(|e| ptrace_err(pid, "PTRACE_DETACH", e))?;
        if keep_stopped && was_stopped {
            // It runs for a moment to take the SIGSTOP: answer once it is stopped again, so
            // that whoever asked next (or looks at it after shutdown) finds it stopped.
            settle_stopped(pid);
        }
        Ok(())
    }

    fn detach_all(&mut self) {
        let pids: Vec<u32> = self.tracees.keys().copied().collect();
        for pid in pids {
            match self.detach(pid, true) {
                Ok(()) => tracing::info!(pid, "detached on shutdown"),
                Err(e) => tracing::warn!(pid, "detaching on shutdown: {e}"),
            }
        }
    }

    /// Runs `f` while the target is in a ptrace stop: our stopped tracee as is, or a process
    /// in a plain group stop (SIGSTOP, `hang`) seized for just this call — it is left in its
    /// group stop afterwards, untraced. A running target is EBUSY.
    fn with_stopped<T>(
        &mut self,
        target: &Target,
        f: impl FnOnce(u32) -> Result<T, CtlError>,
    ) -> Result<T, CtlError> {
        let pid = target.pid;
        if let Some(t) = self.tracees.get(&pid) {
            if !t.stopped {
                return Err(CtlError::Busy(format!("process {pid} is not stopped")));
            }
            return f(pid);
        }
        match target.info.state {
            'T' => {}
            't' => {
                return Err(CtlError::Busy(format!(
                    "process {pid} is held by debugger {}",
                    target.info.tracer
                )));
            }
            _ => return Err(CtlError::Busy(format!("process {pid} is not stopped"))),
        }
        self.seize(target, None)?;
        let r = self.interrupt_and_wait(pid).and_then(|()| f(pid));
        // The group stop is still in effect, so the detached process goes back into it.
        if let Some(t) = self.tracees.remove(&pid) {
            let _ = ptrace(libc::PTRACE_DETACH, pid, 0, t.pending as u64);
            settle_stopped(pid);
        }
        r
    }
}

/// A process detached in a group stop is woken to re-enter it, and shows as running for a
/// moment: waits (briefly, bounded) until it is back, so that the next request (a register
/// write after a read) finds it stopped rather than EBUSY.
fn settle_stopped(pid: u32) {
    let deadline = Instant::now() + Duration::from_millis(200);
    while Instant::now() < deadline
        && ProcInfo::read(pid).is_ok_and(|i| !i.stopped() && !i.exited())
    {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Whether signal `sig` is in an SVR4 signal mask (bit n-1 for signal n).
fn sig_in(mask: u64, sig: i32) -> bool {
    (1..=64).contains(&sig) && mask & (1 << (sig - 1)) != 0
}

/// process_vm_readv, one remote iovec per page: the kernel transfers whole iovecs only, so a
/// read running into an unmapped page stops at that page instead of failing altogether.
fn read_mem(pid: u32, addr: u64, len: usize) -> Result<Vec<u8>, CtlError> {
    let page = crate::sys::page_size();
    let mut buf = vec![0u8; len];
    if len == 0 {
        return Ok(buf);
    }
    let mut remote = Vec::new();
    let mut at = addr;
    let end = addr
        .checked_add(len as u64)
        .ok_or(CtlError::BadAddress(addr))?;
    while at < end {
        let next = ((at / page) + 1) * page;
        let n = next.min(end) - at;
        remote.push(libc::iovec {
            iov_base: at as *mut libc::c_void,
            iov_len: n as usize,
        });
        at += n;
    }
    let mut done = 0usize;
    // IOV_MAX is 1024 per call.
    for chunk in remote.chunks(1024) {
        let want: usize = chunk.iter().map(|v| v.iov_len).sum();
        let local = libc::iovec {
            iov_base: buf[done..].as_mut_ptr().cast(),
            iov_len: want,
        };
        // SAFETY: the local iovec points into `buf` with room for `want` bytes; the remote
        // ones are addresses in the other process, which the kernel checks.
        let n = unsafe {
            libc::process_vm_readv(
                pid as libc::pid_t,
                &local,
                1,
                chunk.as_ptr(),
                chunk.len() as libc::c_ulong,
                0,
            )
        };
        if n < 0 {
            let errno = std::io::Error::last_os_error().raw_os_error();
            if done > 0 {
                break;
            }
            return Err(match errno {
                Some(libc::ESRCH) => CtlError::NoProcess(pid),
                Some(libc::EFAULT) | Some(libc::EIO) | Some(libc::ENOMEM) => {
                    CtlError::BadAddress(addr)
                }
                _ => CtlError::os("process_vm_readv"),
            });
        }
        done += n as usize;
        if (n as usize) < want {
            break;
        }
    }
    buf.truncate(done);
    Ok(buf)
}

/// PTRACE_POKEDATA word by word (it writes through read-only text mappings, which a
/// debugger's breakpoints need; process_vm_writev does not). Partial words at either end are
/// read first and merged. Returns the bytes written: short if it ran into an unmapped page.
fn poke(pid: u32, addr: u64, data: &[u8]) -> Result<usize, CtlError> {
    const W: u64 = 8;
    let end = addr
        .checked_add(data.len() as u64)
        .ok_or(CtlError::BadAddress(addr))?;
    let mut word_at = addr & !(W - 1);
    let mut written = 0usize;
    while word_at < end {
        let lo = addr.max(word_at);
        let hi = end.min(word_at + W);
        let fail = |errno| {
            if written > 0 {
                Ok(written)
            } else if errno == libc::ESRCH {
                Err(CtlError::NoProcess(pid))
            } else {
                Err(CtlError::BadAddress(word_at.max(addr)))
            }
        };
        let mut word = if lo == word_at && hi == word_at + W {
            [0u8; 8]
        } else {
            match ptrace(libc::PTRACE_PEEKDATA, pid, word_at, 0) {
                Ok(v) => v.to_ne_bytes(),
                Err(e) => return fail(e),
            }
        };
        let src = &data[(lo - addr) as usize..(hi - addr) as usize];
        word[(lo - word_at) as usize..(hi - word_at) as usize].copy_from_slice(src);
        if let Err(e) = ptrace(
            libc::PTRACE_POKEDATA,
            pid,
            word_at,
            u64::from_ne_bytes(word),
        ) {
            return fail(e);
        }
        written += src.len();
        word_at += W;
    }
    Ok(written)
}

fn get_regs(pid: u32, set: RegSet) -> Result<Vec<u8>, CtlError> {
    // u64 storage: both structs are 8-byte aligned.
    let mut buf = vec![0u64; set.size() / 8];
    let req = match set {
        RegSet::General => libc::PTRACE_GETREGS,
        RegSet::Float => libc::PTRACE_GETFPREGS,
        RegSet::Debug => {
            for (n, word) in buf.iter_mut().enumerate() {
                *word = peek_debugreg(pid, n)?;
            }
            return Ok(buf.iter().flat_map(|w| w.to_ne_bytes()).collect());
        }
    };
    ptrace(req, pid, 0, buf.as_mut_ptr() as u64).map_err(|e| ptrace_err(pid, "GETREGS", e))?;
    Ok(buf.iter().flat_map(|w| w.to_ne_bytes()).collect())
}

/// Where debug register `n` is in the tracee's `struct user`, for PEEKUSER and POKEUSER.
#[cfg(target_arch = "x86_64")]
fn debugreg_offset(n: usize) -> Result<u64, CtlError> {
    Ok((std::mem::offset_of!(libc::user, u_debugreg) + 8 * n) as u64)
}

#[cfg(not(target_arch = "x86_64"))]
fn debugreg_offset(_n: usize) -> Result<u64, CtlError> {
    Err(CtlError::Unsupported(
        "the debug registers are x86-64's u_debugreg",
    ))
}

fn peek_debugreg(pid: u32, n: usize) -> Result<u64, CtlError> {
    let at = debugreg_offset(n)?;
    // PEEKUSER returns the word itself; `ptrace` tells a -1 word from an error by errno.
    ptrace(libc::PTRACE_PEEKUSER, pid, at, 0)
        .map(|w| w as u64)
        .map_err(|e| ptrace_err(pid, "PTRACE_PEEKUSER", e))
}

fn set_regs(pid: u32, set: RegSet, data: &[u8]) -> Result<(), CtlError> {
    let buf: Vec<u64> = data
        .as_chunks::<8>()
        .0
        .iter()
        .map(|c| u64::from_ne_bytes(*c))
        .collect();
    let req = match set {
        RegSet::General => libc::PTRACE_SETREGS,
        RegSet::Float => libc::PTRACE_SETFPREGS,
        RegSet::Debug => return set_debugregs(pid, &buf),
    };
    ptrace(req, pid, 0, buf.as_ptr() as u64).map_err(|e| match e {
        libc::EIO | libc::EINVAL => {
            CtlError::Invalid("the kernel rejected the register set".into())
        }
        e => ptrace_err(pid, "SETREGS", e),
    })?;
    Ok(())
}

/// POKEUSER dr0…dr3 (addresses), dr6 (status), then dr7 (control, which enables the
/// addresses). dr4 and dr5 do not exist: they must be 0.
fn set_debugregs(pid: u32, regs: &[u64]) -> Result<(), CtlError> {
    if regs.get(4..6).is_none_or(|r| r.iter().any(|&w| w != 0)) {
        return Err(CtlError::Invalid(
            "dr4 and dr5 do not exist and must be 0".into(),
        ));
    }
    for n in [0, 1, 2, 3, 6, 7] {
        let value = regs.get(n).copied().unwrap_or(0);
        ptrace(libc::PTRACE_POKEUSER, pid, debugreg_offset(n)?, value).map_err(|e| match e {
            libc::EIO | libc::EINVAL => CtlError::Invalid(format!(
                "the kernel rejected dr{n} = {value:#x} (a kernel address, or a bad dr7)"
            )),
            e => ptrace_err(pid, "PTRACE_POKEUSER", e),
        })?;
    }
    Ok(())
}

//! The control thread: the one thread in the agent that calls ptrace(2) or waits for a
//! tracee. The kernel makes the thread that attached a tracee its only tracer, so every
//! request that may touch a tracee comes here over a channel and is answered on a reply
//! channel. The thread never blocks on a target: commands that must wait for a stop
//! (`stop`, `attach`, `step`, `waitstop`, …) issue their action here and the *caller* polls
//! `Status` until the target is stopped, so one slow target never holds up another caller.

use std::{
    collections::HashMap,
    sync::mpsc,
    time::{Duration, Instant},
};

use bpfproc_common::pflag;
use nix::{
    errno::Errno,
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use super::{
    Caller, Command, CtlError, KernelHandle, ProcInfo, Target,
    ptrace::{
        RegSet, Resume, get_regs, interrupt, poke, ptrace_err, read_mem, resume, seize, set_regs,
    },
};

/// A tracee that exits or stops is noticed (and, if it exited, reaped so that its real parent
/// can reap it in turn) at most this late while the thread is otherwise idle.
const REAP_EVERY: Duration = Duration::from_millis(20);
/// How long a tracee may take to reach a ptrace stop after PTRACE_INTERRUPT before we give up
/// (a task in an uninterruptible sleep cannot stop until it wakes).
const INTERRUPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest single `mem` read; FUSE reads are at most 128 KiB anyway.
const MEM_MAX: usize = 16 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RunState {
    Running,
    Stopped,
    Gone,
}

/// What a command needs after its immediate action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Then {
    Done,
    /// Poll until stopped; an exit instead is success (`waitstop`) or ENOENT (`stop`, …).
    WaitStop {
        start: u64,
        exit_ok: bool,
    },
}

pub(super) enum Op {
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

pub(super) enum Reply {
    Then(Then),
    Mask(u64),
    State(RunState),
    Bytes(Vec<u8>),
    Written(usize),
    Done,
}

pub(super) enum Msg {
    Req {
        caller: Caller,
        pid: u32,
        op: Op,
        reply: mpsc::SyncSender<Result<Reply, CtlError>>,
    },
    Shutdown,
}

impl Op {
    /// Whether carrying it out may change the process (its state, memory or registers).
    pub(super) fn changes(&self) -> bool {
        !matches!(
            self,
            Op::Status { .. } | Op::ReadMem { .. } | Op::GetRegs { .. } | Op::GetSigMask
        )
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

pub(super) struct Actor {
    kernel: Option<KernelHandle>,
    tracees: HashMap<u32, Tracee>,
}

impl Actor {
    pub(super) fn new(kernel: Option<KernelHandle>) -> Self {
        Self {
            kernel,
            tracees: HashMap::new(),
        }
    }

    pub(super) fn run(mut self, rx: mpsc::Receiver<Msg>) {
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
                self.resume(pid, Resume::Step)?;
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
                        interrupt(pid).map_err(|e| ptrace_err(pid, "PTRACE_INTERRUPT", e))?;
                    }
                } else if !target.info.stopped() {
                    target.signal(libc::SIGSTOP)?;
                }
                Ok(wait(false))
            }
            Command::Start | Command::StartStop => {
                if traced {
                    self.resume(pid, Resume::Cont)?;
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
                // A lock a panicking pass poisoned does not make the process gone.
                crate::kernel::lock(kernel)
                    .set_flags(pid, set, clear)
                    .map_err(|e| {
                        tracing::warn!("setting the hang bit of {pid}: {e}");
                        CtlError::Os {
                            what: "updating the BPF process map",
                            errno: Errno::EIO,
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
                self.resume(pid, Resume::Cont).map(|()| Then::Done)
            }
            Command::Step => {
                if !traced {
                    return Err(CtlError::Busy(format!("process {pid} is not attached")));
                }
                self.resume(pid, Resume::Step)?;
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
        seize(pid).map_err(|e| match e {
            Errno::EPERM => CtlError::Busy(format!("process {pid} cannot be traced now")),
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
            Some(_) => self.resume(pid, Resume::Cont),
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
            interrupt(pid).map_err(|e| ptrace_err(pid, "PTRACE_INTERRUPT", e))?;
        }
        Ok(())
    }

    /// Resumes a stopped tracee, delivering the signal it stopped for (except a single step,
    /// which FreeBSD defines as delivering none).
    fn resume(&mut self, pid: u32, how: Resume) -> Result<(), CtlError> {
        let t = self.tracees.get_mut(&pid).ok_or(CtlError::NoProcess(pid))?;
        if !t.stopped {
            return Err(CtlError::Busy(format!("process {pid} is not stopped")));
        }
        let step = how == Resume::Step;
        let sig = if step { 0 } else { t.pending };
        resume(how, pid, sig).map_err(|e| ptrace_err(pid, "resuming", e))?;
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
            // Not nix's waitpid: its `WaitStatus` has no real-time signals, and would fail (the
            // status lost) for a tracee stopped by one.
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
                    if resume(Resume::Cont, pid, sig).is_err() {
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
        interrupt(pid).map_err(|e| ptrace_err(pid, "PTRACE_INTERRUPT", e))?;
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
            // The pid cannot have been reused: our tracee, alive or a zombie only we can reap,
            // still holds it.
            let _ = kill(Pid::from_raw(pid as libc::pid_t), Signal::SIGSTOP);
        }
        resume(Resume::Detach, pid, t.pending).map_err(|e| ptrace_err(pid, "PTRACE_DETACH", e))?;
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
            let _ = resume(Resume::Detach, pid, t.pending);
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

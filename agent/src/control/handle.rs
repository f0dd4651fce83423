//! `Control`, the cheap, cloneable handle other threads (FUSE, HTTP) hold: each method checks
//! and parses what it can, sends the request to the control thread (`actor.rs`) and waits for
//! the answer, polling for a stop where a command asks for one.

use std::{
    sync::{Arc, Mutex, OnceLock, mpsc},
    thread::JoinHandle,
};

use super::{
    Caller, Command, CtlError, KernelHandle, POLL, Target,
    actor::{Actor, Msg, Op, Reply, RunState, Then},
    ptrace::RegSet,
};

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

//! The QNX Neutrino (procnto) personality's pure parts: `exefile`, the devctl commands the
//! `ctl` file accepts as ioctls, and the access rules for `as` and `ctl` — modes from the
//! mount's umask, `chmod` that can drop permissions but never regain them, and one writer at a
//! time (EBUSY for the second). `docs/personalities/qnx.md` has what maps and what differs.

use std::collections::HashMap;

use std::mem::size_of;

use super::{
    ViewError,
    svr4::{IOC_NONE, IOC_READ, IOC_WRITE, ioc},
};
use crate::table::Process;

/// `/proc/PID/exefile`: the executable's path as text (no newline, as procnto gives it). A
/// kernel thread has no executable: ENOENT.
pub fn exefile(p: &Process) -> Result<Vec<u8>, ViewError> {
    p.exe_shown().map(Into::into).ok_or(ViewError::NoFile)
}

/// The ioctl "type" byte of the devctl requests (QNX's `_DCMD_PROC` class is `P`).
pub const DEVCTL_TYPE: u8 = b'P';

const fn dcmd(dir: u32, nr: u32, size: usize) -> u32 {
    ioc(dir, DEVCTL_TYPE, nr, size)
}

/// Stop the process and wait until it is stopped.
pub const DCMD_PROC_STOP: u32 = dcmd(IOC_NONE, 1, 0);
/// Wait until the process is stopped (or has exited).
pub const DCMD_PROC_WAITSTOP: u32 = dcmd(IOC_NONE, 2, 0);
/// Make a stopped process run.
pub const DCMD_PROC_RUN: u32 = dcmd(IOC_NONE, 3, 0);
/// Send the signal in the argument (an `int`).
pub const DCMD_PROC_SIGNAL: u32 = dcmd(IOC_WRITE, 4, size_of::<i32>());
/// The general registers (`user_regs_struct`).
pub const DCMD_PROC_GETGREG: u32 = dcmd(IOC_READ, 5, size_of::<libc::user_regs_struct>());
pub const DCMD_PROC_SETGREG: u32 = dcmd(IOC_WRITE, 6, size_of::<libc::user_regs_struct>());
/// The floating-point registers (`user_fpregs_struct`).
pub const DCMD_PROC_GETFPREG: u32 = dcmd(IOC_READ, 7, size_of::<libc::user_fpregs_struct>());
pub const DCMD_PROC_SETFPREG: u32 = dcmd(IOC_WRITE, 8, size_of::<libc::user_fpregs_struct>());

/// The devctl commands `ctl` serves, as ioctls (FUSE forwards ioctl, not QNX's devctl). The
/// rest of `DCMD_PROC_*` (MAPINFO, PAGEDATA, BREAK, EVENT, THREADCTL, TIDSTATUS, CURTHREAD,
/// SET_FLAG, CLEAR_FLAG, …) need procnto's structures or have no Linux source: EOPNOTSUPP.
pub const DEVCTL_SUBSET: &[(&str, u32)] = &[
    ("DCMD_PROC_STOP", DCMD_PROC_STOP),
    ("DCMD_PROC_WAITSTOP", DCMD_PROC_WAITSTOP),
    ("DCMD_PROC_RUN", DCMD_PROC_RUN),
    ("DCMD_PROC_SIGNAL", DCMD_PROC_SIGNAL),
    ("DCMD_PROC_GETGREG", DCMD_PROC_GETGREG),
    ("DCMD_PROC_SETGREG", DCMD_PROC_SETGREG),
    ("DCMD_PROC_GETFPREG", DCMD_PROC_GETFPREG),
    ("DCMD_PROC_SETFPREG", DCMD_PROC_SETFPREG),
];

/// A decoded devctl.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Devctl {
    Stop,
    WaitStop,
    Run,
    Signal(i32),
    GetRegs { fp: bool },
    SetRegs { fp: bool, data: Vec<u8> },
}

impl Devctl {
    /// Whether the command changes the process: QNX asks for a descriptor open for writing
    /// for those (EBADF otherwise), which is what makes the one-writer rule mean something.
    pub fn changes_process(&self) -> bool {
        !matches!(self, Devctl::WaitStop | Devctl::GetRegs { .. })
    }
}

/// Decodes an ioctl on `ctl`: a command outside the subset is EOPNOTSUPP, a bad argument
/// (a signal outside 1..SIGRTMAX, a register set of the wrong size) EINVAL.
pub fn devctl(cmd: u32, arg: &[u8]) -> Result<Devctl, i32> {
    let regs = |fp: bool| {
        let want = if fp {
            size_of::<libc::user_fpregs_struct>()
        } else {
            size_of::<libc::user_regs_struct>()
        };
        if arg.len() == want {
            Ok(Devctl::SetRegs {
                fp,
                data: arg.to_vec(),
            })
        } else {
            Err(libc::EINVAL)
        }
    };
    match cmd {
        DCMD_PROC_STOP => Ok(Devctl::Stop),
        DCMD_PROC_WAITSTOP => Ok(Devctl::WaitStop),
        DCMD_PROC_RUN => Ok(Devctl::Run),
        DCMD_PROC_SIGNAL => {
            let sig = arg
                .try_into()
                .map(i32::from_ne_bytes)
                .map_err(|_| libc::EINVAL)?;
            if (1..=libc::SIGRTMAX()).contains(&sig) {
                Ok(Devctl::Signal(sig))
            } else {
                Err(libc::EINVAL)
            }
        }
        DCMD_PROC_GETGREG => Ok(Devctl::GetRegs { fp: false }),
        DCMD_PROC_GETFPREG => Ok(Devctl::GetRegs { fp: true }),
        DCMD_PROC_SETGREG => regs(false),
        DCMD_PROC_SETFPREG => regs(true),
        _ => Err(libc::EOPNOTSUPP),
    }
}

/// The per-process files whose permissions are managed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum File {
    As,
    Ctl,
}

/// Why an access rule refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// `chmod` asked for a permission the file does not have now. EPERM.
    #[error("permissions dropped on as/ctl cannot be regained")]
    Regain,
    /// Another process has the file open for writing. EBUSY.
    #[error("another process has it open for writing")]
    Busy,
}

impl AccessError {
    pub fn errno(self) -> i32 {
        match self {
            AccessError::Regain => libc::EPERM,
            AccessError::Busy => libc::EBUSY,
        }
    }
}

/// One `as` or `ctl` file of one process (identified by pid and start time, so a reused pid
/// starts afresh).
#[derive(Clone, Copy, Debug)]
struct Node {
    mode: u16,
    /// The process with the file open for writing, and how many such opens it has.
    writer: Option<(u32, u32)>,
}

/// The access state of every `as` and `ctl` file of one mount.
#[derive(Debug)]
pub struct Access {
    /// Mode of a file nobody has chmod'ed: procnto's 0666 less the mount's umask.
    base: u16,
    nodes: HashMap<(u32, u64, File), Node>,
}

impl Access {
    pub fn new(umask: u16) -> Self {
        Self {
            base: 0o666 & !umask & 0o777,
            nodes: HashMap::new(),
        }
    }

    fn node(&mut self, pid: u32, start: u64, file: File) -> &mut Node {
        let base = self.base;
        self.nodes.entry((pid, start, file)).or_insert(Node {
            mode: base,
            writer: None,
        })
    }

    /// The permission bits the file has now.
    pub fn mode(&self, pid: u32, start: u64, file: File) -> u16 {
        self.nodes
            .get(&(pid, start, file))
            .map_or(self.base, |n| n.mode)
    }

    /// `chmod`: the new mode may only keep or drop bits, never add one back (EPERM, and the
    /// mode is unchanged). Who may chmod at all (the owner, root) is the file system's check.
    pub fn chmod(
        &mut self,
        pid: u32,
        start: u64,
        file: File,
        mode: u16,
    ) -> Result<(), AccessError> {
        let n = self.node(pid, start, file);
        let mode = mode & 0o777;
        if mode & !n.mode != 0 {
            return Err(AccessError::Regain);
        }
        n.mode = mode;
        Ok(())
    }

    /// An open by process `opener`. Reading is always allowed here (the mode check is the file
    /// system's); writing is allowed unless another process has the file open for writing.
    pub fn open(
        &mut self,
        pid: u32,
        start: u64,
        file: File,
        opener: u32,
        write: bool,
    ) -> Result<(), AccessError> {
        if !write {
            return Ok(());
        }
        let n = self.node(pid, start, file);
        match &mut n.writer {
            Some((who, count)) if *who == opener => *count += 1,
            Some(_) => return Err(AccessError::Busy),
            None => n.writer = Some((opener, 1)),
        }
        Ok(())
    }

    /// The release of an open that `open` allowed.
    pub fn close(&mut self, pid: u32, start: u64, file: File, opener: u32, write: bool) {
        if !write {
            return;
        }
        let key = (pid, start, file);
        let base = self.base;
        if let Some(n) = self.nodes.get_mut(&key)
            && let Some((who, count)) = &mut n.writer
            && *who == opener
        {
            *count -= 1;
            if *count == 0 {
                n.writer = None;
                // Nothing left to remember: the entry would only grow the map.
                if n.mode == base {
                    self.nodes.remove(&key);
                }
            }
        }
    }

    /// Drops what is kept for a process that is gone.
    pub fn forget(&mut self, pid: u32, start: u64) {
        self.nodes.retain(|&(p, s, _), _| (p, s) != (pid, start));
    }

    /// Drops what is kept for every process `alive` says is gone, unless someone still has
    /// its file open for writing (the close will find it).
    pub fn retain_alive(&mut self, alive: impl Fn(u32, u64) -> bool) {
        self.nodes
            .retain(|&(p, s, _), n| n.writer.is_some() || alive(p, s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::test_process;

    #[test]
    fn exefile_is_the_path_as_text() {
        let mut p = test_process();
        assert_eq!(exefile(&p).unwrap(), b"/usr/bin/sleep");
        p.exe = None;
        assert_eq!(exefile(&p).unwrap_err().errno(), libc::ENOENT);
    }

    #[test]
    fn devctls_decode_and_the_rest_are_eopnotsupp() {
        assert_eq!(devctl(DCMD_PROC_STOP, &[]), Ok(Devctl::Stop));
        assert_eq!(
            devctl(DCMD_PROC_SIGNAL, &10i32.to_ne_bytes()),
            Ok(Devctl::Signal(10))
        );
        assert_eq!(
            devctl(DCMD_PROC_SIGNAL, &0i32.to_ne_bytes()),
            Err(libc::EINVAL)
        );
        assert_eq!(devctl(DCMD_PROC_SETGREG, &[0; 8]), Err(libc::EINVAL));
        assert_eq!(
            devctl(DCMD_PROC_SETGREG & !0xff | 99, &[]),
            Err(libc::EOPNOTSUPP)
        );
        assert!(Devctl::Stop.changes_process());
        assert!(!Devctl::GetRegs { fp: false }.changes_process());
        // Every code is distinct, encodes its argument's size, and is of type 'P'.
        let mut codes: Vec<u32> = DEVCTL_SUBSET.iter().map(|d| d.1).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), DEVCTL_SUBSET.len());
        assert_eq!(
            super::super::svr4::ioc_size(DCMD_PROC_GETGREG),
            size_of::<libc::user_regs_struct>()
        );
        assert_eq!(DCMD_PROC_SIGNAL, 0x4004_5004);
    }

    #[test]
    fn retain_alive_keeps_open_writers() {
        let mut a = Access::new(0);
        a.chmod(10, 5, File::As, 0o600).unwrap();
        a.open(11, 5, File::Ctl, 100, true).unwrap();
        a.retain_alive(|_, _| false);
        assert_eq!(a.mode(10, 5, File::As), 0o666, "forgotten");
        assert_eq!(a.open(11, 5, File::Ctl, 200, true), Err(AccessError::Busy));
    }

    #[test]
    fn umask_sets_the_starting_mode() {
        assert_eq!(Access::new(0o022).mode(1, 5, File::As), 0o644);
        assert_eq!(Access::new(0o077).mode(1, 5, File::Ctl), 0o600);
        assert_eq!(Access::new(0).mode(1, 5, File::Ctl), 0o666);
    }

    #[test]
    fn chmod_drops_permissions_for_good() {
        let mut a = Access::new(0o022);
        a.chmod(1, 5, File::As, 0o600).unwrap();
        assert_eq!(a.mode(1, 5, File::As), 0o600);
        assert_eq!(
            a.chmod(1, 5, File::As, 0o644),
            Err(AccessError::Regain),
            "a dropped bit cannot come back"
        );
        assert_eq!(
            a.mode(1, 5, File::As),
            0o600,
            "a refused chmod changes nothing"
        );
        // Dropping one bit while adding another is refused too.
        assert_eq!(a.chmod(1, 5, File::As, 0o402), Err(AccessError::Regain));
        a.chmod(1, 5, File::As, 0o400).unwrap();
        assert_eq!(a.mode(1, 5, File::As), 0o400);
        // The other file and the other process are untouched.
        assert_eq!(a.mode(1, 5, File::Ctl), 0o644);
        assert_eq!(a.mode(2, 5, File::As), 0o644);
        // A new process on the same pid starts from the umask again.
        assert_eq!(a.mode(1, 6, File::As), 0o644);
        assert_eq!(AccessError::Regain.errno(), libc::EPERM);
    }

    #[test]
    fn only_one_process_writes_as_or_ctl() {
        let mut a = Access::new(0o022);
        a.open(10, 5, File::As, 100, true).unwrap();
        assert_eq!(a.open(10, 5, File::As, 200, true), Err(AccessError::Busy));
        assert_eq!(AccessError::Busy.errno(), libc::EBUSY);
        // Readers, the same writer again, and the other file are not affected.
        a.open(10, 5, File::As, 200, false).unwrap();
        a.open(10, 5, File::As, 100, true).unwrap();
        a.open(10, 5, File::Ctl, 200, true).unwrap();
        // The writer's two opens must both close before another may write.
        a.close(10, 5, File::As, 100, true);
        assert_eq!(a.open(10, 5, File::As, 200, true), Err(AccessError::Busy));
        // A close by someone who is not the writer does not release it.
        a.close(10, 5, File::As, 200, true);
        assert_eq!(a.open(10, 5, File::As, 200, true), Err(AccessError::Busy));
        a.close(10, 5, File::As, 100, true);
        a.open(10, 5, File::As, 200, true).unwrap();
        a.close(10, 5, File::As, 200, true);
        a.close(10, 5, File::Ctl, 200, true);
        assert!(a.nodes.is_empty(), "closed and never chmod'ed: forgotten");
    }

    #[test]
    fn forget_clears_a_gone_process() {
        let mut a = Access::new(0);
        a.chmod(10, 5, File::Ctl, 0o600).unwrap();
        a.open(10, 5, File::Ctl, 100, true).unwrap();
        a.forget(10, 5);
        assert_eq!(a.mode(10, 5, File::Ctl), 0o666);
        a.open(10, 5, File::Ctl, 200, true).unwrap();
    }
}

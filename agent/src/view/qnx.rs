//! The QNX Neutrino (procnto) personality's pure parts: `exefile`, the devctl commands the
//! `ctl` file accepts as ioctls, and the access rules for `as` and `ctl` — modes from the
//! mount's umask, `chmod` that can drop permissions but never regain them, and one writer at a
//! time (EBUSY for the second). `docs/personalities/qnx.md` has what maps and what differs.

use std::collections::HashMap;

use super::ViewError;
use crate::table::Process;

/// `/proc/PID/exefile`: the executable's path as text (no newline, as procnto gives it). A
/// kernel thread has no executable: ENOENT.
pub fn exefile(p: &Process) -> Result<Vec<u8>, ViewError> {
    p.exe.clone().ok_or(ViewError::NoFile)
}

/// The QNX devctl commands `ctl` serves (as ioctls, since FUSE forwards ioctl and not
/// devctl), and the control operation each one is. The rest of `DCMD_PROC_*` (MAPINFO,
/// PAGEDATA, BREAK, EVENT, THREADCTL, TIDSTATUS, CURTHREAD, SET_FLAG, CLEAR_FLAG, …) have no
/// Linux source or need procnto's structures: EOPNOTSUPP.
pub const DEVCTL_SUBSET: &[(&str, &str)] = &[
    ("DCMD_PROC_STOP", "ctl stop"),
    ("DCMD_PROC_WAITSTOP", "ctl waitstop"),
    (
        "DCMD_PROC_RUN",
        "ctl start (run for a process the agent traces)",
    ),
    ("DCMD_PROC_SIGNAL", "send the signal in the argument"),
    ("DCMD_PROC_GETGREG", "regs, read"),
    ("DCMD_PROC_SETGREG", "regs, write"),
    ("DCMD_PROC_GETFPREG", "fpregs, read"),
    ("DCMD_PROC_SETFPREG", "fpregs, write"),
];

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
        if let Some(n) = self.nodes.get_mut(&(pid, start, file))
            && let Some((who, count)) = &mut n.writer
            && *who == opener
        {
            *count -= 1;
            if *count == 0 {
                n.writer = None;
            }
        }
    }

    /// Drops what is kept for a process that is gone.
    pub fn forget(&mut self, pid: u32, start: u64) {
        self.nodes.retain(|&(p, s, _), _| (p, s) != (pid, start));
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

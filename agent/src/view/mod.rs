//! The proc view: pure functions from a process snapshot to the bytes of a file. The HTTP API
//! and the FUSE adapter both call these; neither formats text itself.

pub mod freebsd;
pub mod json;
pub mod linux;
#[allow(dead_code)] // wired into the mount by fs/
pub mod maps;
pub mod netbsd;
#[allow(dead_code)] // wired into the mount by fs/
pub mod plan9;
#[allow(dead_code)] // wired into the mount by fs/
pub mod qnx;
#[allow(dead_code)] // wired into the mount by fs/
pub mod svr4;

use crate::table::Process;
#[cfg(test)]
use bpfproc_common::TaskRecord;

/// Why a file cannot be rendered, with the errno a file system would return.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("no such process")]
    NoProcess,
    #[error("no such file")]
    NoFile,
    #[error("reading the kernel's file: {0}")]
    Io(#[from] std::io::Error),
    /// The kernel refused a file of a process that is still there: its errno, as it is
    /// (`environ` of a kernel thread is ESRCH on this kernel, not a vanished process).
    #[error("the kernel's file: {0}")]
    Kernel(std::io::Error),
    /// The manual describes this file but Linux has nothing to fill it with; the file says so
    /// rather than inventing data. EOPNOTSUPP (ENOTSUP is the same number on Linux).
    #[error("not supported on Linux: {0}")]
    Unsupported(&'static str),
}

impl ViewError {
    pub fn errno(&self) -> i32 {
        match self {
            ViewError::NoProcess | ViewError::NoFile => libc::ENOENT,
            ViewError::Unsupported(_) => libc::EOPNOTSUPP,
            ViewError::Io(e) => match e.raw_os_error() {
                // The process went away between the lookup and the read.
                Some(libc::ESRCH) | None => libc::ENOENT,
                Some(n) => n,
            },
            ViewError::Kernel(e) => e.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

/// Host facts the renderers need, read once at start.
#[derive(Clone, Copy, Debug)]
pub struct Host {
    /// Realtime ns at boot (what /proc/stat calls btime, in ns).
    pub boot_epoch_ns: u64,
    pub clock_ticks: u64,
    pub page_size: u64,
}

impl Host {
    pub fn detect() -> Self {
        let boot = crate::sys::clock::boot_ns();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Self {
            boot_epoch_ns: now.saturating_sub(boot),
            clock_ticks: crate::sys::clock::clock_ticks(),
            page_size: crate::sys::page_size(),
        }
    }

    pub fn ticks(&self, ns: u64) -> u64 {
        ns / (1_000_000_000 / self.clock_ticks)
    }

    pub fn epoch_secs(&self, boot_ns: u64) -> f64 {
        (self.boot_epoch_ns + boot_ns) as f64 / 1e9
    }
}

/// The Linux state letter from `__state` and `exit_state` (fs/proc/array.c task_state_array).
pub fn state_letter(state: u32, exit_state: u32) -> char {
    const TASK_REPORT: u32 = 0x7f;
    const TASK_IDLE: u32 = 0x402;
    const TASK_RTLOCK_WAIT: u32 = 0x1000;
    let mut s = (state | exit_state) & TASK_REPORT;
    if state & TASK_IDLE == TASK_IDLE {
        s = TASK_REPORT + 1;
    }
    if state & TASK_RTLOCK_WAIT != 0 {
        s = 2;
    }
    let index = 32 - s.leading_zeros();
    b"RSDTtXZPI"[index as usize] as char
}

pub fn state_name(letter: char) -> &'static str {
    match letter {
        'R' => "R (running)",
        'S' => "S (sleeping)",
        'D' => "D (disk sleep)",
        'T' => "T (stopped)",
        't' => "t (tracing stop)",
        'X' => "X (dead)",
        'Z' => "Z (zombie)",
        'P' => "P (parked)",
        _ => "I (idle)",
    }
}

/// The state of a process: its leader's, or zombie once it has exited.
pub fn process_state(p: &Process) -> char {
    match p.leader() {
        Some(t) => state_letter(t.state, t.exit_state),
        None if p.exit.is_some() => 'Z',
        None => 'S',
    }
}

/// A process and its leader's record for the renderers' golden tests: `sleep 1000` started by
/// uid 1000 two seconds after boot, one thread, everything else zero unless a test sets it.
#[cfg(test)]
pub(crate) fn test_process() -> Process {
    // SAFETY: TaskRecord is plain integers and arrays; all-zero is a valid value.
    let mut t: TaskRecord = unsafe { std::mem::zeroed() };
    t.tid = 4242;
    t.tgid = 4242;
    t.ppid = 4200;
    t.pgid = 4242;
    t.sid = 4200;
    t.uid = 1000;
    t.euid = 1000;
    t.gid = 1000;
    t.egid = 1000;
    t.nr_threads = 1;
    t.has_mm = 1;
    t.state = 1;
    t.prio = 120;
    t.static_prio = 120;
    t.start_boottime = 2_000_000_000;
    t.comm[..5].copy_from_slice(b"sleep");
    t.rlim = [u64::MAX; 2 * bpfproc_common::RLIM_NLIMITS];
    Process {
        pid: 4242,
        ppid: 4200,
        comm: b"sleep".to_vec(),
        uid: 1000,
        gid: 1000,
        euid: 1000,
        egid: 1000,
        start_boottime: t.start_boottime,
        exe: Some(b"/usr/bin/sleep".to_vec()),
        cmdline: b"sleep\x001000\x00".to_vec(),
        cmdline_truncated: false,
        kthread: false,
        origin: crate::table::Origin::Event,
        exec_ts: Some(t.start_boottime),
        exit: None,
        tasks: crate::table::Tasks::new(&[t]),
        refreshed_at: 0,
        event_ts: 0,
        needs_identity: false,
        event_cgroup_id: 0,
        rev: 0,
    }
}

/// The leader's record of a `test_process`, to change a field: written back when dropped.
#[cfg(test)]
pub(crate) fn leader_mut(p: &mut Process) -> LeaderMut<'_> {
    let tasks = p.tasks.to_vec();
    LeaderMut { p, tasks }
}

#[cfg(test)]
pub(crate) struct LeaderMut<'a> {
    p: &'a mut Process,
    tasks: Vec<TaskRecord>,
}

#[cfg(test)]
impl std::ops::Deref for LeaderMut<'_> {
    type Target = TaskRecord;

    fn deref(&self) -> &TaskRecord {
        &self.tasks[0]
    }
}

#[cfg(test)]
impl std::ops::DerefMut for LeaderMut<'_> {
    fn deref_mut(&mut self) -> &mut TaskRecord {
        &mut self.tasks[0]
    }
}

#[cfg(test)]
impl Drop for LeaderMut<'_> {
    fn drop(&mut self) {
        self.p.tasks = crate::table::Tasks::new(&self.tasks);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_letters_match_linux() {
        assert_eq!(state_letter(0, 0), 'R');
        assert_eq!(state_letter(1, 0), 'S');
        assert_eq!(state_letter(2, 0), 'D');
        assert_eq!(state_letter(0x104, 0), 'T');
        assert_eq!(state_letter(8, 0), 't');
        assert_eq!(state_letter(0, 32), 'Z');
        assert_eq!(state_letter(0x40, 0), 'P');
        assert_eq!(state_letter(0x402, 0), 'I');
    }
}

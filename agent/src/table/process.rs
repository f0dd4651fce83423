//! A process as the table keeps it, and the facts derived from it that every reader needs the
//! same way: its name, its CPU totals, its executable's path.

use std::sync::Arc;

use bpfproc_common::{PF_KTHREAD, ProcEntry, TaskInfo, TaskRecord, cstr, pflag};

use super::Tasks;

/// What the table takes from a task's record besides its numbers: who it is, and the ids and
/// name no event may have given it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Facts {
    pub tid: u32,
    pub tgid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub euid: u32,
    pub egid: u32,
    pub pf_flags: u32,
    pub start_boottime: u64,
    pub comm: [u8; 16],
}

impl Facts {
    pub fn of(r: &TaskRecord) -> Self {
        Self {
            tid: r.tid,
            tgid: r.tgid,
            ppid: r.ppid,
            uid: r.uid,
            gid: r.gid,
            euid: r.euid,
            egid: r.egid,
            pf_flags: r.pf_flags,
            start_boottime: r.start_boottime,
            comm: r.comm,
        }
    }
}

/// How a live entry came to be known.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// Seen forking (or exec'ing) while the agent ran.
    Event,
    /// Found by the task iterator: it predates the agent, or its fork record was lost.
    Iterator,
    /// Invisible to the iterator and read from the kernel's /proc instead (see README).
    Procfs,
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitInfo {
    /// Boot-clock ns.
    pub ts: u64,
    /// Raw wait status; `None` when the exit record was lost and the end was found by a rescan.
    pub status: Option<u32>,
    pub utime_ns: u64,
    pub stime_ns: u64,
}

impl ExitInfo {
    pub fn exit_code(&self) -> Option<i32> {
        let s = self.status?;
        (s & 0x7f == 0).then_some(((s >> 8) & 0xff) as i32)
    }

    pub fn signal(&self) -> Option<i32> {
        let s = self.status?;
        (s & 0x7f != 0).then_some((s & 0x7f) as i32)
    }

    pub fn core_dumped(&self) -> bool {
        self.status.is_some_and(|s| s & 0x80 != 0)
    }
}

#[derive(Clone, Debug)]
pub struct Process {
    pub pid: u32,
    pub ppid: u32,
    pub comm: Vec<u8>,
    pub uid: u32,
    pub gid: u32,
    pub euid: u32,
    pub egid: u32,
    /// With `pid`, the identity of the process: a reused pid has a different start.
    pub start_boottime: u64,
    pub exe: Option<Vec<u8>>,
    /// NUL-separated argv as in /proc/PID/cmdline.
    pub cmdline: Vec<u8>,
    pub cmdline_truncated: bool,
    pub kthread: bool,
    pub origin: Origin,
    /// Boot-clock ns of the last exec seen, if any.
    pub exec_ts: Option<u64>,
    /// Set once the process has exited (a zombie until it is reaped).
    pub exit: Option<ExitInfo>,
    /// The latest iterator record of every thread, the leader first (encoded: `Tasks`).
    pub tasks: Tasks,
    /// Boot-clock ns of the snapshot that last changed `tasks` (later ones found them equal).
    pub refreshed_at: u64,
    /// Boot-clock ns of the last event applied to this entry.
    pub event_ts: u64,
    /// Whether identity (argv, exe) still needs filling from outside the event stream.
    pub needs_identity: bool,
    /// The cgroup v2 id the latest fork, exec or exit record read (0: none did).
    pub event_cgroup_id: u64,
    /// Changes whenever this entry changes (unique across the table's life): caches of rendered
    /// output key on (pid, rev).
    pub rev: u64,
}

pub(super) fn next_rev() -> u64 {
    static REV: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    REV.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Mutable access to a live entry, marking it changed.
pub(super) fn edit(slot: &mut Arc<Process>) -> &mut Process {
    let p = Arc::make_mut(slot);
    p.rev = next_rev();
    p
}

impl Process {
    pub(super) fn from_task(info: &TaskInfo, ts: u64, origin: Origin) -> Self {
        Self {
            pid: info.tgid,
            ppid: info.ppid,
            comm: cstr(&info.comm).to_vec(),
            uid: info.uid,
            gid: info.gid,
            euid: info.euid,
            egid: info.egid,
            start_boottime: info.start_boottime,
            exe: None,
            cmdline: Vec::new(),
            cmdline_truncated: false,
            kthread: info.pf_flags & PF_KTHREAD != 0,
            origin,
            exec_ts: None,
            exit: None,
            tasks: Tasks::default(),
            refreshed_at: 0,
            event_ts: ts,
            needs_identity: false,
            event_cgroup_id: 0,
            rev: next_rev(),
        }
    }

    pub(crate) fn from_record(rec: &TaskRecord, ts: u64, origin: Origin) -> Self {
        Self::from_facts(&Facts::of(rec), ts, origin)
    }

    pub(crate) fn from_facts(rec: &Facts, ts: u64, origin: Origin) -> Self {
        Self {
            pid: rec.tgid,
            ppid: rec.ppid,
            comm: cstr(&rec.comm).to_vec(),
            uid: rec.uid,
            gid: rec.gid,
            euid: rec.euid,
            egid: rec.egid,
            start_boottime: rec.start_boottime,
            exe: None,
            cmdline: Vec::new(),
            cmdline_truncated: false,
            kthread: rec.pf_flags & PF_KTHREAD != 0,
            origin,
            exec_ts: None,
            exit: None,
            tasks: Tasks::default(),
            refreshed_at: 0,
            event_ts: ts,
            needs_identity: rec.pf_flags & PF_KTHREAD == 0,
            event_cgroup_id: 0,
            rev: next_rev(),
        }
    }

    /// The leader's latest iterator record.
    pub fn leader(&self) -> Option<TaskRecord> {
        self.tasks.first()
    }

    /// The id of its cgroup v2: its exit record's once it has exited, else the latest iterator
    /// pass's (which sees a move into another cgroup, which has no event), else its fork or
    /// exec record's, so a process that ended before any pass read it still has one; 0 when
    /// none has said.
    pub fn cgroup_id(&self) -> u64 {
        let pass = self
            .leader()
            .filter(|t| t.start_boottime == self.start_boottime)
            .map_or(0, |t| t.cgroup_id);
        let exit_record = self.exit.is_some_and(|e| e.status.is_some());
        if self.event_cgroup_id != 0 && (pass == 0 || exit_record) {
            self.event_cgroup_id
        } else {
            pass
        }
    }

    /// Notes the cgroup a fork, exec or exit record read; 0 (not read) keeps what was known.
    pub(super) fn saw_cgroup(&mut self, id: u64) {
        if id != 0 {
            self.event_cgroup_id = id;
        }
    }

    /// The executable's path as `/proc/PID/exe` shows it now: the path resolved at exec, with
    /// ` (deleted)` once the latest numbers show it unlinked.
    pub fn exe_shown(&self) -> Option<std::borrow::Cow<'_, [u8]>> {
        const DELETED: &[u8] = b" (deleted)";
        let exe = self.exe.as_deref()?;
        if exe.ends_with(DELETED) || self.leader().is_none_or(|l| l.exe_deleted == 0) {
            return Some(exe.into());
        }
        Some([exe, DELETED].concat().into())
    }

    pub fn argv(&self) -> impl Iterator<Item = &[u8]> {
        let trimmed = self.cmdline.strip_suffix(b"\0").unwrap_or(&self.cmdline);
        trimmed
            .split(|&b| b == 0)
            .filter(move |_| !self.cmdline.is_empty())
    }

    pub(super) fn apply_entry(&mut self, e: &ProcEntry) {
        self.comm = cstr(&e.task.comm).to_vec();
        self.uid = e.task.uid;
        self.gid = e.task.gid;
        self.euid = e.task.euid;
        self.egid = e.task.egid;
        self.ppid = e.task.ppid;
        if let Some(exe) = exe_path(e) {
            self.exe = Some(exe);
        }
        if e.task.flags & pflag::EXECED != 0 || e.args_len > 0 {
            self.cmdline = e.args[..(e.args_len as usize).min(e.args.len())].to_vec();
            self.cmdline_truncated = e.task.flags & pflag::ARGS_TRUNCATED != 0;
            self.needs_identity = false;
        }
    }
}

impl Process {
    /// The name /proc shows: its leader's, or the event-tracked comm before the first
    /// snapshot.
    pub fn name(&self) -> Vec<u8> {
        match self.leader() {
            Some(t) if t.start_boottime == self.start_boottime && cstr(&t.comm) == self.comm => {
                task_name(&t)
            }
            _ => self.comm.clone(),
        }
    }

    /// CPU time and faults of task `t`, or with `whole` of the whole thread group (`t` its
    /// leader) as `thread_group_cputime` sums them.
    pub fn totals(&self, t: &TaskRecord, whole: bool) -> Totals {
        totals(self, t, whole)
    }
}

/// A task's name as /proc shows it (fs/proc/array.c `proc_task_name`): a workqueue worker's
/// comm with its current work, a kernel thread's untruncated name, or comm.
pub fn task_name(t: &TaskRecord) -> Vec<u8> {
    use bpfproc_common::cstr;
    const PF_WQ_WORKER: u32 = 0x20;
    let comm = cstr(&t.comm);
    let desc = cstr(&t.wq_desc);
    let full = cstr(&t.full_name);
    let mut name = if t.pf_flags & PF_WQ_WORKER != 0 && !desc.is_empty() {
        let mut n = comm.to_vec();
        n.push(if t.wq_busy != 0 { b'+' } else { b'-' });
        n.extend_from_slice(desc);
        n
    } else if !full.is_empty() {
        full.to_vec()
    } else {
        comm.to_vec()
    };
    // The kernel formats into a 64-byte buffer.
    name.truncate(63);
    name
}

/// CPU time and faults of one task, or of the whole thread group as `thread_group_cputime`
/// sums them; utime/stime already scaled as the kernel reports them.
pub struct Totals {
    pub utime: u64,
    pub stime: u64,
    pub min_flt: u64,
    pub maj_flt: u64,
    pub gtime: u64,
}

fn totals(p: &Process, t: &TaskRecord, whole: bool) -> Totals {
    if !whole {
        let (utime, stime) = shown(
            (t.tid, t.start_boottime, false),
            |prev| cputime_adjust(t.sum_exec_runtime, t.utime, t.stime, prev.0, prev.1),
            (t.prev_utime, t.prev_stime),
        );
        return Totals {
            utime,
            stime,
            min_flt: t.min_flt,
            maj_flt: t.maj_flt,
            gtime: t.gtime,
        };
    }
    let (mut ut, mut st, mut rt) = (t.sig_utime, t.sig_stime, t.sig_sum_sched_runtime);
    let mut out = Totals {
        utime: 0,
        stime: 0,
        min_flt: t.sig_min_flt,
        maj_flt: t.sig_maj_flt,
        gtime: 0,
    };
    for th in p.tasks.iter() {
        ut += th.utime;
        st += th.stime;
        rt += th.sum_exec_runtime;
        out.min_flt += th.min_flt;
        out.maj_flt += th.maj_flt;
        out.gtime += th.gtime;
    }
    (out.utime, out.stime) = shown(
        (t.tgid, p.start_boottime, true),
        |prev| cputime_adjust(rt, ut, st, prev.0, prev.1),
        (t.sig_prev_utime, t.sig_prev_stime),
    );
    out
}

/// The (utime, stime) split last shown for each task or whole thread group, by (id, start,
/// whole). The kernel's `cputime_adjust` stores what it returns as the next call's `prev`, so
/// /proc's times never go backwards; the agent reads `prev` without writing it, so it keeps
/// what it showed itself and adjusts against the later of the two.
type ShownKey = (u32, u64, bool);

#[derive(Default)]
pub struct ShownTimes(std::sync::Mutex<std::collections::HashMap<ShownKey, (u64, u64)>>);

/// The agent's memory of shown times: set once by the daemon (`keep_shown_cpu_times`), so the
/// renderers stay pure functions of their input everywhere else (tests, golden files).
static SHOWN: std::sync::OnceLock<ShownTimes> = std::sync::OnceLock::new();

/// From now on, CPU times are shown monotonic per task, as procfs shows them.
pub fn keep_shown_cpu_times() {
    let _ = SHOWN.set(ShownTimes::default());
}

impl ShownTimes {
    /// Past this many tasks the memory starts afresh (a task seen once more may then step
    /// back by a tick, once).
    const KEPT: usize = 1 << 18;

    fn adjust(
        &self,
        key: ShownKey,
        adjust: impl FnOnce((u64, u64)) -> (u64, u64),
        kernel_prev: (u64, u64),
    ) -> (u64, u64) {
        let Ok(mut map) = self.0.lock() else {
            return adjust(kernel_prev);
        };
        let prev = match map.get(&key) {
            Some(&mine) if mine.0 + mine.1 > kernel_prev.0 + kernel_prev.1 => mine,
            _ => kernel_prev,
        };
        let now = adjust(prev);
        if map.len() >= Self::KEPT {
            map.clear();
        }
        map.insert(key, now);
        now
    }
}

fn shown(
    key: ShownKey,
    adjust: impl FnOnce((u64, u64)) -> (u64, u64),
    kernel_prev: (u64, u64),
) -> (u64, u64) {
    match SHOWN.get() {
        Some(s) => s.adjust(key, adjust, kernel_prev),
        None => adjust(kernel_prev),
    }
}

/// kernel/sched/cputime.c `cputime_adjust`: scale the tick-sampled utime/stime so they add up
/// to the precise runtime, never going below what was reported before (`prev`).
pub fn cputime_adjust(rtime: u64, utime: u64, stime: u64, prev_u: u64, prev_s: u64) -> (u64, u64) {
    if prev_u + prev_s >= rtime {
        return (prev_u, prev_s);
    }
    let mut stime = if stime == 0 {
        0
    } else if utime == 0 {
        rtime
    } else {
        ((u128::from(stime) * u128::from(rtime)) / u128::from(stime + utime)) as u64
    }
    .min(rtime);
    if stime < prev_s {
        stime = prev_s;
    }
    let mut utime = rtime - stime;
    if utime < prev_u {
        utime = prev_u;
        stime = rtime - utime;
    }
    (utime, stime)
}

/// The executable an exec record names: the path the kernel resolved (`/proc/PID/exe`'s
/// text, ` (deleted)` included), or else the path exec was given.
fn exe_path(e: &ProcEntry) -> Option<Vec<u8>> {
    let raw = &e.filename[..(e.filename_len as usize).min(e.filename.len())];
    if e.task.flags & pflag::EXE_RESOLVED == 0 {
        let name = cstr(raw);
        return (!name.is_empty()).then(|| name.to_vec());
    }
    // Leaf first, each component NUL-terminated.
    let mut path = Vec::with_capacity(raw.len() + 1);
    for part in raw.split(|&b| b == 0).filter(|p| !p.is_empty()).rev() {
        path.push(b'/');
        path.extend_from_slice(part);
    }
    if path.is_empty() {
        path.push(b'/');
    }
    if e.task.flags & pflag::EXE_DELETED != 0 {
        path.extend_from_slice(b" (deleted)");
    }
    Some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resolved_exe_path_is_reassembled_root_first() {
        // SAFETY: plain integers and arrays.
        let mut e: ProcEntry = unsafe { std::mem::zeroed() };
        let raw = b"sleep\0bin\0usr\0";
        e.filename[..raw.len()].copy_from_slice(raw);
        e.filename_len = raw.len() as u32;
        e.task.flags = pflag::EXECED | pflag::EXE_RESOLVED;
        assert_eq!(exe_path(&e).as_deref(), Some(b"/usr/bin/sleep".as_slice()));
        e.task.flags |= pflag::EXE_DELETED;
        assert_eq!(
            exe_path(&e).as_deref(),
            Some(b"/usr/bin/sleep (deleted)".as_slice())
        );
        // Not resolved: the path as exec was given it.
        let raw = b"./mysleep\0";
        e.filename[..raw.len()].copy_from_slice(raw);
        e.filename_len = raw.len() as u32;
        e.task.flags = pflag::EXECED;
        assert_eq!(exe_path(&e).as_deref(), Some(b"./mysleep".as_slice()));
    }

    #[test]
    fn cputime_adjust_scales_to_runtime_and_respects_prev() {
        // Ticks say 3:1 user:system; the precise runtime is 80.
        assert_eq!(cputime_adjust(80, 30, 10, 0, 0), (60, 20));
        // Never below what was reported before.
        assert_eq!(cputime_adjust(80, 30, 10, 10, 30), (50, 30));
        assert_eq!(cputime_adjust(80, 30, 10, 70, 20), (70, 20));
        assert_eq!(cputime_adjust(80, 0, 0, 0, 0), (80, 0));
    }

    #[test]
    fn shown_cpu_times_never_go_backwards() {
        // Two samples whose tick split moves towards user time: adjusted alone, the second
        // would show less system time than the first.
        let memory = ShownTimes::default();
        let key = (999_999, 1, false);
        let first = memory.adjust(
            key,
            |prev| cputime_adjust(100, 10, 90, prev.0, prev.1),
            (0, 0),
        );
        assert_eq!(first, (10, 90));
        let alone = cputime_adjust(110, 60, 40, 0, 0);
        assert!(alone.1 < first.1, "the case the memory is for: {alone:?}");
        let second = memory.adjust(
            key,
            |prev| cputime_adjust(110, 60, 40, prev.0, prev.1),
            (0, 0),
        );
        assert!(
            second.0 >= first.0 && second.1 >= first.1,
            "{first:?} then {second:?}"
        );
        assert_eq!(second.0 + second.1, 110);
    }
}

//! The mirrored process table: a pure state machine fed by kernel events and iterator
//! snapshots. It owns every rule about ordering (exit before exec, fork of a forgotten parent,
//! pid reuse, a snapshot racing live events); the actor in `state` only feeds it.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use bpfproc_common::{TaskRecord, cstr};

use crate::kernel::KernelEvent;

mod live;
mod process;
mod tasks;
pub use live::{Chunk, Live};
pub use process::{
    ExitInfo, Facts, Origin, Process, ShownTimes, Totals, cputime_adjust, keep_shown_cpu_times,
    task_name,
};
use process::{edit, next_rev};
pub use tasks::Tasks;

/// A process that has exited: what /proc can no longer show.
pub type Exited = Arc<Process>;

/// Counters the table keeps about itself.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct TableCounters {
    pub forks: u64,
    pub execs: u64,
    pub exits: u64,
    pub reaps: u64,
    pub renames: u64,
    /// Processes found by the first snapshot.
    pub backfilled: u64,
    /// Processes a later snapshot found that no event had announced (a lost fork record).
    pub found_by_rescan: u64,
    /// Processes that vanished without an exit record (found gone by a snapshot).
    pub lost_exits: u64,
    /// Live entries replaced because their pid now belongs to a newer process.
    pub pid_reuse: u64,
    pub snapshots: u64,
    /// Live processes a snapshot did not show (kept, and read from /proc from then on).
    pub iterator_misses: u64,
    /// Live entries whose name a snapshot corrected, their argv and exe re-read: an exec or
    /// rename record was lost (or was still in the ring when the snapshot was applied).
    pub identity_repairs: u64,
}

/// A change worth telling subscribers about.
#[derive(Clone, Debug)]
pub enum Change {
    Fork(Arc<Process>),
    Exec(Arc<Process>),
    Exit(Arc<Process>),
}

pub struct ProcessTable {
    live: Live,
    exited: VecDeque<Exited>,
    exited_cap: usize,
    /// pid → start of processes that are gone, so a snapshot taken before they went cannot
    /// bring them back. Pruned once a snapshot taken after they went has been applied.
    tombstones: HashMap<u32, (u64, u64)>,
    pub counters: TableCounters,
    version: u64,
}

impl ProcessTable {
    pub fn new(exited_cap: usize) -> Self {
        Self {
            live: Live::default(),
            exited: VecDeque::with_capacity(exited_cap.min(65536)),
            exited_cap: exited_cap.max(1),
            tombstones: HashMap::new(),
            counters: TableCounters::default(),
            version: 0,
        }
    }

    /// Bumped on every change; caches of rendered output key on it.
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn live(&self) -> &Live {
        &self.live
    }

    pub fn get(&self, pid: u32) -> Option<&Arc<Process>> {
        self.live.get(&pid)
    }

    pub fn exited(&self) -> &VecDeque<Exited> {
        &self.exited
    }

    pub fn apply(&mut self, ev: &KernelEvent) -> Option<Change> {
        self.version += 1;
        match ev {
            KernelEvent::Fork {
                ts,
                forker,
                task,
                cgroup_id,
            } => {
                self.counters.forks += 1;
                let pid = task.tgid;
                self.retire_if_reused(pid, task.start_boottime, *ts);
                self.tombstones.remove(&pid);
                let mut p = Process::from_task(task, *ts, Origin::Event);
                p.saw_cgroup(*cgroup_id);
                // The child is a copy of the forking process's image.
                if let Some(parent) = self.live.get(forker) {
                    p.exe.clone_from(&parent.exe);
                    p.cmdline.clone_from(&parent.cmdline);
                    p.cmdline_truncated = parent.cmdline_truncated;
                    p.exec_ts = parent.exec_ts;
                    p.needs_identity = parent.needs_identity;
                } else {
                    p.needs_identity = !p.kthread;
                }
                let p = Arc::new(p);
                self.live.insert(pid, p.clone());
                Some(Change::Fork(p))
            }
            KernelEvent::Exec {
                ts,
                entry,
                cgroup_id,
            } => {
                self.counters.execs += 1;
                let pid = entry.task.tgid;
                self.retire_if_reused(pid, entry.task.start_boottime, *ts);
                self.tombstones.remove(&pid);
                let slot = self.live.get_or_insert_with(pid, || {
                    Arc::new(Process::from_task(&entry.task, *ts, Origin::Event))
                });
                let p = edit(slot);
                p.apply_entry(entry);
                p.saw_cgroup(*cgroup_id);
                p.exec_ts = Some(*ts);
                p.event_ts = *ts;
                Some(Change::Exec(slot.clone()))
            }
            KernelEvent::Exit {
                ts,
                task,
                cgroup_id,
            } => {
                self.counters.exits += 1;
                let pid = task.tgid;
                self.retire_if_reused(pid, task.start_boottime, *ts);
                let exit = ExitInfo {
                    ts: *ts,
                    status: Some(task.exit_code),
                    utime_ns: task.utime,
                    stime_ns: task.stime,
                };
                let p = match self.live.get_mut(&pid) {
                    Some(slot) => {
                        let p = edit(slot);
                        p.exit = Some(exit);
                        p.saw_cgroup(*cgroup_id);
                        p.event_ts = *ts;
                        p.comm = cstr(&task.comm).to_vec();
                        p.ppid = task.ppid;
                        slot.clone()
                    }
                    None => {
                        self.tombstones.insert(pid, (task.start_boottime, *ts));
                        // A snapshot may have found it gone before this record arrived and
                        // retired it with an unknown status: the record has the real one.
                        if let Some(slot) = self.exited.iter_mut().rev().find(|e| {
                            e.pid == pid
                                && e.start_boottime == task.start_boottime
                                && e.exit.is_some_and(|x| x.status.is_none())
                        }) {
                            let mut p = (**slot).clone();
                            p.exit = Some(exit);
                            p.saw_cgroup(*cgroup_id);
                            p.rev = next_rev();
                            *slot = Arc::new(p);
                            self.counters.lost_exits = self.counters.lost_exits.saturating_sub(1);
                            return Some(Change::Exit(slot.clone()));
                        }
                        // Started before the agent and not yet backfilled: record what the
                        // exit tells us, and make sure the backfill does not revive it.
                        let mut p = Process::from_task(task, *ts, Origin::Event);
                        p.exit = Some(exit);
                        p.saw_cgroup(*cgroup_id);
                        Arc::new(p)
                    }
                };
                self.push_exited(p.clone());
                Some(Change::Exit(p))
            }
            KernelEvent::Free {
                ts,
                pid,
                start_boottime,
            } => {
                self.counters.reaps += 1;
                if let Some(p) = self.live.get(pid)
                    && p.start_boottime == *start_boottime
                {
                    let p = self.live.remove(pid).expect("just looked up");
                    if p.exit.is_none() {
                        self.counters.lost_exits += 1;
                        self.push_exited(with_unknown_exit(&p, *ts));
                    }
                }
                self.tombstones.insert(*pid, (*start_boottime, *ts));
                None
            }
            KernelEvent::Rename {
                ts,
                pid,
                start_boottime,
                comm,
            } => {
                self.counters.renames += 1;
                if let Some(slot) = self.live.get_mut(pid)
                    && slot.start_boottime == *start_boottime
                {
                    let p = edit(slot);
                    p.comm = cstr(comm).to_vec();
                    p.event_ts = *ts;
                }
                None
            }
        }
    }

    /// A live entry for `pid` that started at another time is a previous process whose end we
    /// never saw: retire it so two processes' data never mix.
    fn retire_if_reused(&mut self, pid: u32, start: u64, ts: u64) {
        if let Some(old) = self.live.get(&pid)
            && old.start_boottime != start
        {
            let old = self.live.remove(&pid).expect("just looked up");
            self.counters.pid_reuse += 1;
            if old.exit.is_none() {
                self.counters.lost_exits += 1;
                self.push_exited(with_unknown_exit(&old, ts));
            }
        }
    }

    fn push_exited(&mut self, p: Arc<Process>) {
        if self.exited.len() == self.exited_cap {
            self.exited.pop_front();
        }
        self.exited.push_back(p);
    }

    /// Applies a task-iterator snapshot taken starting at boot-clock `started`.
    ///
    /// Updates the numbers of every known process, adds processes no event announced, and
    /// drops entries the snapshot proves gone. Entries touched by an event after `started` are
    /// newer than the snapshot and win. Returns the pids whose argv/exe must be read from
    /// outside (processes that predate the agent).
    pub fn apply_snapshot(
        &mut self,
        started: u64,
        records: &[TaskRecord],
        first: bool,
    ) -> Vec<u32> {
        self.apply_snapshot_checked(started, records, first, &|_, _| false)
    }

    /// As `apply_snapshot`, asking `alive(pid, start)` before declaring a process gone that the
    /// snapshot did not show and no exit record retired: the iterator has been seen to miss
    /// live tasks here (pid 1 of this sandbox, always; others rarely). Such a process stays,
    /// and its numbers come from /proc from then on.
    pub fn apply_snapshot_checked(
        &mut self,
        started: u64,
        records: &[TaskRecord],
        first: bool,
        alive: &dyn Fn(u32, u64) -> bool,
    ) -> Vec<u32> {
        let found = found(records);
        let seen: Vec<u32> = found.iter().map(|f| f.pid).collect();
        let needs = self.apply_found(started, found, &seen, first, alive);
        self.forget_tombstones_before(started);
        needs
    }

    /// As `apply_snapshot_checked`, for a pass whose records were grouped by process
    /// (`found`) and may leave out processes that would not change (`Found::changes`): `seen`
    /// is every process the pass found, in pid order.
    pub fn apply_found(
        &mut self,
        started: u64,
        found: Vec<Found>,
        seen: &[u32],
        first: bool,
        alive: &dyn Fn(u32, u64) -> bool,
    ) -> Vec<u32> {
        self.version += 1;
        self.counters.snapshots += 1;
        let mut needs_identity = Vec::new();
        for f in found {
            let (pid, leader) = (f.pid, f.leader);
            if let Some(&(start, _)) = self.tombstones.get(&pid)
                && start == leader.start_boottime
            {
                continue;
            }
            match self.live.get(&pid) {
                Some(slot) if slot.start_boottime == leader.start_boottime => {
                    // Looked at before it is changed: most are not, and a change copies the
                    // entry's chunk away from the snapshots that share it.
                    if let Some(retake) = Retake::of(slot, &f.leader, f.tasks.encoded(), started) {
                        let slot = self.live.get_mut(&pid).expect("just found");
                        if retake.apply(slot, f.tasks, started) {
                            needs_identity.push(pid);
                            self.counters.identity_repairs += 1;
                        }
                    }
                }
                Some(slot) if slot.event_ts >= started => {
                    // The live entry is a newer process than the snapshot saw.
                }
                _ => {
                    self.retire_if_reused(pid, leader.start_boottime, started);
                    let origin = Origin::Iterator;
                    let mut p = Process::from_facts(&leader, started, origin);
                    p.tasks = f.tasks;
                    p.refreshed_at = started;
                    if p.needs_identity {
                        needs_identity.push(pid);
                    }
                    if first {
                        self.counters.backfilled += 1;
                    } else {
                        self.counters.found_by_rescan += 1;
                    }
                    self.live.insert(pid, Arc::new(p));
                }
            }
        }
        // Whatever the snapshot did not see, and no event touched since it began, is gone.
        // Both lists are in pid order: walked side by side, and an entry is looked at only
        // if the pass did not see its pid.
        let mut gone: Vec<u32> = Vec::new();
        let mut seen_at = 0;
        for chunk in self.live.chunks() {
            for (pid, p) in chunk.pids().iter().zip(chunk.processes()) {
                seen_at += seen[seen_at..].partition_point(|s| s < pid);
                if seen.get(seen_at) != Some(pid)
                    && p.event_ts < started
                    && p.origin != Origin::Procfs
                {
                    gone.push(*pid);
                }
            }
        }
        for pid in gone {
            if let Some(slot) = self.live.get_mut(&pid)
                && slot.exit.is_none()
                && alive(pid, slot.start_boottime)
            {
                edit(slot).origin = Origin::Procfs;
                self.counters.iterator_misses += 1;
                continue;
            }
            let p = self.live.remove(&pid).expect("listed above");
            self.tombstones.insert(pid, (p.start_boottime, started));
            if p.exit.is_none() {
                self.counters.lost_exits += 1;
                self.push_exited(with_unknown_exit(&p, started));
            }
        }
        needs_identity
    }

    /// Forgets the processes retired before boot-clock `t`. A tombstone keeps a read begun
    /// before its process was reaped from bringing it back, so `t` is the start of the oldest
    /// read whose result may still come: two passes can be under way at once (the periodic one
    /// and a refresh of what ran that fell back to one), and the later one's result may come
    /// first.
    pub fn forget_tombstones_before(&mut self, t: u64) {
        self.tombstones.retain(|_, (_, at)| *at >= t);
    }

    /// Applies what a refresh begun at boot-clock `started` read of the processes that ran
    /// since the last one: each process's tasks, read on its own (`found`). Processes not read
    /// keep their numbers, which did not move. A process read empty, or as another process
    /// (it ended, or its pid was reused), is left to the events, which tell which. Returns the
    /// pids whose argv and exe must be read again (as `apply_snapshot`).
    pub fn apply_reads(&mut self, started: u64, reads: Vec<Found>) -> Vec<u32> {
        let mut needs_identity = Vec::new();
        for f in reads {
            let pid = f.pid;
            let Some(slot) = self.live.get(&pid) else {
                continue;
            };
            if f.leader.tid != pid || f.leader.start_boottime != slot.start_boottime {
                continue;
            }
            let Some(retake) = Retake::of(slot, &f.leader, f.tasks.encoded(), started) else {
                continue;
            };
            self.version += 1;
            let slot = self.live.get_mut(&pid).expect("just found");
            if retake.apply(slot, f.tasks, started) {
                needs_identity.push(pid);
                self.counters.identity_repairs += 1;
            }
        }
        needs_identity
    }

    /// Adds or refreshes a process the iterator cannot see, from a record built out of /proc.
    pub fn upsert_procfs(&mut self, tasks: &[TaskRecord], at: u64) -> bool {
        self.version += 1;
        let Some(rec) = tasks.first() else {
            return false;
        };
        let pid = rec.tgid;
        let fresh =
            !matches!(self.live.get(&pid), Some(p) if p.start_boottime == rec.start_boottime);
        if fresh {
            let mut p = Process::from_record(rec, at, Origin::Procfs);
            p.tasks = Tasks::new(tasks);
            p.refreshed_at = at;
            self.live.insert(pid, Arc::new(p));
            self.counters.backfilled += 1;
        } else if let Some(slot) = self.live.get_mut(&pid) {
            let p = edit(slot);
            p.ppid = rec.ppid;
            p.tasks = Tasks::new(tasks);
            p.refreshed_at = at;
        }
        fresh
    }

    /// Removes a /proc-sourced entry that has disappeared from /proc.
    pub fn drop_procfs(&mut self, pid: u32, at: u64) {
        if let Some(p) = self.live.get(&pid)
            && p.origin == Origin::Procfs
        {
            let p = self.live.remove(&pid).expect("just looked up");
            self.version += 1;
            self.counters.lost_exits += 1;
            self.push_exited(with_unknown_exit(&p, at));
        }
    }

    /// Fills argv and exe for a process that predates the agent.
    pub fn set_identity(&mut self, pid: u32, start: u64, cmdline: Vec<u8>, exe: Option<Vec<u8>>) {
        if let Some(slot) = self.live.get_mut(&pid)
            && slot.start_boottime == start
            && slot.needs_identity
        {
            self.version += 1;
            let p = edit(slot);
            p.cmdline = cmdline;
            if p.exe.is_none() {
                p.exe = exe;
            }
            p.needs_identity = false;
        }
    }
}

/// `base` with the numbers of a one-process iterator read taken at `at` (the records of its
/// threads in any order), as a whole-table pass would have left it; `None` if the records are
/// of another process (none: it ended; another start: its pid was reused), which only the
/// table, with its events, can tell apart. An unchanged process comes back as `base` itself,
/// keeping its revision and so everything already rendered from it.
pub fn refreshed(
    base: &Arc<Process>,
    mut records: Vec<TaskRecord>,
    at: u64,
) -> Option<Arc<Process>> {
    let pid = base.pid;
    records.sort_unstable_by_key(|r| (r.tid != pid, r.tid));
    let leader = *records.first()?;
    if leader.tgid != pid || leader.start_boottime != base.start_boottime {
        return None;
    }
    if leader.tid == pid {
        for t in &mut records[1..] {
            inherit_group_fields(t, &leader);
        }
    }
    let ids = record_ids(&leader);
    let comm = cstr(&leader.comm);
    // As in a pass: a name no event gave is taken from the kernel, but argv and exe wait for
    // the next pass, which re-reads them.
    let renamed = !base.kthread && comm != base.comm.as_slice();
    let tasks = Tasks::new(&records);
    if !renamed && ids == process_ids(base) && base.tasks == tasks {
        return Some(base.clone());
    }
    let mut p = Process::clone(base);
    p.rev = next_rev();
    (p.ppid, p.uid, p.gid, p.euid, p.egid) = ids;
    if renamed {
        p.comm = comm.to_vec();
    }
    p.tasks = tasks;
    p.refreshed_at = at;
    Some(Arc::new(p))
}

/// What laying a process's tasks, read at or after boot-clock `started`, over its entry (a
/// pass or a refresh of what ran) changes in it, besides the tasks.
struct Retake {
    /// Reparenting has no event, nor has a change of ids between execs: the read is the
    /// source.
    ids: Option<Ids>,
    /// A name the events never gave: an exec (or rename) record was lost, or is still in the
    /// ring. Either way the read is newer, and argv and exe are re-read so a lost exec does
    /// not leave the parent's image on the child for good.
    renamed: Option<Vec<u8>>,
}

impl Retake {
    /// `None` if a read (its leader's facts, its tasks' encoding) leaves `p` as it is.
    fn of(p: &Process, leader: &Facts, encoded: &[u8], started: u64) -> Option<Self> {
        if p.refreshed_at > started {
            // Read again since (by a refresh of what ran, while this pass went on): newer.
            return None;
        }
        let ids = facts_ids(leader);
        let older = p.event_ts < started;
        let ids = (older && process_ids(p) != ids).then_some(ids);
        let comm = cstr(&leader.comm);
        let renamed = (older && !p.kthread && comm != p.comm.as_slice()).then(|| comm.to_vec());
        // Most processes sleep between two reads: leaving them untouched keeps their
        // revision, so everything rendered from them stays valid.
        if ids.is_none() && renamed.is_none() && p.tasks.encoded() == encoded {
            return None;
        }
        Some(Self { ids, renamed })
    }

    /// Applies it, and `tasks`, to `slot`; returns whether argv and exe must be read again.
    fn apply(self, slot: &mut Arc<Process>, tasks: Tasks, started: u64) -> bool {
        let p = edit(slot);
        if let Some(ids) = self.ids {
            (p.ppid, p.uid, p.gid, p.euid, p.egid) = ids;
        }
        let renamed = self.renamed.is_some();
        if let Some(comm) = self.renamed {
            p.comm = comm;
            // set_identity fills exe only where none is known.
            p.exe = None;
            p.needs_identity = true;
        }
        p.tasks = tasks;
        p.refreshed_at = started;
        renamed
    }
}

/// One process as a read of the kernel found it: its tasks, the leader first and each thread
/// with its leader's thread-group fields, encoded; and its leader's facts.
pub struct Found {
    pub pid: u32,
    pub leader: Facts,
    pub tasks: Tasks,
}

impl Found {
    /// Whether laying a process's read (its leader's facts and its tasks' encoding) over `p`
    /// (the entry of the same pid, if any, in a table a pass begun at `started` is applied to)
    /// would change anything: a pass that leaves out what would not spares its apply, on the
    /// table's actor, a look at every process.
    pub fn changes(p: Option<&Arc<Process>>, leader: &Facts, encoded: &[u8], started: u64) -> bool {
        match p {
            Some(p) if p.start_boottime == leader.start_boottime => {
                Retake::of(p, leader, encoded, started).is_some()
            }
            _ => true,
        }
    }
}

/// A read's records, each encoded as it arrives into one buffer: at 100,000 tasks a pass kept
/// 115 MB of raw records until it ended; encoded, ~25 MB, in two allocations that go back to
/// the kernel when it is done (not 100,000 small ones that stay in the heap). Grouped by process
/// at the end (`found_where`).
#[derive(Default)]
pub struct Gather {
    bytes: Vec<u8>,
    /// Each record's facts and where its encoding (as a process of one task) ends in `bytes`.
    items: Vec<(Facts, usize)>,
}

impl Gather {
    pub fn push(&mut self, r: &TaskRecord) {
        tasks::encode_into(&mut self.bytes, std::slice::from_ref(r));
        self.items.push((Facts::of(r), self.bytes.len()));
    }

    /// Records gathered.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The processes (by pid) the records are of.
    pub fn tgids(&self) -> impl Iterator<Item = u32> + '_ {
        self.items.iter().map(|(f, _)| f.tgid)
    }

    /// The records by process, in pid order, keeping only the processes `keep` says: given
    /// the pid, the leader's facts and the process's encoding, as `Found::changes` takes them
    /// (a pass keeps those the table would change).
    pub fn found_where(self, mut keep: impl FnMut(u32, &Facts, &[u8]) -> bool) -> Vec<Found> {
        let Gather { bytes, items } = self;
        let span = |i: usize| {
            let start = if i == 0 { 0 } else { items[i - 1].1 };
            &bytes[start..items[i].1]
        };
        // (tgid, a thread, tid, index): a process's records together, its leader first.
        let mut order: Vec<(u32, bool, u32, usize)> = items
            .iter()
            .enumerate()
            .map(|(i, (f, _))| (f.tgid, f.tid != f.tgid, f.tid, i))
            .collect();
        order.sort_unstable();
        let mut out = Vec::new();
        let mut group = Vec::new();
        let mut rest = order.as_slice();
        while let Some(&(pid, _, _, first)) = rest.first() {
            let n = rest.iter().take_while(|o| o.0 == pid).count();
            let (run, tail) = rest.split_at(n);
            rest = tail;
            // The leader's, or the first thread's when the read did not have the leader.
            let leader = items[first].0;
            let encoded: &[u8] = if n == 1 {
                span(first)
            } else {
                let mut threads: Vec<TaskRecord> = run
                    .iter()
                    .flat_map(|o| tasks::decode_all(span(o.3)))
                    .collect();
                if threads[0].tid == pid {
                    let l = threads[0];
                    for t in &mut threads[1..] {
                        inherit_group_fields(t, &l);
                    }
                }
                group.clear();
                tasks::encode_into(&mut group, &threads);
                &group
            };
            if keep(pid, &leader, encoded) {
                out.push(Found {
                    pid,
                    leader,
                    tasks: Tasks::from_encoded(encoded),
                });
            }
        }
        out
    }
}

/// A read's records (of every task, or of some processes' tasks, in any order) by process, in
/// pid order.
pub fn found(records: &[TaskRecord]) -> Vec<Found> {
    let mut g = Gather::default();
    for r in records {
        g.push(r);
    }
    g.found_where(|_, _, _| true)
}

/// Parent and credentials: what a pass takes from the kernel, since no event reports a
/// reparenting (or, between execs, a change of ids).
type Ids = (u32, u32, u32, u32, u32);

fn process_ids(p: &Process) -> Ids {
    (p.ppid, p.uid, p.gid, p.euid, p.egid)
}

fn record_ids(r: &TaskRecord) -> Ids {
    (r.ppid, r.uid, r.gid, r.euid, r.egid)
}

fn facts_ids(r: &Facts) -> Ids {
    (r.ppid, r.uid, r.gid, r.euid, r.egid)
}

/// The iterator reads the thread-group-wide parts of a task (signal_struct, mm, sighand, fs,
/// files, cgroup) only for the leader; give each thread the leader's values, as the kernel's
/// per-thread files show them.
fn inherit_group_fields(t: &mut TaskRecord, l: &TaskRecord) {
    t.pgid = l.pgid;
    t.sid = l.sid;
    t.tty_nr = l.tty_nr;
    t.tpgid = l.tpgid;
    t.nr_threads = l.nr_threads;
    t.has_mm = l.has_mm;
    (t.sig_utime, t.sig_stime, t.cutime, t.cstime) = (l.sig_utime, l.sig_stime, l.cutime, l.cstime);
    (t.sig_min_flt, t.sig_maj_flt, t.cmin_flt, t.cmaj_flt) =
        (l.sig_min_flt, l.sig_maj_flt, l.cmin_flt, l.cmaj_flt);
    (t.sig_sum_sched_runtime, t.sig_prev_utime, t.sig_prev_stime) =
        (l.sig_sum_sched_runtime, l.sig_prev_utime, l.sig_prev_stime);
    t.cgtime = l.cgtime;
    t.rlim = l.rlim;
    t.sig_shared_pending = l.sig_shared_pending;
    (t.sig_ignored, t.sig_caught) = (l.sig_ignored, l.sig_caught);
    t.cgroup_id = l.cgroup_id;
    t.umask = l.umask;
    t.max_fds = l.max_fds;
    (t.total_vm, t.locked_vm, t.pinned_vm) = (l.total_vm, l.locked_vm, l.pinned_vm);
    (t.data_vm, t.exec_vm, t.stack_vm) = (l.data_vm, l.exec_vm, l.stack_vm);
    (t.hiwater_rss, t.hiwater_vm) = (l.hiwater_rss, l.hiwater_vm);
    (t.rss_file, t.rss_anon, t.rss_swapents, t.rss_shmem) =
        (l.rss_file, l.rss_anon, l.rss_swapents, l.rss_shmem);
    t.rss_sum = l.rss_sum;
    t.pgtables_bytes = l.pgtables_bytes;
    (t.start_code, t.end_code, t.start_data, t.end_data) =
        (l.start_code, l.end_code, l.start_data, l.end_data);
    (t.start_brk, t.brk, t.start_stack) = (l.start_brk, l.brk, l.start_stack);
    (t.arg_start, t.arg_end, t.env_start, t.env_end) =
        (l.arg_start, l.arg_end, l.env_start, l.env_end);
    t.full_name = [0; 64];
    t.wq_desc = [0; 32];
    t.wq_busy = 0;
}

fn with_unknown_exit(p: &Process, ts: u64) -> Arc<Process> {
    let mut p = p.clone();
    p.rev = next_rev();
    p.exit = Some(ExitInfo {
        ts,
        status: None,
        utime_ns: 0,
        stime_ns: 0,
    });
    Arc::new(p)
}

#[cfg(test)]
mod tests {
    use bpfproc_common::{ARGS_LEN, FILENAME_LEN};

    use super::*;
    use bpfproc_common::{ProcEntry, TaskInfo, pflag};

    fn info(pid: u32, ppid: u32, start: u64, comm: &str) -> TaskInfo {
        let mut c = [0u8; 16];
        c[..comm.len()].copy_from_slice(comm.as_bytes());
        TaskInfo {
            tgid: pid,
            tid: pid,
            ppid,
            uid: 1000,
            gid: 1000,
            euid: 1000,
            egid: 1000,
            pf_flags: 0,
            exit_code: 0,
            nr_threads: 1,
            flags: 0,
            _pad: 0,
            start_boottime: start,
            utime: 0,
            stime: 0,
            cutime: 0,
            cstime: 0,
            comm: c,
        }
    }

    fn fork(ts: u64, pid: u32, ppid: u32, start: u64) -> KernelEvent {
        KernelEvent::Fork {
            ts,
            forker: ppid,
            task: info(pid, ppid, start, "sh"),
            cgroup_id: 0,
        }
    }

    fn exec(ts: u64, pid: u32, ppid: u32, start: u64, argv: &[&str]) -> KernelEvent {
        let mut e = ProcEntry {
            task: info(pid, ppid, start, argv[0]),
            exec_ts: ts,
            filename_len: 0,
            args_len: 0,
            filename: [0; FILENAME_LEN],
            args: [0; ARGS_LEN],
        };
        let path = format!("/bin/{}", argv[0]);
        e.filename[..path.len()].copy_from_slice(path.as_bytes());
        e.filename_len = path.len() as u32 + 1;
        let mut n = 0;
        for a in argv {
            e.args[n..n + a.len()].copy_from_slice(a.as_bytes());
            n += a.len() + 1;
        }
        e.args_len = n as u32;
        e.task.flags = pflag::EXECED;
        KernelEvent::Exec {
            ts,
            entry: Box::new(e),
            cgroup_id: 0,
        }
    }

    fn exit(ts: u64, pid: u32, ppid: u32, start: u64, status: u32) -> KernelEvent {
        let mut t = info(pid, ppid, start, "x");
        t.exit_code = status;
        KernelEvent::Exit {
            ts,
            task: t,
            cgroup_id: 0,
        }
    }

    fn free(ts: u64, pid: u32, start: u64) -> KernelEvent {
        KernelEvent::Free {
            ts,
            pid,
            start_boottime: start,
        }
    }

    fn record(pid: u32, tid: u32, ppid: u32, start: u64) -> TaskRecord {
        // SAFETY: plain integers and arrays.
        let mut r: TaskRecord = unsafe { std::mem::zeroed() };
        r.tid = tid;
        r.tgid = pid;
        r.ppid = ppid;
        r.start_boottime = start;
        r.nr_threads = 1;
        r.comm[..4].copy_from_slice(b"init");
        r
    }

    #[test]
    fn one_process_read_refreshes_its_numbers_as_a_pass_would() {
        let mut t = ProcessTable::new(16);
        let mut leader = record(700, 700, 1, 5);
        leader.sig_utime = 40;
        let mut thread = record(700, 703, 1, 6);
        thread.utime = 9;
        t.apply_snapshot(10, &[leader, thread], true);
        let base = t.get(700).unwrap().clone();
        // Nothing moved: the same entry, so what was rendered from it stays valid.
        let same = refreshed(&base, vec![thread, leader], 20).unwrap();
        assert!(Arc::ptr_eq(&same, &base));
        // The thread ran, the group's times moved and the process was reparented; the records
        // come thread first, as an iterator may give them.
        let mut leader2 = leader;
        leader2.sig_utime = 55;
        leader2.ppid = 2;
        let mut thread2 = thread;
        thread2.utime = 12;
        let p = refreshed(&base, vec![thread2, leader2], 30).unwrap();
        assert_ne!(p.rev, base.rev);
        assert_eq!(p.refreshed_at, 30);
        assert_eq!(p.ppid, 2);
        assert_eq!(
            p.tasks.iter().map(|r| r.tid).collect::<Vec<_>>(),
            [700, 703]
        );
        assert_eq!(p.tasks.to_vec()[1].utime, 12);
        // A thread carries its group's fields from the leader, as after a pass.
        assert_eq!(p.tasks.to_vec()[1].sig_utime, 55);
        // The table itself is untouched: only a pass or an event changes it.
        assert_eq!(t.get(700).unwrap().rev, base.rev);
        // A new process on the reused pid, or none: only the table can say which.
        assert!(refreshed(&base, vec![record(700, 700, 1, 99)], 40).is_none());
        assert!(refreshed(&base, Vec::new(), 40).is_none());
    }

    #[test]
    fn a_pass_gathered_record_by_record_groups_each_process_with_its_leader_first() {
        let mut a = record(900, 900, 1, 5);
        a.rss_anon = 77;
        let mut a_thread = record(900, 905, 1, 6);
        a_thread.utime = 3;
        let b = record(901, 901, 1, 7);
        // A thread whose leader the read did not have.
        let orphan = record(950, 951, 1, 8);
        let mut g = Gather::default();
        // In tid order, as the iterator gives them: a process's threads among others'.
        for r in [&a, &b, &a_thread, &orphan] {
            g.push(r);
        }
        assert_eq!(g.len(), 4);
        let mut asked = Vec::new();
        let found = g.found_where(|pid, leader, _| {
            asked.push((pid, leader.tid));
            pid != 901
        });
        assert_eq!(asked, [(900, 900), (901, 901), (950, 951)]);
        assert_eq!(found.iter().map(|f| f.pid).collect::<Vec<_>>(), [900, 950]);
        let tasks = found[0].tasks.to_vec();
        assert_eq!(tasks.iter().map(|t| t.tid).collect::<Vec<_>>(), [900, 905]);
        assert_eq!(tasks[1].utime, 3);
        // The thread carries its group's fields from the leader.
        assert_eq!(tasks[1].rss_anon, 77);
        assert_eq!(
            found[0].tasks,
            Tasks::new(&[a, {
                a_thread.rss_anon = 77;
                a_thread
            }])
        );
    }

    #[test]
    fn lifecycle_fork_exec_exit_reap() {
        let mut t = ProcessTable::new(16);
        t.apply(&fork(10, 100, 1, 5));
        t.apply(&exec(11, 100, 1, 5, &["ls", "-l"]));
        let p = t.get(100).unwrap();
        assert_eq!(p.comm, b"ls");
        assert_eq!(p.argv().collect::<Vec<_>>(), [b"ls".as_slice(), b"-l"]);
        assert_eq!(p.exe.as_deref(), Some(b"/bin/ls".as_slice()));
        t.apply(&exit(12, 100, 1, 5, 3 << 8));
        // A zombie stays listed until reaped.
        assert!(t.get(100).unwrap().exit.is_some());
        t.apply(&free(13, 100, 5));
        assert!(t.get(100).is_none());
        let gone = &t.exited()[0];
        assert_eq!(gone.exit.unwrap().exit_code(), Some(3));
        assert_eq!(gone.exit.unwrap().signal(), None);
    }

    #[test]
    fn death_by_signal_is_reported_as_signal() {
        let mut t = ProcessTable::new(16);
        t.apply(&fork(10, 100, 1, 5));
        t.apply(&exit(12, 100, 1, 5, 9));
        let e = t.exited()[0].exit.unwrap();
        assert_eq!(
            (e.exit_code(), e.signal(), e.core_dumped()),
            (None, Some(9), false)
        );
    }

    #[test]
    fn exit_before_exec_keeps_exit_code_and_parent_image() {
        let mut t = ProcessTable::new(16);
        t.apply(&fork(1, 50, 1, 1));
        t.apply(&exec(2, 50, 1, 1, &["make", "all"]));
        // The child exits before it ever execs: it still carries its parent's argv.
        t.apply(&fork(3, 51, 50, 3));
        t.apply(&exit(4, 51, 50, 3, 2 << 8));
        let e = t.exited().back().unwrap();
        assert_eq!(e.argv().collect::<Vec<_>>(), [b"make".as_slice(), b"all"]);
        assert_eq!(e.exit.unwrap().exit_code(), Some(2));
    }

    #[test]
    fn fork_of_unknown_parent_asks_for_identity() {
        let mut t = ProcessTable::new(16);
        t.apply(&fork(1, 70, 69, 1));
        assert!(t.get(70).unwrap().needs_identity);
        t.apply(&exec(2, 70, 69, 1, &["true"]));
        assert!(!t.get(70).unwrap().needs_identity);
    }

    #[test]
    fn pid_reuse_never_mixes_two_processes() {
        let mut t = ProcessTable::new(16);
        t.apply(&fork(1, 200, 1, 100));
        t.apply(&exec(2, 200, 1, 100, &["old", "--secret"]));
        // The free record was lost; the pid comes back with a new start time.
        t.apply(&fork(3, 200, 1, 300));
        let p = t.get(200).unwrap();
        assert_eq!(p.start_boottime, 300);
        assert_eq!(p.cmdline, b"");
        assert_eq!(t.counters.pid_reuse, 1);
        let old = t.exited().back().unwrap();
        assert_eq!(old.start_boottime, 100);
        assert_eq!(
            old.exit.unwrap().status,
            None,
            "an unseen exit is unknown, not 0"
        );
        // A late free of the old process must not remove the new one.
        t.apply(&free(4, 200, 100));
        assert_eq!(t.get(200).unwrap().start_boottime, 300);
    }

    #[test]
    fn snapshot_racing_an_exit_does_not_revive_the_process() {
        let mut t = ProcessTable::new(16);
        t.apply_snapshot(10, &[record(300, 300, 1, 5)], true);
        // The snapshot started at 20 and saw 300 alive; the exit and reap arrived first.
        t.apply(&exit(21, 300, 1, 5, 0));
        t.apply(&free(22, 300, 5));
        t.apply_snapshot(20, &[record(300, 300, 1, 5)], false);
        assert!(t.get(300).is_none());
    }

    #[test]
    fn an_unchanged_process_keeps_its_revision_across_passes() {
        let mut t = ProcessTable::new(16);
        t.apply_snapshot(10, &[record(600, 600, 1, 5), record(601, 601, 1, 6)], true);
        let (rev600, rev601) = (t.get(600).unwrap().rev, t.get(601).unwrap().rev);
        let mut busy = record(601, 601, 1, 6);
        busy.utime += 1;
        t.apply_snapshot(20, &[record(600, 600, 1, 5), busy], false);
        assert_eq!(t.get(600).unwrap().rev, rev600, "nothing changed");
        assert_ne!(t.get(601).unwrap().rev, rev601, "its runtime moved");
        assert_eq!(t.get(601).unwrap().tasks.to_vec()[0].utime, busy.utime);
        // An untouched entry is still one the pass saw: it must not be taken for gone.
        t.apply_snapshot(30, &[record(600, 600, 1, 5), busy], false);
        assert!(t.get(600).is_some() && t.get(601).is_some());
        assert_eq!(t.counters.lost_exits, 0);
        // Reparenting has no event: a new ppid in the pass is a change.
        t.apply_snapshot(40, &[record(600, 600, 77, 5), busy], false);
        assert_eq!(t.get(600).unwrap().ppid, 77);
        assert_ne!(t.get(600).unwrap().rev, rev600);
    }

    #[test]
    fn backfill_racing_a_fork_keeps_the_newer_process() {
        let mut t = ProcessTable::new(16);
        t.apply(&fork(15, 400, 1, 14));
        // A snapshot that began before the fork does not list it; the entry is newer, so it stays.
        let needs = t.apply_snapshot(10, &[record(1, 1, 0, 0)], true);
        assert!(t.get(400).is_some());
        assert_eq!(needs, vec![1]);
        assert_eq!(t.counters.backfilled, 1);
    }

    #[test]
    fn snapshot_removes_ghosts_and_finds_missed_processes() {
        let mut t = ProcessTable::new(16);
        t.apply(&fork(5, 500, 1, 4));
        t.apply_snapshot(10, &[record(501, 501, 1, 6), record(501, 502, 1, 7)], false);
        assert!(t.get(500).is_none(), "gone without an exit record");
        assert_eq!(t.counters.lost_exits, 1);
        let p = t.get(501).unwrap();
        assert_eq!(p.tasks.len(), 2, "threads are kept with the leader first");
        assert_eq!(p.tasks.to_vec()[0].tid, 501);
        assert_eq!(t.counters.found_by_rescan, 1);
    }

    #[test]
    fn a_lost_exec_record_is_repaired_by_the_next_snapshot() {
        let mut t = ProcessTable::new(16);
        t.apply(&exec(2, 1, 0, 0, &["init"]));
        t.apply(&fork(5, 800, 1, 4));
        assert_eq!(t.get(800).unwrap().comm, b"sh");
        // The exec record of 800 was dropped (ring buffer full); the iterator shows its name.
        let needs = t.apply_snapshot(10, &[record(1, 1, 0, 0), record(800, 800, 1, 4)], false);
        assert_eq!(t.get(800).unwrap().comm, b"init");
        assert_eq!(needs, vec![800], "argv and exe are re-read");
        assert_eq!(t.counters.identity_repairs, 1);
        // An exec seen after the snapshot began is not undone by it.
        t.apply(&exec(12, 800, 1, 4, &["ls"]));
        t.apply_snapshot(11, &[record(1, 1, 0, 0), record(800, 800, 1, 4)], false);
        assert_eq!(t.get(800).unwrap().comm, b"ls");
    }

    #[test]
    fn exit_record_after_a_snapshot_found_it_gone_gives_the_real_status() {
        let mut t = ProcessTable::new(16);
        t.apply(&fork(5, 600, 1, 4));
        // The process exited and was reaped before the iterator walked; its records are late.
        t.apply_snapshot(10, &[record(1, 1, 0, 0)], false);
        assert_eq!(t.exited().len(), 1);
        assert_eq!(t.exited()[0].exit.unwrap().status, None);
        t.apply(&exit(8, 600, 1, 4, 7 << 8));
        assert_eq!(t.exited().len(), 1, "no second record for the same process");
        assert_eq!(t.exited()[0].exit.unwrap().exit_code(), Some(7));
        assert_eq!(t.counters.lost_exits, 0);
    }

    #[test]
    fn a_live_process_the_iterator_missed_is_kept() {
        let mut t = ProcessTable::new(16);
        t.apply(&fork(5, 700, 1, 4));
        t.apply_snapshot_checked(10, &[record(1, 1, 0, 0)], false, &|pid, start| {
            pid == 700 && start == 4
        });
        let p = t.get(700).expect("kept");
        assert_eq!(p.origin, Origin::Procfs);
        assert_eq!(t.counters.iterator_misses, 1);
        assert_eq!(t.counters.lost_exits, 0);
        assert!(t.exited().is_empty());
    }

    /// `ev` with the cgroup its record read.
    fn in_cgroup(mut ev: KernelEvent, id: u64) -> KernelEvent {
        match &mut ev {
            KernelEvent::Fork { cgroup_id, .. }
            | KernelEvent::Exec { cgroup_id, .. }
            | KernelEvent::Exit { cgroup_id, .. } => *cgroup_id = id,
            _ => {}
        }
        ev
    }

    fn in_cgroup_record(mut r: TaskRecord, id: u64) -> TaskRecord {
        r.cgroup_id = id;
        r
    }

    #[test]
    fn a_process_gone_before_any_pass_keeps_its_records_cgroup() {
        let mut t = ProcessTable::new(16);
        t.apply(&in_cgroup(fork(5, 900, 1, 4), 77));
        assert_eq!(t.get(900).unwrap().cgroup_id(), 77, "before any pass");
        t.apply(&in_cgroup(exit(6, 900, 1, 4, 3 << 8), 77));
        t.apply(&free(7, 900, 4));
        let gone = &t.exited()[0];
        assert_eq!(gone.cgroup_id(), 77);
        assert_eq!(gone.exit.unwrap().exit_code(), Some(3));
        // Started before the agent, exited before the backfill: the exit record alone.
        t.apply(&in_cgroup(exit(8, 901, 1, 2, 0), 78));
        assert_eq!(t.exited()[1].cgroup_id(), 78);
    }

    #[test]
    fn a_pass_sees_a_move_and_the_exit_record_has_the_last_word() {
        let mut t = ProcessTable::new(16);
        t.apply(&in_cgroup(fork(5, 910, 1, 4), 77));
        // Moved into another cgroup (no event): the next pass says so.
        t.apply_snapshot(10, &[in_cgroup_record(record(910, 910, 1, 4), 88)], false);
        assert_eq!(t.get(910).unwrap().cgroup_id(), 88);
        // An exec does not hide a pass's reading while the process lives...
        t.apply(&in_cgroup(exec(11, 910, 1, 4, &["ls"]), 77));
        assert_eq!(t.get(910).unwrap().cgroup_id(), 88);
        // ...but its exit record is newer than any pass.
        t.apply(&in_cgroup(exit(12, 910, 1, 4, 0), 99));
        assert_eq!(t.get(910).unwrap().cgroup_id(), 99);
        // A record that could not read the cgroup leaves what was known.
        t.apply(&in_cgroup(fork(13, 920, 1, 6), 77));
        t.apply(&in_cgroup(exit(14, 920, 1, 6, 0), 0));
        assert_eq!(t.get(920).unwrap().cgroup_id(), 77);
    }

    #[test]
    fn exited_ring_is_bounded() {
        let mut t = ProcessTable::new(3);
        for pid in 1..=10 {
            t.apply(&fork(pid as u64, pid, 1, pid as u64));
            t.apply(&exit(pid as u64 + 100, pid, 1, pid as u64, 0));
        }
        assert_eq!(t.exited().len(), 3);
        assert_eq!(t.exited()[0].pid, 8);
    }
}

//! The actor proper: the table and everything the loop in `spawn` used to keep in locals, one
//! method per kind of message. It reaches the kernel only through [`TaskSource`] and reads the
//! time only through [`Clock`], so its rules (freshness, refresh-ahead, loss rescans) run in
//! unit tests against a scripted kernel and a hand-driven clock (`state/tests.rs`).

use std::{
    collections::HashSet,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use bpfproc_common::{TaskRecord, stat};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::{AgentStats, Config, Identity, Latest, Msg, Prewarm, Snapshot};
use crate::{
    groups::{GroupReport, Ledger},
    kernel::{Kernel, KernelError, KernelEvent, TaskReader},
    procfs,
    sys::clock::{boot_ns, ns_per_tick},
    table::{Change, ProcessTable},
};

/// What the table's actor needs from the kernel: whole-table passes of the task iterator, the
/// process map's keys and its sweep, and the kernel side's counters. [`Kernel`] is the real
/// one; the unit tests script their own.
pub trait TaskSource: Send + 'static {
    /// One pass over every task on the host (`Kernel::tasks`); with `backfill`, processes
    /// without a process-map entry get one.
    fn tasks(&mut self, backfill: bool) -> Result<Vec<TaskRecord>, KernelError>;
    /// Drops process-map entries of processes the pass begun at `started` did not see
    /// (`Kernel::gc`): how many, and the keys that remain.
    fn gc(&mut self, seen: &HashSet<u32>, started: u64) -> Result<(usize, Vec<u32>), KernelError>;
    /// The kernel side's counters, summed over CPUs, in `stat` index order (`Kernel::stats`).
    fn stats(&self) -> Result<[u64; stat::COUNT as usize], KernelError>;
    /// The process map's keys (`Kernel::map_pids`).
    fn map_pids(&self) -> Result<Vec<u32>, KernelError>;
    /// A reader of one process's tasks (`Kernel::task_reader`).
    fn task_reader(&self) -> Result<TaskReader, KernelError>;
}

impl TaskSource for Kernel {
    fn tasks(&mut self, backfill: bool) -> Result<Vec<TaskRecord>, KernelError> {
        Kernel::tasks(self, backfill)
    }

    fn gc(&mut self, seen: &HashSet<u32>, started: u64) -> Result<(usize, Vec<u32>), KernelError> {
        Kernel::gc(self, seen, started)
    }

    fn stats(&self) -> Result<[u64; stat::COUNT as usize], KernelError> {
        Kernel::stats(self)
    }

    fn map_pids(&self) -> Result<Vec<u32>, KernelError> {
        Kernel::map_pids(self)
    }

    fn task_reader(&self) -> Result<TaskReader, KernelError> {
        Kernel::task_reader(self)
    }
}

/// The two clocks the actor's rules read: the monotonic one for its own timers (demand, loss
/// checks, the map sweep) and the boot clock the kernel stamps records with (a pass's start,
/// the numbers' age).
pub(crate) trait Clock: Send + Sync {
    fn now(&self) -> Instant;
    fn boot_ns(&self) -> u64;
}

/// The host's clocks.
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn boot_ns(&self) -> u64 {
        boot_ns()
    }
}

/// A finished pass of the task iterator, on its way back to the actor.
pub(crate) struct Pass {
    pub started: u64,
    /// How long the iterator pass took.
    pub took_us: u64,
    /// Empty: the pass failed (an empty host is not a thing).
    pub records: Vec<TaskRecord>,
    pub procfs: Vec<Vec<TaskRecord>>,
    pub procfs_gone: Vec<u32>,
    pub gc_dropped: usize,
    /// After a sweep, the process map's keys.
    pub map_pids: Option<Vec<u32>>,
}

/// Where the actor's output goes.
pub(crate) struct Wiring {
    /// What `State`'s fast path reads.
    pub latest: Arc<Latest>,
    /// Results of work done off the actor (identities) come back here.
    pub tx: mpsc::Sender<Msg>,
    /// A finished pass reaches the actor through the ring reader, which drains the ring
    /// first: a process that exited before the pass started has its exit record applied
    /// before the pass shows it gone, so its exit status is never taken for lost.
    pub passes: mpsc::Sender<Msg>,
    pub events: broadcast::Sender<Arc<Change>>,
}

/// While some client asked within this long, fresh snapshots are pre-rendered for it.
const HOT_FOR: Duration = Duration::from_secs(2);
/// The process map is swept for entries that outlived their process this often.
pub(crate) const GC_EVERY: Duration = Duration::from_secs(10);

/// The owner of the process table.
pub(crate) struct Actor<K> {
    kernel: Arc<Mutex<K>>,
    clock: Arc<dyn Clock>,
    latest: Arc<Latest>,
    tx: mpsc::Sender<Msg>,
    passes: mpsc::Sender<Msg>,
    events: broadcast::Sender<Arc<Change>>,
    prewarm: Option<Prewarm>,
    max_age: Duration,
    loss_check: Duration,
    ns_per_tick: u64,

    table: ProcessTable,
    ledger: Ledger,
    stats: AgentStats,
    /// Boot-clock ns the table's numbers were read at (the last applied pass).
    last_refresh: u64,
    /// A pass is running: one at a time.
    refreshing: bool,
    /// Questions waiting for the running pass.
    waiters: Vec<(Duration, oneshot::Sender<Arc<Snapshot>>)>,
    cached: Option<Arc<Snapshot>>,
    last_losses: u64,
    last_loss_check: Instant,
    last_query: Instant,
    /// Whether the current numbers have been asked for since they were read: refreshing ahead
    /// only when they were keeps the iterator's cost proportional to demand (an idle agent, or
    /// one scraped every 15 s, runs no extra passes).
    demanded: bool,
    last_gc: Instant,
}

impl<K: TaskSource> Actor<K> {
    /// The actor over `table`, whose numbers were read at boot-clock `refreshed_at`.
    pub(crate) fn new(
        kernel: Arc<Mutex<K>>,
        clock: Arc<dyn Clock>,
        wiring: Wiring,
        cfg: Config,
        table: ProcessTable,
        stats: AgentStats,
        refreshed_at: u64,
    ) -> Self {
        let now = clock.now();
        Self {
            kernel,
            latest: wiring.latest,
            tx: wiring.tx,
            passes: wiring.passes,
            events: wiring.events,
            prewarm: cfg.prewarm,
            max_age: cfg.max_age,
            loss_check: cfg.loss_check,
            ns_per_tick: ns_per_tick(),
            table,
            ledger: cfg.groups,
            stats,
            last_refresh: refreshed_at,
            refreshing: false,
            waiters: Vec::new(),
            cached: None,
            last_losses: 0,
            last_loss_check: now,
            last_query: now - HOT_FOR,
            demanded: false,
            last_gc: now,
            clock,
        }
    }

    /// One message: its handler, then the table's version published for the fast path.
    pub(crate) fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Events(batch) => self.on_events(batch),
            Msg::Snapshot { max_age, reply } => self.on_snapshot(max_age, reply),
            Msg::Refreshed(pass) => {
                if !self.on_refreshed(pass) {
                    // A failed pass changed nothing, and publishes nothing.
                    return;
                }
            }
            Msg::Identities(list) => self.on_identities(list),
            Msg::Ahead => self.on_ahead(),
            Msg::Tick => self.on_tick(),
            Msg::Stats(reply) => self.on_stats(reply),
            Msg::Groups(reply) => self.on_groups(reply),
        }
        self.latest
            .version
            .store(self.table.version(), std::sync::atomic::Ordering::Release);
    }

    /// Applies a batch of ring-buffer records in order.
    pub(crate) fn on_events(&mut self, batch: Vec<KernelEvent>) {
        self.stats.events_received += batch.len() as u64;
        let n = batch.len() as u64;
        for ev in &batch {
            if let Some(change) = self.table.apply(ev) {
                self.ledger.apply(&change);
                let _ = self.events.send(Arc::new(change));
            }
        }
        // Publish the new version before declaring the records applied, so a fast reader that
        // sees nothing in flight also sees that its snapshot is old.
        self.latest
            .version
            .store(self.table.version(), std::sync::atomic::Ordering::Release);
        self.latest
            .in_flight
            .fetch_sub(n, std::sync::atomic::Ordering::AcqRel);
    }

    /// A question for a snapshot whose numbers are at most `asked` old: answered now if the
    /// table's are, else after the next pass (started unless one is running).
    pub(crate) fn on_snapshot(&mut self, asked: Duration, reply: oneshot::Sender<Arc<Snapshot>>) {
        // Refreshing ahead keeps numbers within the agent's bound for those who ask for it (or
        // tighter). A question that takes numbers of any age (a listing, a process's
        // existence) or older ones (a `cache=` mount, whose ticker refreshes for it) does not
        // ask for it.
        if asked <= self.max_age {
            self.last_query = self.clock.now();
            self.demanded = true;
        }
        let age = Duration::from_nanos(self.clock.boot_ns().saturating_sub(self.last_refresh));
        if age <= asked {
            let _ = reply.send(self.current());
        } else {
            self.waiters.push((asked, reply));
            self.start_pass();
        }
    }

    /// A pass's result, applied with the table's rules (entries an event touched since the
    /// pass began are newer and win); every waiter is answered. Returns false if the pass
    /// failed, and then the waiters get the table as it is.
    pub(crate) fn on_refreshed(&mut self, pass: Pass) -> bool {
        let Pass {
            started,
            took_us,
            records,
            procfs,
            procfs_gone,
            gc_dropped,
            map_pids,
        } = pass;
        self.refreshing = false;
        self.stats.map_gc_dropped += gc_dropped as u64;
        self.stats.last_iterator_us = took_us;
        self.latest
            .pass_us
            .store(took_us, std::sync::atomic::Ordering::Relaxed);
        self.stats.last_iterator_tasks = records.len();
        if records.is_empty() {
            // The iterator failed: answer with what we have rather than hang.
            let snap = self.current();
            for (_, w) in self.waiters.drain(..) {
                let _ = w.send(snap.clone());
            }
            return false;
        }
        self.demanded = false;
        let t0 = Instant::now();
        let ns_per_tick = self.ns_per_tick;
        let needs = self
            .table
            .apply_snapshot_checked(started, &records, false, &|pid, start| {
                procfs::alive_since(pid, start, ns_per_tick)
            });
        tracing::debug!(us = t0.elapsed().as_micros() as u64, "snapshot applied");
        for rec in &procfs {
            self.table.upsert_procfs(rec, started);
        }
        for pid in procfs_gone {
            self.table.drop_procfs(pid, started);
        }
        if let Some(pids) = map_pids {
            map_stats(&mut self.stats, &pids, &self.table);
        }
        self.last_refresh = started;
        if !needs.is_empty() {
            start_identities(&self.table, needs, self.tx.clone());
        }
        let snap = self.current();
        for (_, w) in self.waiters.drain(..) {
            let _ = w.send(snap.clone());
        }
        if let Some(prewarm) = &self.prewarm
            && self.clock.now().duration_since(self.last_query) < HOT_FOR
        {
            let prewarm = prewarm.clone();
            tokio::task::spawn_blocking(move || prewarm(&snap));
        }
        true
    }

    /// argv and exe of processes that predate the agent, read off the actor.
    pub(crate) fn on_identities(&mut self, list: Vec<Identity>) {
        for Identity {
            pid,
            start,
            cmdline,
            exe,
        } in list
        {
            self.table.set_identity(pid, start, cmdline, exe);
        }
    }

    /// Reads of single processes have cost about a pass: start one, and count it as demand.
    pub(crate) fn on_ahead(&mut self) {
        self.last_query = self.clock.now();
        self.demanded = true;
        self.start_pass();
    }

    /// Periodic: a rescan when a kernel loss counter moved, and a pass ahead while a client
    /// polls faster than the bound.
    pub(crate) fn on_tick(&mut self) {
        let now = self.clock.now();
        // A moved loss counter means some record never reached us: reconcile now rather than
        // at the next query.
        let mut due = false;
        if now.duration_since(self.last_loss_check) >= self.loss_check {
            self.last_loss_check = now;
            let losses = self.kernel_losses();
            if losses > self.last_losses {
                self.last_losses = losses;
                self.stats.rescans += 1;
                due = true;
            }
        }
        let age = Duration::from_nanos(self.clock.boot_ns().saturating_sub(self.last_refresh));
        // A client polling faster than the bound gets its next answer from a snapshot read
        // ahead of the question instead of waiting for one.
        if self.demanded
            && now.duration_since(self.last_query) < self.max_age * 2
            && age >= self.max_age / 2
        {
            due = true;
        }
        if due {
            self.start_pass();
        }
    }

    /// The agent's counters, with the table's and the kernel's as they are now.
    pub(crate) fn on_stats(&mut self, reply: oneshot::Sender<AgentStats>) {
        use std::sync::atomic::Ordering::Relaxed;
        let mut s = self.stats.clone();
        s.table = self.table.counters;
        s.live_processes = self.table.live().len();
        s.fast_path_hits = self.latest.hits.load(Relaxed);
        s.fast_path_misses = self.latest.misses.load(Relaxed);
        s.process_reads = self.latest.process_reads.load(Relaxed);
        s.exited_retained = self.table.exited().len();
        if let Ok(k) = self.kernel.lock()
            && let Ok(counters) = k.stats()
        {
            for (i, v) in counters.iter().enumerate() {
                s.kernel.insert(stat::NAMES[i], *v);
            }
        }
        let _ = reply.send(s);
    }

    pub(crate) fn on_groups(&mut self, reply: oneshot::Sender<GroupReport>) {
        let _ = reply.send(self.ledger.report(self.table.live().values()));
    }

    /// Starts a pass off the actor unless one is running; the periodic sweep of the process
    /// map rides along when it is due. Its result comes back as `Msg::Refreshed`.
    pub(crate) fn start_pass(&mut self) {
        if !self.refreshing {
            self.refreshing = true;
            let gc = self.take_gc();
            start_refresh(
                self.kernel.clone(),
                self.clock.clone(),
                self.passes.clone(),
                &self.table,
                self.ns_per_tick,
                gc,
            );
        }
    }

    /// Whether a pass is running.
    #[cfg(test)]
    pub(crate) fn pass_running(&self) -> bool {
        self.refreshing
    }

    /// The latest snapshot of the table, made anew only if the table or its numbers changed.
    fn current(&mut self) -> Arc<Snapshot> {
        let (table, at) = (&self.table, self.last_refresh);
        if let Some(c) = &self.cached
            && c.version == table.version()
            && c.refreshed_at == at
        {
            return c.clone();
        }
        let snap = Arc::new(Snapshot {
            version: table.version(),
            refreshed_at: at,
            processes: table.live().values().cloned().collect(),
            exited: table.exited().iter().cloned().collect(),
            listing_json: OnceLock::new(),
        });
        self.cached = Some(snap.clone());
        if let Ok(mut l) = self.latest.snapshot.write() {
            *l = Some(snap.clone());
        }
        snap
    }

    /// The kernel-side loss counters, summed.
    fn kernel_losses(&self) -> u64 {
        let Ok(k) = self.kernel.lock() else { return 0 };
        k.stats()
            .map(|s| {
                s[stat::RINGBUF_FULL as usize]
                    + s[stat::MAP_FULL as usize]
                    + s[stat::READ_ERROR as usize]
            })
            .unwrap_or(0)
    }

    /// Whether the process map's sweep is due (and, if so, it counts as done).
    fn take_gc(&mut self) -> bool {
        if self.clock.now().duration_since(self.last_gc) >= GC_EVERY {
            self.last_gc = self.clock.now();
            true
        } else {
            false
        }
    }
}

/// The process map's size and orphans, against the table as just updated.
pub(crate) fn map_stats(stats: &mut AgentStats, pids: &[u32], table: &ProcessTable) {
    stats.bpf_map_entries = pids.len();
    stats.bpf_map_orphans = pids
        .iter()
        .filter(|p| !table.live().contains_key(p))
        .count();
}

fn start_refresh<K: TaskSource>(
    kernel: Arc<Mutex<K>>,
    clock: Arc<dyn Clock>,
    tx: mpsc::Sender<Msg>,
    table: &ProcessTable,
    ns_per_tick: u64,
    gc: bool,
) {
    let procfs_known: Vec<u32> = table
        .live()
        .values()
        .filter(|p| p.origin == crate::table::Origin::Procfs)
        .map(|p| p.pid)
        .collect();
    tokio::task::spawn_blocking(move || {
        trim_heap();
        let started = clock.boot_ns();
        let t0 = Instant::now();
        let records = match kernel.lock().map(|mut k| k.tasks(gc)) {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::warn!("task iterator failed: {e}");
                Vec::new()
            }
            Err(_) => Vec::new(),
        };
        let took_us = t0.elapsed().as_micros() as u64;
        tracing::debug!(tasks = records.len(), us = took_us, "task iterator pass");
        let mut gc_dropped = 0;
        let mut map_pids = None;
        if gc && !records.is_empty() {
            let seen: HashSet<u32> = records.iter().map(|r| r.tgid).collect();
            if let Ok(mut k) = kernel.lock() {
                match k.gc(&seen, started) {
                    Ok((n, kept)) => {
                        gc_dropped = n;
                        map_pids = Some(kept);
                        if n > 0 {
                            tracing::debug!(entries = n, "dropped stale process-map entries");
                        }
                    }
                    Err(e) => tracing::warn!("process-map gc failed: {e}"),
                }
            }
        }
        if records.is_empty() {
            // Never apply an empty snapshot: it would declare every process gone.
            let _ = tx.blocking_send(Msg::Refreshed(Pass {
                started: 0,
                took_us,
                records: Vec::new(),
                procfs: Vec::new(),
                procfs_gone: Vec::new(),
                gc_dropped,
                map_pids: None,
            }));
            return;
        }
        let procfs: Vec<_> = procfs_known
            .iter()
            .map(|&pid| procfs::records(pid, ns_per_tick))
            .filter(|r| !r.is_empty())
            .collect();
        let procfs_gone = procfs_known
            .iter()
            .copied()
            .filter(|pid| !procfs.iter().any(|r| r[0].tgid == *pid))
            .collect();
        let _ = tx.blocking_send(Msg::Refreshed(Pass {
            started,
            took_us,
            records,
            procfs,
            procfs_gone,
            gc_dropped,
            map_pids,
        }));
    });
}

/// Hands freed heap pages back to the kernel, at most every few seconds. By itself glibc
/// returns only the top of a heap; the table's churn and each pass's multi-megabyte record
/// buffer leave free pages inside it (17 of 70 MB at 10,000 processes). Runs on a blocking
/// thread before a pass, when the previous pass's buffers have been freed.
fn trim_heap() {
    use std::sync::atomic::{AtomicU64, Ordering};
    const EVERY_NS: u64 = 5_000_000_000;
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = boot_ns();
    let last = LAST.load(Ordering::Relaxed);
    if now.saturating_sub(last) < EVERY_NS
        || LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    let t0 = Instant::now();
    // libc: glibc's own allocator call, which nix does not wrap.
    // SAFETY: malloc_trim has no preconditions and is thread-safe.
    unsafe { libc::malloc_trim(0) };
    tracing::debug!(us = t0.elapsed().as_micros() as u64, "heap trimmed");
}

fn start_identities(table: &ProcessTable, pids: Vec<u32>, tx: mpsc::Sender<Msg>) {
    let wanted: Vec<(u32, u64)> = pids
        .into_iter()
        .filter_map(|pid| table.get(pid).map(|p| (pid, p.start_boottime)))
        .collect();
    tokio::task::spawn_blocking(move || {
        let list = wanted
            .into_iter()
            .map(|(pid, start)| {
                let (cmdline, exe) = procfs::identity(pid);
                Identity {
                    pid,
                    start,
                    cmdline,
                    exe,
                }
            })
            .collect();
        let _ = tx.blocking_send(Msg::Identities(list));
    });
}

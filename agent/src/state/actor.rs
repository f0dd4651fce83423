//! The actor proper: the table and everything the loop in `spawn` used to keep in locals, one
//! method per kind of message. It reaches the kernel only through [`TaskSource`] and reads the
//! time only through [`Clock`], so its rules (freshness, refresh-ahead, loss rescans) run in
//! unit tests against a scripted kernel and a hand-driven clock (`state/tests.rs`).

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bpfproc_common::{TaskRecord, stat};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::{AgentStats, Config, Identity, Latest, Msg, Prewarm, Snapshot};
use crate::{
    groups::{GroupReport, Ledger},
    kernel::{Kernel, KernelError, KernelEvent, Marks, TaskReader},
    procfs,
    sys::clock::{boot_ns, ns_per_tick},
    table::{Change, Found, Gather, ProcessTable},
};

/// What the table's actor needs from the kernel: whole-table passes of the task iterator, the
/// process map's keys and its sweep, and the kernel side's counters. [`Kernel`] is the real
/// one; the unit tests script their own.
pub trait TaskSource: Send + 'static {
    /// One pass over every task on the host (`Kernel::tasks`); with `backfill`, processes
    /// without a process-map entry get one.
    /// Each record handed to `each` as it is read; returns how many there were.
    fn tasks(
        &mut self,
        backfill: bool,
        each: &mut dyn FnMut(&TaskRecord),
    ) -> Result<usize, KernelError>;
    /// Drops process-map entries of processes the pass begun at `started` did not see
    /// (`Kernel::gc`): how many, and the keys that remain.
    fn gc(&mut self, seen: &HashSet<u32>, started: u64) -> Result<(usize, Vec<u32>), KernelError>;
    /// A reader of the kernel side's counters that needs no lock (`Kernel::counters`): the
    /// actor reads them every loss check, and must not wait for a pass to end.
    fn counters(&self) -> Result<Arc<dyn Counters>, KernelError>;
    /// The process map's keys (`Kernel::map_pids`).
    fn map_pids(&self) -> Result<Vec<u32>, KernelError>;
    /// A reader of one process's tasks (`Kernel::task_reader`).
    fn task_reader(&self) -> Result<TaskReader, KernelError>;
    /// What tells which processes ran and reads them one by one (`Kernel::marks` and a
    /// `TaskReader`); `None` where the kernel cannot (no one-process reads before Linux 6.1),
    /// and then every refresh is a pass.
    fn ran(&mut self) -> Option<Arc<dyn Ran>>;
}

/// The kernel side's counters, summed over CPUs, in `stat` index order.
pub trait Counters: Send + Sync + 'static {
    fn read(&self) -> Result<[u64; stat::COUNT as usize], KernelError>;
}

impl Counters for crate::kernel::Counters {
    fn read(&self) -> Result<[u64; stat::COUNT as usize], KernelError> {
        crate::kernel::Counters::read(self)
    }
}

/// The processes that ran since the last look, and a read of each: what a refresh of the
/// numbers needs, off the actor and without the kernel's lock.
pub trait Ran: Send + Sync + 'static {
    /// The pids of the processes that ran, were woken or changed cgroup since the last call,
    /// and those running now (`Marks::take`); `None` if a mark was lost, and only a pass can
    /// tell.
    fn take(&self) -> Result<Option<Vec<u32>>, KernelError>;
    /// Forgets every mark: a pass is about to read every task.
    fn clear(&self);
    /// One process's tasks (`TaskReader::process`); empty if there is no such process.
    fn process(&self, pid: u32) -> Result<Vec<TaskRecord>, KernelError>;
}

/// The kernel's marks and a reader of single processes.
struct KernelRan {
    marks: Marks,
    reader: TaskReader,
}

impl Ran for KernelRan {
    fn take(&self) -> Result<Option<Vec<u32>>, KernelError> {
        self.marks.take()
    }

    fn clear(&self) {
        self.marks.clear();
    }

    fn process(&self, pid: u32) -> Result<Vec<TaskRecord>, KernelError> {
        self.reader.process(pid)
    }
}

impl TaskSource for Kernel {
    fn tasks(
        &mut self,
        backfill: bool,
        each: &mut dyn FnMut(&TaskRecord),
    ) -> Result<usize, KernelError> {
        Kernel::tasks(self, backfill, each)
    }

    fn gc(&mut self, seen: &HashSet<u32>, started: u64) -> Result<(usize, Vec<u32>), KernelError> {
        Kernel::gc(self, seen, started)
    }

    fn counters(&self) -> Result<Arc<dyn Counters>, KernelError> {
        Ok(Arc::new(Kernel::counters(self)?))
    }

    fn map_pids(&self) -> Result<Vec<u32>, KernelError> {
        Kernel::map_pids(self)
    }

    fn task_reader(&self) -> Result<TaskReader, KernelError> {
        Kernel::task_reader(self)
    }

    fn ran(&mut self) -> Option<Arc<dyn Ran>> {
        let made = (|| {
            let reader = Kernel::task_reader(self)?;
            reader.process(std::process::id())?;
            Ok::<_, KernelError>(KernelRan {
                marks: self.marks()?,
                reader,
            })
        })();
        match made {
            Ok(r) => Some(Arc::new(r)),
            Err(e) => {
                tracing::warn!("every refresh reads every task: {e}");
                None
            }
        }
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

/// A finished refresh of the numbers, on its way back to the actor.
pub(crate) struct Pass {
    /// Boot-clock ns it began at: everything it read was read at or after.
    pub started: u64,
    /// How long the reading took.
    pub took_us: u64,
    /// Whether it was started as a refresh of what ran (which may have read every task
    /// instead, when that was cheaper or the marks were lost).
    pub ran: bool,
    pub read: Read,
}

/// What a refresh read.
pub(crate) enum Read {
    /// Every task, by a pass of the task iterator.
    All(All),
    /// The processes that ran, each read on its own.
    Ran(Vec<Found>),
}

/// A pass over every task.
#[derive(Default)]
pub(crate) struct All {
    /// The processes found that the table, as it was when the pass began, would change: the
    /// rest need no look on the actor.
    pub found: Vec<Found>,
    /// Every process found, in pid order; empty: the pass failed (an empty host is not a
    /// thing).
    pub seen: Vec<u32>,
    /// Tasks read, and how long the iterator took to read them.
    pub tasks: usize,
    pub iter_us: u64,
    pub procfs: Vec<Vec<TaskRecord>>,
    pub procfs_gone: Vec<u32>,
    pub gc_dropped: usize,
    /// After a sweep, the process map's keys.
    pub map_pids: Option<Vec<u32>>,
}

impl All {
    /// A pass that read nothing: applied, it changes nothing and answers every waiter.
    fn failed() -> Self {
        Self::default()
    }
}

/// Where the actor's output goes, and what tells it which processes ran.
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
    /// Which processes ran since the table was read, and a read of each (`TaskSource::ran`).
    pub ran: Option<Arc<dyn Ran>>,
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
    /// Which processes ran, and a read of each; `None`: every refresh is a pass.
    ran: Option<Arc<dyn Ran>>,
    /// The kernel side's counters, read without the kernel's lock.
    counters: Option<Arc<dyn Counters>>,

    table: ProcessTable,
    ledger: Ledger,
    stats: AgentStats,
    /// Boot-clock ns the table's numbers are as of (the start of the last refresh applied).
    last_refresh: u64,
    /// Boot-clock ns of the last pass over every task applied.
    last_full: u64,
    /// A pass over every task is running (one at a time), started at this boot-clock ns (no
    /// later than its read begins).
    refreshing: Option<u64>,
    /// A refresh of what ran is running (one at a time), started at this boot-clock ns.
    refreshing_ran: Option<u64>,
    /// Questions waiting for a refresh begun after them, with the boot-clock time they were
    /// asked at.
    waiters: Vec<(u64, oneshot::Sender<Arc<Snapshot>>)>,
    cached: Option<Arc<Snapshot>>,
    last_losses: u64,
    last_loss_check: Instant,
    last_query: Instant,
    /// When numbers of any bound were last asked for (a `cache=` mount's ticker included):
    /// while they are, a pass over every task is made every `GC_EVERY`.
    last_numbers_query: Instant,
    /// Whether the current numbers have been asked for since they were read: refreshing ahead
    /// only when they were keeps the iterator's cost proportional to demand (an idle agent, or
    /// one scraped every 15 s, runs no extra passes).
    demanded: bool,
    last_gc: Instant,
}

impl<K: TaskSource> Actor<K> {
    /// The actor over `table`, whose numbers were read at boot-clock `refreshed_at` by a pass
    /// over every task.
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
        let counters = match kernel.lock().map(|k| k.counters()) {
            Ok(Ok(c)) => Some(c),
            Ok(Err(e)) => {
                tracing::warn!("no kernel counters: {e}");
                None
            }
            Err(_) => None,
        };
        Self {
            counters,
            kernel,
            latest: wiring.latest,
            tx: wiring.tx,
            passes: wiring.passes,
            events: wiring.events,
            prewarm: cfg.prewarm,
            max_age: cfg.max_age,
            loss_check: cfg.loss_check,
            ns_per_tick: ns_per_tick(),
            ran: wiring.ran,
            table,
            ledger: cfg.groups,
            stats,
            last_refresh: refreshed_at,
            last_full: refreshed_at,
            refreshing: None,
            refreshing_ran: None,
            waiters: Vec::new(),
            cached: None,
            last_losses: 0,
            last_loss_check: now,
            last_query: now - HOT_FOR,
            last_numbers_query: now - GC_EVERY,
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
        // Records come with activity, and so do losses: checked here, the ticker can slow
        // down while nobody asks anything.
        if self.losses_moved() {
            self.start_pass();
        }
    }

    /// A question for a snapshot whose numbers are at most `asked` old: answered now if the
    /// table's are, else after the next refresh (started unless one begun after the question
    /// is running).
    pub(crate) fn on_snapshot(&mut self, asked: Duration, reply: oneshot::Sender<Arc<Snapshot>>) {
        // Refreshing ahead keeps numbers within the agent's bound for those who ask for it (or
        // tighter). A question that takes numbers of any age (a listing, a process's
        // existence) or older ones (a `cache=` mount, whose ticker refreshes for it) does not
        // ask for it.
        let now = self.clock.now();
        if asked <= self.max_age {
            self.last_query = now;
            self.demanded = true;
            self.latest.quicken_ticks();
        }
        if asked < Duration::MAX {
            self.last_numbers_query = now;
        }
        let at = self.clock.boot_ns();
        let age = Duration::from_nanos(at.saturating_sub(self.last_refresh));
        if age <= asked {
            let _ = reply.send(self.current());
        } else {
            self.waiters.push((at, reply));
            self.refresh();
        }
    }

    /// A refresh's result, applied with the table's rules (entries an event touched since it
    /// began are newer and win, and so are entries read again since); the waiters that asked
    /// before it began are answered. Returns false if it failed, and then every waiter gets
    /// the table as it is.
    pub(crate) fn on_refreshed(&mut self, pass: Pass) -> bool {
        let Pass {
            started,
            took_us,
            ran,
            read,
        } = pass;
        if ran {
            self.refreshing_ran = None;
        }
        let needs = match read {
            Read::Ran(reads) => {
                self.stats.partial_refreshes += 1;
                self.stats.partial_reads += reads.len() as u64;
                self.stats.last_partial_us = took_us;
                self.stats.last_partial_processes = reads.len();
                self.table.apply_reads(started, reads)
            }
            Read::All(all) => {
                if !ran {
                    self.refreshing = None;
                }
                match self.apply_all(started, all) {
                    Some(needs) => needs,
                    None => {
                        // The iterator failed: answer with what we have rather than hang.
                        let snap = self.current();
                        for (_, w) in self.waiters.drain(..) {
                            let _ = w.send(snap.clone());
                        }
                        return false;
                    }
                }
            }
        };
        self.demanded = false;
        self.last_refresh = self.last_refresh.max(started);
        if !needs.is_empty() {
            start_identities(&self.table, needs, self.tx.clone());
        }
        let snap = self.current();
        let (done, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|(at, _)| *at <= started);
        for (_, w) in done {
            let _ = w.send(snap.clone());
        }
        self.waiters = later;
        if !self.waiters.is_empty() {
            // Asked while this refresh was under way: the next one is theirs.
            self.refresh();
        }
        if let Some(prewarm) = &self.prewarm
            && self.clock.now().duration_since(self.last_query) < HOT_FOR
        {
            let prewarm = prewarm.clone();
            tokio::task::spawn_blocking(move || prewarm(&snap));
        }
        true
    }

    /// A pass over every task, applied; `None` if it failed. Returns the pids whose argv and
    /// exe must be read.
    fn apply_all(&mut self, started: u64, all: All) -> Option<Vec<u32>> {
        let All {
            found,
            seen,
            tasks,
            iter_us,
            procfs,
            procfs_gone,
            gc_dropped,
            map_pids,
        } = all;
        self.stats.map_gc_dropped += gc_dropped as u64;
        self.stats.last_iterator_us = iter_us;
        self.latest
            .pass_us
            .store(iter_us, std::sync::atomic::Ordering::Relaxed);
        self.stats.last_iterator_tasks = tasks;
        if seen.is_empty() {
            return None;
        }
        let t0 = Instant::now();
        let ns_per_tick = self.ns_per_tick;
        let needs = self
            .table
            .apply_found(started, found, &seen, false, &|pid, start| {
                procfs::alive_since(pid, start, ns_per_tick)
            });
        tracing::debug!(us = t0.elapsed().as_micros() as u64, "snapshot applied");
        // The other refresh, if one is under way, began before this one's result came.
        let oldest = [self.refreshing, self.refreshing_ran]
            .into_iter()
            .flatten()
            .fold(started, u64::min);
        self.table.forget_tombstones_before(oldest);
        for rec in &procfs {
            self.table.upsert_procfs(rec, started);
        }
        for pid in procfs_gone {
            self.table.drop_procfs(pid, started);
        }
        if let Some(pids) = map_pids {
            map_stats(&mut self.stats, &pids, &self.table);
        }
        self.last_full = self.last_full.max(started);
        Some(needs)
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
        self.latest.quicken_ticks();
        self.start_pass();
    }

    /// Whether a loss counter moved since the last check (at most one check per
    /// `loss_check`): some record never reached us, and a pass must reconcile the table now
    /// rather than at the next query.
    fn losses_moved(&mut self) -> bool {
        let now = self.clock.now();
        if now.duration_since(self.last_loss_check) < self.loss_check {
            return false;
        }
        self.last_loss_check = now;
        let losses = self.kernel_losses();
        if losses > self.last_losses {
            self.last_losses = losses;
            self.stats.rescans += 1;
            return true;
        }
        false
    }

    /// Periodic: a rescan when a kernel loss counter moved, a refresh ahead while a client
    /// polls faster than the bound, and the pass over every task that brings up to date what
    /// no mark tells of, while numbers are asked for.
    pub(crate) fn on_tick(&mut self) {
        let now = self.clock.now();
        let mut pass = self.losses_moved();
        let boot = self.clock.boot_ns();
        let age = Duration::from_nanos(boot.saturating_sub(self.last_refresh));
        // A client polling faster than the bound gets its next answer from numbers read ahead
        // of the question instead of waiting for them.
        if self.demanded
            && now.duration_since(self.last_query) < self.max_age * 2
            && age >= self.max_age / 2
        {
            self.refresh();
        }
        // Refreshes of what ran leave out what other processes change in one that sleeps:
        // a pass over every task brings it up to date every GC_EVERY while anyone asks.
        let full_age = Duration::from_nanos(boot.saturating_sub(self.last_full));
        if self.ran.is_some()
            && full_age >= GC_EVERY
            && now.duration_since(self.last_numbers_query) < GC_EVERY
        {
            pass = true;
        }
        if pass {
            self.start_pass();
        }
        // Nobody polls faster than the bound: no read-ahead to make, tick slowly (the
        // periodic pass above is due only every GC_EVERY).
        if now.duration_since(self.last_query) >= self.max_age * 2 {
            self.latest
                .quick_ticks
                .store(false, std::sync::atomic::Ordering::Relaxed);
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
        s.reader_parks = self.latest.reader_parks.load(Relaxed);
        s.reader_woken = self.latest.reader_woken.load(Relaxed);
        s.exited_retained = self.table.exited().len();
        if let Some(c) = &self.counters
            && let Ok(counters) = c.read()
        {
            for (i, v) in counters.iter().enumerate() {
                s.kernel.insert(stat::NAMES[i], *v);
            }
        }
        let _ = reply.send(s);
    }

    pub(crate) fn on_groups(&mut self, reply: oneshot::Sender<GroupReport>) {
        let _ = reply.send(self.ledger.report(self.table.live()));
    }

    /// Brings the numbers up to date: the processes that ran, read one by one, where the
    /// kernel marks them; else a pass over every task.
    pub(crate) fn refresh(&mut self) {
        let Some(ran) = &self.ran else {
            self.start_pass();
            return;
        };
        if self.refreshing_ran.is_some() {
            return;
        }
        self.refreshing_ran = Some(self.clock.boot_ns());
        start_ran(
            ran.clone(),
            self.kernel.clone(),
            self.current(),
            self.clock.clone(),
            self.passes.clone(),
            self.ns_per_tick,
        );
    }

    /// Starts a pass over every task off the actor unless one is running; the periodic sweep
    /// of the process map rides along when it is due. Its result comes back as
    /// `Msg::Refreshed`.
    pub(crate) fn start_pass(&mut self) {
        let gc = self.take_gc();
        self.start_pass_with(gc);
    }

    /// Starts a pass that sweeps the process map and gives every process it lacks an entry:
    /// at start the first pass leaves that out, for the table to be whole sooner (at 100,000
    /// processes the map's inserts took 360 ms of a 600 ms pass), and this one follows.
    pub(crate) fn start_sweep(&mut self) {
        self.last_gc = self.clock.now();
        self.start_pass_with(true);
    }

    fn start_pass_with(&mut self, gc: bool) {
        if self.refreshing.is_none() {
            self.refreshing = Some(self.clock.boot_ns());
            let (kernel, clock, tx) =
                (self.kernel.clone(), self.clock.clone(), self.passes.clone());
            let (ran, ns_per_tick, snap) = (self.ran.clone(), self.ns_per_tick, self.current());
            off_actor(tx, clock, false, move |started| {
                trim_heap();
                let all = read_all(&kernel, ran.as_deref(), started, gc, &snap, ns_per_tick);
                (all.iter_us, Read::All(all))
            });
        }
    }

    /// Whether a pass over every task is running.
    #[cfg(test)]
    pub(crate) fn pass_running(&self) -> bool {
        self.refreshing.is_some()
    }

    /// Whether a refresh of what ran is running.
    #[cfg(test)]
    pub(crate) fn ran_running(&self) -> bool {
        self.refreshing_ran.is_some()
    }

    /// The latest snapshot of the table, made anew only if the table or its numbers changed
    /// (and then sharing the processes, and their listing, with the last one if only the
    /// numbers' time did).
    fn current(&mut self) -> Arc<Snapshot> {
        let (table, at, full) = (&self.table, self.last_refresh, self.last_full);
        let snap = match &self.cached {
            Some(c)
                if c.version == table.version() && c.refreshed_at == at && c.full_at == full =>
            {
                return c.clone();
            }
            Some(c) if c.version == table.version() => Snapshot {
                version: c.version,
                refreshed_at: at,
                full_at: full,
                processes: c.processes.clone(),
                exited: c.exited.clone(),
                listing_json: c.listing_json.clone(),
            },
            _ => Snapshot {
                version: table.version(),
                refreshed_at: at,
                full_at: full,
                processes: table.live().clone(),
                exited: table.exited().iter().cloned().collect(),
                listing_json: Arc::default(),
            },
        };
        let snap = Arc::new(snap);
        self.cached = Some(snap.clone());
        if let Ok(mut l) = self.latest.snapshot.write() {
            *l = Some(snap.clone());
        }
        snap
    }

    /// The kernel-side loss counters, summed.
    fn kernel_losses(&self) -> u64 {
        let Some(c) = &self.counters else { return 0 };
        c.read()
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

/// One pass over every task begun at `started` (the marks of what ran cleared first: it reads
/// all of them), with the processes only /proc shows and, with `gc`, the process map's sweep.
/// `snap` is the table when it began: the processes it would not change are left out.
fn read_all<K: TaskSource>(
    kernel: &Mutex<K>,
    ran: Option<&dyn Ran>,
    started: u64,
    gc: bool,
    snap: &Snapshot,
    ns_per_tick: u64,
) -> All {
    if let Some(ran) = ran {
        ran.clear();
    }
    let t0 = Instant::now();
    let mut gather = Gather::default();
    // A pass that panicked (`off_actor`) poisons the lock, and the kernel behind it is still
    // whole (the iterator's descriptor went with the panic): later passes carry on.
    let read = crate::kernel::lock(kernel).tasks(gc, &mut |r| gather.push(r));
    if let Err(e) = &read {
        tracing::warn!("task iterator failed: {e}");
        gather = Gather::default();
    }
    let iter_us = t0.elapsed().as_micros() as u64;
    let tasks = gather.len();
    let mut seen: Vec<u32> = Vec::with_capacity(snap.processes.len() + 64);
    let found = gather.found_where(|pid, leader, encoded| {
        seen.push(pid);
        Found::changes(snap.get(pid), leader, encoded, started)
    });
    tracing::debug!(
        tasks,
        iter_us,
        changed = found.len(),
        us = t0.elapsed().as_micros() as u64,
        "task iterator pass"
    );
    let mut gc_dropped = 0;
    let mut map_pids = None;
    if gc && !seen.is_empty() {
        let seen: HashSet<u32> = seen.iter().copied().collect();
        match crate::kernel::lock(kernel).gc(&seen, started) {
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
    let mut all = All {
        found,
        seen,
        tasks,
        iter_us,
        procfs: Vec::new(),
        procfs_gone: Vec::new(),
        gc_dropped,
        map_pids: None,
    };
    if all.seen.is_empty() {
        // Never apply an empty snapshot: it would declare every process gone.
        return all;
    }
    all.map_pids = map_pids;
    let procfs_known: Vec<u32> = snap
        .processes
        .iter()
        .filter(|p| p.origin == crate::table::Origin::Procfs)
        .map(|p| p.pid)
        .collect();
    all.procfs = procfs_known
        .iter()
        .map(|&pid| procfs::records(pid, ns_per_tick))
        .filter(|r| !r.is_empty())
        .collect();
    all.procfs_gone = procfs_known
        .iter()
        .copied()
        .filter(|pid| !all.procfs.iter().any(|r| r[0].tgid == *pid))
        .collect();
    all
}

/// A read of one process costs about this many times its share of a pass (~8 µs against
/// ~2.5 µs a task): past this fraction of the table, a refresh of what ran reads every task.
const READS_PER_PASS: usize = 3;

/// Starts a refresh of the processes that ran off the actor. `snap` is the table as it is:
/// which processes only /proc shows, and whose children to read again. Falls back to a pass
/// over every task when the marks were lost, a read failed, or so many ran that a pass is
/// cheaper.
fn start_ran<K: TaskSource>(
    ran: Arc<dyn Ran>,
    kernel: Arc<Mutex<K>>,
    snap: Arc<Snapshot>,
    clock: Arc<dyn Clock>,
    tx: mpsc::Sender<Msg>,
    ns_per_tick: u64,
) {
    off_actor(tx, clock, true, move |started| {
        let t0 = Instant::now();
        let read = match read_ran(&*ran, &snap, ns_per_tick) {
            Some(reads) => Read::Ran(reads),
            None => {
                trim_heap();
                Read::All(read_all(
                    &kernel,
                    Some(&*ran),
                    started,
                    false,
                    &snap,
                    ns_per_tick,
                ))
            }
        };
        let took_us = t0.elapsed().as_micros() as u64;
        if let Read::Ran(reads) = &read {
            tracing::debug!(processes = reads.len(), us = took_us, "read what ran");
        }
        (took_us, read)
    });
}

/// Runs a refresh (`ran`: of what ran, else a pass) on a blocking thread and sends its
/// result, begun at the boot-clock time `work` is given, to the actor. One that panics is
/// answered as a failed pass: its flag would otherwise stay set, no refresh of its kind would
/// start again, and every question waiting for one would wait for ever.
fn off_actor(
    tx: mpsc::Sender<Msg>,
    clock: Arc<dyn Clock>,
    ran: bool,
    work: impl FnOnce(u64) -> (u64, Read) + Send + 'static,
) {
    tokio::task::spawn_blocking(move || {
        let started = clock.boot_ns();
        let (took_us, read) =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(started)))
                .unwrap_or_else(|_| {
                    tracing::error!(
                        ran,
                        "a refresh of the table panicked; answering with the table as it is"
                    );
                    (0, Read::All(All::failed()))
                });
        let _ = tx.blocking_send(Msg::Refreshed(Pass {
            started,
            took_us,
            ran,
            read,
        }));
    });
}

/// Each process that ran since the last refresh, read on its own; `None` if only a pass over
/// every task will do.
fn read_ran(ran: &dyn Ran, snap: &Snapshot, ns_per_tick: u64) -> Option<Vec<Found>> {
    let pids = match ran.take() {
        Ok(Some(p)) => p,
        Ok(None) => {
            tracing::debug!("a mark did not fit: reading every task");
            return None;
        }
        Err(e) => {
            tracing::warn!("reading which processes ran: {e}");
            return None;
        }
    };
    if pids.len() > (snap.processes.len() / READS_PER_PASS).max(16) {
        tracing::debug!(
            ran = pids.len(),
            of = snap.processes.len(),
            "so many ran that a pass is cheaper"
        );
        return None;
    }
    let read = |pid: u32| -> Option<Vec<TaskRecord>> {
        if snap
            .get(pid)
            .is_some_and(|p| p.origin == crate::table::Origin::Procfs)
        {
            return Some(procfs::records(pid, ns_per_tick));
        }
        ran.process(pid)
            .inspect_err(|e| tracing::warn!(pid, "reading one process's tasks: {e}"))
            .ok()
    };
    let mut reads = Vec::with_capacity(pids.len());
    let mut ended = HashSet::new();
    for pid in pids {
        let tasks = read(pid)?;
        if tasks
            .iter()
            .find(|t| t.tid == pid)
            .is_none_or(|l| l.exit_state != 0)
        {
            ended.insert(pid);
        }
        reads.push((pid, tasks));
    }
    if !ended.is_empty() {
        // A process's children are given another parent before its last switch, which set
        // its mark: read them again too (reparenting has no event).
        let done: HashSet<u32> = reads.iter().map(|(pid, _)| *pid).collect();
        let orphans: Vec<u32> = snap
            .processes
            .chunks()
            .iter()
            .flat_map(|c| c.ppids().iter().zip(c.processes()))
            .filter(|(ppid, p)| ended.contains(*ppid) && !done.contains(&p.pid))
            .map(|(_, p)| p.pid)
            .collect();
        for pid in orphans {
            reads.push((pid, read(pid)?));
        }
    }
    Some(
        reads
            .iter()
            .flat_map(|(_, tasks)| crate::table::found(tasks))
            .collect(),
    )
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
    let wanted = super::wanted(table, pids);
    tokio::task::spawn_blocking(move || {
        let _ = tx.blocking_send(Msg::Identities(super::read_identities(wanted)));
    });
}
